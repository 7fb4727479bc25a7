//! The XDP program's parser and verdicts, run in the kernel with
//! `BPF_PROG_TEST_RUN` (needs root), fed raw frames or frames built from
//! fuzzer choices (VLAN tags, IPv4/IPv6, ports, addresses near the policy).
//! Oracle: an independent parser (etherparse). Whenever it reads a whole
//! TCP/UDP packet to a protected port from a non-exempt source toward a
//! non-internal destination whose classes do not allow the service, the
//! program must drop it: nothing passes by accident. The verdict is always
//! PASS or DROP (never ABORTED or anything else).
#![no_main]

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{Mutex, OnceLock},
};

use arbitrary::{Arbitrary, Unstructured};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use guard_common::Settings;
use guard_user::{
    policy::{
        AllowSet, Classes, Prefix, Service,
        Transport::{Tcp, Udp},
    },
    xdp::{Enforcer, ProgramConfig, ProtectedPort},
};
use libfuzzer_sys::fuzz_target;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Policy {
    enforcer: Mutex<Enforcer>,
    cfg: ProgramConfig,
    set: AllowSet,
}

fn p(s: &str) -> Prefix {
    s.parse().expect("prefix")
}

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let mut e =
            Enforcer::load(None).unwrap_or_else(|e| panic!("loading the XDP program (needs root): {e:?}"));
        let ports = [(Tcp, 25, Service::Smtp), (Tcp, 465, Service::Smtp), (Tcp, 587, Service::Smtp)]
            .into_iter()
            .chain([(Udp, 53, Service::Dns), (Tcp, 53, Service::Dns)])
            .map(|(proto, port, service)| ProtectedPort { proto, port, service })
            .collect();
        let cfg = ProgramConfig {
            ports,
            exempt_sources: vec![p("10.1.0.53/32"), p("fd00:1::53/128")],
            internal_networks: vec![p("10.0.0.0/8"), p("fd00::/8")],
            settings: Settings::default(),
            ..ProgramConfig::default()
        };
        e.configure(&cfg).expect("configure");
        let set: AllowSet = [
            (p("198.51.100.53/32"), Classes::DNS),
            (p("198.51.100.25/32"), Classes::SMTP),
            (p("203.0.113.0/24"), Classes::SMTP),
            (p("2001:db8:100::53/128"), Classes::DNS),
            (p("2001:db8:100::25/128"), Classes::SMTP),
        ]
        .into_iter()
        .collect();
        e.apply_diff(&AllowSet::new().diff(&set)).expect("mirror the allow set");
        Policy { enforcer: Mutex::new(e), cfg, set }
    })
}

/// Addresses around the policy's edges, for generated frames.
const V4: [[u8; 4]; 8] = [
    [198, 51, 100, 53],
    [198, 51, 100, 25],
    [198, 51, 100, 99],
    [203, 0, 113, 77],
    [10, 1, 0, 53],
    [10, 1, 0, 10],
    [10, 2, 0, 5],
    [192, 0, 2, 1],
];

#[derive(Arbitrary, Debug)]
struct Gen {
    v6: bool,
    src: u8,
    dst: u8,
    raw_v6_tail: u16,
    vlans: u8,
    tcp: bool,
    dport_pick: u8,
    dport_raw: u16,
    payload: Vec<u8>,
}

fn v4(i: u8) -> [u8; 4] {
    V4[usize::from(i) % V4.len()]
}

fn v6(i: u8, tail: u16) -> [u8; 16] {
    let base: Ipv6Addr = match i % 5 {
        0 => "2001:db8:100::53",
        1 => "2001:db8:100::25",
        2 => "fd00:1::53",
        3 => "fd00:1::10",
        _ => "2001:db8:200::",
    }
    .parse()
    .expect("v6");
    let mut o = base.octets();
    if i % 5 == 4 {
        o[14..].copy_from_slice(&tail.to_be_bytes());
    }
    o
}

fn generate(g: &Gen) -> Vec<u8> {
    const PORTS: [u16; 6] = [25, 465, 587, 53, 80, 2525];
    let dport = if g.dport_pick < 200 { PORTS[usize::from(g.dport_pick) % PORTS.len()] } else { g.dport_raw };
    let mac = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let eth = PacketBuilder::ethernet2(mac.0, mac.1);
    let ip = |b: etherparse::PacketBuilderStep<etherparse::VlanHeader>| {
        if g.v6 {
            b.ipv6(v6(g.src, g.raw_v6_tail), v6(g.dst, g.raw_v6_tail), 64)
        } else {
            b.ipv4(v4(g.src), v4(g.dst), 64)
        }
    };
    let mut out = Vec::new();
    let step = match g.vlans % 3 {
        0 if g.v6 => eth.ipv6(v6(g.src, g.raw_v6_tail), v6(g.dst, g.raw_v6_tail), 64),
        0 => eth.ipv4(v4(g.src), v4(g.dst), 64),
        1 => ip(eth.single_vlan(100.try_into().expect("vlan id"))),
        _ => ip(eth.double_vlan(7.try_into().expect("vlan id"), 100.try_into().expect("vlan id"))),
    };
    if g.tcp {
        let b = step.tcp(40_000, dport, 1, 65_535).syn();
        let _ = b.write(&mut out, &g.payload);
    } else {
        let b = step.udp(40_000, dport);
        let _ = b.write(&mut out, &g.payload);
    }
    out
}

/// The oracle: `Some(true)` when the frame must be dropped, `None` when the
/// independent parser cannot conclude.
fn must_drop(pol: &Policy, frame: &[u8]) -> Option<bool> {
    // Only the tag protocols the program unwraps (0x8100, 0x88a8).
    let mut at = 12;
    loop {
        let t = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        match t {
            0x8100 | 0x88a8 => at += 4,
            0x0800 | 0x86dd => break,
            _ => return None,
        }
    }
    let s = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match s.net.as_ref()? {
        NetSlice::Ipv4(h) => (h.header().source_addr().into(), h.header().destination_addr().into()),
        NetSlice::Ipv6(h) => (h.header().source_addr().into(), h.header().destination_addr().into()),
    };
    let (proto, dport) = match s.transport.as_ref()? {
        TransportSlice::Tcp(t) => (Tcp, t.destination_port()),
        TransportSlice::Udp(u) => (Udp, u.destination_port()),
        _ => return None,
    };
    let pp = pol.cfg.ports.iter().find(|pp| pp.proto == proto && pp.port == dport)?;
    if pol.cfg.exempt_sources.iter().any(|p| p.contains(src)) {
        return Some(false);
    }
    if pol.cfg.internal_networks.iter().any(|p| p.contains(dst)) {
        return Some(false);
    }
    Some(!pp.service.allows(pol.set.lookup(dst)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let frame = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let Ok(g) = Gen::arbitrary(&mut Unstructured::new(rest)) else { return };
        generate(&g)
    };
    // BPF_PROG_TEST_RUN wants at least an Ethernet header and at most a page.
    if frame.len() < 14 || frame.len() > 1514 {
        return;
    }
    let pol = policy();
    let verdict =
        pol.enforcer.lock().expect("enforcer lock").test_run(&frame, 1).expect("BPF_PROG_TEST_RUN").0;
    assert!(verdict == XDP_PASS || verdict == XDP_DROP, "verdict {verdict} for {frame:02x?}");
    if must_drop(pol, &frame) == Some(true) {
        assert_eq!(verdict, XDP_DROP, "a frame the policy denies passed: {frame:02x?}");
    }
});
