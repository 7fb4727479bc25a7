//! Privileged: the AF_XDP miss path in the lab (real XDP on the router's
//! `in0` veth, real AF_XDP sockets, the real BIND RPZ; needs root, CI is root).
//!
//! The daemon runs with BIND's NOTIFY going nowhere and a one-hour SOA
//! poll, so a destination registered at BIND after the start is *not* in
//! the kernel maps: exactly the case of an entry added since the last
//! transfer. Cases:
//! * its first TCP SYN is held, decided by one RPZ question and released:
//!   the connect takes well under TCP's 1 s retransmission, the far side
//!   captures one SYN, and an nft counter on the router's forward hook
//!   (`iifname in0`) sees the released SYN (netfilter, routing and the
//!   input interface apply as to any arrival);
//! * a UDP DNS query to such a server is answered on the first try;
//! * a released frame is byte-identical to the same frame forwarded later
//!   by the kernel's cached verdict;
//! * an unregistered destination: the held packet is dropped, nothing
//!   reaches the far side, the event names the source;
//! * a flood of misses to distinct destinations (one scanning bot, then
//!   thousands of spoofed sources) stays within the per-source budget and
//!   the hold queue, leaks nothing, accounts for every frame, and a client's
//!   first connect meanwhile still succeeds;
//! * a decision slower than the hold timeout (RPZ questions to a resolver
//!   that never answers): the held packet is dropped and counted, the failed
//!   question denies (fail closed);
//! * a full hold queue drops (and still asks: the next packet passes in the
//!   kernel), never leaks; AF_XDP unavailable, or `ringbuf` configured:
//!   drop and ask (the first SYN is lost, the retransmission passes),
//!   unregistered stays blocked.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use guard_tests::{Capture, Lab, LabAddrs, LabConfig, Role};
use guard_user::{daemon::StatusReport, events::Reason};

mod daemon_support;

use daemon_support::{Daemon, eventually, rpz_add, start_xdp};

fn up(name: &str) -> Lab {
    Lab::up(LabConfig::for_test(name)).unwrap_or_else(|e| panic!("lab up failed: {e}"))
}

/// Flags that keep the daemon from hearing about RPZ changes: BIND
/// notifies port 10053, the daemon listens on another; the SOA poll is
/// an hour away.
fn deaf(lab: &Lab) -> [String; 4] {
    let a = lab.addrs();
    [
        "--notify-listen".into(),
        SocketAddr::new(IpAddr::V4(a.router_in_v4), lab.notify_port() + 1).to_string(),
        "--poll-interval".into(),
        "3600".into(),
    ]
}

fn args<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().map(String::as_str).chain(more.iter().copied()).collect()
}

/// Starts the daemon and waits until its miss transport is up (or has fallen back).
fn start(lab: &Lab, flags: &[&str]) -> Daemon {
    let d = start_xdp(lab, flags);
    eventually(Duration::from_secs(10), || !d.status().miss_transport.active.is_empty())
        .expect("the miss transport started");
    // Let the start-up transfer (and its catch-up from a snapshot) finish:
    // entries added at BIND from now on reach the daemon only as misses.
    eventually(Duration::from_secs(10), || d.status().sync.last_sync_ms.is_some()).expect("first transfer");
    std::thread::sleep(Duration::from_millis(500));
    d
}

fn counter(r: &StatusReport, name: &str) -> u64 {
    r.counters.iter().find(|(k, _)| k == name).map_or(0, |c| c.1)
}

/// An nft counter on the router's forward hook for SYNs from `in0` to `dst`.
fn nft_syn_counter(lab: &Lab, dst: Ipv4Addr) {
    let run = |a: &[&str]| lab.exec_ok(Role::Router, a).unwrap_or_else(|e| panic!("nft {a:?}: {e}"));
    run(&["nft", "add", "table", "inet", "afxlab"]);
    run(&["nft", "add", "chain", "inet", "afxlab", "fwdsyn", "{ type filter hook forward priority 0 ; }"]);
    let rule = format!("iifname \"in0\" ip daddr {dst} tcp flags & (syn|ack) == syn counter");
    run(&["nft", "add", "rule", "inet", "afxlab", "fwdsyn", &rule]);
}

