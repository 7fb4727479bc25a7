//! Shared by the daemon-level lab tests (`xdp_lab`, `openflow_lab`,
//! `primaries_interop`): a running `rpz-guard run` in the lab router, RPZ
//! edits at the lab's primary, connects and polling.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use guard_tests::{Lab, LabChild, Role};
use guard_user::{daemon::StatusReport, events::DetectionEvent, policy::Prefix, rpz::encode_owner};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rpz-guard");
/// The lab's policy zone.
pub const ZONE: &str = "rpz.example.com";

/// Polls `f` until it is true or `within` passes; returns the time taken.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `--server`, `--tsig-key` and `--notify-listen` for the lab's BIND: the
/// daemon in the router transfers the RPZ with TSIG and takes BIND's NOTIFY
/// on the router's inside address.
pub fn lab_bind_args(lab: &Lab) -> [String; 6] {
    let a = lab.addrs();
    [
        "--server".into(),
        SocketAddr::new(IpAddr::V4(a.dns_v4), 53).to_string(),
        "--tsig-key".into(),
        path_str(&lab.tsig_key_file()).to_owned(),
        "--notify-listen".into(),
        SocketAddr::new(IpAddr::V4(a.router_in_v4), lab.notify_port()).to_string(),
    ]
}

/// `rpz-guard run` in XDP mode on the lab router's `in0` with the lab's
/// BIND as source, the resolver exempt and the lab's own networks internal;
/// a flag in `extra` replaces the default of the same name.
pub fn start_xdp(lab: &Lab, extra: &[&str]) -> Daemon {
    let a = lab.addrs();
    let source = lab_bind_args(lab);
    let exempt4 = format!("{}/32", a.dns_v4);
    let exempt6 = format!("{}/128", a.dns_v6);
    let internal4 = format!("10.{}.0.0/16", a.subnet);
    let internal6 = format!("{}/48", a.lan_v6().0);
    let mut args: Vec<&str> = vec![
        "--iface",
        lab.router_inside_iface(),
        "--exempt",
        &exempt4,
        "--exempt",
        &exempt6,
        "--internal",
        &internal4,
        "--internal",
        &internal6,
    ];
    args.extend(source.iter().map(String::as_str));
    for pair in extra.chunks(2) {
        match args.iter().position(|a| *a == pair[0]).filter(|_| pair.len() == 2) {
            Some(i) => args[i + 1] = pair[1],
            None => args.extend_from_slice(pair),
        }
    }
    Daemon::start(lab, "xdp", &args)
}

