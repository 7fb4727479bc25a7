//! The OpenFlow 1.3 decoder: arbitrary bytes never panic; whatever decodes
//! re-encodes to bytes that decode to the same message (decode ∘ encode is
//! the identity on decoded values), and an encoded message declares its
//! own length. The packet-in frame parser gets the same bytes.
#![no_main]

use guard_user::{
    frame as packet,
    openflow::codec::{Message, message_len},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = message_len(data);
    let _ = packet::parse(data);
    if let Ok(m) = Message::decode(data) {
        let bytes = m.encode();
        assert_eq!(message_len(&bytes), Some(bytes.len()), "encoded length field is wrong");
        let back =
            Message::decode(&bytes).unwrap_or_else(|e| panic!("re-encoded {m:?} does not decode: {e}"));
        assert_eq!(back, m, "decode(encode(m)) != m");
        // Encoding is a function of the value: a second round gives the same bytes.
        assert_eq!(back.encode(), bytes);
    }
});
