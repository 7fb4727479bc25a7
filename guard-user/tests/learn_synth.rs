//! Learning on generated captures yields exactly the generator's expected set.
use std::time::Duration;

use guard_user::learn::{self, Hints, LearnOptions, synth};

#[test]
fn learning_a_generated_capture_yields_exactly_the_expected_set() {
    let dir = tempdir();
    let path = dir.join("synth.pcap");
    // Removed at the end; on failure it stays for inspection.
    let f = std::fs::File::create(&path).expect("create pcap");
    let expected = synth::generate(std::io::BufWriter::new(f), 3_000_000, 42).expect("generate");
    let out = learn::run(&LearnOptions {
        inputs: vec![path],
        hints: Hints::root(),
        window: Duration::from_secs(10),
        progress: false,
    })
    .expect("learn");
    let s = &out.summary;
    assert_eq!(s.packets, expected.packets);
    assert_eq!(s.malformed_total(), 0, "malformed: {:?}", s.malformed);
    let missing = expected.allow.diff(&out.allow);
    assert!(
        missing.is_empty(),
        "learned set differs: {} to add, {} to remove, e.g. {:?} {:?}",
        missing.upsert.len(),
        missing.remove.len(),
        missing.upsert.first(),
        missing.remove.first()
    );
    assert!(s.unmatched_responses > 0 && s.untrusted_responses > 0, "noise present: {s:?}");
    assert!(expected.allow.class_counts().1 > 10);
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rpz-learn-synth-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}
