//! Privileged: the interop matrix. Each supported RPZ primary (BIND 9,
//! Knot DNS, PowerDNS Authoritative with gsqlite3) is started for real in
//! the lab's `dns` namespace (`guard_tests::primary`), and for each:
//!
//! * `rpz-guard learn --update` with a wrong TSIG key is refused with an
//!   error naming the server's answer and the key; with the right key it
//!   adds the learned records;
//! * AXFR in several TSIG-signed messages, "up to date" as one SOA, IXFR
//!   from an older serial as deltas (BIND, Knot) or as the whole zone
//!   (PowerDNS, RFC 1995 section 4);
//! * `rpz-guard run` with a wrong key stops at start with a clear error;
//! * with the right key the daemon (XDP mode) transfers the zone, the
//!   primary's NOTIFY arrives (over TCP from Knot, UDP from the others)
//!   and is accepted with its TSIG, IXFR (or PowerDNS's whole-zone answer,
//!   applied as a diff) follows, status says how each change was learned;
//! * the miss path's zone query gets answers from the primary;
//! * add → enforced and delete → blocked lags are measured and bounded;
//! * a NOTIFY signed with a wrong key is refused and counted.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use guard_tests::{Lab, LabAddrs, LabConfig, Primary, PrimaryKind, Role};
use guard_user::{
    learn::synth,
    policy::{AllowSet, Classes, Prefix},
    rpz::{
        lookup::{QueryStyle, RpzClient},
        transfer::{self, IxfrOutcome},
        tsig::TsigKey,
        update,
    },
    sync::LearnedVia,
};

mod daemon_support;

use daemon_support::{BIN, Conn, ZONE, connect, eventually, rpz_add, rpz_delete, start_xdp};

const PROBE: Duration = Duration::from_millis(100);

/// A key with the lab key's name and another secret.
fn write_wrong_key(path: &Path) {
    fs::write(
        path,
        "key \"rpz-guard-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE=\";\n};\n",
    )
    .expect("write wrong key");
}

