//! Measurement support for `cargo xtask bench`.
//!
//! Each measurement program (`src/bin/*.rs`) writes one [`Section`] as JSON
//! to the path given by `--out`; xtask renders all sections into
//! `target/bench-report/REPORT.md` with SVG charts. Criterion benchmarks of
//! hot code live in `benches/`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

pub mod daemon;
pub mod frame;
pub mod load;

/// One benchmark's part of the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Section {
    /// Short name (the `--only` name).
    pub name: String,
    /// Heading.
    pub title: String,
    /// Paragraphs of text (method, caveats, verdict on the aims).
    pub notes: Vec<String>,
    /// Tables.
    pub tables: Vec<Table>,
    /// Bar charts.
    pub charts: Vec<Chart>,
}

/// A table: header and rows of already formatted cells.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    /// Caption above the table.
    pub caption: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<String>>,
}

/// A horizontal bar chart with spread whiskers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Chart {
    /// Title.
    pub title: String,
    /// Unit of the values.
    pub unit: String,
    /// Bars.
    pub bars: Vec<Bar>,
}

/// One bar: median and spread.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bar {
    /// Label.
    pub label: String,
    /// Median.
    pub value: f64,
    /// Low end of the spread.
    pub lo: f64,
    /// High end of the spread.
    pub hi: f64,
}

/// Median, min and max of repeated trials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Number of trials.
    pub n: usize,
}

impl Summary {
    /// Summarises `xs` (empty gives NaN values and `n == 0`).
    pub fn of(xs: &[f64]) -> Summary {
        if xs.is_empty() {
            return Summary { median: f64::NAN, min: f64::NAN, max: f64::NAN, n: 0 };
        }
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n.is_multiple_of(2) { (v[n / 2 - 1] + v[n / 2]) / 2.0 } else { v[n / 2] };
        Summary { median, min: v[0], max: v[n - 1], n }
    }

    /// "median (min–max)" with `prec` decimals.
    pub fn fmt(&self, prec: usize) -> String {
        format!("{:.p$} ({:.p$}–{:.p$})", self.median, self.min, self.max, p = prec)
    }

    /// As a chart bar.
    pub fn bar(&self, label: impl Into<String>) -> Bar {
        Bar { label: label.into(), value: self.median, lo: self.min, hi: self.max }
    }
}

/// Percentile `p` (0–100) of sorted values, nearest rank.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Percentile `p` of unsorted values.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    percentile_sorted(&v, p)
}

/// Common command-line options of the measurement programs:
/// `--out FILE` and `--quick`, plus each program's own [`Flag`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    /// Where the JSON section goes.
    pub out: PathBuf,
    /// Shorter run.
    pub quick: bool,
    /// The program's own flags that were given, each followed by its
    /// value when it takes one.
    pub rest: Vec<String>,
}

/// A flag one measurement program takes besides `--out` and `--quick`.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// E.g. `--sizes`.
    pub name: &'static str,
    /// The name of its value (`None`: a switch).
    pub value: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

/// What [`Opts::parse`] made of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Run with these options.
    Run(Opts),
    /// `--help` or `-h`: print the usage, run nothing.
    Help,
}

impl Opts {
    /// Parses `std::env::args` for a program without flags of its own.
    pub fn from_env() -> Opts {
        Self::from_env_with(&[])
    }

    /// Parses `std::env::args` with the program's own `flags`. `--help`
    /// prints the usage and exits 0; an unknown argument or a missing value
    /// is named, with the usage, and exits 2, before anything is measured.
    pub fn from_env_with(flags: &[Flag]) -> Opts {
        let mut args = std::env::args();
        let program = args.next().unwrap_or_default();
        let program =
            Path::new(&program).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match Self::parse(args, flags) {
            Ok(Parsed::Run(opts)) => opts,
            Ok(Parsed::Help) => {
                print!("{}", usage(&program, flags));
                std::process::exit(0);
            }
            Err(e) => {
                eprint!("{program}: {e}\n{}", usage(&program, flags));
                std::process::exit(2);
            }
        }
    }

    /// Parses `args` (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>, flags: &[Flag]) -> Result<Parsed, String> {
        let mut opts = Opts { out: PathBuf::from("bench.json"), quick: false, rest: Vec::new() };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--help" | "-h" => return Ok(Parsed::Help),
                "--out" => opts.out = it.next().map(PathBuf::from).ok_or("--out needs a FILE")?,
                "--quick" => opts.quick = true,
                _ => {
                    let Some(flag) = flags.iter().find(|f| f.name == a) else {
                        return Err(format!("unknown argument {a:?}"));
                    };
                    opts.rest.push(a);
                    if let Some(v) = flag.value {
                        opts.rest.push(it.next().ok_or_else(|| format!("{} needs a {v}", flag.name))?);
                    }
                }
            }
        }
        Ok(Parsed::Run(opts))
    }

    /// The value after `--flag` in the remaining arguments.
    pub fn value(&self, flag: &str) -> Option<&str> {
        self.rest.iter().position(|a| a == flag).and_then(|i| self.rest.get(i + 1)).map(String::as_str)
    }

    /// Whether switch `flag` was given.
    pub fn has(&self, flag: &str) -> bool {
        self.rest.iter().any(|a| a == flag)
    }
}

/// The usage text of a measurement program.
fn usage(program: &str, flags: &[Flag]) -> String {
    let mut u = format!(
        "usage: {program} [--out FILE] [--quick]{}\n\
         A measurement program of `cargo xtask bench` (as root), which runs it in its own lab\n\
         namespaces and renders the report; run alone, it writes one JSON section.\n  \
         --out FILE           where the JSON section goes (default: bench.json)\n  \
         --quick              fewer sizes, trials and repeats\n",
        flags.iter().map(|f| format!(" [{}]", f.synopsis())).collect::<String>()
    );
    for f in flags {
        u.push_str(&format!("  {:<20} {}\n", f.synopsis(), f.help));
    }
    u
}

