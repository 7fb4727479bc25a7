//! The learner's zero-copy DNS reader against hickory-proto: whenever both
//! accept a message they must agree on the header, the question and every
//! record the learning rules read (owner, type, A/AAAA/NS/CNAME/MX data).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpz_guard_fuzz::learn_common::{hickory_facts, our_facts};

fuzz_target!(|data: &[u8]| {
    let ours = our_facts(data);
    if let (Some(ours), Ok(h)) = (ours, hickory_proto::op::Message::from_vec(data)) {
        assert_eq!(ours, hickory_facts(&h), "the DNS reader and hickory-proto disagree");
    }
});
