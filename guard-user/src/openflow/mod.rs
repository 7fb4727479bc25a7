//! OpenFlow 1.3 enforcement: a controller any Open vSwitch bridge can use
//! instead of the paper's Ryu application.
//!
//! # Flow design (table 0)
//!
//! | priority | match | action | cookie kind |
//! |---|---|---|---|
//! | 40000 | `ip(v6)_src` in an exempt source prefix | NORMAL | base |
//! | 39000 | `ip(v6)_dst` in an internal network | NORMAL | base |
//! | 30000 | protected port toward an allow-set prefix whose class permits the service (DNS: any class; SMTP: SMTP) | NORMAL | proactive |
//! | 20000 | protected port toward one host (after a packet-in) | NORMAL or drop, idle/hard timeouts, `SEND_FLOW_REM` | verdict |
//! | 15000 | `nw_frag=later` (IPv4 and IPv6) | NORMAL | base |
//! | 10000 | protected port (SMTP tcp 25/465/587, DNS udp+tcp 53 by default), IPv4 and IPv6 | meter 1 → CONTROLLER | base |
//! | 0 | everything else | NORMAL | base |
//!
//! Proactive flows are installed up to [`ControllerConfig::flow_budget`]
//! flows per switch; entries beyond it are decided by packet-in and get a
//! verdict flow. Meter 1 (packets/s, drop band) bounds the packet-in rate.
//! Every cookie carries the tag [`flows::COOKIE_TAG`], so a (re)connecting
//! switch is resynchronised by one delete with the tag mask followed by a
//! full reinstall. An allow-set change is applied as a diff: proactive
//! flows of removed or changed entries are deleted with `DELETE_STRICT`,
//! new ones added, and verdict flows inside any changed prefix deleted, so
//! a revoke or an addition takes effect at once.
//!
//! # Fragments
//!
//! Open vSwitch's default fragment mode reads L4 ports as 0 on *every*
//! fragment, so port rules would miss them. The controller sets the switch
//! to OVS's `nx-match` mode (`OFPC_FRAG_MASK` in SET_CONFIG): first
//! fragments keep their ports and are checked like any other packet;
//! later fragments match the `nw_frag=later` rule and pass, because without
//! the (checked) first fragment they cannot be reassembled. This is the
//! policy of XDP mode too (`Stat::Fragment`).
//!
//! # Counters
//!
//! Packet-ins bump the same `guard_common::Stat` counters as the XDP
//! program: `Packets` for every packet-in, `PassAllowed` when the mirrored
//! allow set permits it, `Miss` when the RPZ had to be asked, then
//! `PassCached` or `DropNotRegistered` / `DropWrongClass` for the outcome,
//! `DropMalformed` for frames that do not parse.

//!
//! # Examples
//!
//! How the daemon wires the controller (`rpz-guard run --mode openflow`):
//!
//! ```no_run
//! use std::sync::Arc;
//! use guard_user::{
//!     events::{EventOutput, EventSink},
//!     metrics::Counters,
//!     miss::{CacheTtl, MissResolver, SetSource},
//!     openflow::{ControllerConfig, ControllerShared, serve},
//!     policy::AllowSet,
//! };
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (allow_tx, allow_rx) = tokio::sync::watch::channel(Arc::new(AllowSet::new()));
//! let resolver = Arc::new(MissResolver::new(Arc::new(SetSource(allow_rx.clone())), CacheTtl::default()));
//! let events = Arc::new(EventSink::open(&EventOutput::Stdout)?);
//! let shared = ControllerShared::new(allow_rx, resolver, events, Arc::new(Counters::default()));
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let status = shared.clone(); // `status.status()` for `rpz-guard status`
//! tokio::spawn(serve(ControllerConfig::default(), shared, cancel.clone()));
//! // ... allow_tx.send_replace(Arc::new(new_set)) on every RPZ change ...
//! # drop((allow_tx, status)); Ok(()) }
//! ```

