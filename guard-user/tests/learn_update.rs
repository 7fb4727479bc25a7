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

/// Two learners race on one entry (issue 11): both read the zone, both
/// decide a refresh. The first UPDATE applies; the second one's
/// prerequisite (the TXT RRset it read) fails, and `apply_owners` reads the
/// owner again and refreshes on what the first left: one TXT of ours, the
/// newest `seen`, never two. A foreign TXT beside it is named by the
/// prerequisites and left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_learners_leave_one_txt() {
    use guard_user::{
        learn::{
            live::Confirmed,
            push::{Refresh, refresh_edit},
        },
        rpz::{edit, meta::Evidence},
    };
    let ip: std::net::IpAddr = "198.51.100.25".parse().expect("ip");
    let p = Prefix::host(ip);
    let mut initial: AllowSet = [(p, Classes::SMTP)].into_iter().collect();
    initial.set_meta(p, EntryMeta::learned(100, 60, None));
    let named = Named::start(&NamedConfig { initial, serial: Some(5), ..Default::default() });
    let mut both = [AllowSet::new(), AllowSet::new()];
    let owner = guard_user::rpz::encode_owner(&p, ZONE);
    // A foreign TXT (somebody else's), then both learners read the zone.
    // Not UTF-8 in part: the prerequisites name it byte for byte.
    let foreign = vec![b"v=spf1 -all".to_vec(), vec![0xff, 0xfe]];
    let add_foreign =
        edit::OwnerEdit { prefix: p, prereqs: vec![], changes: vec![edit::Change::AddTxt(foreign.clone())] };
    edit::apply(named.addr, ZONE, &named.key, &add_foreign).await.expect("foreign TXT");
    for set in &mut both {
        *set = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR").set;
    }
    assert_eq!(both[0].txt(&p).len(), 2, "the mirror holds the foreign TXT too ({owner})");
    let conf = |at| Confirmed {
        classes: Classes::SMTP,
        evidence: Evidence {
            server: "192.0.2.53".parse().expect("ip"),
            qname: "mx.test.".into(),
            qtype: "MX".into(),
        },
        ttl: 300,
        at,
    };
    let write = |set: &AllowSet, at| match refresh_edit(set, ip, &conf(at), 1) {
        Refresh::Write(e) => e,
        other => panic!("a refresh is due: {other:?}"),
    };
    let rebuild = |at: u64| {
        move |q: &Prefix, fresh: &edit::OwnerRecords| match refresh_edit(
            &fresh.view(*q),
            q.addr(),
            &conf(at),
            1,
        ) {
            Refresh::Write(e) => Some(e),
            _ => None,
        }
    };
    let (first, second) = (write(&both[0], 200), write(&both[1], 300));
    let a = edit::apply_owners(named.addr, ZONE, &named.key, vec![first], rebuild(200)).await.expect("first");
    assert_eq!((a.done.len(), a.rereads, a.updates), (1, 0, 1), "{a:?}");
    // The second learner decided on the zone before the first one's UPDATE.
    let b =
        edit::apply_owners(named.addr, ZONE, &named.key, vec![second], rebuild(300)).await.expect("second");
    assert_eq!((b.done.len(), b.rereads, b.updates), (1, 1, 2), "failed once, read again, applied: {b:?}");
    let held = edit::read_owner(named.addr, ZONE, Some(&named.key), &p).await.expect("read");
    let ours: Vec<_> = held.txt.iter().filter_map(|t| EntryMeta::decode(t).ok()).collect();
    assert_eq!(ours.len(), 1, "one TXT of ours, not two: {held:?}");
    assert_eq!((ours[0].seen, ours[0].first), (Some(300), Some(100)), "the newest seen, first kept");
    assert!(held.txt.contains(&foreign), "the foreign TXT stays: {held:?}");
    // An older confirmation decided on a stale read: nothing left to do.
    let stale = write(&both[1], 250);
    let c = edit::apply_owners(named.addr, ZONE, &named.key, vec![stale], rebuild(250)).await.expect("third");
    assert_eq!((c.done.len(), c.dropped.len()), (0, 1), "{c:?}");
    let after = edit::read_owner(named.addr, ZONE, Some(&named.key), &p).await.expect("read");
    assert_eq!(after.txt.len(), 2, "{after:?}");
}
