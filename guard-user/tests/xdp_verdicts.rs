//! The XDP program's verdict table, run in the kernel with `BPF_PROG_TEST_RUN`
//! (no interface needed). Needs root (CAP_BPF); CI runs as root.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use guard_common::{MODE_COUNT, STATE_LOADED, STATE_NOT_LOADED, Settings, Stat};
use guard_tests::{
    awkward::{self, Endpoints, Outcome},
    netns::OwnedNetns,
};
use guard_user::{
    antispoof::ExemptOrigin,
    policy::{
        AllowSet, Classes, MacAddr, Prefix, Service,
        Transport::{Tcp, Udp},
    },
    xdp::{AttachMode, Enforcer, ProgramConfig, ProtectedPort},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Builds frames by hand so every byte is under the test's control.
mod frame {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;

    fn eth(ethertype: u16, vlans: &[(u16, u16)]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (tpid, vid) in vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    pub fn l4(proto: u8, dport: u16) -> Vec<u8> {
        let mut h = vec![0x9c, 0x40];
        h.extend_from_slice(&dport.to_be_bytes());
        if proto == TCP {
            h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            h.extend_from_slice(&[0, 8, 0, 0]);
        }
        h
    }

    /// IPv4 with `options` bytes (multiple of 4) and fragment field `frag`.
    pub fn v4_full(
        vlans: &[(u16, u16)],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        options: &[u8],
        frag: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = eth(0x0800, vlans);
        let ihl = 5 + options.len() / 4;
        let total = (ihl * 4 + payload.len()) as u16;
        f.push(0x40 | ihl as u8);
        f.push(0);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(options);
        f.extend_from_slice(payload);
        f
    }

    pub fn v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
        v4_full(&[], src, dst, proto, &[], 0, &l4(proto, dport))
    }

    /// IPv6 with extension headers `ext` given as (type, bytes incl. next/len).
    pub fn v6_full(
        vlans: &[(u16, u16)],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        chain: &[u8],
        ext: &[Vec<u8>],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = eth(0x86dd, vlans);
        let body: Vec<u8> = ext.iter().flatten().copied().chain(payload.iter().copied()).collect();
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(body.len() as u16).to_be_bytes());
        f.push(chain[0]);
        f.push(64);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&body);
        f
    }

    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, dport: u16) -> Vec<u8> {
        v6_full(&[], src, dst, &[proto], &[], &l4(proto, dport))
    }

    /// A destination-options header of 8 bytes with `next` as next header.
    pub fn dst_opts(next: u8) -> Vec<u8> {
        vec![next, 0, 1, 4, 0, 0, 0, 0]
    }

    pub fn vlan(tags: &[(u16, u16)], frame_v4: Vec<u8>) -> Vec<u8> {
        // Re-wrap an untagged frame with tags.
        let mut f = frame_v4[..12].to_vec();
        for (tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&frame_v4[12..]);
        f
    }
}

