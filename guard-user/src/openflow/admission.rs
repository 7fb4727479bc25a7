//! Who may be a switch: connection caps (in total and per source address),
//! allowed source prefixes and datapath ids, and the bookkeeping of refused
//! peers (counted by reason, logged once per peer per interval, the latest
//! listed in `rpz-guard status`).
//!
//! Order of checks for a new connection: source prefix and connection caps
//! at accept (nothing is read from the peer), then TLS (when configured),
//! then the OpenFlow handshake and the datapath id. A refused peer never
//! gets a FLOW_MOD: the first one is sent after every check passed.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::IpAddr,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::ControllerConfig;
use crate::{events::now_ms, policy::Prefix};

/// An OpenFlow datapath id, written in the config and status as 16 hex
/// digits (`"0000000000abc0de"`, as `ovs-vsctl get bridge br0 datapath_id`
/// shows it), with or without `0x` or colons between byte pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dpid(pub u64);

impl FromStr for Dpid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
        let hex: String = t.chars().filter(|c| *c != ':').collect();
        if hex.is_empty() || hex.len() > 16 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{s:?} is not a datapath id (up to 16 hex digits, e.g. \"0000000000abc0de\")"
            ));
        }
        u64::from_str_radix(&hex, 16).map(Dpid).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl fmt::Display for Dpid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for Dpid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dpid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a peer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Its address is outside `allowed_sources`.
    SourceNotAllowed,
    /// `max_connections` were open.
    TooManyConnections,
    /// `max_connections_per_source` were open from its address.
    TooManyFromSource,
    /// The TLS handshake failed (no certificate, one not signed by the CA, ...).
    TlsFailed,
    /// HELLO + FEATURES (and TLS) not finished within `handshake_timeout_secs`.
    HandshakeTimeout,
    /// Its datapath id is not in `allowed_dpids`.
    DpidNotAllowed,
}

impl Refusal {
    /// Every reason, in status order.
    pub const ALL: [Refusal; 6] = [
        Refusal::SourceNotAllowed,
        Refusal::TooManyConnections,
        Refusal::TooManyFromSource,
        Refusal::TlsFailed,
        Refusal::HandshakeTimeout,
        Refusal::DpidNotAllowed,
    ];

    /// The snake_case name used in status and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::SourceNotAllowed => "source_not_allowed",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::TooManyFromSource => "too_many_from_source",
            Refusal::TlsFailed => "tls_failed",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::DpidNotAllowed => "dpid_not_allowed",
        }
    }
}

/// A refused peer as `rpz-guard status` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedPeer {
    /// Source address.
    pub addr: IpAddr,
    /// The latest reason.
    pub reason: Refusal,
    /// Refusals of this address since it was first listed.
    pub count: u64,
    /// Last refusal, ms since the epoch.
    pub last_ms: u64,
    /// The datapath id it claimed, when refused for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpid: Option<Dpid>,
}

/// Peers remembered for status and log rate limiting; the oldest go first.
const REMEMBERED_PEERS: usize = 256;
/// Refused peers shown in status.
const LISTED_PEERS: usize = 16;

struct PeerLog {
    logged: Instant,
    suppressed: u64,
    entry: RefusedPeer,
}

/// Connection caps, allowlists and refusal bookkeeping for one controller.
pub(crate) struct Admission {
    allowed_sources: Vec<Prefix>,
    allowed_dpids: Vec<Dpid>,
    max_total: usize,
    max_per_source: usize,
    log_every: Duration,
    open: Mutex<OpenConns>,
    refused: [AtomicU64; Refusal::ALL.len()],
    peers: Mutex<(HashMap<IpAddr, PeerLog>, VecDeque<IpAddr>)>,
}

#[derive(Default)]
struct OpenConns {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A counted open connection; the counts drop with it.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(cfg: &ControllerConfig) -> Self {
        Admission {
            allowed_sources: cfg.allowed_sources.clone(),
            allowed_dpids: cfg.allowed_dpids.clone(),
            max_total: cfg.max_connections.max(1),
            max_per_source: cfg.max_connections_per_source.max(1),
            log_every: Duration::from_secs(cfg.refusal_log_secs.max(1)),
            open: Mutex::default(),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            peers: Mutex::default(),
        }
    }

