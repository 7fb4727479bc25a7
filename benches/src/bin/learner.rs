//! `rpz-guard learn` vs the paper's Python/dpkt builder
//! (benches/dpkt-builder/build_rpz.py) on the same generated captures:
//! time, MB/s, peak memory, entries found vs the generator's expected set.

use std::{
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard_benches::{Chart, Opts, Section, Summary, Table, ratio, write_section};

const PYTHON: &str = "/opt/rpz-guard/ryu-venv/bin/python";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `argv` under `/usr/bin/time -f %M` (a small parent, so the peak is
/// the tool's own), returns (wall time, peak RSS in MiB, stdout).
fn measure(cmd: &mut Command) -> Result<(Duration, f64, String)> {
    let mut timed = Command::new("/usr/bin/time");
    timed.args(["-f", "PEAK_KB=%M"]).arg(cmd.get_program()).args(cmd.get_args());
    let (wall, _, out, err) = run(&mut timed)?;
    let kb: f64 = err
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("PEAK_KB="))
        .and_then(|v| v.trim().parse().ok())
        .context("no peak from /usr/bin/time")?;
    Ok((wall, kb / 1024.0, out))
}

/// Runs `cmd`; returns (wall time, ru_maxrss MiB, stdout, stderr).
fn run(cmd: &mut Command) -> Result<(Duration, f64, String, String)> {
    let t = Instant::now();
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("spawn")?;
    let pid = child.id() as libc::pid_t;
    let out = {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // Read the pipes on threads so a chatty child cannot block.
        let mut child = child;
        let so = child.stdout.take();
        let se = child.stderr.take();
        let ho = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut o) = so {
                let _ = std::io::Read::read_to_string(&mut o, &mut s);
            }
            s
        });
        let he = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut o) = se {
                let _ = std::io::Read::read_to_string(&mut o, &mut s);
            }
            s
        });
        // SAFETY: waiting for our own child; pointers are valid.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        let wall = t.elapsed();
        let stdout = ho.join().unwrap_or_default();
        let stderr = he.join().unwrap_or_default();
        if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!("command failed (status {status}): {}", stderr.trim());
        }
        (wall, ru.ru_maxrss as f64 / 1024.0, stdout, stderr)
    };
    Ok(out)
}

fn count_entries(zone: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(zone).unwrap_or_default();
    let dns = text.lines().filter(|l| l.trim_end().ends_with("127.0.0.1")).count();
    let smtp = text.lines().filter(|l| l.trim_end().ends_with("127.0.0.25")).count();
    (dns, smtp)
}

