//! Privileged (issue 11): ageing against the lab's real BIND with an XDP
//! router. Two learned entries with a short max age: the one nobody uses
//! disappears from the RPZ and from the maps and is blocked again; the one
//! under continuous allowed traffic stays past its max age, and goes once
//! the traffic stops. An entry that DNS keeps confirming (live learning)
//! stays past its max age while an unconfirmed one goes. A deny beats a
//! later learn of the same address, live or by `learn --update`.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use guard_tests::{Lab, LabAddrs, LabConfig, Role};
use guard_user::rpz::meta::unix_now;

mod daemon_support;
mod learn_common;

use daemon_support::{
    BIN, Conn, Daemon, TEACHER, connect, eventually, learn_args, ops, ops_ok, replay_exchange,
    rpz_add_learned, start_xdp, state_dir,
};
use learn_common::Conv;

#[test]
fn unconfirmed_entries_age_out_used_ones_stay_until_idle() {
    let t = Instant::now();
    let lab = Lab::up(LabConfig::for_test("agelab")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let now = guard_user::rpz::meta::unix_now();
    let idle_one = IpAddr::V4(LabAddrs::inet_v4_alt(9));
    let busy = IpAddr::V4(LabAddrs::inet_v4_alt(10));
    rpz_add_learned(&lab, idle_one, now);
    rpz_add_learned(&lab, busy, now);
    let cfg = state_dir(&lab).join("lifetime.toml");
    std::fs::create_dir_all(state_dir(&lab)).expect("state dir");
    std::fs::write(
        &cfg,
        "[lifetime]\nageing = true\nmax_age_dns_secs = 8\nmax_age_smtp_secs = 8\nidle_secs = 3\ninterval_secs = 1\n",
    )
    .expect("config");
    let d = start_xdp(&lab, &["--config", cfg.to_str().expect("utf8")]);
    let (a, b) = (SocketAddr::new(idle_one, 25), SocketAddr::new(busy, 25));
    let open = |s| connect(&lab, Role::Pc, s, Duration::from_millis(400)) == Conn::Open;
    assert!(eventually(Duration::from_secs(5), || open(a) && open(b)).is_some(), "both allowed at first");
    // Traffic to `busy` every 300 ms, none to `idle_one` (its probe would
    // be traffic too: the zone as the daemon holds it is watched instead).
    let until = Instant::now() + Duration::from_secs(16);
    let mut gone = None;
    while Instant::now() < until {
        assert!(open(b), "the entry in use stays allowed ({:?})", d.status().ageing);
        if gone.is_none() && d.status().entries.0 == 1 {
            gone = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(gone.is_some(), "the unused entry aged out of the RPZ: {:?}", d.status().ageing);
    assert_eq!(connect(&lab, Role::Pc, a, Duration::from_millis(800)), Conn::TimedOut, "blocked again");
    let set = d.status();
    let ageing = set.ageing.clone().expect("ageing in status");
    assert!(ageing.removed >= 1 && ageing.kept_used >= 1, "{ageing:?}");
    // Traffic stops: the busy entry goes after `idle` (watched without traffic).
    assert!(
        eventually(Duration::from_secs(12), || d.status().entries.0 == 0).is_some(),
        "the entry goes once its traffic stopped: {:?}",
        d.status().ageing
    );
    assert_eq!(connect(&lab, Role::Pc, b, Duration::from_millis(800)), Conn::TimedOut, "blocked again");
    assert!(d.status().ageing.expect("ageing").removed >= 2);
    drop(d);
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}

/// A daemon restart keeps the times: they live in the zone (TXT), so an
/// entry past its max age before the restart goes right after it (once
/// `idle` has passed), not a whole max age later; a fresh one stays.
#[test]
fn restart_keeps_the_times() {
    let t = Instant::now();
    let lab = Lab::up(LabConfig::for_test("agerst")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let now = guard_user::rpz::meta::unix_now();
    let old = IpAddr::V4(LabAddrs::inet_v4_alt(11));
    let fresh = IpAddr::V4(LabAddrs::inet_v4_alt(12));
    rpz_add_learned(&lab, old, now - 25);
    rpz_add_learned(&lab, fresh, now);
    std::fs::create_dir_all(state_dir(&lab)).expect("state dir");
    let cfg = state_dir(&lab).join("lifetime.toml");
    std::fs::write(
        &cfg,
        "[lifetime]\nageing = true\nmax_age_dns_secs = 20\nmax_age_smtp_secs = 20\nidle_secs = 2\ninterval_secs = 1\n",
    )
    .expect("config");
    let cfg = cfg.to_str().expect("utf8").to_owned();
    let mut d = start_xdp(&lab, &["--config", &cfg]);
    assert!(eventually(Duration::from_secs(5), || d.status().entries.0 == 2).is_some());
    d.stop();
    drop(d);
    let restarted = Instant::now();
    let d = start_xdp(&lab, &["--config", &cfg]);
    assert!(
        eventually(Duration::from_secs(10), || d.status().entries.0 == 1).is_some(),
        "the old entry goes after the restart: {:?}",
        d.status().ageing
    );
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(10), "not a whole max age (20 s) after the restart: {took:?}");
    assert_eq!(d.status().ageing.expect("ageing").removed, 1, "removed by the restarted daemon");
    assert_eq!(connect(&lab, Role::Pc, SocketAddr::new(old, 25), Duration::from_millis(800)), Conn::TimedOut);
    assert_eq!(connect(&lab, Role::Pc, SocketAddr::new(fresh, 25), Duration::from_millis(800)), Conn::Open);
    drop(d);
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}

/// The RPZ's view of `ip` (`explain --json` without a daemon: the primary alone).
fn rpz_view(lab: &Lab, ip: IpAddr) -> serde_json::Value {
    let out = ops(lab, &["explain", &ip.to_string(), "--json", "--socket", "/nonexistent/rpz-guard.sock"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("explain --json");
    assert!(v["rpz"].is_object(), "the primary answered: {v}");
    v["rpz"].clone()
}

/// `rpz-guard run` (XDP) learning live from the lab's resolver, with
/// `lifetime` as its `[lifetime]` section.
fn start_learning(lab: &Lab, lifetime: &str) -> Daemon {
    std::fs::create_dir_all(state_dir(lab)).expect("state dir");
    let cfg = state_dir(lab).join("lifetime.toml");
    std::fs::write(&cfg, format!("[lifetime]\n{lifetime}")).expect("config");
    let learn = learn_args(lab);
    // `--learn` last: start_xdp takes the extra arguments as flag/value pairs.
    let mut extra = vec!["--config", cfg.to_str().expect("utf8")];
    extra.extend([&learn[1], &learn[2], &learn[3], &learn[4], &learn[0]].map(String::as_str));
    start_xdp(lab, &extra)
}

/// The lab's resolver asks [`TEACHER`] for the MX of `domain` and hears
/// `addr`: replayed across the router, where live learning copies it.
fn teach(lab: &Lab, conv: &mut Conv, domain: &str, addr: IpAddr) {
    let id = u16::try_from(conv.frames.len() / 2 + 1).expect("few exchanges");
    conv.mx(&lab.addrs().dns_v4.to_string(), &TEACHER.to_string(), id, domain, &addr.to_string());
    let n = conv.frames.len();
    replay_exchange(lab, &conv.frames[n - 2].1, &conv.frames[n - 1].1);
}

/// Two learned entries, max age 8 s, no traffic to either: the one the
/// resolver's DNS keeps confirming (an MX answer every second, live
/// learning refreshes its `seen`) is still there after 2.5 max ages; the
/// other goes. (About 25 s: the max age must pass several times.)
#[test]
fn dns_confirmation_keeps_an_entry_an_unconfirmed_one_goes() {
    let t = Instant::now();
    let lab = Lab::up(LabConfig::for_test("agecnf")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let now = unix_now();
    let kept = IpAddr::V4(LabAddrs::inet_v4_alt(13));
    let dropped = IpAddr::V4(LabAddrs::inet_v4_alt(14));
    rpz_add_learned(&lab, kept, now);
    rpz_add_learned(&lab, dropped, now);
    let d = start_learning(
        &lab,
        "ageing = true\nmax_age_dns_secs = 8\nmax_age_smtp_secs = 8\nidle_secs = 2\ninterval_secs = 1\nrefresh_secs = 1\n",
    );
    assert!(eventually(Duration::from_secs(5), || d.status().entries.0 == 2).is_some(), "both in force");
    let mut conv = Conv::new();
    let until = Instant::now() + Duration::from_secs(20);
    let mut gone = None;
    while Instant::now() < until {
        teach(&lab, &mut conv, "keep.test.", kept);
        if gone.is_none() && d.status().entries.0 == 1 {
            gone = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let st = d.status();
    let live = st.live.clone().expect("live learning in status");
    let ageing = st.ageing.clone().expect("ageing in status");
    eprintln!("unconfirmed entry gone after {gone:?}; live {live:?}; ageing {ageing:?}");
    assert!(gone.is_some(), "the unconfirmed entry aged out: {ageing:?}");
    assert_eq!(st.entries.0, 1, "the confirmed entry stays past 2.5 max ages: {ageing:?}");
    assert!(live.refreshed >= 2, "confirmations were written to the zone: {live:?}");
    assert_eq!(ageing.removed, 1, "{ageing:?}");
    // The zone: the confirmed entry's `seen` moved on (first kept), the other is gone.
    let v = rpz_view(&lab, kept);
    let meta = &v["entries"][0]["meta"];
    let seen = meta["seen"].as_u64().expect("seen");
    assert!(seen >= now + 10, "seen refreshed well past the max age: {v}");
    assert_eq!(meta["first"].as_u64(), Some(now), "{v}");
    assert_eq!(meta["evidence"]["qname"], "keep.test.", "{v}");
    assert_eq!(meta["evidence"]["server"], TEACHER.to_string(), "{v}");
    assert_eq!(rpz_view(&lab, dropped)["entries"], serde_json::json!([]));
    // Only now traffic (it would have kept both): one passes, one is blocked.
    assert_eq!(connect(&lab, Role::Pc, SocketAddr::new(kept, 25), Duration::from_millis(800)), Conn::Open);
    assert_eq!(
        connect(&lab, Role::Pc, SocketAddr::new(dropped, 25), Duration::from_millis(800)),
        Conn::TimedOut
    );
    drop(d);
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}

/// `rpz-guard deny` beats a later learn: an address learned live (enforced,
/// pushed) and then denied is blocked; the resolver hearing it again
/// changes nothing (live learning counts it as denied), nor does
/// `learn --update` over a capture of that answer: the zone keeps the
/// deny alone and traffic to the address stays blocked.
#[test]
fn deny_beats_a_later_learn() {
    let t = Instant::now();
    let lab = Lab::up(LabConfig::for_test("agedny")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let mx = IpAddr::V4(LabAddrs::inet_v4_alt(15));
    let smtp = SocketAddr::new(mx, 25);
    let d = start_learning(&lab, "");
    let mut conv = Conv::new();
    teach(&lab, &mut conv, "deny.test.", mx);
    let pushed = eventually(Duration::from_secs(10), || rpz_view(&lab, mx)["entries"][0]["classes"] == 2);
    assert!(pushed.is_some(), "learned live and pushed: {:?}", d.status().live);
    // The journal follows --state-dir when learn.journal is not set.
    let journal = state_dir(&lab).join("live-learned.journal");
    assert!(
        eventually(Duration::from_secs(5), || journal.exists()).is_some(),
        "{} written",
        journal.display()
    );
    assert_eq!(connect(&lab, Role::Pc, smtp, Duration::from_millis(800)), Conn::Open, "learned: allowed");

    ops_ok(&lab, &["deny", &mx.to_string()]);
    let blocked = eventually(Duration::from_secs(5), || {
        connect(&lab, Role::Pc, smtp, Duration::from_millis(300)) == Conn::TimedOut
    });
    assert!(blocked.is_some(), "denied: blocked");

    // Live learning hears the answer again.
    let before = d.status().live.expect("live").learn_denied;
    teach(&lab, &mut conv, "deny.test.", mx);
    let counted = eventually(Duration::from_secs(5), || d.status().live.expect("live").learn_denied > before);
    assert!(counted.is_some(), "the learner saw it and left it out: {:?}", d.status().live);
    // learn --update over a capture of the same answer.
    let pcap = lab.state_dir().join("deny-learn.pcap");
    conv.write_pcap(&pcap, 1, false);
    let hints = lab.state_dir().join("teacher.hints");
    let server = format!("{}:53", lab.addrs().dns_v4);
    let key = lab.tsig_key_file();
    let argv = [
        BIN,
        "learn",
        "--quiet",
        "--zone",
        lab.rpz_zone(),
        "--update",
        &server,
        "--tsig-key",
        key.to_str().expect("utf8"),
        "--root-hints",
        hints.to_str().expect("utf8"),
        pcap.to_str().expect("utf8"),
    ];
    let out = lab.exec(Role::Router, &argv).expect("rpz-guard learn");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(out.status.success() && err.contains(", 1 denied"), "{err}");

    // The zone holds the deny alone; traffic stays blocked.
    let v = rpz_view(&lab, mx);
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        (&v["entries"][0]["denied"], &v["entries"][0]["classes"]),
        (&serde_json::json!(true), &serde_json::json!(0)),
        "{v}"
    );
    assert_eq!(connect(&lab, Role::Pc, smtp, Duration::from_millis(800)), Conn::TimedOut, "still blocked");
    let st = d.status();
    eprintln!("live {:?}", st.live);
    drop(d);
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}

/// Adds `ip` to the lab's RPZ as two racing learners could leave it: `A
/// 127.0.0.25`, one lifetime TXT of ours per `seen` in `seens`, and the
/// foreign TXT `foreign` (zone-file form; one nsupdate UPDATE, as any
/// other writer would).
fn rpz_add_racing(lab: &Lab, ip: IpAddr, seens: &[u64], foreign: &str) {
    let owner = guard_user::rpz::encode_owner(&guard_user::policy::Prefix::host(ip), lab.rpz_zone());
    let mut lines = vec![
        format!("update add {owner} 60 IN A 127.0.0.25"),
        format!("update add {owner} 60 IN TXT {foreign}"),
    ];
    for seen in seens {
        let txt = guard_user::rpz::meta::EntryMeta::learned(*seen, 1, None).to_zone_text().expect("txt");
        lines.push(format!("update add {owner} 60 IN TXT {txt}"));
    }
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    lab.nsupdate(&lines).unwrap_or_else(|e| panic!("nsupdate: {e}"));
}

/// The `qtype` records at `ip`'s owner, as the primary holds them (dig
/// +short from the DNS namespace, no recursion: the zone's own data).
fn zone_records(lab: &Lab, ip: IpAddr, qtype: &str) -> Vec<String> {
    let owner = guard_user::rpz::encode_owner(&guard_user::policy::Prefix::host(ip), lab.rpz_zone());
    let server = format!("@{}", lab.addrs().dns_v4);
    let out = lab.dig(Role::Dns, &[&server, "+norec", "+short", &owner, qtype]).expect("dig");
    assert!(out.status.success(), "dig: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// Our lifetime TXTs among `txts` (dig's presentation form).
fn ours(txts: &[String]) -> Vec<&String> {
    txts.iter().filter(|t| t.starts_with("\"rpz-guard=1\"")).collect()
}

/// Two learners raced and left two TXTs of ours at an owner, next to a
/// foreign TXT (issue 11): the entry still ages out (the removal names the
/// whole TXT RRset, deletes both of ours and leaves the foreign one), and a
/// confirmation of another such entry replaces its two TXTs by one.
#[test]
fn two_of_our_txts_and_a_foreign_one_age_and_heal() {
    let t = Instant::now();
    let lab = Lab::up(LabConfig::for_test("agetxt")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let now = unix_now();
    let stale = IpAddr::V4(LabAddrs::inet_v4_alt(16));
    let hot = IpAddr::V4(LabAddrs::inet_v4_alt(17));
    rpz_add_racing(&lab, stale, &[now - 40, now - 30], SPF);
    rpz_add_racing(&lab, hot, &[now - 2, now - 1], SPF);
    assert_eq!(ours(&zone_records(&lab, stale, "TXT")).len(), 2, "the race as set up");
    assert_eq!(zone_records(&lab, hot, "TXT").len(), 3, "the race as set up");
    // The stale entry (newest seen 30 s ago, max age 20 s) ages out.
    let d = ages_out_leaving(&lab, stale, SPF);
    // The hot entry is confirmed by DNS: its two TXTs of ours become one.
    let mut conv = Conv::new();
    teach(&lab, &mut conv, "hot.test.", hot);
    let healed = eventually(Duration::from_secs(10), || ours(&zone_records(&lab, hot, "TXT")).len() == 1);
    let txts = zone_records(&lab, hot, "TXT");
    assert!(healed.is_some(), "a refresh leaves one TXT of ours: {txts:?}; live {:?}", d.status().live);
    assert!(txts.contains(&"\"v=spf1 -all\"".to_owned()) && txts.len() == 2, "{txts:?}");
    let seen = seen_of(&txts).expect("seen");
    assert!(seen >= now, "the refreshed seen: {txts:?}");
    assert_eq!(zone_records(&lab, hot, "A"), vec!["127.0.0.25".to_owned()], "the entry stays");
    let live = d.status().live.expect("live");
    eprintln!("ageing {:?}; live {live:?}", d.status().ageing);
    drop(d);
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}

/// A foreign TXT whose strings are not UTF-8 (`\255\254`, as nsupdate and
/// dig spell the bytes), beside a lifetime TXT of ours (issue 11): the
/// mirror, and the fresh read after a failed UPDATE, named it as lossy
/// UTF-8, so every prerequisite naming the owner's TXT RRset failed and the
/// entry never aged (a conflict in every pass). Now the stale entry ages
/// out with the foreign TXT left byte for byte, and a DNS confirmation of
/// another such entry refreshes its TXT.
#[test]
fn a_foreign_txt_that_is_not_utf8_does_not_block_ageing() {
    let t = Instant::now();
    let lab = Lab::up(LabConfig::for_test("agebin")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let now = unix_now();
    let stale = IpAddr::V4(LabAddrs::inet_v4_alt(18));
    let hot = IpAddr::V4(LabAddrs::inet_v4_alt(19));
    let foreign = r#""\255\254" "v=spf1 -all""#;
    rpz_add_racing(&lab, stale, &[now - 30], foreign);
    rpz_add_racing(&lab, hot, &[now - 2], foreign);
    assert_eq!(
        zone_records(&lab, stale, "TXT").iter().filter(|t| t.as_str() == foreign).count(),
        1,
        "the foreign TXT as set up: {:?}",
        zone_records(&lab, stale, "TXT")
    );
    let d = ages_out_leaving(&lab, stale, foreign);
    // The hot entry is confirmed by DNS: its TXT of ours is refreshed under
    // a prerequisite naming the foreign record's bytes.
    let mut conv = Conv::new();
    teach(&lab, &mut conv, "hot.test.", hot);
    let refreshed = eventually(Duration::from_secs(10), || {
        seen_of(&zone_records(&lab, hot, "TXT")).is_some_and(|s| s >= now)
    });
    let txts = zone_records(&lab, hot, "TXT");
    assert!(refreshed.is_some(), "the refresh applied: {txts:?}; live {:?}", d.status().live);
    assert!(txts.contains(&foreign.to_owned()) && txts.len() == 2, "{txts:?}");
    assert_eq!(zone_records(&lab, hot, "A"), vec!["127.0.0.25".to_owned()], "the entry stays");
    let ageing = d.status().ageing.expect("ageing");
    eprintln!("ageing {ageing:?}; live {:?}", d.status().live);
    drop(d);
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}

/// Starts a learner with a 20 s max age and checks that `stale` ages out of
/// the zone leaving exactly the foreign TXT `foreign` (byte for byte), with
/// no UPDATE error, and that the mirror follows (one entry left).
fn ages_out_leaving(lab: &Lab, stale: IpAddr, foreign: &str) -> Daemon {
    let d = start_learning(
        lab,
        "ageing = true\nmax_age_dns_secs = 20\nmax_age_smtp_secs = 20\nidle_secs = 2\ninterval_secs = 1\nrefresh_secs = 1\n",
    );
    assert!(eventually(Duration::from_secs(5), || d.status().entries.0 >= 1).is_some(), "in force");
    let aged = eventually(Duration::from_secs(15), || zone_records(lab, stale, "A").is_empty());
    let ageing = d.status().ageing.expect("ageing in status");
    assert!(aged.is_some(), "{stale} ages out beside the foreign TXT {foreign}: {ageing:?}");
    assert_eq!(
        zone_records(lab, stale, "TXT"),
        vec![foreign.to_owned()],
        "the foreign TXT stays, byte for byte"
    );
    assert!(ageing.removed >= 1 && ageing.update_errors == 0, "{ageing:?}");
    assert!(
        eventually(Duration::from_secs(5), || d.status().entries.0 == 1).is_some(),
        "the mirror follows: {:?}",
        d.status().ageing
    );
    d
}

/// The `seen=` of the first lifetime TXT of ours among `txts`.
fn seen_of(txts: &[String]) -> Option<u64> {
    ours(txts).first().and_then(|t| {
        t.split(' ')
            .find_map(|s| s.trim_matches('"').strip_prefix("seen=").and_then(|v| v.parse::<u64>().ok()))
    })
}

/// The foreign TXT of [`rpz_add_racing`]'s races.
const SPF: &str = "\"v=spf1 -all\"";

/// Switches the lab's BIND between accepting and refusing UPDATEs
/// (`allow-update { none; }`; transfers stay allowed), reloaded by SIGHUP;
/// returns once an UPDATE gets the new answer.
fn bind_accepts_updates(lab: &Lab, accept: bool) {
    let conf = lab.state_dir().join("bind").join("named.conf");
    let text = std::fs::read_to_string(&conf).expect("named.conf");
    let allowed = format!("allow-update {{ key \"{}\"; }};", lab.tsig_key_name());
    let refused = "allow-update { none; };";
    let (from, to) = if accept { (refused, allowed.as_str()) } else { (allowed.as_str(), refused) };
    assert!(text.contains(from), "named.conf has {from}:\n{text}");
    std::fs::write(&conf, text.replace(from, to)).expect("write named.conf");
    // SAFETY: kill(2) on the named the lab started.
    assert_eq!(unsafe { libc::kill(daemon_support::named_pid(lab), libc::SIGHUP) }, 0, "SIGHUP named");
    // A no-op UPDATE (delete a name that does not exist) tells.
    let probe = format!("update delete no-such-owner.{}. A", lab.rpz_zone());
    let took = eventually(Duration::from_secs(10), || lab.nsupdate(&[&probe]).is_ok() == accept);
    assert!(took.is_some(), "BIND did not switch to accept={accept}");
}

/// The dry run lists what would expire and removes nothing. A BIND that
/// refuses the UPDATE removes nothing either: the entry stays in the RPZ,
/// in the maps and allowed, the failure shows in status; once BIND accepts
/// again the entry goes (issue 11: "nothing is removed locally without BIND
/// agreeing").
#[test]
fn dry_run_and_a_refused_update_remove_nothing() {
    let t = Instant::now();
    let lab = Lab::up(LabConfig::for_test("agerej")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let old = IpAddr::V4(LabAddrs::inet_v4_alt(13));
    rpz_add_learned(&lab, old, unix_now() - 100);
    let mx = SocketAddr::new(old, 25);
    std::fs::create_dir_all(state_dir(&lab)).expect("state dir");
    let lifetime = "[lifetime]\nageing = true\nmax_age_dns_secs = 8\nmax_age_smtp_secs = 8\nidle_secs = 1\ninterval_secs = 1\n";
    let config = |name: &str, extra: &str| {
        let path = state_dir(&lab).join(name);
        std::fs::write(&path, format!("{lifetime}{extra}")).expect("config");
        path.to_str().expect("utf8").to_owned()
    };

    // Dry run: listed, never removed.
    let d = start_xdp(&lab, &["--config", &config("dry.toml", "dry_run = true\n")]);
    let listed = eventually(Duration::from_secs(10), || {
        d.status().ageing.is_some_and(|a| a.would_expire.iter().any(|w| w.contains(&old.to_string())))
    });
    assert!(listed.is_some(), "the dry run lists the due entry: {:?}", d.status().ageing);
    std::thread::sleep(Duration::from_secs(2));
    let a = d.status().ageing.expect("ageing");
    assert!(a.dry_run && a.removed == 0 && a.updates == 0, "{a:?}");
    assert_eq!(d.status().entries.0, 1);
    assert_eq!(zone_records(&lab, old, "A"), vec!["127.0.0.25".to_owned()], "still in the RPZ");
    assert_eq!(connect(&lab, Role::Pc, mx, Duration::from_millis(800)), Conn::Open, "still allowed");
    drop(d);

    // BIND refuses: nothing removed anywhere, the failure in status.
    bind_accepts_updates(&lab, false);
    let d = start_xdp(&lab, &["--config", &config("ageing.toml", "")]);
    let failed = eventually(Duration::from_secs(15), || {
        d.status().ageing.is_some_and(|a| a.update_errors >= 2 && a.last_error.is_some())
    });
    assert!(failed.is_some(), "the refused UPDATE shows in status: {:?}", d.status().ageing);
    let a = d.status().ageing.expect("ageing");
    assert_eq!(a.removed, 0, "{a:?}");
    assert!(a.last_error.as_deref().is_some_and(|e| e.contains("REFUSED")), "names BIND's answer: {a:?}");
    assert_eq!(d.status().entries.0, 1, "kept locally while BIND refuses");
    assert_eq!(zone_records(&lab, old, "A"), vec!["127.0.0.25".to_owned()]);
    assert_eq!(connect(&lab, Role::Pc, mx, Duration::from_millis(800)), Conn::Open, "still allowed");

    // BIND accepts again: the entry goes, and is blocked again.
    bind_accepts_updates(&lab, true);
    let gone = eventually(Duration::from_secs(15), || d.status().entries.0 == 0);
    assert!(gone.is_some(), "removed once BIND accepts: {:?}", d.status().ageing);
    let a = d.status().ageing.expect("ageing");
    assert!(a.removed >= 1 && a.last_error.is_none(), "{a:?}");
    assert!(zone_records(&lab, old, "A").is_empty(), "gone from the RPZ");
    assert_eq!(connect(&lab, Role::Pc, mx, Duration::from_millis(800)), Conn::TimedOut, "blocked again");
    drop(d);
    assert!(t.elapsed() < Duration::from_secs(90), "took {:?}", t.elapsed());
}