const PC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 53);
const NS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const MX: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 25);
const NET_MX: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
const UNKNOWN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
const INTERNAL: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn p(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

/// A program with the test's ports, exempt and internal prefixes and allow
/// set, in the loaded state (misses go to userspace).
fn enforcer(settings: Settings) -> Enforcer {
    let mut e = enforcer_in(Settings { state: STATE_LOADED, ..settings });
    e.set_loaded(true).expect("loaded");
    e
}

/// As [`enforcer`], keeping `settings.state` as given.
fn enforcer_in(settings: Settings) -> Enforcer {
    enforcer_with(settings, |_| {})
}

/// As [`enforcer_in`], with `adjust` applied to the program configuration.
fn enforcer_with(settings: Settings, adjust: impl FnOnce(&mut ProgramConfig)) -> Enforcer {
    let mut e =
        Enforcer::load(None).unwrap_or_else(|e| panic!("loading the XDP program (needs root): {e:?}"));
    let ports = [(Tcp, 25, Service::Smtp), (Tcp, 465, Service::Smtp), (Tcp, 587, Service::Smtp)]
        .into_iter()
        .chain([(Udp, 53, Service::Dns), (Tcp, 53, Service::Dns)])
        .map(|(proto, port, service)| ProtectedPort { proto, port, service })
        .collect();
    let mut pc = ProgramConfig {
        ports,
        exempt_sources: vec![p("10.1.0.53/32"), p("fd00:1::53/128")],
        internal_networks: vec![p("10.0.0.0/8"), p("fd00::/8")],
        settings,
        ..ProgramConfig::default()
    };
    adjust(&mut pc);
    e.configure(&pc).expect("configure");
    let set: AllowSet = [
        (Prefix::host(NS.into()), Classes::DNS),
        (Prefix::host(MX.into()), Classes::SMTP),
        (p("203.0.113.0/24"), Classes::SMTP),
        (p("2001:db8:100::53"), Classes::DNS),
        (p("2001:db8:100::25"), Classes::SMTP),
    ]
    .into_iter()
    .collect();
    e.apply_diff(&AllowSet::new().diff(&set)).expect("mirror");
    e
}

fn run(e: &mut Enforcer, frame: &[u8]) -> u32 {
    e.test_run(frame, 1).expect("test run").0
}

fn delta(e: &Enforcer, before: &[u64], stat: Stat) -> u64 {
    e.stats().expect("stats")[stat as usize] - before[stat as usize]
}

#[test]
fn verdict_table() {
    let mut e = enforcer(Settings::default());
    let v6pc = v6("fd00:1::10");
    let cases: Vec<(&str, Vec<u8>, u32, Stat)> = vec![
        ("dns to NS-class server", frame::v4(PC, NS, frame::UDP, 53), XDP_PASS, Stat::PassAllowed),
        (
            "dns to SMTP-class server (Table 1)",
            frame::v4(PC, MX, frame::UDP, 53),
            XDP_PASS,
            Stat::PassAllowed,
        ),
        ("dns over tcp to NS", frame::v4(PC, NS, frame::TCP, 53), XDP_PASS, Stat::PassAllowed),
        ("smtp 25 to MX", frame::v4(PC, MX, frame::TCP, 25), XDP_PASS, Stat::PassAllowed),
        ("smtp 465 to MX", frame::v4(PC, MX, frame::TCP, 465), XDP_PASS, Stat::PassAllowed),
        ("smtp to prefix entry", frame::v4(PC, NET_MX, frame::TCP, 587), XDP_PASS, Stat::PassAllowed),
        ("smtp to NS-only entry", frame::v4(PC, NS, frame::TCP, 25), XDP_DROP, Stat::DropWrongClass),
        ("smtp to unknown: miss", frame::v4(PC, UNKNOWN, frame::TCP, 25), XDP_DROP, Stat::Miss),
        (
            "exempt resolver to unknown",
            frame::v4(RESOLVER, UNKNOWN, frame::UDP, 53),
            XDP_PASS,
            Stat::ExemptSource,
        ),
        ("internal destination", frame::v4(PC, INTERNAL, frame::TCP, 25), XDP_PASS, Stat::InternalDest),
        ("http untouched", frame::v4(PC, UNKNOWN, frame::TCP, 80), XDP_PASS, Stat::Unprotected),
        ("udp 25 untouched", frame::v4(PC, UNKNOWN, frame::UDP, 25), XDP_PASS, Stat::Unprotected),
        (
            "icmp untouched",
            frame::v4_full(&[], PC, UNKNOWN, 1, &[], 0, &[8, 0, 0, 0]),
            XDP_PASS,
            Stat::Unprotected,
        ),
        (
            "ipv4 options then smtp to MX",
            frame::v4_full(&[], PC, MX, frame::TCP, &[1, 1, 1, 0], 0, &frame::l4(frame::TCP, 25)),
            XDP_PASS,
            Stat::PassAllowed,
        ),
        (
            "ipv4 options then smtp to NS",
            frame::v4_full(&[], PC, NS, frame::TCP, &[1, 1, 1, 0, 1, 1, 1, 0], 0, &frame::l4(frame::TCP, 25)),
            XDP_DROP,
            Stat::DropWrongClass,
        ),
        (
            "vlan smtp to MX",
            frame::vlan(&[(0x8100, 100)], frame::v4(PC, MX, frame::TCP, 25)),
            XDP_PASS,
            Stat::PassAllowed,
        ),
        (
            "three tags refused",
            frame::vlan(&[(0x88a8, 7), (0x8100, 100), (0x8100, 5)], frame::v4(PC, MX, frame::TCP, 25)),
            XDP_DROP,
            Stat::DropMalformed,
        ),
        (
            "qinq smtp to NS",
            frame::vlan(&[(0x88a8, 7), (0x8100, 100)], frame::v4(PC, NS, frame::TCP, 25)),
            XDP_DROP,
            Stat::DropWrongClass,
        ),
        (
            "ipv6 dns to NS",
            frame::v6(v6pc, v6("2001:db8:100::53"), frame::UDP, 53),
            XDP_PASS,
            Stat::PassAllowed,
        ),
        (
            "ipv6 smtp to MX",
            frame::v6(v6pc, v6("2001:db8:100::25"), frame::TCP, 587),
            XDP_PASS,
            Stat::PassAllowed,
        ),
        (
            "ipv6 smtp to NS",
            frame::v6(v6pc, v6("2001:db8:100::53"), frame::TCP, 25),
            XDP_DROP,
            Stat::DropWrongClass,
        ),
        (
            "ipv6 exempt",
            frame::v6(v6("fd00:1::53"), v6("2001:db8:100::99"), frame::UDP, 53),
            XDP_PASS,
            Stat::ExemptSource,
        ),
        (
            "ipv6 dst-opts then smtp to MX",
            frame::v6_full(
                &[],
                v6pc,
                v6("2001:db8:100::25"),
                &[60],
                &[frame::dst_opts(6)],
                &frame::l4(6, 25),
            ),
            XDP_PASS,
            Stat::PassAllowed,
        ),
        (
            "ipv6 dst-opts then smtp to NS",
            frame::v6_full(
                &[],
                v6pc,
                v6("2001:db8:100::53"),
                &[60],
                &[frame::dst_opts(6)],
                &frame::l4(6, 25),
            ),
            XDP_DROP,
            Stat::DropWrongClass,
        ),
        (
            "ipv6 over-long extension chain",
            frame::v6_full(
                &[],
                v6pc,
                v6("2001:db8:100::25"),
                &[60],
                &(0..8).map(|i| frame::dst_opts(if i == 7 { 6 } else { 60 })).collect::<Vec<_>>(),
                &frame::l4(6, 25),
            ),
            XDP_DROP,
            Stat::DropExtChain,
        ),
        (
            "ipv4 non-first fragment passes",
            frame::v4_full(&[], PC, UNKNOWN, frame::TCP, &[], 0x0010, &[0; 16]),
            XDP_PASS,
            Stat::Fragment,
        ),
        (
            "ipv4 first fragment checked",
            frame::v4_full(&[], PC, NS, frame::TCP, &[], 0x2000, &frame::l4(6, 25)),
            XDP_DROP,
            Stat::DropWrongClass,
        ),
        (
            "ipv4 first fragment too short for ports",
            frame::v4_full(&[], PC, MX, frame::TCP, &[], 0x2000, &[0x9c]),
            XDP_DROP,
            Stat::DropMalformed,
        ),
        (
            "ipv6 non-first fragment passes",
            frame::v6_full(
                &[],
                v6pc,
                v6("2001:db8:100::99"),
                &[44],
                &[vec![6, 0, 0, 0x10, 0, 0, 0, 1]],
                &[0; 16],
            ),
            XDP_PASS,
            Stat::Fragment,
        ),
        (
            "truncated ipv4 header",
            frame::v4(PC, MX, frame::TCP, 25)[..24].to_vec(),
            XDP_DROP,
            Stat::DropMalformed,
        ),
        (
            "truncated tcp header",
            frame::v4(PC, MX, frame::TCP, 25)[..35].to_vec(),
            XDP_DROP,
            Stat::DropMalformed,
        ),
        (
            "ipv4 ihl below 5",
            {
                let mut f = frame::v4(PC, MX, frame::TCP, 25);
                f[14] = 0x44;
                f
            },
            XDP_DROP,
            Stat::DropMalformed,
        ),
        (
            "vlan tag cut short",
            {
                let mut f = frame::v4(PC, MX, frame::TCP, 25)[..14].to_vec();
                f[12] = 0x81;
                f[13] = 0x00;
                f
            },
            XDP_DROP,
            Stat::DropMalformed,
        ),
        (
            "arp",
            {
                let mut f = frame::v4(PC, MX, frame::TCP, 25);
                f[12] = 0x08;
                f[13] = 0x06;
                f
            },
            XDP_PASS,
            Stat::NonIp,
        ),
    ];
    for (name, f, want, stat) in cases {
        let before = e.stats().expect("stats");
        let got = run(&mut e, &f);
        assert_eq!(got, want, "{name}: action");
        assert_eq!(delta(&e, &before, stat), 1, "{name}: counter {}", stat.name());
        assert_eq!(delta(&e, &before, Stat::Packets), 1, "{name}: packets");
    }
}

#[test]
fn miss_then_cached_verdicts() {
    let mut e = enforcer(Settings::default());
    let dst: IpAddr = UNKNOWN.into();
    let f = frame::v4(PC, UNKNOWN, frame::TCP, 25);
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &f), XDP_DROP);
    // A second packet while pending: dropped, no second miss event.
    assert_eq!(run(&mut e, &f), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::Miss), 2);
    assert_eq!(delta(&e, &before, Stat::EventsSent), 1, "one miss event per pending destination");

    e.cache_verdict(dst, Classes::SMTP, Duration::from_secs(60)).expect("cache");
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &f), XDP_PASS);
    assert_eq!(delta(&e, &before, Stat::PassCached), 1);

    e.cache_verdict(dst, Classes::NONE, Duration::from_secs(60)).expect("cache");
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &f), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::DropNotRegistered), 1);
    assert_eq!(delta(&e, &before, Stat::EventsSent), 1);

    // Expired entries are misses again.
    e.cache_verdict(dst, Classes::SMTP, Duration::from_nanos(1)).expect("cache");
    // The program's clock is the coarse monotonic clock (tick resolution).
    std::thread::sleep(Duration::from_millis(30));
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &f), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::Miss), 1);

    // Adding the destination to the allow set overrides the cache at once.
    let set: AllowSet = [(Prefix::host(dst), Classes::SMTP)].into_iter().collect();
    e.apply_diff(&AllowSet::new().diff(&set)).expect("mirror");
    assert_eq!(run(&mut e, &f), XDP_PASS);
    // And removing it revokes it (the cache was cleared for that host).
    e.apply_diff(&set.diff(&AllowSet::new())).expect("mirror");
    assert_eq!(run(&mut e, &f), XDP_DROP);
}

