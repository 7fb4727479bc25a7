//! The README's policy for awkward packets, written down once as data: a
//! list of crafted frames, each with the outcome both enforcement modes must
//! reach. The XDP program (`BPF_PROG_TEST_RUN` and attached to a veth), the
//! controller on a real Open vSwitch, and the userspace parser
//! (`guard_user::frame`) are all tested against [`cases`], so the modes
//! cannot drift apart unnoticed.
//!
//! The harness supplies the [`Endpoints`] and must configure the enforcer
//! with the default protected ports (SMTP tcp 25, DNS udp/tcp 53; tcp 80 is
//! unprotected), [`Endpoints::allowed_v4`]/`_v6` registered with the SMTP
//! class, and nothing else registered, exempt or internal.
//!
//! ```
//! use guard_tests::awkward::{cases, Endpoints, Outcome};
//! let table = cases(&Endpoints::example());
//! assert!(table.iter().any(|c| c.outcome == Outcome::Malformed));
//! ```
use std::net::{Ipv4Addr, Ipv6Addr};

/// Addresses the frames are built with.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    /// Destination MAC (the receiving interface).
    pub dst_mac: [u8; 6],
    /// Source MAC (the sending interface).
    pub src_mac: [u8; 6],
    /// IPv4 source (not exempt).
    pub src_v4: Ipv4Addr,
    /// IPv6 source (not exempt).
    pub src_v6: Ipv6Addr,
    /// IPv4 destination registered with the SMTP class.
    pub allowed_v4: Ipv4Addr,
    /// IPv6 destination registered with the SMTP class.
    pub allowed_v6: Ipv6Addr,
    /// IPv4 destination not registered.
    pub denied_v4: Ipv4Addr,
    /// IPv6 destination not registered.
    pub denied_v6: Ipv6Addr,
}

impl Endpoints {
    /// Documentation addresses, for harnesses without a network
    /// (`BPF_PROG_TEST_RUN`, parser tests).
    pub fn example() -> Endpoints {
        Endpoints {
            dst_mac: [0x02, 0, 0, 0, 0, 1],
            src_mac: [0x02, 0, 0, 0, 0, 2],
            src_v4: Ipv4Addr::new(192, 0, 2, 10),
            src_v6: "2001:db8:1::10".parse().unwrap_or(Ipv6Addr::LOCALHOST),
            allowed_v4: Ipv4Addr::new(198, 51, 100, 25),
            allowed_v6: "2001:db8:100::25".parse().unwrap_or(Ipv6Addr::LOCALHOST),
            denied_v4: Ipv4Addr::new(198, 51, 100, 99),
            denied_v6: "2001:db8:100::99".parse().unwrap_or(Ipv6Addr::LOCALHOST),
        }
    }
}

/// What an enforcer must do with a frame (each is one `Stat` counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IP: passed untouched (`non_ip`).
    NonIp,
    /// IP but not TCP/UDP, or an unprotected port: passed (`unprotected`).
    Unprotected,
    /// A later fragment: passed, its first fragment is what gets checked (`fragment`).
    Fragment,
    /// Protected port toward the registered destination: passed (`pass_allowed`).
    Allowed,
    /// Protected port toward the unregistered destination: dropped (`miss`,
    /// then `drop_not_registered` once the RPZ answered).
    Denied,
    /// Unparseable where a verdict is needed: dropped (`drop_malformed`).
    Malformed,
    /// IPv6 extension chain longer than 6: dropped (`drop_ext_chain`).
    ExtChain,
}

