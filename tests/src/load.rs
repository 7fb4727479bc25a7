//! Traffic that keeps flowing while a test breaks something: a legitimate
//! client that keeps opening TCP connections to registered destinations,
//! and a bot that keeps trying unregistered ones. The report says how many
//! legitimate connections failed and how many bot packets got through
//! (counted by an nftables counter in `inet`, where they would arrive),
//! the goal of a fault test being zero for both.
//!
//! ```no_run
//! use std::{net::SocketAddr, time::Duration};
//! use guard_tests::{Lab, LabConfig, load::Load};
//! let lab = Lab::up(LabConfig::for_test("load")).expect("lab");
//! let mx: SocketAddr = "198.51.100.25:25".parse().expect("addr");
//! let rogue: SocketAddr = "198.51.100.66:25".parse().expect("addr");
//! let load = Load::start(&lab, vec![mx], vec![rogue]).expect("load");
//! // ... break something ...
//! let report = load.finish();
//! assert_eq!((report.legit_failed, report.bot_packets_through), (0, 0), "{report}");
//! ```

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{Lab, Result, Role, netns};

/// nftables table in `inet` holding the bot counter.
const TABLE: &str = "rgload";

/// Counters of a running load.
#[derive(Debug, Default)]
struct Counters {
    legit_ok: AtomicU64,
    legit_failed: AtomicU64,
    bot_tries: AtomicU64,
    bot_connected: AtomicU64,
    /// Slowest legitimate connect so far, microseconds.
    legit_max_us: AtomicU64,
}

/// What the load saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Legitimate connections that succeeded.
    pub legit_ok: u64,
    /// Legitimate connections that failed (refused, timed out).
    pub legit_failed: u64,
    /// Slowest successful legitimate connect.
    pub legit_max: Duration,
    /// Bot connection attempts.
    pub bot_tries: u64,
    /// Bot connections that were answered (a SYN got through and back).
    pub bot_connected: u64,
    /// Packets from the bot that reached `inet` (nftables counter).
    pub bot_packets_through: u64,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "legit {} ok / {} failed (slowest {} ms), bot {} tries / {} connected / {} packets through, {:.1} s",
            self.legit_ok,
            self.legit_failed,
            self.legit_max.as_millis(),
            self.bot_tries,
            self.bot_connected,
            self.bot_packets_through,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Where the load runs: namespaces of the legitimate client, the bot and
/// the internet side (where bot packets are counted), and the bot's source.
#[derive(Debug, Clone)]
pub struct Ends {
    /// Namespace of the legitimate client.
    pub client_ns: String,
    /// Namespace of the bot.
    pub bot_ns: String,
    /// The bot's source address (what the counter matches).
    pub bot_ip: IpAddr,
    /// Namespace where the destinations live.
    pub inet_ns: String,
}

/// A running load; [`Load::finish`] stops it (dropping it stops it too).
pub struct Load {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
    inet_ns: String,
    started: Instant,
}

/// Legitimate connect timeout: a failure is a real outage, not a slow SYN.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bot connect timeout: dropped SYNs are the expected case.
const BOT_TIMEOUT: Duration = Duration::from_millis(200);
/// Concurrent bot connection attempts.
const BOT_THREADS: usize = 4;
/// Pause between legitimate connections (about 30 per second).
const LEGIT_PAUSE: Duration = Duration::from_millis(30);

impl Load {
    /// Starts the legitimate client in `pc` (round robin over `legit`) and
    /// the bot in `bot` (round robin over `bot_targets`), and installs the
    /// bot-packet counter in `inet`.
    pub fn start(lab: &Lab, legit: Vec<SocketAddr>, bot_targets: Vec<SocketAddr>) -> Result<Load> {
        let ends = Ends {
            client_ns: lab.ns(Role::Pc),
            bot_ns: lab.ns(Role::Bot),
            bot_ip: IpAddr::V4(lab.addrs().bot_v4),
            inet_ns: lab.ns(Role::Inet),
        };
        Load::start_in(ends, legit, bot_targets)
    }

