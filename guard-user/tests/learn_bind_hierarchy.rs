//! `rpz-guard learn` on real DNS traffic (issue 3, integration test): real
//! BIND 9 authoritative servers (root, TLDs, domains with glue and with an
//! out-of-bailiwick NS, MX hosts with A/AAAA and CNAMEs) and a real BIND
//! resolver in network namespaces; a client resolves MX and addresses while
//! a bot goes straight to IPs; tcpdump captures the border; the learner
//! pushes into a real BIND RPZ by TSIG UPDATE; `dig` against the RPZ then
//! shows 127.0.0.1 for the name servers, 127.0.0.25 for the mail hosts and
//! NXDOMAIN for the rest. Expected sets come from the zone data written here.
//!
//! Two scenarios run side by side: the resolver without QNAME minimisation
//! and BIND's default EDNS size (a large MX answer comes truncated, then over
//! TCP in several segments), and with `qname-minimization relaxed` and a
//! 4096-byte EDNS size (the same answer comes as IPv4 fragments). Each also
//! checks that with the built-in (real) root hints the capture teaches
//! nothing, that a response nobody asked for teaches nothing, and that a
//! second run adds nothing. Set `LEARN_HIER_KEEP_PCAP=DIR` to keep the
//! captures for `tshark -r`.
//!
//! Needs root (namespaces, named on port 53, tcpdump), `dig`, `tshark`.
mod common;
mod learn_common;
mod learn_hierarchy;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{Named, NamedConfig, ZONE};
use guard_user::{
    policy::{AllowSet, Classes, Prefix},
    rpz::{encode_owner, transfer, zonefile},
};
use learn_hierarchy::{CLIENT, Dig, Proc, RESOLVER, Topology, World, Zone, dig, port53};

/// The rogue server the bot asks directly (never delegated to).
const ROGUE: &str = "198.18.66.6";
/// A mail port address nobody resolved (the bot's SMTP target).
const BOT_SMTP: &str = "203.0.113.99";
/// What the unsolicited response claims (MX host, NS glue).
const UNSOLICITED: [&str; 2] = ["203.0.113.77", "198.18.77.7"];