#[test]
fn events_are_rate_limited_per_source() {
    let mut e = enforcer(Settings { events_per_source_per_sec: 3, ..Settings::default() });
    let f = frame::v4(PC, NS, frame::TCP, 25);
    let before = e.stats().expect("stats");
    for _ in 0..10 {
        assert_eq!(run(&mut e, &f), XDP_DROP);
    }
    assert_eq!(delta(&e, &before, Stat::DropWrongClass), 10);
    assert_eq!(delta(&e, &before, Stat::EventsSent), 3);
    assert_eq!(delta(&e, &before, Stat::EventsRateLimited), 7);
    // Its drops do not starve its RPZ questions: a miss has its own budget.
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &frame::v4(PC, UNKNOWN, frame::TCP, 25)), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::Miss), 1);
    assert_eq!(delta(&e, &before, Stat::EventsSent), 1, "miss event sent despite the spent drop budget");
    // Another source has its own budget.
    let other = frame::v4(Ipv4Addr::new(10, 1, 0, 11), NS, frame::TCP, 25);
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &other), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::EventsSent), 1);
}

/// What the drop-event budget suppressed is reported with the source's next
/// event: also the drops a CPU counted in its over-budget slot (without the
/// `EVENT_RATE` lookup), and when another source took that slot in between.
#[test]
fn suppressed_drops_are_reported_with_the_next_event() {
    // The slot is per CPU: keep every test run on one.
    on_one_cpu();
    let mut e = enforcer(Settings { events_per_source_per_sec: 3, ..Settings::default() });
    let mut ring = e.take_events().expect("events");
    let other = Ipv4Addr::new(10, 1, 0, 11);
    let (pc, oth) = (frame::v4(PC, NS, frame::TCP, 25), frame::v4(other, NS, frame::TCP, 25));
    let before = e.stats().expect("stats");
    let mut send = |f: &[u8], n: usize| (0..n).for_each(|_| assert_eq!(run(&mut e, f), XDP_DROP));
    // PC: 3 events, 7 suppressed (from the 5th drop on, counted in the slot);
    // the other source: 3 and 2 (it takes the slot); PC again: 4 more.
    send(&pc, 10);
    send(&oth, 5);
    send(&pc, 4);
    let sup = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            // SAFETY: the program writes whole Events; read unaligned.
            let ev: guard_common::Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            out.push((Prefix::host(IpAddr::from(ev.src)).addr(), ev.suppressed));
        }
        out
    };
    let (p, o) = (IpAddr::V4(PC), IpAddr::V4(other));
    assert_eq!(sup(&mut ring), [(p, 0), (p, 0), (p, 0), (o, 0), (o, 0), (o, 0)]);
    // The next window: each source's first event carries its count.
    std::thread::sleep(Duration::from_millis(1100));
    send(&pc, 1);
    send(&oth, 1);
    assert_eq!(sup(&mut ring), [(p, 11), (o, 2)]);
    assert_eq!(delta(&e, &before, Stat::EventsRateLimited), 13);
    assert_eq!(delta(&e, &before, Stat::EventsSent), 8);
}

/// Pins the calling thread to the CPU it is on.
fn on_one_cpu() {
    // SAFETY: plain syscalls on this thread with a zeroed, then filled, cpu set.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu failed");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to cpu {cpu}"
        );
    }
}

/// `miss_transport = afxdp` with no socket on the queue (daemon gone, queue
/// not served): the miss takes the ring-buffer path, dropped and asked,
/// counted as a fallback; the per-source miss budget holds as before.
/// (Redirects to a real socket are covered in the lab, `afxdp_lab`.)
#[test]
fn afxdp_transport_without_a_socket_falls_back_closed() {
    let s = Settings {
        miss_transport: guard_common::MISS_TRANSPORT_AFXDP,
        misses_per_source_per_sec: 2,
        ..Settings::default()
    };
    let mut e = enforcer(s);
    let before = e.stats().expect("stats");
    let f = frame::v4(PC, UNKNOWN, frame::TCP, 25);
    assert_eq!(run(&mut e, &f), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::MissFallback), 1);
    assert_eq!(delta(&e, &before, Stat::MissHeld), 0);
    assert_eq!(delta(&e, &before, Stat::EventsSent), 1, "the miss is asked about on the ring buffer");
    // Pending: later packets are dropped without a new question.
    assert_eq!(run(&mut e, &f), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::EventsSent), 1);
    // The per-source question budget (2/s) still applies to new destinations.
    for host in 1..=3 {
        assert_eq!(run(&mut e, &frame::v4(PC, Ipv4Addr::new(192, 0, 2, host), frame::TCP, 25)), XDP_DROP);
    }
    assert_eq!(delta(&e, &before, Stat::EventsSent), 2);
    assert_eq!(delta(&e, &before, Stat::EventsRateLimited), 2);
    assert_eq!(delta(&e, &before, Stat::MissFallback), 2);
    // Count-only mode never holds: the transport setting is ignored.
    let mut e = enforcer(Settings { mode: MODE_COUNT, ..s });
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &f), XDP_PASS);
    assert_eq!(delta(&e, &before, Stat::MissFallback), 0);
}

#[test]
fn count_mode_never_drops() {
    let mut e = enforcer(Settings { mode: MODE_COUNT, ..Settings::default() });
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &frame::v4(PC, NS, frame::TCP, 25)), XDP_PASS);
    assert_eq!(run(&mut e, &frame::v4(PC, MX, frame::TCP, 25)[..30]), XDP_PASS);
    assert_eq!(delta(&e, &before, Stat::WouldDrop), 2);
    assert_eq!(delta(&e, &before, Stat::DropWrongClass), 1);
}

/// Issue 11: a deny (RPZ `CNAME .`) beats every allow covering the
/// destination: a host entry, a wider prefix, a cached positive verdict.
#[test]
fn denies_beat_allows_host_prefix_and_cache() {
    let mut e = enforcer(Settings::default());
    let applied = e.read_allow().expect("read");
    let mut raw = applied.clone();
    raw.deny(Prefix::host(MX.into()));
    raw.deny(p("203.0.113.128/25"));
    raw.deny(p("2001:db8:100::25"));
    raw.deny(p("198.51.100.96/28"));
    // A positive verdict cached before the deny arrived.
    e.cache_verdict(UNKNOWN.into(), Classes::SMTP, Duration::from_secs(60)).expect("cache");
    let enforced = raw.enforced().into_owned();
    e.apply_diff(&applied.diff(&enforced)).expect("mirror denies");
    let v6pc = v6("fd00:1::10");
    let denied: Vec<(&str, Vec<u8>)> = vec![
        ("host allow, host deny", frame::v4(PC, MX, frame::TCP, 25)),
        ("host allow, host deny, dns", frame::v4(PC, MX, frame::UDP, 53)),
        ("prefix allow, longer deny", frame::v4(PC, Ipv4Addr::new(203, 0, 113, 200), frame::TCP, 25)),
        ("cached allow, deny prefix", frame::v4(PC, UNKNOWN, frame::TCP, 25)),
        ("v6 host deny", frame::v6(v6pc, v6("2001:db8:100::25"), frame::TCP, 25)),
    ];
    for (what, f) in &denied {
        let before = e.stats().expect("stats");
        assert_eq!(run(&mut e, f), XDP_DROP, "{what}");
        assert_eq!(delta(&e, &before, Stat::DropNotRegistered), 1, "{what}");
        assert_eq!(delta(&e, &before, Stat::EventsSent), 1, "{what}: a drop event (reason denied)");
    }
    // Outside the denies nothing changed.
    assert_eq!(run(&mut e, &frame::v4(PC, NET_MX, frame::TCP, 25)), XDP_PASS, "rest of the /24");
    assert_eq!(run(&mut e, &frame::v4(PC, NS, frame::UDP, 53)), XDP_PASS);
    // Exempt sources stay exempt (the same order as OpenFlow's priorities).
    assert_eq!(run(&mut e, &frame::v4(RESOLVER, MX, frame::TCP, 25)), XDP_PASS);
    // The maps read back give the denies again (adopting pinned maps).
    let back = e.read_allow().expect("read").from_enforced();
    assert_eq!(back.deny_count(), 4);
    assert!(back.is_denied(MX.into()));
    // Lifting the denies restores the allows.
    e.apply_diff(&enforced.diff(&applied)).expect("mirror without denies");
    assert_eq!(run(&mut e, &denied[0].1), XDP_PASS);
    assert_eq!(run(&mut e, &denied[2].1), XDP_PASS);
}