fn main() -> Result<()> {
    let opts = Opts::from_env();
    let sizes: Vec<u64> = if opts.quick { vec![10, 50] } else { vec![10, 50, 200] };
    let trials = if opts.quick { 2 } else { 3 };
    let dir = root().join("target/bench-report/tmp");
    std::fs::create_dir_all(&dir)?;
    let script = root().join("benches/dpkt-builder/build_rpz.py");
    let rpz_guard = root().join("target/release/rpz-guard");
    let mut table = Table {
        caption: format!(
            "Same capture for both, median (min–max) over {trials} trials; entries = hosts written to the zone \
             (expected = the generator's model of legitimately handed-out servers)"
        ),
        header: vec![
            "capture".into(),
            "tool".into(),
            "time s".into(),
            "MB/s".into(),
            "speed-up".into(),
            "peak RSS MiB".into(),
            "dns / smtp entries".into(),
            "expected dns / smtp".into(),
        ],
        rows: Vec::new(),
    };
    let mut chart = Chart {
        title: "Throughput learning RPZ entries from a capture".into(),
        unit: "MB/s".into(),
        bars: vec![],
    };
    let mut notes = vec![
        "Captures come from the learner's generator (guard_user::learn::synth: a caching resolver walking a \
         synthetic DNS tree with referrals, glue, CNAMEs, mail at providers, plus noise: bots, spoofed and \
         unsolicited responses, TCP DNS, fragments, VLAN, IPv6). Both tools read the same file from the page \
         cache (one untimed warm-up read first). Peak memory is the maximum resident set from /usr/bin/time."
            .into(),
        "The Python builder follows the paper (dpkt, queries in a list matched by message ID, NS + glue A → \
         127.0.0.1, MX from a registered server + A → 127.0.0.25), reads UDP DNS only and has no trust chain, \
         so its entry counts differ from the learner's: they are shown for context, the learner's own \
         correctness is tested in guard-user's tests. The paper reports 35 min for a 200 MB capture on its \
         machine."
            .into(),
    ];
    for &mb in &sizes {
        let cap = dir.join(format!("border-{mb}MB.pcap"));
        let t = Instant::now();
        let f = File::create(&cap).with_context(|| format!("create {}", cap.display()))?;
        let expected =
            guard_user::learn::synth::generate(BufWriter::with_capacity(1 << 20, f), mb * 1_000_000, 1)
                .context("generate capture")?;
        let bytes = std::fs::metadata(&cap)?.len() as f64;
        let (edns, esmtp) = expected.allow.class_counts();
        eprintln!("generated {} ({:.1} s)", cap.display(), t.elapsed().as_secs_f64());
        // Warm the page cache without growing this process (children's
        // ru_maxrss would inherit our high-water mark through vfork).
        Command::new("cat").arg(&cap).stdout(Stdio::null()).status()?;
        let zr = dir.join(format!("learn-{mb}.zone"));
        let zp = dir.join(format!("python-{mb}.zone"));
        let mut rust = (Vec::new(), Vec::new());
        let mut py = (Vec::new(), Vec::new());
        for i in 0..trials {
            let (w, rss, _) = measure(
                Command::new(&rpz_guard).arg("learn").arg(&cap).arg("--zone-file").arg(&zr).arg("--quiet"),
            )?;
            rust.0.push(w.as_secs_f64());
            rust.1.push(rss);
            // The Python builder takes about a minute at 200 MB: one trial there.
            if i == 0 || mb < 200 {
                let (w, rss, _) = measure(Command::new(PYTHON).arg(&script).arg(&cap).arg(&zp))?;
                py.0.push(w.as_secs_f64());
                py.1.push(rss);
            }
        }
        let (rs, ps) = (Summary::of(&rust.0), Summary::of(&py.0));
        let mbs = |secs: f64| bytes / 1e6 / secs;
        let mbs_sum = |v: &Vec<f64>| Summary::of(&v.iter().map(|s| mbs(*s)).collect::<Vec<_>>());
        let (rc, pc) = (count_entries(&zr), count_entries(&zp));
        table.rows.push(vec![
            format!("{mb} MB"),
            "rpz-guard learn".into(),
            rs.fmt(3),
            mbs_sum(&rust.0).fmt(1),
            ratio(ps.median, rs.median),
            Summary::of(&rust.1).fmt(0),
            format!("{} / {}", rc.0, rc.1),
            format!("{edns} / {esmtp}"),
        ]);
        table.rows.push(vec![
            format!("{mb} MB"),
            format!("Python/dpkt (paper){}", if ps.n == 1 { ", 1 trial" } else { "" }),
            ps.fmt(2),
            mbs_sum(&py.0).fmt(2),
            "1.00×".into(),
            Summary::of(&py.1).fmt(0),
            format!("{} / {}", pc.0, pc.1),
            format!("{edns} / {esmtp}"),
        ]);
        chart.bars.push(mbs_sum(&rust.0).bar(format!("rpz-guard learn, {mb} MB")));
        chart.bars.push(mbs_sum(&py.0).bar(format!("Python/dpkt, {mb} MB")));
        let _ = std::fs::remove_file(&cap);
    }
    notes.push("Capture files are deleted after the run.".into());
    write_section(
        &opts.out,
        &Section {
            name: "learner".into(),
            title: "Learner vs the paper's Python/dpkt builder".into(),
            notes,
            tables: vec![table],
            charts: vec![chart],
        },
    )
}
