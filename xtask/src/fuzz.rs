//! `cargo xtask fuzz [--time 60s] [TARGET...]`: builds the cargo-fuzz
//! targets in `fuzz/` (nightly, AddressSanitizer, debug assertions) and runs
//! each for a bounded time with memory limits. A crash, a leak, a timeout,
//! an allocation over the limit or a run over the RSS limit fails the task
//! and leaves the reproducer in `fuzz/artifacts/<target>/`.
//!
//! Each run reads the committed seeds (`fuzz/seeds/<target>/`, never
//! written) and a working corpus (`fuzz/corpus/<target>/`, git-ignored,
//! kept between runs so coverage accumulates). Logs go to
//! `target/fuzz-logs/<target>.log`; the summary (time, executions,
//! libFuzzer's `cov:`/`ft:` coverage figures, corpus size) is printed and
//! appended to `target/fuzz-logs/history.tsv`.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::command::{describe, repo_root, run_step};

/// Largest RSS a target may reach (libFuzzer `-rss_limit_mb`).
const RSS_LIMIT_MB: u32 = 2048;
/// Largest single allocation (libFuzzer `-malloc_limit_mb`): the decoders
/// allocate in proportion to their input; the largest legitimate buffer is
/// the capture reader's 16 MiB block limit.
const MALLOC_LIMIT_MB: u32 = 128;
/// One input taking longer than this is a hang (libFuzzer `-timeout`).
const INPUT_TIMEOUT_SECS: u32 = 30;
/// Longest generated input (libFuzzer `-max_len`).
const MAX_LEN: u32 = 65_536;

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Time per target, e.g. `60s`, `5m`, `1h` (a bare number is seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration_secs)]
    pub time: u64,
    /// Targets to run (default: all; `cargo xtask fuzz --list` names them).
    pub targets: Vec<String>,
    /// Only list the targets.
    #[arg(long)]
    pub list: bool,
}

/// Parses `90`, `90s`, `5m`, `1h` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 60s, 5m or 1h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    if n == 0 {
        return Err("the time per target must be at least 1s".into());
    }
    Ok(n * mult)
}

/// What one target's run reached.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunStats {
    /// Inputs executed.
    pub execs: u64,
    /// Coverage counters hit (`cov:`).
    pub cov: u64,
    /// Features (`ft:`).
    pub ft: u64,
    /// Corpus entries at the end (`corp:`).
    pub corpus: u64,
}

/// Reads the figures from a libFuzzer status line, e.g.
/// `#51234 DONE   cov: 812 ft: 2310 corp: 140/9811b lim: 4096 exec/s: 853 rss: 120Mb`.
pub fn parse_status(line: &str) -> Option<RunStats> {
    let rest = line.strip_prefix('#')?;
    let execs = rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let field = |name: &str| -> Option<u64> {
        let mut words = rest.split_whitespace();
        words.find(|w| *w == name)?;
        let v = words.next()?;
        v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some(RunStats {
        execs,
        cov: field("cov:")?,
        ft: field("ft:").unwrap_or(0),
        corpus: field("corp:").unwrap_or(0),
    })
}

fn fuzz_dir() -> PathBuf {
    repo_root().join("fuzz")
}

/// `cargo +nightly fuzz ...` at the repository root.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(repo_root()).args(["+nightly", "fuzz"]);
    cmd
}

/// The targets declared in `fuzz/Cargo.toml` (`[[bin]]` names), in order.
pub fn targets() -> Result<Vec<String>> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let text = fs::read_to_string(&manifest).with_context(|| format!("read {}", manifest.display()))?;
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(v) = line.strip_prefix("name = ") {
            out.push(v.trim_matches('"').to_owned());
        }
    }
    Ok(out)
}

/// Runs the task.
pub fn run(args: &Args) -> Result<()> {
    let all = targets()?;
    if args.list {
        for t in &all {
            println!("{t}");
        }
        return Ok(());
    }
    let chosen: Vec<String> = if args.targets.is_empty() { all.clone() } else { args.targets.clone() };
    if let Some(bad) = chosen.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target {bad:?}; targets: {}", all.join(", "));
    }
    run_targets(&chosen, args.time)
}

