//! The OpenFlow controller against a real Open vSwitch 3.1 (netdev
//! datapath), in network namespaces this test creates: a client, a bot and
//! an "internet" namespace with SMTP and DNS listeners, all on one OVS
//! bridge in `fail_mode=secure` that uses the in-process controller.
//!
//! Needs root and the Debian `openvswitch-switch` package. Each lab runs its
//! own private `ovsdb-server` and `ovs-vswitchd` (own rundir, db and
//! sockets) and removes everything on drop, even after a panic.

use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use guard_common::Stat;
use guard_tests::{
    awkward::{self, Endpoints},
    netns::PacketTap,
    ovs::Ovs,
};
use guard_user::{
    events::{DetectionEvent, EventOutput, EventSink, Reason},
    metrics::Counters,
    miss::{CacheTtl, MissResolver, SetSource},
    openflow::{
        ControllerConfig, ControllerShared, ControllerStatus,
        codec::{Body, FeaturesReply, Message, PacketIn, message_len},
        oxm::{Match, Oxm},
        serve_listener,
    },
    policy::{AllowSet, Classes, Prefix},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// OVS labs are heavy (two daemons each) and the machine is small: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Namespaces and veths with a unique prefix; deleted on drop.
struct Net {
    prefix: String,
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Net {
    fn new(prefix: &str) -> Net {
        let n = Net { prefix: prefix.into(), namespaces: Vec::new(), links: Vec::new() };
        n.cleanup();
        n
    }

    /// A namespace `<prefix><name>` wired to the bridge through veth
    /// `<prefix><name>0` (bridge side) / `<prefix><name>1` (inside).
    fn host(&mut self, ovs: &Ovs, br: &str, name: &str, addrs: &[&str]) -> String {
        let ns = format!("{}{name}", self.prefix);
        let outer = format!("{ns}0");
        let inner = format!("{ns}1");
        run("ip", &["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run("ip", &["link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns]);
        self.links.push(outer.clone());
        run("ip", &["link", "set", &outer, "up"]);
        ovs.vsctl(&["add-port", br, &outer]).expect("add-port");
        let x = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns];
            a.extend_from_slice(args);
            run("ip", &a);
        };
        x(&["ip", "link", "set", "lo", "up"]);
        x(&["ip", "link", "set", &inner, "up"]);
        for a in addrs {
            if a.contains(':') {
                x(&["ip", "-6", "addr", "add", a, "dev", &inner, "nodad"]);
            } else {
                x(&["ip", "addr", "add", a, "dev", &inner]);
            }
        }
        // The netdev datapath reads frames through packet sockets, which do not
        // complete checksums the veth offloaded: compute them in the sender.
        in_ns(&ns, move || set_tx_csum(&inner, false));
        ns
    }

    fn cleanup(&self) {
        let br = format!("{}br", self.prefix);
        let _ = Command::new("ip").args(["link", "del", &br]).stderr(Stdio::null()).status();
        for suffix in ["c", "b", "n"] {
            let ns = format!("{}{suffix}", self.prefix);
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
            let _ =
                Command::new("ip").args(["link", "del", &format!("{ns}0")]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).stderr(Stdio::null()).status();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Runs `f` on a thread that entered network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// `ethtool -K <ifname> tx off` through SIOCETHTOOL.
fn set_tx_csum(ifname: &str, on: bool) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut v = EthtoolValue { cmd: ETHTOOL_STXCSUM, data: u32::from(on) };
    let mut req = Ifreq { name: [0; 16], data: &mut v, _pad: [0; 16] };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: plain ioctl on a datagram socket with a properly laid out ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket for ethtool");
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        assert_eq!(rc, 0, "ETHTOOL_STXCSUM on {ifname}: {}", std::io::Error::last_os_error());
    }
}

/// TCP listeners on 25/465/587 and a UDP echo on 53 (dual stack) inside a
/// namespace; stopped on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &str) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for port in [25u16, 465, 587, 53] {
            let (stop, ns) = (stop.clone(), ns.to_owned());
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(thread::spawn(move || {
                in_ns(&ns.clone(), move || {
                    let l = TcpListener::bind(("::", port)).expect("tcp listener");
                    l.set_nonblocking(true).expect("nonblocking");
                    let u = if port == 53 {
                        let u = UdpSocket::bind(("::", 53)).expect("udp 53");
                        u.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
                        Some(u)
                    } else {
                        None
                    };
                    tx.send(()).expect("ready");
                    let mut buf = [0u8; 8192];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((mut s, _)) = l.accept() {
                            let _ = s.write_all(b"220 ok\r\n");
                        }
                        match &u {
                            Some(u) => {
                                if let Ok((n, from)) = u.recv_from(&mut buf) {
                                    let _ = u.send_to(&buf[..n], from);
                                }
                            }
                            None => thread::sleep(Duration::from_millis(10)),
                        }
                    }
                });
            }));
            rx.recv_timeout(Duration::from_secs(5)).expect("listener ready");
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from namespace `ns` (optionally from `src`) and reads the banner.
fn smtp(ns: &str, src: Option<IpAddr>, dst: IpAddr, port: u16, timeout: Duration) -> bool {
    in_ns(ns, move || {
        let to = SocketAddr::new(dst, port);
        let s = match src {
            None => TcpStream::connect_timeout(&to, timeout),
            Some(src) => bound_connect(src, to, timeout),
        };
        let Ok(mut s) = s else { return false };
        let _ = s.set_read_timeout(Some(timeout));
        let mut b = [0u8; 8];
        s.read(&mut b).map(|n| n > 0 && b.starts_with(b"220")).unwrap_or(false)
    })
}

