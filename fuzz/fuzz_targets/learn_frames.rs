//! The whole learner pipeline (link → IP → fragments / TCP streams → DNS →
//! matching → rules) over arbitrary frames of every supported link type.
//! Every frame is counted; the learned set never shrinks below the trusted
//! roots; the reassembly tables stay within their caps.
#![no_main]

use guard_user::learn::{Hints, Pipeline};
use libfuzzer_sys::fuzz_target;
use rpz_guard_fuzz::frames;

fuzz_target!(|data: &[u8]| {
    let hints = Hints::root();
    let mut p = Pipeline::new(&hints, 10_000_000_000);
    let frames = frames(data);
    for (ts, lt, f) in &frames {
        p.packet(*ts, *lt, f);
    }
    let _ = p.take_new_entries();
    let (set, summary) = p.finish();
    assert_eq!(summary.packets, frames.len() as u64, "every frame is counted");
    assert!(set.len() >= 26, "the trusted root servers are never lost");
});
