//! What stalled OpenFlow peers cost the controller: `rpz-guard run --mode
//! openflow` with a zone of 50k DNS entries (100k proactive flows), N peers
//! that complete the handshake and then never read, and one good (fake)
//! switch that reads everything. Measured per N: the daemon's RSS with the
//! peers stalled, the good switch's full sync time under that load (connect
//! → the BARRIER that ends the resync), and the RSS a few seconds after the
//! peers closed.
//!
//! Side by side, in one run: the bounded defaults; the same binary with the
//! limits turned off (caps and drain timeout out of reach, a 64 MiB send
//! queue); and, with `--baseline-bin PATH` or `RPZ_GUARD_BASELINE_BIN`
//! (e.g. a build of the commit before the limits), that binary with its
//! defaults: the behaviour before the limits. Everything runs in a network namespace made here, on loopback;
//! peers use distinct 127.0.x.y sources so the per-source cap does not
//! refuse them (what is measured is the per-peer cost).

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard_benches::{Chart, Flag, Opts, Section, Summary, Table, proc_cpu_seconds, write_section};
use guard_tests::{Lab, LabConfig, ResponderMode, Role, netns::tcp_connect_from, run_in_netns};
use guard_user::{
    openflow::codec::{Body, FeaturesReply, Message, message_len, msg_type},
    policy::{AllowSet, Classes, Prefix},
    rpz::zonefile::write_zone,
};

const PORT: u16 = 6653;
const GOOD_DPID: u64 = 0x0000_0000_00ab_c0de;