fn bound_connect(src: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    // std has no bind-before-connect; do it with a raw socket.
    use std::os::fd::FromRawFd;
    let IpAddr::V4(s4) = src else { panic!("bound_connect is IPv4 only") };
    let IpAddr::V4(d4) = to.ip() else { panic!("bound_connect is IPv4 only") };
    // SAFETY: standard socket/bind/connect sequence on a fresh fd we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
            sin_zero: [0; 8],
        };
        let local = sa(s4, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(libc::bind(fd, (&raw const local).cast(), len), 0, "bind {src}");
        let tv =
            libc::timeval { tv_sec: timeout.as_secs() as i64, tv_usec: i64::from(timeout.subsec_micros()) };
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&raw const tv).cast(), 16);
        let remote = sa(d4, to.port());
        let rc = libc::connect(fd, (&raw const remote).cast(), len);
        let s = TcpStream::from_raw_fd(fd);
        if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(s) }
    }
}

fn dns(ns: &str, dst: IpAddr, timeout: Duration) -> bool {
    dns_sized(ns, dst, 5, timeout)
}

/// A UDP "query" of `size` bytes to port 53 (above the MTU it leaves as IP
/// fragments); true when the echo comes back whole.
fn dns_sized(ns: &str, dst: IpAddr, size: usize, timeout: Duration) -> bool {
    in_ns(ns, move || {
        let query: Vec<u8> = (0..size).map(|i| b"query"[i % 5]).collect();
        let u = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).expect("udp");
        u.set_read_timeout(Some(timeout)).expect("timeout");
        let t0 = Instant::now();
        // Two tries: the first may be the packet-in that the verdict answers.
        while t0.elapsed() < timeout {
            let _ = u.send_to(&query, (dst, 53));
            let mut b = vec![0u8; size + 16];
            if let Ok((n, _)) = u.recv_from(&mut b) {
                return b[..n] == query[..];
            }
        }
        false
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn pfx(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

/// A whole lab: OVS, namespaces, servers, the controller in-process.
struct Lab {
    shared: ControllerShared,
    allow: watch::Sender<Arc<AllowSet>>,
    counters: Arc<Counters>,
    events_path: PathBuf,
    addr: SocketAddr,
    cancel: CancellationToken,
    rt: Option<tokio::runtime::Runtime>,
    _servers: Servers,
    ovs: Ovs,
    _net: Net,
    br: String,
    client: String,
    bot: String,
}

const DPID: u64 = 0x0000_0000_00ab_c001;

impl Lab {
    fn start(tag: &str, set: AllowSet, tweak: impl FnOnce(&mut ControllerConfig)) -> Lab {
        let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
        let dir = std::env::temp_dir().join(format!("rg-ovs-{tag}-{}", std::process::id()));
        let ovs = Ovs::start(dir, None).expect("private OVS (install openvswitch-switch)");
        let mut net = Net::new(tag);
        let br = format!("{tag}br");
        ovs.add_secure_bridge(&br, Some(DPID)).expect("add-br");
        let client = net.host(&ovs, &br, "c", &["10.77.0.10/24", "fd77::10/64"]);
        let bot = net.host(&ovs, &br, "b", &["10.77.0.66/24", "10.77.0.53/24", "fd77::66/64"]);
        let inet = net.host(
            &ovs,
            &br,
            "n",
            &[
                "10.77.0.100/24",
                "10.77.0.101/24",
                "10.77.0.102/24",
                "10.77.0.103/24",
                "fd77::100/64",
                "fd77::101/64",
                "fd77::102/64",
            ],
        );
        let servers = Servers::start(&inet);

        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let (tx, rx) = watch::channel(Arc::new(set));
        let resolver = Arc::new(MissResolver::new(Arc::new(SetSource(rx.clone())), CacheTtl::default()));
        let events_path = ovs.dir().join("events.jsonl");
        let events = Arc::new(EventSink::open(&EventOutput::File(events_path.clone())).expect("events"));
        let counters = Arc::new(Counters::default());
        let shared = ControllerShared::new(rx, resolver, events, counters.clone());
        let mut cfg = ControllerConfig {
            exempt_sources: vec![pfx("10.77.0.53")],
            echo_interval_secs: 1,
            dead_peer_secs: 3,
            handshake_secs: 2,
            ..ControllerConfig::default()
        };
        tweak(&mut cfg);
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        rt.spawn(serve_listener(listener, cfg, shared.clone(), cancel.clone()));
        ovs.vsctl(&["set-controller", &br, &format!("tcp:{addr}")]).expect("set-controller");
        // Reconnect fast after a vswitchd restart or a dropped connection.
        ovs.vsctl(&["set", "controller", &br, "max_backoff=1000", "inactivity_probe=5000"])
            .expect("controller options");
        let lab = Lab {
            shared,
            allow: tx,
            counters,
            events_path,
            addr,
            cancel,
            rt: Some(rt),
            _servers: servers,
            ovs,
            _net: net,
            br,
            client,
            bot,
        };
        lab.wait_synced(1);
        lab
    }

    fn flows(&self) -> String {
        self.ovs.dump_flows(&self.br).expect("dump-flows")
    }

    fn status(&self) -> ControllerStatus {
        self.shared.status()
    }

    /// Waits until `n` resyncs happened and the table-miss flow is in place.
    fn wait_synced(&self, n: u64) {
        wait_for("controller connection and resync", Duration::from_secs(20), || {
            let s = self.status();
            s.resyncs >= n && s.switches.iter().any(|sw| sw.dpid == DPID)
        });
        wait_for("flows installed", Duration::from_secs(10), || {
            self.flows().contains("priority=0 actions=NORMAL")
        });
    }

    fn set(&self, f: impl FnOnce(&mut AllowSet)) {
        let mut s = (**self.allow.borrow()).clone();
        f(&mut s);
        self.allow.send_replace(Arc::new(s));
    }

    fn events(&self) -> Vec<DetectionEvent> {
        fs::read_to_string(&self.events_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("event line is JSON"))
            .collect()
    }

    fn stat(&self, s: Stat) -> u64 {
        self.counters.snapshot()[s as usize]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The harness deletes the bridge (and its tap) when `ovs` drops.
        self.cancel.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(3));
        }
    }
}

fn base_set() -> AllowSet {
    [
        (pfx("10.77.0.100"), Classes::DNS),
        (pfx("10.77.0.101"), Classes::SMTP),
        (pfx("fd77::101"), Classes::SMTP),
    ]
    .into_iter()
    .collect()
}

const SHORT: Duration = Duration::from_millis(1500);

#[test]
fn ovs_enforces_the_paper_behaviour() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start("rgo1", base_set(), |_| {});
    let (client, bot) = (lab.client.clone(), lab.bot.clone());

    // Flow design visible in the switch.
    let flows = lab.flows();
    for want in [
        "priority=40000,ip,nw_src=10.77.0.53 actions=NORMAL",
        "priority=30000,tcp,nw_dst=10.77.0.101,tp_dst=25 actions=NORMAL",
        "priority=30000,tcp,nw_dst=10.77.0.101,tp_dst=465 actions=NORMAL",
        "priority=30000,udp,nw_dst=10.77.0.100,tp_dst=53 actions=NORMAL",
        "priority=30000,tcp6,ipv6_dst=fd77::101,tp_dst=587 actions=NORMAL",
        "priority=15000,ip,nw_frag=later actions=NORMAL",
        "priority=10000,tcp,tp_dst=25 actions=meter:1,CONTROLLER:65535",
        "priority=10000,udp6,tp_dst=53 actions=meter:1,CONTROLLER:65535",
        "priority=0 actions=NORMAL",
    ] {
        assert!(flows.contains(want), "dump-flows lacks {want:?}:\n{flows}");
    }
    assert!(
        !flows.contains("nw_dst=10.77.0.100,tp_dst=25"),
        "DNS-only entry must not get SMTP flows:\n{flows}"
    );

    // Known allowed destinations: no controller round-trip at all.
    let before = lab.status().packet_ins;
    assert!(smtp(&client, None, ip("10.77.0.101"), 25, SHORT), "SMTP to an SMTP-class host");
    assert!(smtp(&client, None, ip("10.77.0.101"), 587, SHORT), "submission to an SMTP-class host");
    assert!(dns(&client, ip("10.77.0.100"), SHORT), "DNS to a DNS-class host");
    assert!(dns(&client, ip("10.77.0.101"), SHORT), "DNS to an SMTP-class host (Table 1)");
    assert!(smtp(&client, None, "fd77::101".parse().expect("v6"), 465, SHORT), "IPv6 SMTP to an SMTP host");
    assert_eq!(lab.status().packet_ins, before, "allowed destinations must not cause packet-ins");

    // Table 1: DNS to an unregistered server is blocked; SMTP to a DNS-only entry too.
    assert!(!dns(&bot, ip("10.77.0.102"), SHORT), "DNS to an unregistered server must fail");
    assert!(!smtp(&bot, None, ip("10.77.0.100"), 25, SHORT), "SMTP to a DNS-only entry must fail");
    assert!(!smtp(&bot, None, "fd77::102".parse().expect("v6"), 25, SHORT), "IPv6 SMTP to unregistered");
    assert!(lab.status().packet_ins > before, "blocked attempts came as packet-ins");

    // Fragments (module docs): the first fragment carries the ports and is
    // checked; later ones pass but cannot be reassembled without it.
    assert!(dns_sized(&client, ip("10.77.0.100"), 3000, SHORT), "fragmented DNS to a DNS-class host");
    assert!(!dns_sized(&bot, ip("10.77.0.102"), 3000, SHORT), "fragmented DNS to unregistered must fail");

    // Exempt source (own relay) reaches anyone.
    assert!(smtp(&bot, Some(ip("10.77.0.53")), ip("10.77.0.102"), 25, SHORT), "exempt source passes");

    // Fig. 8/9: unregistered :465 fails; added as SMTP → succeeds within 1 s; removed → fails.
    assert!(!smtp(&bot, None, ip("10.77.0.103"), 465, SHORT), "unregistered :465 must fail");
    lab.set(|s| {
        s.add(pfx("10.77.0.103"), Classes::SMTP);
    });
    let t0 = Instant::now();
    let mut ok = false;
    while t0.elapsed() < Duration::from_secs(1) && !ok {
        ok = smtp(&bot, None, ip("10.77.0.103"), 465, Duration::from_millis(300));
    }
    assert!(ok, "after adding the entry :465 must work within 1 s (took {:?})", t0.elapsed());
    assert!(
        lab.flows().contains("nw_dst=10.77.0.103,tp_dst=465 actions=NORMAL"),
        "proactive flow for the new entry"
    );
    lab.set(|s| {
        s.remove(&pfx("10.77.0.103"), Classes::SMTP);
    });
    wait_for("revoked flow removed", Duration::from_secs(2), || {
        !lab.flows().contains("priority=30000,tcp,nw_dst=10.77.0.103")
    });
    // The connection above left a cached datapath flow; wait for OVS to drop it.
    lab.ovs.revalidated().expect("revalidator/wait");
    assert!(!smtp(&bot, None, ip("10.77.0.103"), 465, SHORT), "revoked :465 must fail again");

    // Counters and events, same names as XDP mode.
    let evs = lab.events();
    let has = |dst: &str, port: u16, reason: Reason| {
        evs.iter()
            .any(|e| e.dst == ip(dst) && e.dport == port && e.reason == reason && e.src == ip("10.77.0.66"))
    };
    assert!(has("10.77.0.102", 53, Reason::NotRegistered), "event for DNS to unregistered: {evs:?}");
    assert!(has("10.77.0.100", 25, Reason::WrongClass), "event for SMTP to DNS-only: {evs:?}");
    assert!(has("10.77.0.103", 465, Reason::NotRegistered), "event for :465: {evs:?}");
    assert!(evs.iter().all(|e| e.point == format!("openflow:{DPID:016x}")), "event point: {evs:?}");
    assert!(lab.stat(Stat::DropNotRegistered) >= 3);
    assert!(lab.stat(Stat::DropWrongClass) >= 1);
    assert!(lab.stat(Stat::Miss) >= 4);
    assert!(lab.stat(Stat::Packets) >= lab.stat(Stat::Miss));
    assert_eq!(lab.stat(Stat::EventsSent), evs.len() as u64);
    let s = lab.status();
    assert_eq!(s.switches.len(), 1);
    // The drop flow for .103 was deleted when the entry arrived: OVS reports it.
    wait_for("FLOW_REMOVED counted", Duration::from_secs(3), || lab.status().flows_removed >= 1);
    assert_eq!(s.switch_errors, 0, "the switch rejected something: {s:?}");
}

