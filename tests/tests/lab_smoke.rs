//! Privileged: the lab topology works end to end (needs root; CI is root).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use guard_tests::{Lab, LabAddrs, LabConfig, Role, netns};

fn up(name: &str) -> Lab {
    Lab::up(LabConfig::for_test(name)).unwrap_or_else(|e| panic!("lab up failed: {e}"))
}

/// Reads the SMTP banner of `addr` from the pc and walks one mail through.
fn smtp_session(lab: &Lab, addr: SocketAddr) -> String {
    let stream = netns::tcp_connect_in(&lab.ns(Role::Pc), addr, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("pc cannot reach SMTP {addr}: {e}"));
    guard_tests::smtp::deliver(stream).unwrap_or_else(|e| panic!("SMTP with {addr}: {e}"))
}

#[test]
fn lab_topology_bind_rpz_and_listeners() {
    let lab = up("smoke");
    let prefix = lab.prefix().to_owned();
    let a = lab.addrs().clone();
    assert!(prefix.len() <= 8);
    let bind: IpAddr = lab.bind_addr();
    assert_eq!(bind, IpAddr::from(a.dns_v4));

    // RPZ: an entry added with the TSIG key rewrites the IP-literal query.
    let ip = LabAddrs::inet_v4(25);
    lab.rpz_add_v4(ip, Ipv4Addr::new(127, 0, 0, 25)).unwrap_or_else(|e| panic!("nsupdate: {e}"));
    let took = lab
        .wait_for_answer(Role::Pc, &ip.to_string(), "127.0.0.25", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("RPZ rewrite not served: {e}\n{}", lab.bind_log()));
    println!("RPZ update visible to pc after {took:?}");
    let hit = lab.dig_query(Role::Pc, bind, &ip.to_string(), "A").expect("dig registered");
    assert_eq!(hit.status, "NOERROR");
    assert_eq!(hit.answers, vec!["127.0.0.25".to_owned()]);

    // An unregistered literal: NXDOMAIN from the empty local root, quickly.
    let miss = lab.dig_query(Role::Pc, bind, "198.51.100.26", "A").expect("dig unregistered");
    assert_eq!(miss.status, "NXDOMAIN", "{}", miss.raw);
    assert!(miss.elapsed < Duration::from_secs(2), "NXDOMAIN took {:?}", miss.elapsed);

    // After deletion the rewrite goes away.
    lab.rpz_delete_v4(ip).expect("delete entry");
    let start = std::time::Instant::now();
    loop {
        let ans = lab.dig_query(Role::Pc, bind, &ip.to_string(), "A").expect("dig after delete");
        if ans.status == "NXDOMAIN" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "entry still served: {}", ans.raw);
        std::thread::sleep(Duration::from_millis(20));
    }

    // SMTP through the router, IPv4 and IPv6; the banner names the address reached.
    let banner = smtp_session(&lab, SocketAddr::from((ip, 25)));
    assert!(banner.contains("198.51.100.25"), "{banner}");
    let banner6 = smtp_session(&lab, SocketAddr::from((LabAddrs::inet_v6(0x25), 587)));
    assert!(banner6.contains("2001:db8:100::25"), "{banner6}");
    smtp_session(&lab, SocketAddr::from((LabAddrs::inet_v4_alt(7), 465)));
    let stats = lab.responder_stats().expect("in-process responder");
    assert_eq!(stats.smtp_messages.load(std::sync::atomic::Ordering::Relaxed), 3);

    // The "internet" DNS responder answers any address of the ranges.
    for server in [IpAddr::from(LabAddrs::inet_v4(53)), IpAddr::from(LabAddrs::inet_v6(0x53))] {
        let ans = lab.dig_query(Role::Pc, server, "mx.example.net", "A").expect("dig inet");
        assert_eq!(ans.answers, vec!["192.0.2.53".to_owned()], "{}", ans.raw);
        let tcp = lab
            .dig(Role::Bot, &[&format!("@{server}"), "+tcp", "+short", "x.example", "AAAA"])
            .expect("dig tcp");
        assert_eq!(String::from_utf8_lossy(&tcp.stdout).trim(), "2001:db8::53");
    }

    // VLAN 100: a tagged frame from pc crosses the lan bridge to router in0 intact.
    let mut dump = lab
        .spawn_piped(
            Role::Router,
            &["tcpdump", "-i", "in0", "-nn", "-e", "-l", "-c", "1", "vlan 100 and udp port 9"],
        )
        .expect("spawn tcpdump");
    let start = std::time::Instant::now();
    while !dump.log().contains("listening on") {
        assert!(start.elapsed() < Duration::from_secs(10), "tcpdump did not start: {}", dump.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let frame = tagged_udp_frame(
        lab.mac(Role::Router, "in0").expect("router MAC"),
        lab.mac(Role::Pc, "eth0").expect("pc MAC"),
        a.pc_v4,
        a.router_in_v4,
    );
    let mut captured = false;
    for _ in 0..30 {
        lab.send_frames(Role::Pc, "eth0", std::slice::from_ref(&frame)).expect("send tagged frame");
        std::thread::sleep(Duration::from_millis(100));
        if !dump.is_running() {
            captured = true;
            break;
        }
    }
    assert!(captured, "router did not see the tagged frame: {}", dump.log());
    let mut text = String::new();
    std::io::Read::read_to_string(dump.child().stdout.as_mut().expect("piped stdout"), &mut text)
        .expect("read");
    assert!(text.contains("vlan 100"), "{text}");

    // Tracked processes are ended with their handle.
    let mut sleeper = lab.spawn(Role::Router, &["sleep", "60"]).expect("spawn sleep");
    assert!(sleeper.is_running());
    let pid = sleeper.pid();
    drop(sleeper);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie_or_gone(pid));

    drop(lab);
    let left: Vec<String> =
        netns::list().into_iter().filter(|n| n.starts_with(&format!("{prefix}-"))).collect();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
    assert!(!guard_tests::lab::state_dir(&prefix).exists(), "state dir left");
}