impl Flag {
    /// `--name VALUE` (or `--name` for a switch).
    fn synopsis(&self) -> String {
        match self.value {
            Some(v) => format!("{} {v}", self.name),
            None => self.name.to_owned(),
        }
    }
}

/// Writes `section` as JSON to `path`.
pub fn write_section(path: &Path, section: &Section) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    serde_json::to_writer_pretty(&mut f, section)?;
    f.write_all(b"\n")?;
    Ok(())
}

/// Runs `f` and returns its value and the wall time taken.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

/// CPU time (user + system) of process `pid` in seconds, from `/proc/<pid>/stat`.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `)` that ends the command name; utime is field 14.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz)
}

/// CPU time of one process (all its threads, dead ones included) at
/// nanosecond resolution: the process is moved into a cgroup-v1 `cpuacct`
/// group of its own and `cpuacct.usage` is read. `/proc/<pid>/stat` counts
/// in clock ticks (10 ms), too coarse for a window that costs a few ms.
/// Falls back to [`proc_cpu_seconds`] where no `cpuacct` hierarchy exists.
pub struct CpuMeter {
    pid: u32,
    group: Option<PathBuf>,
}

impl CpuMeter {
    /// Where cgroup v1 mounts the `cpuacct` controller.
    const CPUACCT: &'static str = "/sys/fs/cgroup/cpuacct";

    /// A meter for `pid` (our own child), in a group named after `tag`.
    pub fn new(pid: u32, tag: &str) -> CpuMeter {
        let dir = PathBuf::from(Self::CPUACCT).join(format!("rpzg-bench-{tag}-{}-{pid}", std::process::id()));
        let moved = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()))
            .is_ok();
        if !moved {
            let _ = std::fs::remove_dir(&dir);
        }
        CpuMeter { pid, group: moved.then_some(dir) }
    }

    /// Whether readings are nanosecond precise (else clock ticks).
    pub fn precise(&self) -> bool {
        self.group.is_some()
    }

    /// CPU seconds used since the process was moved (or since it started,
    /// for the fallback); 0 when unreadable.
    pub fn seconds(&self) -> f64 {
        match &self.group {
            Some(g) => std::fs::read_to_string(g.join("cpuacct.usage"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .map_or(0.0, |ns| ns as f64 / 1e9),
            None => proc_cpu_seconds(self.pid).unwrap_or(0.0),
        }
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        // Empty once the process exited; whatever is still in it goes back
        // to the root, so the group can be removed.
        if let Some(g) = &self.group {
            let left = std::fs::read_to_string(g.join("cgroup.procs")).unwrap_or_default();
            for pid in left.split_whitespace() {
                let _ = std::fs::write(Path::new(Self::CPUACCT).join("cgroup.procs"), pid);
            }
            let _ = std::fs::remove_dir(g);
        }
    }
}

/// Whole-machine CPU time spent in system + irq + softirq, in seconds, from `/proc/stat`.
pub fn kernel_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((f.get(2)? + f.get(5)? + f.get(6)?) / hz)
}

/// Formats a ratio like `1.23×`.
pub fn ratio(x: f64, base: f64) -> String {
    if base == 0.0 || !x.is_finite() || !base.is_finite() {
        return "n/a".into();
    }
    format!("{:.2}×", x / base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_trials() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0, 4.0]);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 10.0);
        assert_eq!(s.n, 5);
        assert_eq!(Summary::of(&[1.0, 2.0]).median, 1.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 100.0), 4.0);
        assert_eq!(ratio(2.0, 4.0), "0.50×");
    }

    /// `--help` runs nothing (it once ran a whole benchmark and wrote
    /// bench.json into the working directory), and a mistyped flag is
    /// named instead of being ignored.
    #[test]
    fn options_are_validated_before_anything_runs() {
        let flags = [
            Flag { name: "--sizes", value: Some("N,N"), help: "allow-set sizes" },
            Flag { name: "--drain-only", value: None, help: "one drain" },
        ];
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(Opts::parse(args(&["--help"]), &flags), Ok(Parsed::Help));
        assert_eq!(Opts::parse(args(&["--quick", "-h"]), &flags), Ok(Parsed::Help));
        let Ok(Parsed::Run(o)) =
            Opts::parse(args(&["--out", "x.json", "--sizes", "1000", "--drain-only"]), &flags)
        else {
            panic!("valid arguments refused");
        };
        assert_eq!(o.out, PathBuf::from("x.json"));
        assert!(!o.quick);
        assert_eq!(o.value("--sizes"), Some("1000"));
        assert!(o.has("--drain-only"));
        assert_eq!(Opts::parse(args(&["--size", "1000"]), &flags), Err("unknown argument \"--size\"".into()));
        assert_eq!(Opts::parse(args(&["--sizes"]), &flags), Err("--sizes needs a N,N".into()));
        assert_eq!(Opts::parse(args(&["--out"]), &flags), Err("--out needs a FILE".into()));
        assert!(Opts::parse(args(&["--drain-only"]), &[]).is_err(), "another program's flag");
        let u = usage("xdp-e2e", &flags);
        assert!(u.contains("[--sizes N,N] [--drain-only]"), "{u}");
        assert!(u.lines().any(|l| l.starts_with("  --sizes N,N ") && l.ends_with(" allow-set sizes")), "{u}");
    }
}
