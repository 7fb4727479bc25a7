//! Privileged: fail closed from the first second (issue 17) and on a crash
//! (issue 13), with `rpz-guard run` in XDP mode on the lab router, the
//! lab's real BIND as primary, and continuous probers: a bot asking an
//! unregistered DNS server every few ms (every answer is a packet that got
//! through) and, where it matters, a client connecting to a registered mail
//! server (every failure is a legitimate connection lost).
//!
//! Cases: the primary down at first start without a snapshot
//! (deny-protected) and with one (enforced at once, caught up by IXFR from
//! its serial when the primary returns); corrupt, truncated and foreign
//! snapshots (refused with one log line, start as if none); a 1M-entry
//! start; a restart and a SIGKILL with the default config (pinned on the
//! host's bpffs).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use guard_tests::{Lab, LabAddrs, LabChild, LabConfig, Role, probe::Prober};
use guard_user::{
    daemon::StatusReport,
    events::Reason,
    policy::{AllowSet, Classes, Prefix},
    rpz::snapshot,
};

mod daemon_support;

use daemon_support::{BIN, Daemon, Pins, ZONE, eventually, lab_bind_args, pinned_set, rpz_add, state_dir};

/// How often the bot asks.
const PROBE_EVERY: Duration = Duration::from_millis(10);

fn up(name: &str) -> Lab {
    Lab::up(LabConfig::for_test(name)).unwrap_or_else(|e| panic!("lab up failed: {e}"))
}

