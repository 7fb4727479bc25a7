//! Privileged: `rpz-guard run --mode openflow` (the real binary, a zone
//! file of 10k DNS entries = 20k proactive flows) serving a real Open
//! vSwitch 3.1 bridge, while hostile peers attack the controller port: a
//! HELLO flood, peers that never finish the handshake, 1,000 connections
//! from one source, a wrong datapath id, and switches that stop reading.
//!
//! After each attack the good switch is still connected on its first
//! connection (no resync was needed), and an entry added to the zone during
//! the attack reaches its flow table. The daemon's memory (VmRSS) stays
//! under a stated bound and returns near its baseline once the peers leave.
//!
//! Everything runs in a network namespace the test creates (the daemon,
//! OVS, the peers from 127.0.0.x source addresses), removed on drop.

use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use guard_tests::{
    netns::{run_in_netns, tcp_connect_from},
    ovs::Ovs,
};
use guard_user::{
    daemon::StatusReport,
    openflow::{
        ControllerStatus,
        codec::{Body, FeaturesReply, Message, message_len, msg_type},
    },
    policy::{AllowSet, Classes, Prefix},
    rpz::zonefile::write_zone,
};

const BIN: &str = env!("CARGO_BIN_EXE_rpz-guard");
const ZONE: &str = "rpz.example.com";
const BRIDGE: &str = "hbr";
const GOOD_DPID: u64 = 0x0000_0000_000a_bc01;
const ENTRIES: u32 = 10_000;
const PORT: u16 = 6653;
/// Small on purpose: the test checks the bound it implies.
const QUEUE_BYTES: usize = 128 * 1024;

/// OVS labs are heavy: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn entry(i: u32) -> Prefix {
    Prefix::host(IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)))
}

/// A namespace with loopback up; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        sh(&["ip", "netns", "add", name]);
        let ns = Netns(name.to_owned());
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).stderr(Stdio::null()).status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
}

/// The daemon, its OVS and its namespace. Field order is drop order.
struct Fixture {
    daemon: Option<Child>,
    ovs: Ovs,
    dir: PathBuf,
    zone: PathBuf,
    socket: PathBuf,
    set: AllowSet,
    serial: u32,
    ns: Netns,
}

