//! OpenFlow 1.3 enforcement: a controller any Open vSwitch bridge can use
//! instead of the paper's Ryu application.
//!
//! # Flow design (table 0)
//!
//! | priority | match | action | cookie kind |
//! |---|---|---|---|
//! | 40100 | live learning: a resolver's DNS queries (each exempt flow covering it, refined) | NORMAL + CONTROLLER | learn |
//! | 40100 | live learning: answers toward a resolver (src port 53; later fragments) | meter 2 → CONTROLLER (held; released after the learned flows) | learn |
//! | 40000 | `ip(v6)_src` in an exempt source prefix (and, for anti-spoofing, `eth_src` in `policy.exempt_macs` / `in_port` in `openflow.exempt_in_ports`) | NORMAL | base |
//! | 39000 | `ip(v6)_dst` in an internal network | NORMAL | base |
//! | 35000 | protected port toward a denied prefix or host (RPZ `CNAME .`): a deny beats every allow flow | meter 1 → CONTROLLER (dropped, reason `denied`) | proactive |
//! | 30000 | protected port toward an allow-set prefix whose class permits the service (DNS: any class; SMTP: SMTP) | NORMAL | proactive |
//! | 25000 | protected port, only until the first allow set is loaded ([`flows::not_loaded_flows`]) | meter 1 → CONTROLLER, which drops and reports `not_loaded` | not loaded |
//! | 20000 | protected port toward one host (after a packet-in) | NORMAL or drop, idle/hard timeouts, `SEND_FLOW_REM` | verdict |
//! | 15000 | `nw_frag=later` (IPv4 and IPv6) | NORMAL | base |
//! | 10000 | protected port (SMTP tcp 25/465/587, DNS udp+tcp 53 by default), IPv4 and IPv6 | meter 1 → CONTROLLER | base |
//! | 10000 | what OVS could not parse: `tcp`/`udp` port 0, `nw_proto=0`, ethertype 802.1Q/802.1ad ([`flows::unparsed_matches`]) | meter 1 → CONTROLLER | base |
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
//! OVS extracts the ports only when the whole transport header is in the
//! packet: a tiny first fragment (RFC 1858 §3.1) shows port 0 and would fall
//! to the table-miss NORMAL flow. The port-0 rule sends it to the
//! controller, whose parser ([`crate::frame`], the rules of the XDP program)
//! drops it as malformed. Both modes are tested against one table of crafted
//! frames (`guard_tests::awkward`).
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

pub mod admission;
pub mod codec;
pub mod controller;
pub mod flows;
pub mod hits;
pub mod learn;
pub mod oxm;
pub mod tls;
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

pub use admission::{Dpid, Refusal, RefusedPeer};
pub use controller::{serve, serve_listener};
pub use learn::Learning;
pub use tls::TlsConfig;

use crate::{
    events::EventSink,
    metrics::{Counters, Gauge},
    miss::MissResolver,
    policy::{AllowSet, MacAddr, Prefix},
};

pub use crate::policy::{ProtectedPort, Transport};

