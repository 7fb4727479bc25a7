//! `cargo xtask bench`: builds the measurement programs of `guard-benches`,
//! runs each (they set up their own lab namespaces), collects the JSON
//! sections they write and renders `target/bench-report/REPORT.md` with SVG
//! bar charts.
//!
//! xtask cannot link guard-user (it must build before the eBPF toolchain
//! exists), so every measurement lives in a guard-benches binary.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard_tests::Lab;
use serde::Deserialize;

use crate::command::{self, repo_root};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Run only these benchmarks (repeatable); default: all.
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
    /// Fewer sizes, repeats and trials (a few minutes).
    #[arg(long)]
    quick: bool,
    /// List the benchmark names and exit.
    #[arg(long)]
    list: bool,
    /// Run nothing: rebuild REPORT.md from the results of earlier runs.
    #[arg(long)]
    render: bool,
}

/// One benchmark: a guard-benches binary, or the criterion suite.
struct Bench {
    name: &'static str,
    what: &'static str,
    /// Binary in target/release, or `None` for criterion.
    bin: Option<&'static str>,
    /// Wall-clock limit for one run.
    limit: Duration,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "xdp-cost",
        what: "XDP program cost per verdict path vs pass_all (BPF_PROG_TEST_RUN)",
        bin: Some("xdp-cost"),
        limit: Duration::from_secs(300),
    },
    Bench {
        name: "mirror",
        what: "allow-set mirror into the XDP maps: BPF_MAP_UPDATE_BATCH vs one update per entry",
        bin: Some("mirror"),
        limit: Duration::from_secs(300),
    },
    Bench {
        name: "xdp-e2e",
        what: "trafgen floods through the lab router: no filter vs rpz-guard XDP (native, generic) vs nftables set",
        bin: Some("xdp-e2e"),
        // Four filters (rpz-guard in both attach modes): about 425 s in full.
        limit: Duration::from_secs(600),
    },
    Bench {
        name: "latency",
        what: "miss-path verdict latency and TSIG UPDATE → enforcement lag",
        bin: Some("latency"),
        limit: Duration::from_secs(240),
    },
    Bench {
        name: "primaries",
        what: "add → enforced and delete → blocked lags with BIND 9, Knot DNS and PowerDNS as the RPZ primary",
        bin: Some("primaries"),
        limit: Duration::from_secs(420),
    },
    Bench {
        name: "afxdp",
        what: "AF_XDP miss path: first-packet latency hold → release vs drop → retransmit, hold-path capacity",
        bin: Some("afxdp"),
        limit: Duration::from_secs(300),
    },
    Bench {
        name: "openflow",
        what: "OpenFlow controllers on one OVS bridge: Ryu baseline vs rpz-guard, with harness ceiling",
        bin: Some("openflow"),
        limit: Duration::from_secs(420),
    },
    Bench {
        name: "openflow-peers",
        what: "OpenFlow: controller RSS vs stalled peers and the good switch's sync under that load, bounded vs unbounded",
        bin: Some("openflow-peers"),
        limit: Duration::from_secs(420),
    },
    Bench {
        name: "learner",
        what: "pcap → RPZ: rpz-guard learn vs the paper's Python/dpkt builder",
        bin: Some("learner"),
        limit: Duration::from_secs(420),
    },
    Bench {
        name: "live",
        what: "live learning: learner throughput on one core, first SYN to a freshly resolved destination, lags; OpenFlow mode: answer hold vs copy latency, first SYN",
        bin: Some("live"),
        limit: Duration::from_secs(480),
    },
    Bench {
        name: "criterion",
        what: "criterion micro-benchmarks of hot code",
        bin: None,
        limit: Duration::from_secs(300),
    },
];

/// The report's directory.
pub fn report_dir() -> PathBuf {
    repo_root().join("target/bench-report")
}

