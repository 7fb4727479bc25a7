//! Privileged: rpz-guard as the packaged service runs it, in the lab (this
//! machine has no systemd as PID 1). The unit's own lines drive the run:
//! `ExecStart=` (binary and config path redirected to the build and to the
//! shipped config edited as an operator would), `Environment=`,
//! `CapabilityBoundingSet=` (applied with `setpriv`, so the daemon holds
//! exactly those capabilities) and `NoNewPrivileges=`. (`LimitMEMLOCK=`
//! cannot be raised here; Linux >= 5.11 charges map memory to the cgroup
//! and ignores it.) The
//! test plays the service manager's side of `sd_notify`: READY=1 once the
//! set is loaded and the program attached, WATCHDOG=1 pings, RELOADING=1
//! on SIGHUP.
//!
//! SIGHUP: a policy change (a new exempt source) and an event format change
//! are applied without detaching; an interface change is refused with the
//! key named and the old config kept; the events file is reopened after a
//! rename (log rotation). Every event line is validated against
//! `docs/events.schema.json`, and the metrics pass `promtool check metrics`.

use std::{
    net::IpAddr,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use guard_tests::{Lab, LabAddrs, LabChild, LabConfig, Role};
use guard_user::daemon::StatusReport;

mod daemon_support;

use daemon_support::{BIN, check_event_line, eventually, rpz_add};

fn unit_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/rpz-guard.service"))
        .expect("the unit file")
}

/// The values of `Key=` lines of the unit (in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_owned).collect()
}

/// `CAP_BPF CAP_NET_ADMIN` → `-all,+bpf,+net_admin` for setpriv, and the
/// capability numbers for comparing with /proc/PID/status.
fn bounding_set(unit: &str) -> (String, u64) {
    let caps = unit_values(unit, "CapabilityBoundingSet");
    assert_eq!(caps.len(), 1, "one CapabilityBoundingSet= line");
    let mut arg = String::from("-all");
    let mut mask = 0u64;
    for c in caps[0].split_whitespace() {
        let name = c.strip_prefix("CAP_").expect("CAP_ name").to_ascii_lowercase();
        let bit = match name.as_str() {
            "net_bind_service" => 10,
            "net_admin" => 12,
            "net_raw" => 13,
            "ipc_lock" => 14,
            "sys_admin" => 21,
            "sys_resource" => 24,
            "perfmon" => 38,
            "bpf" => 39,
            other => panic!("unexpected capability {other} in the unit"),
        };
        arg.push_str(&format!(",+{name}"));
        mask |= 1 << bit;
    }
    (arg, mask)
}

/// The shipped config, edited for the lab as an operator edits it for a router.
fn edit_config(lab: &Lab, dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../rpz-guard.example.toml"))
            .expect("shipped config");
    let a = lab.addrs();
    let socket = dir.join(format!("{tag}.sock"));
    let events = dir.join(format!("{tag}-events.jsonl"));
    let conf = dir.join(format!("{tag}.toml"));
    let mut text = String::new();
    let mut section = String::new();
    for line in shipped.lines() {
        if line.starts_with('[') {
            section = line.to_owned();
        }
        let key = line.split('=').next().unwrap_or_default().trim();
        let value = match (section.as_str(), key) {
            ("[enforce]", "iface") => Some(format!("\"{}\"", lab.router_inside_iface())),
            ("[enforce]", "pin_dir") => Some(format!("\"{}\"", dir.join("bpffs/guard").display())),
            ("[policy]", "exempt_sources") => Some(format!("[\"{}/32\", \"{}/128\"]", a.dns_v4, a.dns_v6)),
            ("[policy]", "internal_networks") => {
                Some(format!("[\"10.{}.0.0/16\", \"{}/48\"]", a.subnet, a.lan_v6().0))
            }
            ("[rpz]", "server") => Some(format!("\"{}:53\"", a.dns_v4)),
            ("[rpz]", "tsig_key") => Some(format!("\"{}\"", lab.tsig_key_file().display())),
            ("[rpz]", "notify_listen") => Some(format!("\"{}:{}\"", a.router_in_v4, lab.notify_port())),
            ("[events]", "output") => Some(format!("\"{}\"", events.display())),
            (_, "state_dir") => Some(format!("\"{}\"", dir.join("state").display())),
            ("[status]", "socket") => Some(format!("\"{}\"", socket.display())),
            ("[status]", "metrics_listen") => Some("\"127.0.0.1:9466\"".to_owned()),
            _ => None,
        };
        match value {
            Some(v) => text.push_str(&format!("{key} = {v}\n")),
            None if key == "# pin_dir" => {
                text.push_str(&format!("pin_dir = \"{}\"\n", dir.join("bpffs/guard").display()))
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    std::fs::write(&conf, &text).expect("write config");
    (conf, socket, events)
}

/// The service manager's end of `$NOTIFY_SOCKET`.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn bind(path: PathBuf) -> Manager {
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        Manager { sock, path }
    }

    /// Waits for a notice containing `what`; returns it and the wait.
    fn wait_for(&self, what: &str, within: Duration) -> Option<(String, Duration)> {
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        while t.elapsed() < within {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.contains(what) {
                    return Some((msg, t.elapsed()));
                }
            }
        }
        None
    }
}