/// Controller settings (`[openflow]` in the daemon's configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Where switches connect (default `127.0.0.1:6653`: loopback, so
    /// nothing outside the host can act as a switch until the operator
    /// chooses an address, preferably with [`ControllerConfig::tls`]).
    pub listen: SocketAddr,
    /// TLS with client certificates (OVS `ssl:` targets); none = plain TCP.
    pub tls: Option<TlsConfig>,
    /// Datapath ids that may connect (empty: any). Without TLS a peer can
    /// claim any id, so this guards against mistakes, not attackers.
    pub allowed_dpids: Vec<Dpid>,
    /// Source prefixes that may connect (empty: any).
    pub allowed_sources: Vec<Prefix>,
    /// Protected ports (default SMTP tcp 25/465/587, DNS udp+tcp 53).
    pub protected: Vec<ProtectedPort>,
    /// Sources never checked (own resolvers, mail relays).
    pub exempt_sources: Vec<Prefix>,
    /// Anti-spoofing: exempt sources are honoured only from these source
    /// MACs (empty: any). See [`crate::antispoof`].
    pub exempt_macs: Vec<MacAddr>,
    /// Anti-spoofing: exempt sources are honoured only on these switch
    /// ports (empty: any).
    pub exempt_in_ports: Vec<u32>,
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
    /// Seconds a new connection has to finish TLS, HELLO and FEATURES.
    pub handshake_secs: u64,
    /// Most connections open at once (switches and peers still in the handshake).
    pub max_connections: usize,
    /// Most connections open at once from one source address.
    pub max_connections_per_source: usize,
    /// Bytes queued toward one switch before senders wait.
    pub send_queue_bytes: usize,
    /// A switch that does not take queued bytes for this long is disconnected.
    pub drain_timeout_secs: u64,
    /// A refused peer address is logged at most once per this many seconds.
    pub refusal_log_secs: u64,
    /// Packet-ins handled per second per connection (a misbehaving peer
    /// bypasses the switch meter); the excess is dropped and counted.
    pub max_packet_ins_per_sec: u32,
    /// Most RPZ questions in flight per connection.
    pub max_pending_decisions: usize,
    /// Live learning: the resolvers whose DNS the switch copies to the
    /// controller (empty: no learning flows; see [`flows::learn_flows`]).
    pub learn_resolvers: Vec<Prefix>,
    /// Live learning: answers toward the resolvers go to the controller
    /// only and are released once the flows they teach are installed
    /// (false: forwarded at once and copied).
    pub learn_hold_answers: bool,
    /// Live learning: held answers per second the learning meter lets
    /// through (0 = no meter).
    pub learn_packet_in_rate: u32,
    /// Seconds between two readings of the allow flows' statistics, the
    /// last-hit times ageing keeps used entries by ([`hits`]); 0: none.
    #[serde(default)]
    pub hit_poll_secs: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6653)),
            tls: None,
            allowed_dpids: Vec::new(),
            allowed_sources: Vec::new(),
            protected: crate::config::Policy::default().protected_ports(),
            exempt_sources: Vec::new(),
            exempt_macs: Vec::new(),
            exempt_in_ports: Vec::new(),
            internal_networks: Vec::new(),
            flow_budget: 50_000,
            packet_in_rate: 2_000,
            packet_in_burst: 200,
            verdict_idle_secs: 60,
            verdict_hard_secs: 300,
            echo_interval_secs: 5,
            dead_peer_secs: 15,
            handshake_secs: 5,
            max_connections: 256,
            max_connections_per_source: 16,
            send_queue_bytes: 64 * 1024,
            drain_timeout_secs: 10,
            refusal_log_secs: 60,
            max_packet_ins_per_sec: 20_000,
            max_pending_decisions: 1024,
            learn_resolvers: Vec::new(),
            learn_hold_answers: true,
            learn_packet_in_rate: 10_000,
            hit_poll_secs: 10,
        }
    }
}