/// Issue 11: allowed packets note when their host entry was last used, in
/// the entry itself; prefix entries (manual, never aged), drops and misses
/// do not. Userspace rewriting an entry with the same classes keeps it.
#[test]
fn allowed_traffic_notes_last_hit() {
    let mut e = enforcer(Settings::default());
    assert!(e.last_hits().expect("read").is_empty());
    assert_eq!(run(&mut e, &frame::v4(PC, MX, frame::TCP, 25)), XDP_PASS);
    assert_eq!(run(&mut e, &frame::v4(PC, NET_MX, frame::TCP, 25)), XDP_PASS);
    assert_eq!(run(&mut e, &frame::v6(v6("fd00:1::10"), v6("2001:db8:100::25"), frame::TCP, 25)), XDP_PASS);
    assert_eq!(run(&mut e, &frame::v4(PC, UNKNOWN, frame::TCP, 25)), XDP_DROP);
    assert_eq!(run(&mut e, &frame::v4(PC, NS, frame::TCP, 25)), XDP_DROP, "wrong class");
    let hits = e.last_hits().expect("read");
    let mut ips: Vec<IpAddr> = hits.iter().map(|(ip, _)| *ip).collect();
    ips.sort();
    let mut want: Vec<IpAddr> = vec![MX.into(), v6("2001:db8:100::25").into()];
    want.sort();
    assert_eq!(ips, want);
    assert!(hits.iter().all(|(_, ago)| *ago <= 2), "{hits:?}");
    // One entry's, by lookup (`explain`).
    assert!(e.last_hit(MX.into()).expect("lookup").is_some_and(|ago| ago <= 2));
    assert_eq!(e.last_hit(NS.into()).expect("lookup"), None, "refused: no hit");
    assert_eq!(e.last_hit(UNKNOWN.into()).expect("lookup"), None, "no entry");
    // The allow set still reads back without the hit times in it.
    assert_eq!(e.allow_of(MX.into()).expect("lookup").0, Classes::SMTP);
    let mut w = e.allow_writer().expect("writer");
    w.set(MX.into(), Classes::SMTP).expect("same classes");
    assert!(e.last_hits().expect("read").iter().any(|(ip, _)| *ip == IpAddr::from(MX)), "hit kept");
}

/// The allowed path takes its hit tick from the daemon's clock map (no
/// clock helper call per packet), and from the kernel's clock while the map
/// holds zero (a daemon stopped, its pinned program still enforcing).
#[test]
fn last_hit_ticks_come_from_the_clock_map() {
    let mut e = enforcer(Settings::default());
    let now = guard_user::xdp::coarse_tick();
    // 100 ticks of 2^30 ns: about 107 s.
    assert!(now > 200, "the monotonic clock reads only {now} ticks");
    e.set_hit_clock(now - 100).expect("clock");
    assert_eq!(run(&mut e, &frame::v4(PC, MX, frame::TCP, 25)), XDP_PASS);
    let ago = e.last_hit(MX.into()).expect("lookup").expect("a hit");
    assert!((100..=110).contains(&ago), "noted with the clock map's tick: {ago} s ago");
    e.stop_clock().expect("clock");
    assert_eq!(run(&mut e, &frame::v4(PC, MX, frame::TCP, 25)), XDP_PASS);
    let ago = e.last_hit(MX.into()).expect("lookup").expect("a hit");
    assert!(ago <= 2, "noted with the kernel's clock: {ago} s ago");
    e.tick_clock().expect("clock");
    assert_eq!(run(&mut e, &frame::v6(v6("fd00:1::10"), v6("2001:db8:100::25"), frame::TCP, 25)), XDP_PASS);
    assert!(e.last_hit(v6("2001:db8:100::25").into()).expect("lookup").is_some_and(|ago| ago <= 2));
}

/// Every map lookup of the program is inlined by the verifier (a direct
/// call, or array arithmetic), none goes through the generic helper's
/// indirect call. LLVM's tail merging used to join the IPv4 and IPv6
/// lookups into one call site with two possible maps, which the verifier
/// cannot inline: the allowed path paid about 20 ns for it (guard-ebpf's
/// build script turns tail merging off).
#[test]
fn every_map_lookup_is_inlined() {
    let _e = enforcer(Settings::default());
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool prog json");
    let id = progs
        .as_array()
        .expect("a list")
        .iter()
        .find(|p| p["name"] == "rpz_guard")
        .and_then(|p| p["id"].as_u64())
        .expect("the rpz_guard program is loaded");
    let out = std::process::Command::new("bpftool")
        .args(["prog", "dump", "xlated", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    let xlated = String::from_utf8_lossy(&out.stdout);
    assert!(xlated.contains("__htab_map_lookup_elem"), "not the program expected:\n{xlated}");
    let generic: Vec<&str> = xlated.lines().filter(|l| l.contains("call bpf_map_lookup_elem")).collect();
    assert!(generic.is_empty(), "map lookups the verifier could not inline: {generic:?}");
}

/// The verifier walks every path of the program and refuses it past 1M
/// instructions processed; a branch in an inlined drop path can multiply
/// the states (a draft of the over-budget slot went from about 33k past
/// the limit). The bound says early when a change grows them.
#[test]
fn the_verifier_has_room_to_spare() {
    let _e = enforcer(Settings::default());
    let counts: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("rpz_guard"))
        .filter_map(|p| p.verified_instruction_count())
        .collect();
    assert!(!counts.is_empty(), "no rpz_guard program with a verified-instruction count loaded");
    for n in counts {
        assert!(n < 250_000, "the verifier processed {n} instructions of rpz_guard (limit 1 000 000)");
        eprintln!("rpz_guard: {n} instructions verified");
    }
}

#[test]
fn allow_maps_read_back_what_was_mirrored() {
    let e = enforcer(Settings::default());
    let back = e.read_allow().expect("read");
    assert_eq!(back.len(), 5);
    assert_eq!(back.lookup("203.0.113.9".parse().expect("ip")), Classes::SMTP);
    assert_eq!(back.get(&p("2001:db8:100::53")), Classes::DNS);
}

/// Random bytes never crash the program and never pass a protected packet
/// that a parser could not read: every outcome is one of the known actions.
#[test]
fn garbage_frames_get_a_verdict() {
    let mut e = enforcer(Settings::default());
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let base = frame::v4(PC, UNKNOWN, frame::TCP, 25);
    for i in 0..3000 {
        let mut f = base.clone();
        // Mutate a few bytes, and sometimes truncate.
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % f.len();
            f[at] = (seed >> 32) as u8;
        }
        if i % 3 == 0 {
            // The kernel runs XDP only on frames of at least an Ethernet header.
            f.truncate(14 + (seed as usize >> 8) % (f.len() - 13));
        }
        let act = run(&mut e, &f);
        assert!(act == XDP_PASS || act == XDP_DROP, "frame {i}: action {act}");
    }
    let s = e.stats().expect("stats");
    let decided: u64 = Stat::OUTCOMES.iter().map(|st| s[*st as usize]).sum();
    assert_eq!(decided, s[Stat::Packets as usize], "every frame lands in exactly one outcome counter");
}

