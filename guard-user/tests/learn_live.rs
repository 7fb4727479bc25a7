//! Live learning (issue 9) with real components: a real BIND recursive
//! resolver inside (an exempt host), a real BIND authoritative hierarchy
//! outside (root, TLDs, domains with NS+glue, an out-of-bailiwick NS, MX
//! with A and AAAA, CNAMEs, an MX answer large enough to need TCP), a real
//! BIND primary for the RPZ (empty at start), and `rpz-guard run --learn`
//! with XDP on the router's inside interface and the copy program on its
//! outside interface.
//!
//! ```text
//!  client 198.19.1.10 ─┐                    router (rpz-guard)
//!  bot    198.19.1.66 ─┼─ lan bridge ── i0 [XDP inside]  b0 [XDP outside] ── outside
//!  resolver .53, RPZ .54┘                                    authoritative world
//! ```
//!
//! Checks: a client resolves MX (and the exchanges' A/AAAA) through the
//! resolver and connects at once, over IPv4 and IPv6: established on the
//! first SYN (connect time, no retransmission in TCP_INFO, no miss at the
//! router); the entries then show at BIND within a bounded time and the zone
//! holds exactly the world's walked name servers and mail hosts; forged and
//! unsolicited responses, answers to a non-resolver host and a bot asking a
//! rogue server teach nothing, and events name the bot; with BIND
//! unreachable entries stay enforced and queued, survive a daemon restart
//! (journal) and reach BIND once it is back; a second router following the
//! RPZ by IXFR enforces the learned entries without seeing any DNS.
//!
//! Needs root (namespaces, XDP, named on port 53).
mod common;
mod daemon_support;
mod learn_common;
mod learn_hierarchy;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Named, NamedConfig, ZONE};
use daemon_support::{eventually, loaded};
use guard_tests::ovs::Ovs;
use guard_user::{
    daemon::StatusReport,
    events::{DetectionEvent, LearnedEvent},
    policy::{AllowSet, Classes, Prefix, Service},
    rpz::{encode_owner, transfer},
};
use learn_hierarchy::{Netns, Proc, World, Zone, dig, ip_cmd, ns_cmd, port53};

const BIN: &str = env!("CARGO_BIN_EXE_rpz-guard");
/// OpenFlow lab: the bridge and its datapath id.
const OF_BRIDGE: &str = "ofbr";
const OF_DPID: u64 = 0x0000_0000_0009_1ea5;
const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 53);
const RESOLVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x53);
const RPZ: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 54);
const ROUTER_IN: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
const BOT: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 66);
const ROUTER2: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);
/// The rogue server the bot asks directly (never delegated to).
const ROGUE: &str = "198.18.66.6";
/// A mail port address nobody resolved (the bot's SMTP target).
const BOT_SMTP: &str = "203.0.113.99";
/// What the forged responses claim.
const FORGED: [&str; 3] = ["203.0.113.77", "198.18.77.7", "203.0.113.78"];