/// The usual XDP flags for the lab router (exempt resolver, internal lan).
fn xdp_args(lab: &Lab) -> Vec<String> {
    let a = lab.addrs();
    let mut v: Vec<String> = [
        "--iface",
        lab.router_inside_iface(),
        "--exempt",
        &format!("{}/32", a.dns_v4),
        "--internal",
        &format!("10.{}.0.0/16", a.subnet),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.extend(lab_bind_args(lab));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `--server` pointing at a port where nothing listens: the primary is down.
fn dead_server(lab: &Lab, v: &mut [String]) {
    let i = v.iter().position(|a| a == "--server").expect("--server");
    v[i + 1] = SocketAddr::new(IpAddr::V4(lab.addrs().dns_v4), 5399).to_string();
}

/// The bot asking an unregistered DNS server.
fn bot_prober(lab: &Lab) -> Prober {
    let rogue = SocketAddr::new(IpAddr::V4(LabAddrs::inet_v4(99)), 53);
    Prober::dns(lab, Role::Bot, rogue, PROBE_EVERY).expect("bot prober")
}

fn counter(r: &StatusReport, name: &str) -> u64 {
    r.counters.iter().find(|(k, _)| k == name).map_or(0, |c| c.1)
}

fn smtp_open(lab: &Lab, ip: IpAddr) -> bool {
    lab.tcp_connect(Role::Pc, SocketAddr::new(ip, 25), Duration::from_millis(1500)).is_ok()
}

/// Waits until `log()` contains `needle`; returns when it was first seen.
fn seen_in_log(d: &Daemon, needle: &str, within: Duration) -> Instant {
    eventually(within, || d.log().contains(needle))
        .unwrap_or_else(|| panic!("log lacks {needle:?}:\n{}", d.log()));
    Instant::now()
}

/// The lab's named: its pid from the lab's pid files.
fn named_pid(lab: &Lab) -> Option<i32> {
    std::fs::read_dir(lab.state_dir().join("pids"))
        .ok()?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .find(|l| l.trim_end().ends_with(" named"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

/// Ends the lab's named (a process the lab started) and waits until it is gone.
fn stop_named(lab: &Lab) {
    let pid = named_pid(lab).expect("named pid recorded by the lab");
    // SAFETY: kill(2) on a pid the lab started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // Gone, or a zombie the lab reaps later.
    let ended = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
    };
    eventually(Duration::from_secs(10), ended).expect("named ended");
}

/// Starts named again on the lab's config (zone file and journal kept).
fn start_named(lab: &Lab) -> LabChild {
    let conf = lab.state_dir().join("bind/named.conf");
    let conf = conf.to_str().expect("utf-8");
    let child = lab.spawn(Role::Dns, &["named", "-g", "-n", "1", "-c", conf]).expect("spawn named");
    let dns = SocketAddr::new(IpAddr::V4(lab.addrs().dns_v4), 53);
    guard_tests::wait_for_udp_dns(&lab.ns(Role::Dns), dns, Duration::from_secs(15)).expect("named answers");
    child
}

/// A primary that accepts TCP connections and never answers, as a BIND
/// busy loading a big zone can: a listener in the lab's dns namespace that
/// never accepts (the kernel completes the handshakes into its backlog).
/// Closed on drop.
struct SilentPrimary {
    _listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl SilentPrimary {
    fn start(lab: &Lab) -> SilentPrimary {
        let addr = SocketAddr::new(IpAddr::V4(lab.addrs().dns_v4), 5398);
        let listener = lab
            .run_in(Role::Dns, move || std::net::TcpListener::bind(addr))
            .expect("dns namespace")
            .expect("bind the silent primary");
        SilentPrimary { _listener: listener, addr }
    }
}

/// XDP flags with `--server` at `primary`, unpinned, metrics on `metrics`.
fn args_with_primary(lab: &Lab, primary: SocketAddr, metrics: SocketAddr) -> Vec<String> {
    let mut v = xdp_args(lab);
    let i = v.iter().position(|a| a == "--server").expect("--server");
    v[i + 1] = primary.to_string();
    v.extend(["--no-pin".to_owned(), "--metrics-listen".to_owned(), metrics.to_string()]);
    v
}

/// Status and metrics are served from the first second, while the first
/// sync is still under way (the primary accepts and does not answer; the
/// SOA bound is set to its 30 s maximum so the sync stays open): they show
/// "waiting for the primary since …" and deny-protected mode, and the bot
/// gets no answer meanwhile.
#[test]
fn status_and_metrics_served_before_the_first_sync() {
    let lab = up("fcearly");
    let silent = SilentPrimary::start(&lab);
    let metrics_at: SocketAddr = "127.0.0.1:9467".parse().expect("addr");
    let config = lab.state_dir().join("fcearly.toml");
    std::fs::write(&config, "[rpz]\nsoa_timeout_ms = 30000\n").expect("config");
    let mut args = args_with_primary(&lab, silent.addr, metrics_at);
    args.extend(["--config".to_owned(), config.display().to_string()]);
    let bot = bot_prober(&lab);
    let t0 = Instant::now();
    let d = Daemon::start(&lab, "fcearly", &refs(&args));
    let st = d.status();
    let text = status_text(&d);
    let metrics = daemon_support::metrics_http(&lab, metrics_at);
    let read_after = t0.elapsed();
    let attached = seen_in_log(&d, "XDP program attached", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let answered = bot.answered_sent_after(attached);
    eprintln!("status and metrics read {read_after:?} after start; sync {:?}", st.sync);
    assert!(read_after < Duration::from_secs(25), "the reads must fall inside the open first sync");
    assert!(
        st.sync.last_sync_ms.is_none() && st.sync.last_error.is_none(),
        "first sync under way: {:?}",
        st.sync
    );
    assert!(st.sync.waiting_since_ms.is_some() && st.sync.deny_protected, "{:?}", st.sync);
    assert!(!st.point.is_empty(), "the enforcement point is up: {}", st.point);
    assert!(
        text.contains("waiting for the primary since") && text.contains("first transfer under way"),
        "{text}"
    );
    assert!(text.contains("DENY-PROTECTED"), "{text}");
    for line in [
        "rpz_guard_waiting_for_primary 1",
        "rpz_guard_deny_protected 1",
        "rpz_guard_entries{class=\"any\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l.trim() == line), "metrics lack {line:?}:\n{metrics}");
    }
    let t = bot.stop();
    // Answers before the attach are the router forwarding with no program yet.
    eprintln!("bot: {t:?}, answered after attach {answered}");
    assert!(t.sent > 20, "{t:?}");
    assert_eq!(answered, 0, "no bot query answered while waiting for the primary");
}

/// An SOA query to a primary that accepts and does not answer (BIND still
/// loading a big zone) gives up after `rpz.soa_timeout_ms` (3 s by
/// default), not after a transfer's 30 s message timeout, and is retried
/// with backoff; the daemon stays deny-protected meanwhile.
#[test]
fn soa_query_to_a_silent_primary_gives_up_in_seconds() {
    let lab = up("fcsoa");
    let silent = SilentPrimary::start(&lab);
    let args = args_with_primary(&lab, silent.addr, "127.0.0.1:9468".parse().expect("addr"));
    let t0 = Instant::now();
    let d = Daemon::start(&lab, "fcsoa", &refs(&args));
    let st = d.wait_first_sync();
    let took = t0.elapsed();
    eprintln!("first SOA query gave up after {took:?}: {:?}", st.sync.last_error);
    let err = st.sync.last_error.clone().unwrap_or_default();
    assert!(err.contains("SOA query") && err.contains("no answer within 3000 ms"), "{err}");
    // 3 s plus start-up on a loaded machine; a 30 s bound cannot pass.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(st.sync.deny_protected && st.sync.last_sync_ms.is_none(), "{:?}", st.sync);
    assert!(status_text(&d).contains("waiting for the primary since"), "{}", status_text(&d));
    // Retried: the error time moves on.
    let first = st.sync.last_error_ms;
    eventually(Duration::from_secs(20), || d.status().sync.last_error_ms > first)
        .unwrap_or_else(|| panic!("not retried; log:\n{}", d.log()));
}

/// The primary is down at the very first start (no snapshot, no pins):
/// the daemon stays up in deny-protected mode, the bot gets no answer,
/// drops are counted and reported as rate-limited `not_loaded` events,
/// status says it is waiting for the primary; exempt sources still pass.
#[test]
fn primary_down_at_first_start_without_snapshot() {
    let lab = up("fcnos");
    rpz_add(&lab, IpAddr::V4(LabAddrs::inet_v4(25)), "127.0.0.25");
    let mut args = xdp_args(&lab);
    dead_server(&lab, &mut args);
    args.push("--no-pin".into());
    let bot = bot_prober(&lab);
    let mut d = Daemon::start(&lab, "fcnos", &refs(&args));
    let attached = seen_in_log(&d, "XDP program attached", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    assert!(d.is_running(), "the daemon stays up with the primary down");
    let st = d.status();
    assert!(st.sync.deny_protected, "deny-protected: {:?}", st.sync);
    assert!(st.sync.started_from.as_deref().is_some_and(|s| s.contains("deny-protected")), "{:?}", st.sync);
    assert!(st.sync.last_error.as_deref().is_some_and(|e| e.contains("5399")), "{:?}", st.sync);
    assert!(st.sync.failing_since_ms.is_some(), "status says since when it waits");
    let rendered = Command::new(BIN).args(["status", "--socket"]).arg(&d.socket).output().expect("status");
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("waiting for the primary since"), "status text:\n{text}");
    assert!(text.contains("DENY-PROTECTED"), "status text:\n{text}");
    // The organisation's resolver is exempt even now.
    let unknown = SocketAddr::new(IpAddr::V4(LabAddrs::inet_v4(123)), 25);
    assert!(lab.tcp_connect(Role::Dns, unknown, Duration::from_millis(1500)).is_ok(), "exempt source passes");
    let after_attach = bot.answered_sent_after(attached);
    let t = bot.stop();
    eprintln!("bot: {t:?}, answered after attach {after_attach}");
    assert!(t.sent >= 100, "prober ran: {t:?}");
    assert_eq!(after_attach, 0, "no bot query sent after attach was answered");
    let st = d.status();
    assert!(counter(&st, "drop_not_loaded") >= 50, "drops counted: {:?}", st.counters);
    assert!(counter(&st, "events_rate_limited") > 0, "events are rate-limited per source");
    let bot_ip = IpAddr::V4(lab.addrs().bot_v4);
    assert!(d.events().iter().any(|e| e.src == bot_ip && e.reason == Reason::NotLoaded), "not_loaded events");
    d.stop();
}

/// A snapshot from an earlier run is enforced at once when the primary is
/// down at start; when the primary comes back, the set is caught up by
/// IXFR from the snapshot's serial (status shows it), with the bot seeing
/// no answer throughout.
#[test]
fn snapshot_enforced_while_primary_down_then_caught_up_by_ixfr() {
    let lab = up("fcsnap");
    let mx = IpAddr::V4(LabAddrs::inet_v4(25));
    let late_mx = IpAddr::V4(LabAddrs::inet_v4(26));
    // Enough entries that BIND answers a one-record change with a real IXFR.
    let mut lines = vec![format!(
        "update add {} 60 IN A 127.0.0.25",
        guard_user::rpz::encode_owner(&Prefix::host(mx), ZONE)
    )];
    for i in 0..40u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 100 + i));
        lines.push(format!(
            "update add {} 60 IN A 127.0.0.1",
            guard_user::rpz::encode_owner(&Prefix::host(ip), ZONE)
        ));
    }
    lab.nsupdate(&refs(&lines)).expect("nsupdate");
    let args = {
        let mut a = xdp_args(&lab);
        a.push("--no-pin".into());
        a
    };
    // First run: AXFR, snapshot written.
    let mut d1 = Daemon::start(&lab, "fcsnap1", &refs(&args));
    let serial = d1.wait_loaded().sync.serial.expect("serial");
    eventually(Duration::from_secs(10), || d1.status().sync.snapshot_serial == Some(serial))
        .expect("snapshot written");
    d1.stop();
    let file = snapshot::path(&state_dir(&lab), ZONE);
    let snap = snapshot::read(&file, ZONE).expect("readable").expect("present");
    assert_eq!((snap.serial, snap.set.len()), (serial, 41));

    // While the daemon is down the zone moves on; then the primary goes down.
    rpz_add(&lab, late_mx, "127.0.0.25");
    stop_named(&lab);

    let bot = bot_prober(&lab);
    let mut d2 = Daemon::start(&lab, "fcsnap2", &refs(&args));
    let attached = seen_in_log(&d2, "XDP program attached", Duration::from_secs(5));
    let st = d2.status();
    assert!(!st.sync.deny_protected);
    assert!(
        st.sync.started_from.as_deref().is_some_and(|s| s.contains(&format!("snapshot serial {serial}"))),
        "{:?}",
        st.sync
    );
    assert_eq!((st.sync.serial, st.entries.0), (Some(serial), 41), "the snapshot is in force");
    assert!(st.sync.last_error.is_some() && st.sync.failing_since_ms.is_some(), "{:?}", st.sync);
    assert!(smtp_open(&lab, mx), "an entry of the snapshot passes while the primary is down");
    assert!(!smtp_open(&lab, late_mx), "an entry added after the snapshot is not known yet");

    // The primary comes back: IXFR from the snapshot's serial.
    let _named = start_named(&lab);
    eventually(Duration::from_secs(20), || d2.status().sync.serial.is_some_and(|s| s != serial))
        .unwrap_or_else(|| panic!("not caught up; log:\n{}", d2.log()));
    let st = d2.status();
    eprintln!("after catch-up: {:?}", st.sync);
    assert_eq!(st.sync.full_loads, 0, "no full transfer: caught up incrementally");
    assert!(st.sync.incremental >= 1, "status shows the IXFR: {:?}", st.sync);
    assert!(st.sync.last_error.is_none() && st.sync.failing_since_ms.is_none());
    assert_eq!(st.entries.0, 42);
    assert!(d2.log().contains(&format!("from_serial={serial}")), "log names the serial it caught up from");
    eventually(Duration::from_secs(5), || smtp_open(&lab, late_mx))
        .expect("the new entry passes after the IXFR");
    let new_serial = st.sync.serial;
    eventually(Duration::from_secs(10), || d2.status().sync.snapshot_serial == new_serial)
        .expect("a new snapshot is written after the catch-up");
    let after_attach = bot.answered_sent_after(attached);
    let t = bot.stop();
    eprintln!("bot: {t:?}");
    assert!(t.sent >= 100);
    assert_eq!(after_attach, 0, "the bot got no answer after attach");
    assert!(d2.is_running());
}

/// Corrupt, truncated and foreign snapshots are refused with one clear log
/// line each and the daemon starts as if none existed (deny-protected with
/// the primary down), never crashing.
#[test]
fn bad_snapshots_are_refused_and_ignored() {
    let lab = up("fcbad");
    let mut args = xdp_args(&lab);
    dead_server(&lab, &mut args);
    args.push("--no-pin".into());
    let file = snapshot::path(&state_dir(&lab), ZONE);
    std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
    let set: AllowSet =
        [(Prefix::host(IpAddr::V4(LabAddrs::inet_v4(25))), Classes::SMTP)].into_iter().collect();
    let good = snapshot::encode(ZONE, 7, None, 0, &set);
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("garbage", b"this is not a snapshot at all\n".to_vec(), "bad magic"),
        ("truncated", good[..good.len() - 7].to_vec(), "truncated"),
        ("corrupt", flipped, "checksum mismatch"),
        ("foreign", snapshot::encode("other.example", 7, None, 0, &set), "holds zone"),
    ];
    for (what, bytes, why) in cases {
        std::fs::write(&file, &bytes).expect("write the bad snapshot");
        let bot = bot_prober(&lab);
        let mut d = Daemon::start(&lab, &format!("fcbad-{what}"), &refs(&args));
        let attached = seen_in_log(&d, "XDP program attached", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(800));
        assert!(d.is_running(), "{what}: the daemon stays up");
        let log = d.log();
        let refusals = log.lines().filter(|l| l.contains("zone snapshot refused")).count();
        assert_eq!(refusals, 1, "{what}: one log line:\n{log}");
        assert!(log.contains(why), "{what}: the line says why ({why}):\n{log}");
        let st = d.status();
        assert!(st.sync.deny_protected && st.entries.0 == 0, "{what}: started as if none: {:?}", st.sync);
        assert!(st.sync.snapshot_error.as_deref().is_some_and(|e| e.contains("refused")), "{what}");
        assert_eq!(bot.answered_sent_after(attached), 0, "{what}: bot answered");
        assert!(bot.stop().sent > 50);
        d.stop();
    }
}

/// Entries of the 1M-entry zones besides the registered mail server.
const MILLION: u32 = 1_000_000;

/// The policy zone with [`MILLION`] hosts in 100.64.0.0/10 (DNS and SMTP
/// alternately) and the registered mail server `mx`, in BIND's syntax.
fn million_zone(serial: u32, mx: Ipv4Addr) -> String {
    use std::fmt::Write as _;
    let mut text = format!(
        "$ORIGIN {ZONE}.\n$TTL 60\n@ IN SOA localhost. root.localhost. {serial} 3600 600 86400 60\n@ IN NS localhost.\n"
    );
    text.reserve(MILLION as usize * 40);
    for i in 0..MILLION {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i);
        let _ = writeln!(text, "{ip} A 127.0.0.{}", if i % 2 == 0 { 25 } else { 1 });
    }
    let _ = writeln!(text, "{mx} A 127.0.0.25");
    text
}

/// A 1M-entry start under a continuous prober: the program is attached
/// (deny-protected) before the zone is read, so the bot gets no answer at
/// any point of the load, and the whole set is in force at the end.
#[test]
fn million_entry_start_under_probing() {
    let _heavy = guard_tests::heavy::exclusive();
    let lab = up("fcmil");
    let zone_file = lab.state_dir().join("big.zone");
    let mx = LabAddrs::inet_v4(25);
    std::fs::write(&zone_file, million_zone(5, mx)).expect("write zone");
    let a = lab.addrs();
    let exempt = format!("{}/32", a.dns_v4);
    let internal = format!("10.{}.0.0/16", a.subnet);
    let zf = zone_file.to_str().expect("utf-8");
    let args = [
        "--iface",
        lab.router_inside_iface(),
        "--exempt",
        &exempt,
        "--internal",
        &internal,
        "--zone-file",
        zf,
        "--no-pin",
    ];
    let bot = bot_prober(&lab);
    let t0 = Instant::now();
    let d = Daemon::start(&lab, "fcmil", &args);
    let attached = seen_in_log(&d, "XDP program attached", Duration::from_secs(10));
    // Status may lag while the 1M diff is written (it reads the counters
    // under the enforcer lock): poll without insisting on every answer.
    eventually(Duration::from_secs(90), || {
        d.try_status().is_some_and(|s| s.entries.0 == MILLION as usize + 1 && !s.sync.deny_protected)
    })
    .unwrap_or_else(|| panic!("1M set not in force; log:\n{}", d.log()));
    let loaded = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after_attach = bot.answered_sent_after(attached);
    let t = bot.stop();
    eprintln!("1M start: in force after {loaded:?}; bot {t:?}, answered after attach {after_attach}");
    assert_eq!(after_attach, 0, "no answer to the bot at any point of the 1M load");
    assert!(t.sent > 100);
    assert!(smtp_open(&lab, IpAddr::V4(mx)), "registered mail server passes once loaded");
    let st = d.status();
    assert!(counter(&st, "drop_not_loaded") > 0, "bot dropped while loading: {:?}", st.counters);
    for l in d
        .log()
        .lines()
        .filter(|l| l.contains("allow maps") || l.contains("allow set") || l.contains("attached"))
    {
        eprintln!("{l}");
    }
}

/// A 1M-entry start with the lab's real BIND as primary, under a
/// continuous bot prober: BIND is restarted on the 1M-entry zone and the
/// daemon started while BIND still loads it (its SOA queries get no
/// answer or a refusal and are retried), then takes the whole zone by
/// AXFR. The program is attached deny-protected before any of it, so the
/// bot gets no answer at any point of the start-up.
///
/// About 35 s here (BIND loads 1M RPZ records, then sends them): the one
/// start of its size from a real primary.
#[test]
fn million_entry_start_from_bind_under_probing() {
    let _heavy = guard_tests::heavy::exclusive();
    let lab = up("fcbind");
    let mx = LabAddrs::inet_v4(25);
    stop_named(&lab);
    let bind_dir = lab.state_dir().join("bind");
    let _ = std::fs::remove_file(bind_dir.join(format!("{ZONE}.db.jnl")));
    std::fs::write(bind_dir.join(format!("{ZONE}.db")), million_zone(7, mx)).expect("write the zone");
    let mut args = xdp_args(&lab);
    args.push("--no-pin".into());
    let bot = bot_prober(&lab);
    // named is not waited for: the daemon starts while it loads the zone.
    let conf = bind_dir.join("named.conf");
    let _named = lab
        .spawn(Role::Dns, &["named", "-g", "-n", "1", "-c", conf.to_str().expect("utf-8")])
        .expect("named");
    let t0 = Instant::now();
    let d = Daemon::start(&lab, "fcbind", &refs(&args));
    let attached = seen_in_log(&d, "XDP program attached", Duration::from_secs(10));
    let status_at = t0.elapsed();
    let st = d.wait_loaded();
    let loaded = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after_attach = bot.answered_sent_after(attached);
    let t = bot.stop();
    let log = d.log();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("allow-set source failed")).collect();
    let bind_loaded = lab.bind_log().lines().find(|l| l.contains("all zones loaded")).map(str::to_owned);
    eprintln!(
        "1M start from BIND: status served {status_at:?} after start, set in force after {loaded:?}; \
         {} failed sync attempts before ({} SOA timeouts); bot {t:?}, answered after attach {after_attach}; \
         BIND: {bind_loaded:?}",
        failures.len(),
        failures.iter().filter(|l| l.contains("no answer within")).count()
    );
    for l in failures.iter().take(5) {
        eprintln!("  {l}");
    }
    assert_eq!(after_attach, 0, "no answer to the bot at any point of the 1M start");
    assert!(t.sent > 100, "{t:?}");
    assert_eq!((st.entries.0, st.sync.full_loads), (MILLION as usize + 1, 1), "{:?}", st.sync);
    assert_eq!(st.sync.serial, Some(7));
    assert!(counter(&st, "drop_not_loaded") > 0, "the bot was dropped while loading: {:?}", st.counters);
    assert!(smtp_open(&lab, IpAddr::V4(mx)), "registered mail server passes once loaded");
}