/// The `Stat` counter an outcome of the shared table lands in (a first
/// packet to an unregistered host is a miss: pending, dropped).
fn table_stat(o: Outcome) -> Stat {
    match o {
        Outcome::NonIp => Stat::NonIp,
        Outcome::Unprotected => Stat::Unprotected,
        Outcome::Fragment => Stat::Fragment,
        Outcome::Allowed => Stat::PassAllowed,
        Outcome::Denied => Stat::Miss,
        Outcome::Malformed => Stat::DropMalformed,
        Outcome::ExtChain => Stat::DropExtChain,
    }
}

fn table_action(o: Outcome) -> u32 {
    if o.passes() { XDP_PASS } else { XDP_DROP }
}

/// The README's awkward-packet policy (`guard_tests::awkward`, shared with
/// the parser and the OpenFlow tests) in the kernel, by `BPF_PROG_TEST_RUN`.
#[test]
fn awkward_packet_table() {
    let mut e = enforcer(Settings::default());
    let mut wrong = Vec::new();
    for c in awkward::cases(&Endpoints::example()) {
        let before = e.stats().expect("stats");
        let got = run(&mut e, &c.frame);
        let stat = table_stat(c.outcome);
        if got != table_action(c.outcome) || delta(&e, &before, stat) != 1 {
            wrong.push(format!("{}: action {got}, want {:?} (counter {})", c.name, c.outcome, stat.name()));
        }
    }
    assert!(wrong.is_empty(), "XDP program disagrees with the table:\n{}", wrong.join("\n"));
}

/// A namespace of its own with a veth pair `awa` ⇄ `awb` (no addresses,
/// IPv6 off, so the only frames are the test's); deleted on drop.
fn veth_ns(tag: &str) -> OwnedNetns {
    let ns = OwnedNetns::create(&format!("rgaw{tag}{}", std::process::id())).expect("namespace");
    let ip = |args: &[&str]| {
        let mut a = vec!["-n", ns.name()];
        a.extend_from_slice(args);
        guard_tests::netns::exec_ok_root(&a).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    };
    ip(&["link", "add", "awa", "type", "veth", "peer", "name", "awb"]);
    for i in ["awa", "awb"] {
        guard_tests::netns::exec(ns.name(), &["sysctl", "-qw", &format!("net.ipv6.conf.{i}.disable_ipv6=1")])
            .expect("sysctl");
        ip(&["link", "set", i, "up"]);
    }
    ns
}

/// The same table through a real veth: the program attached to `awb` in
/// native and in generic mode (`auto` picks generic on a veth), every frame
/// sent from `awa` through an `AF_PACKET` socket, the outcome read from the
/// program's counters (tagged frames included: they arrive with their tags
/// in the data).
#[test]
fn awkward_packet_table_on_a_veth() {
    let mut wrong = Vec::new();
    for mode in [AttachMode::Native, AttachMode::Generic] {
        let net = veth_ns("t");
        let mut e = enforcer(Settings::default());
        let ns = net.name().to_owned();
        let used = guard_tests::netns::run_in_netns(&ns, || e.attach("awb", mode))
            .expect("enter namespace")
            .unwrap_or_else(|err| panic!("attach in {mode} mode to the veth: {err}"));
        assert_eq!(used, mode);
        for c in awkward::cases(&Endpoints::example()) {
            let before = e.stats().expect("stats");
            guard_tests::netns::send_frames(&ns, "awa", std::slice::from_ref(&c.frame)).expect("send");
            let t0 = std::time::Instant::now();
            while delta(&e, &before, Stat::Packets) == 0 && t0.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(2));
            }
            let stat = table_stat(c.outcome);
            let (packets, hit) = (delta(&e, &before, Stat::Packets), delta(&e, &before, stat));
            if packets != 1 || hit != 1 {
                wrong.push(format!(
                    "{mode} {}: {packets} packets seen, counter {} +{hit}",
                    c.name,
                    stat.name()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "XDP on the veth disagrees with the table:\n{}", wrong.join("\n"));
}

/// `auto` attaches in generic mode on a veth (cheaper there, measured in
/// the xdp-e2e bench) and keeps native first elsewhere.
#[test]
fn auto_mode_is_generic_on_a_veth() {
    let net = veth_ns("a");
    let ns = net.name().to_owned();
    let (veth, lo) = guard_tests::netns::run_in_netns(&ns, || {
        (guard_user::xdp::prefers_generic("awb"), guard_user::xdp::prefers_generic("lo"))
    })
    .expect("enter namespace");
    assert!(veth, "awb is a veth");
    assert!(!lo, "lo is not");
    assert!(!guard_user::xdp::prefers_generic("no-such-if0"), "an unknown interface keeps native first");
    let mut e = enforcer(Settings::default());
    let used = guard_tests::netns::run_in_netns(&ns, || e.attach("awb", AttachMode::Auto))
        .expect("enter namespace")
        .expect("attach");
    assert_eq!(used, AttachMode::Generic);
}

/// Before the first allow set is in force (the zero state of the settings,
/// which is what a program attached before its first load runs in),
/// protected traffic that no allow entry passes is dropped and reported as
/// `not_loaded`, never handed to the miss path; exempt sources, internal
/// destinations, unprotected ports and entries already mirrored pass.
#[test]
fn not_loaded_state_denies_protected_traffic() {
    let mut e = enforcer_in(Settings::default());
    assert_eq!(e.state().expect("state"), STATE_NOT_LOADED, "zero settings mean not loaded");
    let before = e.stats().expect("stats");
    let unknown = frame::v4(PC, UNKNOWN, frame::TCP, 25);
    assert_eq!(run(&mut e, &unknown), XDP_DROP);
    assert_eq!(run(&mut e, &frame::v4(PC, UNKNOWN, frame::UDP, 53)), XDP_DROP);
    assert_eq!(run(&mut e, &frame::v6(v6("fd00:1::10"), v6("2001:db8:100::99"), frame::TCP, 587)), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::DropNotLoaded), 3);
    assert_eq!(delta(&e, &before, Stat::Miss), 0, "no miss event: nothing asks the RPZ yet");
    assert_eq!(delta(&e, &before, Stat::EventsSent), 3, "each drop is an event (rate-limited)");
    // Wrong class is still wrong class; what passes still passes.
    assert_eq!(run(&mut e, &frame::v4(PC, NS, frame::TCP, 25)), XDP_DROP);
    assert_eq!(run(&mut e, &frame::v4(PC, MX, frame::TCP, 25)), XDP_PASS, "mirrored entry");
    assert_eq!(run(&mut e, &frame::v4(RESOLVER, UNKNOWN, frame::TCP, 25)), XDP_PASS, "exempt source");
    assert_eq!(run(&mut e, &frame::v4(PC, INTERNAL, frame::TCP, 25)), XDP_PASS, "internal destination");
    assert_eq!(run(&mut e, &frame::v4(PC, UNKNOWN, frame::TCP, 80)), XDP_PASS, "unprotected port");
    // Loaded: the same unknown destination is a miss (asked, held meanwhile).
    e.set_loaded(true).expect("set loaded");
    assert_eq!(e.state().expect("state"), STATE_LOADED);
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &unknown), XDP_DROP);
    assert_eq!(delta(&e, &before, Stat::Miss), 1);
    assert_eq!(delta(&e, &before, Stat::DropNotLoaded), 0);
    // Event budget: a flood in deny-protected mode is rate-limited per source.
    e.set_loaded(false).expect("back to not loaded");
    let flood_src = Ipv4Addr::new(10, 1, 0, 66);
    let before = e.stats().expect("stats");
    for _ in 0..50 {
        assert_eq!(run(&mut e, &frame::v4(flood_src, UNKNOWN, frame::UDP, 53)), XDP_DROP);
    }
    assert_eq!(delta(&e, &before, Stat::DropNotLoaded), 50);
    assert_eq!(delta(&e, &before, Stat::EventsSent), u64::from(guard_common::DEFAULT_EVENTS_PER_SOURCE));
    assert_eq!(
        delta(&e, &before, Stat::EventsRateLimited),
        50 - u64::from(guard_common::DEFAULT_EVENTS_PER_SOURCE)
    );
}

