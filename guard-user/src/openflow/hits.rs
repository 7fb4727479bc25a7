//! When allowed traffic last went to each allow-set entry, in OpenFlow
//! mode (issue 11: ageing keeps entries in use). The XDP program notes a
//! last-hit time per destination; a switch keeps packet counts per flow.
//! So every few seconds each session asks its switch for the statistics of
//! the allow flows (OFPMP_FLOW, OpenFlow 1.3.5 §7.3.5.2), filtered by
//! cookie kind on the switch, and an entry whose allow flows' packet count
//! grew since the last reading was hit at that reading. The times come out
//! as the XDP side's: `(destination, seconds ago)` for ageing
//! ([`crate::daemon::ageing::LastHits`]) and `explain`.
//!
//! OpenFlow 1.3 flow statistics carry no idle time (OVS's `idle_age` is a
//! Nicira extension), so the resolution is the poll interval, rounded
//! toward "used": an entry hit just after one reading counts as hit at the
//! next one. A count seen for the first time (a new flow, a restarted
//! controller) that is not zero counts as a hit at that reading: it keeps
//! an entry one idle period too long rather than removing one in use.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{
    codec::{
        FlowStats, FlowStatsRequest, Instruction, MultipartRequest, MultipartRequestBody, OFPG_ANY, OFPP_ANY,
        TABLE_ALL,
    },
    flows::{COOKIE_ALLOW_KINDS, COOKIE_ALLOW_KINDS_MASK, COOKIE_KIND_MASK, COOKIE_PROACTIVE, PRIO_ALLOW},
    oxm::{Match, Oxm},
};
use crate::policy::Prefix;

/// The request for the allow flows' statistics: the proactive allow flows
/// and the reactive verdict flows (their cookie kinds differ in one bit, so
/// one cookie filter selects both and nothing else).
pub fn request() -> MultipartRequest {
    MultipartRequest {
        flags: 0,
        body: MultipartRequestBody::Flow(FlowStatsRequest {
            table_id: TABLE_ALL,
            out_port: OFPP_ANY,
            out_group: OFPG_ANY,
            cookie: COOKIE_ALLOW_KINDS,
            cookie_mask: COOKIE_ALLOW_KINDS_MASK,
            r#match: Match::default(),
        }),
    }
}

/// The entry an allow flow serves: its destination prefix. `None` for a
/// flow that lets nothing through (a deny flow, which shares the proactive
/// kind; a drop verdict), or one of another kind.
pub fn allow_prefix(f: &FlowStats) -> Option<Prefix> {
    let kind = f.cookie & COOKIE_KIND_MASK;
    if kind & COOKIE_ALLOW_KINDS_MASK != COOKIE_ALLOW_KINDS {
        return None;
    }
    if kind == COOKIE_PROACTIVE && f.priority != PRIO_ALLOW {
        return None;
    }
    if !f.instructions.iter().any(|i| matches!(i, Instruction::ApplyActions(a) if !a.is_empty())) {
        return None;
    }
    f.r#match.fields.iter().find_map(|o| {
        let (addr, len) = match o {
            Oxm::Ipv4Dst(a, m) => (IpAddr::V4(*a), m.map_or(32, |m| m.to_bits().count_ones())),
            Oxm::Ipv6Dst(a, m) => (IpAddr::V6(*a), m.map_or(128, |m| m.to_bits().count_ones())),
            _ => return None,
        };
        Prefix::new(addr, u8::try_from(len).ok()?).ok()
    })
}

/// Last hits of every switch's allow flows, shared by the sessions (which
/// feed it) and the daemon (which reads it).
#[derive(Debug, Default)]
pub struct FlowHits {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// When each entry's packet count last grew, on any switch.
    hit: HashMap<Prefix, Instant>,
    /// Per switch connection: each entry's packet count at the last reading.
    counts: HashMap<u64, HashMap<Prefix, u64>>,
    /// Readings taken.
    polls: u64,
    /// Readings that failed (not sent, unanswered, answered with an error).
    poll_errors: u64,
}

