//! Privileged: anti-spoofing of exempt sources in XDP mode (issue 13,
//! "inside threats"). The lab's bot writes the resolver's address into
//! its packets (IPv4 and IPv6, TCP SYNs and DNS queries, valid checksums)
//! and sends them to the router from its own MAC, while a legitimate client
//! and an ordinary bot keep running ([`guard_tests::load::Load`]).
//!
//! First the hole the issue describes, shown with the check switched off:
//! the exemption is by source address and XDP runs before `rp_filter`, so
//! the spoofed packets reach the internet side. Then the default: the route
//! and neighbour check drops every one of them, counts it, reports it with
//! the bot's MAC, and the real resolver (BIND in the `dns` namespace) keeps
//! its exemption.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use guard_tests::{Lab, LabAddrs, LabConfig, Role, load::Load, spoof};
use guard_user::{events::Reason, policy::MacAddr};

mod daemon_support;

use daemon_support::{eventually, rpz_add, start_xdp};

fn counter(d: &daemon_support::Daemon, name: &str) -> u64 {
    d.status().counters.iter().find(|(n, _)| n == name).map_or_else(|| panic!("no counter {name}"), |c| c.1)
}

/// Sends the spoofed frames in batches for `secs`; returns how many were sent.
fn spoof_for(lab: &Lab, sp: &[spoof::Spoofer], targets: &[SocketAddr], secs: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(secs);
    let (mut sent, mut seq) = (0u64, 0u16);
    while Instant::now() < until {
        for s in sp {
            let frames = s.frames(targets, seq);
            lab.send_frames(Role::Bot, "eth0", &frames).expect("send spoofed frames");
            sent += frames.len() as u64;
        }
        seq = seq.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(20));
    }
    sent
}