fn addr(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

/// Short unique namespace prefix (interface names stay fixed inside).
fn prefix(tag: &str) -> String {
    format!("lbh{}{tag}", std::process::id() % 100_000)
}

/// Starts the world's authoritative servers and the rogue in the outside
/// namespace.
fn start_authoritative(topo: &mut Topology, world: &World, rogue: &World, extra: &str) {
    let procs = learn_hierarchy::start_authoritative(
        &topo.outside.name,
        topo.dir.path(),
        world,
        rogue,
        addr(ROGUE),
        extra,
    );
    topo.procs.extend(procs);
}

/// The queries a mail client makes: MX of each mail domain of `zones`, then
/// A and AAAA of each exchange (the resolver follows CNAMEs).
fn client_traffic(client_ns: &str, world: &World, zones: &[&Zone]) {
    let resolver = port53(RESOLVER.into());
    let check = |d: &Dig, what: &str| {
        assert_eq!(d.status, "NOERROR", "{what} through the resolver:\n{}", d.raw);
    };
    for z in zones.iter().filter(|z| !z.mx.is_empty()) {
        let d = dig(Some(client_ns), resolver, z.origin, "MX", &[]);
        check(&d, &format!("{} MX", z.origin));
        let got: BTreeSet<String> = d.data("MX").into_iter().collect();
        let want: BTreeSet<String> = z.mx.iter().map(|(p, e)| format!("{p} {e}.")).collect();
        assert_eq!(got, want, "MX of {}", z.origin);
        // A mail client tries the first few exchanges only; the rest of a
        // large set is learned from the answer's additional section.
        for (_, ex) in z.mx.iter().take(4) {
            let canon = world.canonical(ex);
            for t in ["A", "AAAA"] {
                let d = dig(Some(client_ns), resolver, ex, t, &[]);
                check(&d, &format!("{ex} {t}"));
                let got: BTreeSet<IpAddr> = d.data(t).iter().map(|s| addr(s)).collect();
                let want: BTreeSet<IpAddr> =
                    world.hosts[canon].iter().copied().filter(|a| a.is_ipv4() == (t == "A")).collect();
                assert_eq!(got, want, "{ex} {t} (canonical {canon}):\n{}", d.raw);
            }
        }
    }
}

/// A web client: an address that is neither name server nor mail host, and
/// a name that does not exist.
fn web_traffic(client_ns: &str) {
    let resolver = port53(RESOLVER.into());
    let d = dig(Some(client_ns), resolver, "www.example.net", "A", &[]);
    assert_eq!(d.status, "NOERROR", "www.example.net A:\n{}", d.raw);
    assert_eq!(d.data("A"), vec!["203.0.113.80".to_owned()]);
    let d = dig(Some(client_ns), resolver, "nothing-here.example.net", "A", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
}

/// A bot that skips resolution: SMTP to a hard-coded IP, DNS (UDP and TCP)
/// straight to a server nobody delegated to, which answers with NS glue and
/// MX hosts of its own.
fn bot_traffic(client_ns: &str) {
    let smtp = SocketAddr::new(addr(BOT_SMTP), 25);
    // Nothing listens there: a refused connection still crosses the border.
    let _ = guard_tests::tcp_connect_in(client_ns, smtp, Duration::from_secs(2));
    // Non-recursive, like a resolver: the rogue adds its NS and glue.
    for extra in [&["+norec"][..], &["+norec", "+tcp"][..]] {
        let d = dig(Some(client_ns), port53(addr(ROGUE)), "evil.test", "MX", extra);
        assert_eq!(d.status, "NOERROR", "rogue answers the bot directly:\n{}", d.raw);
        let d = dig(Some(client_ns), port53(addr(ROGUE)), "mx.evil.test", "A", extra);
        assert_eq!(d.data("A"), vec!["203.0.113.66".to_owned()], "{}", d.raw);
    }
}

/// A response nobody asked for, on the border wire from a trusted server's
/// address (the `net.` TLD server): a delegation with glue and an MX with
/// its address. Were it evidence, both would be learned.
fn unsolicited_response(outside_ns: &str, world: &World) {
    use hickory_proto::{op::ResponseCode, rr::RecordType};
    use learn_common::{a, mx, ns, response};
    let server = world.hosts["a.nic.net"][0];
    let msg = response(
        0x5151,
        "evil2.net.",
        RecordType::MX,
        ResponseCode::NoError,
        vec![mx("evil2.net.", 10, "mx.evil2.net.")],
        vec![ns("evil2.net.", "ns.evil2.net.")],
        vec![a("mx.evil2.net.", UNSOLICITED[0]), a("ns.evil2.net.", UNSOLICITED[1])],
    );
    let frame = learn_common::eth_udp(server, addr("198.19.255.1"), 53, 40053, &msg);
    guard_tests::netns::send_frames(outside_ns, "b1", &[frame]).expect("send the unsolicited response");
}

/// Starts tcpdump on the border link (inside end) writing `pcap`; returns
/// once it listens.
fn start_capture(inside_ns: &str, pcap: &Path, log: &Path) -> Proc {
    let pcap_s = pcap.display().to_string();
    let mut tcpdump = Proc::spawn(
        "tcpdump",
        inside_ns,
        // Immediate mode: without it packets wait in the kernel ring for up to
        // the buffer timeout and those still there at SIGINT are lost.
        &["tcpdump", "-i", "b0", "-n", "-s", "0", "--immediate-mode", "-U", "-Z", "root", "-w", &pcap_s],
        log,
    );
    tcpdump.wait_log("listening on b0", Duration::from_secs(20));
    tcpdump
}

/// Lets late answers (the resolver's address fetches for NS names) land and
/// tcpdump write them, then stops it with SIGINT so it flushes.
fn stop_capture(mut tcpdump: Proc, pcap: &Path) {
    std::thread::sleep(Duration::from_millis(300));
    wait_until_stable(pcap, Duration::from_millis(300), Duration::from_secs(10));
    let status = tcpdump.interrupt(Duration::from_secs(10));
    assert!(status.success(), "tcpdump: {status}\n{}", tcpdump.log_text());
}

/// Destinations of the DNS queries the resolver sent (its border
/// addresses), read from the capture by tshark.
fn servers_queried(pcap: &Path) -> BTreeSet<IpAddr> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-n",
            "-Y",
            "dns.flags.response == 0 && (ip.src == 198.19.255.1 || ipv6.src == 2001:db8:ff::1)",
        ])
        .args(["-T", "fields", "-e", "ip.dst", "-e", "ipv6.dst"])
        .output()
        .expect("run tshark (package tshark)");
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(addr).collect()
}