fn learn_update(lab: &Lab, pcap: &Path, key: &Path) -> (bool, String) {
    let server = SocketAddr::from((lab.addrs().dns_v4, 53)).to_string();
    let out = lab
        .exec(
            Role::Router,
            &[
                BIN,
                "learn",
                "--quiet",
                "--zone",
                ZONE,
                "--update",
                &server,
                "--tsig-key",
                key.to_str().expect("utf-8"),
                pcap.to_str().expect("utf-8"),
            ],
        )
        .expect("run rpz-guard learn");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `rpz-guard run` with `key` must stop by itself; returns its log.
fn run_must_fail(lab: &Lab, key: &Path) -> String {
    let a = lab.addrs();
    let server = format!("{}:53", a.dns_v4);
    let socket = lab.state_dir().join("wrong-key.sock");
    let mut child = lab
        .spawn(
            Role::Router,
            &[
                BIN,
                "run",
                "--iface",
                lab.router_inside_iface(),
                "--server",
                &server,
                "--tsig-key",
                key.to_str().expect("utf-8"),
                "--events",
                "none",
                "--status-socket",
                socket.to_str().expect("utf-8"),
                "--no-snapshot",
            ],
        )
        .expect("spawn");
    let stopped = eventually(Duration::from_secs(20), || !child.is_running());
    assert!(stopped.is_some(), "rpz-guard with a wrong key kept running:\n{}", child.log());
    let status = child.child().wait().expect("wait");
    assert!(!status.success(), "a wrong key must fail the start");
    child.log()
}

/// A NOTIFY for the zone signed with `key` (with the SOA `serial` when
/// given), sent over TCP from the `dns` namespace to the daemon; returns
/// the answer's rcode name.
fn notify_over_tcp(lab: &Lab, key: &TsigKey, serial: Option<u32>) -> String {
    use hickory_proto::{
        op::{Message, OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata::SOA},
    };
    use std::io::{Read, Write};
    let zone = Name::from_ascii(format!("{ZONE}.")).expect("zone");
    let mut m = Message::new();
    m.set_id(777).set_op_code(OpCode::Notify).set_authoritative(true);
    m.add_query(Query::query(zone.clone(), RecordType::SOA));
    if let Some(serial) = serial {
        let soa = SOA::new(zone.clone(), zone.clone(), serial, 1, 1, 1, 1);
        m.add_answer(Record::from_rdata(zone, 60, RData::SOA(soa)));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    m.finalize(&key.signer().expect("signer"), u32::try_from(now).expect("time")).expect("sign");
    let bytes = m.to_vec().expect("encode");
    let to = SocketAddr::from((lab.addrs().router_in_v4, lab.notify_port()));
    let mut s =
        lab.tcp_connect(Role::Dns, to, Duration::from_secs(2)).expect("connect to the NOTIFY listener");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut framed = u16::try_from(bytes.len()).expect("len").to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    s.write_all(&framed).expect("write");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("answer length");
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).expect("answer");
    let answer = Message::from_vec(&buf).expect("answer decodes");
    format!("{:?}", answer.response_code())
}

/// Pushes `bulk` by UPDATE, then checks the transfers of the real server:
/// AXFR in several messages (each TSIG-verified), "up to date" as a single
/// SOA, and IXFR from the older serial: deltas (BIND, Knot) or the whole
/// zone (PowerDNS), either way the same set.
async fn transfers(
    kind: PrimaryKind,
    server: SocketAddr,
    key: &TsigKey,
    bulk: &AllowSet,
    all: &AllowSet,
) -> String {
    let name = kind.product();
    let before =
        transfer::axfr(server, ZONE, Some(key)).await.unwrap_or_else(|e| panic!("{name}: AXFR: {e}"));
    // The learned entries carry their lifetime TXT: `all` with that state.
    let mut want = before.set.clone();
    for (p, c) in bulk.iter() {
        want.add(*p, *c);
    }
    assert!(want.iter().eq(all.iter()), "{name}: the learned entries and the bulk");
    let all = &want;
    let report = update::push_additions(server, ZONE, key, bulk)
        .await
        .unwrap_or_else(|e| panic!("{name}: UPDATE: {e}"));
    assert_eq!(report.added, bulk.len(), "{name}: {report:?}");
    let after = transfer::axfr(server, ZONE, Some(key)).await.unwrap_or_else(|e| panic!("{name}: AXFR: {e}"));
    assert_eq!(&after.set, all, "{name}: AXFR after the UPDATEs");
    assert!(after.messages > 1, "{name}: {} entries in {} message(s)", all.len(), after.messages);
    let same = transfer::ixfr(server, ZONE, Some(key), after.serial, &after.set)
        .await
        .unwrap_or_else(|e| panic!("{name}: IXFR at the current serial: {e}"));
    assert_eq!(same, IxfrOutcome::UpToDate { serial: after.serial }, "{name}");
    let outcome = transfer::ixfr(server, ZONE, Some(key), before.serial, &before.set)
        .await
        .unwrap_or_else(|e| panic!("{name}: IXFR from {}: {e}", before.serial));
    let how = match &outcome {
        IxfrOutcome::Incremental { set, diff, versions, .. } => {
            assert_eq!(set, all, "{name}: deltas applied");
            assert_eq!((diff.upsert.len(), diff.remove.len()), (bulk.len(), 0), "{name}");
            format!("IXFR as deltas ({versions} versions)")
        }
        IxfrOutcome::Full(snap) => {
            assert_eq!(&snap.set, all, "{name}: whole zone");
            format!("IXFR answered with the whole zone in {} messages", snap.messages)
        }
        IxfrOutcome::UpToDate { .. } => panic!("{name}: IXFR from an older serial said up to date"),
    };
    assert_eq!(
        matches!(outcome, IxfrOutcome::Full(_)),
        kind == PrimaryKind::Pdns,
        "{name}: only PowerDNS answers IXFR with the whole zone"
    );
    format!(
        "AXFR of {} entries in {} TSIG-signed messages; up to date = one SOA; {how}",
        after.set.len(),
        after.messages
    )
}

/// Connect from the pc until `want` (`Open` or `TimedOut`), at most `within`.
fn until(lab: &Lab, dst: SocketAddr, want: Conn, within: Duration) -> Option<Duration> {
    eventually(within, || connect(lab, Role::Pc, dst, PROBE) == want)
}

fn matrix(kind: PrimaryKind) {
    let name = kind.product();
    let started = Instant::now();
    let phase = |what: &str| eprintln!("{name}: {:>6.1} s  {what}", started.elapsed().as_secs_f64());
    let lab = Lab::up(LabConfig::for_test(kind.name()).bind(kind == PrimaryKind::Bind))
        .unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let primary = Primary::start(&lab, kind).unwrap_or_else(|e| panic!("{name} did not start: {e}"));
    let dir = lab.state_dir().join("interop");
    fs::create_dir_all(&dir).expect("dir");

    phase("primary started");
    // learn --update: a wrong key is refused with a clear error, the right one adds.
    let pcap = dir.join("learn.pcap");
    let mut expected =
        synth::generate(std::io::BufWriter::new(fs::File::create(&pcap).expect("create")), 40_000, 16)
            .expect("generate capture");
    // The built-in root hints are learned (trusted by configuration) but
    // never pushed: what reaches the zone is the rest.
    let hints = guard_user::learn::load_hints(None, &[]).expect("built-in hints");
    let roots =
        hints.addrs.iter().filter(|ip| expected.allow.remove(&Prefix::host(**ip), Classes::DNS)).count();
    assert!(roots > 0, "the capture teaches the root servers too");
    assert!(!expected.allow.is_empty());
    let wrong = dir.join("wrong.key");
    write_wrong_key(&wrong);
    let (ok, err) = learn_update(&lab, &pcap, &wrong);
    assert!(!ok, "{name}: learn --update with a wrong key must fail");
    assert!(
        err.contains("key rpz-guard-key")
            && ["NOTAUTH", "REFUSED", "BADSIG", "BADKEY"].iter().any(|w| err.contains(w)),
        "{name}: the error must name the server's answer and the key: {err}"
    );
    eprintln!("{name}: learn --update with a wrong key: {}", err.trim());
    let (ok, err) = learn_update(&lab, &pcap, &lab.tsig_key_file());
    assert!(ok, "{name}: learn --update failed: {err}\n{}", primary.log());
    let records: usize = expected.allow.iter().map(|(_, c)| c.rpz_answers().len()).sum();
    assert!(err.contains(&format!("added {records} records")), "{name}: {err}");
    assert!(err.contains(&format!("{roots} hint servers (trusted, never pushed)")), "{name}: {err}");

    phase("learn --update done");
    // A zone big enough for multi-message transfers: 5000 more entries by
    // TSIG UPDATE (batches of 1000), then the transfers against the real server.
    let bulk: AllowSet = (0..5000u32)
        .map(|i| (Prefix::host(IpAddr::V4(Ipv4Addr::from(0xc633_0000 + i))), Classes::DNS))
        .collect(); // 198.51.0.0/16 hosts (never contacted in the lab)
    let mut all = expected.allow.clone();
    for (p, c) in bulk.iter() {
        all.add(*p, *c);
    }
    let server = SocketAddr::from((lab.addrs().dns_v4, 53));
    let key = TsigKey::from_file(&lab.tsig_key_file()).expect("lab key");
    let checks = {
        let (all, key) = (all.clone(), key.clone());
        lab.run_in(Role::Router, move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(transfers(kind, server, &key, &bulk, &all))
        })
        .expect("netns")
    };
    eprintln!("{name}: {checks}");

    phase("transfers checked");
    // The daemon with a wrong key stops at start and says why.
    let log = run_must_fail(&lab, &wrong);
    assert!(
        log.contains("cannot load the allow set") && log.contains("key rpz-guard-key"),
        "{name}: unclear start error:\n{log}"
    );

    phase("wrong-key start refused");
    // The daemon with the right key; a slow poll that never speeds up, so
    // changes arrive by NOTIFY (the default polls fast after a NOTIFY and
    // may find a change before a slow primary's NOTIFY: see the bench).
    let conf = dir.join("notify-only.toml");
    fs::write(&conf, "[rpz]\npoll_interval_secs = 30\npoll_fast_for_secs = 0\n").expect("write config");
    let d = start_xdp(&lab, &["--config", conf.to_str().expect("utf-8")]);
    let st = d.wait_loaded();
    assert_eq!(st.entries.0, all.len(), "{name}: the AXFR brought the whole zone");

    phase("daemon up");
    // The miss path asks the primary: unregistered → blocked, answered (no error).
    let new_mx = IpAddr::V4(LabAddrs::inet_v4(77));
    let smtp = SocketAddr::new(new_mx, 25);
    assert_eq!(connect(&lab, Role::Pc, smtp, Duration::from_millis(1500)), Conn::TimedOut);
    let st = d.status();
    assert!(st.miss.lookups >= 1 && st.miss.errors == 0, "{name}: miss path: {:?}", st.miss);
    // The same question the miss path asks, for a registered entry.
    let (known, classes) = expected.allow.iter().next().map(|(p, c)| (*p, *c)).expect("an entry");
    let got = lab
        .run_in(Role::Router, move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let c = RpzClient::new(server, ZONE, QueryStyle::Zone, Duration::from_millis(500)).await?;
                c.classes(known.addr()).await.map_err(|e| std::io::Error::other(e.to_string()))
            })
        })
        .expect("netns")
        .unwrap_or_else(|e| panic!("{name}: zone query: {e}"));
    assert_eq!(got, classes, "{name}: the miss path's zone query reads the entry");

    phase("miss path checked");
    // add → enforced (the destination is negative-cached now: only the
    // sync can let it through early).
    let t = Instant::now();
    rpz_add(&lab, new_mx, "127.0.0.25");
    until(&lab, smtp, Conn::Open, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{name}: added entry not enforced within 10 s\n{}", d.log()));
    let add_lag = t.elapsed();
    let st = d.status();
    let last = st.sync.changes.last().cloned().expect("a change recorded");
    let via = if kind == PrimaryKind::Knot { LearnedVia::NotifyTcp } else { LearnedVia::NotifyUdp };
    assert_eq!(last.via, via, "{name}: the change came by NOTIFY: {:?}", st.sync.changes);
    let notify = st.sync.notify.counters();
    let accepted = if kind == PrimaryKind::Knot { notify.tcp.accepted } else { notify.udp.accepted };
    assert!(accepted >= 1, "{name}: NOTIFY accepted: {notify:?}");
    assert_eq!(notify.rejected.get("tsig"), Some(&0), "{name}: the primary's NOTIFY is signed and verifies");
    // PowerDNS answers IXFR with the whole zone; it must still be applied as a diff.
    assert_eq!((last.upserts, last.removals), (1, 0), "{name}: applied as a diff: {last:?}");
    assert_eq!(
        last.full,
        kind == PrimaryKind::Pdns,
        "{name}: IXFR answered incrementally (or in full by PowerDNS): {last:?}"
    );

    phase("add enforced");
    // delete → blocked.
    let t = Instant::now();
    rpz_delete(&lab, new_mx);
    until(&lab, smtp, Conn::TimedOut, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{name}: deleted entry still passing after 10 s\n{}", d.log()));
    let delete_lag = t.elapsed();
    eprintln!("{name}: add → enforced {add_lag:?}, delete → blocked {delete_lag:?}");
    for c in &d.status().sync.changes {
        eprintln!("{name}:   change {c:?}");
    }
    // Measured in the lab: BIND and Knot well under 1 s; PowerDNS within
    // its 1 s xfr-cycle-interval plus the probe's own timeout.
    let bound = Duration::from_millis(2500);
    assert!(add_lag < bound && delete_lag < bound, "{name}: lags {add_lag:?} / {delete_lag:?}");
    let st = d.status();
    let last = st.sync.changes.last().cloned().expect("a change recorded");
    assert_eq!((last.upserts, last.removals), (0, 1), "{name}: {last:?}");

    // A NOTIFY signed with a wrong key: NOTAUTH, counted, nothing else changes.
    let wrong_key = TsigKey::from_file(&wrong).expect("wrong key parses");
    assert_eq!(notify_over_tcp(&lab, &wrong_key, None), "NotAuth", "{name}");
    let notify = d.status().sync.notify.counters();
    assert_eq!(notify.rejected.get("tsig"), Some(&1), "{name}: {notify:?}");
    assert_eq!(d.status().entries.0, all.len(), "{name}");
    // With the right key over TCP (whatever the primary uses): accepted; one
    // that carries the serial in force leads to no transfer.
    let right = TsigKey::from_file(&lab.tsig_key_file()).expect("key");
    let serial = d.status().sync.serial.expect("serial in force");
    let polls = d.status().sync.polls;
    assert_eq!(notify_over_tcp(&lab, &right, Some(serial)), "NoError", "{name}");
    eventually(Duration::from_secs(2), || d.status().sync.notify.counters().not_newer >= 1).unwrap_or_else(
        || panic!("{name}: the NOTIFY with the serial in force was not counted as not newer"),
    );
    assert_eq!(d.status().sync.polls, polls, "{name}: no SOA query for a NOTIFY that is not newer");
    assert_eq!(notify_over_tcp(&lab, &right, None), "NoError", "{name}");
    // The counters in Prometheus text too.
    let text = daemon_support::metrics(&d);
    for want in [
        "rpz_guard_notify_accepted_total{transport=\"tcp\"}",
        "rpz_guard_notify_rejected_total{reason=\"tsig\"} 1",
        "rpz_guard_sync_changes_total{via=\"notify-",
    ] {
        assert!(text.contains(want), "{name}: metrics lack {want}:\n{text}");
    }
    // And in `rpz-guard status`.
    let out =
        std::process::Command::new(BIN).args(["status", "--socket"]).arg(&d.socket).output().expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["notify     udp", "NOTIFY REFUSED tsig 1", "learned    notify-udp", "+0 -1"] {
        assert!(text.contains(want), "{name}: status lacks {want:?}:\n{text}");
    }
    drop(d);
    drop(primary);
}

#[test]
fn bind9() {
    matrix(PrimaryKind::Bind);
}

#[test]
fn knot_dns() {
    matrix(PrimaryKind::Knot);
}

#[test]
fn powerdns_gsqlite3() {
    matrix(PrimaryKind::Pdns);
}
