//! The OpenFlow rows of the `live` section: the same questions as XDP mode
//! on a real Open vSwitch bridge controlled by `rpz-guard run --mode
//! openflow --learn`, in one run:
//!
//! * **DNS answer latency** added by learning: the resolver's own queries
//!   to the authoritative server (fresh MX names, each answer teaching a new
//!   mail host), timed in the resolver's namespace, with learning off
//!   (answers go `NORMAL`), `copy` (`NORMAL` + `CONTROLLER`) and `hold`
//!   (`CONTROLLER` only; released after the learned flows and a barrier).
//! * **First SYN** to a freshly resolved mail host (client → resolver →
//!   authoritative, then connect at once), per mode, against an entry
//!   registered in the RPZ beforehand; SYNs that needed a retransmission
//!   (TCP_INFO) or never got through count as dropped.
//! * **Lags** from the daemon: answer → flows confirmed by the switch
//!   (BARRIER_REPLY), answer → entry at BIND.
//!
//! ```text
//!  client c 10.98.0.10 ─┐   router ns: OVS bridge lvbr (netdev, secure) + rpz-guard
//!  resolver r 10.98.0.53 ┼── lvbr ── inet s 10.98.0.1, 198.18.0.0/15 AnyIP
//!                        │                (authoritative named, SMTP sink)
//!  BIND (RPZ primary) in the lab's dns namespace, over the lab lan
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard_benches::{Chart, Opts, Summary, Table, load, percentile};
use guard_tests::{Lab, LabChild, LabConfig, ResponderMode, netns, ovs::Ovs};
use guard_user::daemon::StatusReport;

use super::{connect_in as connect, header, mx_query, name};

const BRIDGE: &str = "lvbr";
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 10);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 53);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
/// The authoritative server for `.` and `bench.` (inside the inet AnyIP range).
const AUTH: Ipv4Addr = Ipv4Addr::new(198, 18, 53, 53);

