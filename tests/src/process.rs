//! Processes started by a lab: each is recorded in a pid file holding its pid
//! and kernel start time, so `Lab::down_prefix` can end exactly the processes
//! a crashed run left behind (a reused pid has another start time).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

use crate::{LabError, Result};

/// A process started in a lab namespace; ended (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct LabChild {
    child: Child,
    pid_file: PathBuf,
    log_file: Option<PathBuf>,
    name: String,
    detached: bool,
}

impl LabChild {
    /// Records `child` in `pid_file` and tracks it.
    pub(crate) fn track(
        child: Child,
        pid_file: PathBuf,
        log_file: Option<PathBuf>,
        name: String,
    ) -> Result<Self> {
        let tracked = Self { child, pid_file, log_file, name, detached: false };
        let pid = tracked.child.id();
        let start = start_time(pid).unwrap_or(0);
        fs::write(&tracked.pid_file, format!("{pid} {start} {}\n", tracked.name))
            .map_err(|e| LabError::io(format!("write {}", tracked.pid_file.display()), e))?;
        Ok(tracked)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child (for its pipes, `try_wait`, …).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// File that receives the process's stdout/stderr, when it has one.
    pub fn log_file(&self) -> Option<&Path> {
        self.log_file.as_deref()
    }

    /// Contents of the log file so far (empty when there is none).
    pub fn log(&self) -> String {
        self.log_file.as_ref().and_then(|p| fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends the process (SIGTERM, SIGKILL after `grace`) and returns its status.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        self.terminate(grace)
    }

    /// Lets the process run on after this handle is gone; its pid file stays,
    /// so `Lab::down_prefix` still ends it.
    pub fn detach(mut self) {
        self.detached = true;
    }

    fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let _ = fs::remove_file(&self.pid_file);
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().map_err(|e| LabError::io(format!("wait for {}", self.name), e))
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(e) = self.terminate(Duration::from_secs(2)) {
            eprintln!("lab: stopping {} (pid {}): {e}", self.name, self.child.id());
        }
    }
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: plain kill(2) on a pid we recorded ourselves.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process recorded in a pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Process id.
    pub pid: u32,
    /// Kernel start time at launch.
    pub start: u64,
    /// What it is (e.g. `named`).
    pub name: String,
    /// Whether this very process (same pid and start time) still runs.
    pub alive: bool,
}

/// Reads the pid files in `dir`.
pub fn recorded(dir: &Path) -> Vec<(PathBuf, Recorded)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let Ok(text) = fs::read_to_string(&path) else { continue };
        let mut parts = text.trim().splitn(3, ' ');
        let (Some(Ok(pid)), Some(Ok(start))) =
            (parts.next().map(str::parse::<u32>), parts.next().map(str::parse::<u64>))
        else {
            continue;
        };
        let name = parts.next().unwrap_or("").to_owned();
        let alive = start_time(pid) == Some(start);
        out.push((path, Recorded { pid, start, name, alive }));
    }
    out.sort_by_key(|(_, r)| r.pid);
    out
}

/// Ends the recorded processes of `dir` that still run and removes their
/// pid files. Returns the ones that were ended.
pub fn end_recorded(dir: &Path) -> Vec<Recorded> {
    let mut ended = Vec::new();
    for (path, rec) in recorded(dir) {
        if rec.alive {
            end_pid(rec.pid, rec.start);
            ended.push(rec);
        }
        let _ = fs::remove_file(path);
    }
    ended
}

/// SIGTERM, then SIGKILL after 2 s, for the process `pid` started at `start`.
pub(crate) fn end_pid(pid: u32, start: u64) {
    if start_time(pid) != Some(start) {
        return;
    }
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        // A zombie (not our child) keeps its start time until reaped; check state.
        if start_time(pid) != Some(start) || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(pid, libc::SIGKILL);
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable() {
        let me = std::process::id();
        let a = start_time(me).expect("own /proc entry");
        assert_eq!(start_time(me), Some(a));
        assert_eq!(start_time(u32::MAX), None);
    }
}