fn nft_packets(lab: &Lab) -> u64 {
    let out =
        lab.exec_ok(Role::Router, &["nft", "list", "chain", "inet", "afxlab", "fwdsyn"]).expect("nft list");
    out.split("counter packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

/// A UDP DNS-port frame from `role`'s `eth0` to `dst` through the router.
fn udp_frame(lab: &Lab, role: Role, src: Ipv4Addr, dst: Ipv4Addr, marker: u8) -> Vec<u8> {
    let smac = lab.mac(role, "eth0").expect("mac");
    let dmac = lab.mac(Role::Router, lab.router_inside_iface()).expect("router mac");
    let payload: Vec<u8> = (0..64u8).map(|i| i ^ marker).collect();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000 + u16::from(marker), 53)
        .write(&mut out, &payload)
        .expect("build frame");
    out
}

#[test]
fn first_packets_are_held_decided_and_released() {
    let lab = up("afxh");
    let deaf = deaf(&lab);
    let d = start(&lab, &args(&deaf, &[]));
    let st = d.status();
    assert_eq!(st.miss_transport.active, "afxdp", "AF_XDP in force: {:?}", st.miss_transport);
    assert!(st.miss_transport.queues >= 1);
    let pc = IpAddr::V4(lab.addrs().pc_v4);

    // Registered at BIND after the start; the daemon does not know it.
    let mx = LabAddrs::inet_v4(25);
    rpz_add(&lab, IpAddr::V4(mx), "127.0.0.25");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.status().entries.0, 0, "the NOTIFY must not have reached the daemon");

    // TCP: the first SYN is held, released, and the connect is immediate.
    nft_syn_counter(&lab, mx);
    let cap = Capture::start(&lab, Role::Inet, "eth0", &format!("tcp dst port 25 and dst host {mx}"))
        .expect("capture");
    let t = Instant::now();
    lab.tcp_connect(Role::Pc, SocketAddr::from((mx, 25)), Duration::from_secs(3)).expect("connect on hold");
    let took = t.elapsed();
    let frames = cap.frames().expect("frames");
    let syns = frames.iter().filter(|f| f.get(47).is_some_and(|flags| flags & 0x12 == 0x02)).count();
    eprintln!("first connect to a destination not in the maps: {took:?}");
    if took >= Duration::from_millis(500) {
        eprintln!(
            "syns {syns} nft {} hold {:?}\nlog:\n{}",
            nft_packets(&lab),
            d.status().miss_transport,
            d.log()
        );
    }
    assert!(took < Duration::from_millis(500), "connect took {took:?}: the first SYN was not released");
    assert_eq!(syns, 1, "the far side saw exactly one SYN (no retransmission)");
    assert_eq!(nft_packets(&lab), 1, "the released SYN traversed the router's forward hook from in0");
    let st = d.status();
    let h = &st.miss_transport.hold;
    assert!(h.held >= 1 && h.released >= 1 && h.questions >= 1, "hold counters: {h:?}");
    assert!(counter(&st, "miss_held") >= 1);
    assert!(h.hold_quantile_us(0.5).is_some(), "hold-time histogram filled");
    assert!(st.miss.lookups >= 1, "the RPZ was asked");

    // IPv6 too (its TCP checksum is left to offload by the sender: released
    // with a request to complete it, as the kernel's own forwarding would).
    let mx6 = LabAddrs::inet_v6(0x25);
    rpz_add(&lab, IpAddr::V6(mx6), "127.0.0.25");
    let t = Instant::now();
    lab.tcp_connect(Role::Pc, SocketAddr::new(IpAddr::V6(mx6), 25), Duration::from_secs(3))
        .expect("IPv6 connect on hold");
    assert!(t.elapsed() < Duration::from_millis(500), "IPv6 first connect took {:?}", t.elapsed());

    // UDP DNS: a name server registered after the start answers the first query.
    let ns = LabAddrs::inet_v4(53);
    rpz_add(&lab, IpAddr::V4(ns), "127.0.0.1");
    let ans =
        lab.dig_query(Role::Pc, IpAddr::V4(ns), "www.example.net", "A").expect("answered on the first try");
    eprintln!("first DNS query to a server not in the maps: {:?}", ans.elapsed);
    assert!(ans.elapsed < Duration::from_millis(900), "query took {:?}", ans.elapsed);

    // Byte-identical: the released frame and the same frame forwarded by
    // the kernel's cached verdict arrive identical at the far side.
    let other = LabAddrs::inet_v4(54);
    rpz_add(&lab, IpAddr::V4(other), "127.0.0.1");
    let bot = lab.addrs().bot_v4;
    let frame = udp_frame(&lab, Role::Bot, bot, other, 7);
    let cap = Capture::start(&lab, Role::Inet, "eth0", &format!("udp dst port 53 and dst host {other}"))
        .expect("capture");
    let released_before = d.status().miss_transport.hold.released;
    lab.send_frames(Role::Bot, "eth0", std::slice::from_ref(&frame)).expect("send");
    eventually(Duration::from_secs(3), || d.status().miss_transport.hold.released > released_before)
        .expect("the held frame was released");
    lab.send_frames(Role::Bot, "eth0", std::slice::from_ref(&frame)).expect("send again");
    let got = cap.frames().expect("frames");
    assert_eq!(got.len(), 2, "both copies reached the far side");
    assert_eq!(got[0], got[1], "released frame differs from the kernel-forwarded one");
    // And the IP packet is the one sent, but for the TTL and checksum routing changes.
    let (sent_ip, got_ip) = (&frame[14..], &got[0][14..]);
    assert_eq!(sent_ip.len(), got_ip.len());
    for (i, (a, b)) in sent_ip.iter().zip(got_ip).enumerate() {
        if !(8..12).contains(&i) || i == 9 {
            assert_eq!(a, b, "IP packet byte {i} changed");
        }
    }
    assert_eq!(got_ip[8], sent_ip[8] - 1, "TTL decremented once: forwarded once");

    // Unregistered: held, dropped, nothing crosses, the event names the source.
    let rogue = LabAddrs::inet_v4(99);
    let cap = Capture::start(&lab, Role::Inet, "eth0", &format!("dst host {rogue}")).expect("capture");
    let res = lab.tcp_connect(Role::Pc, SocketAddr::from((rogue, 25)), Duration::from_millis(1500));
    assert!(res.is_err(), "connect to an unregistered destination must fail");
    assert!(cap.frames().expect("frames").is_empty(), "nothing reached the unregistered destination");
    let h = d.status().miss_transport.hold;
    assert!(h.dropped_after_hold >= 1, "held packet dropped on the verdict: {h:?}");
    let evs = d.events();
    assert!(
        evs.iter().any(|e| e.src == pc && e.dst == IpAddr::V4(rogue) && e.reason == Reason::NotRegistered),
        "event naming the source: {evs:?}"
    );
    assert!(evs.iter().all(|e| e.dst != IpAddr::V4(mx) && e.dst != IpAddr::V4(ns)), "no event for allowed");
    // The prometheus text carries the hold path.
    let m = daemon_support::metrics(&d);
    assert!(
        m.contains("rpz_guard_afxdp_active 1") && m.contains("rpz_guard_afxdp_hold_seconds_bucket"),
        "{m}"
    );
}

