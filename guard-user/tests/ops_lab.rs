//! Privileged: the operator commands in the lab, against the lab's real
//! BIND, with two routers following the zone:
//!
//! * router 1: `rpz-guard run` with XDP on the lab router's inside veth,
//!   told of changes by NOTIFY (what the pc's packets meet);
//! * router 2: a second daemon (OpenFlow mode, no NOTIFY) that follows the
//!   zone by SOA polling and IXFR alone, as a router that only transfers.
//!
//! `allow` / `deny` / `revoke` round trips must reach both; `explain` is
//! compared with golden files (`tests/golden/explain-*.txt`) for a learned,
//! a manual, a denied, a cached-negative and an unknown address. Set
//! `UPDATE_GOLDEN=1` to rewrite them after an intended change of the
//! output, and read the diff.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use guard_tests::{Lab, LabAddrs, LabConfig, Role};

mod daemon_support;

use daemon_support::{
    Conn, Daemon, connect, eventually, lab_bind_args, ops, ops_ok as ok, start_xdp, state_dir,
};

fn up(name: &str) -> Lab {
    Lab::up(LabConfig::for_test(name)).unwrap_or_else(|e| panic!("lab up failed: {e}"))
}

/// What a daemon says about `ip` (`explain --json` over its status socket).
fn router_view(lab: &Lab, d: &Daemon, ip: IpAddr) -> serde_json::Value {
    let sock = d.socket.display().to_string();
    let out = ops(lab, &["explain", &ip.to_string(), "--json", "--socket", &sock]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("explain --json");
    assert!(v["router"].is_object(), "the daemon answered explain: {v}");
    v
}

/// Router 2: OpenFlow mode, its own state and socket, no NOTIFY: it learns
/// of changes by SOA polling (every second) and IXFR.
fn start_second_router(lab: &Lab) -> Daemon {
    let a = lab.addrs();
    let bind = lab_bind_args(lab);
    let state = state_dir(lab).join("second");
    std::fs::create_dir_all(&state).expect("second state dir");
    let listen = "127.0.0.1:16653".to_owned();
    let state = state.display().to_string();
    let exempt = format!("{}/32", a.dns_v4);
    let args = [
        "--mode",
        "openflow",
        "--openflow-listen",
        &listen,
        "--exempt",
        &exempt,
        bind[0].as_str(),
        bind[1].as_str(),
        bind[2].as_str(),
        bind[3].as_str(),
        "--poll-interval",
        "1",
        "--state-dir",
        &state,
    ];
    Daemon::start(lab, "second", &args)
}

/// Polls router `d` until `f` holds for its view of `ip`.
fn until(lab: &Lab, d: &Daemon, ip: IpAddr, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> Duration {
    let mut last = serde_json::Value::Null;
    eventually(Duration::from_secs(10), || {
        last = router_view(lab, d, ip);
        f(&last["router"])
    })
    .unwrap_or_else(|| panic!("{what}: not seen within 10 s; last view {last}"))
}

fn entries(view: &serde_json::Value) -> Vec<String> {
    view["entries"]
        .as_array()
        .map(|a| a.iter().map(|e| format!("{}={}", e[0].as_str().unwrap_or("?"), e[1])).collect())
        .unwrap_or_default()
}

#[test]
fn allow_deny_revoke_reach_both_routers() {
    let t = Instant::now();
    let lab = up("opsrt");
    // Some entries first: BIND answers an IXFR whose deltas outweigh the
    // zone (`max-ixfr-ratio`, 100 %) with the whole zone instead.
    let filler: Vec<String> = (200..230)
        .map(|h| format!("update add {}.{}. 60 IN A 127.0.0.1", LabAddrs::inet_v4(h), lab.rpz_zone()))
        .collect();
    lab.nsupdate(&filler.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("nsupdate: {e}"));
    let r1 = start_xdp(&lab, &[]);
    let r2 = start_second_router(&lab);
    r1.wait_loaded();
    r2.wait_loaded();
    let mx = IpAddr::V4(LabAddrs::inet_v4_alt(9));
    let smtp = SocketAddr::new(mx, 25);
    const SHORT: Duration = Duration::from_millis(1500);

    // Unknown: blocked at router 1.
    assert_eq!(connect(&lab, Role::Pc, smtp, SHORT), Conn::TimedOut, "unregistered mail server");

    // allow: router 1 passes it, router 2 holds it (by IXFR, it gets no NOTIFY).
    let ixfr_before = r2.status().sync.incremental;
    ok(&lab, &["allow", &mx.to_string(), "--class", "smtp", "--comment", "bouncing mail, ticket 4711"]);
    eventually(Duration::from_secs(10), || {
        connect(&lab, Role::Pc, smtp, Duration::from_millis(300)) == Conn::Open
    })
    .expect("router 1 passes SMTP to the allowed address");
    let lag = until(&lab, &r2, mx, "router 2 holds the allow", |v| {
        entries(v) == [format!("{mx}=2")] && v["meta"][0][1]["source"] == "manual"
    });
    eprintln!("router 2 followed the allow in {lag:?}");
    assert!(r2.status().sync.incremental > ixfr_before, "router 2 followed by IXFR: {:?}", r2.status().sync);

    // deny: both drop it; the primary's view says denied.
    ok(&lab, &["deny", &mx.to_string()]);
    eventually(Duration::from_secs(5), || {
        connect(&lab, Role::Pc, smtp, Duration::from_millis(300)) == Conn::TimedOut
    })
    .expect("router 1 blocks the denied address");
    until(&lab, &r2, mx, "router 2 holds the deny", |v| {
        entries(v).is_empty() && v["denied_by"] == serde_json::json!(mx.to_string())
    });
    let v = router_view(&lab, &r2, mx);
    assert_eq!(v["rpz"]["entries"][0]["denied"], true, "{v}");

    // revoke: the deny goes; still blocked (no entry), both routers agree.
    let serial_before = r2.status().sync.serial;
    ok(&lab, &["revoke", &mx.to_string()]);
    let out =
        ops(&lab, &["explain", &mx.to_string(), "--json", "--socket", &r2.socket.display().to_string()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("explain --json");
    assert_eq!(v["rpz"]["entries"], serde_json::json!([]), "{v}");
    until(&lab, &r2, mx, "router 2 at the revoke's serial", |v| {
        v["serial"].as_u64().is_some_and(|s| Some(s) > serial_before.map(u64::from))
    });
    until(&lab, &r1, mx, "router 1 at the revoke's serial", |v| {
        v["serial"].as_u64().is_some_and(|s| Some(s) > serial_before.map(u64::from))
    });
    assert_eq!(connect(&lab, Role::Pc, smtp, SHORT), Conn::TimedOut, "revoked: blocked again");
    drop((r1, r2));
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}

/// Times the test writes itself (the learned entry's TXT): kept verbatim.
const SEEDED_TIMES: [&str; 2] = ["2026-12-07 00:00:00 UTC", "2026-12-08 00:00:00 UTC"];

/// Replaces what differs from run to run (times, spans, serials, the lab's
/// addresses) with stable markers.
fn normalise(text: &str, lab: &Lab) -> String {
    let a = lab.addrs();
    let mut s = text
        .replace(&a.bot_v4.to_string(), "<BOT>")
        .replace(&a.pc_v4.to_string(), "<PC>")
        .replace(&format!("{}:53", a.dns_v4), "<BIND>:53");
    // The number after these words varies between runs.
    for (word, marker) in [("serial ", "<SERIAL>"), ("expires in ", "<S>"), ("primary ", "<SERIAL>")] {
        let mut out = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find(word) {
            out.push_str(&rest[..i + word.len()]);
            rest = &rest[i + word.len()..];
            let spaces = rest.len() - rest.trim_start_matches(' ').len();
            out.push_str(&rest[..spaces]);
            rest = &rest[spaces..];
            let n = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
            if n > 0 {
                out.push_str(marker);
            }
            rest = &rest[n..];
        }
        out.push_str(rest);
        s = out;
    }
    // MAC addresses (veth addresses are random): `xx:xx:xx:xx:xx:xx`.
    let is_mac = |w: &str| {
        w.len() == 17
            && w.bytes().enumerate().all(|(i, b)| if i % 3 == 2 { b == b':' } else { b.is_ascii_hexdigit() })
    };
    let mut masked = String::new();
    let mut i = 0;
    while i < s.len() {
        if s.is_char_boundary(i)
            && s.is_char_boundary((i + 17).min(s.len()))
            && is_mac(&s[i..(i + 17).min(s.len())])
        {
            masked.push_str("<MAC>");
            i += 17;
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            masked.push(ch);
            i += ch.len_utf8();
        }
    }
    s = masked;
    // `YYYY-MM-DD HH:MM:SS UTC` (but the seeded ones) and spans `(in 6d 23h)`, `(3s ago)`.
    let mut out = String::new();
    for line in s.lines() {
        let mut l = String::new();
        let mut rest = line;
        while let Some(i) = rest.find(" UTC").filter(|i| *i >= 19) {
            let time = &rest[i - 19..i + 4];
            l.push_str(&rest[..i - 19]);
            l.push_str(if SEEDED_TIMES.contains(&time) { time } else { "<TIME>" });
            rest = &rest[i + 4..];
        }
        l.push_str(rest);
        while let Some(start) = l.find("(in ").or_else(|| l.find(" ago)").and_then(|e| l[..e].rfind('('))) {
            let Some(end) = l[start..].find(')') else { break };
            l.replace_range(start..start + end + 1, "<SPAN>");
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(name: &str, got: &str) {
    let path = golden_dir().join(format!("explain-{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).expect("golden dir");
        std::fs::write(&path, got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        got == want,
        "explain {name} differs from {} (UPDATE_GOLDEN=1 rewrites it)\n--- want\n{want}\n--- got\n{got}",
        path.display()
    );
}

#[test]
fn explain_golden_for_learned_manual_denied_cached_negative_and_unknown() {
    let lab = up("opsgx");
    let learned = LabAddrs::inet_v4(25);
    let manual = LabAddrs::inet_v4(26);
    let denied = LabAddrs::inet_v4(66);
    let negative = LabAddrs::inet_v4(77);
    let unknown = LabAddrs::inet_v4(99);
    // A learned entry as the learner writes it: A and its TXT companion.
    let owner = format!("{learned}.{}.", lab.rpz_zone());
    lab.nsupdate(&[
        &format!("update add {owner} 60 IN A 127.0.0.25"),
        &format!(
            "update add {owner} 60 IN TXT \"rpz-guard=1\" \"src=learned\" \"first=1796601600\" \"seen=1796688000\" \"ttl=3600\" \"ev=192.0.2.1|mx.example.net.|A\""
        ),
    ])
    .unwrap_or_else(|e| panic!("nsupdate: {e}"));
    ok(
        &lab,
        &["allow", &manual.to_string(), "--class", "smtp", "--expires", "7d", "--comment", "partner relay"],
    );
    ok(&lab, &["deny", &denied.to_string()]);
    // A long negative TTL keeps the cached-negative verdict through the test.
    let conf = lab.state_dir().join("ops-golden.toml");
    std::fs::write(&conf, "[cache]\nnegative_ttl_secs = 120\n").expect("write config");
    let d = start_xdp(&lab, &["--config", conf.to_str().expect("utf-8")]);
    eventually(Duration::from_secs(10), || d.status().sync.serial.is_some()).expect("the first transfer");
    // Mail to the learned entry: in use (explain says when it was last hit).
    // The serial is in status once the transfer is read; the maps follow
    // a moment later, and a SYN sent before would take the miss path.
    eventually(Duration::from_secs(5), || {
        router_view(&lab, &d, IpAddr::V4(learned))["router"]["kernel"]["host"]
            .as_u64()
            .is_some_and(|c| c != 0)
    })
    .expect("the learned entry in the kernel's host map");
    let mail = SocketAddr::new(IpAddr::V4(learned), 25);
    assert_eq!(connect(&lab, Role::Pc, mail, Duration::from_millis(800)), Conn::Open);
    let usage = &router_view(&lab, &d, IpAddr::V4(learned))["router"]["usage"];
    assert!(usage["last_hit_secs"].as_u64().is_some_and(|s| s < 60), "{usage}");
    let usage = &router_view(&lab, &d, IpAddr::V4(manual))["router"]["usage"];
    assert!(usage.is_object() && usage["last_hit_secs"].is_null(), "no traffic to the manual entry: {usage}");
    // The bot tries the unregistered address: blocked, answer cached.
    let to = SocketAddr::new(IpAddr::V4(negative), 25);
    // Shorter than TCP's first retransmission (1 s): exactly one SYN, one event.
    assert_eq!(connect(&lab, Role::Bot, to, Duration::from_millis(600)), Conn::TimedOut);
    eventually(Duration::from_secs(5), || {
        router_view(&lab, &d, IpAddr::V4(negative))["router"]["recent"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .expect("the blocked attempt is recorded");

    let sock = d.socket.display().to_string();
    for (name, ip) in [
        ("learned", learned),
        ("manual", manual),
        ("denied", denied),
        ("cached-negative", negative),
        ("unknown", unknown),
    ] {
        let out = ok(&lab, &["explain", &ip.to_string(), "--socket", &sock]);
        check_golden(name, &normalise(&out, &lab));
    }
    // Without the daemon: the RPZ part alone, the rest named unavailable.
    let out = ok(&lab, &["explain", &manual.to_string(), "--socket", "/nonexistent/rpz-guard.sock"]);
    check_golden("manual-no-daemon", &normalise(&out, &lab));
}