impl FlowHits {
    /// Takes one full reading of switch connection `switch`'s allow flows
    /// (every part of the multipart reply) taken at `now`.
    pub fn observe(&self, switch: u64, stats: &[FlowStats], now: Instant) {
        let mut counts: HashMap<Prefix, u64> = HashMap::new();
        for f in stats {
            if let Some(p) = allow_prefix(f) {
                *counts.entry(p).or_default() += f.packet_count;
            }
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = g.counts.remove(&switch).unwrap_or_default();
        for (p, n) in &counts {
            // A lower count: the flows were installed again (a resync).
            let grew = match before.get(p) {
                Some(old) => n != old && *n > 0,
                None => *n > 0,
            };
            if grew {
                g.hit.insert(*p, now);
            }
        }
        g.counts.insert(switch, counts);
        g.polls += 1;
    }

    /// Forgets switch connection `switch`'s counts (it disconnected); the
    /// hits it showed stay.
    pub fn forget(&self, switch: u64) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).counts.remove(&switch);
    }

    /// Each hit entry's address (its prefix's first address: ageing and
    /// `explain` match it against the entry) and the seconds since its last
    /// hit, as of `now`. Hits older than `keep` are dropped.
    pub fn last_hits(&self, now: Instant, keep: Duration) -> Vec<(IpAddr, u64)> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.hit.retain(|_, at| now.saturating_duration_since(*at) <= keep);
        g.hit.iter().map(|(p, at)| (p.addr(), now.saturating_duration_since(*at).as_secs())).collect()
    }

    /// Readings taken so far (status, metrics, tests).
    pub fn polls(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).polls
    }

    /// Counts a reading that failed: the request could not be queued, the
    /// switch did not answer in time, or it answered with an ERROR. The
    /// last-hit times then grow older until a reading succeeds again.
    pub fn poll_failed(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).poll_errors += 1;
    }

    /// Readings that failed so far (status, metrics).
    pub fn poll_errors(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).poll_errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openflow::{
        ControllerConfig,
        codec::flow_cmd,
        flows::{allow_flows, verdict_flow},
    };
    use crate::policy::Classes;

    fn stats_of(fm: &crate::openflow::codec::FlowMod, packets: u64) -> FlowStats {
        FlowStats {
            table_id: 0,
            duration_sec: 1,
            duration_nsec: 0,
            priority: fm.priority,
            idle_timeout: fm.idle_timeout,
            hard_timeout: fm.hard_timeout,
            flags: fm.flags,
            cookie: fm.cookie,
            packet_count: packets,
            byte_count: packets * 60,
            r#match: fm.r#match.clone(),
            instructions: fm.instructions.clone(),
        }
    }

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    #[test]
    fn the_filter_selects_allow_flows_only() {
        let cfg = ControllerConfig::default();
        let host = allow_flows(&cfg, &p("198.51.100.25"), Classes::SMTP, flow_cmd::ADD);
        let net = allow_flows(&cfg, &p("203.0.113.0/24"), Classes::DNS, flow_cmd::ADD);
        let deny = allow_flows(&cfg, &p("198.51.100.66"), Classes::DENY, flow_cmd::ADD);
        let pp = &cfg.protected[0];
        let pass = verdict_flow("2001:db8::25".parse().expect("ip"), pp, true, 60, 300, None);
        let drop = verdict_flow("192.0.2.9".parse().expect("ip"), pp, false, 60, 300, None);
        assert_eq!(allow_prefix(&stats_of(&host[0], 1)), Some(p("198.51.100.25")));
        assert_eq!(allow_prefix(&stats_of(&net[0], 1)), Some(p("203.0.113.0/24")));
        assert_eq!(allow_prefix(&stats_of(&pass, 1)), Some(p("2001:db8::25")));
        assert_eq!(allow_prefix(&stats_of(&deny[0], 1)), None, "a deny flow passes nothing");
        assert_eq!(allow_prefix(&stats_of(&drop, 1)), None, "a drop verdict passes nothing");
        for fm in crate::openflow::flows::base_flows(&cfg) {
            assert_eq!(allow_prefix(&stats_of(&fm, 1)), None);
        }
        // The switch-side filter: proactive and verdict kinds, nothing else.
        let MultipartRequestBody::Flow(r) = request().body else { panic!("flow request") };
        for (cookie, want) in [
            (crate::openflow::flows::COOKIE_BASE, false),
            (crate::openflow::flows::COOKIE_PROACTIVE, true),
            (crate::openflow::flows::COOKIE_VERDICT, true),
            (crate::openflow::flows::COOKIE_LEARN_HELD, false),
            (crate::openflow::flows::COOKIE_NOT_LOADED, false),
        ] {
            assert_eq!(cookie & r.cookie_mask == r.cookie, want, "{cookie:#x}");
        }
    }

    #[test]
    fn a_growing_count_is_a_hit() {
        let cfg = ControllerConfig::default();
        let smtp = allow_flows(&cfg, &p("198.51.100.25"), Classes::SMTP, flow_cmd::ADD);
        let dns = allow_flows(&cfg, &p("198.51.100.53"), Classes::DNS, flow_cmd::ADD);
        let hits = FlowHits::default();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let reading =
            |a: u64, b: u64| vec![stats_of(&smtp[0], a), stats_of(&smtp[1], 0), stats_of(&dns[0], b)];
        hits.observe(1, &reading(0, 3), at(0));
        let ago = |now| {
            let mut v = hits.last_hits(now, Duration::from_secs(1000));
            v.sort();
            v
        };
        let mx: IpAddr = "198.51.100.25".parse().expect("ip");
        let ns: IpAddr = "198.51.100.53".parse().expect("ip");
        assert_eq!(ago(at(2)), vec![(ns, 2)], "a count seen first and not zero: hit then");
        hits.observe(1, &reading(5, 3), at(10));
        assert_eq!(ago(at(12)), vec![(mx, 2), (ns, 12)], "the SMTP entry's count grew");
        hits.observe(1, &reading(5, 3), at(20));
        assert_eq!(ago(at(20)), vec![(mx, 10), (ns, 20)], "no growth: no hit");
        // A second switch sees traffic to the name server; the first one resyncs.
        hits.observe(2, &reading(0, 1), at(30));
        hits.observe(1, &reading(0, 0), at(30));
        assert_eq!(ago(at(30)), vec![(mx, 20), (ns, 0)]);
        hits.forget(2);
        assert_eq!(hits.last_hits(at(100), Duration::from_secs(60)), vec![], "old hits are dropped");
        assert_eq!(hits.polls(), 5);
        assert_eq!(hits.poll_errors(), 0);
        hits.poll_failed();
        assert_eq!((hits.polls(), hits.poll_errors()), (5, 1), "a failed reading is no reading");
    }
}