impl Fixture {
    fn start(tag: &str, extra_config: &str) -> Fixture {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let ns = Netns::new(&format!("rgh{tag}"));
        let dir = std::env::temp_dir().join(format!("rg-hostile-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("state dir");
        let ovs = Ovs::start(dir.join("ovs"), Some(&ns.0)).expect("private OVS (install openvswitch-switch)");
        ovs.add_secure_bridge(BRIDGE, Some(GOOD_DPID)).expect("add-br");
        let set: AllowSet = (0..ENTRIES).map(|i| (entry(i), Classes::DNS)).collect();
        let zone = dir.join("rpz.zone");
        let socket = dir.join("status.sock");
        let config = dir.join("rpz-guard.toml");
        let text = format!(
            "[enforce]\nmode = \"openflow\"\n[rpz]\nzone = \"{ZONE}\"\nzone_file = \"{}\"\n\
             [events]\noutput = \"none\"\n[status]\nsocket = \"{}\"\n\
             [openflow]\nlisten = \"127.0.0.1:{PORT}\"\nsend_queue_bytes = {QUEUE_BYTES}\n{extra_config}\n",
            zone.display(),
            socket.display()
        );
        fs::write(&config, text).expect("config");
        let mut f = Fixture { daemon: None, ovs, dir, zone, socket, set, serial: 1, ns };
        f.write_zone();
        let log = fs::File::create(f.dir.join("daemon.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &f.ns.0, BIN, "run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rpz-guard");
        f.daemon = Some(child);
        f.wait("status socket", Duration::from_secs(20), |f| f.try_status().is_some());
        f.ovs.vsctl(&["set-controller", BRIDGE, &format!("tcp:127.0.0.1:{PORT}")]).expect("set-controller");
        f.ovs.vsctl(&["set", "controller", BRIDGE, "max_backoff=1000"]).expect("controller options");
        f.wait("good switch synchronised", Duration::from_secs(30), |f| f.synced(ENTRIES as usize * 2));
        // Sent is not installed: OVS works through the 20 000 flows in order,
        // slowly on a loaded machine. The attacks start once the last is in.
        let last = format!("nw_dst={},tp_dst=53 actions=NORMAL", entry(ENTRIES - 1).addr());
        f.wait("the last entry's flow on the good switch", Duration::from_secs(60), |f| {
            f.ovs.dump_flows(BRIDGE).is_ok_and(|d| d.contains(&last))
        });
        f
    }

    fn write_zone(&mut self) {
        self.serial += 1;
        let tmp = self.dir.join("rpz.zone.tmp");
        let mut out = fs::File::create(&tmp).expect("zone");
        write_zone(&self.set, ZONE, self.serial, &mut out).expect("write zone");
        drop(out);
        fs::rename(&tmp, &self.zone).expect("rename zone");
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn wait(&self, what: &str, limit: Duration, mut ok: impl FnMut(&Fixture) -> bool) -> Duration {
        let t = Instant::now();
        while !ok(self) {
            assert!(
                t.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; daemon log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        t.elapsed()
    }

    fn status(&self) -> Result<StatusReport, String> {
        let out = Command::new(BIN)
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!("{e}: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        })
    }

    fn try_status(&self) -> Option<StatusReport> {
        self.status().ok()
    }

    /// The controller's status; retried for a while (a debug build busy
    /// with 100 resyncs answers slowly).
    fn controller(&self) -> ControllerStatus {
        let t = Instant::now();
        loop {
            match self.status() {
                Ok(st) => return serde_json::from_value(st.extra).expect("controller status"),
                Err(e) if t.elapsed() > Duration::from_secs(30) => panic!("rpz-guard status: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The good switch is connected and has `flows` proactive flows.
    fn synced(&self, flows: usize) -> bool {
        self.try_status()
            .and_then(|s| serde_json::from_value::<ControllerStatus>(s.extra).ok())
            .is_some_and(|c| c.switches.iter().any(|s| s.dpid == GOOD_DPID && s.proactive_flows == flows))
    }

    fn good(&self) -> guard_user::openflow::SwitchStatus {
        self.controller()
            .switches
            .into_iter()
            .find(|s| s.dpid == GOOD_DPID)
            .unwrap_or_else(|| panic!("good switch not connected; log:\n{}", self.log()))
    }

    /// The daemon's resident memory, KiB (the `ip netns exec` child execs it).
    fn rss_kib(&self) -> u64 {
        let pid = self.daemon.as_ref().expect("daemon").id();
        let s = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// Adds a new entry to the zone and waits until the switch has its flow:
    /// the good switch follows allow-set changes.
    fn still_synchronised(&mut self, i: u32) {
        let p = entry(ENTRIES + i);
        self.set.add(p, Classes::DNS);
        self.write_zone();
        let want = format!("nw_dst={},tp_dst=53 actions=NORMAL", p.addr());
        self.wait("new entry's flow on the good switch", Duration::from_secs(10), |f| {
            f.ovs.dump_flows(BRIDGE).is_ok_and(|d| d.contains(&want))
        });
    }

    fn refused(&self, why: &str) -> u64 {
        self.controller().refused.iter().find(|(r, _)| r.name() == why).map_or(0, |x| x.1)
    }

    /// A TCP connection to the controller from source `src` inside the namespace.
    fn connect(&self, src: Ipv4Addr) -> TcpStream {
        run_in_netns(&self.ns.0, move || {
            tcp_connect_from(src, SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT))
                .unwrap_or_else(|e| panic!("connect from {src}: {e}"))
        })
        .expect("namespace")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: SIGTERM to the daemon this fixture started, by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) && c.try_wait().ok().flatten().is_none() {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn hello() -> Vec<u8> {
    Message::new(1, Body::Hello { version: 4, bitmap: Some(1 << 4) }).encode()
}

fn features(dpid: u64) -> Vec<u8> {
    let fr = FeaturesReply {
        datapath_id: dpid,
        n_buffers: 0,
        n_tables: 1,
        auxiliary_id: 0,
        capabilities: 0,
        reserved: 0,
    };
    Message::new(2, Body::FeaturesReply(fr)).encode()
}

/// Reads until EOF/reset or `limit`; returns the message types received and
/// whether the controller closed the connection.
fn read_types(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let t = Instant::now();
    let mut buf = Vec::new();
    let mut b = [0u8; 65536];
    let closed = loop {
        if t.elapsed() > limit {
            break false;
        }
        match s.read(&mut b) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    let mut types = Vec::new();
    let mut rest = &buf[..];
    while let Some(n) = message_len(rest).filter(|n| *n >= 8 && *n <= rest.len()) {
        types.push(rest[1]);
        rest = &rest[n..];
    }
    (types, closed)
}

/// Raises the soft open-file limit so the test can hold 1,000 sockets.
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on this process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(65_536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn hostile_peers_are_refused_and_the_good_switch_stays_synchronised() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile();
    // The drain timeout is not under test here (the stalled-readers test
    // has it): OVS on a loaded 2-core machine was seen spending over 3 s on
    // its 20 000 flows without reading, and the good switch was cut off.
    let mut f = Fixture::start(
        "a",
        &format!(
            "allowed_dpids = [\"{GOOD_DPID:016x}\"]\nmax_connections = 64\nmax_connections_per_source = 8\n\
             handshake_timeout_secs = 2\ndrain_timeout_secs = 15\n"
        ),
    );
    let first = f.good();
    // (The stalled-readers test's 4 s drain timeout may cut a slow OVS off
    // here, by its configuration; this one's 15 s must not.)
    assert_eq!(first.resyncs, 1, "the good switch was cut off while it installed the set");
    let baseline = f.rss_kib();
    eprintln!("synchronised: {} flows, daemon RSS {} KiB", first.proactive_flows, baseline);
    // Generous: the daemon holds 10k entries; hostile peers must not add much.
    let bound = baseline + 32 * 1024;
    let mut peak = baseline;

    // 1. HELLO flood: peers that send HELLO after HELLO are cut off at the second one.
    let before = f.controller().protocol_errors;
    let flooders: Vec<_> = (0..8)
        .map(|i| {
            let mut s = f.connect(Ipv4Addr::new(127, 0, 1, i));
            let flood: Vec<u8> = (0..2000).flat_map(|_| hello()).collect();
            let _ = s.write_all(&flood);
            s
        })
        .collect();
    for mut s in flooders {
        let (types, closed) = read_types(&mut s, Duration::from_secs(5));
        assert!(closed, "HELLO flood must be cut off");
        assert!(!types.contains(&msg_type::FLOW_MOD), "no FLOW_MOD to a flooder: {types:?}");
    }
    assert!(f.controller().protocol_errors >= before + 8, "flood counted as protocol errors");
    peak = peak.max(f.rss_kib());
    f.still_synchronised(1);

    // 2. Peers that never finish the handshake (silent, or HELLO only): closed at the timeout.
    let t = Instant::now();
    let mut idle: Vec<_> = (0..6).map(|i| f.connect(Ipv4Addr::new(127, 0, 2, i))).collect();
    for s in idle.iter_mut().step_by(2) {
        s.write_all(&hello()).expect("hello");
    }
    for s in &mut idle {
        let (types, closed) = read_types(s, Duration::from_secs(6));
        assert!(closed, "a peer that never finishes the handshake must be closed");
        assert!(types.iter().all(|t| [msg_type::HELLO, msg_type::FEATURES_REQUEST].contains(t)), "{types:?}");
    }
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "closed within the 2 s handshake timeout: {:?}",
        t.elapsed()
    );
    f.wait("handshake timeouts counted", Duration::from_secs(3), |f| f.refused("handshake_timeout") >= 6);
    f.still_synchronised(2);

    // 3. 1,000 connections from one source: the per-source cap admits 8, the rest are closed at once.
    let src = Ipv4Addr::new(127, 0, 3, 1);
    let many: Vec<TcpStream> = (0..1000).map(|_| f.connect(src)).collect();
    f.wait("per-source refusals counted", Duration::from_secs(10), |f| {
        f.refused("too_many_from_source") >= 992
    });
    let c = f.controller();
    assert!(c.open_connections <= 8 + 1, "open connections: {}", c.open_connections);
    assert!(
        c.refused_peers.iter().any(|p| p.addr == IpAddr::V4(src)),
        "refused source listed: {:?}",
        c.refused_peers
    );
    let log = f.log();
    let lines =
        log.lines().filter(|l| l.contains("OpenFlow peer refused") && l.contains("127.0.3.1")).count();
    assert!(lines <= 2, "one log line per peer per interval, got {lines}");
    peak = peak.max(f.rss_kib());
    f.still_synchronised(3);
    drop(many);

    // 4. A wrong datapath id: HELLO, FEATURES_REQUEST, then closed; never a FLOW_MOD.
    let mut s = f.connect(Ipv4Addr::new(127, 0, 4, 1));
    s.write_all(&hello()).expect("hello");
    s.write_all(&features(0xbad)).expect("features");
    let (types, closed) = read_types(&mut s, Duration::from_secs(5));
    assert!(closed, "a wrong datapath id must be closed");
    assert!(!types.contains(&msg_type::FLOW_MOD), "no FLOW_MOD to a wrong datapath id: {types:?}");
    assert!(!types.contains(&msg_type::SET_CONFIG), "nothing past the handshake: {types:?}");
    f.wait("dpid refusal counted", Duration::from_secs(3), |f| f.refused("dpid_not_allowed") >= 1);
    let c = f.controller();
    assert!(
        c.refused_peers.iter().any(|p| p.dpid.is_some_and(|d| d.0 == 0xbad)),
        "the claimed dpid is listed: {:?}",
        c.refused_peers
    );
    f.still_synchronised(4);

    // The good switch kept its first connection throughout.
    let now = f.good();
    assert_eq!(
        (now.since_ms, now.resyncs),
        (first.since_ms, first.resyncs),
        "the good switch never reconnected; the daemon said:\n{}",
        f.log()
            .lines()
            .filter(|l| l.contains("disconnected") || l.contains("synchronised"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(now.peer, first.peer);
    peak = peak.max(f.rss_kib());
    eprintln!("RSS baseline {baseline} KiB, peak {peak} KiB, bound {bound} KiB");
    assert!(peak <= bound, "daemon RSS {peak} KiB above the bound {bound} KiB");
}

#[test]
fn stalled_readers_cost_bounded_memory_and_are_disconnected() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile();
    let peers = 100usize;
    let mut f = Fixture::start(
        "b",
        "max_connections = 256\nmax_connections_per_source = 16\nhandshake_timeout_secs = 5\n\
         drain_timeout_secs = 4\n",
    );
    let first = f.good();
    thread::sleep(Duration::from_secs(1));
    let baseline = f.rss_kib();
    // Each stalled peer holds at most two queue buffers (queued and being written).
    let bound = baseline + (peers * 2 * QUEUE_BYTES / 1024) as u64 + 16 * 1024;

    // Peers complete the handshake with their own datapath ids, then never read:
    // the controller's resync (20k FLOW_MODs, ~2 MB) fills their queues.
    let stalled: Vec<TcpStream> = (0..peers)
        .map(|i| {
            let mut s = f.connect(Ipv4Addr::new(127, 0, 10 + (i / 200) as u8, 1 + (i % 200) as u8));
            s.write_all(&hello()).expect("hello");
            s.write_all(&features(0x5000 + i as u64)).expect("features");
            s
        })
        .collect();
    f.wait("stalled peers connected", Duration::from_secs(10), |f| f.controller().switches.len() > peers / 2);
    thread::sleep(Duration::from_secs(2));
    let loaded = f.rss_kib();
    let c = f.controller();
    let queued: usize = c.switches.iter().map(|s| s.send_queue_bytes).max().unwrap_or(0);
    eprintln!(
        "RSS baseline {baseline} KiB, with {peers} stalled peers {loaded} KiB (bound {bound}); max queue {queued} B"
    );
    assert!(loaded <= bound, "RSS {loaded} KiB above the bound {bound} KiB");
    assert!(queued <= 2 * QUEUE_BYTES + 4096, "send queue depth {queued} above its bound");

    // Under that load the good switch follows changes, and a reconnect resynchronises it quickly.
    f.still_synchronised(1);
    f.ovs.vsctl(&["del-controller", BRIDGE]).expect("del-controller");
    f.wait("good switch gone", Duration::from_secs(5), |f| {
        !f.controller().switches.iter().any(|s| s.dpid == GOOD_DPID)
    });
    f.ovs.vsctl(&["set-controller", BRIDGE, &format!("tcp:127.0.0.1:{PORT}")]).expect("set-controller");
    let took = f.wait("good switch resynchronised under load", Duration::from_secs(20), |f| {
        f.synced(ENTRIES as usize * 2 + 2) && f.good().send_queue_bytes == 0
    });
    eprintln!("good switch resync under {peers} stalled peers: {took:?}");
    assert!(f.good().resyncs > first.resyncs, "the reconnect was a full resync");

    // Stalled peers are disconnected after the drain timeout (4 s) ...
    f.wait("stalled peers disconnected", Duration::from_secs(15), |f| {
        f.controller().switches.iter().all(|s| s.dpid == GOOD_DPID)
    });
    assert!(
        f.controller().stalled_disconnects >= peers as u64 / 2,
        "counted: {:?}",
        f.controller().stalled_disconnects
    );
    drop(stalled);
    // ... and memory returns to the baseline (freed heap is trimmed).
    let back =
        f.wait("RSS back near the baseline", Duration::from_secs(15), |f| f.rss_kib() <= baseline + 8 * 1024);
    eprintln!("RSS after the peers left: {} KiB (baseline {baseline}) after {back:?}", f.rss_kib());
}
