//! Property tests: decoding arbitrary bytes never panics, and whatever
//! decodes re-encodes to something that decodes to the same value.

use guard_user::{
    frame as packet,
    openflow::codec::{Message, message_len},
};
use proptest::prelude::*;

fn check(bytes: &[u8]) {
    let _ = message_len(bytes);
    let _ = packet::parse(bytes);
    if let Ok(m) = Message::decode(bytes) {
        let again = m.encode();
        let back = Message::decode(&again).expect("an encoded message decodes");
        assert_eq!(back, m, "round trip changed the message");
    }
}

/// A header with a consistent length and a plausible type, so that the body
/// decoders (not only the length check) get exercised.
fn framed() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0u8, 1, 2, 3, 5, 6, 8, 9, 10, 11, 13, 14, 18, 19, 20, 21, 29, 12, 99]),
        prop::collection::vec(any::<u8>(), 0..400),
        any::<bool>(),
    )
        .prop_map(|(t, body, v4)| {
            let len = u16::try_from(8 + body.len()).expect("small");
            let mut b = vec![if v4 { 4 } else { 5 }, t];
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, 1]);
            b.extend_from_slice(&body);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check(&bytes);
    }

    #[test]
    fn framed_messages_round_trip(bytes in framed()) {
        check(&bytes);
    }

    #[test]
    fn mutated_real_messages_never_panic(idx in 0usize..100, val in any::<u8>(), cut in 0usize..100) {
        let base = hex::decode_fixture();
        let mut b = base.clone();
        let i = idx % b.len();
        b[i] = val;
        check(&b);
        check(&base[..cut.min(base.len())]);
    }
}

mod hex {
    /// OVS 3.1 PACKET_IN capture (see `openflow_codec.rs`).
    pub fn decode_fixture() -> Vec<u8> {
        let s = "040a006400000000ffffffff003a0100ffffffffffffffff0001000c80000004fffffffe00000000\
            000002000000000102000000000208004500002800010000400600000a000005c633641930390019000000000000\
            0000500220000000000000000000";
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }
}
