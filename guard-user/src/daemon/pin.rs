//! The pinned-state lock: one daemon per pin directory.

use std::path::Path;

use super::DaemonError;

/// An exclusive lock on `pin_dir` for this process's life (a lock file next
/// to the status socket: bpffs holds no regular files).
pub(super) fn lock_pin_dir(pin_dir: &Path, status: &Path) -> Result<std::fs::File, DaemonError> {
    let name: String =
        pin_dir.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let path = status.parent().unwrap_or(Path::new("/run")).join(format!("pin{name}.lock"));
    let io = |source| DaemonError::Io {
        what: "cannot lock pin directory via",
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!("another rpz-guard is using pin directory {}", pin_dir.display()),
        )));
    }
    Ok(f)
}