/// The bot's and the router's MAC: frames from the bot's `eth0` to the router.
fn bot_macs(lab: &Lab) -> ([u8; 6], [u8; 6]) {
    let smac = lab.mac(Role::Bot, "eth0").expect("mac");
    let dmac = lab.mac(Role::Router, lab.router_inside_iface()).expect("router mac");
    (smac, dmac)
}

/// A TCP SYN frame from `src` (any address: spoofed ones too) with MACs `macs`.
fn syn_frame((smac, dmac): ([u8; 6], [u8; 6]), src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(40000, dport, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .expect("build frame");
    out
}

fn accounted(h: &guard_user::afxdp::HoldSnapshot) -> u64 {
    h.released + h.dropped_after_hold + h.hold_timeouts + h.queue_full + h.malformed + h.release_errors
}

#[test]
fn flood_of_distinct_misses_is_bounded_and_leaks_nothing() {
    let lab = up("afxf");
    let deaf = deaf(&lab);
    let mut d = start(&lab, &args(&deaf, &["--hold-queue", "64"]));
    let a = lab.addrs().clone();
    let macs = bot_macs(&lab);
    let flood_dst = |i: u32| Ipv4Addr::new(100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
    // A bot scanning port 25 from its own address, then spoofed sources.
    let scan: Vec<Vec<u8>> = (0..3000).map(|i| syn_frame(macs, a.bot_v4, flood_dst(i), 25)).collect();
    let spoofed: Vec<Vec<u8>> = (0..2000u32)
        .map(|i| {
            syn_frame(
                macs,
                Ipv4Addr::new(10, a.subnet, 100 + (i / 250) as u8, (i % 250) as u8 + 1),
                flood_dst(10_000 + i),
                25,
            )
        })
        .collect();
    let mx = LabAddrs::inet_v4(25);
    rpz_add(&lab, IpAddr::V4(mx), "127.0.0.25");
    let cap = Capture::start(&lab, Role::Inet, "eth0", "dst net 100.64.0.0/10").expect("capture");
    let before = d.status();
    let scan_secs = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            let t = Instant::now();
            lab.send_frames(Role::Bot, "eth0", &scan).expect("scan");
            let scan_secs = t.elapsed().as_secs();
            lab.send_frames(Role::Bot, "eth0", &spoofed).expect("spoofed");
            scan_secs
        });
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        lab.tcp_connect(Role::Pc, SocketAddr::from((mx, 25)), Duration::from_secs(4))
            .expect("a client's first connect during the flood");
        eprintln!("client connect during the flood: {:?}", t.elapsed());
        flood.join().expect("flood thread")
    });
    // Every question answered, every frame accounted for, nothing held.
    eventually(Duration::from_secs(20), || {
        let h = d.status().miss_transport.hold;
        h.holding == 0 && accounted(&h) == h.received
    })
    .unwrap_or_else(|| panic!("hold path did not settle: {:?}", d.status().miss_transport.hold));
    let after = d.status();
    let h = &after.miss_transport.hold;
    eprintln!("flood: {h:?}");
    assert!(cap.frames().expect("frames").is_empty(), "no flood packet crossed the router");
    let limited = counter(&after, "events_rate_limited") - counter(&before, "events_rate_limited");
    // The budget is 200 new destinations per source and second: of the
    // bot's 3000, at most that reached the hold path (frames a veth queue
    // dropped during the burst never reached XDP at all). The spoofed
    // sources (one frame each) and the client make the rest.
    let budget = 200 * (scan_secs + 2);
    assert!(limited >= 1, "the scanning bot hit its budget");
    assert!(
        h.received <= 2000 + 1 + budget,
        "the bot's misses beyond its budget never reached the hold path: {h:?} (scan took {scan_secs} s)"
    );
    assert!(h.received >= 1, "{h:?}");
    assert!(h.queue_full >= 1, "spoofed sources filled the 64-frame queue: {h:?}");
    assert!(h.dropped_after_hold >= 1);
    assert_eq!(h.release_errors, 0);
    assert!(after.events_total > before.events_total, "the flood is evidence");
    d.stop();

    // A decision slower than the hold timeout: the RPZ questions go to a
    // resolver address nobody answers (three tries of 500 ms, then deny).
    let conf = lab.state_dir().join("afxf-silent-resolver.toml");
    let silent = format!("[rpz]\nmiss_query = \"paper\"\nresolver = \"10.{}.0.99:53\"\n", a.subnet);
    std::fs::write(&conf, silent).expect("write config");
    let conf = conf.to_str().expect("utf-8").to_owned();
    let d = start(&lab, &args(&deaf, &["--hold-timeout-ms", "100", "--config", &conf]));
    let slow = LabAddrs::inet_v4(28);
    rpz_add(&lab, IpAddr::V4(slow), "127.0.0.25");
    let res = lab.tcp_connect(Role::Pc, SocketAddr::from((slow, 25)), Duration::from_millis(700));
    assert!(res.is_err(), "nothing passes while no decision exists: {:?}", d.status().miss_transport);
    let st = d.status();
    assert!(
        st.miss_transport.hold.hold_timeouts >= 1,
        "held SYN dropped at the timeout: {:?}",
        st.miss_transport.hold
    );
    assert_eq!(st.miss_transport.hold.released, 0);
    eventually(Duration::from_secs(4), || d.status().miss.errors >= 1)
        .expect("the unanswered question failed closed");
    assert!(
        lab.tcp_connect(Role::Pc, SocketAddr::from((slow, 25)), Duration::from_millis(300)).is_err(),
        "a failed question denies"
    );
}