pub mod codec;
pub mod controller;
pub mod flows;
pub mod oxm;
pub mod packet;
mod wire;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use controller::{serve, serve_listener};

use crate::{
    events::EventSink,
    metrics::Counters,
    miss::MissResolver,
    policy::{AllowSet, Prefix},
};

pub use crate::policy::{ProtectedPort, Transport};

/// Controller settings (`[openflow]` in the daemon's configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Where switches connect (default `0.0.0.0:6653`).
    pub listen: SocketAddr,
    /// Protected ports (default SMTP tcp 25/465/587, DNS udp+tcp 53).
    pub protected: Vec<ProtectedPort>,
    /// Sources never checked (own resolvers, mail relays).
    pub exempt_sources: Vec<Prefix>,
    /// Destinations never checked.
    pub internal_networks: Vec<Prefix>,
    /// Most proactive allow flows per switch.
    pub flow_budget: usize,
    /// Packet-ins per second let through by the meter (0 = no meter).
    pub packet_in_rate: u32,
    /// Meter burst, packets.
    pub packet_in_burst: u32,
    /// Idle timeout of verdict flows, seconds.
    pub verdict_idle_secs: u16,
    /// Hard timeout cap of verdict flows, seconds (also bounded by the
    /// RPZ answer's cache lifetime).
    pub verdict_hard_secs: u16,
    /// Seconds between ECHO requests.
    pub echo_interval_secs: u64,
    /// A switch silent for this long is dropped.
    pub dead_peer_secs: u64,
    /// Seconds a new connection has to finish HELLO + FEATURES.
    pub handshake_secs: u64,
    /// Most switches connected at once.
    pub max_switches: usize,
    /// Packet-ins handled per second per connection (a misbehaving peer
    /// bypasses the switch meter); the excess is dropped and counted.
    pub max_packet_ins_per_sec: u32,
    /// Most RPZ questions in flight per connection.
    pub max_pending_decisions: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 6653)),
            protected: crate::config::Policy::default().protected_ports(),
            exempt_sources: Vec::new(),
            internal_networks: Vec::new(),
            flow_budget: 50_000,
            packet_in_rate: 2_000,
            packet_in_burst: 200,
            verdict_idle_secs: 60,
            verdict_hard_secs: 300,
            echo_interval_secs: 5,
            dead_peer_secs: 15,
            handshake_secs: 5,
            max_switches: 256,
            max_packet_ins_per_sec: 20_000,
            max_pending_decisions: 1024,
        }
    }
}

impl ControllerConfig {
    /// The protected port for an IP protocol and destination port.
    pub fn protected_port(&self, proto: u8, port: u16) -> Option<&ProtectedPort> {
        self.protected.iter().find(|pp| pp.proto.number() == proto && pp.port == port)
    }

    pub(crate) fn echo_interval(&self) -> Duration {
        Duration::from_secs(self.echo_interval_secs.max(1))
    }

