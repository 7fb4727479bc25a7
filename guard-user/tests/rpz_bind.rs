//! The RPZ core against a real BIND 9 on loopback: UPDATE, AXFR, IXFR,
//! NOTIFY, SOA, TSIG failures, and the miss-path lookups in both styles.

mod common;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use common::{Named, NamedConfig, Netns, ZONE, free_port};
use guard_user::{
    policy::{AllowSet, Classes, Prefix},
    rpz::{
        lookup::{QueryStyle, RpzClient},
        notify::{NotifyConfig, listen_notify},
        transfer::{self, IxfrOutcome, SyncError},
        tsig::TsigKey,
        update::{self, UpdateError},
    },
};

fn p(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn set(entries: &[(&str, Classes)]) -> AllowSet {
    entries.iter().map(|(s, c)| (p(s), *c)).collect()
}

const BOTH: Classes = Classes::DNS.union(Classes::SMTP);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_then_axfr_ixfr_and_notify() {
    let notify_port = free_port();
    let mut listener = listen_notify(NotifyConfig {
        listen: ([127, 0, 0, 1], notify_port).into(),
        zone: ZONE.into(),
        allow_from: vec![p("127.0.0.0/8")],
        key: None,
        require_tsig: false,
        tcp_idle: Duration::from_secs(5),
        tcp_max_connections: 4,
        log_interval: Duration::from_secs(60),
    })
    .await
    .expect("NOTIFY listener binds");
    let initial = set(&[("192.0.2.1", Classes::DNS), ("192.0.2.2", Classes::SMTP)]);
    let named = Named::start(&NamedConfig {
        initial: initial.clone(),
        serial: Some(10),
        notify_port: Some(notify_port),
        ..Default::default()
    });
    let key = &named.key;
    // Startup may send a NOTIFY of the loaded zone; forget it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while listener.events.try_recv().is_ok() {}

    assert_eq!(transfer::soa_serial(named.addr, ZONE, Some(key)).await.expect("SOA"), 10);
    let snap = transfer::axfr(named.addr, ZONE, Some(key)).await.expect("AXFR");
    assert_eq!((snap.serial, &snap.set, snap.ignored.count), (10, &initial, 0));

    // 192.0.2.1 gains SMTP (one record), 192.0.2.2 is unchanged (one record
    // exists), two new hosts (one v4 with both classes, one v6), one prefix.
    let wanted = set(&[
        ("192.0.2.1", BOTH),
        ("192.0.2.2", Classes::SMTP),
        ("198.51.100.7", BOTH),
        ("2001:db8::25", Classes::SMTP),
        ("203.0.113.0/24", Classes::DNS),
    ]);
    let report = update::push_additions(named.addr, ZONE, key, &wanted).await.expect("UPDATE");
    assert_eq!((report.existing, report.added, report.batches, report.serial_before), (2, 5, 1, 10));
    let again = update::push_additions(named.addr, ZONE, key, &wanted).await.expect("second UPDATE");
    assert_eq!((again.existing, again.added, again.batches), (7, 0, 0), "nothing left to add");

    let ev = tokio::time::timeout(Duration::from_secs(5), listener.events.recv())
        .await
        .expect("a NOTIFY within 5 s of the UPDATE")
        .expect("listener open");
    assert!(ev.serial.is_some_and(|s| s > 10), "NOTIFY carries the new serial: {ev:?}");

    let after = transfer::axfr(named.addr, ZONE, Some(key)).await.expect("AXFR after UPDATE");
    assert_eq!(after.set, wanted);
    assert!(after.serial > 10);

    // IXFR from the loaded serial gives exactly the five additions.
    match transfer::ixfr(named.addr, ZONE, Some(key), 10, &initial).await.expect("IXFR") {
        IxfrOutcome::Incremental { serial, set, diff, .. } => {
            assert_eq!(serial, after.serial);
            assert_eq!(set, wanted);
            assert_eq!(diff.upsert.len(), 4, "{diff:?}");
            assert!(diff.remove.is_empty());
        }
        other => panic!("expected an incremental IXFR, got {other:?}\n{}", named.log()),
    }
    // A serial older than the journal: BIND answers AXFR-style.
    match transfer::ixfr(named.addr, ZONE, Some(key), 3, &AllowSet::new()).await.expect("IXFR from 3") {
        IxfrOutcome::Full(full) => assert_eq!((full.serial, &full.set), (after.serial, &after.set)),
        other => panic!("expected an AXFR-style IXFR, got {other:?}"),
    }
    let up = transfer::ixfr(named.addr, ZONE, Some(key), after.serial, &after.set).await.expect("IXFR");
    assert_eq!(up, IxfrOutcome::UpToDate { serial: after.serial });

    // A change made by the real nsupdate shows up as a delta.
    named.nsupdate(&format!(
        "update delete 192.0.2.2.{ZONE}. A 127.0.0.25\nupdate add 192.0.2.9.{ZONE}. 60 A 127.0.0.1"
    ));
    let delta = transfer::ixfr(named.addr, ZONE, Some(key), after.serial, &after.set).await.expect("IXFR");
    let IxfrOutcome::Incremental { set: new_set, diff, versions, .. } = delta else {
        panic!("expected an incremental IXFR, got {delta:?}");
    };
    assert_eq!(versions, 1);
    assert_eq!(diff.remove, vec![p("192.0.2.2")]);
    assert_eq!(diff.upsert, vec![(p("192.0.2.9"), Classes::DNS)]);
    let now = transfer::axfr(named.addr, ZONE, Some(key)).await.expect("AXFR");
    assert_eq!(new_set, now.set);
    // From the loaded serial, the deltas span both versions.
    match transfer::ixfr(named.addr, ZONE, Some(key), 10, &initial).await.expect("IXFR from 10") {
        IxfrOutcome::Incremental { serial, set, versions, .. } => {
            assert_eq!((serial, versions, &set), (now.serial, 2, &now.set));
        }
        other => panic!("expected an incremental IXFR, got {other:?}"),
    }

    // Removals push only what is there.
    let unwanted = set(&[("198.51.100.7", Classes::SMTP), ("192.0.2.200", Classes::DNS)]);
    let r = update::push_removals(named.addr, ZONE, key, &unwanted).await.expect("removal UPDATE");
    assert_eq!((r.removed, r.existing, r.batches), (1, 1, 1));
    let last = transfer::axfr(named.addr, ZONE, Some(key)).await.expect("AXFR");
    assert_eq!(last.set.get(&p("198.51.100.7")), Classes::DNS);

    // A general diff: the zone ends up exactly at the target.
    let target = set(&[("192.0.2.1", Classes::SMTP), ("198.51.100.7", Classes::DNS), ("192.0.2.44", BOTH)]);
    let r = update::push_diff(named.addr, ZONE, key, &last.set.diff(&target)).await.expect("diff UPDATE");
    let end = transfer::axfr(named.addr, ZONE, Some(key)).await.expect("AXFR");
    assert_eq!(end.set, target);
    assert_eq!(r.batches, 1);
    // Added: both classes of 192.0.2.44. Removed: DNS of 192.0.2.1, and the
    // records of 2001:db8::25, 203.0.113.0/24 and 192.0.2.9.
    assert_eq!((r.added, r.removed, r.existing), (2, 4, 0), "{r:?}");
    let no_op = update::push_diff(named.addr, ZONE, key, &end.set.diff(&target)).await.expect("empty diff");
    assert_eq!((no_op.batches, no_op.added, no_op.removed), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_key_is_refused_and_changes_nothing() {
    let named =
        Named::start(&NamedConfig { initial: set(&[("192.0.2.1", Classes::DNS)]), ..Default::default() });
    let good = &named.key;
    let mut wrong = good.clone();
    wrong.secret = vec![0x55; 32];
    let unknown = TsigKey { name: "no-such-key".into(), ..good.clone() };

    let e = transfer::axfr(named.addr, ZONE, Some(&wrong)).await.expect_err("AXFR with a wrong secret");
    let msg = e.to_string();
    eprintln!("wrong secret: {msg}");
    assert!(matches!(e, SyncError::Rejected { .. }), "{msg}");
    assert!(msg.contains("NOTAUTH") && msg.contains("BADSIG") && msg.contains("rpz-key"), "{msg}");

    let e = transfer::axfr(named.addr, ZONE, Some(&unknown)).await.expect_err("AXFR with an unknown key");
    eprintln!("unknown key: {e}");
    assert!(e.to_string().contains("BADKEY"), "{e}");

    let e = transfer::axfr(named.addr, ZONE, None).await.expect_err("AXFR without a key");
    assert!(e.to_string().contains("REFUSED"), "{e}");

    // A wrong key cannot even read the zone, so the push fails before any
    // UPDATE; an UPDATE signed with the wrong key is refused as well.
    let e = update::push_additions(named.addr, ZONE, &wrong, &set(&[("192.0.2.77", Classes::SMTP)]))
        .await
        .expect_err("push with a wrong key");
    eprintln!("push with wrong secret: {e}");
    assert!(e.to_string().contains("BADSIG"), "{e}");
    assert_eq!(e.committed().batches, 0);

    let serial = transfer::soa_serial(named.addr, ZONE, Some(good)).await.expect("SOA");
    assert_eq!(serial, 1, "nothing changed");
    let snap = transfer::axfr(named.addr, ZONE, Some(good)).await.expect("AXFR with the right key");
    assert_eq!(snap.set, set(&[("192.0.2.1", Classes::DNS)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_update_reports_the_rcode_and_what_was_committed() {
    // The key may update IPv4 host triggers but not rpz-ip names. Prefixes
    // sort IPv4 first, so the first batch (1000 hosts) commits and the
    // second (one IPv6 entry) is refused.
    let named = Named::start(&NamedConfig {
        update_rule: Some(format!(
            "update-policy {{ deny rpz-key subdomain rpz-ip.{ZONE}. ANY; grant rpz-key subdomain {ZONE}. ANY; }};"
        )),
        ..Default::default()
    });
    let mut wanted: AllowSet =
        (0..1000u32).map(|i| (Prefix::host(IpAddr::V4((0x0a00_0000 + i).into())), Classes::DNS)).collect();
    wanted.add(p("2001:db8::1"), Classes::SMTP);
    let e = update::push_additions(named.addr, ZONE, &named.key, &wanted)
        .await
        .expect_err("second batch refused");
    eprintln!("refused batch: {e}");
    let UpdateError::Sync { source, committed } = e else { panic!("unexpected error kind: {e}") };
    assert!(
        matches!(source, SyncError::Rejected { ref answer, op: "UPDATE", .. } if answer == "REFUSED"),
        "{source}"
    );
    assert_eq!((committed.batches, committed.added), (1, 1000));
    let snap = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR");
    assert_eq!(snap.set.len(), 1000);

    // A zone the server does not serve.
    let e = update::push_additions(named.addr, "not-served.example", &named.key, &wanted)
        .await
        .expect_err("zone not served");
    eprintln!("zone not served: {e}");
    assert!(e.to_string().contains("NOTAUTH"), "{e}");
}

async fn poll_classes(client: &RpzClient, addr: IpAddr, want: Classes) -> Classes {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = client.classes(addr).await.expect("lookup");
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_in_zone_and_paper_style() {
    let initial = set(&[
        ("192.0.2.53", Classes::DNS),
        ("192.0.2.25", Classes::SMTP),
        ("192.0.2.99", BOTH),
        ("2001:db8::25", Classes::SMTP),
    ]);
    let named = Named::start(&NamedConfig { initial, ..Default::default() });
    let t = Duration::from_millis(500);
    let zone = RpzClient::new(named.addr, ZONE, QueryStyle::Zone, t).await.expect("zone client");
    let paper = RpzClient::new(named.addr, ZONE, QueryStyle::Paper, t).await.expect("paper client");
    for (addr, want) in [
        ("192.0.2.53", Classes::DNS),
        ("192.0.2.25", Classes::SMTP),
        ("192.0.2.99", BOTH),
        ("203.0.113.1", Classes::NONE),
    ] {
        assert_eq!(zone.classes(ip(addr)).await.expect("zone lookup"), want, "zone style {addr}");
        assert_eq!(
            paper.classes(ip(addr)).await.expect("paper lookup"),
            want,
            "paper style {addr}\n{}",
            named.log()
        );
    }
    assert_eq!(zone.classes(ip("2001:db8::25")).await.expect("v6 lookup"), Classes::SMTP);
    // Cache lifetimes: the record TTL (60) and the negative TTL of the SOA.
    assert_eq!(zone.lookup(ip("192.0.2.53")).await.expect("lookup").ttl, 60);
    // BIND caps rewritten answers at max-policy-ttl (5 s by default).
    let ttl = paper.lookup(ip("192.0.2.53")).await.expect("lookup").ttl;
    assert!((1..=60).contains(&ttl), "paper-style TTL {ttl}");
    assert_eq!(zone.lookup(ip("203.0.113.1")).await.expect("lookup").ttl, 60);
    let ttl = paper.lookup(ip("203.0.113.1")).await.expect("lookup").ttl;
    assert!((1..=60).contains(&ttl), "paper-style negative TTL {ttl}");
    assert_eq!(zone.classes(ip("2001:db8::26")).await.expect("v6 lookup"), Classes::NONE);
    assert!(paper.classes(ip("2001:db8::25")).await.is_err(), "paper style cannot ask IPv6");

    // Concurrent lookups on one client.
    let addrs = ["192.0.2.53", "192.0.2.25", "203.0.113.1", "192.0.2.99"];
    let results = futures_join(&zone, &addrs).await;
    assert_eq!(results, vec![Classes::DNS, Classes::SMTP, Classes::NONE, BOTH]);

    // A new registration is seen by both styles (min-update-interval 0).
    update::push_additions(named.addr, ZONE, &named.key, &set(&[("203.0.113.1", Classes::SMTP)]))
        .await
        .expect("UPDATE");
    assert_eq!(zone.classes(ip("203.0.113.1")).await.expect("zone lookup"), Classes::SMTP);
    assert_eq!(poll_classes(&paper, ip("203.0.113.1"), Classes::SMTP).await, Classes::SMTP);

    // A dead server is a timeout error, not "not registered".
    let dead = RpzClient::new(([127, 0, 0, 1], free_port()).into(), ZONE, QueryStyle::Zone, t)
        .await
        .expect("client")
        .with_tries(2);
    assert!(dead.classes(ip("192.0.2.53")).await.is_err());
}

async fn futures_join(client: &RpzClient, addrs: &[&str]) -> Vec<Classes> {
    let (a, b, c, d) = tokio::join!(
        client.classes(ip(addrs[0])),
        client.classes(ip(addrs[1])),
        client.classes(ip(addrs[2])),
        client.classes(ip(addrs[3])),
    );
    [a, b, c, d].into_iter().map(|r| r.expect("concurrent lookup")).collect()
}

#[test]
fn named_runs_inside_a_test_namespace() {
    let ns = Netns::new(&format!("rpzb{}", std::process::id() % 100_000));
    let named = Named::start(&NamedConfig {
        initial: set(&[("192.0.2.53", Classes::DNS)]),
        netns: Some(ns.name.clone()),
        port: Some(53),
        ..Default::default()
    });
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "dig", "@127.0.0.1", "+short", "+norec", "A"])
        .arg(format!("192.0.2.53.{ZONE}"))
        .output()
        .expect("run dig in the namespace");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.0.0.1", "{}", named.log());
    drop(named);
}
