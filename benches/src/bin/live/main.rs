//! Live learning (issue 9), two parts in one run:
//!
//! * **Throughput on one core.** The XDP programs run with
//!   `BPF_PROG_TEST_RUN` on crafted resolver queries (inside program) and
//!   answers (outside program), so the copies go through the real programs
//!   and the real copy ring; the learner thread (the daemon's loop,
//!   `learn::live::serve_ring`, pinned to CPU 1) learns from them and writes
//!   each new entry into the real allow map. Offered rates step up; per step:
//!   responses learned per second, copies lost. Past the learner's capacity a
//!   second curve offers bursts into a paused learner (the limit of any rate
//!   past its capacity): copies kept by the ring, lost and counted beyond it.
//! * **First SYN to a freshly resolved destination** in the lab: a real BIND
//!   resolver, a real authoritative server outside, `rpz-guard run --learn`
//!   in the router. The pc resolves a fresh mail domain (MX, then A) and
//!   connects at once; compared with the same connect to a destination
//!   registered in the RPZ beforehand, and with today's behaviour (no live
//!   learning: the first SYN is dropped). Answer → enforced and answer → at
//!   BIND come from the daemon's own lag samples.
//! * **OpenFlow mode** ([`openflow`]): the same on a real Open vSwitch
//!   bridge, plus the DNS answer latency that holding answers until their
//!   flows are in adds (against copying them, and against no learning).
//!
//! Needs root.

mod openflow;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard_benches::{
    Chart, Flag, Opts, Section, Summary, Table, daemon::LabDaemon, percentile, write_section,
};
use guard_common::Settings;
use guard_tests::{Lab, LabChild, LabConfig, ResponderMode, Role};
use guard_user::{
    learn::{
        Hints,
        live::{LiveAllow, LiveLearner, serve_ring},
    },
    policy::{Classes, Prefix, ProtectedPort, Service, Transport},
    xdp::{Enforcer, OUTSIDE_PROGRAM, PROGRAM_NAME, ProgramConfig},
};

const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 54);
const ROOT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
/// Published by Cilium for its DNS proxy (p50 added latency of a proxied
/// DNS request, Cilium docs "DNS Proxy" performance figure); it cannot run
/// in this lab, so it is quoted, not measured.
const CILIUM_DNS_PROXY_P50_MS: f64 = 2.9;

fn main() -> Result<()> {
    let opts = Opts::from_env_with(&[
        Flag {
            name: "--drain-only",
            value: None,
            help: "one capacity drain of the learner, printed; no section",
        },
        Flag { name: "--openflow-only", value: None, help: "only the OpenFlow rows (a partial section)" },
        Flag { name: "--throughput-only", value: None, help: "only the learner's throughput (no lab)" },
    ]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the live bench needs root (XDP, namespaces)");
    }
    let mut notes = Vec::new();
    let mut tables = Vec::new();
    let mut charts = Vec::new();
    // `--drain-only`: one capacity drain, printed (for profiling the
    // learner, e.g. under `valgrind --tool=callgrind
    // --toggle-collect='*serve_ring*'`); writes no section.
    if opts.has("--drain-only") {
        let (rate, lost) = drain_capacity(20_000)?;
        println!("drained 20000 answers: {rate:.0} answers/s, {lost} copies lost");
        return Ok(());
    }
    // `--openflow-only`: just the OpenFlow rows (a partial section).
    // `--throughput-only`: just the learner's throughput (no lab).
    let throughput_only = opts.has("--throughput-only");
    if !opts.has("--openflow-only") {
        throughput(&opts, &mut notes, &mut tables, &mut charts)?;
        if !throughput_only {
            first_syn(&opts, &mut notes, &mut tables, &mut charts)?;
        }
    }
    if !throughput_only {
        openflow::rows(&opts, &mut notes, &mut tables, &mut charts)?;
    }
    write_section(
        &opts.out,
        &Section {
            name: "live".into(),
            title: "Live learning: learner throughput, first SYN to a freshly resolved destination, lags"
                .into(),
            notes,
            tables,
            charts,
        },
    )
}

// ---------- crafted DNS ----------