#[test]
fn ovs_flow_budget_and_miss_path() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Budget 2 flows: only the DNS entry (udp+tcp 53) fits; the SMTP entry is
    // decided by packet-in and gets a verdict flow.
    let lab = Lab::start("rgo2", base_set(), |c| {
        c.flow_budget = 2;
        c.internal_networks = vec![pfx("10.77.0.102")];
    });
    // Internal destinations are never checked (and never reach the controller).
    let before = lab.status().packet_ins;
    assert!(smtp(&lab.bot, None, ip("10.77.0.102"), 25, SHORT), "internal destination passes");
    assert_eq!(lab.status().packet_ins, before);
    assert!(lab.flows().contains("priority=39000,ip,nw_dst=10.77.0.102 actions=NORMAL"));
    let st = lab.status();
    assert_eq!(st.switches[0].proactive_flows, 2);
    assert_eq!(st.switches[0].over_budget_entries, 2);
    let before = lab.status().packet_ins;
    let t0 = Instant::now();
    assert!(smtp(&lab.client, None, ip("10.77.0.101"), 25, SHORT), "over-budget entry still passes");
    let via_controller = t0.elapsed();
    assert!(lab.status().packet_ins > before, "decided by packet-in");
    assert!(lab.stat(Stat::PassAllowed) >= 1);
    let flows = lab.flows();
    assert!(
        flows.contains("priority=20000,tcp,nw_dst=10.77.0.101,tp_dst=25 actions=NORMAL"),
        "verdict flow:\n{flows}"
    );
    // A second connection uses the verdict flow: no new packet-in.
    let mid = lab.status().packet_ins;
    thread::sleep(Duration::from_millis(300));
    let mid = lab.status().packet_ins.max(mid);
    let t0 = Instant::now();
    assert!(smtp(&lab.client, None, ip("10.77.0.101"), 25, SHORT));
    let via_flow = t0.elapsed();
    assert_eq!(lab.status().packet_ins, mid, "verdict flow answers later connections");
    eprintln!("connect + banner: first (packet-in) {via_controller:?}, later (verdict flow) {via_flow:?}");
}

