//! Writes a generated border DNS capture with known content:
//! `cargo run --release -p guard-user --example gen_pcap -- --size 200MB --out big.pcap [--seed N]
//! [--expected-zone FILE]`. Prints the expected entry counts; `--expected-zone` also writes the
//! allow set the learner must produce as an RPZ zone file (origin rpz.example.com, serial 1).
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
    let mut expected_zone = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => size = parse_size(&args.next().context("--size needs a value")?)?,
            "--out" => out = Some(args.next().context("--out needs a path")?),
            "--seed" => seed = args.next().context("--seed needs a value")?.parse()?,
            "--expected-zone" => expected_zone = Some(args.next().context("--expected-zone needs a path")?),
            "-h" | "--help" => {
                println!("gen_pcap --size 200MB --out FILE [--seed N] [--expected-zone FILE]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let out = out.context("--out FILE is required")?;
    let f = File::create(&out).with_context(|| format!("creating {out}"))?;
    let e = guard_user::learn::synth::generate(BufWriter::with_capacity(1 << 20, f), size, seed)?;
    if let Some(z) = expected_zone {
        let mut f = File::create(&z).with_context(|| format!("creating {z}"))?;
        guard_user::rpz::zonefile::write_zone(&e.allow, "rpz.example.com", 1, &mut f)?;
    }
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
