//! Test support for `learn_bind_hierarchy`: a small DNS world (root, TLDs,
//! domains, mail hosts) described once in Rust, written out as BIND zone files
//! and served by real `named` processes in network namespaces; the expected
//! allow sets are derived from the same description.
//!
//! ```text
//!  client ns ──c0/i0── inside ns ──b0/b1── outside ns
//!  dig, bot            resolver,  border   one authoritative named per
//!                      tcpdump -i b0       server name (addresses on lo)
//! ```
//!
//! Everything runs in namespaces made here and is torn down on drop (also on
//! panic): processes first (by pid), then the namespaces.
#![allow(dead_code, reason = "helpers shared by the scenarios of one test binary")]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Inside (resolver) address facing the client.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);

/// MX records of `bulk.net`.
pub const BULK_MX: usize = 12;

/// A zone of the world.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Origin, lower case, no trailing dot (`""` for the root).
    pub origin: &'static str,
    /// Its name servers (host names).
    pub ns: Vec<&'static str>,
    /// Its MX records at the apex: (preference, exchange).
    pub mx: Vec<(u16, &'static str)>,
}

/// The DNS world: zones, hosts with addresses, aliases.
#[derive(Debug, Clone)]
pub struct World {
    /// Zones of the delegation tree (the root first).
    pub zones: Vec<Zone>,
    /// Host name → addresses.
    pub hosts: BTreeMap<&'static str, Vec<IpAddr>>,
    /// Alias → canonical name.
    pub cnames: BTreeMap<&'static str, &'static str>,
    /// Zones the client asks about only in a later, mid-stream capture.
    pub late: BTreeSet<&'static str>,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address in the test world")
}

/// `name` equals `zone` or lies below it.
pub fn is_under(name: &str, zone: &str) -> bool {
    zone.is_empty() || name == zone || name.ends_with(&format!(".{zone}"))
}

fn fqdn(name: &str) -> String {
    format!("{name}.")
}

