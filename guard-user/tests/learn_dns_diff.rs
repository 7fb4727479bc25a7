//! Differential tests: the zero-copy DNS reader against hickory-proto, on
//! every DNS message of a generated capture, on random well-formed messages
//! encoded by hickory, and on mutated messages (where both accept).
mod learn_common;

use std::str::FromStr;

use guard_user::learn::synth;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType},
};
use learn_common::{hickory_facts, our_facts, udp_dns_payloads};
use proptest::prelude::*;

#[test]
fn agrees_with_hickory_on_every_message_of_a_generated_capture() {
    let dir = learn_common::tempdir("diff");
    let path = dir.join("g.pcap");
    synth::generate(std::io::BufWriter::new(std::fs::File::create(&path).expect("create")), 1_000_000, 11)
        .expect("generate");
    let msgs = udp_dns_payloads(&path);
    for data in &msgs {
        let h = Message::from_vec(data).expect("hickory parses generated DNS");
        let ours = our_facts(data).expect("our reader parses generated DNS");
        assert_eq!(ours, hickory_facts(&h));
    }
    assert!(msgs.len() > 1000, "only {} messages checked", msgs.len());
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
