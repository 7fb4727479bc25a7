//! `rpz-guard learn --update`: the learned set reaches a real BIND 9 RPZ (on
//! loopback) by TSIG-signed UPDATE; a wrong key changes nothing and says
//! what BIND answered.
mod common;

use std::process::Command;

use common::{Named, NamedConfig, ZONE, tsig_keygen};
use guard_user::{
    learn::synth,
    policy::{AllowSet, Classes, Prefix},
    rpz::transfer,
};

fn learn_cmd(pcap: &std::path::Path, named: &Named, key_file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rpz-guard"))
        .args(["learn", "--quiet", "--zone", ZONE, "--update", &named.addr.to_string(), "--tsig-key"])
        .arg(key_file)
        .arg(pcap)
        .output()
        .expect("run rpz-guard learn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_entries_pushed_by_tsig_update() {
    // One entry is already in the zone; the push adds only what is missing.
    let pre = Prefix::host("198.41.0.4".parse().expect("ip"));
    let initial: AllowSet = [(pre, Classes::DNS)].into_iter().collect();
    let named = Named::start(&NamedConfig { initial, serial: Some(5), ..Default::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("g.pcap");
    let expected =
        synth::generate(std::io::BufWriter::new(std::fs::File::create(&pcap).expect("create")), 300_000, 9)
            .expect("generate");

    // A wrong key (same name, other secret): error naming BIND's answer, nothing applied.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, tsig_keygen("rpz-key")).expect("write key");
    let out = learn_cmd(&pcap, &named, &wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong key must fail");
    assert!(err.contains("BADSIG") || err.contains("NOTAUTH"), "{err}");
    let snap = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR");
    assert_eq!(snap.set.len(), 1, "nothing applied with a wrong key");

    let out = learn_cmd(&pcap, &named, &named.key_file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", named.log());
    let records: usize = expected.allow.iter().map(|(_, c)| c.rpz_answers().len()).sum();
    assert!(err.contains(&format!("added {} records", records - 1)), "{err}");
    let snap = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR after update");
    assert_eq!(snap.set, expected.allow);

    // Again: nothing left to add.
    let out = learn_cmd(&pcap, &named, &named.key_file);
    assert!(String::from_utf8_lossy(&out.stderr).contains("added 0 records"));
}
