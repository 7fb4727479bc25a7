//! `rpz-guard run` (the release build) in a lab's router, XDP mode on the
//! inside interface, with the lab's primary as source: what the lab-level
//! measurement programs start.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use guard_tests::{Lab, LabChild, Role};
use guard_user::daemon::StatusReport;

/// The release binary `cargo xtask bench` builds.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/rpz-guard")
}

/// A running daemon; ended when dropped.
pub struct LabDaemon {
    /// The process.
    pub child: LabChild,
    /// Its status socket.
    pub socket: PathBuf,
}

impl LabDaemon {
    /// Starts `rpz-guard run` on the router's inside interface with the
    /// lab's primary (`dns_v4:53`, the lab key), the resolver exempt, the
    /// lab internal, no events, plus `extra` flags; waits for its status
    /// socket. `tag` names the socket.
    pub fn start(lab: &Lab, tag: &str, extra: &[&str]) -> Result<LabDaemon> {
        let a = lab.addrs();
        let socket = lab.state_dir().join(format!("{tag}.sock"));
        let server = format!("{}:53", a.dns_v4);
        let key = lab.tsig_key_file().to_string_lossy().into_owned();
        let exempt = format!("{}/32", a.dns_v4);
        let internal = format!("10.{}.0.0/16", a.subnet);
        let b = bin().to_string_lossy().into_owned();
        let sock = socket.to_string_lossy().into_owned();
        // The lab's own state directory, never the host's /var/lib/rpz-guard.
        let state = lab.state_dir().join(format!("{tag}-state")).to_string_lossy().into_owned();
        let mut args = vec![
            b.as_str(),
            "run",
            "--state-dir",
            &state,
            "--iface",
            lab.router_inside_iface(),
            "--server",
            &server,
            "--tsig-key",
            &key,
            "--exempt",
            &exempt,
            "--internal",
            &internal,
            "--events",
            "none",
            "--status-socket",
            &sock,
        ];
        args.extend_from_slice(extra);
        let mut child = lab.spawn(Role::Router, &args)?;
        let t = Instant::now();
        // The status socket answers before the XDP program is attached.
        while !status(&socket).is_ok_and(|s| !s.point.is_empty()) {
            if !child.is_running() {
                bail!("rpz-guard exited:\n{}", child.log());
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!("rpz-guard not ready:\n{}", child.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(LabDaemon { child, socket })
    }

    /// Its status report.
    pub fn status(&self) -> Result<StatusReport> {
        status(&self.socket)
    }
}

fn status(socket: &Path) -> Result<StatusReport> {
    let out = Command::new(bin()).args(["status", "--json", "--socket"]).arg(socket).output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}