impl ControllerConfig {
    /// The controller settings of a daemon configuration (`[openflow]`
    /// plus the policy's ports, exempt sources and internal networks).
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let of = &cfg.openflow;
        ControllerConfig {
            listen: of.listen,
            tls: of.tls.clone(),
            allowed_dpids: of.allowed_dpids.clone(),
            allowed_sources: of.allowed_sources.clone(),
            protected: cfg.policy.protected_ports(),
            exempt_sources: cfg.policy.exempt_sources.clone(),
            exempt_macs: cfg.policy.exempt_macs.clone(),
            exempt_in_ports: of.exempt_in_ports.clone(),
            internal_networks: cfg.policy.internal_networks.clone(),
            flow_budget: of.flow_budget,
            packet_in_rate: of.packet_in_rate,
            verdict_idle_secs: of.idle_timeout_secs,
            verdict_hard_secs: of.hard_timeout_secs,
            handshake_secs: of.handshake_timeout_secs,
            max_connections: of.max_connections,
            max_connections_per_source: of.max_connections_per_source,
            send_queue_bytes: of.send_queue_bytes,
            drain_timeout_secs: of.drain_timeout_secs,
            refusal_log_secs: of.refusal_log_secs,
            learn_resolvers: if cfg.learn.enabled {
                cfg.learn.resolvers_or(&cfg.policy.exempt_sources)
            } else {
                Vec::new()
            },
            learn_hold_answers: cfg.learn.openflow_answers == crate::config::AnswerHandling::Hold,
            learn_packet_in_rate: cfg.learn.openflow_packet_in_rate,
            // Several readings per idle period, so a used entry is never
            // taken for idle; at most a minute apart (one dump of every
            // allow flow per reading).
            hit_poll_secs: (cfg.lifetime.idle_secs / 4).clamp(1, 60),
            ..ControllerConfig::default()
        }
    }

    /// Where exempt sources are honoured from (anti-spoofing).
    pub fn exempt_origin(&self) -> crate::antispoof::ExemptOrigin {
        crate::antispoof::ExemptOrigin {
            macs: self.exempt_macs.clone(),
            in_ports: self.exempt_in_ports.clone(),
            ..crate::antispoof::ExemptOrigin::default()
        }
    }

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

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_secs.max(1))
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs.max(1))
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
    /// A TLS file is missing, unreadable or unusable.
    #[error("{key} = {path:?}: {why}")]
    Tls {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        why: String,
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
    /// Live learning (with [`ControllerConfig::learn_resolvers`]).
    pub learning: Option<Arc<Learning>>,
    /// When allowed traffic last went to each entry, from the switches'
    /// flow statistics ([`ControllerConfig::hit_poll_secs`]).
    pub hits: Arc<hits::FlowHits>,
    board: Arc<Board>,
    /// False while no allow set is loaded (deny-protected start-up mode,
    /// see [`ControllerShared::with_loaded`]).
    loaded: watch::Receiver<bool>,
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
        // Loaded unless the daemon says otherwise: a controller given a set
        // by its caller enforces that set.
        let loaded = watch::channel(true).1;
        ControllerShared {
            allow,
            resolver,
            events,
            counters,
            learning: None,
            hits: Arc::default(),
            board: Arc::default(),
            loaded,
        }
    }

    /// The same, feeding the learning flows' packet-ins to `learning`.
    pub fn with_learning(mut self, learning: Arc<Learning>) -> Self {
        self.learning = Some(learning);
        self
    }

    /// Follows the daemon's start-up state: while `loaded` is false (no
    /// allow set from the source or a snapshot yet) every switch holds the
    /// deny-protected flows ([`flows::not_loaded_flows`]) and protected
    /// packet-ins are dropped and reported (reason `not_loaded`) without
    /// asking the RPZ, as the XDP program does.
    #[must_use]
    pub fn with_loaded(mut self, loaded: watch::Receiver<bool>) -> Self {
        self.loaded = loaded;
        self
    }

    /// True once an allow set is loaded.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    pub(crate) fn loaded_rx(&self) -> watch::Receiver<bool> {
        self.loaded.clone()
    }

    /// A snapshot for `rpz-guard status`.
    pub fn status(&self) -> ControllerStatus {
        let mut s = self.board.snapshot();
        s.hit_polls = self.hits.polls();
        s.hit_poll_errors = self.hits.poll_errors();
        s
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
    /// The connection is TLS with a verified switch certificate.
    #[serde(default)]
    pub tls: bool,
    /// Proactive allow flows installed.
    pub proactive_flows: usize,
    /// Allow-set entries not installed for lack of flow budget.
    pub over_budget_entries: usize,
    /// FLOW_MOD adds sent on this connection (proactive and verdict flows).
    #[serde(default)]
    pub flows_installed: u64,
    /// Packet-ins from this switch.
    pub packet_ins: u64,
    /// Bytes queued toward the switch, not yet written.
    #[serde(default)]
    pub send_queue_bytes: usize,
    /// Full resynchronisations of this datapath id since the daemon started.
    #[serde(default)]
    pub resyncs: u64,
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
    /// Live learning: packet-ins of the learning flows (copies and held answers).
    #[serde(default)]
    pub learn_packet_ins: u64,
    /// Live learning: held answers released after learning.
    #[serde(default)]
    pub learn_released: u64,
    /// Live learning: packet-ins shed by the controller's limit (a held
    /// answer with it: never released, the resolver retries).
    #[serde(default)]
    pub learn_shed: u64,
    /// Live learning: packets the learning meter dropped at the switch
    /// (held answers; read from the meter's statistics).
    #[serde(default)]
    pub learn_meter_drops: u64,
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
    /// The channel requires TLS with client certificates.
    #[serde(default)]
    pub tls: bool,
    /// Connections open now (switches and peers in the handshake).
    #[serde(default)]
    pub open_connections: usize,
    /// Switches disconnected because they did not drain their send queue.
    #[serde(default)]
    pub stalled_disconnects: u64,
    /// Refused peers by reason.
    #[serde(default)]
    pub refused: Vec<(Refusal, u64)>,
    /// The most recently refused peer addresses, newest first.
    #[serde(default)]
    pub refused_peers: Vec<RefusedPeer>,
    /// Flow-stats readings of the allow flows taken (last-hit times for
    /// ageing, every `hit_poll_secs`; all switches).
    #[serde(default)]
    pub hit_polls: u64,
    /// Flow-stats readings that failed: not queued, unanswered within 30 s,
    /// or answered with an ERROR.
    #[serde(default)]
    pub hit_poll_errors: u64,
}