impl World {
    /// The world of the test: root; TLDs `net` (v4+v6), `org` (two v4-only
    /// servers), `test` (IPv6 only); domains with glue, an out-of-bailiwick
    /// NS (`oob.org` served by `dns2.dnshost.net`, whose address only the
    /// `dnshost.net` zone knows), MX hosts with A and AAAA, an MX target that
    /// is a CNAME in the same zone and one that is a CNAME into another TLD;
    /// `bulk.net` with a large MX answer; `late.org`, asked about only in the
    /// mid-stream capture.
    pub fn standard() -> World {
        let zones = vec![
            Zone { origin: "", ns: vec!["a.root-servers.net"], mx: vec![] },
            Zone { origin: "net", ns: vec!["a.nic.net"], mx: vec![] },
            Zone { origin: "org", ns: vec!["ns1.nic.org", "ns2.nic.org"], mx: vec![] },
            Zone { origin: "test", ns: vec!["ns.nic.test"], mx: vec![] },
            Zone {
                origin: "example.net",
                ns: vec!["ns1.example.net", "ns2.example.net"],
                mx: vec![(10, "mx1.example.net"), (20, "mx2.example.net")],
            },
            Zone {
                origin: "shop.org",
                ns: vec!["ns.shop.org"],
                mx: vec![(10, "mail.shop.org"), (20, "mx.shop.org")],
            },
            Zone { origin: "hosting.test", ns: vec!["ns.hosting.test"], mx: vec![] },
            Zone { origin: "dnshost.net", ns: vec!["ns.dnshost.net"], mx: vec![] },
            Zone { origin: "oob.org", ns: vec!["dns2.dnshost.net"], mx: vec![(10, "mx.oob.org")] },
            Zone { origin: "bulk.net", ns: vec!["ns.bulk.net"], mx: Vec::new() },
            Zone { origin: "late.org", ns: vec!["ns.late.org"], mx: vec![(10, "mail.late.org")] },
        ];
        let hosts = [
            ("a.root-servers.net", vec!["198.18.0.1", "2001:db8:53::1"]),
            ("a.nic.net", vec!["198.18.1.1", "2001:db8:53:1::1"]),
            ("ns1.nic.org", vec!["198.18.2.1"]),
            ("ns2.nic.org", vec!["198.18.2.2"]),
            ("ns.nic.test", vec!["2001:db8:53:3::1"]),
            ("ns1.example.net", vec!["198.18.10.1", "2001:db8:53:10::1"]),
            ("ns2.example.net", vec!["198.18.10.2"]),
            ("ns.shop.org", vec!["198.18.20.1"]),
            ("ns.hosting.test", vec!["198.18.30.1", "2001:db8:53:30::1"]),
            ("ns.dnshost.net", vec!["198.18.40.1"]),
            ("dns2.dnshost.net", vec!["198.18.40.2", "2001:db8:53:40::2"]),
            ("mx1.example.net", vec!["203.0.113.10", "2001:db8:25::10"]),
            ("mail.example.net", vec!["203.0.113.11", "2001:db8:25::11"]),
            ("www.example.net", vec!["203.0.113.80", "2001:db8:25::80"]),
            ("mail.shop.org", vec!["203.0.113.20"]),
            ("relay.hosting.test", vec!["203.0.113.30", "2001:db8:25::30"]),
            ("mx.oob.org", vec!["203.0.113.40", "2001:db8:25::40"]),
            ("ns.late.org", vec!["198.18.60.1", "2001:db8:53:60::1"]),
            ("mail.late.org", vec!["203.0.113.60", "2001:db8:25::60"]),
        ]
        .into_iter()
        .map(|(h, a)| (h, a.into_iter().map(ip).collect()))
        .collect();
        let cnames = [("mx2.example.net", "mail.example.net"), ("mx.shop.org", "relay.hosting.test")]
            .into_iter()
            .collect();
        let late = ["late.org"].into_iter().collect();
        let mut w = World { zones, hosts, cnames, late };
        w.hosts.insert("ns.bulk.net", vec![ip("198.18.50.1")]);
        // A large MX answer (about 2.5 KB with its additional section): over
        // 1232 bytes it comes truncated and is asked again over TCP; with a
        // 4096-byte EDNS size it comes as IPv4 fragments. Long names rather
        // than many records: BIND adds no additional data for an RRset of
        // more than 13 records (CVE-2024-11187 fix).
        for i in 1..=BULK_MX {
            let n = u8::try_from(i).expect("few bulk hosts");
            let name =
                format!("mail-exchanger-{i:02}-{}.relay-{i:02}-{}.bulk.net", "q".repeat(45), "z".repeat(54));
            // Leaked: the world's names are 'static, a test process is short.
            let host: &'static str = Box::leak(name.into());
            let v6 = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x25, 1, 0, 0, 0, n.into());
            w.hosts.insert(host, vec![Ipv4Addr::new(198, 51, 100, n).into(), v6.into()]);
            let bulk = w.zones.iter_mut().find(|z| z.origin == "bulk.net").expect("bulk.net zone");
            bulk.mx.push((u16::from(n), host));
        }
        w
    }

    /// The rogue world the bot talks to: a server never delegated to,
    /// claiming `evil.test` with NS glue and MX hosts.
    pub fn rogue() -> World {
        let zones =
            vec![Zone { origin: "evil.test", ns: vec!["ns.evil.test"], mx: vec![(10, "mx.evil.test")] }];
        let hosts = [
            ("ns.evil.test", vec!["198.18.66.7"]),
            ("mx.evil.test", vec!["203.0.113.66", "2001:db8:25::66"]),
        ]
        .into_iter()
        .map(|(h, a)| (h, a.into_iter().map(ip).collect()))
        .collect();
        World { zones, hosts, cnames: BTreeMap::new(), late: BTreeSet::new() }
    }

    /// The zone `origin` (panics when the world has none).
    pub fn zone(&self, origin: &str) -> &Zone {
        self.zones.iter().find(|z| z.origin == origin).expect("zone of the world")
    }

    /// The zone holding authoritative data for `name` (deepest enclosing).
    pub fn authority(&self, name: &str) -> Option<&Zone> {
        self.zones.iter().filter(|z| is_under(name, z.origin)).max_by_key(|z| z.origin.len())
    }

    /// The zone delegating `zone` (deepest strictly enclosing one).
    fn parent(&self, zone: &Zone) -> Option<&Zone> {
        self.zones
            .iter()
            .filter(|p| p.origin != zone.origin && is_under(zone.origin, p.origin))
            .max_by_key(|p| p.origin.len())
    }

    fn address_records(&self, host: &str, out: &mut String) {
        for a in &self.hosts[host] {
            let t = if a.is_ipv4() { "A" } else { "AAAA" };
            writeln!(out, "{} 300 IN {t} {a}", fqdn(host)).expect("write to string");
        }
    }

    /// The master file of zone `origin`: SOA, NS, MX, CNAMEs and addresses
    /// it is authoritative for, delegations to its child zones with
    /// in-bailiwick glue only (so a child whose NS lies elsewhere gets none).
    pub fn zone_file(&self, origin: &str) -> String {
        let z = self.zone(origin);
        let apex = fqdn(z.origin);
        let mut out = String::new();
        let rname = if z.origin.is_empty() { "hostmaster.".to_owned() } else { format!("hostmaster.{apex}") };
        writeln!(out, "$TTL 300\n{apex} IN SOA {} {rname} 1 3600 600 86400 60", fqdn(z.ns[0]))
            .expect("write to string");
        for n in &z.ns {
            writeln!(out, "{apex} IN NS {}", fqdn(n)).expect("write to string");
        }
        for (pref, ex) in &z.mx {
            writeln!(out, "{apex} IN MX {pref} {}", fqdn(ex)).expect("write to string");
        }
        for (alias, target) in &self.cnames {
            if self.authority(alias).is_some_and(|a| a.origin == z.origin) {
                writeln!(out, "{} IN CNAME {}", fqdn(alias), fqdn(target)).expect("write to string");
            }
        }
        let mut hosts: BTreeSet<&str> = self
            .hosts
            .keys()
            .copied()
            .filter(|h| self.authority(h).is_some_and(|a| a.origin == z.origin))
            .collect();
        // The apex NS addresses even below a cut (the root's own servers).
        hosts.extend(z.ns.iter().copied());
        for child in self.zones.iter().filter(|c| self.parent(c).is_some_and(|p| p.origin == z.origin)) {
            for n in &child.ns {
                writeln!(out, "{} IN NS {}", fqdn(child.origin), fqdn(n)).expect("write to string");
                if is_under(n, child.origin) {
                    hosts.insert(n);
                }
            }
        }
        for h in hosts {
            self.address_records(h, &mut out);
        }
        out
    }

    /// Name servers (host name → zones they serve).
    pub fn servers(&self) -> BTreeMap<&'static str, Vec<&'static str>> {
        let mut m: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
        for z in &self.zones {
            for n in &z.ns {
                m.entry(n).or_default().push(z.origin);
            }
        }
        m
    }

    /// Zones the client asks about in the first capture (not `late`).
    pub fn early_zones(&self) -> Vec<&Zone> {
        self.zones.iter().filter(|z| !self.late.contains(z.origin)).collect()
    }

    /// Zones the client asks about only in the mid-stream capture.
    pub fn late_zones(&self) -> Vec<&Zone> {
        self.zones.iter().filter(|z| self.late.contains(z.origin)).collect()
    }

    /// Addresses of the name servers of `zones`.
    pub fn ns_addrs(&self, zones: &[&Zone]) -> BTreeSet<IpAddr> {
        zones.iter().flat_map(|z| z.ns.iter()).flat_map(|n| self.hosts[n].iter().copied()).collect()
    }

    /// Addresses of the mail exchangers of `zones` (CNAMEs followed).
    pub fn mx_addrs(&self, zones: &[&Zone]) -> BTreeSet<IpAddr> {
        zones
            .iter()
            .flat_map(|z| z.mx.iter())
            .flat_map(|(_, ex)| self.hosts[self.canonical(ex)].iter().copied())
            .collect()
    }

    /// Class DNS after the first capture: the name servers of every zone
    /// the resolution walks through.
    pub fn expected_dns(&self) -> BTreeSet<IpAddr> {
        self.ns_addrs(&self.early_zones())
    }

    /// Class SMTP after the first capture: every mail exchanger asked for.
    pub fn expected_smtp(&self) -> BTreeSet<IpAddr> {
        self.mx_addrs(&self.early_zones())
    }

    /// `name` with CNAMEs followed.
    pub fn canonical(&self, name: &'static str) -> &'static str {
        let mut n = name;
        for _ in 0..8 {
            match self.cnames.get(n) {
                Some(t) => n = t,
                None => break,
            }
        }
        n
    }

    /// Every address of the world.
    pub fn all_addresses(&self) -> BTreeSet<IpAddr> {
        self.hosts.values().flatten().copied().collect()
    }

    /// The hints file (BIND root-hints format) naming the root servers.
    pub fn root_hints(&self) -> String {
        self.hints_for(&[""])
    }

    /// A root-hints-format file naming the servers of zones `origins`.
    pub fn hints_for(&self, origins: &[&str]) -> String {
        let mut out = String::new();
        for o in origins {
            let z = self.zone(o);
            for n in &z.ns {
                writeln!(out, "{}. 3600000 NS {}", z.origin, fqdn(n)).expect("write to string");
            }
            for n in &z.ns {
                for a in &self.hosts[n] {
                    let t = if a.is_ipv4() { "A" } else { "AAAA" };
                    writeln!(out, "{} 3600000 {t} {a}", fqdn(n)).expect("write to string");
                }
            }
        }
        out
    }
}

