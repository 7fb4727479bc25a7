//! Capture files (pcap, pcapng, anything else) read the way `rpz-guard
//! learn` reads them: ordering by first timestamp, then every packet into
//! the learner pipeline. A damaged file is a clear error or a counted
//! problem, never a panic or an unbounded allocation.
#![no_main]

use guard_user::learn::{
    Hints, Pipeline,
    capture::{Input, read_capture, resolve_inputs},
};
use libfuzzer_sys::fuzz_target;
use rpz_guard_fuzz::scratch_file;

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("capture");
    std::fs::write(&path, data).expect("write the scratch capture");
    // Ordering probe (reads the first packet only).
    let Ok(inputs) = resolve_inputs(std::slice::from_ref(&path)) else { return };
    assert_eq!(inputs, vec![Input::File(path.clone())]);
    let hints = Hints::root();
    let mut p = Pipeline::new(&hints, 10_000_000_000);
    let mut packets = 0u64;
    let mut consumed = 0u64;
    let mut problems = Vec::new();
    let result = read_capture(
        &inputs[0],
        &mut |ts, lt, frame| {
            packets += 1;
            p.packet(ts, lt, frame);
            true
        },
        &mut |why| problems.push(why),
        &mut |n| consumed += n,
    );
    assert!(result.is_ok(), "a file that passed the probe fails later: {result:?}");
    assert!(consumed <= data.len() as u64, "consumed {consumed} of {} bytes", data.len());
    for why in problems {
        p.count(why);
    }
    let (_, summary) = p.finish();
    assert_eq!(summary.packets, packets);
});
