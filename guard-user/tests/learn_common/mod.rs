//! Shared helpers for the learner tests: packets built with etherparse,
//! DNS messages encoded by hickory-proto, small capture files.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use etherparse::{PacketBuilder, VlanId};
use guard_user::{
    frame as decode,
    learn::{
        Hints, Pipeline, Summary,
        dns::{self, Parser, Section},
        pcapw::PcapWriter,
    },
    policy::{AllowSet, Classes, Prefix},
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, MX, NS, SOA},
    },
};

pub const RESOLVER: &str = "10.1.0.53";
pub const ROOT_A: &str = "198.41.0.4";

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub fn name(s: &str) -> Name {
    Name::from_str(s).expect("test name")
}

/// A record as (owner, rdata).
pub fn rr(owner: &str, data: RData) -> Record {
    Record::from_rdata(name(owner), 3600, data)
}

pub fn a(owner: &str, addr: &str) -> Record {
    rr(owner, RData::A(A(addr.parse::<Ipv4Addr>().expect("v4"))))
}

pub fn aaaa(owner: &str, addr: &str) -> Record {
    rr(owner, RData::AAAA(AAAA(addr.parse::<Ipv6Addr>().expect("v6"))))
}

pub fn ns(owner: &str, target: &str) -> Record {
    rr(owner, RData::NS(NS(name(target))))
}

pub fn mx(owner: &str, pref: u16, target: &str) -> Record {
    rr(owner, RData::MX(MX::new(pref, name(target))))
}

pub fn cname(owner: &str, target: &str) -> Record {
    rr(owner, RData::CNAME(CNAME(name(target))))
}

pub fn soa(zone: &str) -> Record {
    let z = name(zone);
    rr(zone, RData::SOA(SOA::new(z.clone(), z, 1, 7200, 3600, 1_209_600, 300)))
}

pub fn query(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
    m.add_query(Query::query(name(qname), qtype));
    m.to_vec().expect("encode query")
}

/// A response with the given sections.
pub fn response(
    id: u16,
    qname: &str,
    qtype: RecordType,
    rcode: ResponseCode,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additional: Vec<Record>,
) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_message_type(MessageType::Response).set_op_code(OpCode::Query);
    m.set_response_code(rcode);
    m.add_query(Query::query(name(qname), qtype));
    m.add_answers(answers);
    m.add_name_servers(authority);
    m.add_additionals(additional);
    m.to_vec().expect("encode response")
}

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(_) => panic!("expected IPv4"),
    }
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(v) => v.octets(),
        IpAddr::V4(_) => panic!("expected IPv6"),
    }
}

/// An Ethernet frame carrying UDP.
pub fn eth_udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
    match src {
        IpAddr::V4(_) => b.ipv4(v4(src), v4(dst), 64).udp(sport, dport).write(&mut out, payload),
        IpAddr::V6(_) => b.ipv6(v6(src), v6(dst), 64).udp(sport, dport).write(&mut out, payload),
    }
    .expect("build frame");
    out
}

/// An Ethernet frame with one 802.1Q tag, or two (802.1ad) tags.
pub fn eth_vlan_udp(
    double: bool,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let id = |n| VlanId::try_new(n).expect("vlan id");
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let r = if double {
        b.double_vlan(id(100), id(200)).ipv4(v4(src), v4(dst), 64).udp(sport, dport).write(&mut out, payload)
    } else {
        b.single_vlan(id(100)).ipv4(v4(src), v4(dst), 64).udp(sport, dport).write(&mut out, payload)
    };
    r.expect("build frame");
    out
}

/// A raw IP packet (no link layer) carrying UDP.
pub fn raw_udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match src {
        IpAddr::V4(_) => PacketBuilder::ipv4(v4(src), v4(dst), 64).udp(sport, dport).write(&mut out, payload),
        IpAddr::V6(_) => PacketBuilder::ipv6(v6(src), v6(dst), 64).udp(sport, dport).write(&mut out, payload),
    }
    .expect("build packet");
    out
}

/// Linux cooked (SLL) frame around a raw IP packet.
pub fn sll(ip_packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
    let et: u16 = if ip_packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    f.extend(et.to_be_bytes());
    f.extend_from_slice(ip_packet);
    f
}

/// Linux cooked v2 (SLL2) frame around a raw IP packet.
pub fn sll2(ip_packet: &[u8]) -> Vec<u8> {
    let et: u16 = if ip_packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    let mut f = et.to_be_bytes().to_vec();
    f.extend([0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 6, 2, 0, 0, 0, 0, 1, 0]);
    f.extend_from_slice(ip_packet);
    f
}