/// Copies `pcap` to `$LEARN_HIER_KEEP_PCAP/<name>.pcap` when that is set
/// (for inspecting a capture by hand with `tshark -r`).
fn keep_capture(pcap: &Path, name: &str) {
    if let Some(dir) = std::env::var_os("LEARN_HIER_KEEP_PCAP") {
        let to = Path::new(&dir).join(format!("{name}.pcap"));
        std::fs::copy(pcap, &to).unwrap_or_else(|e| panic!("copy the capture to {}: {e}", to.display()));
    }
}

/// Packets of `pcap` that match the display `filter` (tshark).
fn tshark_count(pcap: &Path, filter: &str) -> usize {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-n", "-Y", filter])
        .output()
        .expect("run tshark (package tshark)");
    assert!(out.status.success(), "tshark -Y {filter}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Waits until `file` has kept its size for `quiet` (at most `timeout`).
fn wait_until_stable(file: &Path, quiet: Duration, timeout: Duration) {
    let size = || std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + timeout;
    let (mut last, mut since) = (size(), Instant::now());
    while since.elapsed() < quiet && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = size();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// What the RPZ says about `ip`: status and A data.
fn rpz_lookup(named: &Named, ip: IpAddr) -> Dig {
    let owner = encode_owner(&Prefix::host(ip), ZONE);
    dig(None, named.addr, &owner, "A", &["+norec"])
}

fn learn(args: &[&str], pcap: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rpz-guard"))
        .arg("learn")
        .arg("--quiet")
        .args(args)
        .arg(pcap)
        .output()
        .expect("run rpz-guard learn")
}

/// Learns from `pcap` with the extra `args`; returns the learned set (zone
/// file output read back).
fn learn_set(topo: &Topology, pcap: &Path, name: &str, args: &[&str]) -> AllowSet {
    let zone_out = topo.dir.path().join(name);
    let mut all = vec!["--zone", ZONE, "--zone-file", zone_out.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = learn(&all, pcap);
    assert!(out.status.success(), "learn {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&zone_out).expect("read learned zone");
    zonefile::parse_zone(&text, ZONE).expect("learned zone parses").set
}

/// A capture that starts mid-stream: the resolver already knows the TLD
/// servers (from the first round), so a new domain's referral comes from a
/// server never seen being delegated. With only the root as hints nothing is
/// learned; passing the TLD servers with `--trust-initial` learns the domain.
fn mid_stream(topo: &Topology, world: &World, hints: &Path) {
    let pcap = topo.dir.path().join("mid.pcap");
    let tcpdump = start_capture(&topo.inside.name, &pcap, &topo.dir.path().join("tcpdump-mid.log"));
    let late = world.late_zones();
    client_traffic(&topo.client.name, world, &late);
    stop_capture(tcpdump, &pcap);
    keep_capture(&pcap, "mid");

    let roots: AllowSet =
        world.ns_addrs(&[world.zone("")]).into_iter().map(|ip| (Prefix::host(ip), Classes::DNS)).collect();
    let hints_s = hints.to_str().expect("utf-8 path");
    let set = learn_set(topo, &pcap, "mid-roots.db", &["--root-hints", hints_s]);
    assert_eq!(set, roots, "mid-stream, trusting only the root: nothing learned");

    let tld = topo.dir.path().join("org.hints");
    std::fs::write(&tld, world.hints_for(&["org"])).expect("write TLD hints");
    let set = learn_set(
        topo,
        &pcap,
        "mid-tld.db",
        &["--root-hints", hints_s, "--trust-initial", tld.to_str().expect("utf-8 path")],
    );
    let dns = world.ns_addrs(&[world.zone(""), world.zone("org")]).into_iter().chain(world.ns_addrs(&late));
    let expected: AllowSet = dns
        .map(|ip| (Prefix::host(ip), Classes::DNS))
        .chain(world.mx_addrs(&late).into_iter().map(|ip| (Prefix::host(ip), Classes::SMTP)))
        .collect();
    assert_eq!(set, expected, "mid-stream with the TLD servers trusted");
}

/// One full run. `qmin` is the resolver's `qname-minimization` setting;
/// `udp_size` sets the EDNS UDP size of resolver and servers (BIND's
/// default 1232 makes large answers come over TCP; 4096 makes them come as
/// IPv4 fragments).
fn scenario(tag: &str, qmin: &str, udp_size: u16) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (network namespaces, named on port 53)");
    let started = Instant::now();
    let world = World::standard();
    let rogue = World::rogue();
    let mut outside: BTreeSet<IpAddr> = world.all_addresses();
    outside.extend(rogue.all_addresses());
    outside.insert(addr(ROGUE));
    outside.insert(addr(BOT_SMTP));
    let mut topo = Topology::up(&prefix(tag), &outside);
    start_authoritative(&mut topo, &world, &rogue, &format!("    max-udp-size {udp_size};"));
    let rpz = Named::start(&NamedConfig::default());

    // Capture the border from before the resolver starts (its priming too).
    let pcap = topo.dir.path().join("border.pcap");
    let inside = topo.inside.name.clone();
    let client = topo.client.name.clone();
    let tcpdump = start_capture(&inside, &pcap, &topo.dir.path().join("tcpdump.log"));

    let hints = topo.dir.path().join("root.hints");
    std::fs::write(&hints, world.root_hints()).expect("write root hints");
    let rdir = topo.subdir("resolver");
    std::fs::copy(&hints, rdir.join("root.hints")).expect("copy hints");
    let options = format!(
        "    listen-on port 53 {{ {RESOLVER}; }};\n    listen-on-v6 {{ none; }};\n    recursion yes;\n    \
         allow-recursion {{ any; }};\n    qname-minimization {qmin};\n    edns-udp-size {udp_size};"
    );
    let r = topo.start_named(
        "resolver",
        &inside,
        &rdir,
        &options,
        "zone \".\" { type hint; file \"root.hints\"; };",
    );
    if guard_tests::wait_for_udp_dns(&client, port53(RESOLVER.into()), Duration::from_secs(30)).is_err() {
        topo.procs[r].assert_running();
        panic!("resolver does not answer:\n{}", topo.procs[r].log_text());
    }

    client_traffic(&client, &world, &world.early_zones());
    web_traffic(&client);
    bot_traffic(&client);
    unsolicited_response(&topo.outside.name, &world);
    stop_capture(tcpdump, &pcap);
    let traffic_done = started.elapsed();
    keep_capture(&pcap, &format!("border-{tag}"));
    // The large answer took the path this scenario is about.
    let (filter, least, what) = if udp_size > 1232 {
        ("ip.dst == 198.19.255.1 && ip.flags.mf == 1", 1, "IPv4 fragments of a UDP answer")
    } else {
        ("ip.dst == 198.19.255.1 && tcp.srcport == 53 && tcp.len > 0", 2, "TCP segments of one answer")
    };
    let n = tshark_count(&pcap, filter);
    assert!(n >= least, "expected {what} in the capture, found {n}");

    // Trust starts at the root: with the built-in (real) root servers this
    // capture teaches nothing but those.
    let zone_out = topo.dir.path().join("builtin-roots.db");
    let out = learn(&["--zone", ZONE, "--zone-file", zone_out.to_str().expect("utf-8 path")], &pcap);
    assert!(out.status.success(), "learn with built-in hints: {}", String::from_utf8_lossy(&out.stderr));
    let parsed = zonefile::parse_zone(&std::fs::read_to_string(&zone_out).expect("read zone"), ZONE)
        .expect("learned zone parses");
    assert_eq!(parsed.set.len(), 26, "only the 13 real root servers (v4 and v6)");
    assert!(
        parsed.set.iter().all(|(p, c)| *c == Classes::DNS && !outside.contains(&p.addr())),
        "nothing of the test world is trusted without its root"
    );

    // The real run: our root as hints, pushed into the RPZ by TSIG UPDATE.
    let update = rpz.addr.to_string();
    let args = [
        "--zone",
        ZONE,
        "--root-hints",
        hints.to_str().expect("utf-8 path"),
        "--update",
        &update,
        "--tsig-key",
        rpz.key_file.to_str().expect("utf-8 path"),
        "--summary-json",
        "-",
    ];
    let out = learn(&args, &pcap);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "learn --update: {stderr}\n{}", rpz.log());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary is JSON");

    let dns = world.expected_dns();
    let smtp = world.expected_smtp();
    assert!(dns.is_disjoint(&smtp), "test world keeps name servers and mail hosts apart");
    let count = |k: &str| summary[k].as_u64().unwrap_or_else(|| panic!("summary field {k}: {summary}"));
    assert!(count("matched") > 0, "{summary}");
    assert!(count("unmatched_responses") >= 1, "the unsolicited response: {summary}");
    assert!(count("untrusted_responses") >= 4, "the rogue's answers to the bot: {summary}");
    assert!(count("packets") >= count("dns_messages") / 2, "{summary}");
    assert_eq!(summary["entries"]["dns"].as_u64(), Some(dns.len() as u64), "{summary}");
    assert_eq!(summary["entries"]["smtp"].as_u64(), Some(smtp.len() as u64), "{summary}");
    assert_eq!(summary["entries"]["total"].as_u64(), Some((dns.len() + smtp.len()) as u64), "{summary}");
    let malformed: u64 = summary["malformed"]
        .as_object()
        .unwrap_or_else(|| panic!("summary field malformed: {summary}"))
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert_eq!(malformed, 0, "a clean capture has nothing malformed: {summary}");
    // The hint servers are learned (trusted by configuration) but never
    // pushed: the zone gets every other name server and the mail hosts.
    let roots = world.ns_addrs(&[world.zone("")]);
    assert!(!roots.is_empty() && roots.is_subset(&dns), "the roots {roots:?} are name servers of the world");
    let pushed_dns: BTreeSet<IpAddr> = dns.difference(&roots).copied().collect();
    assert!(stderr.contains(&format!("added {} records", pushed_dns.len() + smtp.len())), "{stderr}");
    assert!(stderr.contains(&format!("{} hint servers (trusted, never pushed)", roots.len())), "{stderr}");

    // dig against the RPZ: name servers 127.0.0.1, mail hosts 127.0.0.25.
    for ip in &pushed_dns {
        let d = rpz_lookup(&rpz, *ip);
        assert_eq!(
            (d.status.as_str(), d.data("A")),
            ("NOERROR", vec!["127.0.0.1".to_owned()]),
            "name server {ip}:\n{}",
            d.raw
        );
    }
    for ip in &smtp {
        let d = rpz_lookup(&rpz, *ip);
        assert_eq!(
            (d.status.as_str(), d.data("A")),
            ("NOERROR", vec!["127.0.0.25".to_owned()]),
            "mail host {ip}:\n{}",
            d.raw
        );
    }
    // Cross-check with the wire: every server the resolver asked is one of
    // the world's name servers, and the RPZ has it (tshark, not the learner).
    let used = servers_queried(&pcap);
    assert!(used.len() >= 10, "the resolver asked {used:?}");
    assert!(used.is_subset(&dns), "servers asked {used:?} are not all name servers of the world {dns:?}");
    for ip in used.difference(&roots) {
        let d = rpz_lookup(&rpz, *ip);
        assert_eq!(d.data("A"), vec!["127.0.0.1".to_owned()], "server used {ip}:\n{}", d.raw);
    }
    // The bot's destinations, what the rogue claimed, and hosts that are
    // neither name servers nor mail exchangers: not in the zone.
    let mut absent: BTreeSet<IpAddr> = [ROGUE, BOT_SMTP].into_iter().map(addr).collect();
    absent.extend(rogue.all_addresses());
    absent.extend(UNSOLICITED.map(addr));
    absent.extend(world.hosts["www.example.net"].iter().copied());
    // Zones nobody asked about yet.
    absent.extend(world.ns_addrs(&world.late_zones()));
    absent.extend(world.mx_addrs(&world.late_zones()));
    absent.extend([CLIENT.into(), RESOLVER.into(), addr("198.19.255.1"), addr("198.19.255.2")]);
    absent.extend(&roots);
    for ip in &absent {
        let d = rpz_lookup(&rpz, *ip);
        assert_eq!(d.status, "NXDOMAIN", "{ip} must not be learned:\n{}", d.raw);
    }

    // The whole zone, exactly.
    let expected: AllowSet = pushed_dns
        .iter()
        .map(|ip| (Prefix::host(*ip), Classes::DNS))
        .chain(smtp.iter().map(|ip| (Prefix::host(*ip), Classes::SMTP)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let snap = rt.block_on(transfer::axfr(rpz.addr, ZONE, Some(&rpz.key))).expect("AXFR of the RPZ");
    // The lifetime state beside each entry (issue 11) is checked by learn_update.
    let got: AllowSet = snap.set.iter().map(|(p, c)| (*p, *c)).collect();
    assert_eq!(
        got, expected,
        "the RPZ holds exactly the world's name servers (but the hints) and mail hosts"
    );
    assert!(
        snap.set.iter().all(|(p, _)| snap.set.meta(p).is_some_and(|m| m.seen.is_some())),
        "every learned entry carries its lifetime TXT"
    );

    // Again: nothing left to add.
    let out = learn(&args, &pcap);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "second learn: {stderr}");
    assert!(stderr.contains("added 0 records"), "{stderr}");

    mid_stream(&topo, &world, &hints);

    eprintln!(
        "scenario {tag} (qname-minimization {qmin}, EDNS {udp_size}): traffic {traffic_done:?}, total {:?}; summary {summary}",
        started.elapsed()
    );
    drop(rpz);
    drop(topo);
}

#[test]
fn learns_from_real_bind_hierarchy() {
    scenario("q", "off", 1232);
}

#[test]
fn learns_from_real_bind_hierarchy_with_qname_minimisation() {
    scenario("m", "relaxed", 4096);
}

#[test]
fn world_zone_files_have_glue_only_in_bailiwick() {
    let w = World::standard();
    let org = w.zone_file("org");
    assert!(org.contains("oob.org. IN NS dns2.dnshost.net."));
    assert!(!org.contains("dns2.dnshost.net. 300 IN A"), "no glue for the out-of-bailiwick NS:\n{org}");
    assert!(org.contains("ns.shop.org. 300 IN A 198.18.20.1"), "in-bailiwick glue:\n{org}");
    let root = w.zone_file("");
    assert!(root.contains("a.root-servers.net. 300 IN AAAA 2001:db8:53::1"), "{root}");
    assert!(root.contains("ns.nic.test. 300 IN AAAA 2001:db8:53:3::1"), "{root}");
    assert!(!root.contains("ns.nic.test. 300 IN A "), "test. is reachable over IPv6 only:\n{root}");
    let dnshost = w.zone_file("dnshost.net");
    assert!(dnshost.contains("dns2.dnshost.net. 300 IN A 198.18.40.2"), "{dnshost}");
    assert_eq!(w.expected_dns().len(), 17);
    assert_eq!(w.expected_smtp().len(), 9 + 2 * learn_hierarchy::BULK_MX);
}
