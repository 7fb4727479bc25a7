//! Pinned state: where (and whether) to pin, and the lock that keeps one
//! daemon per pin directory.

use std::path::Path;

use super::DaemonError;
use crate::{
    config::{Config, Mode},
    xdp::PinLifetime,
};

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

/// Decides where (and whether) to pin, before anything is loaded: pinning
/// is on by default at [`crate::xdp::default_pin_dir`]. A bpffs is mounted
/// at `/sys/fs/bpf` when missing. A pin directory on a bpffs that would
/// vanish with the daemon (a private mount namespace) is refused when the
/// operator named it, and when defaulted pinning is switched off with a loud
/// warning (the state would not survive a crash anyway). Returns the
/// configuration with the decision written into `enforce.pin`/`pin_dir`.
pub(super) fn prepare(mut cfg: Config) -> Result<Config, DaemonError> {
    let Some(dir) = cfg.enforce.effective_pin_dir() else {
        if cfg.enforce.mode == Mode::Xdp {
            tracing::warn!(
                "pinning is off (--no-pin): the XDP program detaches if the daemon dies, and traffic then passes unfiltered until a restart"
            );
        }
        return Ok(cfg);
    };
    match crate::xdp::pin_lifetime(&dir) {
        PinLifetime::Persistent => {
            crate::xdp::ensure_bpffs(&dir)?;
            cfg.enforce.pin_dir = Some(dir);
        }
        PinLifetime::Transient { why } if cfg.enforce.pin_dir_explicit() => {
            return Err(DaemonError::Xdp(crate::xdp::XdpError::Pin {
                dir,
                why: format!("{why}; use a bpffs the host sees, or --no-pin"),
            }));
        }
        PinLifetime::Transient { why } => {
            tracing::error!(
                dir = %dir.display(),
                "NOT PINNING: {why}. If the daemon dies, the XDP program detaches and traffic passes \
                 unfiltered until a restart. Run the daemon in the host's mount namespace, or pass \
                 --pin DIR on a bpffs the host sees"
            );
            cfg.enforce.pin = false;
            cfg.enforce.pin_dir = None;
        }
    }
    Ok(cfg)
}
