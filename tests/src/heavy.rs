//! Heavy tests run one at a time.
//!
//! A few tests measure or flood at rates a 2-core machine reaches only
//! when nothing else heavy runs (ten million flood packets, 1M-entry
//! zones). `cargo test` runs a binary's tests in parallel, so each of
//! them takes this machine-wide lock first; lighter tests run beside them.

use std::{fs::File, os::fd::AsRawFd};

/// Where the lock lives (a lock file, kept; `flock` locks die with the process).
const LOCK_PATH: &str = "/run/lock/rpz-guard-heavy-test.lock";

/// Holds the heavy-test lock until dropped.
pub struct HeavyGuard(File);

impl Drop for HeavyGuard {
    fn drop(&mut self) {
        // SAFETY: our own open descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Waits until no other heavy test runs on this machine, then holds the
/// lock for the caller's scope.
pub fn exclusive() -> HeavyGuard {
    let _ = std::fs::create_dir_all("/run/lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("open the heavy-test lock {LOCK_PATH}: {e}"));
    // SAFETY: our own open descriptor; blocks until the lock is free.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {LOCK_PATH}: {}", std::io::Error::last_os_error());
    HeavyGuard(f)
}