#[test]
fn ovs_restart_resynchronises() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::start("rgo3", base_set(), |_| {});
    assert!(!smtp(&lab.bot, None, ip("10.77.0.102"), 25, SHORT));
    lab.ovs.restart_vswitchd().expect("restart ovs-vswitchd");
    lab.wait_synced(2);
    let flows = lab.flows();
    assert!(flows.contains("nw_dst=10.77.0.101,tp_dst=25 actions=NORMAL"), "{flows}");
    // Netdev ports come back asynchronously after the restart.
    wait_for("forwarding after restart", Duration::from_secs(10), || {
        smtp(&lab.client, None, ip("10.77.0.101"), 25, Duration::from_millis(500))
    });
    assert!(!smtp(&lab.bot, None, ip("10.77.0.102"), 25, SHORT), "enforcement resumed");
    assert!(lab.status().resyncs >= 2);
}

fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let t0 = Instant::now();
    let mut all = Vec::new();
    let mut b = [0u8; 4096];
    while t0.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return (all, true),
            Ok(n) => all.extend_from_slice(&b[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => return (all, true),
        }
    }
    (all, false)
}

fn messages(mut b: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(n) = message_len(b).filter(|n| *n >= 8 && *n <= b.len()) {
        out.push(Message::decode(&b[..n]).expect("controller sends valid messages"));
        b = &b[n..];
    }
    out
}