fn name(n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in n.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

fn header(id: u16, flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    [id, flags, qd, an, ns, ar].iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn rr(owner: &str, rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut r = name(owner);
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&300u32.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

fn mx_query(id: u16, domain: &str) -> Vec<u8> {
    let mut m = header(id, 0x0000, 1, 0, 0, 0);
    m.extend(name(domain));
    m.extend_from_slice(&15u16.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// An authoritative MX answer with the exchange's address in the additional section.
fn mx_answer(id: u16, domain: &str, mx_addr: Ipv4Addr) -> Vec<u8> {
    let exchange = format!("mx.{domain}");
    let mut m = header(id, 0x8400, 1, 1, 0, 1);
    m.extend(name(domain));
    m.extend_from_slice(&15u16.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    let mut mxd = 10u16.to_be_bytes().to_vec();
    mxd.extend(name(&exchange));
    m.extend(rr(domain, 15, &mxd));
    m.extend(rr(&exchange, 1, &mx_addr.octets()));
    m
}

fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend(h);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A fresh, learnable address per index (100.64.0.0/10).
fn fresh(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 + (i % 0x003f_ffff) + 1)
}

// ---------- throughput ----------

/// The 1-minute load average (the machine is shared: every figure is read with it).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

struct Step {
    label: String,
    offered: u64,
    secs: f64,
    copied: u64,
    lost: u64,
    processed: u64,
    learned: u64,
}

fn counters(e: &Enforcer) -> Result<(u64, u64)> {
    let s = e.stats()?;
    Ok((s[guard_common::Stat::DnsCopied as usize], s[guard_common::Stat::DnsCopyLost as usize]))
}

/// The programs, the copy ring and a learner (not started yet).
struct Rig {
    e: Enforcer,
    live: Arc<LiveAllow>,
    stop: Arc<AtomicBool>,
    go: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Rig {
    fn new() -> Result<Rig> {
        let mut e = Enforcer::load(None)?;
        e.configure(&ProgramConfig {
            ports: vec![
                ProtectedPort { proto: Transport::Udp, port: 53, service: Service::Dns },
                ProtectedPort { proto: Transport::Tcp, port: 53, service: Service::Dns },
                ProtectedPort { proto: Transport::Tcp, port: 25, service: Service::Smtp },
            ],
            exempt_sources: vec![Prefix::host(RESOLVER.into())],
            internal_networks: vec![],
            // As a running daemon: an allow set in force, misses go to userspace.
            settings: Settings { state: guard_common::STATE_LOADED, ..Settings::default() },
            ..ProgramConfig::default()
        })?;
        e.set_resolvers(&[Prefix::host(RESOLVER.into())])?;
        let ring = e.take_dns_copy()?;
        let mut writer = e.allow_writer()?;
        let live = Arc::new(LiveAllow::new(4_000_000)?);
        let hints = Hints::parse(&format!(". 3600000 NS a.root.bench.\na.root.bench. 3600000 A {ROOT}\n"))?;
        let learner = LiveLearner::new(
            &hints,
            10_000_000_000,
            false,
            live.clone(),
            Box::new(|_| Classes::NONE),
            Box::new(move |ip, c| writer.set(ip, c).map_err(|e| e.to_string())),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let go = Arc::new(AtomicBool::new(false));
        let (s, g) = (stop.clone(), go.clone());
        let thread = std::thread::spawn(move || {
            pin_to_cpu(1);
            while !g.load(Ordering::Acquire) && !s.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_micros(200));
            }
            serve_ring(ring, learner, &s);
        });
        pin_to_cpu(0);
        Ok(Rig { e, live, stop, go, thread: Some(thread) })
    }

    /// Copies one resolver query and its answer (teaching one new mail host).
    fn pair(&mut self, i: u32) -> Result<()> {
        let id = (i % 65_536) as u16;
        let port = 1024 + (i % 60_000) as u16;
        let domain = format!("d{i}.bench");
        let q = udp_frame(RESOLVER, ROOT, port, 53, &mx_query(id, &domain));
        let r = udp_frame(ROOT, RESOLVER, 53, port, &mx_answer(id, &domain, fresh(i)));
        self.e.test_run_program(PROGRAM_NAME, &q, 1)?;
        self.e.test_run_program(OUTSIDE_PROGRAM, &r, 1)?;
        Ok(())
    }

    /// Waits until the learner has read every copy made so far.
    fn settle(&self) -> Result<()> {
        let t = Instant::now();
        while self.live.packets() < counters(&self.e)?.0 && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The learner's capacity on one core: the ring is filled with `pairs`
/// query/answer pairs while the learner waits, then it is let go and timed
/// until it has read them all. Returns answers (= new entries) per second.
fn drain_capacity(pairs: u32) -> Result<(f64, u64)> {
    let mut rig = Rig::new()?;
    for i in 0..pairs {
        rig.pair(i)?;
    }
    let (copied, lost) = counters(&rig.e)?;
    let t = Instant::now();
    rig.go.store(true, Ordering::Release);
    while rig.live.packets() < copied {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("learner did not drain {copied} copies in 30 s");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let secs = t.elapsed().as_secs_f64();
    let learned = rig.live.stats().learned;
    if learned != u64::from(pairs) {
        bail!("learned {learned} of {pairs} answers");
    }
    Ok((f64::from(pairs) / secs, lost))
}

fn throughput(
    opts: &Opts,
    notes: &mut Vec<String>,
    tables: &mut Vec<Table>,
    charts: &mut Vec<Chart>,
) -> Result<()> {
    let load_start = loadavg();
    // 1. Capacity: drain a full ring (about 25 000 pairs fit in 8 MiB).
    let trials = if opts.quick { 2 } else { 5 };
    let mut caps = Vec::new();
    for _ in 0..trials {
        let (rate, lost) = drain_capacity(20_000)?;
        if lost > 0 {
            bail!("{lost} copies lost while filling the ring");
        }
        caps.push(rate);
    }
    let cap = Summary::of(&caps);

    // 2. Offered rates in steps with the learner running (one driver thread;
    // BPF_PROG_TEST_RUN syscalls bound what it can offer).
    let mut rig = Rig::new()?;
    rig.go.store(true, Ordering::Release);
    let step_secs = if opts.quick { 0.3 } else { 1.0 };
    let rates: &[u64] = if opts.quick { &[20_000, 1_000_000] } else { &[10_000, 25_000, 50_000, 1_000_000] };
    let mut next = 0u32;
    let mut steps = Vec::new();
    for &rate in rates {
        let (c0, l0) = counters(&rig.e)?;
        let s0 = rig.live.stats();
        let t = Instant::now();
        let mut sent = 0u64;
        while t.elapsed().as_secs_f64() < step_secs {
            let due = ((t.elapsed().as_secs_f64() + 0.001) * rate as f64) as u64;
            while sent < due && t.elapsed().as_secs_f64() < step_secs {
                rig.pair(next)?;
                next += 1;
                sent += 1;
            }
            if let Some(wait) = Duration::from_secs_f64(due as f64 / rate as f64).checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        rig.settle()?;
        let (c1, l1) = counters(&rig.e)?;
        let s1 = rig.live.stats();
        steps.push(Step {
            label: if rate >= 1_000_000 {
                "as fast as the driver goes".into()
            } else {
                format!("{} k/s", rate / 1000)
            },
            offered: sent,
            secs,
            copied: c1 - c0,
            lost: l1 - l0,
            processed: s1.packets - s0.packets,
            learned: s1.learned - s0.learned,
        });
    }
    drop(rig);
    let bursts: &[u32] = if opts.quick { &[40_000, 80_000] } else { &[30_000, 40_000, 60_000, 80_000] };
    let mut over = Vec::new();
    for &n in bursts {
        over.push((n, burst(n)?));
    }
    let load_end = loadavg();

    let mut rows: Vec<Vec<String>> = vec![vec![
        format!("ring pre-filled, learner drains it ({trials} trials)"),
        "—".into(),
        "—".into(),
        cap.fmt(0),
        "0".into(),
        "0.00 %".into(),
        "true".into(),
    ]];
    rows.extend(steps.iter().map(|s| {
        vec![
            s.label.clone(),
            format!("{:.0}", s.offered as f64 / s.secs),
            format!("{:.0}", (s.copied as f64) / s.secs),
            format!("{:.0}", s.learned as f64 / s.secs),
            s.lost.to_string(),
            format!("{:.2} %", 100.0 * s.lost as f64 / (s.copied + s.lost).max(1) as f64),
            (s.processed >= s.copied).to_string(),
        ]
    }));
    rows.extend(over.iter().map(|&(n, (copied, lost, learned))| {
        vec![
            format!("burst of {n} answers into a paused learner"),
            "—".into(),
            format!("{copied} copies made"),
            format!("{learned} learned"),
            lost.to_string(),
            format!("{:.2} %", 100.0 * lost as f64 / (copied + lost).max(1) as f64),
            "true".into(),
        ]
    }));
    tables.push(Table {
        caption: "Learner throughput on one core (learner thread pinned to CPU 1; per second; the burst \
                  rows are totals)"
            .into(),
        header: vec![
            "offered".into(),
            "answers sent/s".into(),
            "copies/s".into(),
            "entries learned/s".into(),
            "copies lost".into(),
            "loss".into(),
            "learner read every copy".into(),
        ],
        rows,
    });
    charts.push(Chart {
        title: "Live learner on one core: answers learned from per second (each teaches one new mail host)"
            .into(),
        unit: "answers/s".into(),
        bars: vec![cap.bar("capacity (ring drain)")],
    });
    notes.push(format!(
        "Throughput: every answer matches a query of the resolver and teaches one new mail host (MX with \
         the exchange's A in the additional section), so each costs the whole path: copy in the XDP programs \
         (queries by the inside program, answers by the outside one, through BPF_PROG_TEST_RUN on crafted \
         frames), the copy ring, frame decode, DNS parse, query matching, the learning rules, the live set, \
         the push queue and a write into the kernel's allow map. Capacity: the ring is filled with 20 000 \
         pairs while the learner waits, then the learner thread (pinned to one CPU) is timed until it has \
         read all 40 000 copies: {} answers/s (aim ≥ 200 000/s: {}). The stepped rows offer answers while \
         it runs; one driver thread making two test-run syscalls per answer cannot offer more than the rates \
         shown, so no copy is lost there; past capacity the ring (8 MiB, about 60 000 copies) absorbs bursts \
         and then loses copies, counted as `dns_copy_lost` (the integration test floods 200 000 answers \
         through the router and checks every copy is learned from or counted lost), never the answers. \
         Past capacity: one driver thread cannot offer answers faster than the learner reads them \
         (the stepped rows), so the loss past the knee is shown as bursts offered while the learner is \
         paused (the limit of any rate above capacity: the ring absorbs what it holds, the rest is lost \
         and counted); a burst's answers beyond the ring are lost to learning, the answers themselves \
         pass. Capacity trials: {} (min {:.0}, max {:.0}, \
         range {:.0} % of the median). Load average (1 min) at the start of the throughput part {load_start}, \
         at its end {load_end}, on this shared 2-core VM.",
        cap.fmt(0),
        if cap.median >= 200_000.0 { "met" } else { "missed" },
        caps.iter().map(|c| format!("{c:.0}")).collect::<Vec<_>>().join(", "),
        cap.min,
        cap.max,
        100.0 * (cap.max - cap.min) / cap.median.max(1.0),
    ));
    Ok(())
}

/// Past what the learner keeps up with: bursts of `pairs` query/answer
/// pairs offered while it is paused (faster than any learner: the
/// driver's whole rate into a ring nobody reads), then drained. Returns
/// (copies made, copies lost, answers learned).
fn burst(pairs: u32) -> Result<(u64, u64, u64)> {
    let mut rig = Rig::new()?;
    for i in 0..pairs {
        rig.pair(i)?;
    }
    let (copied, lost) = counters(&rig.e)?;
    rig.go.store(true, Ordering::Release);
    rig.settle()?;
    Ok((copied, lost, rig.live.stats().learned))
}

// ---------- first SYN in the lab ----------

/// The resolver: a second address of the lab's dns host.
fn resolver_addr(lab: &Lab) -> Ipv4Addr {
    Ipv4Addr::new(10, lab.addrs().subnet, 0, 54)
}

/// The bench world: one authoritative server for `.` and `bench.` (so the
/// root hints trust it), `d<i>.bench MX 10 mx.d<i>.bench` with a fresh A.
fn zone_files(n: u32) -> (String, String) {
    let root = format!(
        "$TTL 300\n. IN SOA a.root.bench. h.bench. 1 3600 600 86400 60\n. IN NS a.root.bench.\n\
         bench. IN NS a.root.bench.\na.root.bench. IN A {ROOT}\n"
    );
    let mut bench = format!(
        "$TTL 300\nbench. IN SOA a.root.bench. h.bench. 1 3600 600 86400 60\nbench. IN NS a.root.bench.\na.root.bench. IN A {ROOT}\n"
    );
    for i in 0..n {
        bench
            .push_str(&format!("d{i}.bench. IN MX 10 mx.d{i}.bench.\nmx.d{i}.bench. IN A {}\n", fresh_mx(i)));
    }
    (root, bench)
}

/// Mail hosts of the lab world (inside the inet namespace's AnyIP ranges).
fn fresh_mx(i: u32) -> Ipv4Addr {
    if i < 250 {
        Ipv4Addr::new(203, 0, 113, (i + 1) as u8)
    } else {
        Ipv4Addr::new(198, 51, 100, (i - 249) as u8)
    }
}

fn spawn_named(lab: &Lab, role: Role, dir: &std::path::Path, conf: &str) -> Result<LabChild> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("named.conf");
    std::fs::write(&path, conf)?;
    let p = path.to_string_lossy().into_owned();
    Ok(lab.spawn(role, &["named", "-g", "-n", "1", "-c", &p])?)
}

/// Connects from the pc to `ip`:25 once; the connect time and TCP_INFO's
/// retransmissions (None: not established within `timeout`).
fn connect(lab: &Lab, ip: Ipv4Addr, timeout: Duration) -> Option<(f64, u32)> {
    connect_in(&lab.ns(Role::Pc), ip, timeout)
}

/// The same from namespace `ns`.
fn connect_in(ns: &str, ip: Ipv4Addr, timeout: Duration) -> Option<(f64, u32)> {
    let t = Instant::now();
    let s = guard_tests::tcp_connect_in(ns, SocketAddr::new(IpAddr::V4(ip), 25), timeout).ok()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    Some((ms, guard_tests::tcp_retransmissions(&s).ok()?))
}

fn resolve(lab: &Lab, i: u32) -> Result<()> {
    let r = IpAddr::V4(resolver_addr(lab));
    let d = lab.dig_query(Role::Pc, r, &format!("d{i}.bench"), "MX")?;
    if d.status != "NOERROR" {
        bail!("d{i}.bench MX: {}", d.status);
    }
    lab.dig_query(Role::Pc, r, &format!("mx.d{i}.bench"), "A")?;
    Ok(())
}

fn first_syn(
    opts: &Opts,
    notes: &mut Vec<String>,
    tables: &mut Vec<Table>,
    charts: &mut Vec<Chart>,
) -> Result<()> {
    let n: u32 = if opts.quick { 40 } else { 200 };
    let lab = Lab::up(LabConfig::for_test("live").responder(ResponderMode::Off))?;
    let res = resolver_addr(&lab);
    let (inet, dns) = (lab.ns(Role::Inet), lab.ns(Role::Dns));
    let state = lab.state_dir().to_path_buf();
    // SMTP sink on every inet address.
    let listener = guard_tests::netns::run_in_netns(&inet, || std::net::TcpListener::bind("[::]:25"))??;
    guard_benches::load::sink(listener);
    // The authoritative world (named listens on configured addresses only,
    // so ROOT is put on lo besides the AnyIP route).
    guard_tests::netns::exec_ok_root(&["-n", &inet, "addr", "add", &format!("{ROOT}/32"), "dev", "lo"])?;
    // Indices: live 0..n (n ≤ 200), today 200.., pre-installed 260..310.
    let (root, bench) = zone_files(320);
    let adir = state.join("live-auth");
    std::fs::create_dir_all(&adir)?;
    std::fs::write(adir.join("root.zone"), root)?;
    std::fs::write(adir.join("bench.zone"), bench)?;
    let d = adir.display();
    let auth = spawn_named(
        &lab,
        Role::Inet,
        &adir,
        &format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; listen-on port 53 {{ {ROOT}; }}; \
             listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; }};\ncontrols {{ }};\n\
             zone \".\" {{ type primary; file \"root.zone\"; }};\nzone \"bench\" {{ type primary; file \"bench.zone\"; }};\n"
        ),
    )?;
    // The resolver, on a second address of the dns host.
    guard_tests::netns::exec_ok_root(&["-n", &dns, "addr", "add", &format!("{res}/24"), "dev", "eth0"])?;
    let rdir = state.join("live-resolver");
    std::fs::create_dir_all(&rdir)?;
    std::fs::write(
        rdir.join("root.hints"),
        format!(". 3600000 NS a.root.bench.\na.root.bench. 3600000 A {ROOT}\n"),
    )?;
    let r = rdir.display();
    let resolver = spawn_named(
        &lab,
        Role::Dns,
        &rdir,
        &format!(
            "options {{ directory \"{r}\"; pid-file \"{r}/named.pid\"; listen-on port 53 {{ {res}; }}; \
             listen-on-v6 {{ none; }}; recursion yes; allow-recursion {{ any; }}; dnssec-validation no; \
             query-source address {res}; }};\ncontrols {{ }};\nzone \".\" {{ type hint; file \"root.hints\"; }};\n"
        ),
    )?;
    let hints = rdir.join("root.hints").to_string_lossy().into_owned();
    let journal = state.join("live.journal").to_string_lossy().into_owned();
    let resolver_pfx = format!("{res}/32");
    let notify = format!("{}:{}", lab.addrs().router_in_v4, lab.notify_port());
    let resolver_exempt = format!("{res}/32");
    let extra = vec!["--notify-listen", notify.as_str(), "--exempt", resolver_exempt.as_str()];
    let learn_args = [
        "--learn",
        "--learn-outside",
        "out0",
        "--learn-resolver",
        &resolver_pfx,
        "--learn-root-hints",
        &hints,
        "--learn-journal",
        &journal,
    ];

    // 1. Today: no live learning; a freshly resolved destination's SYN is dropped.
    let today = {
        let d = LabDaemon::start(&lab, "live-today", &extra)?;
        guard_tests::netns::wait_for_udp_dns(
            &lab.ns(Role::Pc),
            SocketAddr::new(IpAddr::V4(res), 53),
            Duration::from_secs(20),
        )?;
        let k = if opts.quick { 3 } else { 5 };
        let mut blocked = 0;
        for i in 0..k {
            resolve(&lab, 200 + i)?;
            if connect(&lab, fresh_mx(200 + i), Duration::from_millis(2500)).is_none_or(|(_, re)| re > 0) {
                blocked += 1;
            }
        }
        drop(d.child);
        (blocked, k)
    };

    // 2. Pre-installed: the destinations are in the RPZ before.
    let pre: Vec<f64> = {
        for i in 0..n.min(50) {
            lab.rpz_add_v4(fresh_mx(260 + i), Ipv4Addr::new(127, 0, 0, 25))?;
        }
        let d = LabDaemon::start(&lab, "live-pre", &extra)?;
        let mut v = Vec::new();
        for i in 0..n.min(50) {
            resolve(&lab, 260 + i)?;
            if let Some((ms, 0)) = connect(&lab, fresh_mx(260 + i), Duration::from_secs(2)) {
                v.push(ms);
            }
        }
        drop(d.child);
        v
    };

    // 3. Live learning: fresh destinations, first SYN.
    let mut with_learn = extra.clone();
    with_learn.extend_from_slice(&learn_args);
    let d = LabDaemon::start(&lab, "live-learn", &with_learn)?;
    let mut live_ms = Vec::new();
    // The baseline for the added latency: pre-installed destinations,
    // interleaved with the fresh ones under the same daemon, so both see
    // the same machine load.
    let mut pre_same = Vec::new();
    let mut dropped = 0;
    for i in 0..n {
        resolve(&lab, i)?;
        match connect(&lab, fresh_mx(i), Duration::from_secs(3)) {
            Some((ms, 0)) => live_ms.push(ms),
            _ => dropped += 1,
        }
        let j = 260 + i % n.min(50);
        resolve(&lab, j)?;
        if let Some((ms, 0)) = connect(&lab, fresh_mx(j), Duration::from_secs(2)) {
            pre_same.push(ms);
        }
    }
    // Let the pusher finish, then read the daemon's lag samples.
    std::thread::sleep(Duration::from_millis(1500));
    let st = d.status()?;
    drop(d.child);
    drop(resolver);
    drop(auth);
    let live = st.live.clone().context("status shows live learning")?;

    let p = |v: &[f64], q: f64| percentile(v, q);
    let added50 = p(&live_ms, 50.0) - p(&pre_same, 50.0);
    let added99 = p(&live_ms, 99.0) - p(&pre_same, 99.0);
    tables.push(Table {
        caption: "First SYN to a freshly resolved destination (connect time in ms, pc → router → inet)"
            .into(),
        header: vec![
            "case".into(),
            "SYNs dropped".into(),
            "connect p50".into(),
            "connect p99".into(),
            "n".into(),
        ],
        rows: vec![
            vec![
                "today (no live learning)".into(),
                format!("{} of {} (blocked until the next learn run)", today.0, today.1),
                "—".into(),
                "—".into(),
                today.1.to_string(),
            ],
            vec![
                "entry pre-installed in the RPZ".into(),
                "0".into(),
                format!("{:.3}", p(&pre, 50.0)),
                format!("{:.3}", p(&pre, 99.0)),
                pre.len().to_string(),
            ],
            vec![
                "entry pre-installed, same daemon, interleaved with the fresh ones (baseline)".into(),
                "0".into(),
                format!("{:.3}", p(&pre_same, 50.0)),
                format!("{:.3}", p(&pre_same, 99.0)),
                pre_same.len().to_string(),
            ],
            vec![
                "live learning, fresh destination".into(),
                format!("{dropped} of {n}"),
                format!("{:.3}", p(&live_ms, 50.0)),
                format!("{:.3}", p(&live_ms, 99.0)),
                live_ms.len().to_string(),
            ],
            vec![
                "Cilium DNS proxy (published, not run here)".into(),
                "—".into(),
                format!("{CILIUM_DNS_PROXY_P50_MS} (added)"),
                "—".into(),
                "—".into(),
            ],
        ],
    });
    let lag = |l: &Option<guard_user::learn::live::Lag>| {
        l.map_or(("—".to_owned(), "—".to_owned(), 0), |l| {
            (format!("{:.3}", l.p50_us / 1e3), format!("{:.3}", l.p99_us / 1e3), l.samples)
        })
    };
    let (e50, e99, en) = lag(&live.lag_enforced);
    let (b50, b99, bn) = lag(&live.lag_pushed);
    tables.push(Table {
        caption: "Lags measured by the daemon (ms; from the kernel's copy time of the answer)".into(),
        header: vec!["what".into(), "p50".into(), "p99".into(), "samples".into()],
        rows: vec![
            vec!["answer → entry enforced locally (allow map written)".into(), e50, e99, en.to_string()],
            vec!["answer → entry accepted by BIND (UPDATE acknowledged)".into(), b50, b99, bn.to_string()],
        ],
    });
    charts.push(Chart {
        title: "Connect time to a mail host right after resolving it (median, min–max)".into(),
        unit: "ms".into(),
        bars: vec![
            Summary::of(&pre_same).bar("pre-installed entry (interleaved)"),
            Summary::of(&live_ms).bar("fresh, live learning"),
        ],
    });
    notes.push(format!(
        "First SYN: the pc resolves d<i>.bench MX and then mx.d<i>.bench A through a real BIND resolver (an \
         exempt host whose queries leave through the router; a real authoritative named outside answers), \
         then connects to the mail host at once. {dropped} of {n} first SYNs needed a retransmission or \
         failed (goal 0: {}); added latency over a pre-installed entry connected right after each \
         fresh one under the same daemon: p50 {added50:+.3} ms, p99 {added99:+.3} ms (goal p99 ≤ 0.1 ms: \
         {}; both include the same lab forwarding and scheduling noise, which dominates p99 on a loaded \
         VM; the entry's own race is the daemon's answer → enforced lag below, and a SYN that lost it \
         would have been retransmitted). Today's behaviour: without live learning the destination \
         is unknown to the RPZ and the SYN is dropped ({} of {}). Cilium's DNS proxy adds p50 2.9 ms per \
         DNS request by its published figure; live learning adds nothing to DNS (the answer is copied, not \
         held). Daemon counters: learned {}, pushed {}, raced misses {}, copy lost {}.",
        if dropped == 0 { "met" } else { "missed" },
        if added99 <= 0.1 { "met" } else { "missed" },
        today.0,
        today.1,
        live.learned,
        live.pushed,
        live.raced_misses,
        st.counters.iter().find(|(k, _)| k == "dns_copy_lost").map_or(0, |(_, v)| *v),
    ));
    drop(lab);
    Ok(())
}