impl ControllerStatus {
    /// Prometheus gauges (`openflow_*`); per-switch ones are labelled with
    /// the datapath id, refusals with their reason.
    pub fn gauges(&self) -> Vec<Gauge> {
        let one = |name, help, value: f64| Gauge { name, help, label: None, value };
        let mut g = vec![
            one("openflow_switches", "Switches past the handshake.", self.switches.len() as f64),
            one("openflow_open_connections", "Controller connections open.", self.open_connections as f64),
            one("openflow_connections_total", "Connections accepted.", self.connections as f64),
            one("openflow_flows_installed_total", "FLOW_MOD adds sent.", self.flows_installed as f64),
            one("openflow_flows_deleted_total", "FLOW_MOD deletes sent.", self.flows_deleted as f64),
            one("openflow_packet_ins_total", "Packet-ins received.", self.packet_ins as f64),
            one(
                "openflow_packet_ins_dropped_total",
                "Packet-ins shed by limits.",
                self.packet_ins_dropped as f64,
            ),
            one(
                "openflow_protocol_errors_total",
                "Connections closed for protocol violations.",
                self.protocol_errors as f64,
            ),
            one("openflow_switch_errors_total", "ERROR messages from switches.", self.switch_errors as f64),
            one("openflow_resyncs_total", "Full resynchronisations.", self.resyncs as f64),
            one(
                "openflow_learn_packet_ins_total",
                "Live learning: packet-ins of the learning flows.",
                self.learn_packet_ins as f64,
            ),
            one(
                "openflow_learn_released_total",
                "Live learning: held answers released after learning.",
                self.learn_released as f64,
            ),
            one(
                "openflow_learn_shed_total",
                "Live learning: packet-ins shed by the controller's limit (held answers never released).",
                self.learn_shed as f64,
            ),
            one(
                "openflow_learn_meter_drops_total",
                "Live learning: held answers the learning meter dropped at the switch.",
                self.learn_meter_drops as f64,
            ),
            one(
                "openflow_stalled_disconnects_total",
                "Switches disconnected for not draining their send queue.",
                self.stalled_disconnects as f64,
            ),
            one(
                "openflow_hit_polls_total",
                "Flow-stats readings of the allow flows taken (last-hit times for ageing).",
                self.hit_polls as f64,
            ),
            one(
                "openflow_hit_poll_errors_total",
                "Flow-stats readings that failed (not sent, unanswered within 30 s, or an ERROR).",
                self.hit_poll_errors as f64,
            ),
        ];
        for (r, n) in &self.refused {
            g.push(Gauge {
                name: "openflow_refused_total",
                help: "Peers refused, by reason.",
                label: Some(("reason", r.name().to_owned())),
                value: *n as f64,
            });
        }
        type Per = (&'static str, &'static str, fn(&SwitchStatus) -> f64);
        let per: [Per; 6] = [
            ("openflow_switch_connected_since_seconds", "Connected since (Unix time).", |s| {
                s.since_ms as f64 / 1000.0
            }),
            ("openflow_switch_flows_installed_total", "FLOW_MOD adds sent to the switch.", |s| {
                s.flows_installed as f64
            }),
            ("openflow_switch_proactive_flows", "Proactive allow flows installed.", |s| {
                s.proactive_flows as f64
            }),
            ("openflow_switch_send_queue_bytes", "Bytes queued toward the switch.", |s| {
                s.send_queue_bytes as f64
            }),
            ("openflow_switch_resyncs_total", "Full resynchronisations of the datapath.", |s| {
                s.resyncs as f64
            }),
            ("openflow_switch_packet_ins_total", "Packet-ins from the switch.", |s| s.packet_ins as f64),
        ];
        for (name, help, f) in per {
            for s in &self.switches {
                g.push(Gauge { name, help, label: Some(("dpid", format!("{:016x}", s.dpid))), value: f(s) });
            }
        }
        g
    }

