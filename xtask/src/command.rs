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
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("step `{step}`: cannot start `{line}`"))?;
    let mut tail = VecDeque::with_capacity(STDERR_TAIL);
    if let Some(stderr) = child.stderr.take() {
        let mut err = std::io::stderr();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(err, "{l}");
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(l);
        }
    }
    let status = child.wait().with_context(|| format!("step `{step}`: waiting for `{line}`"))?;
    if !status.success() {
        let tail: Vec<String> = tail.into_iter().collect();
        bail!("step `{step}` failed: `{line}` exited with {status}\n{}", tail.join("\n"));
    }
    Ok(())
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
