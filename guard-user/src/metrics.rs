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

/// Renders counters and gauges in the Prometheus text exposition format.
pub fn render_prometheus(stats: &StatSnapshot, gauges: &[Gauge]) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str(
        "# HELP rpz_guard_packets_total Packets by verdict path; every packet lands in one outcome.\n",
    );
    out.push_str("# TYPE rpz_guard_packets_total counter\n");
    for s in Stat::OUTCOMES {
        let _ = writeln!(out, "rpz_guard_packets_total{{outcome=\"{}\"}} {}", s.name(), stats[s as usize]);
    }
    for s in Stat::ALL.into_iter().filter(|s| !Stat::OUTCOMES.contains(s)) {
        let _ = writeln!(out, "# TYPE rpz_guard_{}_total counter", s.name());
        let _ = writeln!(out, "rpz_guard_{}_total {}", s.name(), stats[s as usize]);
    }
    let mut last = "";
    for g in gauges {
        if g.name != last {
            let _ = writeln!(out, "# HELP rpz_guard_{} {}", g.name, g.help);
            let _ = writeln!(out, "# TYPE rpz_guard_{} gauge", g.name);
            last = g.name;
        }
        match &g.label {
            Some((k, v)) => {
                let _ = writeln!(out, "rpz_guard_{}{{{k}=\"{}\"}} {}", g.name, escape(v), g.value);
            }
            None => {
                let _ = writeln!(out, "rpz_guard_{} {}", g.name, g.value);
            }
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_and_gauges() {
        let c = Counters::default();
        c.inc(Stat::DropNotRegistered);
        c.add(Stat::Packets, 5);
        let text = render_prometheus(
            &c.snapshot(),
            &[
                Gauge {
                    name: "entries",
                    help: "Allow entries.",
                    label: Some(("class", "dns".into())),
                    value: 3.0,
                },
                Gauge {
                    name: "entries",
                    help: "Allow entries.",
                    label: Some(("class", "smtp".into())),
                    value: 1.0,
                },
            ],
        );
        assert!(text.contains("rpz_guard_packets_total 5\n"));
        assert!(text.contains("rpz_guard_packets_total{outcome=\"drop_not_registered\"} 1\n"));
        assert_eq!(text.matches("# TYPE rpz_guard_entries gauge").count(), 1);
        assert!(text.contains("rpz_guard_entries{class=\"smtp\"} 1\n"));
        assert_eq!(
            text.lines().filter(|l| l.starts_with("rpz_guard_packets_total{")).count(),
            Stat::OUTCOMES.len()
        );
        let counters =
            text.lines().filter(|l| l.starts_with("rpz_guard_") && !l.starts_with("rpz_guard_entries"));
        assert_eq!(counters.count(), STAT_COUNT as usize);
    }
}
