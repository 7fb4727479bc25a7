//! A private Open vSwitch: its own `ovsdb-server` and `ovs-vswitchd` with a
//! private directory (database, sockets, logs), optionally inside a network
//! namespace, so tests never touch a system OVS. Both daemons are ended (by
//! pid) and the directory removed on drop, also after a panic.
//!
//! ```no_run
//! use guard_tests::ovs::Ovs;
//! let ovs = Ovs::start(std::env::temp_dir().join("my-ovs"), None).expect("ovs");
//! ovs.vsctl(&["add-br", "tbr", "--", "set", "bridge", "tbr", "datapath_type=netdev"]).expect("bridge");
//! let flows = ovs.dump_flows("tbr").expect("dump-flows");
//! # drop(flows);
//! ```
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{LabError, Result};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const ENV: [&str; 4] = ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"];

/// A running private OVS instance (database server and switch daemon).
#[derive(Debug)]
pub struct Ovs {
    dir: PathBuf,
    netns: Option<String>,
    db: Option<Child>,
    vswitchd: Option<Child>,
}

impl Ovs {
    /// Creates a fresh database in `dir` (emptied first) and starts both
    /// daemons, inside namespace `netns` when given (the datapath's ports and
    /// its controller connections then live there).
    pub fn start(dir: impl Into<PathBuf>, netns: Option<&str>) -> Result<Ovs> {
        let dir = dir.into();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
        let mut ovs = Ovs { dir, netns: netns.map(str::to_owned), db: None, vswitchd: None };
        let d = ovs.dir.display().to_string();
        ovs.output("ovsdb-tool", &["create", &format!("{d}/conf.db"), SCHEMA])?;
        let db = ovs.spawn(&[
            "ovsdb-server",
            &format!("{d}/conf.db"),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--unixctl={d}/ovsdb.ctl"),
            &format!("--log-file={d}/ovsdb.log"),
        ])?;
        ovs.db = Some(db);
        wait_path(&ovs.dir.join("db.sock"), "ovsdb-server socket")?;
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.start_vswitchd()?;
        Ok(ovs)
    }

    /// The private directory (database, sockets, `*.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Process ids of the running daemons (ovsdb-server, then ovs-vswitchd).
    pub fn pids(&self) -> Vec<u32> {
        self.db.iter().chain(self.vswitchd.iter()).map(Child::id).collect()
    }

