//! `rpz-guard learn --update`: the learned set reaches a real BIND 9 RPZ (on
//! loopback) by TSIG-signed UPDATE, each entry with the lifetime TXT live
//! learning writes (issue 11); an entry the zone holds gets its `seen`
//! refreshed by newer evidence (never moved back by older), a denied one is
//! never learned back, and the hint servers (trusted by configuration, not
//! learned) are never pushed, as in live learning; a wrong key changes
//! nothing and says what BIND answered.
mod common;

use std::process::Command;

use common::{Named, NamedConfig, ZONE, tsig_keygen};
use guard_user::{
    learn::{self, synth},
    policy::{AllowSet, Classes, Prefix},
    rpz::{
        meta::{EntryMeta, Source, unix_now},
        transfer,
    },
};

fn learn_cmd(pcap: &std::path::Path, named: &Named, key_file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rpz-guard"))
        .args(["learn", "--quiet", "--zone", ZONE, "--update", &named.addr.to_string(), "--tsig-key"])
        .arg(key_file)
        .arg(pcap)
        .output()
        .expect("run rpz-guard learn")
}

/// The allow entries of `set` (classes only, no lifetime state or denies).
fn classes(set: &AllowSet) -> Vec<(Prefix, Classes)> {
    set.iter().map(|(p, c)| (*p, *c)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_entries_pushed_by_tsig_update_with_their_lifetime_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("g.pcap");
    let expected =
        synth::generate(std::io::BufWriter::new(std::fs::File::create(&pcap).expect("create")), 300_000, 9)
            .expect("generate");
    // The evidence the capture holds for each address (what the TXT must say).
    let opts = learn::LearnOptions {
        inputs: vec![pcap.clone()],
        hints: learn::load_hints(None, &[]).expect("hints"),
        window: std::time::Duration::from_secs(10),
        progress: false,
    };
    let evidence = learn::run_with_evidence(&opts).expect("learn").confirmed;
    let mut smtp = expected
        .allow
        .iter()
        .filter(|(p, c)| c.contains(Classes::SMTP) && evidence.contains_key(&p.addr()))
        .map(|(p, c)| (*p, *c));
    let (stale, stale_c) = smtp.next().expect("an SMTP entry");
    let (fresh, fresh_c) = smtp.next().expect("a second SMTP entry");
    let (denied, _) = smtp.next().expect("a third SMTP entry");

    // The zone before: a root server without TXT (an older zone); an entry
    // confirmed long before the capture; one confirmed after it (now); a deny.
    let root = Prefix::host("198.41.0.4".parse().expect("ip"));
    let mut initial: AllowSet =
        [(root, Classes::DNS), (stale, stale_c), (fresh, fresh_c)].into_iter().collect();
    let stale_meta = EntryMeta { first: Some(1_600_000_000), ..EntryMeta::learned(1_600_000_100, 5, None) };
    initial.set_meta(stale, stale_meta);
    let now = unix_now();
    let fresh_meta = EntryMeta::learned(now, 7, None);
    initial.set_meta(fresh, fresh_meta.clone());
    initial.deny(denied);
    let named = Named::start(&NamedConfig { initial, serial: Some(5), ..Default::default() });

    // A wrong key (same name, other secret): error naming BIND's answer, nothing applied.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, tsig_keygen("rpz-key")).expect("write key");
    let out = learn_cmd(&pcap, &named, &wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong key must fail");
    assert!(err.contains("BADSIG") || err.contains("NOTAUTH"), "{err}");
    let snap = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR");
    assert_eq!(snap.set.len(), 3, "nothing applied with a wrong key");

    let out = learn_cmd(&pcap, &named, &named.key_file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", named.log());
    eprintln!("{err}");
    let records = |c: Classes| c.rpz_answers().len();
    // The hint servers the learner started from are not learned entries.
    let hints = learn::load_hints(None, &[]).expect("hints").addrs;
    let is_hint = |p: &Prefix| p.is_host() && hints.contains(&p.addr());
    let in_learned = expected.allow.iter().filter(|(p, _)| is_hint(p)).count();
    assert!(in_learned > 1, "the learned set holds the hints ({in_learned}): the test can fail");
    let held = records(stale_c) + records(fresh_c);
    let wanted: usize =
        expected.allow.iter().filter(|(p, _)| **p != denied && !is_hint(p)).map(|(_, c)| records(*c)).sum();
    assert!(err.contains(&format!("added {} records", wanted - held)), "{err}");
    // The stale entry; never the root server, even when the capture confirms it.
    assert!(
        err.contains(&format!("1 entries refreshed, 1 denied (left out), {in_learned} hint servers")),
        "{err}"
    );
    let snap = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR after update");
    let set = &snap.set;
    let mut want: AllowSet =
        expected.allow.iter().filter(|(p, _)| !is_hint(p)).map(|(p, c)| (*p, *c)).collect();
    want.remove(&denied, Classes::DNS.union(Classes::SMTP));
    // The root server the zone held before stays as it was.
    want.add(root, Classes::DNS);
    assert_eq!(classes(set), classes(&want));

    // Deny beats the learn: still a deny, no allow records beside it.
    assert!(set.is_denied(denied.addr()) && set.get(&denied).is_empty(), "{:?}", set.meta(&denied));

    // Every new entry carries the TXT live learning writes: learned, first =
    // seen = its newest answer's capture time, that answer's TTL and evidence.
    let mut checked = 0;
    for (p, _) in want.iter().filter(|(p, _)| ![root, stale, fresh].contains(p)) {
        let m = set.meta(p).unwrap_or_else(|| panic!("{p}: no lifetime TXT"));
        assert_eq!(m.source, Source::Learned, "{p}");
        assert_eq!(m.first, m.seen, "{p}: first learned = last confirmed");
        match evidence.get(&p.addr()) {
            Some(c) => {
                assert_eq!((m.seen, m.ttl), (Some(c.at), Some(c.ttl)), "{p}");
                assert_eq!(m.evidence.as_ref(), Some(&c.evidence), "{p}");
                // The synthetic capture starts at 1_700_000_000 s and lasts minutes.
                assert!((1_700_000_000..1_700_100_000).contains(&c.at), "{p}: capture time {}", c.at);
                checked += 1;
            }
            // Without an answer of its own: stamped at the push.
            None => assert!(m.seen.is_some_and(|s| s >= now), "{p}: {m:?}"),
        }
    }
    assert!(checked > 10, "only {checked} entries with evidence");
    // Re-confirmed: `seen` moves to the capture's answer, `first` stays.
    let c = &evidence[&stale.addr()];
    let m = set.meta(&stale).expect("stale TXT");
    assert_eq!((m.first, m.seen, m.ttl), (Some(1_600_000_000), Some(c.at), Some(c.ttl)));
    assert_eq!(m.evidence.as_ref(), Some(&c.evidence));
    // Confirmed after the capture: older evidence does not move it back.
    assert_eq!(set.meta(&fresh), Some(&fresh_meta));
    // The older zone's root server (no TXT) is a hint: left alone.
    assert_eq!(set.meta(&root), None);

    // Again: nothing left to add, nothing newer to refresh.
    let out = learn_cmd(&pcap, &named, &named.key_file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("added 0 records in 0 UPDATEs") && err.contains("0 entries refreshed"), "{err}");
    let again = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR");
    assert_eq!(again.serial, snap.serial, "no UPDATE at all");
}