/// The batched mirror and the one-by-one path leave the same maps, for
/// upserts, class changes and removals (including removals of keys that
/// are not there), hosts and prefixes, IPv4 and IPv6, across chunk edges.
#[test]
fn batched_mirror_matches_one_by_one() {
    let n = guard_user::xdp::BATCH_CHUNK as u32 + 777;
    let host = |i: u32| -> IpAddr {
        if i.is_multiple_of(9) {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x300, 0, 0, 0, (i >> 16) as u16, i as u16))
        } else {
            IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i))
        }
    };
    let first: AllowSet = (0..n)
        .map(|i| (Prefix::host(host(i)), if i % 2 == 0 { Classes::SMTP } else { Classes::DNS }))
        .chain([(p("100.100.0.0/16"), Classes::SMTP), (p("2001:db8:400::/48"), Classes::DNS)])
        .collect();
    let mut second = first.clone();
    for i in (0..n).step_by(3) {
        second.remove(&Prefix::host(host(i)), Classes::from_bits(3));
    }
    for i in (1..n).step_by(5) {
        second.add(Prefix::host(host(i)), Classes::SMTP);
    }
    second.remove(&p("100.100.0.0/16"), Classes::SMTP);
    second.add(p("100.101.0.0/16"), Classes::DNS);
    let mut batched = enforcer(Settings::default());
    let mut single = enforcer(Settings::default());
    let base = batched.read_allow().expect("read");
    let to_first = base.diff(&first);
    batched.apply_diff(&to_first).expect("batched load");
    single.apply_diff_one_by_one(&to_first).expect("one-by-one load");
    assert_eq!(batched.read_allow().expect("read"), first);
    assert_eq!(single.read_allow().expect("read"), first);
    let mut to_second = first.diff(&second);
    // Removals of keys that are not in the maps are fine for a mirror.
    to_second.remove.push(Prefix::host("192.0.2.250".parse().expect("ip")));
    to_second.remove.push(p("192.0.2.0/24"));
    batched.apply_diff(&to_second).expect("batched diff");
    single.apply_diff_one_by_one(&to_second).expect("one-by-one diff");
    assert_eq!(batched.read_allow().expect("read"), second);
    assert_eq!(single.read_allow().expect("read"), second);
}

// --- anti-spoofing of exempt sources (issue 13) ---

const RESOLVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x53];
const SPOOFER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

fn from_mac(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[6..12].copy_from_slice(&mac);
    frame
}

/// Drop events read from the ring buffer: (reason, source, source MAC).
fn drop_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<(u32, IpAddr, [u8; 6])> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert!(item.len() >= std::mem::size_of::<guard_common::Event>(), "short event record");
        // SAFETY: the program wrote a whole Event (length checked); read unaligned.
        let ev: guard_common::Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if ev.kind == guard_common::EVENT_DROP {
            let src = Prefix::host(IpAddr::from(ev.src)).addr();
            out.push((ev.reason, src, ev.src_mac));
        }
    }
    out
}

/// With an allowed-MAC list, the resolver's address is exempt from its own
/// MAC only; from another MAC it is dropped, counted and reported with
/// that MAC. What any host may do (a registered destination) still passes.
#[test]
fn exempt_source_from_another_mac_is_dropped_and_reported() {
    let mut e = enforcer_with(Settings { state: STATE_LOADED, ..Settings::default() }, |pc| {
        pc.exempt_origin = ExemptOrigin { macs: vec![MacAddr(RESOLVER_MAC)], ..ExemptOrigin::default() };
    });
    e.set_loaded(true).expect("loaded");
    let mut ring = e.take_events().expect("events");
    let r6 = v6("fd00:1::53");
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &from_mac(frame::v4(RESOLVER, UNKNOWN, frame::UDP, 53), RESOLVER_MAC)), XDP_PASS);
    assert_eq!(
        run(&mut e, &from_mac(frame::v6(r6, v6("2001:db8:100::99"), frame::UDP, 53), RESOLVER_MAC)),
        XDP_PASS
    );
    assert_eq!(delta(&e, &before, Stat::ExemptSource), 2);
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &from_mac(frame::v4(RESOLVER, UNKNOWN, frame::UDP, 53), SPOOFER_MAC)), XDP_DROP);
    assert_eq!(
        run(&mut e, &from_mac(frame::v6(r6, v6("2001:db8:100::99"), frame::TCP, 25), SPOOFER_MAC)),
        XDP_DROP
    );
    assert_eq!(delta(&e, &before, Stat::DropSpoofedExempt), 2);
    assert_eq!(delta(&e, &before, Stat::ExemptSource), 0);
    assert_eq!(delta(&e, &before, Stat::Miss), 0, "a spoofed packet never asks the RPZ");
    let evs = drop_events(&mut ring);
    assert_eq!(
        evs,
        vec![
            (guard_common::reason::SPOOFED_EXEMPT, IpAddr::V4(RESOLVER), SPOOFER_MAC),
            (guard_common::reason::SPOOFED_EXEMPT, IpAddr::V6(r6), SPOOFER_MAC),
        ]
    );
    // Toward a registered destination the spoofed packet is any host's: allowed.
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &from_mac(frame::v4(RESOLVER, NS, frame::UDP, 53), SPOOFER_MAC)), XDP_PASS);
    assert_eq!(delta(&e, &before, Stat::PassAllowed), 1);
    // Count-only mode counts it and passes it.
    e.update_settings(|s| s.mode = MODE_COUNT).expect("count mode");
    let before = e.stats().expect("stats");
    assert_eq!(run(&mut e, &from_mac(frame::v4(RESOLVER, UNKNOWN, frame::UDP, 53), SPOOFER_MAC)), XDP_PASS);
    assert_eq!(delta(&e, &before, Stat::DropSpoofedExempt), 1);
    assert_eq!(delta(&e, &before, Stat::WouldDrop), 1);
    // Other drop events carry the sender's MAC too.
    e.update_settings(|s| s.mode = guard_common::MODE_ENFORCE).expect("enforce");
    assert_eq!(run(&mut e, &from_mac(frame::v4(PC, NS, frame::TCP, 25), SPOOFER_MAC)), XDP_DROP);
    assert_eq!(
        drop_events(&mut ring).last(),
        Some(&(guard_common::reason::WRONG_CLASS, IpAddr::V4(PC), SPOOFER_MAC))
    );
}