#[test]
fn spoofing_bot_cannot_borrow_the_resolvers_exemption() {
    let lab = Lab::up(LabConfig::for_test("spoof")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let a = lab.addrs().clone();
    let mx = SocketAddr::new(IpAddr::V4(LabAddrs::inet_v4(25)), 25);
    rpz_add(&lab, mx.ip(), "127.0.0.25");
    let bot_mac = lab.mac(Role::Bot, "eth0").expect("bot MAC");
    let router_mac = lab.mac(Role::Router, "in0").expect("router MAC");
    let sp = [IpAddr::V4(a.dns_v4), IpAddr::V6(a.dns_v6)].map(|src| spoof::Spoofer {
        src_mac: bot_mac,
        dst_mac: router_mac,
        src,
    });
    // Aimed at unregistered hosts nobody else talks to.
    let targets: Vec<SocketAddr> = (100..110u8)
        .flat_map(|h| {
            [
                SocketAddr::new(IpAddr::V4(LabAddrs::inet_v4_alt(h)), 25),
                SocketAddr::new(IpAddr::V4(LabAddrs::inet_v4_alt(h)), 53),
                SocketAddr::new(IpAddr::V6(LabAddrs::inet_v6(0x1000 + u16::from(h))), 25),
                SocketAddr::new(IpAddr::V6(LabAddrs::inet_v6(0x1000 + u16::from(h))), 53),
            ]
        })
        .collect();
    let inet = lab.ns(Role::Inet);
    let c4 = spoof::Counter::install(&inet, IpAddr::V4(a.dns_v4), "203.0.113.0/24").expect("nft counter");
    // The resolver must reach unregistered destinations (it is exempt): it
    // also gives the router its neighbour entries, as a busy resolver does.
    let resolver_reaches =
        |dst: IpAddr| lab.tcp_connect(Role::Dns, SocketAddr::new(dst, 25), Duration::from_secs(2)).is_ok();
    let rogue4 = IpAddr::V4(LabAddrs::inet_v4(150));
    let rogue6 = IpAddr::V6(LabAddrs::inet_v6(0x150));

    // 1. The hole: with the check off, spoofed packets get through.
    let mut d = start_xdp(&lab, &["--no-exempt-route-check", "--no-pin"]);
    assert!(d.status().anti_spoofing.starts_with("OFF"), "{}", d.status().anti_spoofing);
    assert!(resolver_reaches(rogue4), "the exempt resolver must pass (check off)");
    let sent_off = spoof_for(&lab, &sp[..1], &targets, 2);
    let through_off = eventually(Duration::from_secs(3), || c4.packets().unwrap_or(0) > 0)
        .map(|_| c4.packets().unwrap_or(0));
    let log = d.stop();
    assert!(
        through_off.is_some_and(|n| n * 10 >= sent_off * 9),
        "control: with the check off the spoofed packets must pass ({through_off:?} of {sent_off}); \
         if not, the test's frames are wrong, not the check. Log:\n{log}"
    );
    let through_off = through_off.unwrap_or(0);

    // 2. The default: route and neighbour check.
    let d = start_xdp(&lab, &["--no-pin"]);
    let st = d.status();
    assert_eq!(st.anti_spoofing, "route+neighbour check (IPv4, IPv6)", "status: {}", st.anti_spoofing);
    assert!(resolver_reaches(rogue4), "the real resolver keeps its exemption (IPv4)");
    assert!(resolver_reaches(rogue6), "the real resolver keeps its exemption (IPv6)");
    drop(c4);
    let c4 = spoof::Counter::install(&inet, IpAddr::V4(a.dns_v4), "203.0.113.0/24").expect("nft counter");
    let c6 = spoof::Counter::install(&inet, IpAddr::V6(a.dns_v6), "2001:db8:100::/64").expect("nft counter");
    let rss0 = d.rss_kib();
    let load = Load::start(
        &lab,
        vec![mx],
        (100..140).map(|h| SocketAddr::new(IpAddr::V4(LabAddrs::inet_v4(h)), 25)).collect(),
    )
    .expect("load");
    let dropped0 = counter(&d, "drop_spoofed_exempt");
    let sent = spoof_for(&lab, &sp, &targets, 8);
    let all_counted =
        eventually(Duration::from_secs(5), || counter(&d, "drop_spoofed_exempt") >= dropped0 + sent);
    let resolver_after = resolver_reaches(rogue4) && resolver_reaches(rogue6);
    let r = load.finish();
    let (through4, through6) = (c4.packets().expect("counter"), c6.packets().expect("counter"));
    let dropped = counter(&d, "drop_spoofed_exempt") - dropped0;
    let rss1 = d.rss_kib();
    let spoof_events: Vec<_> = d.events().into_iter().filter(|e| e.reason == Reason::SpoofedExempt).collect();
    eprintln!(
        "RELIABILITY | spoofing bot vs exempt resolver (XDP) | check off: {through_off} of {sent_off} spoofed packets through; \
         check on (default): {sent} spoofed sent, {} through, {dropped} dropped as spoofed_exempt, {} events naming the bot's MAC; \
         resolver still exempt: {resolver_after}; {r}; RSS {rss0} → {rss1} KiB",
        through4 + through6,
        spoof_events.len()
    );
    assert_eq!(
        (through4, through6),
        (0, 0),
        "spoofed packets got through with the check on (IPv4, IPv6); counters {:?}",
        d.status().counters
    );
    assert!(all_counted.is_some(), "spoofed packets not all counted: {dropped} of {sent}");
    assert!(resolver_after, "the real resolver lost its exemption after the spoofing");
    assert!(!spoof_events.is_empty(), "no spoofed_exempt event");
    for e in &spoof_events {
        assert_eq!(e.src_mac, Some(MacAddr(bot_mac)), "the event must name the spoofer's MAC: {e:?}");
        assert!(e.src == IpAddr::V4(a.dns_v4) || e.src == IpAddr::V6(a.dns_v6), "{e:?}");
    }
    assert!(spoof_events.iter().any(|e| e.src.is_ipv6()), "IPv6 spoofing reported too");
    // The event lines validate against the published schema.
    for line in d.event_lines() {
        if line["reason"] == "spoofed_exempt" {
            assert_eq!(line["src_mac"], MacAddr(bot_mac).to_string());
        }
    }
    assert_eq!(r.legit_failed, 0, "{r}");
    assert_eq!(r.bot_packets_through, 0, "{r}");
    assert!(r.legit_ok > 50 && r.bot_tries > 50, "load too small: {r}");
    assert!(rss1 < rss0 + 64 * 1024, "RSS grew from {rss0} to {rss1} KiB");
}

/// An exempt resolver the router has never heard from is verified from its
/// first packet. The resolver lives on a second address of the `dns` host,
/// which holds the router's MAC already (a static entry, as after a router
/// restart), so no ARP of its own ever tells the router about that address.
/// Without the daemon's managed neighbour entry the route check could not
/// tell (`exempt_unverified`), its packets were judged like any host's, and
/// its connection to an unregistered destination was dropped for as long as
/// it did not ARP: here, forever.
#[test]
fn an_exempt_host_the_router_never_heard_from_is_verified_from_its_first_packet() {
    use std::net::{Ipv4Addr, SocketAddrV4};

    let lab = Lab::up(LabConfig::for_test("asneigh")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let a = lab.addrs().clone();
    let (dns, router) = (lab.ns(Role::Dns), lab.ns(Role::Router));
    let second = Ipv4Addr::new(10, a.subnet, 0, 54);
    let ip = |ns: &str, args: &[&str]| {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        guard_tests::netns::exec_ok_root(&all).unwrap_or_else(|e| panic!("ip {all:?}: {e}"))
    };
    ip(&dns, &["addr", "add", &format!("{second}/24"), "dev", "eth0"]);
    let router_mac = MacAddr(lab.mac(Role::Router, "in0").expect("router MAC")).to_string();
    ip(
        &dns,
        &[
            "neigh",
            "replace",
            &a.router_in_v4.to_string(),
            "lladdr",
            &router_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    ip(&router, &["neigh", "flush", "to", &second.to_string(), "dev", "in0"]);
    assert!(ip(&router, &["neigh", "show", "to", &second.to_string(), "dev", "in0"]).trim().is_empty());

    let exempt = format!("{second}/32");
    let d = start_xdp(&lab, &["--no-pin", "--exempt", &exempt]);
    assert!(d.status().anti_spoofing.starts_with("route+neighbour check"), "{}", d.status().anti_spoofing);
    // An unregistered destination: only an honoured exemption lets it through.
    let target = SocketAddrV4::new(LabAddrs::inet_v4(150), 25);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = guard_tests::netns::run_in_netns(&dns, || {
            guard_tests::netns::tcp_connect_from(second, target)
                .and_then(|s| guard_tests::tcp_retransmissions(&s))
        });
        let _ = tx.send(r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())));
    });
    let connected = rx.recv_timeout(Duration::from_secs(5));
    let neigh = ip(&router, &["neigh", "show", "to", &second.to_string(), "dev", "in0"]);
    let unverified = counter(&d, "exempt_unverified");
    eprintln!(
        "RELIABILITY | exempt host the router never heard from | connect {connected:?}; router's entry: {}; exempt_unverified {unverified}",
        neigh.trim()
    );
    assert_eq!(
        connected,
        Ok(Ok(0)),
        "the exempt host's first SYN must pass (0 retransmissions) within 5 s; router's neighbour entry {neigh:?}, \
         exempt_unverified {unverified}, counters {:?}",
        d.status().counters
    );
    assert!(neigh.contains("managed"), "the daemon's entry is a managed one: {neigh:?}");
    assert_eq!(unverified, 0, "every packet of the exempt host was verified");
}
