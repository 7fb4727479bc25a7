//! Writes a generated border DNS capture with known content:
//! `cargo run --release -p guard-user --example gen_pcap -- --size 200MB --out big.pcap [--seed N]`.
//! Prints the expected entry counts.
use std::{fs::File, io::BufWriter};

use anyhow::{Context, bail};

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let u = s.to_ascii_uppercase();
    let (num, mult) = if let Some(n) = u.strip_suffix("GB") {
        (n, 1_000_000_000)
    } else if let Some(n) = u.strip_suffix("MB") {
        (n, 1_000_000)
    } else if let Some(n) = u.strip_suffix("KB") {
        (n, 1_000)
    } else {
        (u.as_str(), 1)
    };
    let n: u64 = num.trim().parse().with_context(|| format!("bad size {s:?}"))?;
    Ok(n * mult)
}

fn main() -> anyhow::Result<()> {
    let mut size = 10_000_000;
    let mut out = None;
    let mut seed = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => size = parse_size(&args.next().context("--size needs a value")?)?,
            "--out" => out = Some(args.next().context("--out needs a path")?),
            "--seed" => seed = args.next().context("--seed needs a value")?.parse()?,
            "-h" | "--help" => {
                println!("gen_pcap --size 200MB --out FILE [--seed N]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let out = out.context("--out FILE is required")?;
    let f = File::create(&out).with_context(|| format!("creating {out}"))?;
    let e = guard_user::learn::synth::generate(BufWriter::with_capacity(1 << 20, f), size, seed)?;
    let (dns, smtp) = e.allow.class_counts();
    println!(
        "{out}: {} bytes, {} packets, {} lookups; expected {} entries ({dns} dns, {smtp} smtp)",
        e.bytes,
        e.packets,
        e.lookups,
        e.allow.len()
    );
    Ok(())
}