impl Outcome {
    /// Whether the frame reaches its destination.
    pub fn passes(self) -> bool {
        matches!(self, Outcome::NonIp | Outcome::Unprotected | Outcome::Fragment | Outcome::Allowed)
    }
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Case {
    /// What the frame is.
    pub name: &'static str,
    /// The frame, Ethernet header first, no FCS.
    pub frame: Vec<u8>,
    /// The outcome in both modes.
    pub outcome: Outcome,
    /// Where OpenFlow mode cannot follow, its outcome and why. Reviewed
    /// exceptions only; each is in the README.
    pub openflow: Option<(Outcome, &'static str)>,
}

impl Case {
    /// The outcome expected in OpenFlow mode.
    pub fn openflow_outcome(&self) -> Outcome {
        self.openflow.map_or(self.outcome, |(o, _)| o)
    }
}

/// SMTP, protected (tcp).
pub const SMTP: u16 = 25;
/// DNS, protected (udp and tcp).
pub const DNS: u16 = 53;
/// HTTP, not protected.
pub const HTTP: u16 = 80;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAG: u8 = 44;
const AH: u8 = 51;
const DSTOPTS: u8 = 60;
const MF: u16 = 0x2000;

/// A TCP SYN header with `opts` bytes of options (NOPs, a multiple of 4).
fn tcp(dport: u16, opts: usize) -> Vec<u8> {
    let mut h = vec![0x9c, 0x40];
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    h.push((((20 + opts) / 4) as u8) << 4);
    h.extend_from_slice(&[0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend(std::iter::repeat_n(1u8, opts));
    h
}

/// A UDP header with `data` bytes of payload.
fn udp(dport: u16, data: usize) -> Vec<u8> {
    let mut h = vec![0x9c, 0x41];
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + data) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(std::iter::repeat_n(0x61u8, data));
    h
}

fn csum(h: &[u8]) -> u16 {
    let mut s: u32 =
        h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Builds the table's frames; `id` makes every frame unique (IPv4
/// identification, IPv6 flow label / fragment id).
struct Builder<'a> {
    ep: &'a Endpoints,
    id: u16,
}

/// An IPv4 datagram; `total` overrides the total length field.
struct V4<'a> {
    dst: Ipv4Addr,
    proto: u8,
    options: usize,
    frag: u16,
    payload: &'a [u8],
    total: Option<u16>,
}

impl Builder<'_> {
    fn eth(&self, tags: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = self.ep.dst_mac.to_vec();
        f.extend_from_slice(&self.ep.src_mac);
        for (i, tpid) in tags.iter().enumerate() {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn v4(&mut self, tags: &[u16], p: V4<'_>) -> Vec<u8> {
        self.id += 1;
        let ihl = 20 + p.options;
        let total = p.total.unwrap_or((ihl + p.payload.len()) as u16);
        let mut h = vec![0x40 | (ihl / 4) as u8, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&p.frag.to_be_bytes());
        h.extend_from_slice(&[64, p.proto, 0, 0]);
        h.extend_from_slice(&self.ep.src_v4.octets());
        h.extend_from_slice(&p.dst.octets());
        // Options: NOPs, then end of list.
        h.extend(std::iter::repeat_n(1u8, p.options.saturating_sub(1)));
        if p.options > 0 {
            h.push(0);
        }
        let c = csum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = self.eth(tags, 0x0800);
        f.extend_from_slice(&h);
        f.extend_from_slice(p.payload);
        f
    }

    fn simple_v4(&mut self, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
        self.v4(&[], V4 { dst, proto, options: 0, frag: 0, payload, total: None })
    }

    /// IPv6 with extension headers `ext` (already chained) after `first`.
    fn v6(&mut self, dst: Ipv6Addr, first: u8, ext: &[u8], payload: &[u8], plen: Option<u16>) -> Vec<u8> {
        self.id += 1;
        let mut f = self.eth(&[], 0x86dd);
        f.extend_from_slice(&[0x60, 0, (self.id >> 8) as u8, self.id as u8]);
        let len = plen.unwrap_or((ext.len() + payload.len()) as u16);
        f.extend_from_slice(&len.to_be_bytes());
        f.push(first);
        f.push(64);
        f.extend_from_slice(&self.ep.src_v6.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(ext);
        f.extend_from_slice(payload);
        f
    }

    /// An IPv6 fragment header (`offset` in bytes).
    fn frag6(&self, next: u8, offset: u16, more: bool) -> Vec<u8> {
        let off = offset | u16::from(more);
        let mut h = vec![next, 0];
        h.extend_from_slice(&off.to_be_bytes());
        h.extend_from_slice(&u32::from(self.id + 1).to_be_bytes());
        h
    }
}

/// An 8-byte hop-by-hop / destination-options / routing header (PadN).
fn opts(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// A routing header of an unknown type with no segments left (ignored by receivers).
fn routing(next: u8) -> Vec<u8> {
    vec![next, 0, 253, 0, 0, 0, 0, 0]
}

/// An authentication header (RFC 4302) with 4 bytes of ICV.
fn ah(next: u8) -> Vec<u8> {
    let mut h = vec![next, 2, 0, 0, 0, 0, 0x10, 0x01, 0, 0, 0, 1];
    h.extend_from_slice(&[0; 4]);
    h
}

/// A chain of `n` destination-options headers ending in `last`.
fn chain(n: usize, last: u8) -> Vec<u8> {
    (0..n).flat_map(|i| opts(if i + 1 == n { last } else { DSTOPTS })).collect()
}

/// The table. Frames are built for `ep`; see the module docs for the
/// configuration the harness must apply.
#[expect(clippy::vec_init_then_push, reason = "rows grouped by topic, with comments between the groups")]
pub fn cases(ep: &Endpoints) -> Vec<Case> {
    use Outcome::*;
    let mut b = Builder { ep, id: 0 };
    let (a4, d4, a6, d6) = (ep.allowed_v4, ep.denied_v4, ep.allowed_v6, ep.denied_v6);
    let syn = tcp(SMTP, 0);
    let syn_opts = tcp(SMTP, 20);
    let mut t: Vec<(&'static str, Vec<u8>, Outcome)> = Vec::new();

    // Plain packets: the reference points.
    t.push(("ipv4 tcp 25 to a registered host", b.simple_v4(a4, TCP, &syn), Allowed));
    t.push(("ipv4 tcp 25 to an unregistered host", b.simple_v4(d4, TCP, &syn), Denied));
    t.push(("ipv4 udp 53 to an unregistered host", b.simple_v4(d4, UDP, &udp(DNS, 12)), Denied));
    t.push(("ipv4 tcp 80 (unprotected)", b.simple_v4(d4, TCP, &tcp(HTTP, 0)), Unprotected));
    t.push(("ipv4 icmp echo", b.simple_v4(d4, ICMP, &[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]), Unprotected));
    let mut arp = b.eth(&[], 0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&ep.src_mac);
    arp.extend_from_slice(&ep.src_v4.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&d4.octets());
    t.push(("arp request", arp, NonIp));

    // IPv4 options: the header length is honoured.
    t.push((
        "ipv4 options (8 bytes), tcp 25 to a registered host",
        b.v4(&[], V4 { dst: a4, proto: TCP, options: 8, frag: 0, payload: &syn, total: None }),
        Allowed,
    ));
    t.push((
        "ipv4 options (40 bytes), tcp 25 to an unregistered host",
        b.v4(&[], V4 { dst: d4, proto: TCP, options: 40, frag: 0, payload: &syn, total: None }),
        Denied,
    ));

    // VLAN: up to two tags judged on the inner packet; three are refused.
    let plain = |dst| V4 { dst, proto: TCP, options: 0, frag: 0, payload: &syn, total: None };
    t.push(("802.1Q, tcp 25 to a registered host", b.v4(&[0x8100], plain(a4)), Allowed));
    t.push(("802.1Q, tcp 25 to an unregistered host", b.v4(&[0x8100], plain(d4)), Denied));
    t.push((
        "QinQ (802.1ad + 802.1Q), tcp 25 to a registered host",
        b.v4(&[0x88a8, 0x8100], plain(a4)),
        Allowed,
    ));
    t.push(("QinQ, tcp 25 to an unregistered host", b.v4(&[0x88a8, 0x8100], plain(d4)), Denied));
    let http = tcp(HTTP, 0);
    t.push((
        "QinQ, tcp 80",
        b.v4(&[0x88a8, 0x8100], V4 { dst: d4, proto: TCP, options: 0, frag: 0, payload: &http, total: None }),
        Unprotected,
    ));
    t.push((
        "three VLAN tags, tcp 80",
        b.v4(
            &[0x88a8, 0x8100, 0x8100],
            V4 { dst: d4, proto: TCP, options: 0, frag: 0, payload: &http, total: None },
        ),
        Malformed,
    ));
    let mut cut = b.eth(&[], 0x8100);
    cut.extend_from_slice(&[0, 100]);
    t.push(("802.1Q tag cut short", cut, Malformed));

    // IPv4 fragments (RFC 1858): first fragments are checked and must hold
    // the whole transport header; later ones pass.
    let first = |dst, payload| V4 { dst, proto: TCP, options: 0, frag: MF, payload, total: None };
    t.push(("first fragment, whole tcp header, to an unregistered host", b.v4(&[], first(d4, &syn)), Denied));
    t.push(("first fragment, whole tcp header, to a registered host", b.v4(&[], first(a4, &syn)), Allowed));
    t.push((
        "tiny first fragment: 24 of 40 tcp header bytes, tcp 25 to an unregistered host",
        b.v4(&[], first(d4, &syn_opts[..24])),
        Malformed,
    ));
    t.push((
        "tiny first fragment: 24 of 40 tcp header bytes, to a registered host",
        b.v4(&[], first(a4, &syn_opts[..24])),
        Malformed,
    ));
    let http_opts = tcp(HTTP, 20);
    t.push(("tiny first fragment, tcp 80", b.v4(&[], first(d4, &http_opts[..24])), Malformed));
    t.push(("tiny first fragment: only the 8 port bytes", b.v4(&[], first(d4, &syn[..8])), Malformed));
    let u = udp(DNS, 12);
    t.push((
        "udp first fragment with 4 header bytes, udp 53",
        b.v4(&[], V4 { dst: d4, proto: UDP, options: 0, frag: MF, payload: &u[..4], total: None }),
        Malformed,
    ));
    t.push((
        "udp first fragment, whole header, udp 53 to an unregistered host",
        b.v4(&[], V4 { dst: d4, proto: UDP, options: 0, frag: MF, payload: &u[..8], total: None }),
        Denied,
    ));
    t.push((
        "later fragment at offset 8, overlapping the tcp header (cannot reach the ports)",
        b.v4(&[], V4 { dst: d4, proto: TCP, options: 0, frag: MF | 1, payload: &syn_opts[8..], total: None }),
        Fragment,
    ));
    t.push((
        "later fragment at offset 1480 to an unregistered host",
        b.v4(&[], V4 { dst: d4, proto: TCP, options: 0, frag: 185, payload: &[0x61; 40], total: None }),
        Fragment,
    ));

    // Truncated and impossible headers.
    t.push(("tcp header cut to 12 bytes, not a fragment", b.simple_v4(d4, TCP, &syn[..12]), Malformed));
    let mut doff = tcp(SMTP, 0);
    doff[12] = 0x40;
    t.push(("tcp data offset below 5", b.simple_v4(a4, TCP, &doff), Malformed));
    let mut short = b.simple_v4(a4, TCP, &syn);
    short.truncate(14 + 10);
    t.push(("ipv4 header cut to 10 bytes", short, Malformed));
    t.push((
        "ipv4 total length beyond the frame",
        b.v4(&[], V4 { dst: a4, proto: TCP, options: 0, frag: 0, payload: &syn, total: Some(60) }),
        Malformed,
    ));
    t.push((
        "ipv4 total length shorter than the tcp header",
        b.v4(&[], V4 { dst: a4, proto: TCP, options: 0, frag: 0, payload: &syn, total: Some(30) }),
        Malformed,
    ));
    let mut ihl = b.simple_v4(a4, TCP, &syn);
    ihl[14] = 0x44;
    t.push(("ipv4 ihl below 5", ihl, Malformed));
    // The ethertype names the version; the version nibble is not checked
    // (Open vSwitch does not either; receivers drop such packets).
    let mut ver = b.simple_v4(a4, TCP, &syn);
    ver[14] = 0x65;
    t.push(("version 6 under ethertype ipv4, judged as ipv4 (registered host)", ver, Allowed));

    // IPv6: extension headers walked (at most 6), fragments as for IPv4.
    t.push(("ipv6 tcp 25 to a registered host", b.v6(a6, TCP, &[], &syn, None), Allowed));
    t.push(("ipv6 tcp 25 to an unregistered host", b.v6(d6, TCP, &[], &syn, None), Denied));
    t.push(("ipv6 udp 53 to an unregistered host", b.v6(d6, UDP, &[], &udp(DNS, 12), None), Denied));
    t.push(("ipv6 icmpv6 echo", b.v6(d6, ICMPV6, &[], &[128, 0, 0, 0, 0, 1, 0, 1], None), Unprotected));
    let f = b.frag6(TCP, 0, true);
    t.push(("ipv6 first fragment, tcp 25 to an unregistered host", b.v6(d6, FRAG, &f, &syn, None), Denied));
    let f = b.frag6(TCP, 0, true);
    t.push(("ipv6 first fragment, tcp 25 to a registered host", b.v6(a6, FRAG, &f, &syn, None), Allowed));
    let f = b.frag6(TCP, 0, true);
    t.push(("ipv6 tiny first fragment: 8 tcp header bytes", b.v6(a6, FRAG, &f, &syn[..8], None), Malformed));
    let f = b.frag6(UDP, 0, true);
    t.push(("ipv6 udp first fragment with 4 header bytes", b.v6(d6, FRAG, &f, &u[..4], None), Malformed));
    let f = b.frag6(TCP, 1232, false);
    t.push(("ipv6 later fragment to an unregistered host", b.v6(d6, FRAG, &f, &[0x61; 40], None), Fragment));
    let f = b.frag6(TCP, 0, false);
    t.push(("ipv6 atomic fragment, tcp 25 to an unregistered host", b.v6(d6, FRAG, &f, &syn, None), Denied));
    let f = b.frag6(TCP, 0, false);
    t.push(("ipv6 atomic fragment, tcp 25 to a registered host", b.v6(a6, FRAG, &f, &syn, None), Allowed));
    let ext: Vec<u8> = [opts(DSTOPTS), opts(FRAG), b.frag6(DSTOPTS, 0, true), opts(TCP)].concat();
    t.push((
        "hop-by-hop, dest-opts, fragment (first), dest-opts, tcp 25 to an unregistered host",
        b.v6(d6, HOP, &ext, &syn, None),
        Denied,
    ));
    let ext: Vec<u8> = [opts(FRAG), b.frag6(TCP, 1232, true)].concat();
    t.push(("hop-by-hop, fragment (later)", b.v6(d6, HOP, &ext, &[0x61; 40], None), Fragment));
    let ext: Vec<u8> = [routing(AH), ah(TCP)].concat();
    t.push(("routing, AH, tcp 25 to an unregistered host", b.v6(d6, ROUTING, &ext, &syn, None), Denied));
    t.push((
        "six extension headers, tcp 25 to a registered host",
        b.v6(a6, DSTOPTS, &chain(6, TCP), &syn, None),
        Allowed,
    ));
    t.push((
        "six extension headers, tcp 25 to an unregistered host",
        b.v6(d6, DSTOPTS, &chain(6, TCP), &syn, None),
        Denied,
    ));
    t.push((
        "seven extension headers, tcp 25 to an unregistered host",
        b.v6(d6, DSTOPTS, &chain(7, TCP), &syn, None),
        ExtChain,
    ));
    let seven_http = b.v6(d6, DSTOPTS, &chain(7, TCP), &tcp(HTTP, 0), None);
    t.push(("ipv6 extension header cut short", b.v6(d6, DSTOPTS, &[TCP, 0, 1], &[], None), Malformed));
    t.push(("ipv6 payload length beyond the frame", b.v6(a6, TCP, &[], &syn, Some(64)), Malformed));
    t.push(("ipv6 tcp header cut to 12 bytes", b.v6(a6, TCP, &[], &syn[..12], None), Malformed));
    let mut ver6 = b.v6(d6, TCP, &[], &syn, None);
    ver6[14] = 0x40;
    t.push(("version 4 under ethertype ipv6, judged as ipv6 (unregistered host)", ver6, Denied));
    let mut short6 = b.v6(a6, TCP, &[], &syn, None);
    short6.truncate(14 + 30);
    t.push(("ipv6 header cut to 30 bytes", short6, Malformed));

    let mut out: Vec<Case> =
        t.into_iter().map(|(name, frame, outcome)| Case { name, frame, outcome, openflow: None }).collect();
    out.push(Case {
        name: "seven extension headers, tcp 80",
        frame: seven_http,
        outcome: ExtChain,
        openflow: Some((
            Unprotected,
            "Open vSwitch walks extension chains of any length and has no match on the chain length, so \
             it sees port 80 and forwards; the XDP program stops after 6 headers and cannot see the port",
        )),
    });
    out
}

/// Removes 802.1Q/802.1ad tags (a receiver may have moved them into metadata),
/// for comparing a sent frame with a received one.
pub fn untagged(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.get(..12).unwrap_or(frame).to_vec();
    let mut at = 12;
    while let Some(et) = frame.get(at..at + 2) {
        if (et == [0x81, 0x00] || et == [0x88, 0xa8]) && frame.len() >= at + 6 {
            at += 4;
        } else {
            break;
        }
    }
    out.extend_from_slice(frame.get(at..).unwrap_or(&[]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_unique_and_names_too() {
        let t = cases(&Endpoints::example());
        for (i, a) in t.iter().enumerate() {
            for b in &t[i + 1..] {
                assert_ne!(untagged(&a.frame), untagged(&b.frame), "{} vs {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
        }
        assert!(t.iter().all(|c| c.frame.len() >= 14), "XDP needs at least an Ethernet header");
    }
}