/// The route check with the kernel's own FIB and neighbour table, on a real
/// veth with the program attached natively: the resolver's address is
/// exempt only from the MAC the router's neighbour entry holds; from
/// another MAC it is dropped; without a neighbour entry it is judged like
/// any host (never exempt by accident); an exempt address the router has no
/// route back to is spoofed by definition.
#[test]
fn exempt_route_check_follows_the_kernel_fib_and_neighbours() {
    let net = veth_ns("x");
    let ns = net.name().to_owned();
    let ip = |args: &[&str]| {
        let mut a = vec!["-n", ns.as_str()];
        a.extend_from_slice(args);
        guard_tests::netns::exec_ok_root(&a).unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    };
    ip(&["addr", "add", "10.1.0.1/24", "dev", "awb"]);
    guard_tests::netns::exec(&ns, &["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]).expect("forwarding");
    ip(&["neigh", "replace", "10.1.0.53", "lladdr", "02:00:00:00:00:53", "dev", "awb", "nud", "permanent"]);
    let no_neigh = Ipv4Addr::new(10, 1, 0, 54);
    let no_route = Ipv4Addr::new(10, 9, 0, 53);
    let mut e = enforcer_with(Settings { state: STATE_LOADED, ..Settings::default() }, |pc| {
        pc.exempt_sources = vec![p("10.1.0.53/32"), p("10.1.0.54/32"), p("10.9.0.53/32")];
        pc.exempt_origin = ExemptOrigin { route_v4: true, ..ExemptOrigin::default() };
    });
    e.set_loaded(true).expect("loaded");
    guard_tests::netns::run_in_netns(&ns, || e.attach("awb", AttachMode::Native))
        .expect("enter namespace")
        .expect("attach natively to the veth");
    let send = |frame: Vec<u8>, stat: Stat| -> Result<(), String> {
        let before = e.stats().expect("stats");
        guard_tests::netns::send_frames(&ns, "awa", &[frame]).expect("send");
        let t0 = std::time::Instant::now();
        while delta(&e, &before, Stat::Packets) == 0 && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let (n, hit) = (delta(&e, &before, Stat::Packets), delta(&e, &before, stat));
        if n == 1 && hit == 1 { Ok(()) } else { Err(format!("{n} packets, {} +{hit}", stat.name())) }
    };
    let cases = [
        ("resolver from its own MAC", RESOLVER, RESOLVER_MAC, Stat::ExemptSource),
        ("resolver's address from another MAC", RESOLVER, SPOOFER_MAC, Stat::DropSpoofedExempt),
        ("exempt address without a neighbour entry", no_neigh, SPOOFER_MAC, Stat::ExemptUnverified),
        ("exempt address with no route back", no_route, RESOLVER_MAC, Stat::DropSpoofedExempt),
    ];
    let mut wrong = Vec::new();
    for (name, src, mac, stat) in cases {
        if let Err(why) = send(from_mac(frame::v4(src, UNKNOWN, frame::UDP, 53), mac), stat) {
            wrong.push(format!("{name}: {why}"));
        }
    }
    // The unverified one went on to the miss path like any host's packet.
    let before = e.stats().expect("stats");
    if let Err(why) = send(from_mac(frame::v4(no_neigh, UNKNOWN, frame::TCP, 25), RESOLVER_MAC), Stat::Miss) {
        wrong.push(format!("unverified then judged: {why}"));
    }
    assert_eq!(delta(&e, &before, Stat::ExemptUnverified), 1);
    assert!(wrong.is_empty(), "route check disagrees:\n{}", wrong.join("\n"));
    // The neighbour entry moves (a failover to a new MAC): the check follows it.
    ip(&["neigh", "replace", "10.1.0.53", "lladdr", "02:00:00:00:00:66", "dev", "awb", "nud", "permanent"]);
    send(from_mac(frame::v4(RESOLVER, UNKNOWN, frame::UDP, 53), SPOOFER_MAC), Stat::ExemptSource)
        .expect("new MAC honoured");
    send(from_mac(frame::v4(RESOLVER, UNKNOWN, frame::UDP, 53), RESOLVER_MAC), Stat::DropSpoofedExempt)
        .expect("old MAC refused");
}

/// The threaded batched mirror (a diff above `PARALLEL_MIN`, on 3 threads)
/// leaves the same maps as one update per entry, for a load and a diff
/// with removals.
#[test]
fn threaded_mirror_matches_one_by_one() {
    let n = guard_user::xdp::PARALLEL_MIN as u32 + 777;
    let host = |i: u32| -> IpAddr {
        if i.is_multiple_of(7) {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x500, 0, 0, 0, (i >> 16) as u16, i as u16))
        } else {
            IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i))
        }
    };
    let first: AllowSet = (0..n)
        .map(|i| (Prefix::host(host(i)), if i % 2 == 0 { Classes::SMTP } else { Classes::DNS }))
        .collect();
    let mut second = first.clone();
    for i in (0..n).step_by(2) {
        second.remove(&Prefix::host(host(i)), Classes::from_bits(3));
    }
    let mut threaded = enforcer(Settings::default());
    let mut single = enforcer(Settings::default());
    let base = threaded.read_allow().expect("read");
    let to_first = base.diff(&first);
    threaded.apply_diff_threads(&to_first, 3).expect("threaded load");
    single.apply_diff_one_by_one(&to_first).expect("one-by-one load");
    assert_eq!(threaded.read_allow().expect("read"), first);
    assert_eq!(single.read_allow().expect("read"), first);
    let to_second = first.diff(&second);
    assert!(to_second.remove.len() >= guard_user::xdp::PARALLEL_MIN / 2);
    threaded.apply_diff_threads(&to_second, 3).expect("threaded diff");
    single.apply_diff_one_by_one(&to_second).expect("one-by-one diff");
    assert_eq!(threaded.read_allow().expect("read"), second);
    assert_eq!(single.read_allow().expect("read"), second);
}

/// A diff forgets the cached verdicts it could contradict, whichever way
/// the mirror finds them: by key (fewer changed hosts than cached
/// verdicts), by scanning the cache (more changed hosts), or by prefix.
#[test]
fn diff_flushes_contradicted_cached_verdicts() {
    let mut e = enforcer(Settings::default());
    let ip = |s: &str| -> Ipv4Addr { s.parse().expect("ip") };
    let (a, b, c, d) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"), ip("198.18.7.7"));
    let smtp = |dst: Ipv4Addr| frame::v4(PC, dst, frame::TCP, 25);
    let ttl = Duration::from_secs(600);
    // a and b were allowed by the miss path (cached), c is cached as not
    // registered, d lies in a prefix about to be revoked.
    for (dst, classes) in [(a, Classes::SMTP), (b, Classes::SMTP), (c, Classes::NONE), (d, Classes::SMTP)] {
        e.cache_verdict(dst.into(), classes, ttl).expect("cache");
    }
    let pfx: AllowSet = [(p("198.18.0.0/16"), Classes::SMTP)].into_iter().collect();
    e.apply_diff(&AllowSet::new().diff(&pfx)).expect("mirror prefix");
    assert_eq!(run(&mut e, &smtp(d)), XDP_PASS);
    e.cache_verdict(d.into(), Classes::SMTP, ttl).expect("cache");

    // By key: one changed host, four cached verdicts. The RPZ now says c is
    // a mail exchanger: its negative verdict must go, the others stay.
    let one: AllowSet = [(Prefix::host(c.into()), Classes::SMTP)].into_iter().collect();
    e.apply_diff(&AllowSet::new().diff(&one)).expect("mirror");
    assert_eq!(run(&mut e, &smtp(c)), XDP_PASS, "c's negative verdict was forgotten");
    assert_eq!(run(&mut e, &smtp(a)), XDP_PASS, "a's cached verdict stays");
    // Revoking c: no cached verdict may keep it open.
    e.apply_diff(&one.diff(&AllowSet::new())).expect("mirror");
    assert_eq!(run(&mut e, &smtp(c)), XDP_DROP);

    // By scan: a diff of 500 hosts (more than the cached verdicts) that
    // adds then revokes b.
    let many: AllowSet = (0..500u32)
        .map(|i| (Prefix::host(Ipv4Addr::from(0xc633_6400 + i).into()), Classes::SMTP))
        .chain([(Prefix::host(b.into()), Classes::SMTP)])
        .collect();
    e.apply_diff(&AllowSet::new().diff(&many)).expect("mirror");
    e.apply_diff(&many.diff(&AllowSet::new())).expect("mirror");
    assert_eq!(run(&mut e, &smtp(b)), XDP_DROP, "b's cached allow was forgotten with its entry");
    assert_eq!(run(&mut e, &smtp(a)), XDP_PASS, "a was not touched");

    // By prefix: revoking the /16 forgets d's cached verdict.
    e.apply_diff(&pfx.diff(&AllowSet::new())).expect("mirror");
    assert_eq!(run(&mut e, &smtp(d)), XDP_DROP);
}