fn addr(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

/// The namespaces, processes and files of one run. Fields drop in order:
/// processes, then namespaces, then the directory.
struct LiveLab {
    procs: Vec<Proc>,
    smtp: Option<SmtpSink>,
    rpz: Option<Named>,
    /// OpenFlow mode: the private Open vSwitch in the router namespace.
    ovs: Option<Ovs>,
    /// XDP mode: the LAN bridge namespace.
    lan: Option<Netns>,
    client: Netns,
    bot: Netns,
    resolver: Netns,
    router: Netns,
    /// XDP mode: the second router (follows the RPZ by IXFR).
    router2: Option<Netns>,
    outside: Netns,
    dir: tempfile::TempDir,
}

impl LiveLab {
    fn up(prefix: &str, outside_addrs: &BTreeSet<IpAddr>) -> LiveLab {
        let dir = tempfile::Builder::new().prefix("learn-live-").tempdir().expect("temp dir");
        let n = |s: &str| Netns::new(&format!("{prefix}{s}"));
        let lab = LiveLab {
            procs: Vec::new(),
            smtp: None,
            rpz: None,
            ovs: None,
            lan: Some(n("l")),
            client: n("c"),
            bot: n("b"),
            resolver: n("r"),
            router: n("g"),
            router2: Some(n("h")),
            outside: n("o"),
            dir,
        };
        let (l, c, b, r, g, h, o) = (
            lab.lan.as_ref().map_or("", |n| n.name.as_str()),
            lab.client.name.as_str(),
            lab.bot.name.as_str(),
            lab.resolver.name.as_str(),
            lab.router.name.as_str(),
            lab.router2.as_ref().map_or("", |n| n.name.as_str()),
            lab.outside.name.as_str(),
        );
        ip_cmd(&["-n", l, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
        ip_cmd(&["-n", l, "link", "set", "br0", "up"]);
        for (ns, port, inner) in
            [(c, "pc", "c0"), (b, "pb", "c0"), (r, "pr", "r0"), (g, "pg", "i0"), (h, "ph", "i0")]
        {
            ip_cmd(&[
                "-n", l, "link", "add", "name", port, "type", "veth", "peer", "name", inner, "netns", ns,
            ]);
            ip_cmd(&["-n", l, "link", "set", port, "master", "br0", "up"]);
            ip_cmd(&["-n", ns, "link", "set", inner, "up"]);
        }
        ip_cmd(&["-n", g, "link", "add", "b0", "type", "veth", "peer", "name", "b1", "netns", o]);
        ip_cmd(&["-n", h, "link", "add", "b0", "type", "veth", "peer", "name", "b2", "netns", o]);
        let addrs: [(&str, &str, &str); 17] = [
            (c, "c0", "198.19.1.10/24"),
            (c, "c0", "2001:db8:c::10/64"),
            (b, "c0", "198.19.1.66/24"),
            (b, "c0", "2001:db8:c::66/64"),
            (r, "r0", "198.19.1.53/24"),
            (r, "r0", "2001:db8:c::53/64"),
            (r, "r0", "198.19.1.54/24"),
            (g, "i0", "198.19.1.1/24"),
            (g, "i0", "2001:db8:c::1/64"),
            (g, "b0", "198.19.255.1/30"),
            (g, "b0", "2001:db8:ff::1/64"),
            (o, "b1", "198.19.255.2/30"),
            (o, "b1", "2001:db8:ff::2/64"),
            (h, "i0", "198.19.1.2/24"),
            (h, "b0", "198.19.254.1/30"),
            (o, "b2", "198.19.254.2/30"),
            (h, "i0", "2001:db8:c::2/64"),
        ];
        for (ns, dev, a) in addrs {
            ip_cmd(&["-n", ns, "addr", "add", a, "dev", dev, "nodad"]);
        }
        for (ns, dev) in [(g, "b0"), (o, "b1"), (h, "b0"), (o, "b2")] {
            ip_cmd(&["-n", ns, "link", "set", dev, "up"]);
        }
        for ns in [c, b, r] {
            ip_cmd(&["-n", ns, "route", "add", "default", "via", "198.19.1.1"]);
            ip_cmd(&["-n", ns, "-6", "route", "add", "default", "via", "2001:db8:c::1"]);
        }
        ip_cmd(&["-n", g, "route", "add", "default", "via", "198.19.255.2"]);
        ip_cmd(&["-n", g, "-6", "route", "add", "default", "via", "2001:db8:ff::2"]);
        ip_cmd(&["-n", h, "route", "add", "default", "via", "198.19.254.2"]);
        ip_cmd(&["-n", o, "route", "add", "198.19.0.0/16", "via", "198.19.255.1"]);
        ip_cmd(&["-n", o, "-6", "route", "add", "2001:db8:c::/64", "via", "2001:db8:ff::1"]);
        // Wire-sized segments on the border links, as on a real link.
        for (ns, dev) in [(g, "b0"), (o, "b1")] {
            ns_cmd(ns, &["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"]);
        }
        for ns in [g, h] {
            ns_cmd(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
            // XDP native on veth needs the peer's NAPI; generic mode is what the
            // daemon falls back to anyway, but bpffs is needed for nothing here.
        }
        for a in outside_addrs {
            let cidr = if a.is_ipv4() { format!("{a}/32") } else { format!("{a}/128") };
            ip_cmd(&["-n", o, "addr", "add", &cidr, "dev", "lo"]);
        }
        lab
    }

    /// OpenFlow mode: the same hosts and addresses, but the LAN is a
    /// private Open vSwitch bridge (`fail_mode=secure`, controller
    /// rpz-guard) in the router namespace, whose internal port `ofbr` is the
    /// router's inside interface (198.19.1.1); `b0` leads outside as before.
    ///
    /// ```text
    ///  client .10 ─┐  OVS bridge ofbr       router ns (rpz-guard, OpenFlow)
    ///  bot    .66 ─┼─ (enforces) ── ofbr .1 ── kernel routing ── b0 ── outside
    ///  resolver .53, RPZ .54 ─┘
    /// ```
    fn up_openflow(prefix: &str, outside_addrs: &BTreeSet<IpAddr>, of_port: u16) -> LiveLab {
        let dir = tempfile::Builder::new().prefix("learn-live-of-").tempdir().expect("temp dir");
        let n = |s: &str| Netns::new(&format!("{prefix}{s}"));
        let mut lab = LiveLab {
            procs: Vec::new(),
            smtp: None,
            rpz: None,
            ovs: None,
            lan: None,
            client: n("c"),
            bot: n("b"),
            resolver: n("r"),
            router: n("g"),
            router2: None,
            outside: n("o"),
            dir,
        };
        let g = lab.router.name.clone();
        let ovs = Ovs::start(lab.dir.path().join("ovs"), Some(&g))
            .unwrap_or_else(|e| panic!("private OVS (install openvswitch-switch): {e}"));
        ovs.add_secure_bridge(OF_BRIDGE, Some(OF_DPID)).expect("add-br");
        let (c, b, r, o) = (
            lab.client.name.as_str(),
            lab.bot.name.as_str(),
            lab.resolver.name.as_str(),
            lab.outside.name.as_str(),
        );
        for (ns, port, inner) in [(c, "pc", "c0"), (b, "pb", "c0"), (r, "pr", "r0")] {
            ip_cmd(&["-n", &g, "link", "add", port, "type", "veth", "peer", "name", inner, "netns", ns]);
            ip_cmd(&["-n", &g, "link", "set", port, "up"]);
            ip_cmd(&["-n", ns, "link", "set", inner, "up"]);
            // The netdev datapath reads frames with packet sockets and does
            // not complete checksums the veth left to offload.
            ns_cmd(ns, &["ethtool", "-K", inner, "tx", "off"]);
            ovs.vsctl(&["add-port", OF_BRIDGE, port]).expect("add-port");
        }
        ip_cmd(&["-n", &g, "link", "add", "b0", "type", "veth", "peer", "name", "b1", "netns", o]);
        let addrs: [(&str, &str, &str); 12] = [
            (c, "c0", "198.19.1.10/24"),
            (c, "c0", "2001:db8:c::10/64"),
            (b, "c0", "198.19.1.66/24"),
            (b, "c0", "2001:db8:c::66/64"),
            (r, "r0", "198.19.1.53/24"),
            (r, "r0", "2001:db8:c::53/64"),
            (r, "r0", "198.19.1.54/24"),
            (&g, OF_BRIDGE, "198.19.1.1/24"),
            (&g, OF_BRIDGE, "2001:db8:c::1/64"),
            (&g, "b0", "198.19.255.1/30"),
            (&g, "b0", "2001:db8:ff::1/64"),
            (o, "b1", "198.19.255.2/30"),
        ];
        for (ns, dev, a) in addrs {
            ip_cmd(&["-n", ns, "addr", "add", a, "dev", dev, "nodad"]);
        }
        ip_cmd(&["-n", o, "addr", "add", "2001:db8:ff::2/64", "dev", "b1", "nodad"]);
        for (ns, dev) in [(g.as_str(), OF_BRIDGE), (g.as_str(), "b0"), (o, "b1")] {
            ip_cmd(&["-n", ns, "link", "set", dev, "up"]);
        }
        for ns in [c, b, r] {
            ip_cmd(&["-n", ns, "route", "add", "default", "via", "198.19.1.1"]);
            ip_cmd(&["-n", ns, "-6", "route", "add", "default", "via", "2001:db8:c::1"]);
        }
        ip_cmd(&["-n", &g, "route", "add", "default", "via", "198.19.255.2"]);
        ip_cmd(&["-n", &g, "-6", "route", "add", "default", "via", "2001:db8:ff::2"]);
        ip_cmd(&["-n", o, "route", "add", "198.19.0.0/16", "via", "198.19.255.1"]);
        ip_cmd(&["-n", o, "-6", "route", "add", "2001:db8:c::/64", "via", "2001:db8:ff::1"]);
        for (ns, dev) in [(g.as_str(), "b0"), (o, "b1")] {
            ns_cmd(ns, &["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"]);
        }
        ns_cmd(&g, &["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        // The netdev datapath reads its ports with packet sockets, so the
        // router's own stack sees their frames too: it must neither answer
        // ARP for its addresses there (the hosts would address the router
        // past OVS) nor route anything that arrives on them.
        for port in ["pc", "pb", "pr"] {
            ns_cmd(
                &g,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{port}.forwarding=0"),
                    &format!("net.ipv4.conf.{port}.arp_ignore=8"),
                    &format!("net.ipv6.conf.{port}.disable_ipv6=1"),
                ],
            );
        }
        for a in outside_addrs {
            let cidr = if a.is_ipv4() { format!("{a}/32") } else { format!("{a}/128") };
            ip_cmd(&["-n", o, "addr", "add", &cidr, "dev", "lo"]);
        }
        ovs.vsctl(&["set-controller", OF_BRIDGE, &format!("tcp:127.0.0.1:{of_port}")])
            .expect("set-controller");
        lab.ovs = Some(ovs);
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An SMTP listener on every address of the outside namespace: greets and
/// closes; counts connections.
struct SmtpSink {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SmtpSink {
    fn start(ns: &str) -> SmtpSink {
        let listener = guard_tests::netns::run_in_netns(ns, || TcpListener::bind("[::]:25"))
            .expect("enter the outside namespace")
            .expect("bind [::]:25 in the outside namespace");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        use std::io::Write as _;
                        let _ = conn.write_all(b"220 outside ESMTP\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SmtpSink { stop, thread: Some(thread) }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the resolver (recursive BIND, our root as hints) in its namespace.
fn start_resolver(lab: &mut LiveLab, world: &World, udp_size: u16, qmin: &str) {
    let dir = lab.path("resolver");
    std::fs::create_dir_all(&dir).expect("resolver dir");
    std::fs::write(dir.join("root.hints"), world.root_hints()).expect("write hints");
    let options = format!(
        "    listen-on port 53 {{ {RESOLVER}; }};\n    listen-on-v6 port 53 {{ {RESOLVER6}; }};\n    \
         recursion yes;\n    allow-recursion {{ any; }};\n    qname-minimization {qmin};\n    \
         edns-udp-size {udp_size};\n    query-source address {RESOLVER};\n    query-source-v6 address {RESOLVER6};"
    );
    let ns = lab.resolver.name.clone();
    let mut p = learn_hierarchy::start_named(
        "resolver",
        &ns,
        &dir,
        &options,
        "zone \".\" { type hint; file \"root.hints\"; };",
    );
    if guard_tests::wait_for_udp_dns(&lab.client.name, port53(RESOLVER.into()), Duration::from_secs(30))
        .is_err()
    {
        p.assert_running();
        panic!("resolver does not answer:\n{}", p.log_text());
    }
    lab.procs.push(p);
}

/// A running daemon (a `Proc` in `procs`) and its files.
struct Guard {
    proc_index: usize,
    socket: PathBuf,
    events: PathBuf,
}

impl Guard {
    fn start(lab: &mut LiveLab, tag: &str, ns: &str, args: &[&str]) -> Guard {
        let socket = lab.path(&format!("{tag}.sock"));
        let events = lab.path(&format!("{tag}-events.jsonl"));
        let log = lab.path(&format!("{tag}.log"));
        // The lab's own state directory: the host's /var/lib/rpz-guard may
        // hold another run's snapshot, which this daemon would start from.
        let state = lab.path(&format!("{tag}-state"));
        let mut argv: Vec<&str> = vec![BIN, "run"];
        argv.extend_from_slice(args);
        let (s, e) = (socket.to_str().expect("utf-8"), events.to_str().expect("utf-8"));
        argv.extend(["--events", e, "--status-socket", s, "--state-dir", state.to_str().expect("utf-8")]);
        let mut p = Proc::spawn(&format!("rpz-guard {tag}"), ns, &argv, &log);
        let g = Guard { proc_index: lab.procs.len(), socket: socket.clone(), events };
        let t = Instant::now();
        while g.try_status().is_none() {
            p.assert_running();
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "rpz-guard {tag} did not start:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lab.procs.push(p);
        // Status answers before the first transfer: wait for the set.
        let in_force = eventually(Duration::from_secs(60), || g.try_status().is_some_and(|s| loaded(&s)));
        assert!(in_force.is_some(), "rpz-guard {tag}: first allow set not in force: {:?}", g.status().sync);
        g
    }

    fn try_status(&self) -> Option<StatusReport> {
        let out = Command::new(BIN).args(["status", "--json", "--socket"]).arg(&self.socket).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn status(&self) -> StatusReport {
        self.try_status().expect("rpz-guard status answers")
    }

    fn counter(&self, name: &str) -> u64 {
        self.status().counters.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    }

    /// The detection events (blocked attempts), every line checked
    /// against the schema.
    fn events(&self) -> Vec<DetectionEvent> {
        self.lines()
            .filter(|v| v.get("event").is_none())
            .map(|v| serde_json::from_value(v).expect("event"))
            .collect()
    }

    /// The learned events (one per entry learned live).
    fn learned(&self) -> Vec<LearnedEvent> {
        self.lines()
            .filter(|v| v["event"] == LearnedEvent::TAG)
            .map(|v| serde_json::from_value(v).expect("learned event"))
            .collect()
    }

    fn lines(&self) -> impl Iterator<Item = serde_json::Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        text.lines().map(daemon_support::check_event_line).collect::<Vec<_>>().into_iter()
    }

    /// SIGINT; the exit must be clean. Returns the log.
    fn stop(&self, lab: &mut LiveLab) -> String {
        let p = &mut lab.procs[self.proc_index];
        let status = p.interrupt(Duration::from_secs(15));
        assert!(status.success(), "{} exit status {status}:\n{}", p.name, p.log_text());
        p.log_text()
    }
}

/// What the RPZ says about `ip` (dig from the resolver namespace).
fn rpz_answer(lab: &LiveLab, ip: IpAddr) -> Vec<String> {
    let owner = encode_owner(&Prefix::host(ip), ZONE);
    dig(Some(&lab.resolver.name), SocketAddr::from((RPZ, 53)), &owner, "A", &["+norec"]).data("A")
}

/// Connects from `ns` to `to`:25 at once; returns the connect time and the
/// retransmissions TCP_INFO counted (a lost SYN would be one).
fn connect_first_syn(ns: &str, to: IpAddr) -> Result<(Duration, u32), String> {
    let t = Instant::now();
    let s = guard_tests::tcp_connect_in(ns, SocketAddr::new(to, 25), Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    let took = t.elapsed();
    let retrans = guard_tests::tcp_retransmissions(&s).map_err(|e| format!("getsockopt(TCP_INFO): {e}"))?;
    Ok((took, retrans))
}

/// The mail client: for each mail zone of `zones`, MX through the resolver,
/// then A and AAAA of the first exchanges, then an SMTP connection to each
/// address at once. Every connection must be established on its first SYN.
fn mail_client(lab: &LiveLab, world: &World, zones: &[&Zone]) -> Vec<(IpAddr, Duration)> {
    let resolver = port53(RESOLVER.into());
    let ns = lab.client.name.as_str();
    let mut done = Vec::new();
    for z in zones.iter().filter(|z| !z.mx.is_empty()) {
        let d = dig(Some(ns), resolver, z.origin, "MX", &[]);
        assert_eq!(d.status, "NOERROR", "{} MX:\n{}", z.origin, d.raw);
        for (_, ex) in z.mx.iter().take(2) {
            let canon = world.canonical(ex);
            for t in ["A", "AAAA"] {
                let d = dig(Some(ns), resolver, ex, t, &[]);
                assert_eq!(d.status, "NOERROR", "{ex} {t}:\n{}", d.raw);
                let got: BTreeSet<IpAddr> = d.data(t).iter().map(|s| addr(s)).collect();
                let want: BTreeSet<IpAddr> =
                    world.hosts[canon].iter().copied().filter(|a| a.is_ipv4() == (t == "A")).collect();
                assert_eq!(got, want, "{ex} {t}:\n{}", d.raw);
                for a in got {
                    let (took, retrans) = connect_first_syn(ns, a)
                        .unwrap_or_else(|e| panic!("SMTP to {a} ({ex}) right after resolving it: {e}"));
                    assert_eq!(retrans, 0, "connection to {a} ({ex}) needed a retransmission");
                    assert!(took < Duration::from_millis(500), "connect to {a} took {took:?}");
                    done.push((a, took));
                }
            }
        }
    }
    done
}

/// Forged and misdirected responses on the outside link, each claiming an
/// MX host and NS glue: none may teach anything.
fn forged_responses(lab: &LiveLab, world: &World) {
    use hickory_proto::{op::ResponseCode, rr::RecordType};
    use learn_common::{a, mx, ns, response};
    let trusted = world.hosts["a.nic.net"][0];
    let msg = |id| {
        response(
            id,
            "evil2.net.",
            RecordType::MX,
            ResponseCode::NoError,
            vec![mx("evil2.net.", 10, "mx.evil2.net.")],
            vec![ns("evil2.net.", "ns.evil2.net.")],
            vec![a("mx.evil2.net.", FORGED[0]), a("ns.evil2.net.", FORGED[1]), a("ns.evil2.net.", FORGED[2])],
        )
    };
    let frames = vec![
        // Unsolicited, from a trusted server's address, to the resolver.
        learn_common::eth_udp(trusted, RESOLVER.into(), 53, 40053, &msg(0x5151)),
        // From a server nobody delegated to.
        learn_common::eth_udp(addr(ROGUE), RESOLVER.into(), 53, 40054, &msg(0x5152)),
        // To a host that is not a resolver.
        learn_common::eth_udp(trusted, CLIENT.into(), 53, 40055, &msg(0x5153)),
    ];
    let frames = if lab.ovs.is_some() { to_router(lab, frames) } else { frames };
    guard_tests::netns::send_frames(&lab.outside.name, "b1", &frames).expect("send forged responses");
}

/// OpenFlow lab: the router routes what it receives, so frames sent from
/// outside must be addressed to its outside interface.
fn to_router(lab: &LiveLab, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mac = |ns: &str, dev: &str| -> Vec<u8> {
        let out = ns_cmd(ns, &["cat", &format!("/sys/class/net/{dev}/address")]);
        out.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("MAC")).collect()
    };
    let (dst, src) = (mac(&lab.router.name, "b0"), mac(&lab.outside.name, "b1"));
    frames
        .into_iter()
        .map(|mut f| {
            f[..6].copy_from_slice(&dst);
            f[6..12].copy_from_slice(&src);
            f
        })
        .collect()
}

/// OpenFlow mode: a burst of unsolicited answers toward the resolver, far
/// over the learning meter's rate. Every one the switch matched is either
/// learned from (and released) or dropped by the meter or the controller's
/// limit, and counted lost; nothing is learned; a client still connects on
/// its first SYN afterwards.
fn answer_flood_openflow(lab: &LiveLab, guard: &Guard, conns: &[(IpAddr, Duration)]) {
    use hickory_proto::{op::ResponseCode, rr::RecordType};
    use learn_common::{a, mx, response};
    const N: usize = 20_000;
    let held_flow = "udp,nw_dst=198.19.1.53,tp_src=53";
    let ovs = lab.ovs.as_ref().expect("OpenFlow lab");
    let matched = || {
        let dump = ovs.dump_flows(OF_BRIDGE).expect("dump-flows");
        let line = dump.lines().find(|l| l.contains(held_flow)).map(str::to_owned).unwrap_or_default();
        line.split("n_packets=").nth(1).and_then(|v| v.split(',').next()).and_then(|v| v.parse::<u64>().ok())
    };
    let of = |k: &str| guard.status().extra[k].as_u64().unwrap_or(0);
    let before =
        (matched().expect("held flow"), of("learn_packet_ins"), of("learn_meter_drops"), of("learn_shed"));
    let (lost_before, learned_before) =
        (guard.counter("dns_copy_lost"), guard.status().live.map_or(0, |l| l.learned));
    let trusted = IpAddr::from(Ipv4Addr::new(198, 18, 1, 1));
    let msg = response(
        0x4242,
        "flood.net.",
        RecordType::MX,
        ResponseCode::NoError,
        vec![mx("flood.net.", 10, "mx.flood.net.")],
        vec![],
        vec![a("mx.flood.net.", FORGED[2])],
    );
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| learn_common::eth_udp(trusted, RESOLVER.into(), 53, 1024 + (i % 60_000) as u16, &msg))
        .collect();
    guard_tests::netns::send_frames(&lab.outside.name, "b1", &to_router(lab, frames))
        .expect("send the flood");
    // Settled: OVS's flow statistics (refreshed about once a second) and
    // the controller's counters stop moving.
    // Twice in a row: OVS's revalidators can be late under load.
    let (mut last, mut stable_for) = ((0, 0, 0, 0), 0);
    let settled = eventually(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(1200));
        let now = (matched().unwrap_or(0), of("learn_packet_ins"), of("learn_meter_drops"), of("learn_shed"));
        stable_for = if now == last { stable_for + 1 } else { 0 };
        last = now;
        stable_for >= 2
    });
    assert!(settled.is_some(), "the flood settled: {last:?}");
    let (m, seen, drops, shed) = (last.0 - before.0, last.1 - before.1, last.2 - before.2, last.3 - before.3);
    assert!(drops > 0, "the learning meter dropped part of {N} answers (matched {m}, seen {seen})");
    // The netdev datapath reads its ports with packet sockets and loses part
    // of a burst before any flow sees it; what a flow matched is accounted.
    assert!(m >= N as u64 / 10, "the flood reached the switch: {m} of {N}");
    // The resolver's own answers may cross meanwhile (a little slack up);
    // OVS's own packet-in queue toward a busy controller may drop a few
    // (down): those answers are not released either, but only OVS counts
    // them (see the closing note of issue 9).
    assert!(
        seen + drops <= m + 20 && seen + drops + m / 50 >= m,
        "matched {m} ≈ packet-ins {seen} + meter drops {drops}"
    );
    assert_eq!(
        guard.counter("dns_copy_lost") - lost_before,
        drops + shed,
        "meter drops and shed packet-ins are lost copies"
    );
    assert_eq!(guard.status().live.map_or(0, |l| l.learned), learned_before, "the flood taught nothing");
    let target = conns.iter().map(|(a, _)| *a).find(IpAddr::is_ipv4).expect("a learned mail host");
    let (_, retrans) = connect_first_syn(&lab.client.name, target).expect("connect after the flood");
    assert_eq!(retrans, 0, "first SYN after the flood");
    eprintln!(
        "OpenFlow answer flood: {N} sent, {m} matched, {seen} packet-ins, {drops} meter drops, {shed} shed"
    );
}

/// A bot that skips resolution: SMTP to a hard-coded IP, DNS straight to
/// a rogue server.
fn bot_traffic(lab: &LiveLab) {
    let ns = lab.bot.name.as_str();
    assert!(
        guard_tests::tcp_connect_in(ns, SocketAddr::new(addr(BOT_SMTP), 25), Duration::from_millis(700))
            .is_err(),
        "the bot's SMTP to a hard-coded address must be blocked"
    );
    let d = dig(Some(ns), port53(addr(ROGUE)), "evil.test", "MX", &["+norec", "+time=1", "+tries=1"]);
    assert_ne!(d.status, "NOERROR", "the bot's DNS to a rogue server must be blocked:\n{}", d.raw);
}

/// The whole RPZ (AXFR from the resolver namespace, where the primary is).
fn axfr(ns: &str, named: &Named) -> AllowSet {
    let (addr, key) = (named.addr, named.key.clone());
    guard_tests::netns::run_in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(transfer::axfr(addr, ZONE, Some(&key))).expect("AXFR of the RPZ").set
    })
    .expect("enter the resolver namespace")
}

fn daemon_args(mode: Mode, key: &str, hints: &str, journal: &str) -> Vec<String> {
    let of_listen = format!("127.0.0.1:{}", mode.of_port());
    let point: Vec<&str> = match mode {
        Mode::Xdp => vec!["--iface", "i0", "--learn-outside", "b0"],
        // The LAN (resolver, RPZ primary, the router itself) is internal.
        Mode::Openflow(_) => vec![
            "--mode",
            "openflow",
            "--openflow-listen",
            &of_listen,
            "--internal",
            "198.19.1.0/24",
            "--internal",
            "2001:db8:c::/64",
        ],
    };
    let common = [
        "--server",
        "198.19.1.54:53",
        "--tsig-key",
        key,
        "--notify-listen",
        "198.19.1.1:10053",
        "--poll-interval",
        "2",
        "--exempt",
        "198.19.1.53/32",
        "--exempt",
        "2001:db8:c::53/128",
        "--learn",
        "--learn-root-hints",
        hints,
        "--learn-journal",
        journal,
    ];
    point.into_iter().chain(common).map(str::to_owned).collect()
}

/// The enforcement point a scenario runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// XDP on the router's inside interface, the copy program on its outside one.
    Xdp,
    /// A private Open vSwitch bridge controlled by rpz-guard, on this port.
    Openflow(u16),
}

impl Mode {
    fn of_port(self) -> u16 {
        if let Mode::Openflow(p) = self { p } else { 0 }
    }
}

/// Which parts of the story a scenario runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// Everything: bad input, flood, second router, BIND down and restart.
    Full,
    /// Learning and the first SYNs only.
    Learning,
    /// Learning, then the forged and bot cases (nothing learned, events).
    BadInput,
}

/// The large MX answer comes over TCP (EDNS 1232, BIND's default), no
/// QNAME minimisation; then every other check.
#[test]
fn live_learning_xdp_real_bind_hierarchy() {
    scenario("t", 1232, "off", Extent::Full, Mode::Xdp);
}

/// OpenFlow mode (a real Open vSwitch, answers toward the resolver held
/// until their flows are in): the large MX answer over TCP; first SYNs
/// over IPv4 and IPv6, entries at BIND, the forged and bot cases.
#[test]
fn live_learning_openflow_real_ovs_and_bind() {
    scenario("o", 1232, "off", Extent::BadInput, Mode::Openflow(common::free_port()));
}

/// OpenFlow mode with the large MX answer in IPv4 fragments (the later
/// fragments toward the resolver are held too) and QNAME minimisation.
#[test]
fn live_learning_openflow_fragments() {
    scenario("p", 4096, "relaxed", Extent::Learning, Mode::Openflow(common::free_port()));
}

/// The large MX answer comes as IPv4 fragments (EDNS 4096), with QNAME
/// minimisation: the same entries, the same first SYNs.
#[test]
fn live_learning_xdp_fragments_and_qname_minimisation() {
    scenario("f", 4096, "relaxed", Extent::Learning, Mode::Xdp);
}

fn scenario(tag: &str, udp_size: u16, qmin: &str, extent: Extent, mode: Mode) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (namespaces, XDP, named on port 53)");
    let started = Instant::now();
    let test_start_ms = guard_user::events::now_ms();
    let world = World::standard();
    let rogue = World::rogue();
    let mut outside: BTreeSet<IpAddr> = world.all_addresses();
    outside.extend(rogue.all_addresses());
    outside.insert(addr(ROGUE));
    outside.insert(addr(BOT_SMTP));
    let prefix = format!("ll{}{tag}", std::process::id() % 100_000);
    let mut lab = match mode {
        Mode::Xdp => LiveLab::up(&prefix, &outside),
        Mode::Openflow(port) => LiveLab::up_openflow(&prefix, &outside, port),
    };
    let auth = learn_hierarchy::start_authoritative(
        &lab.outside.name,
        lab.dir.path(),
        &world,
        &rogue,
        addr(ROGUE),
        &format!("    max-udp-size {udp_size};"),
    );
    lab.procs.extend(auth);
    lab.smtp = Some(SmtpSink::start(&lab.outside.name));
    let named = Named::start(&NamedConfig {
        netns: Some(lab.resolver.name.clone()),
        listen: Some(RPZ),
        port: Some(53),
        notify_port: Some(10053),
        notify_addr: Some(ROUTER_IN),
        ..NamedConfig::default()
    });
    let key = named.key_file.to_str().expect("utf-8").to_owned();
    lab.rpz = Some(named);
    let hints = lab.path("root.hints");
    std::fs::write(&hints, world.root_hints()).expect("write hints");
    let journal = lab.path("live.journal");
    let (hints_s, journal_s) =
        (hints.to_str().expect("utf-8").to_owned(), journal.to_str().expect("utf-8").to_owned());
    let mut args = daemon_args(mode, &key, &hints_s, &journal_s);
    if mode != Mode::Xdp {
        // A learning meter low enough for one sender to overrun (the answer
        // flood below), far above what the resolver's own answers need.
        let cfg = lab.path("learn-openflow.toml");
        std::fs::write(&cfg, "[learn]\nopenflow_packet_in_rate = 1000\n").expect("write config");
        args.extend(["--config".to_owned(), cfg.to_str().expect("utf-8").to_owned()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let router = lab.router.name.clone();
    let guard = Guard::start(&mut lab, "router", &router, &argv);
    if mode != Mode::Xdp {
        let connected = eventually(Duration::from_secs(15), || {
            guard.status().extra["switches"].as_array().is_some_and(|s| !s.is_empty())
        });
        assert!(connected.is_some(), "the bridge connects to the controller: {:?}", guard.status().extra);
    }
    let router2 = (mode == Mode::Xdp).then(|| start_router2(&mut lab, &key));
    start_resolver(&mut lab, &world, udp_size, qmin);

    // The bot first: blocked, and nothing it does is learned.
    bot_traffic(&lab);

    // The mail client: MX, A, AAAA, connect at once; first SYN passes.
    let early = world.early_zones();
    let misses_before = guard.counter("miss");
    let conns = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mail_client(&lab, &world, &early)))
        .unwrap_or_else(|e| {
            // What the router and the resolver saw, for a failure in CI.
            eprintln!("{}", diagnosis(&lab, &guard));
            std::panic::resume_unwind(e)
        });
    assert!(conns.iter().any(|(a, _)| a.is_ipv6()) && conns.iter().any(|(a, _)| a.is_ipv4()), "{conns:?}");
    let st = guard.status();
    let live = st.live.clone().expect("status shows live learning");
    assert_eq!(guard.counter("miss"), misses_before, "no client SYN took the miss path: {st:?}");
    assert_eq!(live.raced_misses, 0, "{live:?}");
    assert!(live.learned > 0 && live.matched > 0 && live.responses >= live.matched, "{live:?}");
    assert_eq!(guard.counter("dns_copy_lost"), 0, "{st:?}");
    assert!(guard.counter("dns_copied") > 0, "{st:?}");

    // BIND gets every learned entry within a bounded time; the zone holds
    // exactly the walked name servers (but the hints) and the mail hosts.
    let roots = world.ns_addrs(&[world.zone("")]);
    let dns: BTreeSet<IpAddr> = world.expected_dns().difference(&roots).copied().collect();
    let smtp = world.expected_smtp();
    let expected: AllowSet = dns
        .iter()
        .map(|ip| (Prefix::host(*ip), Classes::DNS))
        .chain(smtp.iter().map(|ip| (Prefix::host(*ip), Classes::SMTP)))
        .collect();
    let named = lab.rpz.as_ref().expect("rpz named");
    // The allow entries (their lifetime TXT is checked below).
    let entries = |s: &AllowSet| s.iter().map(|(p, c)| (*p, *c)).collect::<Vec<_>>();
    let took = eventually(Duration::from_secs(10), || {
        entries(&axfr(&lab.resolver.name, named)) == entries(&expected)
    });
    assert!(
        took.is_some(),
        "the RPZ should hold exactly the learned set; missing {:?}, extra {:?}; status {:?}",
        expected
            .iter()
            .filter(|(p, c)| !axfr(&lab.resolver.name, named).get(p).contains(**c))
            .collect::<Vec<_>>(),
        axfr(&lab.resolver.name, named)
            .iter()
            .filter(|(p, _)| expected.get(p).is_empty())
            .collect::<Vec<_>>(),
        guard.status().live
    );
    for (a, _) in &conns {
        assert_eq!(rpz_answer(&lab, *a), vec!["127.0.0.25".to_owned()], "mail host {a} at BIND");
    }
    // Issue 11: every learned entry went in with its lifetime state, taught
    // by a real answer of the hierarchy (server, question, type, TTL).
    let zone = axfr(&lab.resolver.name, named);
    for (p, _) in zone.iter() {
        let m = zone.meta(p).unwrap_or_else(|| panic!("{p} has no lifetime TXT"));
        assert_eq!(m.source, guard_user::rpz::meta::Source::Learned, "{p}: {m:?}");
        assert!(m.first.is_some() && m.seen >= m.first && m.ttl.is_some(), "{p}: {m:?}");
        let ev = m.evidence.as_ref().unwrap_or_else(|| panic!("{p}: no evidence {m:?}"));
        assert!(ev.qname.ends_with('.') && !ev.qtype.is_empty(), "{p}: {ev:?}");
    }
    let live = guard.status().live.expect("live");
    assert!(live.pushed >= expected.len() as u64, "{live:?}");
    assert_eq!((live.queued, live.push_errors), (0, 0), "{live:?}");
    let lag = live.lag_enforced.expect("lag answer → enforced measured");
    assert!(lag.p99_us < 50_000.0, "answer → enforced {lag:?}");
    learned_events(&guard, &world, &expected, &conns, test_start_ms);
    if mode != Mode::Xdp {
        // Held answers were released behind their flows, confirmed by barriers.
        let flows = live.lag_flows.expect("answer → flows confirmed measured");
        assert!(flows.samples > 0 && flows.p99_us < 200_000.0, "answer → flows {flows:?}");
        let of = guard.status().extra;
        assert!(of["learn_released"].as_u64().is_some_and(|n| n > 0), "held answers released: {of:?}");
        assert_eq!(of["learn_shed"].as_u64(), Some(0), "{of:?}");
        let dump = lab.ovs.as_ref().expect("ovs").dump_flows(OF_BRIDGE).expect("dump-flows");
        for (a, _) in &conns {
            assert!(dump.contains(&format!("={a},")), "the proactive flows of {a} are in OVS:\n{dump}");
        }
        // The large MX answer took the held path it had to: TCP, or fragments.
        let held = if udp_size > 1500 {
            "ip,nw_dst=198.19.1.53,nw_frag=later"
        } else {
            "tcp,nw_dst=198.19.1.53,tp_src=53"
        };
        let line =
            dump.lines().find(|l| l.contains(held)).unwrap_or_else(|| panic!("no {held} flow:\n{dump}"));
        assert!(!line.contains("n_packets=0,"), "the large answer came through {held}:\n{line}");
    }

    if extent == Extent::Learning {
        eprintln!("live learning lab {tag}: {:?}; connects {conns:?}; lag {lag:?}", started.elapsed());
        return;
    }

    // Forged and misdirected responses teach nothing.
    let unmatched_before = live.unmatched;
    forged_responses(&lab, &world);
    assert!(
        eventually(Duration::from_secs(5), || guard
            .status()
            .live
            .is_some_and(|l| l.unmatched > unmatched_before))
        .is_some(),
        "the forged responses to the resolver reached the learner and were unmatched: {:?}",
        guard.status().live
    );
    std::thread::sleep(Duration::from_millis(300));
    let zone_now = axfr(&lab.resolver.name, lab.rpz.as_ref().expect("rpz"));
    for bad in FORGED.iter().chain([ROGUE, BOT_SMTP].iter()).map(|s| addr(s)).chain(rogue.all_addresses()) {
        assert!(zone_now.lookup(bad).is_empty(), "{bad} must not be learned");
    }
    // The events name the bot.
    let events = guard.events();
    assert!(
        events.iter().any(|e| e.src == IpAddr::from(BOT) && e.dst == addr(BOT_SMTP) && e.dport == 25),
        "an event names the bot's SMTP attempt: {events:?}"
    );
    assert!(
        events.iter().any(|e| e.src == IpAddr::from(BOT) && e.dst == addr(ROGUE) && e.dport == 53),
        "an event names the bot's DNS to the rogue: {events:?}"
    );
    assert!(events.iter().all(|e| e.src != IpAddr::from(CLIENT)), "the client was never blocked: {events:?}");
    if extent == Extent::BadInput {
        if mode != Mode::Xdp {
            answer_flood_openflow(&lab, &guard, &conns);
        }
        eprintln!("live learning lab {tag}: {:?}; connects {conns:?}; lag {lag:?}", started.elapsed());
        return;
    }

    // A flood of DNS responses toward the resolver neither starves
    // enforcement nor grows the daemon.
    response_flood(&lab, &guard, &conns);

    // A second router following the RPZ by IXFR enforces the learned
    // entries without seeing any DNS.
    second_router(&mut lab, router2.as_ref().expect("XDP mode has a second router"), &conns, smtp.len());

    // BIND unreachable: new entries stay enforced and queued, survive a
    // restart (journal), and are pushed once BIND is back.
    bind_down_and_restart(&mut lab, &world, &guard, &args);

    eprintln!("live learning lab {tag}: {:?}; connects {conns:?}; lag {lag:?}", started.elapsed());
}

/// One learned event per entry the RPZ got, each naming a real answer of
/// the hierarchy: a mail host's address from its MX/A/AAAA question, a
/// name server's from a delegation or its address question, answered by
/// a server of the hierarchy, during this test, with the measured lag.
fn learned_events(
    guard: &Guard,
    world: &World,
    expected: &AllowSet,
    conns: &[(IpAddr, Duration)],
    since_ms: u64,
) {
    let learned = guard.learned();
    let servers = world.all_addresses();
    let now = guard_user::events::now_ms();
    for (p, c) in expected.iter() {
        let taught: Vec<&LearnedEvent> = learned.iter().filter(|e| e.addr == p.addr()).collect();
        for (class, service) in [(Classes::DNS, Service::Dns), (Classes::SMTP, Service::Smtp)] {
            assert_eq!(
                c.contains(class),
                taught.iter().any(|e| e.classes.contains(&service)),
                "{p} {c}: learned events {taught:?}"
            );
        }
    }
    for e in &learned {
        let zone = expected.lookup(e.addr);
        assert!(
            !e.classes.is_empty()
                && e.classes.iter().all(|s| zone.contains(if *s == Service::Dns {
                    Classes::DNS
                } else {
                    Classes::SMTP
                })),
            "a learned event names an entry the RPZ got, with its classes: {e:?}"
        );
        assert!(servers.contains(&e.server), "answered by a server of the hierarchy: {e:?}");
        assert!(e.qname.ends_with('.') && e.qname.len() > 1, "{e:?}");
        assert!(!e.qtype.is_empty() && e.qtype.chars().all(|c| c.is_ascii_alphanumeric()), "{e:?}");
        assert!((since_ms..=now).contains(&e.time_ms), "answer time within the test: {e:?}");
        assert!(e.lag_us < 50_000, "answer → enforced {e:?}");
    }
    for (a, _) in conns {
        assert!(
            learned.iter().any(|e| e.addr == *a && e.classes.contains(&Service::Smtp) && e.qtype != "NS"),
            "the mail host {a} the client connected to has its learned event: {learned:?}"
        );
    }
}

/// Resident memory of the daemon (kB), from /proc.
fn rss_kb(lab: &LiveLab, guard: &Guard) -> u64 {
    let pid = lab.procs[guard.proc_index].pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// 200 000 unsolicited responses (each claiming an MX host) toward the
/// resolver from outside, as fast as one sender goes; meanwhile a client
/// connects to a learned mail host (first SYN) and the bot stays blocked.
/// Afterwards: nothing learned, every copy is accounted for (learned from
/// or counted lost), and the daemon's memory did not grow with the flood.
fn response_flood(lab: &LiveLab, guard: &Guard, conns: &[(IpAddr, Duration)]) {
    use hickory_proto::{op::ResponseCode, rr::RecordType};
    use learn_common::{a, mx, response};
    const N: usize = 200_000;
    let before = guard.status();
    let rss_before = rss_kb(lab, guard);
    let trusted = IpAddr::from(Ipv4Addr::new(198, 18, 1, 1));
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let id = (i % 65_536) as u16;
            let msg = response(
                id,
                "flood.net.",
                RecordType::MX,
                ResponseCode::NoError,
                vec![mx("flood.net.", 10, "mx.flood.net.")],
                vec![],
                vec![a("mx.flood.net.", FORGED[2])],
            );
            learn_common::eth_udp(trusted, RESOLVER.into(), 53, 1024 + (i % 60_000) as u16, &msg)
        })
        .collect();
    let out = lab.outside.name.clone();
    let t = Instant::now();
    let sender = std::thread::spawn(move || guard_tests::netns::send_frames(&out, "b1", &frames));
    let target = conns.iter().map(|(a, _)| *a).find(IpAddr::is_ipv4).expect("a learned mail host");
    let mut during = Vec::new();
    while !sender.is_finished() {
        let (took, retrans) = connect_first_syn(&lab.client.name, target).expect("connect during the flood");
        assert_eq!(retrans, 0, "first SYN during the flood");
        during.push(took);
        assert!(
            guard_tests::tcp_connect_in(
                &lab.bot.name,
                SocketAddr::new(addr(BOT_SMTP), 25),
                Duration::from_millis(300)
            )
            .is_err(),
            "the bot stays blocked during the flood"
        );
    }
    sender.join().expect("flood thread").expect("send the flood");
    let sent_in = t.elapsed();
    assert!(!during.is_empty(), "connected at least once during the flood");
    let copied_before = before.counters.iter().find(|(n, _)| n == "dns_copied").map_or(0, |(_, v)| *v);
    let lost_before = before.counters.iter().find(|(n, _)| n == "dns_copy_lost").map_or(0, |(_, v)| *v);
    // Settled: the copy counters stopped moving and the learner has read
    // every copy.
    let counts = || {
        let st = guard.status();
        let c = |name: &str| st.counters.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
        let seen = st.live.as_ref().map_or(0, |l| l.packets) - before.live.as_ref().map_or(0, |l| l.packets);
        (c("dns_copied") - copied_before, c("dns_copy_lost") - lost_before, seen)
    };
    let mut last = (0, 0, 0);
    let settled = eventually(Duration::from_secs(30), || {
        let now = counts();
        let stable = now.0 == last.0 && now.1 == last.1 && now.2 >= now.0;
        last = now;
        std::thread::sleep(Duration::from_millis(200));
        stable
    });
    let (copied, lost, seen) = last;
    let st = guard.status();
    assert!(settled.is_some(), "the learner caught up after the flood: {last:?} {st:?}");
    // veth may drop a few frames before XDP sees them under a burst; every
    // frame XDP saw is either learned from or counted lost.
    assert!(copied + lost >= N as u64 * 95 / 100, "copied {copied} + lost {lost} of {N}");
    assert!(seen >= copied, "the learner read every copy: {seen} < {copied}");
    let live = st.live.clone().expect("live");
    assert_eq!(live.learned, before.live.as_ref().map_or(0, |l| l.learned), "the flood taught nothing");
    assert!(live.unmatched >= before.live.as_ref().map_or(0, |l| l.unmatched) + copied, "{live:?}");
    let rss_after = rss_kb(lab, guard);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "daemon memory grew from {rss_before} kB to {rss_after} kB with the flood"
    );
    eprintln!(
        "flood: {N} responses sent in {sent_in:?}, copy lost {lost}, connects during it {during:?}, RSS {rss_before} → {rss_after} kB"
    );
}

/// A second daemon on its own router (inside `i0` on the same LAN, its own
/// link to the outside), no live learning, following the RPZ (SOA poll,
/// then IXFR). Started before anything is learned.
fn start_router2(lab: &mut LiveLab, key: &str) -> Guard {
    let h = lab.router2.as_ref().expect("XDP lab").name.clone();
    let args = [
        "--iface",
        "i0",
        "--server",
        "198.19.1.54:53",
        "--tsig-key",
        key,
        "--exempt",
        "198.19.1.53/32",
        "--poll-interval",
        "1",
    ];
    let g2 = Guard::start(lab, "router2", &h, &args);
    assert_eq!(g2.status().entries.0, 0, "the RPZ starts empty");
    g2
}

/// The second router got the learned entries by IXFR without seeing any
/// DNS: the client's traffic to one learned mail host goes through it and
/// passes on the first SYN; the bot's goes through it and is dropped.
fn second_router(lab: &mut LiveLab, g2: &Guard, conns: &[(IpAddr, Duration)], smtp: usize) {
    let target = conns.iter().map(|(a, _)| *a).find(IpAddr::is_ipv4).expect("a learned IPv4 mail host");
    let got = eventually(Duration::from_secs(10), || g2.status().entries.2 >= smtp);
    assert!(got.is_some(), "router2 follows the zone: {:?}", g2.status());
    let st = g2.status();
    assert!(st.sync.incremental >= 1, "router2 got the entries incrementally (IXFR): {:?}", st.sync);
    assert!(st.live.is_none(), "router2 does not learn itself");
    assert_eq!(g2.counter("dns_copied"), 0, "router2 saw no DNS to learn from");
    let via = ROUTER2.to_string();
    for (ns, dst) in [(lab.client.name.as_str(), target), (lab.bot.name.as_str(), addr(BOT_SMTP))] {
        ns_cmd(ns, &["ip", "route", "add", &format!("{dst}/32"), "via", &via]);
    }
    let (took, retrans) = connect_first_syn(&lab.client.name, target)
        .unwrap_or_else(|e| panic!("via router2 to {target}: {e}"));
    assert_eq!(retrans, 0, "via router2: first SYN");
    assert!(took < Duration::from_millis(500));
    assert!(g2.counter("pass_allowed") >= 1, "router2 passed it from its allow maps: {:?}", g2.status());
    assert!(
        guard_tests::tcp_connect_in(
            &lab.bot.name,
            SocketAddr::new(addr(BOT_SMTP), 25),
            Duration::from_millis(700)
        )
        .is_err(),
        "router2 blocks the bot"
    );
    for (ns, dst) in [(lab.client.name.as_str(), target), (lab.bot.name.as_str(), addr(BOT_SMTP))] {
        ns_cmd(ns, &["ip", "route", "del", &format!("{dst}/32"), "via", &via]);
    }
    g2.stop(lab);
}

/// The router's live-learning state and counters, and the tails of every
/// process log of the lab (router, resolver, servers).
fn diagnosis(lab: &LiveLab, guard: &Guard) -> String {
    let mut out = match guard.try_status() {
        Some(s) => {
            format!("router status: live {:?}\nextra {}\ncounters {:?}\n", s.live, s.extra, s.counters)
        }
        None => "router status: no answer\n".to_owned(),
    };
    for p in &lab.procs {
        let text = p.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        out.push_str(&format!("--- {} (last 40 lines)\n{tail}\n", p.name));
    }
    out
}

/// Cuts the router off BIND (a blackhole route), learns a new zone (it is
/// enforced locally: first SYN passes; queued; push errors counted),
/// restarts the daemon with BIND still cut off... no: restarts it once
/// BIND is back, and checks the journalled entries reach BIND.
fn bind_down_and_restart(lab: &mut LiveLab, world: &World, guard: &Guard, args: &[String]) {
    let g = lab.router.name.clone();
    ns_cmd(&g, &["ip", "route", "add", "prohibit", "198.19.1.54/32"]);
    let late = world.late_zones();
    let conns = mail_client(lab, world, &late);
    assert!(!conns.is_empty());
    let queued = eventually(Duration::from_secs(5), || {
        guard.status().live.is_some_and(|l| l.queued > 0 && l.push_errors > 0)
    });
    assert!(queued.is_some(), "BIND cut off: entries queued, push errors counted: {:?}", guard.status().live);
    let named = lab.rpz.as_ref().expect("rpz");
    for (a, _) in &conns {
        assert!(axfr(&lab.resolver.name, named).lookup(*a).is_empty(), "{a} cannot be at BIND yet");
    }
    let log = guard.stop(lab);
    assert!(log.contains("pushing live-learned entries failed"), "{log}");
    let journal = std::fs::read_to_string(lab.path("live.journal")).expect("journal written");
    for (a, _) in &conns {
        assert!(journal.contains(&a.to_string()), "{a} in the journal:\n{journal}");
    }
    ns_cmd(&g, &["ip", "route", "del", "prohibit", "198.19.1.54/32"]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = Guard::start(lab, "router-again", &g, &argv);
    let named = lab.rpz.as_ref().expect("rpz");
    let took = eventually(Duration::from_secs(10), || {
        conns.iter().all(|(a, _)| axfr(&lab.resolver.name, named).lookup(*a) == Classes::SMTP)
    });
    assert!(took.is_some(), "journalled entries pushed after the restart: {:?}", again.status().live);
    // Enforced meanwhile and after: connect again through the restarted daemon.
    for (a, _) in &conns {
        let (_, retrans) = connect_first_syn(&lab.client.name, *a).unwrap_or_else(|e| panic!("{a}: {e}"));
        assert_eq!(retrans, 0);
    }
    again.stop(lab);
}