    /// Checks a just-accepted peer's address and the caps; on success the
    /// connection is counted until the returned slot drops.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        let source = canonical(source);
        if !self.allowed_sources.is_empty() && !self.allowed_sources.iter().any(|p| p.contains(source)) {
            return Err(Refusal::SourceNotAllowed);
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err(Refusal::TooManyConnections);
        }
        let n = open.by_source.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refusal::TooManyFromSource);
        }
        *n += 1;
        open.total += 1;
        Ok(Slot { admission: self.clone(), source })
    }

    /// Whether a switch with this datapath id may be programmed.
    pub(crate) fn dpid_allowed(&self, dpid: u64) -> bool {
        self.allowed_dpids.is_empty() || self.allowed_dpids.contains(&Dpid(dpid))
    }

    /// Counts a refusal and logs it, at most once per peer address per
    /// interval (with the number suppressed since the last line).
    pub(crate) fn refuse(
        &self,
        peer: std::net::SocketAddr,
        reason: Refusal,
        dpid: Option<u64>,
        detail: &str,
    ) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        let addr = canonical(peer.ip());
        let now = Instant::now();
        let mut guard = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        let entry = RefusedPeer { addr, reason, count: 1, last_ms: now_ms(), dpid: dpid.map(Dpid) };
        let log = match map.get_mut(&addr) {
            Some(p) => {
                p.entry = RefusedPeer { count: p.entry.count + 1, ..entry };
                if let Some(i) = order.iter().position(|a| *a == addr) {
                    order.remove(i);
                }
                order.push_back(addr);
                if now.duration_since(p.logged) >= self.log_every {
                    let suppressed = std::mem::take(&mut p.suppressed);
                    p.logged = now;
                    Some(suppressed)
                } else {
                    p.suppressed += 1;
                    None
                }
            }
            None => {
                if order.len() >= REMEMBERED_PEERS
                    && let Some(old) = order.pop_front()
                {
                    map.remove(&old);
                }
                map.insert(addr, PeerLog { logged: now, suppressed: 0, entry });
                order.push_back(addr);
                Some(0)
            }
        };
        drop(guard);
        if let Some(suppressed) = log {
            warn!(
                %peer,
                reason = reason.name(),
                dpid = dpid.map(|d| Dpid(d).to_string()),
                detail,
                suppressed,
                "OpenFlow peer refused"
            );
        }
    }

    /// Refusals by reason.
    pub(crate) fn refused_counts(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL.iter().map(|r| (*r, self.refused[*r as usize].load(Ordering::Relaxed))).collect()
    }

    /// The most recently refused peers, newest first.
    pub(crate) fn refused_peers(&self) -> Vec<RefusedPeer> {
        let guard = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &*guard;
        order.iter().rev().take(LISTED_PEERS).filter_map(|a| map.get(a).map(|p| p.entry.clone())).collect()
    }

    /// Connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// IPv4-mapped IPv6 peers (a dual-stack listener) count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut ControllerConfig)) -> Arc<Admission> {
        let mut c = ControllerConfig::default();
        f(&mut c);
        Arc::new(Admission::new(&c))
    }

    #[test]
    fn dpid_forms() {
        assert_eq!("0000000000abc0de".parse::<Dpid>(), Ok(Dpid(0xabc0de)));
        assert_eq!("0xABC0DE".parse::<Dpid>(), Ok(Dpid(0xabc0de)));
        assert_eq!("00:00:00:00:00:ab:c0:de".parse::<Dpid>(), Ok(Dpid(0xabc0de)));
        assert_eq!("ffffffffffffffff".parse::<Dpid>(), Ok(Dpid(u64::MAX)));
        for bad in ["", "0x", "xyz", "10000000000000000", "12 34"] {
            assert!(bad.parse::<Dpid>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(Dpid(0xabc0de).to_string(), "0000000000abc0de");
    }

    #[test]
    fn caps_per_source_and_total() {
        let a = cfg(|c| {
            c.max_connections = 3;
            c.max_connections_per_source = 2;
        });
        let x: IpAddr = "192.0.2.1".parse().expect("ip");
        let y: IpAddr = "::ffff:192.0.2.2".parse().expect("ip");
        let s1 = a.admit(x).expect("first");
        let _s2 = a.admit(x).expect("second");
        assert_eq!(a.admit(x).err(), Some(Refusal::TooManyFromSource));
        let _s3 = a.admit(y).expect("other source");
        assert_eq!(a.admit("192.0.2.3".parse().expect("ip")).err(), Some(Refusal::TooManyConnections));
        drop(s1);
        assert_eq!(a.open_connections(), 2);
        let _s4 = a.admit(x).expect("room again after a close");
        assert_eq!(a.open_connections(), 3);
    }

    #[test]
    fn allowlists() {
        let a = cfg(|c| {
            c.allowed_sources = vec!["10.0.0.0/8".parse().expect("prefix")];
            c.allowed_dpids = vec![Dpid(7)];
        });
        assert_eq!(a.admit("192.0.2.1".parse().expect("ip")).err(), Some(Refusal::SourceNotAllowed));
        assert!(a.admit("::ffff:10.1.2.3".parse().expect("ip")).is_ok(), "mapped v4 in an allowed prefix");
        assert!(a.dpid_allowed(7));
        assert!(!a.dpid_allowed(8));
        let open = cfg(|_| {});
        assert!(open.dpid_allowed(8), "no list: any datapath id");
    }

    #[test]
    fn refusals_counted_and_listed_boundedly() {
        let a = cfg(|_| {});
        let peer = |i: u32| std::net::SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 1000));
        for _ in 0..5 {
            a.refuse(peer(1), Refusal::TlsFailed, None, "no certificate");
        }
        for i in 0..1000 {
            a.refuse(peer(i + 2), Refusal::TooManyFromSource, None, "");
        }
        let counts = a.refused_counts();
        assert!(counts.contains(&(Refusal::TlsFailed, 5)));
        assert!(counts.contains(&(Refusal::TooManyFromSource, 1000)));
        let listed = a.refused_peers();
        assert_eq!(listed.len(), LISTED_PEERS);
        assert_eq!(listed[0].addr, peer(1001).ip(), "newest first");
        assert!(a.peers.lock().expect("lock").0.len() <= REMEMBERED_PEERS, "memory bounded");
    }
}