/// One controller under test.
struct Variant {
    label: String,
    bin: PathBuf,
    /// Extra `[openflow]` keys; `None`: flags only (an older binary).
    config: Option<&'static str>,
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(v: &Variant, ns: &str, dir: &Path, zone: &Path) -> Result<Daemon> {
        let socket = dir.join("status.sock");
        let _ = fs::remove_file(&socket);
        let listen = format!("127.0.0.1:{PORT}");
        let mut args: Vec<String> =
            vec!["netns".into(), "exec".into(), ns.into(), v.bin.display().to_string()];
        args.extend(
            ["run", "--mode", "openflow", "--openflow-listen", &listen, "--events", "none"].map(String::from),
        );
        args.extend(["--zone-file".into(), zone.display().to_string()]);
        args.extend(["--status-socket".into(), socket.display().to_string()]);
        if let Some(extra) = v.config {
            let cfg = dir.join("peers.toml");
            fs::write(&cfg, format!("[openflow]\n{extra}"))?;
            args.extend(["--config".into(), cfg.display().to_string()]);
        }
        let log = fs::File::create(dir.join("daemon.log"))?;
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start rpz-guard")?;
        let d = Daemon { child };
        let t = Instant::now();
        while run_in_netns(ns, || TcpStream::connect(("127.0.0.1", PORT)).is_err())? {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("controller did not listen; log:\n{}", fs::read_to_string(dir.join("daemon.log"))?);
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(d)
    }

    /// Waits until the daemon used under 5% of a CPU over half a second;
    /// returns how long that took.
    fn settle(&self, limit: Duration) -> Duration {
        let t = Instant::now();
        let mut last = proc_cpu_seconds(self.child.id()).unwrap_or(0.0);
        while t.elapsed() < limit {
            thread::sleep(Duration::from_millis(500));
            let now = proc_cpu_seconds(self.child.id()).unwrap_or(0.0);
            if now - last < 0.025 {
                break;
            }
            last = now;
        }
        t.elapsed()
    }

    fn rss_mib(&self) -> f64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .map_or(f64::NAN, |kib: f64| kib / 1024.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the daemon we started, by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) && self.child.try_wait().ok().flatten().is_none() {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect_from(ns: &str, src: Ipv4Addr) -> Result<TcpStream> {
    run_in_netns(ns, move || tcp_connect_from(src, SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT)))?
        .with_context(|| format!("connect from {src}"))
}

/// Kernel memory in TCP socket buffers, MiB (`/proc/net/sockstat` "mem",
/// in pages; machine-wide, so it includes the peers' receive buffers).
fn tcp_buffers_mib() -> f64 {
    fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?;
            let mut it = line.split_whitespace();
            it.position(|w| w == "mem")?;
            it.next()?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

fn handshake(s: &mut TcpStream, dpid: u64) -> Result<()> {
    s.write_all(&Message::new(1, Body::Hello { version: 4, bitmap: Some(1 << 4) }).encode())?;
    let fr = FeaturesReply {
        datapath_id: dpid,
        n_buffers: 0,
        n_tables: 1,
        auxiliary_id: 0,
        capabilities: 0,
        reserved: 0,
    };
    s.write_all(&Message::new(2, Body::FeaturesReply(fr)).encode())?;
    Ok(())
}

/// A fake switch that reads everything: seconds from connect until the
/// BARRIER_REQUEST that closes the initial resync, and the FLOW_MODs before
/// it. A bulk change also carries a progress barrier after every 1 024
/// FLOW_MODs, so the closing one is the first after at least `flows`
/// (the proactive flows of the allow set).
fn good_switch_sync(ns: &str, flows: usize) -> Result<(f64, usize)> {
    let t = Instant::now();
    let mut s = connect_from(ns, Ipv4Addr::LOCALHOST)?;
    handshake(&mut s, GOOD_DPID)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut b = vec![0u8; 1 << 16];
    let mut flow_mods = 0;
    loop {
        let n = s.read(&mut b)?;
        if n == 0 {
            bail!("controller closed the good switch after {flow_mods} FLOW_MODs");
        }
        buf.extend_from_slice(&b[..n]);
        let mut at = 0;
        while let Some(len) = message_len(&buf[at..]).filter(|l| *l >= 8 && at + l <= buf.len()) {
            match buf[at + 1] {
                msg_type::FLOW_MOD => flow_mods += 1,
                msg_type::BARRIER_REQUEST if flow_mods >= flows => {
                    return Ok((t.elapsed().as_secs_f64(), flow_mods));
                }
                _ => {}
            }
            at += len;
        }
        buf.drain(..at);
        if t.elapsed() > Duration::from_secs(60) {
            bail!("no sync within 60 s");
        }
    }
}

struct Point {
    peers: usize,
    tcp_loaded: f64,
    rss_idle: f64,
    rss_loaded: f64,
    sync_s: f64,
    flow_mods: usize,
    rss_after: f64,
}

fn measure(
    v: &Variant,
    ns: &str,
    dir: &Path,
    zone: &Path,
    counts: &[usize],
    flows: usize,
) -> Result<Vec<Point>> {
    let d = Daemon::start(v, ns, dir, zone)?;
    // The zone is loaded before the listener opens; let the allocator settle.
    thread::sleep(Duration::from_secs(2));
    let mut out = Vec::new();
    for &n in counts {
        let rss_idle = d.rss_mib();
        let mut peers = Vec::with_capacity(n);
        for i in 0..n {
            let src = Ipv4Addr::new(127, 1, (i / 250) as u8, 1 + (i % 250) as u8);
            let mut s = connect_from(ns, src)?;
            handshake(&mut s, 0x7000 + i as u64)?;
            peers.push(s);
        }
        // Their resyncs run until the queues (and socket buffers) are full:
        // wait until the daemon is idle again (or 60 s), then read its RSS.
        let settle = d.settle(Duration::from_secs(60));
        let rss_loaded = d.rss_mib();
        let tcp_loaded = tcp_buffers_mib();
        let (sync_s, flow_mods) = good_switch_sync(ns, flows)?;
        drop(peers);
        thread::sleep(Duration::from_secs(6));
        let rss_after = d.rss_mib();
        eprintln!(
            "{}: {n} stalled peers: RSS {rss_idle:.1} → {rss_loaded:.1} MiB, kernel TCP {tcp_loaded:.0} MiB (settled after {:.1} s), good switch \
             sync {sync_s:.2} s ({flow_mods} FLOW_MODs), RSS after they left {rss_after:.1} MiB",
            v.label,
            settle.as_secs_f64()
        );
        out.push(Point { peers: n, tcp_loaded, rss_idle, rss_loaded, sync_s, flow_mods, rss_after });
    }
    Ok(out)
}

fn main() -> Result<()> {
    let opts = Opts::from_env_with(&[
        Flag {
            name: "--bin",
            value: Some("PATH"),
            help: "the rpz-guard binary under test (default target/release/rpz-guard)",
        },
        Flag {
            name: "--baseline-bin",
            value: Some("PATH"),
            help: "an older rpz-guard to compare with (default: $RPZ_GUARD_BASELINE_BIN, else none)",
        },
    ]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = opts.value("--bin").map_or_else(|| root.join("target/release/rpz-guard"), PathBuf::from);
    let (entries, counts): (u32, Vec<usize>) =
        if opts.quick { (10_000, vec![0, 50, 200]) } else { (50_000, vec![0, 50, 100, 200]) };
    let mut variants = vec![
        Variant { label: "bounded (defaults)".into(), bin: bin.clone(), config: Some("") },
        Variant {
            label: "limits off".into(),
            bin: bin.clone(),
            config: Some(
                "max_connections = 65536\nmax_connections_per_source = 65536\nsend_queue_bytes = 67108864\n\
                 drain_timeout_secs = 600\n",
            ),
        },
    ];
    // `cargo xtask bench` passes no arguments: there the environment names the baseline.
    let baseline = opts
        .value("--baseline-bin")
        .map(str::to_owned)
        .or_else(|| std::env::var("RPZ_GUARD_BASELINE_BIN").ok());
    if let Some(b) = baseline {
        variants.push(Variant {
            label: format!("before the limits ({b})"),
            bin: PathBuf::from(&b),
            config: None,
        });
    }

    // A lab (one namespace of it is used) rather than a bare namespace: if
    // this run is killed at its time limit, `cargo xtask bench` finds the
    // lab by its owner and removes it, the controllers in it included.
    let lab = Lab::up(LabConfig::for_test("ofpeers").bind(false).responder(ResponderMode::Off))
        .context("lab up")?;
    let ns = lab.ns(Role::Inet);
    let dir = lab.state_dir().join("peers");
    fs::create_dir_all(&dir)?;
    let set: AllowSet = (0..entries)
        .map(|i| {
            (Prefix::host(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i).into()), Classes::DNS)
        })
        .collect();
    let zone = dir.join("rpz.zone");
    write_zone(&set, "rpz.example.com", 1, &mut fs::File::create(&zone)?)?;

    let mut results = Vec::new();
    let mut notes = Vec::new();
    for v in &variants {
        match measure(v, &ns, &dir, &zone, &counts, 2 * entries as usize) {
            Ok(p) => results.push((v.label.clone(), p)),
            Err(e) => notes.push(format!("{} failed in this run: {e:#}", v.label)),
        }
    }
    drop(lab);

    let mut rows = Vec::new();
    let mut rss_chart =
        Chart { title: "Controller RSS with N stalled peers".into(), unit: "MiB".into(), bars: Vec::new() };
    let mut sync_chart = Chart {
        title: "Good switch full sync under N stalled peers".into(),
        unit: "s".into(),
        bars: Vec::new(),
    };
    let base: Option<&Vec<Point>> = results.first().map(|r| &r.1);
    for (label, points) in &results {
        for p in points {
            let ratio = base
                .and_then(|b| b.iter().find(|q| q.peers == p.peers))
                .map(|q| format!("{:.2}×", p.rss_loaded / q.rss_loaded))
                .unwrap_or_default();
            rows.push(vec![
                label.clone(),
                p.peers.to_string(),
                format!("{:.1}", p.rss_idle),
                format!("{:.1}", p.rss_loaded),
                ratio,
                format!("{:.0}", p.tcp_loaded),
                format!("{:.2}", p.sync_s),
                p.flow_mods.to_string(),
                format!("{:.1}", p.rss_after),
            ]);
            rss_chart.bars.push(Summary::of(&[p.rss_loaded]).bar(format!("{label}, {} peers", p.peers)));
            sync_chart.bars.push(Summary::of(&[p.sync_s]).bar(format!("{label}, {} peers", p.peers)));
        }
    }
    notes.insert(
        0,
        format!(
            "rpz-guard with a zone of {entries} DNS entries ({} proactive flows) in a namespace of its own; N fake \
             switches (distinct 127.1.x.y sources, own datapath ids) complete HELLO + FEATURES and never read. RSS is \
             VmRSS of the daemon once its CPU use settled after the peers connected (their resyncs stopped on full buffers); sync is a reading fake switch's connect → the \
             BARRIER_REQUEST closing its resync while the N peers stay stalled; 'after' is 6 s after the peers \
             closed. One trial per point (whiskers collapse). The RSS ratio column compares each row with the \
             bounded defaults at the same N. Kernel TCP buffers are machine-wide (`/proc/net/sockstat`), so they \
             include the peers' receive buffers and any other TCP traffic on the machine: read them as orders of \
             magnitude. The bounded controller caps its socket send buffer (SO_SNDBUF 256 KiB); before, Linux grew it \
             up to 4 MiB per connection for a peer that does not read.",
            entries * 2
        ),
    );
    let section = Section {
        name: "openflow-peers".into(),
        title: "OpenFlow: controller memory vs stalled peers, and the good switch's sync under that load"
            .into(),
        notes,
        tables: vec![Table {
            caption: "Stalled peers".into(),
            header: [
                "controller",
                "stalled peers",
                "RSS before, MiB",
                "RSS stalled, MiB",
                "vs bounded",
                "kernel TCP buffers, MiB",
                "good switch sync, s",
                "FLOW_MODs in its sync",
                "RSS after they left, MiB",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        }],
        charts: vec![rss_chart, sync_chart],
    };
    write_section(&opts.out, &section)?;
    Ok(())
}