/// Mail host of `d<i>.bench` (198.18.1.1 upward).
fn mail_host(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn sh(args: &[&str]) -> Result<String> {
    let out =
        std::process::Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("{args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lab, the bridge and its hosts; the named processes.
struct OfLab {
    _named: Vec<LabChild>,
    _ovs: Ovs,
    client: String,
    resolver: String,
    lab: Lab,
    hints: String,
    port: u16,
}

impl OfLab {
    fn up(domains: u32) -> Result<OfLab> {
        let lab = Lab::up(LabConfig::for_test("liveof").responder(ResponderMode::Off))?;
        let router = lab.ns(guard_tests::Role::Router);
        let client = lab.create_namespace("c")?;
        let resolver = lab.create_namespace("r")?;
        let inet = lab.create_namespace("s")?;
        let ovs = Ovs::start(lab.state_dir().join("ovs-live"), Some(&router))?;
        ovs.add_secure_bridge(BRIDGE, Some(0x11fe))?;
        for (ns, port, addr) in
            [(&client, "lvc", CLIENT), (&resolver, "lvr", RESOLVER), (&inet, "lvs", GATEWAY)]
        {
            sh(&[
                "ip", "-n", &router, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            sh(&["ip", "-n", &router, "link", "set", port, "up"])?;
            sh(&["ip", "-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            // The netdev datapath does not complete offloaded checksums.
            sh(&["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off"])?;
            // Its ports are packet sockets: the router's own stack must not
            // answer or route what arrives on them.
            sh(&[
                "ip",
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{port}.forwarding=0"),
                &format!("net.ipv4.conf.{port}.arp_ignore=8"),
                &format!("net.ipv6.conf.{port}.disable_ipv6=1"),
            ])?;
            ovs.vsctl(&["add-port", BRIDGE, port])?;
        }
        for ns in [&client, &resolver] {
            sh(&["ip", "-n", ns, "route", "add", "198.18.0.0/15", "via", &GATEWAY.to_string()])?;
        }
        sh(&["ip", "-n", &inet, "route", "add", "local", "198.18.0.0/15", "dev", "lo"])?;
        sh(&["ip", "-n", &inet, "addr", "add", &format!("{AUTH}/32"), "dev", "lo"])?;
        let smtp = netns::run_in_netns(&inet, || std::net::TcpListener::bind("0.0.0.0:25"))??;
        load::sink(smtp);

        let state = lab.state_dir().to_path_buf();
        let adir = state.join("of-auth");
        std::fs::create_dir_all(&adir)?;
        let soa = |z: &str| format!("$TTL 300\n{z} IN SOA a.root.bench. h.bench. 1 3600 600 86400 60\n");
        std::fs::write(
            adir.join("root.zone"),
            format!(
                "{}. IN NS a.root.bench.\nbench. IN NS a.root.bench.\na.root.bench. IN A {AUTH}\n",
                soa(".")
            ),
        )?;
        let mut bench = format!("{}bench. IN NS a.root.bench.\na.root.bench. IN A {AUTH}\n", soa("bench."));
        for i in 0..domains {
            bench.push_str(&format!(
                "d{i}.bench. IN MX 10 mx.d{i}.bench.\nmx.d{i}.bench. IN A {}\n",
                mail_host(i)
            ));
        }
        std::fs::write(adir.join("bench.zone"), bench)?;
        let d = adir.display();
        let conf = format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; listen-on port 53 {{ {AUTH}; }}; \
             listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; }};\ncontrols {{ }};\n\
             zone \".\" {{ type primary; file \"root.zone\"; }};\nzone \"bench\" {{ type primary; file \"bench.zone\"; }};\n"
        );
        std::fs::write(adir.join("named.conf"), conf)?;
        let auth = lab.spawn_in(&inet, &["named", "-g", "-n", "1", "-c", &format!("{d}/named.conf")])?;
        let rdir = state.join("of-resolver");
        std::fs::create_dir_all(&rdir)?;
        let hints = rdir.join("root.hints");
        std::fs::write(&hints, format!(". 3600000 NS a.root.bench.\na.root.bench. 3600000 A {AUTH}\n"))?;
        let r = rdir.display();
        std::fs::write(
            rdir.join("named.conf"),
            format!(
                "options {{ directory \"{r}\"; pid-file \"{r}/named.pid\"; listen-on port 53 {{ {RESOLVER}; }}; \
                 listen-on-v6 {{ none; }}; recursion yes; allow-recursion {{ any; }}; dnssec-validation no; \
                 query-source address {RESOLVER}; }};\ncontrols {{ }};\nzone \".\" {{ type hint; file \"root.hints\"; }};\n"
            ),
        )?;
        let res = lab.spawn_in(&resolver, &["named", "-g", "-n", "1", "-c", &format!("{r}/named.conf")])?;
        // The router namespace is this lab's own: a fixed port is free.
        let port = 6653;
        ovs.vsctl(&["set-controller", BRIDGE, &format!("tcp:127.0.0.1:{port}")])?;
        Ok(OfLab {
            _named: vec![auth, res],
            _ovs: ovs,
            client,
            resolver,
            lab,
            hints: hints.to_string_lossy().into_owned(),
            port,
        })
    }

    /// `rpz-guard run --mode openflow`, learning with `answers` (or not);
    /// returns once the bridge is synchronised.
    fn daemon(&self, tag: &str, answers: Option<&str>) -> Result<(LabChild, std::path::PathBuf)> {
        let a = self.lab.addrs();
        let sock = self.lab.state_dir().join(format!("{tag}.sock"));
        let journal = self.lab.state_dir().join(format!("{tag}.journal"));
        let (bin, server, key) = (
            guard_benches::daemon::bin().to_string_lossy().into_owned(),
            format!("{}:53", a.dns_v4),
            self.lab.tsig_key_file().to_string_lossy().into_owned(),
        );
        let (listen, notify) =
            (format!("127.0.0.1:{}", self.port), format!("{}:{}", a.router_in_v4, self.lab.notify_port()));
        let (sock_s, journal_s) =
            (sock.to_string_lossy().into_owned(), journal.to_string_lossy().into_owned());
        // The lab's own state directory, never the host's /var/lib/rpz-guard.
        let state = self.lab.state_dir().join("of-state").to_string_lossy().into_owned();
        let mut args = vec![
            bin.as_str(),
            "run",
            "--state-dir",
            &state,
            "--mode",
            "openflow",
            "--openflow-listen",
            &listen,
            "--server",
            &server,
            "--tsig-key",
            &key,
            "--notify-listen",
            &notify,
            "--exempt",
            "10.98.0.53/32",
            "--internal",
            "10.98.0.0/24",
            "--events",
            "none",
            "--status-socket",
            &sock_s,
        ];
        if let Some(mode) = answers {
            args.extend([
                "--learn",
                "--learn-root-hints",
                &self.hints,
                "--learn-journal",
                &journal_s,
                "--learn-openflow-answers",
                mode,
            ]);
        }
        let mut child = self.lab.spawn(guard_tests::Role::Router, &args)?;
        let t = Instant::now();
        loop {
            let synced = status(&sock).is_ok_and(|s| s.extra["resyncs"].as_u64().is_some_and(|n| n > 0));
            if synced {
                break;
            }
            if !child.is_running() || t.elapsed() > Duration::from_secs(30) {
                bail!("rpz-guard ({tag}) not synchronised with the bridge:\n{}", child.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((child, sock))
    }
}

fn status(sock: &std::path::Path) -> Result<StatusReport> {
    let out = std::process::Command::new(guard_benches::daemon::bin())
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// One DNS exchange over UDP from namespace `ns` (bound to `from`); the
/// round-trip time, or None without an answer within `timeout`.
fn exchange(ns: &str, from: Ipv4Addr, to: Ipv4Addr, query: Vec<u8>, timeout: Duration) -> Option<Duration> {
    netns::run_in_netns(ns, move || -> std::io::Result<Option<Duration>> {
        let s = UdpSocket::bind((from, 0))?;
        s.set_read_timeout(Some(timeout))?;
        let t = Instant::now();
        s.send_to(&query, (to, 53))?;
        let mut buf = [0u8; 4096];
        loop {
            match s.recv(&mut buf) {
                Ok(n) if n >= 2 && buf[..2] == query[..2] => return Ok(Some(t.elapsed())),
                Ok(_) => {}
                Err(_) => return Ok(None),
            }
        }
    })
    .ok()
    .and_then(Result::ok)
    .flatten()
}

/// A recursive MX query (RD set).
fn recursive_mx(id: u16, domain: &str) -> Vec<u8> {
    let mut m = header(id, 0x0100, 1, 0, 0, 0);
    m.extend(name(domain));
    m.extend_from_slice(&15u16.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// What one mode measured.
#[derive(Default)]
struct ModeRun {
    answer_us: Vec<f64>,
    connect_ms: Vec<f64>,
    dropped: usize,
    tried: usize,
    status: Option<StatusReport>,
}

/// Domains per mode: `answers` direct queries, then `syns` client lookups.
fn run_mode(
    l: &OfLab,
    tag: &str,
    answers: Option<&str>,
    base: u32,
    n_answers: u32,
    n_syns: u32,
) -> Result<ModeRun> {
    let (_child, sock) = l.daemon(tag, answers)?;
    // The bridge passes nothing before its controller is in (secure mode);
    // the first time, this also warms the resolver's root and bench. cache.
    netns::wait_for_udp_dns(&l.client, SocketAddr::new(IpAddr::V4(RESOLVER), 53), Duration::from_secs(20))?;
    let _ = exchange(&l.client, CLIENT, RESOLVER, recursive_mx(1, "warm.bench"), Duration::from_secs(2));
    let mut run = ModeRun::default();
    // The resolver's own queries to the authoritative server.
    for i in 0..n_answers {
        let q = mx_query((i % 65_536) as u16, &format!("d{}.bench", base + i));
        if let Some(rtt) = exchange(&l.resolver, RESOLVER, AUTH, q, Duration::from_secs(1)) {
            run.answer_us.push(rtt.as_secs_f64() * 1e6);
        }
    }
    // A client resolves through the resolver and connects at once.
    for i in 0..n_syns {
        let idx = base + n_answers + i;
        let q = recursive_mx((idx % 65_536) as u16, &format!("d{idx}.bench"));
        if exchange(&l.client, CLIENT, RESOLVER, q, Duration::from_secs(2)).is_none() {
            bail!("{tag}: d{idx}.bench MX through the resolver got no answer");
        }
        run.tried += 1;
        match connect(&l.client, mail_host(idx), Duration::from_millis(1500)) {
            Some((ms, 0)) => run.connect_ms.push(ms),
            _ => run.dropped += 1,
        }
    }
    std::thread::sleep(Duration::from_millis(1200));
    run.status = status(&sock).ok();
    Ok(run)
}

/// Connects to destinations registered in the RPZ before the daemon starts.
fn pre_installed(l: &OfLab, base: u32, n: u32) -> Result<Vec<f64>> {
    for i in 0..n {
        l.lab.rpz_add_v4(mail_host(base + i), Ipv4Addr::new(127, 0, 0, 25))?;
    }
    let (_child, sock) = l.daemon("of-pre", None)?;
    let t = Instant::now();
    while status(&sock).map_or(0, |s| s.entries.2) < n as usize {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("the pre-installed entries did not reach the daemon");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok((0..n)
        .filter_map(|i| connect(&l.client, mail_host(base + i), Duration::from_secs(2)))
        .filter(|c| c.1 == 0)
        .map(|c| c.0)
        .collect())
}

/// Adds the OpenFlow rows to the section.
pub(crate) fn rows(
    opts: &Opts,
    notes: &mut Vec<String>,
    tables: &mut Vec<Table>,
    charts: &mut Vec<Chart>,
) -> Result<()> {
    let (n_answers, n_syns) = if opts.quick { (60, 20) } else { (300, 100) };
    let per_mode = n_answers + n_syns;
    let l = OfLab::up(4 * per_mode + n_syns)?;
    let off = run_mode(&l, "of-off", None, 0, n_answers, n_syns)?;
    let copy = run_mode(&l, "of-copy", Some("copy"), per_mode, n_answers, n_syns)?;
    let hold = run_mode(&l, "of-hold", Some("hold"), 2 * per_mode, n_answers, n_syns)?;
    let pre = pre_installed(&l, 3 * per_mode, n_syns)?;

    let p = |v: &[f64], q: f64| percentile(v, q);
    let added = |v: &[f64], q: f64| p(v, q) - p(&off.answer_us, q);
    tables.push(Table {
        caption: "OpenFlow mode: DNS answer latency through the bridge (resolver → authoritative → resolver, µs; each answer teaches a new mail host)".into(),
        header: vec!["answers toward the resolver".into(), "p50".into(), "p99".into(), "added p50".into(), "added p99".into(), "n".into()],
        rows: vec![
            vec!["no learning (NORMAL)".into(), format!("{:.0}", p(&off.answer_us, 50.0)), format!("{:.0}", p(&off.answer_us, 99.0)), "—".into(), "—".into(), off.answer_us.len().to_string()],
            vec!["copy (NORMAL + CONTROLLER)".into(), format!("{:.0}", p(&copy.answer_us, 50.0)), format!("{:.0}", p(&copy.answer_us, 99.0)), format!("{:+.0}", added(&copy.answer_us, 50.0)), format!("{:+.0}", added(&copy.answer_us, 99.0)), copy.answer_us.len().to_string()],
            vec!["hold (CONTROLLER; flows, barrier, release)".into(), format!("{:.0}", p(&hold.answer_us, 50.0)), format!("{:.0}", p(&hold.answer_us, 99.0)), format!("{:+.0}", added(&hold.answer_us, 50.0)), format!("{:+.0}", added(&hold.answer_us, 99.0)), hold.answer_us.len().to_string()],
        ],
    });
    let ms = |v: &[f64], q: f64| if v.is_empty() { "—".to_owned() } else { format!("{:.3}", p(v, q)) };
    let syn_row = |label: &str, r: &ModeRun| {
        vec![
            label.to_owned(),
            format!("{} of {}", r.dropped, r.tried),
            ms(&r.connect_ms, 50.0),
            ms(&r.connect_ms, 99.0),
            r.connect_ms.len().to_string(),
        ]
    };
    tables.push(Table {
        caption: "OpenFlow mode: first SYN to a freshly resolved destination (connect time in ms)".into(),
        header: vec![
            "case".into(),
            "SYNs dropped".into(),
            "connect p50".into(),
            "connect p99".into(),
            "n".into(),
        ],
        rows: vec![
            syn_row("no live learning (today)", &off),
            vec![
                "entry pre-installed in the RPZ".into(),
                "0".into(),
                format!("{:.3}", p(&pre, 50.0)),
                format!("{:.3}", p(&pre, 99.0)),
                pre.len().to_string(),
            ],
            syn_row("live learning, copy", &copy),
            syn_row("live learning, hold", &hold),
        ],
    });
    let lag =
        |r: &ModeRun, f: fn(&guard_user::learn::live::LiveStats) -> Option<guard_user::learn::live::Lag>| {
            r.status.as_ref().and_then(|s| s.live.as_ref()).and_then(f).map_or(
                vec!["—".into(), "—".into(), "0".into()],
                |l| {
                    vec![
                        format!("{:.3}", l.p50_us / 1e3),
                        format!("{:.3}", l.p99_us / 1e3),
                        l.samples.to_string(),
                    ]
                },
            )
        };
    let mut rows = Vec::new();
    for (label, r, f) in [
        (
            "hold: answer packet-in → flows confirmed (BARRIER_REPLY)",
            &hold,
            (|s: &guard_user::learn::live::LiveStats| s.lag_flows) as fn(&_) -> _,
        ),
        ("hold: answer → entry accepted by BIND", &hold, |s| s.lag_pushed),
        ("copy: answer → entry accepted by BIND", &copy, |s| s.lag_pushed),
    ] {
        let mut row = vec![label.to_owned()];
        row.extend(lag(r, f));
        rows.push(row);
    }
    tables.push(Table {
        caption: "OpenFlow mode: lags measured by the daemon (ms)".into(),
        header: vec!["what".into(), "p50".into(), "p99".into(), "samples".into()],
        rows,
    });
    charts.push(Chart {
        title: "OpenFlow mode: DNS answer latency by answer handling (median, min–max)".into(),
        unit: "µs".into(),
        bars: vec![
            Summary::of(&off.answer_us).bar("no learning"),
            Summary::of(&copy.answer_us).bar("copy"),
            Summary::of(&hold.answer_us).bar("hold"),
        ],
    });
    let counter = |r: &ModeRun, k: &str| {
        r.status.as_ref().map_or(0, |s| s.counters.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v))
    };
    let raced = |r: &ModeRun| r.status.as_ref().and_then(|s| s.live.as_ref()).map_or(0, |l| l.raced_misses);
    notes.push(format!(
        "OpenFlow mode (real OVS netdev bridge, real BIND resolver and authoritative server): holding the \
         answers toward the resolver until the flows they teach are in adds p50 {:+.0} µs / p99 {:+.0} µs to \
         each answer over no learning (copy: {:+.0} / {:+.0} µs); the first SYN to a fresh destination was \
         dropped {} of {} times with hold (by construction its flow is in before the resolver sees the answer), \
         {} of {} with copy ({} raced misses: SYNs that beat the flows and took the packet-in path), {} of {} \
         without learning. Copies lost: hold {}, copy {}. Default: hold (an answer's WAN round trip is \
         milliseconds; the hold costs a controller round trip on the same host).",
        added(&hold.answer_us, 50.0),
        added(&hold.answer_us, 99.0),
        added(&copy.answer_us, 50.0),
        added(&copy.answer_us, 99.0),
        hold.dropped,
        hold.tried,
        copy.dropped,
        copy.tried,
        raced(&copy),
        off.dropped,
        off.tried,
        counter(&hold, "dns_copy_lost"),
        counter(&copy, "dns_copy_lost"),
    ));
    Ok(())
}