    /// The OpenFlow part of `rpz-guard status`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let now = crate::events::now_ms();
        let _ = writeln!(
            o,
            "openflow   listen {}  tls {}  connections {} open / {} accepted  resyncs {}  stalled {}",
            self.listen.map_or("-".into(), |l| l.to_string()),
            if self.tls { "on (client certificates verified)" } else { "OFF" },
            self.open_connections,
            self.connections,
            self.resyncs,
            self.stalled_disconnects,
        );
        let _ = writeln!(
            o,
            "flows      installed {}  deleted {}   packet-ins {} (dropped {})  protocol errors {}  switch errors {}",
            self.flows_installed,
            self.flows_deleted,
            self.packet_ins,
            self.packet_ins_dropped,
            self.protocol_errors,
            self.switch_errors
        );
        if self.hit_polls > 0 || self.hit_poll_errors > 0 {
            let _ = writeln!(
                o,
                "hit polls  {} flow-stats readings  {} failed",
                self.hit_polls, self.hit_poll_errors
            );
        }
        if self.learn_packet_ins > 0 || self.learn_shed > 0 || self.learn_meter_drops > 0 {
            let _ = writeln!(
                o,
                "learning   packet-ins {}  held answers released {}  shed {}  meter drops {}",
                self.learn_packet_ins, self.learn_released, self.learn_shed, self.learn_meter_drops
            );
        }
        let _ = writeln!(
            o,
            "\n  {:<16}  {:<22} {:>10}  {:<3} {:>9} {:>9} {:>10} {:>7} {:>10}",
            "dpid", "peer", "connected", "tls", "flows", "proactive", "queue B", "resyncs", "packet-ins"
        );
        for s in &self.switches {
            let _ = writeln!(
                o,
                "  {:016x}  {:<22} {:>9}s  {:<3} {:>9} {:>9} {:>10} {:>7} {:>10}",
                s.dpid,
                s.peer.to_string(),
                now.saturating_sub(s.since_ms) / 1000,
                if s.tls { "yes" } else { "no" },
                s.flows_installed,
                s.proactive_flows,
                s.send_queue_bytes,
                s.resyncs,
                s.packet_ins
            );
        }
        if self.switches.is_empty() {
            let _ = writeln!(o, "  (no switch connected)");
        }
        let refused: Vec<String> =
            self.refused.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{} {n}", r.name())).collect();
        let _ = writeln!(
            o,
            "\nrefused    {}",
            if refused.is_empty() { "none".into() } else { refused.join("  ") }
        );
        for p in &self.refused_peers {
            let _ = writeln!(
                o,
                "  {:<40} {:<22} {:>6}x  {}s ago{}",
                p.addr.to_string(),
                p.reason.name(),
                p.count,
                now.saturating_sub(p.last_ms) / 1000,
                p.dpid.map(|d| format!("  dpid {d}")).unwrap_or_default()
            );
        }
        o
    }
}

/// Per-connection figures the status reads live (a switch busy in its
/// resync publishes nothing else until it is done).
#[derive(Default)]
pub(crate) struct SwitchLive {
    pub(crate) flow_adds: AtomicU64,
    pub(crate) packet_ins: AtomicU64,
    pub(crate) queue_depth: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Default)]
pub(crate) struct Board {
    live: Mutex<std::collections::HashMap<u64, Arc<SwitchLive>>>,
    pub(crate) listen: Mutex<Option<SocketAddr>>,
    admission: Mutex<Option<(Arc<admission::Admission>, bool)>>,
    resyncs_by_dpid: Mutex<std::collections::HashMap<u64, u64>>,
    pub(crate) stalled: AtomicU64,
    pub(crate) switches: Mutex<std::collections::BTreeMap<u64, SwitchStatus>>,
    pub(crate) flows_installed: AtomicU64,
    pub(crate) flows_deleted: AtomicU64,
    pub(crate) packet_ins: AtomicU64,
    pub(crate) packet_ins_dropped: AtomicU64,
    pub(crate) packet_outs: AtomicU64,
    pub(crate) learn_packet_ins: AtomicU64,
    pub(crate) learn_released: AtomicU64,
    pub(crate) learn_shed: AtomicU64,
    pub(crate) learn_meter_drops: AtomicU64,
    pub(crate) flows_removed: AtomicU64,
    pub(crate) switch_errors: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) resyncs: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Datapath ids whose resync count is kept; past it, only connected ones.
const RESYNC_IDS: usize = 4096;

impl Board {
    pub(crate) fn set_admission(&self, a: Arc<admission::Admission>, tls: bool, listen: Option<SocketAddr>) {
        *self.admission.lock().unwrap_or_else(|e| e.into_inner()) = Some((a, tls));
        *self.listen.lock().unwrap_or_else(|e| e.into_inner()) = listen;
    }