/// With the default config (pinned by default on the host's bpffs), a
/// clean restart and a SIGKILL under probing let no bot query through and
/// lose no legitimate connection; the restarted daemon adopts the state.
#[test]
fn default_config_survives_restart_and_sigkill() {
    let lab = up("fckill");
    let mx = IpAddr::V4(LabAddrs::inet_v4(25));
    rpz_add(&lab, mx, "127.0.0.25");
    let pins = Pins::of(&lab);
    let args = xdp_args(&lab);
    let mut d1 = Daemon::start_host_mounts(&lab, "fckill1", &refs(&args));
    d1.wait_loaded();
    let log = d1.log();
    assert!(log.contains(&format!("pinned at {}", pins.0.display())), "pinned by default:\n{log}");
    assert!(pins.0.join("link").exists(), "link pinned at {}", pins.0.display());
    assert!(smtp_open(&lab, mx));
    let bot = bot_prober(&lab);
    let legit = Prober::tcp(
        &lab,
        Role::Pc,
        SocketAddr::new(mx, 25),
        Duration::from_millis(50),
        Duration::from_secs(3),
    );
    std::thread::sleep(Duration::from_millis(500));

    // A clean restart (what `systemctl restart` does: SIGTERM, then start).
    d1.stop();
    std::thread::sleep(Duration::from_millis(500));
    let mut d2 = Daemon::start_host_mounts(&lab, "fckill2", &refs(&args));
    assert!(d2.log().contains("replaced the program inside the pinned XDP link"), "{}", d2.log());
    std::thread::sleep(Duration::from_millis(500));

    // A crash: SIGKILL, down for 2 s, then a start adopts the state.
    d2.kill();
    std::thread::sleep(Duration::from_secs(2));
    assert!(pins.0.join("link").exists(), "the pins outlive the killed daemon");
    let d3 = Daemon::start_host_mounts(&lab, "fckill3", &refs(&args));
    assert!(d3.log().contains("replaced the program inside the pinned XDP link"), "{}", d3.log());
    std::thread::sleep(Duration::from_millis(500));
    let (b, l) = (bot.stop(), legit.stop());
    eprintln!("restart + SIGKILL: bot {b:?}, legit {l:?}");
    assert!(b.sent > 300 && l.sent > 30, "probers ran: {b:?} {l:?}");
    assert_eq!(b.answered, 0, "no bot query answered across restart and crash");
    assert_eq!(l.failed, 0, "no legitimate connection failed across restart and crash");
    let st = d3.status();
    assert!(st.point.contains("pinned at"), "{}", st.point);
    drop(d3);
    drop(pins);
}