/// Runs `ip` with `args` in the root namespace; panics on failure.
pub fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (package iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Runs `args` in namespace `ns`; panics on failure.
pub fn ns_cmd(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("run ip netns exec");
    assert!(
        out.status.success(),
        "in {ns}: {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace made by the test; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates `name` with `lo` up; panics when it already exists.
    pub fn new(name: &str) -> Netns {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "namespace {name} exists (left by a crashed run?): remove it with `ip netns del {name}`"
        );
        ip_cmd(&["netns", "add", name]);
        let ns = Netns { name: name.to_owned() };
        ip_cmd(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A process started by the test (through `ip netns exec`, which execs it,
/// so the pid is the program's own); ended by pid on drop.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// Where its stdout/stderr go.
    pub log: PathBuf,
    child: Child,
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Proc {
    /// Starts `args` in namespace `ns`, output to `log`.
    pub fn spawn(name: &str, ns: &str, args: &[&str], log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("create log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", args.join(" ")));
        Proc { name: name.to_owned(), log: log.to_owned(), child }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with its log when it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}:\n{}", self.name, self.log_text());
        }
    }

    /// Waits until its log contains `needle` (panics with the log after `timeout`).
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT and waits (bounded) for it to exit.
    pub fn interrupt(&mut self, timeout: Duration) -> ExitStatus {
        signal(self.child.id(), libc::SIGINT);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGINT for {timeout:?}", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Child::kill signals exactly this pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespaces and links of one scenario. Fields drop in order:
/// processes, then namespaces, then the directory.
pub struct Topology {
    /// Processes (named, tcpdump); ended first on drop.
    pub procs: Vec<Proc>,
    /// `<prefix>c`: client and bot.
    pub client: Netns,
    /// `<prefix>i`: resolver and border capture, routes client ↔ outside.
    pub inside: Netns,
    /// `<prefix>o`: authoritative servers, addresses on `lo`.
    pub outside: Netns,
    /// Configs, zones, logs, the capture.
    pub dir: tempfile::TempDir,
}

impl Topology {
    /// Makes the three namespaces, the two veth pairs and the routes, and
    /// puts `outside_addrs` on the outside namespace's `lo`.
    pub fn up(prefix: &str, outside_addrs: &BTreeSet<IpAddr>) -> Topology {
        let dir = tempfile::Builder::new().prefix("learn-hier-").tempdir().expect("temp dir");
        let client = Netns::new(&format!("{prefix}c"));
        let inside = Netns::new(&format!("{prefix}i"));
        let outside = Netns::new(&format!("{prefix}o"));
        let (c, i, o) = (client.name.as_str(), inside.name.as_str(), outside.name.as_str());
        ip_cmd(&["-n", i, "link", "add", "i0", "type", "veth", "peer", "name", "c0", "netns", c]);
        ip_cmd(&["-n", i, "link", "add", "b0", "type", "veth", "peer", "name", "b1", "netns", o]);
        let addrs: [(&str, &str, &str); 6] = [
            (c, "c0", "198.19.1.10/24"),
            (c, "c0", "2001:db8:c::10/64"),
            (i, "i0", "198.19.1.1/24"),
            (i, "i0", "2001:db8:c::1/64"),
            (i, "b0", "198.19.255.1/30"),
            (i, "b0", "2001:db8:ff::1/64"),
        ];
        for (ns, dev, a) in addrs {
            ip_cmd(&["-n", ns, "addr", "add", a, "dev", dev, "nodad"]);
        }
        ip_cmd(&["-n", o, "addr", "add", "198.19.255.2/30", "dev", "b1"]);
        ip_cmd(&["-n", o, "addr", "add", "2001:db8:ff::2/64", "dev", "b1", "nodad"]);
        for (ns, dev) in [(c, "c0"), (i, "i0"), (i, "b0"), (o, "b1")] {
            ip_cmd(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip_cmd(&["-n", c, "route", "add", "default", "via", "198.19.1.1"]);
        ip_cmd(&["-n", c, "-6", "route", "add", "default", "via", "2001:db8:c::1"]);
        ip_cmd(&["-n", i, "route", "add", "default", "via", "198.19.255.2"]);
        ip_cmd(&["-n", i, "-6", "route", "add", "default", "via", "2001:db8:ff::2"]);
        ip_cmd(&["-n", o, "route", "add", "198.19.0.0/16", "via", "198.19.255.1"]);
        ip_cmd(&["-n", o, "-6", "route", "add", "2001:db8:c::/64", "via", "2001:db8:ff::1"]);
        // Wire-sized TCP segments on the border (veth would otherwise pass
        // 64 KB GSO packets that tcpdump sees as one), as on a real link.
        for (ns, dev) in [(i, "b0"), (o, "b1")] {
            ns_cmd(ns, &["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"]);
        }
        ns_cmd(i, &["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        for a in outside_addrs {
            let cidr = if a.is_ipv4() { format!("{a}/32") } else { format!("{a}/128") };
            ip_cmd(&["-n", o, "addr", "add", &cidr, "dev", "lo"]);
        }
        Topology { procs: Vec::new(), client, inside, outside, dir }
    }

    /// A fresh subdirectory of the scenario's directory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("create subdirectory");
        p
    }

    /// Starts `named` (see [`start_named`]) and keeps it in `procs`;
    /// returns its index there.
    pub fn start_named(&mut self, label: &str, ns: &str, dir: &Path, options: &str, zones: &str) -> usize {
        self.procs.push(start_named(label, ns, dir, options, zones));
        self.procs.len() - 1
    }
}

/// Writes a named.conf in `dir` (zones: origin → file name, already in
/// `dir`) and starts `named -g` in `ns`.
pub fn start_named(label: &str, ns: &str, dir: &Path, options: &str, zones: &str) -> Proc {
    let conf = format!(
        r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    dump-file "{d}/cache.dump";
    statistics-file "{d}/named.stats";
    notify no;
    dnssec-validation no;
{options}
}};
controls {{ }};
{zones}
"#,
        d = dir.display()
    );
    let conf_path = dir.join("named.conf");
    std::fs::write(&conf_path, conf).expect("write named.conf");
    let check =
        Command::new("named-checkconf").arg("-z").arg(&conf_path).output().expect("run named-checkconf");
    assert!(
        check.status.success(),
        "named-checkconf {label}: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let conf_s = conf_path.display().to_string();
    Proc::spawn(label, ns, &["named", "-g", "-n", "1", "-c", &conf_s], &dir.join("named.log"))
}

/// One authoritative named: its label, addresses, zones (origin, file text).
struct AuthServer {
    label: String,
    addrs: Vec<IpAddr>,
    zones: Vec<(&'static str, String)>,
}

/// Starts one authoritative named per server name of `world` in namespace
/// `ns` (directories under `base`), and one for `rogue` on `rogue_addr`,
/// then waits until every address answers. `extra` goes into every
/// server's options.
pub fn start_authoritative(
    ns: &str,
    base: &Path,
    world: &World,
    rogue: &World,
    rogue_addr: IpAddr,
    extra: &str,
) -> Vec<Proc> {
    let mut procs: Vec<(Proc, Vec<IpAddr>)> = Vec::new();
    let mut servers: Vec<AuthServer> = world
        .servers()
        .into_iter()
        .map(|(host, zones)| AuthServer {
            label: host.to_owned(),
            addrs: world.hosts[host].clone(),
            zones: zones.iter().map(|z| (*z, world.zone_file(z))).collect(),
        })
        .collect();
    servers.push(AuthServer {
        label: "rogue".into(),
        addrs: vec![rogue_addr],
        zones: rogue.zones.iter().map(|z| (z.origin, rogue.zone_file(z.origin))).collect(),
    });
    for AuthServer { label: host, addrs, zones: files } in servers {
        let dir = base.join(format!("auth-{host}"));
        std::fs::create_dir_all(&dir).expect("create server directory");
        let mut zones = String::new();
        for (origin, text) in &files {
            let file = if origin.is_empty() { "root.zone".to_owned() } else { format!("{origin}.zone") };
            std::fs::write(dir.join(&file), text).expect("write zone file");
            let name = if origin.is_empty() { "." } else { origin };
            zones.push_str(&format!("zone \"{name}\" {{ type primary; file \"{file}\"; }};\n"));
        }
        let v4: Vec<String> = addrs.iter().filter(|a| a.is_ipv4()).map(|a| format!("{a};")).collect();
        let v6: Vec<String> = addrs.iter().filter(|a| a.is_ipv6()).map(|a| format!("{a};")).collect();
        let listen = |l: &[String]| if l.is_empty() { "none;".to_owned() } else { l.join(" ") };
        let options = format!(
            "    listen-on port 53 {{ {} }};\n    listen-on-v6 port 53 {{ {} }};\n    recursion no;\n    \
             check-mx-cname ignore;\n    check-integrity no;\n{extra}",
            listen(&v4),
            listen(&v6)
        );
        procs.push((start_named(&format!("named {host}"), ns, &dir, &options, &zones), addrs));
    }
    for (p, addrs) in &mut procs {
        for a in addrs.iter() {
            if guard_tests::wait_for_udp_dns(ns, port53(*a), Duration::from_secs(30)).is_err() {
                p.assert_running();
                panic!("{} does not answer on {a}:\n{}", p.name, p.log_text());
            }
        }
    }
    procs.into_iter().map(|(p, _)| p).collect()
}

/// One `dig` answer.
#[derive(Debug, Clone, Default)]
pub struct Dig {
    /// Response code (`NOERROR`, `NXDOMAIN`, ...).
    pub status: String,
    /// Answer records: (owner, type, data).
    pub answers: Vec<(String, String, String)>,
    /// The raw output.
    pub raw: String,
}

impl Dig {
    /// The data of answers of type `t`.
    pub fn data(&self, t: &str) -> Vec<String> {
        self.answers.iter().filter(|(_, ty, _)| ty == t).map(|(_, _, d)| d.clone()).collect()
    }
}

/// Runs `dig` (in `ns` when given) against `server:port` and parses status
/// and answer section. `extra` adds flags such as `+norec` or `+tcp`.
pub fn dig(ns: Option<&str>, server: SocketAddr, name: &str, qtype: &str, extra: &[&str]) -> Dig {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dig"]);
            c
        }
        None => Command::new("dig"),
    };
    cmd.arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=3", "+tries=3", "+noall", "+comments", "+answer"])
        .args(extra)
        .args([name, qtype]);
    let out = cmd.output().expect("run dig (package bind9-dnsutils)");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = raw
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_owned();
    let answers = raw
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[0].to_owned(), f[3].to_owned(), f[4..].join(" ")))
        })
        .collect();
    Dig { status, answers, raw }
}

/// Socket address of a name server on port 53.
pub fn port53(a: IpAddr) -> SocketAddr {
    SocketAddr::new(a, 53)
}
