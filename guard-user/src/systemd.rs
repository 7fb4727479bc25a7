//! The service manager's notification protocol (`sd_notify(3)`): readiness,
//! reload and stop notices, status lines and watchdog pings, sent as
//! datagrams to the socket named by `$NOTIFY_SOCKET`.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd with `Type=notify`)
//! every call does nothing.

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

/// A handle on the notification socket, if the service manager gave one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

/// Where `$NOTIFY_SOCKET` points: a path, or (`@name`) an abstract socket.
fn notify_addr(value: &str) -> io::Result<SocketAddr> {
    match value.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None if value.starts_with('/') => SocketAddr::from_pathname(value),
        None => {
            Err(io::Error::new(io::ErrorKind::InvalidInput, format!("NOTIFY_SOCKET={value:?} is not a path")))
        }
    }
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A
    /// malformed value is logged and ignored (the service then runs without
    /// notifications, and systemd reports the missing READY).
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|v| {
            let r = notify_addr(&v).and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
            r.map_err(|e| tracing::warn!(error = %e, "ignoring NOTIFY_SOCKET")).ok()
        });
        // The watchdog is ours unless WATCHDOG_PID names another process.
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0 && ours && target.is_some())
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// True when a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send [`Notifier::watchdog`]: half the service's
    /// `WatchdogSec=`, as `sd_watchdog_enabled(3)` advises. `None`: no watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments). Failures
    /// are logged at debug level: a lost notice must not stop enforcement.
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// The service is up: the allow set is loaded and enforcement runs.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A reload (SIGHUP) started; [`Notifier::ready`] ends it.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// The service is shutting down.
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }

    /// A free-form status line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// Keep-alive ping for `WatchdogSec=`.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// A status value must be one line.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// CLOCK_MONOTONIC in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_arrive_as_datagrams() {
        let dir = std::env::temp_dir().join(format!("rpz-guard-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        listener.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().expect("socket"),
                SocketAddr::from_pathname(&path).expect("addr"),
            )),
            watchdog: Some(Duration::from_secs(30)),
        };
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let mut buf = [0u8; 256];
        n.ready("enforcing\n12 entries");
        let len = listener.recv(&mut buf).expect("ready notice");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=enforcing 12 entries");
        n.watchdog();
        let len = listener.recv(&mut buf).expect("watchdog ping");
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        n.reloading();
        let len = listener.recv(&mut buf).expect("reloading");
        assert!(buf[..len].starts_with(b"RELOADING=1\nMONOTONIC_USEC="));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn addresses_are_paths_or_abstract() {
        assert!(notify_addr("/run/systemd/notify").is_ok());
        assert!(notify_addr("@/org/freedesktop/systemd1/notify/123").is_ok());
        assert!(notify_addr("relative/path").is_err());
    }
}