/// A pinned-map layout migration under a live prober (README, "Upgrades
/// across a map layout change"). While the daemon is down, its pinned host
/// allow maps are swapped for maps of an older layout (per-insert
/// allocation, 8-byte values) holding the same set, as an older build
/// leaves them; the attached program keeps its own maps, as the older
/// program would. The next start migrates the set into fresh maps, pins
/// them and swaps its program into the pinned link: the bot gets no answer
/// and the client's connections never fail across it.
#[test]
fn layout_migration_under_probing() {
    use guard_common::{MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_F_NO_PREALLOC, MAX_ALLOW_V4, MAX_ALLOW_V6};
    use guard_tests::old_layout;
    let lab = up("fcmig");
    let mx = IpAddr::V4(LabAddrs::inet_v4(25));
    let owner = |ip: IpAddr| guard_user::rpz::encode_owner(&Prefix::host(ip), ZONE);
    let mut lines = vec![format!("update add {} 60 IN A 127.0.0.25", owner(mx))];
    for i in 0..200u8 {
        lines.push(format!(
            "update add {} 60 IN A 127.0.0.1",
            owner(IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)))
        ));
    }
    lines.push(format!("update add {} 60 IN A 127.0.0.1", owner(IpAddr::V6(LabAddrs::inet_v6(0x53)))));
    lab.nsupdate(&refs(&lines)).expect("nsupdate");
    let pins = Pins::of(&lab);
    let args = xdp_args(&lab);
    let mut d1 = Daemon::start_host_mounts(&lab, "fcmig1", &refs(&args));
    d1.wait_loaded();
    assert!(smtp_open(&lab, mx));
    let bot = bot_prober(&lab);
    let legit = Prober::tcp(
        &lab,
        Role::Pc,
        SocketAddr::new(mx, 25),
        Duration::from_millis(50),
        Duration::from_secs(3),
    );
    std::thread::sleep(Duration::from_millis(500));

    d1.stop();
    let held = pinned_set(&pins.0);
    assert_eq!(held.len(), 202, "the pinned set");
    // The layout before HostValue: per-insert allocation, bare class bits.
    let m4 = old_layout::pinned_hash(&pins.0.join(MAP_ALLOW_V4), 4, 4, MAX_ALLOW_V4, MAP_F_NO_PREALLOC);
    let m6 = old_layout::pinned_hash(&pins.0.join(MAP_ALLOW_V6), 16, 4, MAX_ALLOW_V6, MAP_F_NO_PREALLOC);
    for (p, c) in held.iter() {
        assert!(p.is_host(), "{p}");
        let value = c.bits().to_ne_bytes();
        match p.addr() {
            IpAddr::V4(a) => old_layout::put(m4, &a.octets(), &value),
            IpAddr::V6(a) => old_layout::put(m6, &a.octets(), &value),
        }
    }
    // SAFETY: descriptors this test opened; the pins keep the maps.
    unsafe {
        libc::close(m4);
        libc::close(m6);
    }

    let d2 = Daemon::start_host_mounts(&lab, "fcmig2", &refs(&args));
    let log = d2.log();
    assert!(log.contains("pinned maps of another layout migrated"), "not migrated:\n{log}");
    assert!(log.contains("replaced the program inside the pinned XDP link"), "{log}");
    d2.wait_loaded();
    std::thread::sleep(Duration::from_secs(1));
    let (b, l) = (bot.stop(), legit.stop());
    eprintln!("layout migration: bot {b:?}, legit {l:?}");
    assert!(b.sent > 150 && l.sent > 20, "probers ran: {b:?} {l:?}");
    assert_eq!(b.answered, 0, "no bot query answered across the migration");
    assert_eq!(l.failed, 0, "no legitimate connection failed across the migration");
    for name in [MAP_ALLOW_V4, MAP_ALLOW_V6] {
        let info = aya::maps::MapInfo::from_pin(pins.0.join(name)).expect("pinned");
        assert_eq!(
            (info.value_size(), info.map_flags()),
            (guard_common::HOST_VALUE_SIZE, 0),
            "{name} re-pinned in this build's layout"
        );
    }
    assert_eq!(pinned_set(&pins.0), held, "the set carried over");
    drop(d2);
    drop(pins);
}