    pub(crate) fn admission(&self) -> Option<Arc<admission::Admission>> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|a| a.0.clone())
    }

    pub(crate) fn dpid_allowed(&self, dpid: u64) -> bool {
        self.admission().is_none_or(|a| a.dpid_allowed(dpid))
    }

    pub(crate) fn add_switch(&self, id: u64, live: Arc<SwitchLive>, status: SwitchStatus) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(id, live);
        self.switches.lock().unwrap_or_else(|e| e.into_inner()).insert(id, status);
    }

    pub(crate) fn remove_switch(&self, id: u64) {
        self.switches.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    pub(crate) fn count_resync(&self, dpid: u64) {
        let mut m = self.resyncs_by_dpid.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= RESYNC_IDS && !m.contains_key(&dpid) {
            let live: std::collections::HashSet<u64> =
                self.switches.lock().unwrap_or_else(|e| e.into_inner()).values().map(|s| s.dpid).collect();
            m.retain(|d, _| live.contains(d));
        }
        *m.entry(dpid).or_insert(0) += 1;
    }

    pub(crate) fn resyncs_of(&self, dpid: u64) -> u64 {
        self.resyncs_by_dpid.lock().unwrap_or_else(|e| e.into_inner()).get(&dpid).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> ControllerStatus {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let adm = self.admission.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ControllerStatus {
            tls: adm.as_ref().is_some_and(|a| a.1),
            open_connections: adm.as_ref().map_or(0, |a| a.0.open_connections()),
            stalled_disconnects: g(&self.stalled),
            refused: adm.as_ref().map(|a| a.0.refused_counts()).unwrap_or_default(),
            refused_peers: adm.as_ref().map(|a| a.0.refused_peers()).unwrap_or_default(),
            listen: *self.listen.lock().unwrap_or_else(|e| e.into_inner()),
            switches: {
                let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let sw = self.switches.lock().unwrap_or_else(|e| e.into_inner());
                sw.iter()
                    .map(|(id, s)| {
                        let mut s = s.clone();
                        if let Some(l) = live.get(id) {
                            s.flows_installed = g(&l.flow_adds);
                            s.packet_ins = g(&l.packet_ins);
                            s.send_queue_bytes = l.queue_depth.load(Ordering::Relaxed);
                        }
                        s
                    })
                    .collect()
            },
            flows_installed: g(&self.flows_installed),
            flows_deleted: g(&self.flows_deleted),
            packet_ins: g(&self.packet_ins),
            packet_ins_dropped: g(&self.packet_ins_dropped),
            packet_outs: g(&self.packet_outs),
            learn_packet_ins: g(&self.learn_packet_ins),
            learn_released: g(&self.learn_released),
            learn_shed: g(&self.learn_shed),
            learn_meter_drops: g(&self.learn_meter_drops),
            flows_removed: g(&self.flows_removed),
            switch_errors: g(&self.switch_errors),
            protocol_errors: g(&self.protocol_errors),
            connections: g(&self.connections),
            resyncs: g(&self.resyncs),
            // Filled in by ControllerShared::status (the hits are not the board's).
            hit_polls: 0,
            hit_poll_errors: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Service;

    /// The flow-stats readings reach the metrics and the status text.
    #[test]
    fn hit_polls_in_gauges_and_status() {
        let st = ControllerStatus { hit_polls: 7, hit_poll_errors: 2, ..ControllerStatus::default() };
        let g = st.gauges();
        let v = |n: &str| g.iter().find(|x| x.name == n).map(|x| x.value);
        assert_eq!(v("openflow_hit_polls_total"), Some(7.0));
        assert_eq!(v("openflow_hit_poll_errors_total"), Some(2.0));
        assert!(st.render().contains("hit polls  7 flow-stats readings  2 failed"), "{}", st.render());
        let back: ControllerStatus = serde_json::from_str("{\"switches\":[],\"flows_installed\":0,\"flows_deleted\":0,\"packet_ins\":0,\"packet_ins_dropped\":0,\"packet_outs\":0,\"learn_packet_ins\":0,\"learn_released\":0,\"learn_shed\":0,\"learn_meter_drops\":0,\"flows_removed\":0,\"switch_errors\":0,\"protocol_errors\":0,\"connections\":0,\"resyncs\":0,\"listen\":null}").expect("an older daemon's status");
        assert_eq!((back.hit_polls, back.hit_poll_errors), (0, 0));
    }

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