    /// A command for an OVS tool with the private directory in its environment.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        for v in ENV {
            c.env(v, &self.dir);
        }
        c.stdin(Stdio::null());
        c
    }

    /// `ovs-vsctl` against the private database; returns its stdout.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db=unix:{}/db.sock", self.dir.display());
        let mut a = vec![db.as_str(), "--timeout=20"];
        a.extend_from_slice(args);
        self.output("ovs-vsctl", &a)
    }

    /// Adds `bridge` as rpz-guard runs it: netdev datapath (no kernel module
    /// here), OpenFlow 1.3 only, `fail_mode=secure` (nothing crosses without
    /// the controller), and datapath id `dpid` when given.
    pub fn add_secure_bridge(&self, bridge: &str, dpid: Option<u64>) -> Result<String> {
        let id = dpid.map(|d| format!("other_config:datapath-id={d:016x}"));
        let mut args =
            vec!["add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev", "fail_mode=secure"];
        args.push("protocols=OpenFlow13");
        args.extend(id.as_deref());
        self.vsctl(&args)
    }

    /// `ovs-vsctl set-ssl KEY CERT CACERT`: the switch's own key and
    /// certificate, and the CA that must have signed the controller's
    /// certificate (for `ssl:` controller targets).
    pub fn set_ssl(&self, key: &Path, cert: &Path, ca_cert: &Path) -> Result<String> {
        let p = |x: &Path| x.display().to_string();
        self.vsctl(&["set-ssl", &p(key), &p(cert), &p(ca_cert)])
    }

    /// The OpenFlow management socket of `bridge`, for `ovs-ofctl`.
    pub fn mgmt(&self, bridge: &str) -> String {
        format!("unix:{}/{bridge}.mgmt", self.dir.display())
    }

    /// `ovs-ofctl -O OpenFlow13 <args>`; name the switch with [`Ovs::mgmt`].
    pub fn ofctl(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-O", "OpenFlow13"];
        a.extend_from_slice(args);
        self.output("ovs-ofctl", &a)
    }

    /// `ovs-ofctl dump-flows` of `bridge` (OpenFlow 1.3 syntax).
    pub fn dump_flows(&self, bridge: &str) -> Result<String> {
        self.ofctl(&["dump-flows", &self.mgmt(bridge)])
    }

    /// Waits until `ovs-vswitchd` has revalidated its datapath flows against
    /// the current flow tables (`ovs-appctl revalidator/wait`). A flow
    /// deletion takes effect in the OpenFlow table at once, but a cached
    /// datapath flow may forward a few more packets until revalidation.
    pub fn revalidated(&self) -> Result<String> {
        let ctl = format!("{}/vswitchd.ctl", self.dir.display());
        self.output("ovs-appctl", &["-t", &ctl, "revalidator/wait"])
    }

    /// Starts `ovs-vswitchd` (after [`Ovs::stop_vswitchd`]); waits for its control socket.
    pub fn start_vswitchd(&mut self) -> Result<()> {
        let d = self.dir.display().to_string();
        let child = self.spawn(&[
            "ovs-vswitchd",
            &format!("unix:{d}/db.sock"),
            &format!("--unixctl={d}/vswitchd.ctl"),
            &format!("--log-file={d}/vswitchd.log"),
        ])?;
        self.vswitchd = Some(child);
        wait_path(&self.dir.join("vswitchd.ctl"), "ovs-vswitchd control socket")
    }

    /// Kills `ovs-vswitchd` (SIGKILL: no orderly teardown, like a crash).
    pub fn stop_vswitchd(&mut self) {
        end(self.vswitchd.take());
        let _ = fs::remove_file(self.dir.join("vswitchd.ctl"));
    }

    /// Kills and restarts `ovs-vswitchd`; the database (bridges, ports,
    /// controller) stays, flows are gone until a controller installs them.
    /// Returns once every bridge answers on its management socket again.
    pub fn restart_vswitchd(&mut self) -> Result<()> {
        self.stop_vswitchd();
        self.start_vswitchd()?;
        let limit = Duration::from_secs(10);
        for br in self.vsctl(&["list-br"])?.lines().filter(|b| !b.is_empty()) {
            let t = Instant::now();
            while self.dump_flows(br).is_err() {
                if t.elapsed() > limit {
                    return Err(LabError::Timeout {
                        what: format!("bridge {br} after restart"),
                        waited: limit,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn spawn(&self, args: &[&str]) -> Result<Child> {
        let mut c = match &self.netns {
            // `ip netns exec` execs the program: the child pid is the daemon's.
            Some(ns) => {
                let mut c = self.command("ip");
                c.args(["netns", "exec", ns]).args(args);
                c
            }
            None => {
                let mut c = self.command(args[0]);
                c.args(&args[1..]);
                c
            }
        };
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c.spawn().map_err(|e| LabError::io(format!("start {} (openvswitch-switch installed?)", args[0]), e))
    }

    fn output(&self, prog: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(prog)
            .args(args)
            .output()
            .map_err(|e| LabError::io(format!("run {prog} (openvswitch-switch installed?)"), e))?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("{prog} {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A public-key infrastructure made with `ovs-pki`, as Open vSwitch's
/// documentation sets one up: a controller CA and a switch CA
/// (`<dir>/pki/controllerca`, `<dir>/pki/switchca`), and certificates
/// signed by them. Removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

/// Key and certificate files of one signed identity.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `<name>-privkey.pem`.
    pub key: PathBuf,
    /// `<name>-cert.pem`.
    pub cert: PathBuf,
}

impl Pki {
    /// `ovs-pki init` in `dir` (emptied first).
    pub fn init(dir: impl Into<PathBuf>) -> Result<Pki> {
        let dir = dir.into();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
        let pki = Pki { dir };
        pki.ovs_pki(&["init", "--force"])?;
        Ok(pki)
    }

    /// `ovs-pki req+sign <name> <kind>` in the PKI's directory (the name
    /// goes into the certificate's CN, at most 64 bytes with the id);
    /// `kind` is `controller` or `switch`.
    pub fn sign(&self, name: &str, kind: &str) -> Result<Identity> {
        self.ovs_pki(&["req+sign", name, kind])?;
        let id = Identity {
            key: self.dir.join(format!("{name}-privkey.pem")),
            cert: self.dir.join(format!("{name}-cert.pem")),
        };
        for f in [&id.key, &id.cert] {
            if !f.exists() {
                return Err(LabError::io(
                    format!("ovs-pki did not write {}", f.display()),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
        }
        Ok(id)
    }

    /// The CA certificate of `kind` (`controller` or `switch`).
    pub fn ca_cert(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("pki/{kind}ca/cacert.pem"))
    }

    fn ovs_pki(&self, args: &[&str]) -> Result<()> {
        let d = self.dir.display();
        let mut a = vec![format!("--dir={d}/pki"), format!("--log={d}/ovs-pki.log")];
        a.extend(args.iter().map(|s| (*s).to_owned()));
        let out = Command::new("ovs-pki")
            .args(&a)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::io("run ovs-pki (openvswitch-common installed?)", e))?;
        if !out.status.success() {
            // ovs-pki reports some failures only in its log.
            let log = fs::read_to_string(self.dir.join("ovs-pki.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            return Err(LabError::Command {
                command: format!("ovs-pki {}", a.join(" ")),
                status: out.status.to_string(),
                stderr: format!(
                    "{}{}\nlog: {}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    String::from_utf8_lossy(&out.stdout).trim(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ),
            });
        }
        Ok(())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // A netdev bridge's internal port is a tap device that outlives
        // ovs-vswitchd unless the bridge is deleted first.
        if self.vswitchd.is_some() {
            let bridges = self.vsctl(&["list-br"]).unwrap_or_default();
            for br in bridges.lines().filter(|b| !b.is_empty()) {
                let _ = self.vsctl(&["--if-exists", "del-br", br]);
            }
        }
        self.stop_vswitchd();
        end(self.db.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn end(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn wait_path(p: &Path, what: &str) -> Result<()> {
    let limit = Duration::from_secs(10);
    let t = Instant::now();
    while !p.exists() {
        if t.elapsed() > limit {
            return Err(LabError::Timeout { what: what.to_owned(), waited: limit });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