/// The program lets a cached verdict stand for the internal and prefix
/// tries (it skips them on the cached path); userspace keeps that sound:
/// a new deny prefix or internal network leaves no cached verdict that
/// contradicts it, and exempt sources still pass a cached refusal.
#[test]
fn cached_verdicts_never_outlive_a_deny_prefix_or_internal_network() {
    let mut e = enforcer(Settings::default());
    let ip = |s: &str| -> Ipv4Addr { s.parse().expect("ip") };
    let (allowed, refused) = (ip("198.19.1.1"), ip("198.19.2.2"));
    let smtp = |dst: Ipv4Addr| frame::v4(PC, dst, frame::TCP, 25);
    let ttl = Duration::from_secs(600);
    e.cache_verdict(allowed.into(), Classes::SMTP, ttl).expect("cache");
    e.cache_verdict(refused.into(), Classes::NONE, ttl).expect("cache");
    assert_eq!(run(&mut e, &smtp(allowed)), XDP_PASS);
    assert_eq!(run(&mut e, &smtp(refused)), XDP_DROP);
    assert_eq!(
        run(&mut e, &frame::v4(RESOLVER, refused, frame::TCP, 25)),
        XDP_PASS,
        "exempt beats the cache"
    );
    // A deny prefix over the cached allow: dropped at once.
    let deny: AllowSet = [(p("198.19.1.0/24"), Classes::DENY)].into_iter().collect();
    e.apply_diff(&AllowSet::new().diff(&deny)).expect("mirror deny");
    assert_eq!(run(&mut e, &smtp(allowed)), XDP_DROP, "a deny prefix beats a cached allow");
    // The cached refusal becomes internal: passed, as internal destinations are.
    e.cache_verdict(refused.into(), Classes::NONE, ttl).expect("cache");
    e.configure(&ProgramConfig {
        ports: vec![ProtectedPort { proto: Tcp, port: 25, service: Service::Smtp }],
        internal_networks: vec![p("198.19.2.0/24")],
        settings: Settings { state: STATE_LOADED, ..Settings::default() },
        ..ProgramConfig::default()
    })
    .expect("configure");
    assert_eq!(run(&mut e, &smtp(refused)), XDP_PASS, "a new internal network beats a cached refusal");
}

/// A pin directory left by a build whose host allow maps were not
/// preallocated, held bare class bits and had a separate `LAST_HIT` map is
/// migrated at start: the set and state are carried into this build's
/// maps, which replace the old pins, and the retired map's pin is removed;
/// a layout whose allow set cannot be read is refused, naming it.
#[test]
fn pinned_maps_of_an_older_layout_are_migrated_or_refused() {
    use guard_common::{MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_F_NO_PREALLOC, MAX_ALLOW_V4, MAX_ALLOW_V6};
    use guard_tests::old_layout;
    let root = std::path::Path::new(guard_user::xdp::BPFFS_ROOT);
    guard_user::xdp::ensure_bpffs(&root.join("x")).expect("bpffs");
    let dir = root.join(format!("rpzg-migrate-{}", std::process::id()));
    let _ = guard_user::xdp::remove_pins(&dir);
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = guard_user::xdp::remove_pins(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());

    // This build's pins, then the host allow maps swapped for old-layout ones
    // (per-insert allocation, 4-byte values of class bits), and a LAST_HIT.
    {
        let mut e = Enforcer::load(Some(&dir)).expect("load pinned");
        e.configure(&ProgramConfig { settings: Settings::default(), ..ProgramConfig::default() })
            .expect("cfg");
        e.set_loaded(true).expect("loaded");
    }
    let m4 = old_layout::pinned_hash(&dir.join(MAP_ALLOW_V4), 4, 4, MAX_ALLOW_V4, MAP_F_NO_PREALLOC);
    let m6 = old_layout::pinned_hash(&dir.join(MAP_ALLOW_V6), 16, 4, MAX_ALLOW_V6, MAP_F_NO_PREALLOC);
    let hits = old_layout::pinned_hash(&dir.join("LAST_HIT"), 16, 4, 1 << 17, 0);
    let mut want = AllowSet::new();
    for i in 0..300u32 {
        let a = Ipv4Addr::from(0xc633_6400 + i);
        let c = if i % 2 == 0 { Classes::SMTP } else { Classes::DNS };
        old_layout::put(m4, &a.octets(), &c.bits().to_ne_bytes());
        want.add(Prefix::host(a.into()), c);
    }
    // A deny (the kernel's deny bit) is carried over as a deny.
    let denied = Ipv4Addr::new(203, 0, 113, 66);
    old_layout::put(m4, &denied.octets(), &guard_common::VALUE_DENY.to_ne_bytes());
    want.add(Prefix::host(denied.into()), Classes::DENY);
    let a6 = v6("2001:db8:100::53");
    old_layout::put(m6, &a6.octets(), &Classes::DNS.bits().to_ne_bytes());
    want.add(Prefix::host(a6.into()), Classes::DNS);
    // SAFETY: descriptors this test opened; the pins keep the maps.
    unsafe {
        libc::close(m4);
        libc::close(m6);
        libc::close(hits);
    }

    let mut e = Enforcer::load(Some(&dir)).expect("migrating load");
    assert!(e.adopted_maps(), "a migrated set counts as adopted");
    assert_eq!(e.read_allow().expect("read"), want, "the old set was carried over");
    assert_eq!(e.state().expect("state"), STATE_LOADED, "the old state was carried over");
    for name in [MAP_ALLOW_V4, MAP_ALLOW_V6] {
        let info = aya::maps::MapInfo::from_pin(dir.join(name)).expect("pinned");
        assert_eq!((info.value_size(), info.map_flags()), (8, 0), "{name} re-pinned in this build's layout");
    }
    assert!(!dir.join("LAST_HIT").exists(), "the retired map's pin was removed");
    e.configure(&ProgramConfig {
        ports: vec![ProtectedPort { proto: Tcp, port: 25, service: Service::Smtp }],
        settings: Settings { state: STATE_LOADED, ..Settings::default() },
        ..ProgramConfig::default()
    })
    .expect("configure");
    assert_eq!(run(&mut e, &frame::v4(PC, Ipv4Addr::from(0xc633_6400), frame::TCP, 25)), XDP_PASS);
    assert_eq!(run(&mut e, &frame::v4(PC, UNKNOWN, frame::TCP, 25)), XDP_DROP);
    drop(e);
    // The next start adopts them as they are.
    let e = Enforcer::load(Some(&dir)).expect("adopting load");
    assert_eq!(e.read_allow().expect("read"), want);
    drop(e);

    // Keys of another size: this build cannot read the set; refused, and
    // the pins are left alone (the old program keeps enforcing them).
    let bad = old_layout::pinned_hash(&dir.join(MAP_ALLOW_V4), 8, 4, MAX_ALLOW_V4, MAP_F_NO_PREALLOC);
    // SAFETY: as above.
    unsafe { libc::close(bad) };
    let err = Enforcer::load(Some(&dir)).err().expect("refused").to_string();
    assert!(err.contains("ALLOW_V4") && err.contains("cannot read"), "{err}");
    assert_eq!(aya::maps::MapInfo::from_pin(dir.join(MAP_ALLOW_V4)).expect("pin").key_size(), 8);
}