/// Builds once, then runs every target in `chosen` for `secs` seconds each;
/// fails after the last one if any failed.
pub fn run_targets(chosen: &[String], secs: u64) -> Result<()> {
    if !crate::command::succeeds(cargo_fuzz().arg("--version")) {
        bail!("cargo-fuzz is not installed for the nightly toolchain; run `cargo xtask setup` (as root)");
    }
    let mut build = cargo_fuzz();
    build.args(["build", "--debug-assertions"]);
    // `cargo fuzz build` without a name builds every target.
    if let [one] = chosen {
        build.arg(one);
    }
    run_step("fuzz build", &mut build)?;
    let logs = repo_root().join("target/fuzz-logs");
    fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for t in chosen {
        let started = Instant::now();
        let outcome = run_one(t, secs, &logs);
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Ok(stats) => {
                println!(
                    "fuzz: {t:<16} ok   {took:>6.0} s  {:>10} execs  cov {:>6}  ft {:>7}  corpus {:>5}",
                    stats.execs, stats.cov, stats.ft, stats.corpus
                );
                rows.push((t.clone(), took, stats, "ok"));
            }
            Err(e) => {
                println!("fuzz: {t:<16} FAILED after {took:.0} s: {e:#}");
                rows.push((t.clone(), took, RunStats::default(), "FAILED"));
                failed.push(t.clone());
            }
        }
    }
    append_history(&logs.join("history.tsv"), &rows)?;
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (reproducers in fuzz/artifacts/<target>/, logs in target/fuzz-logs/)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn append_history(path: &Path, rows: &[(String, f64, RunStats, &str)]) -> Result<()> {
    let new = !path.exists();
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    if new {
        writeln!(f, "unix_time\ttarget\tsecs\texecs\tcov\tft\tcorpus\tresult")?;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for (t, secs, s, result) in rows {
        writeln!(f, "{now}\t{t}\t{secs:.0}\t{}\t{}\t{}\t{}\t{result}", s.execs, s.cov, s.ft, s.corpus)?;
    }
    Ok(())
}

/// Runs one target; its whole output goes to `<logs>/<target>.log`.
fn run_one(target: &str, secs: u64, logs: &Path) -> Result<RunStats> {
    let corpus = fuzz_dir().join("corpus").join(target);
    let seeds = fuzz_dir().join("seeds").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let mut cmd = cargo_fuzz();
    cmd.args(["run", "--debug-assertions", target]).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--").args([
        format!("-max_total_time={secs}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"),
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        format!("-max_len={MAX_LEN}"),
        "-print_final_stats=1".into(),
        // The targets' own stdout (none expected) is not libFuzzer's report.
        "-close_fd_mask=1".into(),
    ]);
    let line = describe(&cmd);
    let log_path = logs.join(format!("{target}.log"));
    let mut log = fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    writeln!(log, "$ {line}")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let mut last = None;
    let mut tail: Vec<String> = Vec::new();
    if let Some(err) = child.stderr.take() {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{l}");
            if let Some(s) = parse_status(&l) {
                last = Some(s);
            }
            tail.push(l);
            if tail.len() > 60 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("{status}; log {}:\n{}", log_path.display(), tail.join("\n"));
    }
    last.with_context(|| format!("no libFuzzer status line in {}", log_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("60s"), Ok(60));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("5m"), Ok(300));
        assert_eq!(parse_duration_secs("1h"), Ok(3600));
        assert!(parse_duration_secs("0s").is_err());
        assert!(parse_duration_secs("5d").is_err());
        assert!(parse_duration_secs("soon").is_err());
    }

    #[test]
    fn status_lines() {
        let l = "#51234\tDONE   cov: 812 ft: 2310 corp: 140/9811b lim: 4096 exec/s: 853 rss: 120Mb";
        assert_eq!(parse_status(l), Some(RunStats { execs: 51234, cov: 812, ft: 2310, corpus: 140 }));
        let l = "#1024\tpulse  cov: 30 ft: 31 corp: 3/12b exec/s: 512 rss: 40Mb";
        assert_eq!(parse_status(l), Some(RunStats { execs: 1024, cov: 30, ft: 31, corpus: 3 }));
        assert_eq!(parse_status("INFO: Seed: 1"), None);
        assert_eq!(parse_status("#2\tINITED exec/s: 0 rss: 33Mb"), None);
    }

    #[test]
    fn every_target_has_a_source_file() {
        let all = targets().expect("fuzz/Cargo.toml");
        assert!(all.len() >= 10, "{all:?}");
        for t in all {
            assert!(fuzz_dir().join("fuzz_targets").join(format!("{t}.rs")).is_file(), "{t}");
        }
    }
}
