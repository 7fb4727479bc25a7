//! Counters shared by both enforcement modes, and their Prometheus text form.
//!
//! XDP mode reads the kernel's per-CPU counters; OpenFlow mode bumps
//! [`Counters`] in userspace. Both use the indices of `guard_common::Stat`, so
//! `rpz-guard status` and the metric names are the same in either mode.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

use guard_common::{STAT_COUNT, Stat};

/// A snapshot of every counter, indexed by `Stat as usize`.
pub type StatSnapshot = [u64; STAT_COUNT as usize];

/// Userspace counters with the same layout as the kernel's.
#[derive(Debug)]
pub struct Counters([AtomicU64; STAT_COUNT as usize]);

impl Default for Counters {
    fn default() -> Self {
        Counters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counters {
    /// Adds one to `stat`.
    pub fn inc(&self, stat: Stat) {
        self.add(stat, 1);
    }

    /// Adds `n` to `stat`.
    pub fn add(&self, stat: Stat, n: u64) {
        self.0[stat as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> StatSnapshot {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// One extra metric beside the packet counters (sync state, entries, ...).
///
/// The exposition type follows the name: a name ending in `_total` is a
/// counter, anything else a gauge (the Prometheus naming conventions).
#[derive(Clone, Debug, PartialEq)]
pub struct Gauge {
    /// Metric name without the `rpz_guard_` prefix.
    pub name: &'static str,
    /// One-line help text.
    pub help: &'static str,
    /// Optional label pair `(key, value)`.
    pub label: Option<(&'static str, String)>,
    /// Value.
    pub value: f64,
}

/// How a packet counter that is not a verdict path is exposed: the family
/// (without the prefix), its label, and the family's help text. Counters
/// without an entry here are exposed as `rpz_guard_<name>_total`.
/// A label pair `(key, value)`.
type Label = (&'static str, &'static str);

fn stat_family(s: Stat) -> Option<(&'static str, Option<Label>, &'static str)> {
    const EVENTS: &str = "Events of the enforcement point by result: sent to the daemon, suppressed by the per-source rate limit, lost (buffer full).";
    const FAMILY: &str = "IP packets the enforcement point saw, by address family.";
    Some(match s {
        Stat::Packets => ("seen_packets_total", None, "Frames the enforcement point saw."),
        Stat::Bytes => ("seen_bytes_total", None, "Bytes of the frames the enforcement point saw."),
        Stat::Ipv4 => ("ip_packets_total", Some(("family", "ipv4")), FAMILY),
        Stat::Ipv6 => ("ip_packets_total", Some(("family", "ipv6")), FAMILY),
        Stat::Vlan => ("vlan_tagged_packets_total", None, "Frames with at least one VLAN tag."),
        Stat::EventsSent => ("point_events_total", Some(("result", "sent")), EVENTS),
        Stat::EventsRateLimited => ("point_events_total", Some(("result", "rate_limited")), EVENTS),
        Stat::EventsLost => ("point_events_total", Some(("result", "lost")), EVENTS),
        Stat::WouldDrop => (
            "would_drop_packets_total",
            None,
            "Count-only mode: packets that enforcement would have dropped.",
        ),
        _ => return None,
    })
}

/// Samples grouped by family, in first-seen order, so that each family has
/// one HELP and one TYPE line and its samples together.
#[derive(Default)]
struct Families(Vec<Family>);

/// One family: name, help, samples (optional label pair, value).
type Family = (String, String, Vec<(Option<(String, String)>, f64)>);

impl Families {
    fn add(&mut self, name: &str, help: &str, label: Option<(&str, &str)>, value: f64) {
        let sample = (label.map(|(k, v)| (k.to_owned(), v.to_owned())), value);
        match self.0.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.2.push(sample),
            None => self.0.push((name.to_owned(), help.to_owned(), vec![sample])),
        }
    }

    fn render(&self, out: &mut String) {
        for (name, help, samples) in &self.0 {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (label, value) in samples {
                match label {
                    Some((k, v)) => {
                        let _ = writeln!(out, "{name}{{{k}=\"{}\"}} {value}", escape(v));
                    }
                    None => {
                        let _ = writeln!(out, "{name} {value}");
                    }
                }
            }
        }
    }
}

/// Renders counters and gauges in the Prometheus text exposition format,
/// with the build information and the standard `process_*` metrics.
pub fn render_prometheus(stats: &StatSnapshot, gauges: &[Gauge]) -> String {
    let mut f = Families::default();
    f.add(
        "rpz_guard_build_info",
        "The running rpz-guard build (value 1).",
        Some(("version", env!("CARGO_PKG_VERSION"))),
        1.0,
    );
    for s in Stat::OUTCOMES {
        f.add(
            "rpz_guard_packets_total",
            "Packets by verdict path (outcome); every packet the enforcement point checks lands in one.",
            Some(("outcome", s.name())),
            stats[s as usize] as f64,
        );
    }
    for s in Stat::ALL.into_iter().filter(|s| !Stat::OUTCOMES.contains(s)) {
        let v = stats[s as usize] as f64;
        match stat_family(s) {
            Some((name, label, help)) => f.add(&format!("rpz_guard_{name}"), help, label, v),
            None => f.add(
                &format!("rpz_guard_{}_total", s.name()),
                "Packet counter of the enforcement point.",
                None,
                v,
            ),
        }
    }
    for g in gauges {
        let label = g.label.as_ref().map(|(k, v)| (*k, v.as_str()));
        f.add(&format!("rpz_guard_{}", g.name), g.help, label, g.value);
    }
    process_metrics(&mut f);
    let mut out = String::with_capacity(8192);
    f.render(&mut out);
    out
}

/// The standard process metrics (`process_cpu_seconds_total`, memory,
/// descriptors, start time) from `/proc/self`. Missing files (not Linux)
/// leave them out.
fn process_metrics(f: &mut Families) {
    // SAFETY: sysconf has no preconditions.
    let (tick, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the parenthesised command name (which may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
    let field = |n: usize| rest.split_whitespace().nth(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15))
        && tick > 0
    {
        f.add(
            "process_cpu_seconds_total",
            "User and system CPU time, seconds.",
            None,
            (utime + stime) / tick as f64,
        );
    }
    if let Some(vsize) = field(23) {
        f.add("process_virtual_memory_bytes", "Virtual memory size, bytes.", None, vsize);
    }
    if let Some(rss) = field(24) {
        f.add("process_resident_memory_bytes", "Resident memory size, bytes.", None, rss * page as f64);
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(start), Some(boot)) = (field(22), boot)
        && tick > 0
    {
        f.add(
            "process_start_time_seconds",
            "Start time since the Unix epoch, seconds.",
            None,
            boot + start / tick as f64,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        f.add("process_open_fds", "Open file descriptors.", None, fds.count() as f64);
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        f.add("process_max_fds", "Limit of open file descriptors.", None, lim.rlim_cur as f64);
    }
}

/// Upper bounds of the latency histograms' buckets, seconds (the miss path
/// answers in about a millisecond in the lab; timeouts are 500 ms by default).
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A latency histogram with [`LATENCY_BUCKETS`], updated lock-free.
#[derive(Debug)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is +Inf.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

/// A histogram's values: cumulative counts per upper bound, total, sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(le, observations <= le)`, the bounds of [`LATENCY_BUCKETS`].
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the +Inf bucket).
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations, ns.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns.load(Ordering::Relaxed)
    }

    /// Current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            acc += self.counts[i].load(Ordering::Relaxed);
            buckets.push((*le, acc));
        }
        let count = acc + self.counts[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot { buckets, count, sum: self.sum_ns() as f64 / 1e9 }
    }
}

/// Appends a histogram family `name` (full name, e.g.
/// `rpz_guard_miss_lookup_duration_seconds`) in the text format.
pub fn render_histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, n) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(std::time::Duration::from_micros(100));
        h.observe(std::time::Duration::from_micros(1500));
        h.observe(std::time::Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0002, 1));
        assert_eq!(s.buckets.iter().find(|(le, _)| *le == 0.002).map(|b| b.1), Some(2));
        assert_eq!(s.buckets.last().map(|b| b.1), Some(2));
        assert!((s.sum - 3.0016).abs() < 1e-9);
        let mut out = String::new();
        render_histogram(&mut out, "rpz_guard_x_seconds", "X.", &s);
        assert!(out.contains("# TYPE rpz_guard_x_seconds histogram\n"));
        assert!(out.contains("rpz_guard_x_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("rpz_guard_x_seconds_count 3\n"));
    }

    #[test]
    fn renders_every_counter_and_gauges_by_the_conventions() {
        let c = Counters::default();
        c.inc(Stat::DropNotRegistered);
        c.add(Stat::Packets, 5);
        c.add(Stat::EventsLost, 2);
        let entries = |class: &str, value| Gauge {
            name: "entries",
            help: "Allow entries.",
            label: Some(("class", class.into())),
            value,
        };
        let text = render_prometheus(
            &c.snapshot(),
            &[
                entries("dns", 3.0),
                Gauge { name: "sync_notifies_total", help: "NOTIFYs.", label: None, value: 4.0 },
                entries("smtp", 1.0),
            ],
        );
        assert!(text.contains("rpz_guard_seen_packets_total 5\n"));
        assert!(text.contains("rpz_guard_packets_total{outcome=\"drop_not_registered\"} 1\n"));
        assert!(text.contains("rpz_guard_point_events_total{result=\"lost\"} 2\n"));
        assert!(text.contains("# TYPE rpz_guard_entries gauge\n"));
        assert!(text.contains("# TYPE rpz_guard_sync_notifies_total counter\n"));
        assert!(text.contains("rpz_guard_entries{class=\"smtp\"} 1\n"));
        assert!(text.contains("rpz_guard_build_info{version=\""));
        assert!(text.contains("process_resident_memory_bytes "));
        assert_eq!(
            text.lines().filter(|l| l.starts_with("rpz_guard_packets_total{")).count(),
            Stat::OUTCOMES.len()
        );
        // One HELP and one TYPE per family, its samples right after them.
        let mut seen = std::collections::HashSet::new();
        let mut current = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(seen.insert(name.to_owned()), "family {name} has two TYPE lines");
                current = name;
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap_or_default();
                assert_eq!(name, current, "sample {l:?} outside its family");
            }
        }
        // Every packet counter is exposed once.
        let samples = text.lines().filter(|l| !l.starts_with('#'));
        let packet_samples = samples.filter(|l| {
            !["rpz_guard_entries", "rpz_guard_sync_notifies_total", "rpz_guard_build_info", "process_"]
                .iter()
                .any(|p| l.starts_with(p))
        });
        assert_eq!(packet_samples.count(), STAT_COUNT as usize);
    }
}