/// Ethernet + 802.1Q (VLAN 100) + IPv4 + UDP to port 9, checksums zero.
fn tagged_udp_frame(dst: [u8; 6], src: [u8; 6], from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let payload = b"lab vlan probe";
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x81, 0x00, 0x00, guard_tests::lab::VLAN_ID as u8, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&to.octets());
    let udp_len = (8 + payload.len()) as u16;
    f.extend_from_slice(&[0x30, 0x39, 0, 9, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    f.extend_from_slice(payload);
    f
}

fn is_zombie_or_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z")).unwrap_or(true)
}

#[test]
fn update_with_wrong_tsig_key_is_refused() {
    let lab = up("badkey");
    let bad = lab.state_dir().join("bad.key");
    std::fs::write(
        &bad,
        format!(
            "key \"{}\" {{ algorithm hmac-sha256; secret \"{}\"; }};\n",
            lab.tsig_key_name(),
            "c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1sYWItc2VjcmV0MDA="
        ),
    )
    .expect("write bad key");
    let owner = lab.rpz_owner_v4(LabAddrs::inet_v4(99));
    let out = lab
        .nsupdate_with_key(&bad, &[&format!("update add {owner} 60 IN A 127.0.0.1")])
        .expect("run nsupdate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "update with a wrong key succeeded: {text}");
    assert!(text.contains("NOTAUTH") || text.contains("BADSIG"), "unexpected nsupdate output: {text}");
    let ans = lab.dig_query(Role::Dns, lab.bind_addr(), &owner, "A").expect("dig zone");
    assert!(ans.answers.is_empty(), "refused update is served: {}", ans.raw);
    // The right key works on the same lab.
    lab.nsupdate(&[&format!("update add {owner} 60 IN A 127.0.0.1")]).expect("update with the lab key");
}

#[test]
fn down_prefix_cleans_a_lab_whose_owner_vanished() {
    let lab = up("crash");
    let prefix = lab.prefix().to_owned();
    // Simulate a crashed owner: keep everything running, forget the handle.
    let child = lab.spawn(Role::Inet, &["sleep", "120"]).expect("spawn");
    let pid = child.pid();
    child.detach();
    lab.persist();
    let status = Lab::status(Some(&prefix));
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].namespaces.len(), 6, "{}", status[0]);
    assert!(status[0].processes.iter().any(|p| p.name == "named" && p.alive), "{}", status[0]);
    // A second lab with the same prefix is refused.
    assert!(Lab::up(LabConfig::with_prefix(prefix.clone())).is_err());
    let report = Lab::down_prefix(&prefix).expect("down");
    assert_eq!(report.namespaces.len(), 6);
    assert!(report.ended.iter().any(|e| e.contains("named")), "{report:?}");
    assert!(Lab::status(Some(&prefix))[0].namespaces.is_empty());
    std::thread::sleep(Duration::from_millis(100));
    assert!(is_zombie_or_gone(pid), "sleep {pid} survived down");
}

