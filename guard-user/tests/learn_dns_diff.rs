//! Differential tests: the zero-copy DNS reader against hickory-proto, on
//! every DNS message of a generated capture, on random well-formed messages
//! encoded by hickory, and on mutated messages (where both accept).
mod learn_common;

use std::str::FromStr;

use guard_user::learn::{
    capture::{Input, read_capture},
    decode,
    dns::{self, Parser, Section},
    synth,
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType},
};
use proptest::prelude::*;

/// What both readers must agree on: header fields, question, and per record
/// (section, owner, type, decoded rdata for the types the rules read).
#[derive(Debug, PartialEq, Eq)]
struct Facts {
    id: u16,
    response: bool,
    rcode: u8,
    question: Option<(Vec<u8>, u16)>,
    records: Vec<(u8, Vec<u8>, u16, String)>,
}

fn wire(name: &Name) -> Vec<u8> {
    let mut v = Vec::new();
    for l in name.iter() {
        v.push(l.len() as u8);
        v.extend(l.iter().map(u8::to_ascii_lowercase));
    }
    v
}

/// Record types hickory moves out of the sections (EDNS OPT, TSIG, SIG).
fn hidden(t: u16) -> bool {
    matches!(t, 41 | 250 | 24)
}

fn hickory_facts(m: &Message) -> Facts {
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

fn our_facts(buf: &[u8]) -> Option<Facts> {
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

#[test]
fn agrees_with_hickory_on_every_message_of_a_generated_capture() {
    let dir = learn_common::tempdir("diff");
    let path = dir.join("g.pcap");
    synth::generate(std::io::BufWriter::new(std::fs::File::create(&path).expect("create")), 1_000_000, 11)
        .expect("generate");
    let mut checked = 0u64;
    let mut on_packet = |_ts: u64, link: u32, frame: &[u8]| -> bool {
        let Ok(ip) = decode::link_payload(link, frame).and_then(decode::ip) else { return true };
        if ip.proto != decode::PROTO_UDP || ip.frag.is_some() {
            return true;
        }
        let Ok((sport, dport, data)) = decode::udp(ip.payload) else { return true };
        if sport != 53 && dport != 53 {
            return true;
        }
        let h = Message::from_vec(data).expect("hickory parses generated DNS");
        let ours = our_facts(data).expect("our reader parses generated DNS");
        assert_eq!(ours, hickory_facts(&h));
        checked += 1;
        true
    };
    read_capture(&Input::File(path), &mut on_packet, &mut |d| panic!("{d:?}"), &mut |_| {})
        .expect("read capture");
    assert!(checked > 1000, "only {checked} messages checked");
    let _ = std::fs::remove_dir_all(dir);
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,10}"
}

fn name_strategy() -> impl Strategy<Value = String> {
    // Few distinct suffixes so hickory compresses a lot.
    (
        prop::collection::vec(label(), 0..3),
        prop::sample::select(vec!["example.com.", "com.", "a.b.c.net.", "."]),
    )
        .prop_map(|(ls, suffix)| {
            let mut s = ls.join(".");
            if !s.is_empty() && suffix != "." {
                s.push('.');
            }
            if suffix != "." || s.is_empty() {
                s.push_str(suffix);
            } else {
                s.push('.');
            }
            s
        })
}

fn record_strategy() -> impl Strategy<Value = Record> {
    (name_strategy(), 0u8..6, any::<u32>(), any::<u128>(), name_strategy(), any::<u16>()).prop_map(
        |(owner, kind, v4, v6, target, pref)| {
            let n = Name::from_str(&owner).expect("name");
            let t = Name::from_str(&target).expect("name");
            use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, TXT};
            let data = match kind {
                0 => RData::A(A(v4.into())),
                1 => RData::AAAA(AAAA(v6.into())),
                2 => RData::NS(NS(t)),
                3 => RData::CNAME(CNAME(t)),
                4 => RData::MX(MX::new(pref, t)),
                _ => RData::TXT(TXT::new(vec![target])),
            };
            Record::from_rdata(n, 300, data)
        },
    )
}

fn message_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        any::<bool>(),
        name_strategy(),
        prop::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::MX, RecordType::NS]),
        prop::collection::vec(record_strategy(), 0..6),
        prop::collection::vec(record_strategy(), 0..4),
        prop::collection::vec(record_strategy(), 0..6),
        prop::sample::select(vec![ResponseCode::NoError, ResponseCode::NXDomain, ResponseCode::ServFail]),
    )
        .prop_map(|(id, resp, q, qt, an, ns, ar, rc)| {
            let mut m = Message::new();
            m.set_id(id)
                .set_message_type(if resp { MessageType::Response } else { MessageType::Query })
                .set_op_code(OpCode::Query)
                .set_response_code(rc);
            m.add_query(Query::query(Name::from_str(&q).expect("name"), qt));
            m.add_answers(an);
            m.add_name_servers(ns);
            m.add_additionals(ar);
            m.to_vec().expect("encode")
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_hickory_on_random_messages(buf in message_strategy()) {
        let h = Message::from_vec(&buf).expect("hickory reads its own encoding");
        let ours = our_facts(&buf);
        prop_assert_eq!(ours, Some(hickory_facts(&h)));
    }

    #[test]
    fn agrees_with_hickory_when_both_accept_mutations(
        buf in message_strategy(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut b = buf;
        for (i, v) in flips {
            let at = i.index(b.len());
            b[at] = v;
        }
        if truncate {
            b.truncate(cut.index(b.len() + 1));
        }
        let ours = our_facts(&b);
        if let (Some(ours), Ok(h)) = (ours, Message::from_vec(&b)) {
            prop_assert_eq!(ours, hickory_facts(&h));
        }
    }
}