    pub(crate) fn dead_peer(&self) -> Duration {
        Duration::from_secs(self.dead_peer_secs.max(2))
    }
}

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenflowError {
    /// The listen socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Accepting connections failed for good.
    #[error("accept on {addr} failed: {source}")]
    Accept {
        /// The listen address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the daemon hands to the controller.
#[derive(Clone)]
pub struct ControllerShared {
    /// The current allow set.
    pub allow: watch::Receiver<Arc<AllowSet>>,
    /// The miss path (cache, then the RPZ).
    pub resolver: Arc<MissResolver>,
    /// Detection events.
    pub events: Arc<EventSink>,
    /// Counters shared with metrics and status.
    pub counters: Arc<Counters>,
    board: Arc<Board>,
}

impl ControllerShared {
    /// Bundles the shared pieces; [`ControllerShared::status`] reads the
    /// controller's state from any clone.
    pub fn new(
        allow: watch::Receiver<Arc<AllowSet>>,
        resolver: Arc<MissResolver>,
        events: Arc<EventSink>,
        counters: Arc<Counters>,
    ) -> Self {
        ControllerShared { allow, resolver, events, counters, board: Arc::default() }
    }

    /// A snapshot for `rpz-guard status`.
    pub fn status(&self) -> ControllerStatus {
        self.board.snapshot()
    }

    pub(crate) fn board(&self) -> &Board {
        &self.board
    }
}

/// One connected switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchStatus {
    /// Datapath id.
    pub dpid: u64,
    /// Remote address of the connection.
    pub peer: SocketAddr,
    /// Connected since, ms since the epoch.
    pub since_ms: u64,
    /// Proactive allow flows installed.
    pub proactive_flows: usize,
    /// Allow-set entries not installed for lack of flow budget.
    pub over_budget_entries: usize,
    /// Packet-ins from this switch.
    pub packet_ins: u64,
}

/// Controller state for `rpz-guard status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// The bound listen address.
    pub listen: Option<SocketAddr>,
    /// Switches past the handshake.
    pub switches: Vec<SwitchStatus>,
    /// FLOW_MODs (adds) sent.
    pub flows_installed: u64,
    /// FLOW_MOD deletes sent.
    pub flows_deleted: u64,
    /// Packet-ins received.
    pub packet_ins: u64,
    /// Packet-ins dropped by the per-connection rate limit or queue bounds.
    pub packet_ins_dropped: u64,
    /// Packets sent on with PACKET_OUT.
    pub packet_outs: u64,
    /// FLOW_REMOVED messages received.
    pub flows_removed: u64,
    /// ERROR messages received from switches.
    pub switch_errors: u64,
    /// Connections closed for protocol violations (bad version, bad length, garbage).
    pub protocol_errors: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Completed resynchronisations (one per switch handshake).
    pub resyncs: u64,
}

#[derive(Default)]
pub(crate) struct Board {
    pub(crate) listen: Mutex<Option<SocketAddr>>,
    pub(crate) switches: Mutex<std::collections::BTreeMap<u64, SwitchStatus>>,
    pub(crate) flows_installed: AtomicU64,
    pub(crate) flows_deleted: AtomicU64,
    pub(crate) packet_ins: AtomicU64,
    pub(crate) packet_ins_dropped: AtomicU64,
    pub(crate) packet_outs: AtomicU64,
    pub(crate) flows_removed: AtomicU64,
    pub(crate) switch_errors: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) resyncs: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Board {
    fn snapshot(&self) -> ControllerStatus {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ControllerStatus {
            listen: *self.listen.lock().unwrap_or_else(|e| e.into_inner()),
            switches: self.switches.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect(),
            flows_installed: g(&self.flows_installed),
            flows_deleted: g(&self.flows_deleted),
            packet_ins: g(&self.packet_ins),
            packet_ins_dropped: g(&self.packet_ins_dropped),
            packet_outs: g(&self.packet_outs),
            flows_removed: g(&self.flows_removed),
            switch_errors: g(&self.switch_errors),
            protocol_errors: g(&self.protocol_errors),
            connections: g(&self.connections),
            resyncs: g(&self.resyncs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Service;

    #[test]
    fn config_defaults_and_toml() {
        let c: ControllerConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:16653"
            exempt_sources = ["10.0.0.53", "2001:db8::/64"]
            flow_budget = 10
            "#,
        )
        .expect("config");
        assert_eq!(c.listen.port(), 16653);
        assert_eq!(c.exempt_sources.len(), 2);
        assert_eq!(c.protected.len(), 5);
        assert_eq!(c.protected_port(6, 465).map(|p| p.service), Some(Service::Smtp));
        assert_eq!(c.protected_port(17, 25), None);
        let err = toml::from_str::<ControllerConfig>("flow_bugdet = 3").expect_err("unknown key");
        assert!(err.to_string().contains("flow_bugdet"));
    }
}
