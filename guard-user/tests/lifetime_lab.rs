//! Privileged (issue 11): ageing against the lab's real BIND with an XDP
//! router. Two learned entries with a short max age: the one nobody uses
//! disappears from the RPZ and from the maps and is blocked again; the one
//! under continuous allowed traffic stays past its max age, and goes once
//! the traffic stops.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use guard_tests::{Lab, LabAddrs, LabConfig, Role};
use guard_user::{
    policy::Prefix,
    rpz::{encode_owner, meta::EntryMeta},
};

mod daemon_support;

use daemon_support::{Conn, connect, eventually, start_xdp, state_dir};

fn add_learned(lab: &Lab, ip: IpAddr, seen: u64) {
    let owner = encode_owner(&Prefix::host(ip), lab.rpz_zone());
    let txt = EntryMeta::learned(seen, 1, None).to_zone_text().expect("txt");
    lab.nsupdate(&[
        &format!("update add {owner} 60 IN A 127.0.0.25"),
        &format!("update add {owner} 60 IN TXT {txt}"),
    ])
    .unwrap_or_else(|e| panic!("nsupdate: {e}"));
}

#[test]
fn unconfirmed_entries_age_out_used_ones_stay_until_idle() {
    let t = Instant::now();
    let lab = Lab::up(LabConfig::for_test("agelab")).unwrap_or_else(|e| panic!("lab up failed: {e}"));
    let now = guard_user::rpz::meta::unix_now();
    let idle_one = IpAddr::V4(LabAddrs::inet_v4_alt(9));
    let busy = IpAddr::V4(LabAddrs::inet_v4_alt(10));
    add_learned(&lab, idle_one, now);
    add_learned(&lab, busy, now);
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
    add_learned(&lab, old, now - 25);
    add_learned(&lab, fresh, now);
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