/// `rpz-guard status` as an operator reads it.
fn status_text(d: &Daemon) -> String {
    let out = Command::new(BIN).args(["status", "--socket"]).arg(&d.socket).output().expect("status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Past the SOA expire (4 s here) with the primary down, the last set
/// stays in force (fail closed) and the daemon says so loudly: `EXPIRED`
/// in status, `rpz_guard_zone_expired 1`, one warning in the log. The
/// primary back: cleared. A restart from the snapshot with the primary
/// still down knows the expire (kept in the snapshot) and is expired at once.
#[test]
fn past_soa_expire_keeps_enforcing_loudly() {
    let lab = up("fcexp");
    let mx = IpAddr::V4(LabAddrs::inet_v4(25));
    rpz_add(&lab, mx, "127.0.0.25");
    // BIND serves the SOA timers as given.
    lab.nsupdate(&[&format!("update add {ZONE}. 60 IN SOA localhost. root.localhost. 1000 3600 600 4 60")])
        .expect("nsupdate SOA");
    let mut args = xdp_args(&lab);
    args.push("--no-pin".into());
    let expired_metric =
        |d: &Daemon| daemon_support::metrics(d).lines().any(|l| l.trim() == "rpz_guard_zone_expired 1");
    let mut d1 = Daemon::start(&lab, "fcexp1", &refs(&args));
    let st = d1.wait_loaded();
    assert_eq!(st.sync.soa_expire_secs, Some(4), "expire read from the primary's SOA: {:?}", st.sync);
    assert!(!expired_metric(&d1), "{}", daemon_support::metrics(&d1));
    assert!(!status_text(&d1).contains("EXPIRED"), "{}", status_text(&d1));
    eventually(Duration::from_secs(10), || d1.status().sync.snapshot_serial == d1.status().sync.serial)
        .expect("snapshot written");

    let bot = bot_prober(&lab);
    stop_named(&lab);
    eventually(Duration::from_secs(30), || expired_metric(&d1))
        .unwrap_or_else(|| panic!("never flagged expired; status:\n{}", status_text(&d1)));
    let text = status_text(&d1);
    assert!(text.contains("EXPIRED") && text.contains("the last set stays in force"), "{text}");
    eventually(Duration::from_secs(70), || d1.log().contains("ZONE EXPIRED"))
        .unwrap_or_else(|| panic!("no warning logged:\n{}", d1.log()));
    assert_eq!(d1.log().matches("ZONE EXPIRED").count(), 1, "warned once per outage");
    assert!(smtp_open(&lab, mx), "past expire, the registered mail server still passes");
    assert_eq!(d1.status().entries.0, 1, "the set stays in force");

    // The primary back: no longer expired.
    let named = start_named(&lab);
    eventually(Duration::from_secs(30), || {
        !expired_metric(&d1) && d1.status().sync.failing_since_ms.is_none()
    })
    .unwrap_or_else(|| panic!("still expired after the primary came back:\n{}", status_text(&d1)));
    assert!(!status_text(&d1).contains("EXPIRED"));
    let t = bot.stop();
    eprintln!("expire, first run: bot {t:?}");
    assert!(t.sent > 300, "{t:?}");
    assert_eq!(t.answered, 0, "no bot query answered through the outage");
    d1.stop();

    // A restart with the primary down: the snapshot carries the expire.
    drop(named);
    stop_named_if_running(&lab);
    std::thread::sleep(Duration::from_secs(5));
    let bot = bot_prober(&lab);
    let d2 = Daemon::start(&lab, "fcexp2", &refs(&args));
    let attached = seen_in_log(&d2, "XDP program attached", Duration::from_secs(5));
    eventually(Duration::from_secs(10), || expired_metric(&d2))
        .unwrap_or_else(|| panic!("restart past expire not flagged:\n{}", status_text(&d2)));
    assert!(smtp_open(&lab, mx), "the snapshot's set is enforced");
    assert!(d2.log().contains("ZONE EXPIRED"), "warned at once:\n{}", d2.log());
    // On a quiet machine all of the above takes a few hundred ms: probe on
    // for a second after the attach so that the count below means something.
    std::thread::sleep((attached + Duration::from_secs(1)).saturating_duration_since(Instant::now()));
    let after = bot.answered_sent_after(attached);
    let t = bot.stop();
    eprintln!("expire, restart: bot {t:?}");
    assert!(t.sent > 50, "{t:?}");
    assert_eq!(after, 0, "no bot query answered after attach");
}

/// Ends the lab's named when one runs (the one `start_named` spawned ends
/// with its `LabChild`; the lab's original may still be recorded).
fn stop_named_if_running(lab: &Lab) {
    if let Some(pid) = named_pid(lab)
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
    {
        stop_named(lab);
    }
}