/// Runs the benchmarks and writes the report.
pub fn run(args: &Args) -> Result<()> {
    if args.list {
        for b in BENCHES {
            println!("{:<10} {}", b.name, b.what);
        }
        return Ok(());
    }
    for name in &args.only {
        if !BENCHES.iter().any(|b| b.name == name) {
            let names: Vec<_> = BENCHES.iter().map(|b| b.name).collect();
            bail!("unknown benchmark {name:?}; known: {}", names.join(", "));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("benchmarks create namespaces and load XDP programs: run as root");
    }
    let started = Instant::now();
    if !args.render {
        command::run_step(
            "build benchmarks",
            command::cargo().args(["build", "--release", "-p", "guard-benches", "-p", "guard-user"]),
        )?;
    }
    let dir = report_dir();
    let raw = dir.join("raw");
    fs::create_dir_all(&raw).with_context(|| format!("create {}", raw.display()))?;
    let selected =
        |b: &Bench| !args.render && (args.only.is_empty() || args.only.iter().any(|o| o == b.name));
    let mut sections = Vec::new();
    for b in BENCHES {
        if !selected(b) {
            // Keep a section measured by an earlier run, and say so.
            let out = raw.join(format!("{}.json", b.name));
            if let Ok(mut s) = read_section(&out) {
                let when = fs::metadata(&out)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| {
                        format!(
                            " (result file written {} s before this report)",
                            now_secs().saturating_sub(d.as_secs())
                        )
                    })
                    .unwrap_or_default();
                s.notes.insert(
                    0,
                    format!("*From an earlier `cargo xtask bench` run{when}; not rerun this time.*"),
                );
                sections.push(s);
            }
            continue;
        }
        eprintln!("== bench {} ({})", b.name, b.what);
        let t = Instant::now();
        let out = raw.join(format!("{}.json", b.name));
        let _ = fs::remove_file(&out);
        let result = match b.bin {
            Some(bin) => run_bin(bin, &out, args.quick, b.limit),
            None => run_criterion(&out, args.quick),
        };
        let section = match result.and_then(|()| read_section(&out)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench {} failed: {e:#}", b.name);
                Section {
                    name: b.name.into(),
                    title: b.what.into(),
                    notes: vec![format!("**Failed in this run**: {e:#}")],
                    ..Section::default()
                }
            }
        };
        eprintln!("== bench {} done in {:.0} s", b.name, t.elapsed().as_secs_f64());
        sections.push(section);
    }
    let report = render(&sections, &dir, args, (!args.render).then(|| started.elapsed()))?;
    let path = dir.join("REPORT.md");
    fs::write(&path, report).with_context(|| format!("write {}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

fn run_bin(bin: &str, out: &Path, quick: bool, limit: Duration) -> Result<()> {
    let exe = repo_root().join("target/release").join(bin);
    let mut cmd = Command::new(&exe);
    cmd.arg("--out").arg(out).current_dir(repo_root()).stdin(Stdio::null());
    if quick {
        cmd.arg("--quick");
    }
    let mut child = cmd.spawn().with_context(|| format!("start {}", exe.display()))?;
    let (pid, start) = (child.id(), guard_tests::process::start_time(child.id()).unwrap_or(0));
    let t = Instant::now();
    let result = loop {
        if let Some(status) = child.try_wait()? {
            break if status.success() { Ok(()) } else { Err(anyhow::anyhow!("{bin} exited with {status}")) };
        }
        if t.elapsed() > limit {
            // Our own child, by pid. A signal runs no destructor, so its labs
            // stay behind: removed below.
            // SAFETY: kill on a pid we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break Err(anyhow::anyhow!("{bin} exceeded its {} s limit", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    remove_labs_left_by(bin, pid, start);
    result
}

/// Removes the labs a finished benchmark process left behind (killed at its
/// limit, or crashed): namespaces, the processes in them, state. A clean
/// run leaves none.
fn remove_labs_left_by(bin: &str, pid: u32, start: u64) {
    for prefix in Lab::owned_by(pid, start) {
        match Lab::down_prefix(&prefix) {
            Ok(r) => eprintln!(
                "bench {bin}: removed lab {prefix} it left behind ({} namespaces, {} processes ended)",
                r.namespaces.len(),
                r.ended.len()
            ),
            Err(e) => eprintln!(
                "bench {bin}: lab {prefix} left behind, removing it failed: {e}; run `cargo xtask lab down --prefix {prefix}`"
            ),
        }
    }
}

/// Runs the criterion suite and turns its estimates into a section.
fn run_criterion(out: &Path, quick: bool) -> Result<()> {
    let (warm, meas) = if quick { ("0.5", "1") } else { ("1", "3") };
    command::run_step(
        "cargo bench",
        command::cargo().args([
            "bench",
            "-p",
            "guard-benches",
            "--bench",
            "hot_paths",
            "--",
            "--warm-up-time",
            warm,
            "--measurement-time",
            meas,
        ]),
    )?;
    let root = repo_root().join("target/criterion");
    let mut rows = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(&root)
        .with_context(|| format!("read {}", root.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for dir in entries {
        let est = dir.join("new/estimates.json");
        let Ok(text) = fs::read_to_string(&est) else { continue };
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", est.display()))?;
        let m = &v["median"];
        let f = |k: &str| m[k].as_f64().or_else(|| m["confidence_interval"][k].as_f64()).unwrap_or(f64::NAN);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        rows.push(vec![
            name,
            human_ns(f("point_estimate")),
            format!("{} – {}", human_ns(f("lower_bound")), human_ns(f("upper_bound"))),
        ]);
    }
    let section = serde_json::json!({
        "name": "criterion",
        "title": "Criterion micro-benchmarks (hot userspace code)",
        "notes": [
            "`cargo bench -p guard-benches`: absolute times of single operations, kept as a regression \
             reference (no external baseline exists for these). Median and its 95% confidence interval.",
            "allowset_diff_100k: diff of two 100k-entry allow sets differing in 1k entries each way; \
             zone_*_10k: RPZ zone file of 10k entries; owner_*: RPZ owner-name encoding."
        ],
        "tables": [{"caption": "time per iteration", "header": ["benchmark", "median", "95% CI"], "rows": rows}],
        "charts": [],
    });
    fs::write(out, serde_json::to_vec_pretty(&section)?)?;
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

#[derive(Debug, Default, Deserialize)]
struct Section {
    name: String,
    title: String,
    #[serde(default)]
    notes: Vec<String>,
    #[serde(default)]
    tables: Vec<Table>,
    #[serde(default)]
    charts: Vec<Chart>,
}

#[derive(Debug, Default, Deserialize)]
struct Table {
    caption: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct Chart {
    title: String,
    unit: String,
    bars: Vec<Bar>,
}

#[derive(Debug, Default, Deserialize)]
struct Bar {
    label: String,
    value: f64,
    lo: f64,
    hi: f64,
}

fn read_section(path: &Path) -> Result<Section> {
    let text = fs::read_to_string(path).with_context(|| format!("no result file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned()))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{nproc} CPUs ({cpu}), {mem} RAM, Linux {}", kernel.trim())
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn render(sections: &[Section], dir: &Path, args: &Args, took: Option<Duration>) -> Result<String> {
    let quick = args.quick;
    let mut md = String::new();
    writeln!(md, "# rpz-guard benchmark report\n")?;
    writeln!(md, "* Date: {}", date())?;
    writeln!(md, "* Machine: {}", machine())?;
    match took {
        Some(t) => writeln!(
            md,
            "* Run: `cargo xtask bench{}{}` ({}), {:.0} s in total",
            if quick { " --quick" } else { "" },
            args.only.iter().map(|o| format!(" --only {o}")).collect::<String>(),
            match (quick, args.only.is_empty()) {
                (true, _) => "quick: fewer sizes, trials and repeats",
                (false, true) => "full",
                (false, false) => "only the named benchmarks; the other sections are kept from earlier runs",
            },
            t.as_secs_f64()
        )?,
        None => {
            writeln!(md, "* Rendered with `cargo xtask bench --render` from the results of earlier runs")?
        }
    }
    writeln!(
        md,
        "* Every figure is measured side by side with its baseline in the same run; cells read \
         `median (min–max)` over the stated number of trials. The machine is a shared 2-core VM: \
         compare ratios, not absolute times.\n"
    )?;
    writeln!(
        md,
        "Contents: {}\n",
        sections
            .iter()
            .map(|s| format!("[{}](#{})", s.name, anchor(&s.title)))
            .collect::<Vec<_>>()
            .join(" · ")
    )?;
    for s in sections {
        writeln!(md, "## {}\n", s.title)?;
        for n in &s.notes {
            writeln!(md, "{n}\n")?;
        }
        for t in &s.tables {
            writeln!(md, "{}\n", t.caption)?;
            writeln!(md, "| {} |", t.header.join(" | "))?;
            writeln!(md, "|{}", "---|".repeat(t.header.len()))?;
            for r in &t.rows {
                writeln!(md, "| {} |", r.join(" | "))?;
            }
            writeln!(md)?;
        }
        for (i, c) in s.charts.iter().enumerate() {
            let file = format!("{}-{}.svg", s.name, i + 1);
            fs::write(dir.join(&file), svg_bars(c)).with_context(|| format!("write {file}"))?;
            writeln!(md, "![{}]({file})\n", c.title)?;
        }
    }
    Ok(md)
}

fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal bar chart: median bars, min–max whiskers.
fn svg_bars(c: &Chart) -> String {
    let (label_w, plot_w, row_h, top) = (260.0, 420.0, 26.0, 40.0);
    let h = top + row_h * c.bars.len() as f64 + 30.0;
    let max = c.bars.iter().map(|b| b.hi.max(b.value)).filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { plot_w / max } else { 0.0 };
    let mut s = String::new();
    let w = label_w + plot_w + 90.0;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="10" y="22" font-size="14" font-weight="bold">{}</text>"#, xml(&c.title));
    for (i, b) in c.bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let v = if b.value.is_finite() { b.value.max(0.0) } else { 0.0 };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + 15.0,
            xml(&b.label)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{label_w}" y="{}" width="{:.1}" height="{}" fill="#4a7bd0"/>"##,
            y + 4.0,
            v * scale,
            row_h - 8.0
        );
        if b.lo.is_finite() && b.hi.is_finite() {
            let (x1, x2, ym) =
                (label_w + b.lo.max(0.0) * scale, label_w + b.hi.max(0.0) * scale, y + row_h / 2.0);
            let _ = writeln!(s, r#"<line x1="{x1:.1}" y1="{ym}" x2="{x2:.1}" y2="{ym}" stroke="black"/>"#);
            for x in [x1, x2] {
                let _ = writeln!(
                    s,
                    r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="black"/>"#,
                    ym - 5.0,
                    ym + 5.0
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{} {}</text>"#,
            label_w + b.hi.max(v).max(0.0) * scale + 6.0,
            y + 15.0,
            fmt_num(b.value),
            xml(&c.unit)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_bar_per_value() {
        let c = Chart {
            title: "t <x>".into(),
            unit: "ns".into(),
            bars: vec![
                Bar { label: "a".into(), value: 1.0, lo: 0.5, hi: 2.0 },
                Bar { label: "b".into(), value: f64::NAN, lo: f64::NAN, hi: f64::NAN },
            ],
        };
        let s = svg_bars(&c);
        assert_eq!(s.matches("<rect x=").count(), 2);
        assert!(s.contains("t &lt;x&gt;"));
        assert!(s.contains("n/a"));
    }
}