fn fake_packet_in(i: u32) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0, 10, 9, 0, 66]);
    f.extend_from_slice(&[198, 51, (i >> 8) as u8, i as u8]);
    f.extend_from_slice(&[0x30, 0x39, 0, 25, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0x20, 0, 0, 0, 0, 0]);
    let pi = PacketIn {
        buffer_id: u32::MAX,
        total_len: f.len() as u16,
        reason: 1,
        table_id: 0,
        cookie: 0,
        r#match: Match::new(vec![Oxm::InPort(1)]),
        data: f,
    };
    Message::new(i, Body::PacketIn(pi)).encode()
}

#[test]
fn hostile_peers_do_not_disturb_the_real_switch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start("rgo4", base_set(), |c| c.max_packet_ins_per_sec = 500);
    let addr = lab.addr;
    let errors_before = lab.status().protocol_errors;

    // Garbage: refused at once.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(3));
    assert!(closed, "garbage must close the connection");

    // Wrong version: HELLO 1.0 without bitmap → HELLO_FAILED, closed.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&Message::new(1, Body::Hello { version: 1, bitmap: None }).encode()).expect("write");
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(3));
    assert!(closed, "wrong version must close");
    let ms = messages(&bytes);
    assert!(
        ms.iter().any(|m| matches!(&m.body, Body::Error(e) if e.err_type == 0)),
        "expected OFPET_HELLO_FAILED, got {ms:?}"
    );

    // Length below the header: closed at once.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&[4, 0, 0, 4, 0, 0, 0, 1]).expect("write");
    assert!(read_until_closed(&mut s, Duration::from_secs(3)).1, "short length must close");

    // Truncated message (header promises more than ever comes): closed by the handshake timeout.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&[4, 0, 0, 100, 0, 0, 0, 1, 0, 1]).expect("write");
    assert!(read_until_closed(&mut s, Duration::from_secs(5)).1, "truncated message must time out");

    // Oversized body: a 64 KiB HELLO full of junk elements.
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut big = vec![4, 0, 0xff, 0xff, 0, 0, 0, 1];
    big.resize(0xffff, 0xee);
    let _ = s.write_all(&big);
    assert!(read_until_closed(&mut s, Duration::from_secs(5)).1, "oversized junk must close");

    // Flood: a fake switch completes the handshake, then sends packet-ins
    // as fast as it can without reading anything.
    let mut flood = TcpStream::connect(addr).expect("connect");
    flood
        .write_all(&Message::new(1, Body::Hello { version: 4, bitmap: Some(1 << 4) }).encode())
        .expect("hello");
    let fr = FeaturesReply {
        datapath_id: 0xbad,
        n_buffers: 0,
        n_tables: 1,
        auxiliary_id: 0,
        capabilities: 0,
        reserved: 0,
    };
    flood.write_all(&Message::new(2, Body::FeaturesReply(fr)).encode()).expect("features");
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        let mut flood = flood.try_clone().expect("clone");
        thread::spawn(move || {
            let mut sent = 0u32;
            flood.set_write_timeout(Some(Duration::from_millis(200))).expect("timeout");
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<u8> = (0..64).flat_map(|k| fake_packet_in(sent + k)).collect();
                if flood.write_all(&batch).is_err() && stop.load(Ordering::Relaxed) {
                    break;
                }
                sent = sent.wrapping_add(64);
            }
            sent
        })
    };
    wait_for("flood connection registered", Duration::from_secs(5), || {
        lab.status().switches.iter().any(|s| s.dpid == 0xbad)
    });
    thread::sleep(Duration::from_secs(1));
    // The real switch is still served while the flood runs.
    assert!(smtp(&lab.client, None, ip("10.77.0.101"), 25, SHORT), "allowed traffic during the flood");
    assert!(!smtp(&lab.bot, None, ip("10.77.0.102"), 25, SHORT), "blocked traffic during the flood");
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().expect("flooder");
    drop(flood);
    let st = lab.status();
    assert!(sent > 1000, "flood sent {sent}");
    assert!(st.packet_ins_dropped > 0, "rate limit must shed part of the flood: {st:?}");
    wait_for("flood peer gone", Duration::from_secs(5), || {
        !lab.status().switches.iter().any(|s| s.dpid == 0xbad)
    });
    assert!(lab.status().switches.iter().any(|s| s.dpid == DPID), "real switch still connected");
    assert!(lab.status().protocol_errors > errors_before, "violations are counted");
    assert!(smtp(&lab.client, None, ip("10.77.0.101"), 587, SHORT), "still enforcing after the attack");
}