fn status(socket: &Path) -> Option<StatusReport> {
    let out = Command::new(BIN).args(["status", "--json", "--socket"]).arg(socket).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn dig_ok(lab: &Lab, role: Role, server: IpAddr) -> bool {
    lab.dig_query(role, server, "www.example.net", "A").is_ok()
}

fn hup(child: &LabChild) {
    // SAFETY: signalling the daemon this test started.
    assert_eq!(unsafe { libc::kill(child.pid() as i32, libc::SIGHUP) }, 0, "kill -HUP");
}

fn cap_eff(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let hex = text.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff").trim();
    u64::from_str_radix(hex, 16).expect("hex")
}

fn wait_reload(socket: &Path, n: u64) -> StatusReport {
    let mut last = None;
    let ok = eventually(Duration::from_secs(10), || {
        last = status(socket);
        last.as_ref().is_some_and(|s| s.reloads.applied + s.reloads.refused + s.reloads.failed >= n)
    });
    assert!(ok.is_some(), "reload {n} not reported: {last:?}");
    last.expect("status")
}

#[test]
fn unit_execstart_with_its_capabilities_notify_and_sighup() {
    let lab = Lab::up(LabConfig::for_test("svcl")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let a = lab.addrs().clone();
    let ns_ip = IpAddr::V4(LabAddrs::inet_v4(53));
    rpz_add(&lab, ns_ip, "127.0.0.1");
    let rogue = IpAddr::V4(LabAddrs::inet_v4(99));

    let dir = lab.state_dir().join("service");
    std::fs::create_dir_all(dir.join("bpffs")).expect("mkdir");
    let mount =
        Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir.join("bpffs")).status().expect("mount");
    assert!(mount.success(), "mount bpffs");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _umount = Umount(dir.join("bpffs"));
    let (conf, socket, events) = edit_config(&lab, &dir, "svc");
    let manager = Manager::bind(dir.join("notify.sock"));

    // The unit's ExecStart with its environment and sandbox, as systemd runs it.
    let unit = unit_text();
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec.len(), 1);
    let mut argv: Vec<String> = exec[0]
        .split_whitespace()
        .map(|w| match w {
            "/usr/bin/rpz-guard" => BIN.to_owned(),
            "/etc/rpz-guard/rpz-guard.toml" => conf.display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    assert_eq!(argv[0], BIN, "ExecStart runs /usr/bin/rpz-guard");
    let (caps, mask) = bounding_set(&unit);
    assert_eq!(unit_values(&unit, "NoNewPrivileges"), ["yes"]);
    assert_eq!(unit_values(&unit, "LimitMEMLOCK"), ["infinity"]);
    let watchdog_sec: u64 =
        unit_values(&unit, "WatchdogSec").first().and_then(|v| v.parse().ok()).expect("WatchdogSec=");
    assert!(watchdog_sec >= 10, "a watchdog that tolerates a slow map update");
    let mut cmd: Vec<String> = vec!["env".into()];
    cmd.extend(unit_values(&unit, "Environment"));
    // systemd sets these for Type=notify with WatchdogSec=; a 2 s watchdog
    // here so that pings show within the test.
    cmd.push(format!("NOTIFY_SOCKET={}", manager.path.display()));
    cmd.push("WATCHDOG_USEC=2000000".into());
    cmd.extend(
        ["setpriv", "--no-new-privs", "--inh-caps", "-all", "--bounding-set", &caps, "--"].map(String::from),
    );
    cmd.append(&mut argv);
    let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut child = lab.spawn(Role::Router, &argv).unwrap_or_else(|e| panic!("spawn: {e}"));

    let mut ready = None;
    while ready.is_none() && started.elapsed() < Duration::from_secs(30) {
        assert!(child.is_running(), "rpz-guard exited before READY=1; log:\n{}", child.log());
        ready = manager.wait_for("READY=1", Duration::from_secs(1));
    }
    let Some((msg, _)) = ready else { panic!("no READY=1 within 30 s; log:\n{}", child.log()) };
    assert!(msg.contains("STATUS=enforcing on xdp:in0") && msg.contains("serial"), "ready notice: {msg}");
    eprintln!("READY=1 {:?} after start", started.elapsed());
    // Enforcing at READY: the status is up, the set loaded, the program attached.
    let st = status(&socket).expect("status answers at READY");
    assert!(st.point.starts_with("xdp:in0"), "point: {}", st.point);
    assert_eq!(st.entries.0, 1);
    assert_eq!(cap_eff(child.pid()), mask, "the daemon holds exactly the unit's capabilities");
    assert!(
        manager.wait_for("WATCHDOG=1", Duration::from_secs(3)).is_some(),
        "watchdog pings every WatchdogSec/2"
    );

    // Enforcement with only those capabilities.
    assert!(dig_ok(&lab, Role::Pc, ns_ip), "DNS to a registered server passes");
    assert!(!dig_ok(&lab, Role::Bot, rogue), "the bot's DNS to an unregistered server is blocked");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&events).is_ok_and(|t| !t.is_empty()))
            .is_some()
    );

    // SIGHUP 1: the bot becomes exempt, events switch to ECS; the events
    // file was rotated away just before.
    let rotated = events.with_extension("jsonl.1");
    std::fs::rename(&events, &rotated).expect("rotate");
    let text = std::fs::read_to_string(&conf).expect("conf");
    let exempt = format!("exempt_sources = [\"{}/32\", \"{}/128\", \"{}/32\"]", a.dns_v4, a.dns_v6, a.bot_v4);
    let edited: String = text
        .lines()
        .map(|l| if l.starts_with("exempt_sources") { exempt.clone() } else { l.to_owned() })
        .map(|l| if l.starts_with("format = ") { "format = \"ecs\"".to_owned() } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&conf, &edited).expect("edit");
    hup(&child);
    assert!(manager.wait_for("RELOADING=1", Duration::from_secs(5)).is_some(), "RELOADING=1 on SIGHUP");
    let st = wait_reload(&socket, 1);
    assert_eq!(st.reloads.applied, 1, "{:?}", st.reloads);
    let msg = st.reloads.last_message.clone().unwrap_or_default();
    assert!(msg.contains("policy.exempt_sources") && msg.contains("events.format"), "{msg}");
    assert!(events.exists(), "the events file was reopened under its name");
    assert!(dig_ok(&lab, Role::Bot, rogue), "the bot is exempt after the reload");
    assert!(!dig_ok(&lab, Role::Pc, rogue), "the pc is still checked");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&events).is_ok_and(|t| !t.is_empty()))
            .is_some()
    );

    // SIGHUP 2: another interface is refused, naming the key; the old config stays.
    std::fs::write(&conf, edited.replace("iface = \"in0\"", "iface = \"out0\"")).expect("edit");
    hup(&child);
    let st = wait_reload(&socket, 2);
    assert_eq!((st.reloads.applied, st.reloads.refused), (1, 1), "{:?}", st.reloads);
    let msg = st.reloads.last_message.clone().unwrap_or_default();
    assert!(msg.contains("enforce.iface") && msg.contains("restart"), "{msg}");
    assert!(st.point.starts_with("xdp:in0"));
    assert!(child.log().contains("reload refused"), "the refusal is logged");
    assert!(dig_ok(&lab, Role::Bot, rogue), "the applied policy stays after a refused reload");
    assert!(!dig_ok(&lab, Role::Pc, rogue), "enforcement on in0 continues");

    // Events: native before the reload (rotated file), ECS after; all valid.
    let old: Vec<_> =
        std::fs::read_to_string(&rotated).expect("rotated").lines().map(check_event_line).collect();
    let new: Vec<_> =
        std::fs::read_to_string(&events).expect("events").lines().map(check_event_line).collect();
    assert!(old.iter().all(|v| v["version"] == 1 && v["src"] == a.bot_v4.to_string()), "{old:?}");
    assert!(!new.is_empty() && new.iter().all(|v| v["source"]["ip"] == a.pc_v4.to_string()), "{new:?}");
    assert!(
        new.iter().all(|v| v["destination"]["ip"] == rogue.to_string() && v["event"]["action"] == "blocked")
    );

    // Metrics by the conventions, checked by promtool.
    let out =
        Command::new(BIN).args(["status", "--metrics", "--socket"]).arg(&socket).output().expect("metrics");
    let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(metrics.contains("rpz_guard_reloads_total{result=\"refused\"} 1"), "{metrics}");
    assert!(metrics.contains("rpz_guard_top_source_blocked{source="), "{metrics}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs it)");
    use std::io::Write as _;
    promtool.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // SIGTERM: STOPPING=1, a clean exit; the pinned program stays.
    let stop_log = child.log_file().map(Path::to_owned);
    let pid = child.pid();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(manager.wait_for("STOPPING=1", Duration::from_secs(10)).is_some(), "STOPPING=1 on SIGTERM");
    let status = child.stop(Duration::from_secs(10)).expect("stop");
    let log = stop_log.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    let out = Command::new(BIN).arg("unpin").arg(dir.join("bpffs/guard")).output().expect("unpin");
    assert!(out.status.success(), "unpin: {}", String::from_utf8_lossy(&out.stderr));
}