#[test]
fn full_queue_and_ringbuf_fall_back_to_drop_and_ask() {
    let lab = up("afxq");
    let deaf = deaf(&lab);
    let dsts: Vec<Ipv4Addr> = (101..=108).map(LabAddrs::inet_v4).collect();
    for ip in &dsts {
        rpz_add(&lab, IpAddr::V4(*ip), "127.0.0.1");
    }
    // One packet may wait at a time: a burst to eight new destinations overflows.
    let mut d = start(&lab, &args(&deaf, &["--hold-queue", "1"]));
    assert_eq!(d.status().entries.0, 8, "registered before the start: in the maps");
    // Fresh ones, not in the maps.
    let fresh: Vec<Ipv4Addr> = (111..=118).map(LabAddrs::inet_v4).collect();
    for ip in &fresh {
        rpz_add(&lab, IpAddr::V4(*ip), "127.0.0.1");
    }
    let bot = lab.addrs().bot_v4;
    let burst: Vec<Vec<u8>> = fresh.iter().map(|ip| udp_frame(&lab, Role::Bot, bot, *ip, 1)).collect();
    let cap = Capture::start(&lab, Role::Inet, "eth0", "udp dst port 53").expect("capture");
    lab.send_frames(Role::Bot, "eth0", &burst).expect("send");
    eventually(Duration::from_secs(3), || d.status().miss.lookups >= 8).expect("every destination asked");
    std::thread::sleep(Duration::from_millis(200));
    let h = d.status().miss_transport.hold;
    let arrived = cap.frames().expect("frames").len() as u64;
    eprintln!("queue of 1, burst of 8: {h:?}, arrived {arrived}");
    assert!(h.queue_full >= 1, "the queue overflowed: {h:?}");
    assert_eq!(h.released + h.queue_full, 8, "each frame released or dropped-and-asked: {h:?}");
    assert_eq!(arrived, h.released, "only released frames crossed (no leak)");
    // Drop and ask: every answer was cached, so the same burst now passes in the kernel.
    let before = counter(&d.status(), "pass_cached");
    let cap = Capture::start(&lab, Role::Inet, "eth0", "udp dst port 53").expect("capture");
    lab.send_frames(Role::Bot, "eth0", &burst).expect("send");
    assert_eq!(cap.frames().expect("frames").len(), 8, "cached verdicts pass the burst");
    assert_eq!(counter(&d.status(), "pass_cached") - before, 8);
    d.stop();

    // `ringbuf` configured: the first SYN is dropped, the retransmission passes.
    let d = start(&lab, &args(&deaf, &["--miss-transport", "ringbuf"]));
    let st = d.status();
    assert_eq!(
        (st.miss_transport.active.as_str(), st.miss_transport.fallback_reason.as_deref()),
        ("ringbuf", None)
    );
    let mx = LabAddrs::inet_v4(26);
    rpz_add(&lab, IpAddr::V4(mx), "127.0.0.25");
    let t = Instant::now();
    lab.tcp_connect(Role::Pc, SocketAddr::from((mx, 25)), Duration::from_secs(4))
        .expect("connect after retransmit");
    let took = t.elapsed();
    eprintln!("ringbuf: first connect took {took:?}");
    assert!(took >= Duration::from_millis(900), "without AF_XDP the first SYN is lost: {took:?}");
    let rogue = SocketAddr::from((LabAddrs::inet_v4(98), 25));
    assert!(lab.tcp_connect(Role::Pc, rogue, Duration::from_millis(1500)).is_err(), "fail closed");
    assert_eq!(d.status().miss_transport.hold.held, 0);
}

