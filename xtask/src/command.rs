//! Running external commands as named steps: stdout passes through, stderr
//! is echoed and its tail kept for the error message.
use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};

/// Lines of stderr kept for an error message.
const STDERR_TAIL: usize = 40;

/// The repository root (parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo` run at the repository root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(repo_root());
    cmd
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` as step `step`; failure names the step and shows stderr.
pub fn run_step(step: &str, cmd: &mut Command) -> Result<()> {
    run_step_with(step, cmd, None)
}

/// Like [`run_step`], but reads cargo test's `test result:` lines from
/// stdout and returns the totals (passed, failed).
pub fn run_step_counting_tests(step: &str, cmd: &mut Command) -> Result<(u64, u64)> {
    let mut totals = (0, 0);
    run_step_with(step, cmd, Some(&mut totals))?;
    Ok(totals)
}

fn run_step_with(step: &str, cmd: &mut Command, totals: Option<&mut (u64, u64)>) -> Result<()> {
    let line = describe(cmd);
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    if totals.is_some() {
        cmd.stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().with_context(|| format!("step `{step}`: cannot start `{line}`"))?;
    let stderr = child.stderr.take();
    let tail_reader = std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(STDERR_TAIL);
        let Some(stderr) = stderr else { return tail };
        let mut err = std::io::stderr();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(err, "{l}");
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(l);
        }
        tail
    });
    if let (Some(totals), Some(stdout)) = (totals, child.stdout.take()) {
        let mut out = std::io::stdout();
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(out, "{l}");
            if let Some((passed, failed)) = parse_test_result(&l) {
                totals.0 += passed;
                totals.1 += failed;
            }
        }
    }
    let status = child.wait().with_context(|| format!("step `{step}`: waiting for `{line}`"))?;
    let tail: Vec<String> = tail_reader.join().map(Vec::from).unwrap_or_default();
    if !status.success() {
        bail!("step `{step}` failed: `{line}` exited with {status}\n{}", tail.join("\n"));
    }
    Ok(())
}

/// Parses `test result: ok. 12 passed; 0 failed; …`.
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';').find_map(|part| {
            part.trim()
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .strip_suffix(word)?
                .trim()
                .parse()
                .ok()
        })
    };
    Some((count("passed")?, count("failed")?))
}

/// Runs `cmd` quietly and returns its output (whatever the status).
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run `{}`", describe(cmd)))
}

/// Whether `cmd` runs and exits 0 (quietly).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Fails unless running as root.
pub fn require_root(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`cargo xtask {task}` must run as root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_test_result;

    #[test]
    fn test_result_lines_are_counted() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some((12, 0))
        );
        assert_eq!(parse_test_result("test result: FAILED. 2 passed; 1 failed; 0 ignored"), Some((2, 1)));
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