/// The MAC address of `iface` in namespace `ns`.
fn mac(ns: &str, iface: &str) -> [u8; 6] {
    let out = run("ip", &["-n", ns, "-o", "link", "show", "dev", iface]);
    let hex = out.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).expect("link/ether");
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(hex.split(':')) {
        *b = u8::from_str_radix(h, 16).expect("mac byte");
    }
    m
}

/// The README's awkward-packet policy (`guard_tests::awkward`, the table the
/// XDP program and the parser are held to) on a real OVS: every crafted
/// frame is sent raw from the client's port, and it must reach the
/// destination's port exactly when the table says it passes. Regression
/// test for the RFC 1858 tiny-fragment bypass: OVS read no ports from such
/// a first fragment and sent it to the table-miss NORMAL flow.
#[test]
fn ovs_follows_the_awkward_packet_table() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let set: AllowSet =
        [(pfx("10.77.0.101"), Classes::SMTP), (pfx("fd77::101"), Classes::SMTP)].into_iter().collect();
    let lab = Lab::start("rgo9", set, |_| {});
    let (inet, inet_if, client_if) = ("rgo9n", "rgo9n1", "rgo9c1");
    let ep = Endpoints {
        dst_mac: mac(inet, inet_if),
        src_mac: mac(&lab.client, client_if),
        src_v4: Ipv4Addr::new(10, 77, 0, 10),
        src_v6: "fd77::10".parse().expect("v6"),
        allowed_v4: Ipv4Addr::new(10, 77, 0, 101),
        allowed_v6: "fd77::101".parse().expect("v6"),
        denied_v4: Ipv4Addr::new(10, 77, 0, 102),
        denied_v6: "fd77::102".parse().expect("v6"),
    };
    let flows = lab.flows();
    for want in [
        "priority=10000,tcp,tp_dst=0 actions=meter:1,CONTROLLER:65535",
        "priority=10000,udp6,tp_dst=0 actions=meter:1,CONTROLLER:65535",
        "priority=10000,ip,nw_proto=0 actions=meter:1,CONTROLLER:65535",
        "priority=10000,dl_type=0x88a8 actions=meter:1,CONTROLLER:65535",
    ] {
        assert!(flows.contains(want), "dump-flows lacks {want:?}:\n{flows}");
    }
    let table = awkward::cases(&ep);
    let cap = PacketTap::open(inet, inet_if).expect("capture on the destination port");
    for c in &table {
        guard_tests::netns::send_frames(&lab.client, client_if, std::slice::from_ref(&c.frame))
            .expect("send");
        thread::sleep(Duration::from_millis(20));
    }
    let received: Vec<Vec<u8>> =
        cap.frames(Duration::from_secs(2)).iter().map(|f| awkward::untagged(f)).collect();
    let wrong: Vec<String> = table
        .iter()
        .filter_map(|c| {
            let sent = awkward::untagged(&c.frame);
            let arrived = received.iter().any(|r| r.starts_with(&sent));
            let want = c.openflow_outcome();
            (arrived != want.passes()).then(|| format!("{}: arrived={arrived}, want {want:?}", c.name))
        })
        .collect();
    let counters: Vec<(&str, u64)> =
        [Stat::DropMalformed, Stat::DropExtChain, Stat::Miss, Stat::PassAllowed, Stat::NonIp]
            .iter()
            .map(|s| (s.name(), lab.stat(*s)))
            .collect();
    assert!(
        wrong.is_empty(),
        "OpenFlow mode disagrees with the table:\n{}\ncontroller counters: {counters:?}\n{}",
        wrong.join("\n"),
        lab.flows()
    );
    assert_eq!(lab.status().switch_errors, 0, "the switch rejected a flow");
}