/// An Ethernet frame carrying a TCP segment.
pub fn eth_tcp(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b =
        PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(v4(src), v4(dst), 64).tcp(sport, dport, seq, 65535);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'F' => b.fin(),
            'P' => b.psh(),
            'A' => b.ack(1),
            _ => panic!("flag {f}"),
        };
    }
    b.write(&mut out, payload).expect("build segment");
    out
}

/// The record sections of a response.
#[derive(Default)]
pub struct Sections {
    pub answer: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

/// An answer: records in the answer section, addresses in the additional one.
pub fn answer(answer: Vec<Record>, additional: Vec<Record>) -> Sections {
    Sections { answer, authority: vec![], additional }
}

/// A referral: NS records in the authority section, glue in the additional one.
pub fn referral(ns: Vec<Record>, glue: Vec<Record>) -> Sections {
    Sections { answer: vec![], authority: ns, additional: glue }
}

/// A conversation: frames with timestamps (ns), fed in order.
#[derive(Default)]
pub struct Conv {
    pub frames: Vec<(u64, Vec<u8>)>,
    pub ts: u64,
    next_port: u16,
}

impl Conv {
    pub fn new() -> Conv {
        Conv { frames: Vec::new(), ts: 1_000_000_000, next_port: 40000 }
    }

    pub fn push(&mut self, frame: Vec<u8>) {
        self.ts += 1_000_000;
        self.frames.push((self.ts, frame));
    }

    /// Query from `client` to `server` and the given response back (UDP, Ethernet).
    pub fn exchange(&mut self, client: &str, server: &str, q: Vec<u8>, r: Vec<u8>) {
        self.next_port += 1;
        let p = self.next_port;
        self.push(eth_udp(ip(client), ip(server), p, 53, &q));
        self.push(eth_udp(ip(server), ip(client), 53, p, &r));
    }

    /// The resolver asks `server` about `qname`/`qtype` with ID `id` and gets
    /// a NOERROR response with sections `s`.
    pub fn ask(&mut self, server: &str, id: u16, qname: &str, qtype: RecordType, s: Sections) {
        let r = response(id, qname, qtype, ResponseCode::NoError, s.answer, s.authority, s.additional);
        self.exchange(RESOLVER, server, query(id, qname, qtype), r);
    }

    /// `client` asks `server` for the MX of `domain` (ID `id`) and hears
    /// `mx.<domain>` at `addr` (answer and additional section).
    pub fn mx(&mut self, client: &str, server: &str, id: u16, domain: &str, addr: &str) {
        let host = format!("mx.{domain}");
        let r = response(
            id,
            domain,
            RecordType::MX,
            ResponseCode::NoError,
            vec![mx(domain, 10, &host)],
            vec![],
            vec![a(&host, addr)],
        );
        self.exchange(client, server, query(id, domain, RecordType::MX), r);
    }

    /// Only a response, no query.
    pub fn unsolicited(&mut self, client: &str, server: &str, r: Vec<u8>) {
        self.next_port += 1;
        self.push(eth_udp(ip(server), ip(client), 53, self.next_port, &r));
    }

    /// Feeds the frames (link type Ethernet unless given) into a pipeline.
    pub fn learn_with(&self, hints: &Hints, linktype: u32) -> (AllowSet, Summary) {
        let mut p = Pipeline::new(hints, 10_000_000_000);
        for (ts, f) in &self.frames {
            p.packet(*ts, linktype, f);
        }
        p.finish()
    }

    pub fn learn(&self) -> (AllowSet, Summary) {
        self.learn_with(&Hints::root(), decode::LINKTYPE_ETHERNET)
    }

