//! Property tests over hostile input: random bytes and mutated packets go
//! through packet → DNS → rules without panicking, and damaged DNS never
//! yields an entry.
mod learn_common;

use guard_user::{
    frame as decode,
    learn::{Hints, Pipeline, dns::Parser, pcapw::PcapWriter},
};
use hickory_proto::{op::ResponseCode::NoError, rr::RecordType};
use learn_common::*;
use proptest::prelude::*;

const LINKTYPES: [u32; 9] = [0, 1, 12, 101, 108, 113, 228, 229, 276];

fn referral() -> (Vec<u8>, Vec<u8>) {
    (
        query(1, "example.com.", RecordType::MX),
        response(
            1,
            "example.com.",
            RecordType::MX,
            NoError,
            vec![mx("example.com.", 10, "mail.example.com.")],
            vec![ns("example.com.", "ns1.example.com.")],
            vec![a("ns1.example.com.", "203.0.113.10"), a("mail.example.com.", "203.0.113.25")],
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_panic_or_teach(
        frames in prop::collection::vec((prop::sample::select(LINKTYPES.to_vec()), prop::collection::vec(any::<u8>(), 0..200)), 1..20)
    ) {
        let mut p = Pipeline::new(&Hints::root(), 10_000_000_000);
        for (i, (lt, f)) in frames.iter().enumerate() {
            p.packet(i as u64, *lt, f);
        }
        let (set, s) = p.finish();
        prop_assert_eq!(set.len(), 26);
        prop_assert_eq!(s.packets, frames.len() as u64);
    }

    /// A valid query from the resolver to a root server, then a mutated
    /// response: whatever the mutation, no panic, and if the DNS payload no
    /// longer parses, nothing beyond the roots is learned.
    #[test]
    fn mutated_responses_from_a_trusted_server(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let (q, mut r) = referral();
        for (i, v) in flips {
            let at = i.index(r.len());
            r[at] = v;
        }
        if truncate {
            r.truncate(cut.index(r.len() + 1));
        }
        let mut c = Conv::new();
        c.exchange(RESOLVER, ROOT_A, q, r.clone());
        let (set, s) = c.learn();
        if Parser::new().parse(&r).is_err() {
            prop_assert_eq!(set.len(), 26);
            prop_assert!(s.malformed_total() >= 1);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random bytes as a capture file: a clear error or a counted problem, never a panic.
    #[test]
    fn random_capture_files(body in prop::collection::vec(any::<u8>(), 0..300), keep_header in any::<bool>()) {
        let dir = tempdir("fuzzfile");
        let path = dir.join("x.pcap");
        let mut bytes = Vec::new();
        if keep_header {
            let w = PcapWriter::new(&mut bytes, decode::LINKTYPE_ETHERNET, false).expect("header");
            w.finish().expect("flush");
        }
        bytes.extend(body);
        std::fs::write(&path, &bytes).expect("write");
        let r = guard_user::learn::run(&guard_user::learn::LearnOptions {
            inputs: vec![path],
            hints: Hints::root(),
            window: std::time::Duration::from_secs(10),
            progress: false,
        });
        if let Ok(out) = r {
            prop_assert_eq!(out.allow.len(), 26);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
