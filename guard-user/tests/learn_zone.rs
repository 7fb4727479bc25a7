//! The zone file written from a learned set loads in BIND's `named-checkzone`.
mod learn_common;

use std::process::Command;

use guard_user::{
    learn::synth,
    policy::{Classes, Prefix},
};

#[test]
fn learned_zone_passes_named_checkzone() {
    let dir = learn_common::tempdir("zone");
    let pcap = dir.join("g.pcap");
    let expected =
        synth::generate(std::io::BufWriter::new(std::fs::File::create(&pcap).expect("create")), 400_000, 3)
            .expect("generate");
    let zone = dir.join("rpz.db");
    let status = Command::new(env!("CARGO_BIN_EXE_rpz-guard"))
        .args(["learn", "--quiet", "--zone", "rpz.corp.test"])
        .arg(&pcap)
        .arg("--zone-file")
        .arg(&zone)
        .status()
        .expect("run rpz-guard");
    assert!(status.success());
    let check = Command::new("named-checkzone")
        .arg("rpz.corp.test")
        .arg(&zone)
        .output()
        .expect("named-checkzone must be installed (bind9-utils)");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "named-checkzone failed:\n{stdout}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(stdout.contains("OK"));
    // Every expected entry is in the file with its class answers.
    let text = std::fs::read_to_string(&zone).expect("zone");
    let (dns, smtp) = expected.allow.class_counts();
    assert_eq!(text.matches(" IN A 127.0.0.1\n").count(), dns);
    assert_eq!(text.matches(" IN A 127.0.0.25\n").count(), smtp);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ipv6_and_both_classes_pass_named_checkzone() {
    let dir = learn_common::tempdir("zone6");
    let mut set = guard_user::policy::AllowSet::new();
    for (a, c) in [
        ("2001:db8::1", Classes::DNS),
        ("2001:db8:0:1::25", Classes::SMTP),
        ("192.0.2.7", Classes::DNS.union(Classes::SMTP)),
        ("2001:503:ba3e::2:30", Classes::DNS),
    ] {
        set.add(Prefix::host(learn_common::ip(a)), c);
    }
    let zone = dir.join("rpz6.db");
    let mut f = std::fs::File::create(&zone).expect("create");
    guard_user::rpz::zonefile::write_zone(&set, "rpz.example.com", 2024010101, &mut f).expect("write");
    let check = Command::new("named-checkzone")
        .args(["rpz.example.com"])
        .arg(&zone)
        .output()
        .expect("named-checkzone must be installed (bind9-utils)");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let text = std::fs::read_to_string(&zone).expect("zone");
    let has = |owner: &str, a: &str| text.lines().any(|l| l.starts_with(owner) && l.ends_with(a));
    assert!(has("192.0.2.7.rpz.example.com. ", " IN A 127.0.0.1"), "{text}");
    assert!(has("192.0.2.7.rpz.example.com. ", " IN A 127.0.0.25"), "{text}");
    assert!(has("128.1.zz.db8.2001.rpz-ip.rpz.example.com. ", " IN A 127.0.0.1"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