    /// Writes the frames as a classic pcap file.
    pub fn write_pcap(&self, path: &std::path::Path, linktype: u32, nanos: bool) {
        let f = std::fs::File::create(path).expect("create pcap");
        let mut w = PcapWriter::new(f, linktype, nanos).expect("pcap header");
        for (ts, fr) in &self.frames {
            w.packet(*ts, fr).expect("write packet");
        }
        w.finish().expect("flush");
    }
}

/// The set learned beyond the 26 root hint entries.
pub fn beyond_roots(set: &AllowSet) -> Vec<(Prefix, Classes)> {
    let roots = Hints::root();
    set.iter()
        .filter(|(p, _)| !roots.addrs.iter().any(|r| Prefix::host(*r) == **p))
        .map(|(p, c)| (*p, *c))
        .collect()
}

pub fn entry(addr: &str, c: Classes) -> (Prefix, Classes) {
    (Prefix::host(ip(addr)), c)
}

/// A fresh temporary directory for one test.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rpz-learn-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

// ---- differential reading against hickory-proto ----

/// What both readers must agree on: header fields, question, and per record
/// (section, owner, type, decoded rdata for the types the rules read).
#[derive(Debug, PartialEq, Eq)]
pub struct Facts {
    pub id: u16,
    pub response: bool,
    pub rcode: u8,
    pub question: Option<(Vec<u8>, u16)>,
    pub records: Vec<(u8, Vec<u8>, u16, String)>,
}

pub fn wire(name: &Name) -> Vec<u8> {
    let mut v = Vec::new();
    for l in name.iter() {
        v.push(l.len() as u8);
        v.extend(l.iter().map(u8::to_ascii_lowercase));
    }
    v
}

/// Record types hickory moves out of the sections (EDNS OPT, TSIG, SIG).
pub fn hidden(t: u16) -> bool {
    matches!(t, 41 | 250 | 24)
}

pub fn hickory_facts(m: &Message) -> Facts {
    let mut records = Vec::new();
    for (sec, list) in [(0u8, m.answers()), (1, m.name_servers()), (2, m.additionals())] {
        for r in list {
            let t = u16::from(r.record_type());
            if hidden(t) {
                continue;
            }
            let data = match r.data() {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                RData::NS(n) => dns::name_to_text(&wire(&n.0)),
                RData::CNAME(n) => dns::name_to_text(&wire(&n.0)),
                RData::MX(mx) => format!("{} {}", mx.preference(), dns::name_to_text(&wire(mx.exchange()))),
                _ => String::new(),
            };
            records.push((sec, wire(r.name()), t, data));
        }
    }
    Facts {
        id: m.id(),
        response: m.message_type() == MessageType::Response,
        rcode: (u16::from(m.response_code()) & 0xf) as u8,
        question: m.queries().first().map(|q| (wire(q.name()), u16::from(q.query_type()))),
        records,
    }
}

pub fn our_facts(buf: &[u8]) -> Option<Facts> {
    let mut p = Parser::new();
    let m = p.parse(buf).ok()?;
    let mut records = Vec::new();
    for r in m.records() {
        if hidden(r.rtype) {
            continue;
        }
        let sec = match r.section {
            Section::Answer => 0,
            Section::Authority => 1,
            Section::Additional => 2,
        };
        let data = match r.rtype {
            dns::TYPE_A => m.a(r).map(|a| a.to_string()).unwrap_or_default(),
            dns::TYPE_AAAA => m.aaaa(r).map(|a| a.to_string()).unwrap_or_default(),
            dns::TYPE_NS | dns::TYPE_CNAME => dns::name_to_text(&m.name(m.target_at(r)?).ok()?),
            dns::TYPE_MX => {
                let b = m.bytes();
                let pref = u16::from_be_bytes([b[r.rdata_at], b[r.rdata_at + 1]]);
                format!("{pref} {}", dns::name_to_text(&m.name(m.target_at(r)?).ok()?))
            }
            _ => String::new(),
        };
        records.push((sec, m.name(r.name_at).ok()?, r.rtype, data));
    }
    Some(Facts {
        id: m.header.id,
        response: m.header.is_response(),
        rcode: m.header.rcode(),
        question: match m.question {
            Some(q) => Some((m.name(q.name_at).ok()?, q.qtype)),
            None => None,
        },
        records,
    })
}

/// Every unfragmented UDP port-53 payload of a capture file.
pub fn udp_dns_payloads(path: &std::path::Path) -> Vec<Vec<u8>> {
    use guard_user::learn::capture::{Input, read_capture};
    let mut out = Vec::new();
    let mut on_packet = |_ts: u64, link: u32, frame: &[u8]| -> bool {
        if let Ok(ip) = decode::link_payload(link, frame).and_then(decode::ip)
            && ip.proto == decode::PROTO_UDP
            && ip.frag.is_none()
            && let Ok((sport, dport, data)) = decode::udp(ip.payload)
            && (sport == 53 || dport == 53)
        {
            out.push(data.to_vec());
        }
        true
    };
    read_capture(&Input::File(path.to_path_buf()), &mut on_packet, &mut |d| panic!("{d:?}"), &mut |_| {})
        .expect("read capture");
    out
}