/// `rpz-guard ARGS --server <lab BIND> --tsig-key <lab key> --zone <lab
/// zone>` in the router namespace, as an operator on the router would run
/// it (everything named, so a config file on the host is never read); the
/// output is echoed for the test log.
pub fn ops(lab: &Lab, args: &[&str]) -> Output {
    let server = format!("{}:53", lab.addrs().dns_v4);
    let key = lab.tsig_key_file().display().to_string();
    let mut argv = vec![BIN];
    argv.extend_from_slice(args);
    argv.extend(["--server", &server, "--tsig-key", &key, "--zone", lab.rpz_zone()]);
    let out = lab.exec(Role::Router, &argv).unwrap_or_else(|e| panic!("rpz-guard {args:?}: {e}"));
    eprintln!(
        "$ rpz-guard {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

/// [`ops`] that must succeed; its standard output.
pub fn ops_ok(lab: &Lab, args: &[&str]) -> String {
    let out = ops(lab, args);
    assert!(out.status.success(), "rpz-guard {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The authoritative server live learning trusts in the lab (a root hint,
/// see [`learn_args`]). No host has this address: the answers "from" it are
/// frames a test replays ([`replay_exchange`]).
pub const TEACHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// `--learn` flags for [`start_xdp`]: the copy program on the router's
/// outside interface, trust starting at [`TEACHER`] (a hints file in the
/// lab's state), the resolvers being the exempt sources (the lab's BIND),
/// the journal in the lab's state too: by default it follows `--state-dir`
/// (never the host's /var/lib/rpz-guard).
pub fn learn_args(lab: &Lab) -> [String; 5] {
    let hints = lab.state_dir().join("teacher.hints");
    std::fs::write(&hints, format!(". 3600000 NS teacher.test.\nteacher.test. 3600000 A {TEACHER}\n"))
        .expect("write the teacher's hints");
    [
        "--learn".into(),
        "--learn-outside".into(),
        lab.router_outside_iface().into(),
        "--learn-root-hints".into(),
        path_str(&hints).to_owned(),
    ]
}

/// Replays one DNS exchange across the router, where live learning copies
/// it: the resolver's `query` frame from the dns host into the lan (the
/// inside program copies it), the `response` from inet to the router's
/// outside interface (the outside program copies it). Both frames carry
/// MAC addresses of no host, so after the copy the router's kernel drops
/// them: nothing reaches a server or the resolver.
pub fn replay_exchange(lab: &Lab, query: &[u8], response: &[u8]) {
    lab.send_frames(Role::Dns, "eth0", &[query.to_vec()]).unwrap_or_else(|e| panic!("send the query: {e}"));
    lab.send_frames(Role::Inet, "eth0", &[response.to_vec()])
        .unwrap_or_else(|e| panic!("send the response: {e}"));
}

/// The daemon's Prometheus text, read over its status socket.
pub fn metrics(d: &Daemon) -> String {
    let out =
        Command::new(BIN).args(["status", "--metrics", "--socket"]).arg(&d.socket).output().expect("status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemon's Prometheus text over HTTP (`--metrics-listen ADDR`, in
/// the router namespace).
pub fn metrics_http(lab: &Lab, addr: SocketAddr) -> String {
    let mut http = lab.tcp_connect(Role::Router, addr, Duration::from_secs(2)).expect("metrics endpoint");
    std::io::Write::write_all(&mut http, b"GET /metrics HTTP/1.0\r\n\r\n").expect("request");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut http, &mut text).expect("response");
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    text
}

/// Pid of the lab's `named` (a process the lab started; its pid file names it).
pub fn named_pid(lab: &Lab) -> i32 {
    std::fs::read_dir(lab.state_dir().join("pids"))
        .expect("pid dir")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .find(|l| l.trim_end().ends_with(" named"))
        .and_then(|l| l.split_whitespace().next()?.parse::<i32>().ok())
        .expect("named pid recorded by the lab")
}

/// Registers `ip` in the lab's RPZ with A `answer` (TSIG-signed nsupdate).
pub fn rpz_add(lab: &Lab, ip: IpAddr, answer: &str) {
    let owner = encode_owner(&Prefix::host(ip), ZONE);
    lab.nsupdate(&[&format!("update add {owner} 60 IN A {answer}")])
        .unwrap_or_else(|e| panic!("nsupdate: {e}"));
}

/// Registers `ip` in the lab's RPZ as the learner writes a learned SMTP
/// entry: `A 127.0.0.25` and its lifetime TXT, last seen at `seen`.
pub fn rpz_add_learned(lab: &Lab, ip: IpAddr, seen: u64) {
    let owner = encode_owner(&Prefix::host(ip), lab.rpz_zone());
    let txt = guard_user::rpz::meta::EntryMeta::learned(seen, 1, None).to_zone_text().expect("txt");
    lab.nsupdate(&[
        &format!("update add {owner} 60 IN A 127.0.0.25"),
        &format!("update add {owner} 60 IN TXT {txt}"),
    ])
    .unwrap_or_else(|e| panic!("nsupdate: {e}"));
}

/// Removes `ip` from the lab's RPZ.
pub fn rpz_delete(lab: &Lab, ip: IpAddr) {
    let owner = encode_owner(&Prefix::host(ip), ZONE);
    lab.nsupdate(&[&format!("update delete {owner}")]).unwrap_or_else(|e| panic!("nsupdate: {e}"));
}

/// How long [`Daemon::start`] waits for the status socket.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// `rpz-guard run` in the router namespace; SIGTERM on drop (and the exit
/// status must be a success unless the test is already failing).
pub struct Daemon {
    child: Option<LabChild>,
    /// Its status socket.
    pub socket: PathBuf,
    /// Its JSON-lines event file.
    pub events: PathBuf,
}

impl Daemon {
    /// Starts `rpz-guard run ARGS --events <state>/<tag>-events.jsonl
    /// --status-socket <state>/<tag>.sock` and waits for its status socket.
    /// Unless ARGS name one, the state directory (zone snapshot) is the
    /// lab's [`state_dir`], never the host's /var/lib/rpz-guard.
    pub fn start(lab: &Lab, tag: &str, args: &[&str]) -> Daemon {
        let events = default_events(lab, tag);
        Daemon::start_full(lab, tag, &[], args, events, false, READY_WITHIN)
    }

    /// As [`Daemon::start`], in the host's mount namespace (`nsenter --net`):
    /// the default pin directory is then on the host's bpffs and outlives
    /// the daemon, as on a real router.
    pub fn start_host_mounts(lab: &Lab, tag: &str, args: &[&str]) -> Daemon {
        let events = default_events(lab, tag);
        Daemon::start_full(lab, tag, &[], args, events, true, READY_WITHIN)
    }

    /// Like [`Daemon::start`], with the event output at `events`.
    pub fn start_with_events(lab: &Lab, tag: &str, args: &[&str], events: PathBuf) -> Daemon {
        Daemon::start_full(lab, tag, &[], args, events, false, READY_WITHIN)
    }

    /// Like [`Daemon::start_with_events`], run through `wrapper` (e.g.
    /// `env LD_PRELOAD=...`), which must exec the daemon in its place.
    pub fn start_wrapped(lab: &Lab, tag: &str, wrapper: &[&str], args: &[&str], events: PathBuf) -> Daemon {
        Daemon::start_full(lab, tag, wrapper, args, events, false, READY_WITHIN)
    }

    fn start_full(
        lab: &Lab,
        tag: &str,
        wrapper: &[&str],
        args: &[&str],
        events: PathBuf,
        host_mounts: bool,
        within: Duration,
    ) -> Daemon {
        let dir = lab.state_dir();
        let socket = dir.join(format!("{tag}-{}.sock", std::process::id()));
        let state = state_dir(lab);
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.extend([BIN, "run"]);
        argv.extend_from_slice(args);
        argv.extend(["--events", path_str(&events), "--status-socket", path_str(&socket)]);
        if !args.iter().any(|a| *a == "--state-dir" || *a == "--no-snapshot") {
            argv.extend(["--state-dir", path_str(&state)]);
        }
        let spawned = if host_mounts {
            lab.spawn_host_mounts(Role::Router, &argv)
        } else {
            lab.spawn(Role::Router, &argv)
        };
        let child = spawned.unwrap_or_else(|e| panic!("spawn rpz-guard: {e}"));
        let mut d = Daemon { child: Some(child), socket, events };
        let ready = eventually(within, || {
            if let Some(c) = d.child.as_mut()
                && !c.is_running()
            {
                panic!("rpz-guard exited early:\n{}", c.log());
            }
            // The status socket answers before the enforcement point is up
            // (XDP attached, controller listening): wait for that too.
            d.try_status().is_some_and(|s| !s.point.is_empty())
        });
        assert!(ready.is_some(), "rpz-guard did not answer on its status socket; lab {}", lab.prefix());
        d
    }

    /// Waits until the first allow set from the source is in force
    /// ([`loaded`]; up to 120 s, for 1M-entry loads from a real primary) and returns the status
    /// then. Status answers from the first second, before any transfer, so
    /// a test that reads `entries` or `serial`, or expects registered
    /// traffic to pass, waits here first.
    pub fn wait_loaded(&self) -> StatusReport {
        self.wait_loaded_within(Duration::from_secs(120))
    }

    /// As [`Daemon::wait_loaded`], waiting up to `within` (a zone of a
    /// million records takes tens of seconds).
    pub fn wait_loaded_within(&self, within: Duration) -> StatusReport {
        self.wait_status("the first allow set in force", within, loaded)
    }

    /// Waits until the first sync with the source has ended, loaded or
    /// failed ([`first_sync_ended`]), and returns the status then: for a
    /// test whose primary is down or refuses.
    pub fn wait_first_sync(&self) -> StatusReport {
        self.wait_status("the first sync's outcome", Duration::from_secs(60), first_sync_ended)
    }

    /// Polls status until `f` holds; panics with the log and the last
    /// status after `within`.
    fn wait_status(&self, what: &str, within: Duration, f: fn(&StatusReport) -> bool) -> StatusReport {
        let mut last = None;
        let ok = eventually(within, || {
            last = self.try_status();
            last.as_ref().is_some_and(f)
        });
        match (ok, last) {
            (Some(_), Some(st)) => st,
            (_, last) => {
                panic!("no {what} within {within:?}; status {:?}\nlog:\n{}", last.map(|s| s.sync), self.log())
            }
        }
    }

    /// The status report, if the daemon answers.
    pub fn try_status(&self) -> Option<StatusReport> {
        let out = Command::new(BIN).args(["status", "--json", "--socket"]).arg(&self.socket).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The status report.
    pub fn status(&self) -> StatusReport {
        self.try_status().expect("rpz-guard status answers")
    }

    /// The detection events written so far (native layout), each checked
    /// against the event schema first.
    pub fn events(&self) -> Vec<DetectionEvent> {
        self.event_lines()
            .into_iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bad event line {v}: {e}")))
            .collect()
    }

    /// Its process id (`ip netns exec` execs the daemon in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(LabChild::pid).expect("daemon running")
    }

    /// Its resident memory, KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// The event lines written so far, in whichever layout, each checked
    /// against the event schema.
    pub fn event_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events).unwrap_or_default().lines().map(check_event_line).collect()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.child.as_ref().map(LabChild::log).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(LabChild::is_running)
    }

    /// SIGKILL (a crash: no cleanup at all) and wait; returns the log.
    pub fn kill(&mut self) -> String {
        let Some(mut c) = self.child.take() else { return String::new() };
        let log = c.log();
        let _ = c.child().kill();
        let _ = c.child().wait();
        drop(c);
        log
    }

    /// SIGTERM and wait; returns the log. The exit status must be a success.
    pub fn stop(&mut self) -> String {
        let Some(c) = self.child.take() else { return String::new() };
        let log_file = c.log_file().map(Path::to_owned);
        let status = c.stop(Duration::from_secs(10)).unwrap_or_else(|e| panic!("stopping rpz-guard: {e}"));
        let log = log_file.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
        if !std::thread::panicking() {
            assert!(status.success(), "rpz-guard exit status {status} on SIGTERM; log:\n{log}");
        }
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True once the first allow set from the source is in force: a transfer
/// (or zone-file read) succeeded and deny-protected mode has ended (in XDP
/// mode that is when the maps hold the set).
pub fn loaded(st: &StatusReport) -> bool {
    st.sync.last_sync_ms.is_some() && !st.sync.deny_protected
}

/// True once the first sync with the source has ended: [`loaded`], or failed
/// (the error is in status).
pub fn first_sync_ended(st: &StatusReport) -> bool {
    loaded(st) || st.sync.last_error.is_some()
}

/// `<lab state>/<tag>-<pid>-events.jsonl`, removed if left over.
fn default_events(lab: &Lab, tag: &str) -> PathBuf {
    let events = lab.state_dir().join(format!("{tag}-{}-events.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&events);
    events
}

/// `docs/events.schema.json`, compiled once, with `format` asserted (IP
/// addresses, timestamps), as a strict consumer would.
pub fn event_validator() -> &'static jsonschema::Validator {
    static V: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(event_schema_path()).expect("read the event schema"),
        )
        .expect("the event schema is JSON");
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("the event schema does not compile: {e}"))
    })
}

/// Where the event schema lives.
pub fn event_schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.schema.json")
}

/// Parses one event line and checks it against the schema; panics naming
/// the line and every violation.
pub fn check_event_line(line: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {line}"));
    let errors: Vec<String> =
        event_validator().iter_errors(&v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "event line violates docs/events.schema.json: {line}\n{}", errors.join("\n"));
    v
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Outcome of a TCP connect attempt from the lab.
#[derive(Debug, PartialEq, Eq)]
pub enum Conn {
    /// Connected.
    Open,
    /// Refused (RST): reached the destination, which has no listener.
    Refused,
    /// No answer: dropped on the way.
    TimedOut,
}

/// A TCP connect from `role` to `addr`, classified.
pub fn connect(lab: &Lab, role: Role, addr: SocketAddr, timeout: Duration) -> Conn {
    match lab.tcp_connect(role, addr, timeout) {
        Ok(_) => Conn::Open,
        Err(e) => {
            let text = e.to_string();
            if text.contains("refused") {
                Conn::Refused
            } else if text.contains("timed out") || text.contains("TimedOut") || text.contains("unreachable")
            {
                Conn::TimedOut
            } else {
                panic!("connect {addr}: unexpected error {text}")
            }
        }
    }
}

/// Resident memory of `pid` in KiB (`VmRSS` of /proc), 0 when gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The daemons' state directory in a lab (`--state-dir`): the zone snapshot.
pub fn state_dir(lab: &Lab) -> PathBuf {
    lab.state_dir().join("rpz-guard-state")
}

/// The default pin directory of a daemon on the lab router's inside
/// interface, in the host's mount namespace (where
/// [`Daemon::start_host_mounts`] pins by default); unpinned on drop (also
/// when the test fails).
pub struct Pins(pub PathBuf);

impl Pins {
    /// The directory for `lab`'s router.
    pub fn of(lab: &Lab) -> Pins {
        Pins(PathBuf::from(format!(
            "/sys/fs/bpf/rpz-guard/{}/{}",
            lab.ns(Role::Router),
            lab.router_inside_iface()
        )))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new(BIN).arg("unpin").arg(&self.0).output();
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// What the pinned maps in `dir` allow (the enforced view: denies as deny
/// entries), read from the test process.
pub fn pinned_set(dir: &Path) -> guard_user::policy::AllowSet {
    let e =
        guard_user::xdp::Enforcer::load(Some(dir)).unwrap_or_else(|e| panic!("open the pinned maps: {e}"));
    assert!(e.adopted_maps(), "no pinned maps in {}", dir.display());
    e.read_allow().expect("read the pinned allow maps")
}
