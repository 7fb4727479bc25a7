//! Add → enforced and delete → blocked lags with each supported RPZ primary
//! (BIND 9, Knot DNS, PowerDNS Authoritative + gsqlite3), side by side in
//! one run: the same lab, daemon (XDP mode, NOTIFY on) and probes for each,
//! the primary started by `guard_tests::primary`; once with SOA polling that
//! never speeds up (changes arrive by NOTIFY only) and once with the
//! default polling (fast for a while after a NOTIFY or change).
//!
//! One trial: the pc probes a fresh destination (blocked, so the miss path
//! caches "not registered"), a TSIG UPDATE adds it at the primary, the pc
//! connects every few ms until a connect passes (add → enforced); then an
//! UPDATE deletes it and the pc connects until one is dropped (delete →
//! blocked). Both lags run from just before the UPDATE is sent.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard_benches::{
    Chart, Opts, Section, Summary, Table, daemon::LabDaemon, percentile, ratio, write_section,
};
use guard_tests::{Lab, LabAddrs, LabConfig, Primary, PrimaryKind, Role};

/// Connects from the pc every few ms until the outcome is `open`; returns
/// the time from `t0` (a passing connect: when it ended; a dropped one:
/// when it was started, since the drop happened then).
fn until(lab: &Lab, dst: SocketAddr, open: bool, t0: Instant) -> Result<f64> {
    const ATTEMPT: Duration = Duration::from_millis(25);
    loop {
        let started = t0.elapsed();
        let ok = lab.tcp_connect(Role::Pc, dst, ATTEMPT).is_ok();
        if ok == open {
            let at = if open { t0.elapsed() } else { started };
            return Ok(at.as_secs_f64() * 1e3);
        }
        if t0.elapsed() > Duration::from_secs(15) {
            bail!("{dst}: still {} after 15 s", if open { "blocked" } else { "passing" });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How the daemon polls while it is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Polling {
    /// The defaults: 2 s, 0.5 s for 30 s after a NOTIFY or change.
    Default,
    /// SOA poll every 30 s, never faster: changes arrive by NOTIFY only.
    NotifyOnly,
}

impl Polling {
    fn name(self) -> &'static str {
        match self {
            Polling::Default => "default polling",
            Polling::NotifyOnly => "NOTIFY only",
        }
    }
}

struct Lags {
    kind: PrimaryKind,
    polling: Polling,
    add: Vec<f64>,
    delete: Vec<f64>,
    learned: String,
}

fn trials(lab: &Lab, d: &LabDaemon, hosts: &[Ipv4Addr], kind: PrimaryKind, polling: Polling) -> Result<Lags> {
    let (mut add, mut delete) = (Vec::new(), Vec::new());
    for ip in hosts {
        let dst = SocketAddr::new(IpAddr::V4(*ip), 25);
        // Blocked first: the miss path now caches "not registered".
        if lab.tcp_connect(Role::Pc, dst, Duration::from_millis(150)).is_ok() {
            bail!("{dst} passed before it was registered");
        }
        let t0 = Instant::now();
        lab.rpz_add_v4(*ip, Ipv4Addr::new(127, 0, 0, 25))?;
        add.push(until(lab, dst, true, t0)?);
        let t1 = Instant::now();
        lab.rpz_delete_v4(*ip)?;
        delete.push(until(lab, dst, false, t1)?);
    }
    let st = d.status()?;
    let l = &st.sync.learned;
    let learned = format!(
        "{}, {}: changes learned via NOTIFY/UDP {}, NOTIFY/TCP {}, SOA poll {}; {} SOA polls",
        kind.product(),
        polling.name(),
        l.notify_udp,
        l.notify_tcp,
        l.poll,
        st.sync.polls
    );
    Ok(Lags { kind, polling, add, delete, learned })
}

fn measure(kind: PrimaryKind, n: usize) -> Result<Vec<Lags>> {
    let lab = Lab::up(LabConfig::for_test(&format!("pb{}", kind.name())).bind(kind == PrimaryKind::Bind))
        .context("lab up")?;
    let _primary = Primary::start(&lab, kind).with_context(|| format!("start {}", kind.product()))?;
    let notify = format!("{}:{}", lab.addrs().router_in_v4, lab.notify_port());
    let conf = lab.state_dir().join("notify-only.toml");
    std::fs::write(&conf, "[rpz]\npoll_interval_secs = 30\npoll_fast_for_secs = 0\n")?;
    let conf = conf.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for (polling, extra, hosts) in [
        (
            Polling::NotifyOnly,
            vec!["--notify-listen", &notify, "--config", &conf],
            (0..n).map(|i| LabAddrs::inet_v4(10 + i as u8)).collect::<Vec<_>>(),
        ),
        (
            Polling::Default,
            vec!["--notify-listen", &notify],
            (0..n).map(|i| LabAddrs::inet_v4_alt(10 + i as u8)).collect(),
        ),
    ] {
        let d = LabDaemon::start(&lab, &format!("prim-{}", kind.name()), &extra)?;
        out.push(trials(&lab, &d, &hosts, kind, polling)?);
    }
    Ok(out)
}

fn main() -> Result<()> {
    let opts = Opts::from_env();
    let trials_n = if opts.quick { 5 } else { 15 };
    let mut results = Vec::new();
    for kind in PrimaryKind::ALL {
        results.extend(measure(kind, trials_n)?);
    }
    let mut rows = Vec::new();
    let mut bars = Vec::new();
    let mut notes = vec![
        "Each trial: the pc probes a fresh destination (blocked; the miss path caches 'not registered'), a \
         TSIG-signed nsupdate adds it at the primary, the pc connects every ~2 ms (25 ms connect timeout) until \
         one passes; then an nsupdate deletes it and the pc connects until one is dropped. Lags run from just \
         before nsupdate starts (its own process start and round trip, and the primary's UPDATE processing, \
         included). Daemon: XDP mode, NOTIFY on UDP+TCP. 'NOTIFY only': SOA poll 30 s and never faster, so \
         the lag is the primary's NOTIFY timing plus our transfer; 'default polling': 2 s, and 0.5 s for 30 s \
         after a NOTIFY or change (all trials after the first run in that window)."
            .to_owned(),
        "Primaries: BIND 9 with notify-delay 0; Knot DNS (NOTIFY over TCP); PowerDNS with gsqlite3, \
         xfr-cycle-interval=1 and NOTIFY-DNSUPDATE=1 (its NOTIFY leaves from a periodic loop, and every change \
         is fetched as the whole zone). Goal: p99 within 2x of BIND's (same polling) and under 500 ms."
            .to_owned(),
    ];
    for r in &results {
        let bind = results
            .iter()
            .find(|b| b.kind == PrimaryKind::Bind && b.polling == r.polling)
            .context("BIND measured")?;
        let (bind_add, bind_del) = (percentile(&bind.add, 99.0), percentile(&bind.delete, 99.0));
        let (p99a, p99d) = (percentile(&r.add, 99.0), percentile(&r.delete, 99.0));
        let verdict = |p99: f64, base: f64| if p99 <= 2.0 * base && p99 < 500.0 { "met" } else { "missed" };
        rows.push(vec![
            r.kind.product().to_owned(),
            r.polling.name().to_owned(),
            format!("{:.0}", Summary::of(&r.add).median),
            format!("{p99a:.0}"),
            ratio(p99a, bind_add),
            verdict(p99a, bind_add).to_owned(),
            format!("{:.0}", Summary::of(&r.delete).median),
            format!("{p99d:.0}"),
            ratio(p99d, bind_del),
            verdict(p99d, bind_del).to_owned(),
            r.add.len().to_string(),
        ]);
        let short = if r.polling == Polling::Default { "" } else { " notify-only" };
        bars.push(Summary::of(&r.add).bar(format!("{}{short} add", r.kind.name())));
        bars.push(Summary::of(&r.delete).bar(format!("{}{short} delete", r.kind.name())));
        notes.push(r.learned.clone());
    }
    let table = Table {
        caption: "Lag in ms per primary (p99 ratio against BIND's p99 with the same polling)".into(),
        header: [
            "primary",
            "polling",
            "add p50",
            "add p99",
            "add p99 / BIND",
            "goal",
            "delete p50",
            "delete p99",
            "delete p99 / BIND",
            "goal",
            "trials",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    };
    write_section(
        &opts.out,
        &Section {
            name: "primaries".into(),
            title: "RPZ primaries side by side: add → enforced and delete → blocked".into(),
            notes,
            tables: vec![table],
            charts: vec![Chart {
                title: "Lag per primary (median, min–max)".into(),
                unit: "ms".into(),
                bars,
            }],
        },
    )
}