/// What `cargo xtask bench` relies on after killing a benchmark at its time
/// limit (no destructor runs): the lab names its owner by pid and start
/// time, so the parent finds exactly the labs its child left.
#[test]
fn a_lab_left_by_a_killed_owner_is_found_by_pid_and_start_time() {
    let lab = up("owner");
    let prefix = lab.prefix().to_owned();
    let me = std::process::id();
    let start = guard_tests::process::start_time(me).expect("own start time");
    lab.persist();
    // Other tests of this binary run labs too: only this one is removed here.
    assert!(Lab::owned_by(me, start).contains(&prefix), "{:?}", Lab::owned_by(me, start));
    // The same pid with another start time is another process (pid reuse).
    assert!(!Lab::owned_by(me, start + 1).contains(&prefix));
    assert!(!Lab::owned_by(me + 1, start).contains(&prefix));
    let report = Lab::down_prefix(&prefix).expect("down");
    assert_eq!(report.namespaces.len(), 6, "{report:?}");
    assert!(!Lab::owned_by(me, start).contains(&prefix));
    assert!(Lab::status(Some(&prefix))[0].namespaces.is_empty());
}

#[test]
fn bind_notifies_the_router_and_allows_it_to_transfer() {
    let lab = up("notify");
    let a = lab.addrs().clone();
    let listen = SocketAddr::from((a.router_in_v4, lab.notify_port()));
    let socket =
        lab.run_in(Role::Router, || std::net::UdpSocket::bind(listen)).expect("enter router").expect("bind");
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    lab.rpz_add_v4(LabAddrs::inet_v4(53), Ipv4Addr::new(127, 0, 0, 1)).expect("update");
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf).expect("NOTIFY from BIND within 5 s");
    assert_eq!(from.ip(), IpAddr::from(a.dns_v4));
    assert!(n >= 12);
    assert_eq!((buf[2] >> 3) & 0x0f, 4, "opcode NOTIFY");

    // AXFR: the router may transfer the zone, the pc may not.
    let xfr = lab.dig(Role::Router, &[&format!("@{}", a.dns_v4), lab.rpz_zone(), "AXFR"]).expect("dig axfr");
    let text = String::from_utf8_lossy(&xfr.stdout);
    assert!(text.contains("53.100.51.198") || text.contains("198.51.100.53.rpz.example.com"), "{text}");
    let denied = lab.dig(Role::Pc, &[&format!("@{}", a.dns_v4), lab.rpz_zone(), "AXFR"]).expect("dig axfr");
    let text = String::from_utf8_lossy(&denied.stdout);
    assert!(text.contains("Transfer failed") && !text.contains("127.0.0.1"), "{text}");

    // IPv6 to BIND works too, and the lab has no way out: inet has no default route.
    lab.wait_for_answer(Role::Bot, "198.51.100.53", "127.0.0.1", Duration::from_secs(5))
        .expect("rewrite served");
    let v6 = lab.dig_query(Role::Bot, IpAddr::from(a.dns_v6), "198.51.100.53", "A").expect("dig v6");
    assert_eq!(v6.answers, vec!["127.0.0.1".to_owned()], "{}", v6.raw);
    let route = lab.exec(Role::Inet, &["ip", "route", "get", "192.0.2.1"]).expect("ip route get");
    assert!(
        !route.status.success(),
        "inet routes outside the lab: {}",
        String::from_utf8_lossy(&route.stdout)
    );
}