    /// Like [`Load::start`] for any topology (e.g. the OpenFlow lab's own
    /// namespaces).
    pub fn start_in(ends: Ends, legit: Vec<SocketAddr>, bot_targets: Vec<SocketAddr>) -> Result<Load> {
        let Ends { client_ns: pc_ns, bot_ns, bot_ip, inet_ns } = ends;
        install_counter(&inet_ns, bot_ip)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        {
            let (stop, c) = (stop.clone(), counters.clone());
            threads.push(std::thread::spawn(move || {
                for dst in legit.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let t = Instant::now();
                    match netns::tcp_connect_in(&pc_ns, *dst, LEGIT_TIMEOUT) {
                        Ok(_) => {
                            c.legit_ok.fetch_add(1, Ordering::Relaxed);
                            let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                            c.legit_max_us.fetch_max(us, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("load: legitimate connect to {dst} failed: {e}");
                            c.legit_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(LEGIT_PAUSE);
                }
            }));
        }
        // Several bot threads: most attempts wait out their timeout.
        for i in 0..BOT_THREADS {
            let (stop, c, ns) = (stop.clone(), counters.clone(), bot_ns.clone());
            let targets: Vec<SocketAddr> =
                bot_targets.iter().skip(i).chain(bot_targets.iter().take(i)).copied().collect();
            threads.push(std::thread::spawn(move || {
                for dst in targets.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    c.bot_tries.fetch_add(1, Ordering::Relaxed);
                    if netns::tcp_connect_in(&ns, *dst, BOT_TIMEOUT).is_ok() {
                        c.bot_connected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Load { stop, counters, threads, inet_ns, started: Instant::now() })
    }

    /// The figures so far (the load keeps running).
    pub fn snapshot(&self) -> LoadReport {
        let c = &self.counters;
        LoadReport {
            legit_ok: c.legit_ok.load(Ordering::Relaxed),
            legit_failed: c.legit_failed.load(Ordering::Relaxed),
            legit_max: Duration::from_micros(c.legit_max_us.load(Ordering::Relaxed)),
            bot_tries: c.bot_tries.load(Ordering::Relaxed),
            bot_connected: c.bot_connected.load(Ordering::Relaxed),
            bot_packets_through: read_counter(&self.inet_ns).unwrap_or(u64::MAX),
            elapsed: self.started.elapsed(),
        }
    }

    /// Stops both clients and returns the report.
    pub fn finish(mut self) -> LoadReport {
        self.halt();
        let report = self.snapshot();
        remove_counter(&self.inet_ns);
        report
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
        remove_counter(&self.inet_ns);
    }
}

fn nft(ns: &str, script: &str) -> Result<String> {
    let out = netns::exec_with_input(ns, &["nft", "-f", "-"], Some(script.as_bytes()))?;
    if !out.status.success() {
        return Err(crate::LabError::Command {
            command: format!("nft -f - (in {ns}): {script}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Counts every packet from `bot` entering `inet` (before any routing).
fn install_counter(ns: &str, bot: IpAddr) -> Result<()> {
    let family = if bot.is_ipv4() { "ip" } else { "ip6" };
    let script = format!(
        "table inet {TABLE} {{\n  chain pre {{\n    type filter hook prerouting priority -300; policy accept;\n    \
         {family} saddr {bot} counter\n  }}\n}}\n"
    );
    remove_counter(ns);
    nft(ns, &script).map(drop)
}

fn read_counter(ns: &str) -> Result<u64> {
    let out = netns::exec(ns, &["nft", "list", "chain", "inet", TABLE, "pre"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).ok_or_else(
        || crate::LabError::Command {
            command: format!("nft list chain inet {TABLE} pre (in {ns})"),
            status: out.status.to_string(),
            stderr: format!("no packet counter in {text:?}"),
        },
    )
}

fn remove_counter(ns: &str) {
    let _ = netns::exec(ns, &["nft", "delete", "table", "inet", TABLE]);
}