#[test]
fn afxdp_unavailable_falls_back_closed() {
    let lab = up("afxu");
    let deaf = deaf(&lab);
    // Take the release device's name: the hold path cannot start.
    let idx = lab
        .exec_ok(Role::Router, &["cat", &format!("/sys/class/net/{}/ifindex", lab.router_inside_iface())])
        .expect("ifindex");
    let name = format!("rgrel{}", idx.trim());
    lab.exec_ok(Role::Router, &["ip", "link", "add", &name, "type", "veth", "peer", "name", "afxuq"])
        .expect("occupy the name");
    let d = start(&lab, &args(&deaf, &[]));
    let st = d.status();
    let t = &st.miss_transport;
    assert_eq!((t.configured.as_str(), t.active.as_str()), ("afxdp", "ringbuf"), "{t:?}");
    assert!(
        t.fallback_reason.as_deref().is_some_and(|r| r.contains(&name)),
        "reason names the device: {t:?}"
    );
    let m = daemon_support::metrics(&d);
    assert!(m.contains("rpz_guard_afxdp_active 0"), "{m}");
    let mx = LabAddrs::inet_v4(27);
    rpz_add(&lab, IpAddr::V4(mx), "127.0.0.25");
    let t0 = Instant::now();
    lab.tcp_connect(Role::Pc, SocketAddr::from((mx, 25)), Duration::from_secs(4))
        .expect("connect after retransmit");
    assert!(t0.elapsed() >= Duration::from_millis(900), "drop and ask: {:?}", t0.elapsed());
    let rogue = SocketAddr::from((LabAddrs::inet_v4(97), 25));
    assert!(lab.tcp_connect(Role::Bot, rogue, Duration::from_millis(1500)).is_err(), "fail closed");
    assert!(d.events().iter().any(|e| e.dst == rogue.ip() && e.src == IpAddr::V4(lab.addrs().bot_v4)));
}
