//! The daemon's configuration file (TOML), its defaults and its validation.
//!
//! Every key has a default (one place: the `Default` impls below), unknown
//! keys are errors, and validation errors name the key and the bad value.
//! Command-line flags override the file (see `main.rs`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    afxdp::xsk::BindMode,
    events::{EventFormat, EventOutput, EventSettings},
    miss::CacheTtl,
    policy::{MacAddr, Prefix, ProtectedPort, Service, Transport},
    xdp::AttachMode,
};

/// A configuration problem, naming the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and key.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config key `{key}` = {value}: {why}")]
    Invalid {
        /// Dotted key, e.g. `policy.smtp_ports`.
        key: &'static str,
        /// The offending value as written.
        value: String,
        /// What is wrong.
        why: String,
    },
}

fn invalid(key: &'static str, value: impl std::fmt::Display, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), why: why.into() }
}

/// Which enforcement point to drive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The XDP program on a Linux router interface.
    #[default]
    Xdp,
    /// An OpenFlow 1.3 controller for Open vSwitch.
    Openflow,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xdp" => Ok(Mode::Xdp),
            "openflow" => Ok(Mode::Openflow),
            other => Err(format!("mode {other:?} is not one of xdp, openflow")),
        }
    }
}

/// How the miss path asks the RPZ about an unknown destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissQuery {
    /// Query the owner name inside the policy zone (authoritative; default).
    #[default]
    Zone,
    /// The paper's check: ask the recursive BIND for the IP literal and read
    /// the RPZ rewrite (`127.0.0.1` / `127.0.0.25`).
    Paper,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Enforcement point.
    pub enforce: Enforce,
    /// What is checked.
    pub policy: Policy,
    /// Where the allow set comes from.
    pub rpz: Rpz,
    /// The miss path's verdict cache.
    pub cache: Cache,
    /// Detection events.
    pub events: Events,
    /// Status socket and metrics.
    pub status: Status,
    /// OpenFlow controller mode.
    pub openflow: Openflow,
    /// Live learning from the resolvers' DNS traffic.
    pub learn: Learn,
    /// The AF_XDP hold path (`enforce.miss_transport = "afxdp"`).
    pub afxdp: Afxdp,
    /// Lifetime of learned entries: refresh and ageing (issue 11).
    pub lifetime: Lifetime,
}

/// `[enforce]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Enforce {
    /// `xdp` or `openflow`.
    pub mode: Mode,
    /// Interface to attach XDP to (the router's inside interface).
    pub iface: Option<String>,
    /// `native`, `generic` or `auto`.
    pub xdp_mode: AttachMode,
    /// Count what would be dropped, drop nothing.
    pub count_only: bool,
    /// Pin program and maps here so enforcement survives the daemon (a
    /// crash, a restart). Unset: [`crate::xdp::default_pin_dir`].
    pub pin_dir: Option<PathBuf>,
    /// How a miss reaches userspace (XDP mode): `afxdp` holds the packet
    /// and releases it once allowed; `ringbuf` drops it and asks.
    pub miss_transport: MissTransport,
    /// Pin at all (default true). `false` is the explicit opt-out: the
    /// program then detaches when the daemon ends, also on a crash.
    pub pin: bool,
}

impl Default for Enforce {
    fn default() -> Self {
        Enforce {
            mode: Mode::Xdp,
            iface: None,
            xdp_mode: AttachMode::Auto,
            count_only: false,
            pin_dir: None,
            miss_transport: MissTransport::Afxdp,
            pin: true,
        }
    }
}

/// How a miss (a protected packet toward a destination the kernel maps do
/// not know) reaches userspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissTransport {
    /// The packet is redirected to an AF_XDP socket, held while userspace
    /// decides, then released into the forwarding path or dropped. Falls
    /// back to `ringbuf` (counted, in status) when AF_XDP is unavailable.
    #[default]
    Afxdp,
    /// A miss event on the ring buffer; the packet is dropped and a
    /// retransmission passes once the verdict is cached.
    Ringbuf,
}

impl std::str::FromStr for MissTransport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "afxdp" => Ok(MissTransport::Afxdp),
            "ringbuf" => Ok(MissTransport::Ringbuf),
            other => Err(format!("miss transport {other:?} is not one of afxdp, ringbuf")),
        }
    }
}

impl std::fmt::Display for MissTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MissTransport::Afxdp => "afxdp",
            MissTransport::Ringbuf => "ringbuf",
        })
    }
}

/// `[afxdp]`: the hold path of `miss_transport = "afxdp"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Afxdp {
    /// Packets held at once per RX queue; beyond it they are dropped and
    /// their destination asked about (the ring-buffer behaviour).
    pub hold_queue: usize,
    /// How long a held packet waits for its decision, milliseconds.
    pub hold_timeout_ms: u64,
    /// Entries of each socket's RX and fill rings (a power of two).
    pub ring_size: u32,
    /// `auto` (zero-copy when the driver can), `copy` or `zerocopy`.
    pub bind_mode: BindMode,
}

impl Default for Afxdp {
    fn default() -> Self {
        let d = crate::afxdp::HoldConfig::default();
        Afxdp {
            hold_queue: d.hold_queue,
            hold_timeout_ms: u64::try_from(d.hold_timeout.as_millis()).unwrap_or(500),
            ring_size: d.ring_size,
            bind_mode: d.bind_mode,
        }
    }
}

impl Afxdp {
    /// The hold path's configuration.
    pub fn hold(&self) -> crate::afxdp::HoldConfig {
        crate::afxdp::HoldConfig {
            hold_queue: self.hold_queue,
            hold_timeout: Duration::from_millis(self.hold_timeout_ms),
            ring_size: self.ring_size,
            bind_mode: self.bind_mode,
        }
    }
}

impl Enforce {
    /// The pin directory in force: `None` with `pin = false` (or outside XDP
    /// mode), else `pin_dir` or the default for the interface.
    pub fn effective_pin_dir(&self) -> Option<PathBuf> {
        if !self.pin || self.mode != Mode::Xdp {
            return None;
        }
        self.pin_dir.clone().or_else(|| self.iface.as_deref().map(crate::xdp::default_pin_dir))
    }

    /// True when the pin directory was chosen by the operator, not defaulted.
    pub fn pin_dir_explicit(&self) -> bool {
        self.pin && self.pin_dir.is_some()
    }
}

/// `[policy]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// TCP ports of SMTP.
    pub smtp_ports: Vec<u16>,
    /// UDP and TCP ports of DNS.
    pub dns_ports: Vec<u16>,
    /// Sources never checked: the organization's resolvers and mail relays.
    pub exempt_sources: Vec<Prefix>,
    /// Anti-spoofing (XDP mode): an exempt source is honoured only when the
    /// router's own route toward it leaves by the interface the frame came
    /// in on and its neighbour entry holds the frame's source MAC; else the
    /// packet is dropped and reported (`spoofed_exempt`). On by default on
    /// an interface that routes (IP forwarding on).
    pub exempt_route_check: bool,
    /// Anti-spoofing (both modes): when set, exempt sources are honoured only
    /// from these source MACs (the resolvers' and relays' own, or the
    /// internal router's when they sit behind one).
    pub exempt_macs: Vec<MacAddr>,
    /// Destinations never checked.
    pub internal_networks: Vec<Prefix>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            smtp_ports: vec![25, 465, 587],
            dns_ports: vec![53],
            exempt_sources: Vec::new(),
            exempt_route_check: true,
            exempt_macs: Vec::new(),
            internal_networks: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fe80::/10"]
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
        }
    }
}

impl Policy {
    /// The protected ports as the XDP program wants them.
    pub fn protected_ports(&self) -> Vec<ProtectedPort> {
        let smtp = self.smtp_ports.iter().map(|&port| ProtectedPort {
            proto: Transport::Tcp,
            port,
            service: Service::Smtp,
        });
        let dns = self.dns_ports.iter().flat_map(|&port| {
            [Transport::Udp, Transport::Tcp].map(|proto| ProtectedPort { proto, port, service: Service::Dns })
        });
        smtp.chain(dns).collect()
    }
}

/// `[rpz]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rpz {
    /// The policy zone's origin.
    pub zone: String,
    /// BIND server to transfer the zone from (`addr:port`). Unset: use `zone_file`.
    pub server: Option<SocketAddr>,
    /// TSIG key file (BIND `key` syntax) for transfers and queries.
    pub tsig_key: Option<PathBuf>,
    /// Local zone file, the source when no server is set (watched for changes).
    pub zone_file: Option<PathBuf>,
    /// Where to listen for NOTIFY from the server, UDP and TCP on the same address.
    pub notify_listen: Option<SocketAddr>,
    /// Sources allowed to send NOTIFY. Unset: only `server`'s address.
    pub notify_allow_from: Option<Vec<Prefix>>,
    /// With `tsig_key` set, refuse NOTIFYs that are not signed with it
    /// (signed ones are always verified, whatever this says).
    pub notify_require_tsig: bool,
    /// A NOTIFY TCP connection with no complete message for this long is closed.
    pub notify_tcp_idle_ms: u64,
    /// Most NOTIFY TCP connections open at once; more are closed at accept.
    pub notify_tcp_max_connections: usize,
    /// SOA poll interval (with ±20 % jitter), the safety net for a lost NOTIFY.
    pub poll_interval_secs: u64,
    /// Poll interval while polling fast: after a NOTIFY or a change (at most
    /// `poll_interval_secs`).
    pub poll_fast_interval_ms: u64,
    /// How long polling stays fast after a NOTIFY or a change.
    pub poll_fast_for_secs: u64,
    /// Longest wait between attempts while the server is down (doubling from
    /// `poll_interval_secs`; never below it).
    pub poll_max_backoff_secs: u64,
    /// Bound on one SOA query (poll, or the check before a transfer), in
    /// milliseconds: short, so a primary that accepts but does not answer
    /// (BIND still loading a big zone) is retried with backoff instead of
    /// holding the daemon for a transfer's 30 s read timeout.
    pub soa_timeout_ms: u64,
    /// How the miss path asks.
    pub miss_query: MissQuery,
    /// Recursive BIND for `miss_query = "paper"` (defaults to `server`).
    pub resolver: Option<SocketAddr>,
    /// Per-question timeout of the miss path, in milliseconds.
    pub query_timeout_ms: u64,
    // -- fail-closed start (issue 17) --
    /// Where the daemon keeps its state: the snapshot of the last zone
    /// applied (`<state_dir>/<zone>.snapshot`).
    pub state_dir: PathBuf,
    /// Keep a snapshot of the last zone applied and start from it (default
    /// true; only with `server`: a zone file is its own local copy).
    pub snapshot: bool,
    /// Most records one transfer may carry; a longer (endless or oversized)
    /// answer is refused and the set in force kept. Bounds the memory a
    /// broken primary can make the daemon use.
    pub max_transfer_records: usize,
}

impl Default for Rpz {
    fn default() -> Self {
        Rpz {
            zone: "rpz.example.com".into(),
            server: None,
            tsig_key: None,
            zone_file: None,
            notify_listen: None,
            notify_allow_from: None,
            notify_require_tsig: true,
            notify_tcp_idle_ms: 5000,
            notify_tcp_max_connections: 16,
            poll_interval_secs: 2,
            poll_fast_interval_ms: 500,
            poll_fast_for_secs: 30,
            poll_max_backoff_secs: 60,
            soa_timeout_ms: 3000,
            miss_query: MissQuery::Zone,
            resolver: None,
            query_timeout_ms: 500,
            state_dir: PathBuf::from("/var/lib/rpz-guard"),
            snapshot: true,
            max_transfer_records: crate::rpz::transfer::DEFAULT_MAX_TRANSFER_RECORDS,
        }
    }
}

/// `[cache]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// How long a registered answer is trusted, seconds.
    pub positive_ttl_secs: u64,
    /// How long a not-registered answer is trusted, seconds.
    pub negative_ttl_secs: u64,
    /// How long a pending miss holds packets before asking again, milliseconds.
    pub pending_ms: u32,
}

impl Default for Cache {
    fn default() -> Self {
        Cache { positive_ttl_secs: 60, negative_ttl_secs: 5, pending_ms: 1000 }
    }
}

impl Cache {
    /// The lifetimes as the miss resolver wants them.
    pub fn ttl(&self) -> CacheTtl {
        CacheTtl {
            positive: Duration::from_secs(self.positive_ttl_secs),
            negative: Duration::from_secs(self.negative_ttl_secs),
            error: Duration::from_secs(1),
        }
    }
}

/// `[events]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// `stdout`, `none`, or a file path (JSON lines, appended).
    pub output: String,
    /// Drop events per source host per second sent by the kernel.
    pub per_source_per_sec: u32,
    /// Miss events (RPZ questions) per source host per second, a separate budget.
    pub misses_per_source_per_sec: u32,
    /// Field layout of the lines: `native` or `ecs` (Elastic Common Schema).
    pub format: EventFormat,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            output: "stdout".into(),
            per_source_per_sec: guard_common::DEFAULT_EVENTS_PER_SOURCE,
            misses_per_source_per_sec: guard_common::DEFAULT_MISSES_PER_SOURCE,
            format: EventFormat::Native,
        }
    }
}

impl Events {
    /// The output as the event sink wants it.
    pub fn output(&self) -> EventOutput {
        match self.output.as_str() {
            "stdout" | "-" => EventOutput::Stdout,
            "none" => EventOutput::None,
            path => EventOutput::File(PathBuf::from(path)),
        }
    }
}

/// `[status]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Status {
    /// Unix socket answering `rpz-guard status`.
    pub socket: PathBuf,
    /// Prometheus text metrics at `http://<addr>/metrics` (unset: off).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for Status {
    fn default() -> Self {
        Status { socket: PathBuf::from("/run/rpz-guard/rpz-guard.sock"), metrics_listen: None }
    }
}

/// `[openflow]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Openflow {
    /// Where switches connect. Loopback by default: a controller reachable
    /// from elsewhere should use `tls`, and `allowed_*` where it can.
    pub listen: SocketAddr,
    /// Most proactive allow flows installed per switch.
    pub flow_budget: usize,
    /// Packet-ins per second allowed by the meter.
    pub packet_in_rate: u32,
    /// Idle timeout of verdict flows, seconds.
    pub idle_timeout_secs: u16,
    /// Hard timeout of verdict flows, seconds.
    pub hard_timeout_secs: u16,
    /// `[openflow.tls]`: TLS with verified switch certificates (OVS `ssl:`).
    pub tls: Option<crate::openflow::TlsConfig>,
    /// Datapath ids allowed to connect, 16 hex digits (empty: any).
    pub allowed_dpids: Vec<crate::openflow::Dpid>,
    /// Source prefixes allowed to connect (empty: any).
    pub allowed_sources: Vec<Prefix>,
    /// Most controller connections at once.
    pub max_connections: usize,
    /// Most controller connections at once from one address.
    pub max_connections_per_source: usize,
    /// Bytes queued toward one switch before the controller waits for it.
    pub send_queue_bytes: usize,
    /// A switch that does not read its queue for this long is disconnected.
    pub drain_timeout_secs: u64,
    /// Seconds a new connection has for TLS, HELLO and FEATURES.
    pub handshake_timeout_secs: u64,
    /// A refused peer is logged at most once per this many seconds.
    pub refusal_log_secs: u64,
    /// Anti-spoofing: when set, exempt sources are honoured only when they
    /// arrive on these switch ports (OpenFlow port numbers, `in_port`).
    pub exempt_in_ports: Vec<u32>,
}

impl Default for Openflow {
    fn default() -> Self {
        let c = crate::openflow::ControllerConfig::default();
        Openflow {
            listen: c.listen,
            flow_budget: 100_000,
            packet_in_rate: 2000,
            idle_timeout_secs: 60,
            hard_timeout_secs: 300,
            tls: None,
            allowed_dpids: Vec::new(),
            allowed_sources: Vec::new(),
            max_connections: c.max_connections,
            max_connections_per_source: c.max_connections_per_source,
            send_queue_bytes: c.send_queue_bytes,
            drain_timeout_secs: c.drain_timeout_secs,
            handshake_timeout_secs: c.handshake_secs,
            refusal_log_secs: c.refusal_log_secs,
            exempt_in_ports: Vec::new(),
        }
    }
}

/// `[learn]`: live learning. The resolvers' DNS traffic crossing the
/// router feeds the same learner as `rpz-guard learn`; new entries are
/// enforced at once and pushed to the RPZ primary by UPDATE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Learn {
    /// Learn live (off by default).
    pub enabled: bool,
    /// The organisation's resolvers whose traffic is learned from (empty:
    /// `policy.exempt_sources`).
    pub resolvers: Vec<Prefix>,
    /// XDP mode: the router's outside interface, where the answers to the
    /// resolvers arrive (gets a second, copy-only XDP program).
    pub outside_iface: Option<String>,
    /// Trust starts at these root hints (BIND root-hints format) instead of
    /// the built-in root servers.
    pub root_hints: Option<PathBuf>,
    /// More trusted servers (root-hints format), e.g. the upstream
    /// resolvers a forwarding resolver asks.
    pub trust_initial: Vec<PathBuf>,
    /// Also trust every name server (`DNS` entry) the zone already holds,
    /// so a restarted daemon learns from the TLD servers its resolver keeps
    /// cached.
    pub trust_zone: bool,
    /// Seconds a query waits for its response.
    pub window_secs: u64,
    /// Push new entries to `rpz.server` by TSIG UPDATE (needs `rpz.tsig_key`).
    pub push: bool,
    /// Longest wait before queued entries are pushed, milliseconds.
    pub push_interval_ms: u64,
    /// Most records per UPDATE; a full batch is pushed at once.
    pub push_batch: usize,
    /// Most live entries awaiting confirmation by the zone (further ones are
    /// counted and not learned).
    pub queue_limit: usize,
    /// Journal of the entries not yet confirmed, re-read at start so none
    /// is lost across a restart. Unset: `<rpz.state_dir>/live-learned.journal`
    /// (see [`Config::learn_journal`]); empty: no journal.
    pub journal: Option<PathBuf>,
    /// OpenFlow mode: what the switch does with an answer toward a
    /// resolver. `hold`: only the controller gets it, learns from it,
    /// installs the learned flows, then releases it (the client's first SYN
    /// finds its flow, by construction); `copy`: the answer goes on at once
    /// and the controller gets a copy (the first SYN may then take the
    /// packet-in path).
    pub openflow_answers: AnswerHandling,
    /// OpenFlow mode: packet-ins per second the learning meter lets through
    /// (held answers over it are dropped and counted; the resolver retries).
    pub openflow_packet_in_rate: u32,
}

/// `[lifetime]`: how long learned entries live (issue 11). Each entry's
/// state is a TXT beside its trigger in the RPZ (`rpz::meta`). The daemon
/// that learns refreshes `seen` when DNS confirms an entry, and removes
/// (TSIG UPDATE) learned entries not confirmed within `max_age` (never
/// before `seen` + the record TTL that taught them) unless allowed traffic
/// used them within `idle`. Manual entries age only with an expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifetime {
    /// Age entries out: `true`, `false`, or unset = in the daemon that
    /// learns and pushes (`learn.enabled`, `learn.push`, with `rpz.server`
    /// and `rpz.tsig_key`). `true` needs `rpz.server` and `rpz.tsig_key`.
    pub ageing: Option<bool>,
    /// Learned `DNS` (name server) entries not confirmed for this long go, seconds.
    pub max_age_dns_secs: u64,
    /// Learned `SMTP` (mail host) entries not confirmed for this long go, seconds.
    pub max_age_smtp_secs: u64,
    /// An entry that allowed traffic used within this long stays, seconds.
    pub idle_secs: u64,
    /// A confirmation rewrites `seen` only when it is older than this,
    /// seconds (unset: a fourteenth of the shorter max age, at most a day).
    pub refresh_secs: Option<u64>,
    /// How often the ageing pass runs, seconds.
    pub interval_secs: u64,
    /// Most entries removed per UPDATE.
    pub batch: usize,
    /// Most entries removed per second.
    pub rate: u32,
    /// List what would expire (log and status), remove nothing.
    pub dry_run: bool,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime {
            ageing: None,
            max_age_dns_secs: 14 * 86_400,
            max_age_smtp_secs: 14 * 86_400,
            idle_secs: 86_400,
            refresh_secs: None,
            interval_secs: 300,
            batch: 50,
            rate: 100,
            dry_run: false,
        }
    }
}

impl Lifetime {
    /// The refresh granularity in force, seconds.
    pub fn refresh(&self) -> u64 {
        self.refresh_secs
            .unwrap_or_else(|| (self.max_age_dns_secs.min(self.max_age_smtp_secs) / 14).clamp(1, 86_400))
    }

    /// The max age of an entry holding `classes` (the longest of its classes).
    pub fn max_age(&self, classes: crate::policy::Classes) -> u64 {
        use crate::policy::Classes;
        let dns = if classes.contains(Classes::DNS) { self.max_age_dns_secs } else { 0 };
        let smtp = if classes.contains(Classes::SMTP) { self.max_age_smtp_secs } else { 0 };
        dns.max(smtp)
    }

    /// True when this daemon ages entries out.
    pub fn ageing_on(&self, cfg: &Config) -> bool {
        let pushes =
            cfg.learn.enabled && cfg.learn.push && cfg.rpz.server.is_some() && cfg.rpz.tsig_key.is_some();
        self.ageing.unwrap_or(pushes)
    }

    fn validate(&self, cfg: &Config) -> Result<(), ConfigError> {
        for (key, v) in [
            ("lifetime.max_age_dns_secs", self.max_age_dns_secs),
            ("lifetime.max_age_smtp_secs", self.max_age_smtp_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, v, "must be at least 1 (a max age of 0 would remove every entry)"));
            }
        }
        let shorter = self.max_age_dns_secs.min(self.max_age_smtp_secs);
        if let Some(r) = self.refresh_secs
            && (r == 0 || r >= shorter)
        {
            return Err(invalid(
                "lifetime.refresh_secs",
                r,
                format!("must be 1..{shorter} (below the shorter max age)"),
            ));
        }
        if self.interval_secs == 0 || self.interval_secs > 86_400 {
            return Err(invalid("lifetime.interval_secs", self.interval_secs, "must be 1..=86400"));
        }
        if !(1..=super::learn::push::MAX_OWNERS_PER_UPDATE).contains(&self.batch) {
            return Err(invalid(
                "lifetime.batch",
                self.batch,
                format!("must be 1..={}", super::learn::push::MAX_OWNERS_PER_UPDATE),
            ));
        }
        if self.rate == 0 {
            return Err(invalid("lifetime.rate", 0, "must be at least 1 entry per second"));
        }
        if self.ageing == Some(true) && (cfg.rpz.server.is_none() || cfg.rpz.tsig_key.is_none()) {
            return Err(invalid(
                "lifetime.ageing",
                true,
                "ageing removes entries by UPDATE: it needs rpz.server and rpz.tsig_key (or set lifetime.ageing = false)",
            ));
        }
        Ok(())
    }
}

/// `learn.openflow_answers`: how OpenFlow mode handles the answers toward
/// the resolvers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerHandling {
    /// To the controller only; released after the learned flows are in.
    #[default]
    Hold,
    /// Forwarded at once (`NORMAL`) and copied to the controller.
    Copy,
}

impl std::str::FromStr for AnswerHandling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hold" => Ok(AnswerHandling::Hold),
            "copy" => Ok(AnswerHandling::Copy),
            other => Err(format!("answer handling {other:?} is not one of hold, copy")),
        }
    }
}

impl Default for Learn {
    fn default() -> Self {
        Learn {
            enabled: false,
            resolvers: Vec::new(),
            outside_iface: None,
            root_hints: None,
            trust_initial: Vec::new(),
            trust_zone: true,
            window_secs: 10,
            push: true,
            push_interval_ms: 100,
            push_batch: 500,
            queue_limit: 200_000,
            journal: None,
            openflow_answers: AnswerHandling::Hold,
            openflow_packet_in_rate: 10_000,
        }
    }
}

impl Config {
    /// The live-learning journal in force: `learn.journal`, by default in
    /// the state directory (so `--state-dir` moves it too); `None` when set
    /// empty.
    pub fn learn_journal(&self) -> Option<PathBuf> {
        match &self.learn.journal {
            None => Some(self.rpz.state_dir.join("live-learned.journal")),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
        }
    }
}

impl Learn {
    /// The resolvers in force: `resolvers`, else the exempt sources.
    pub fn resolvers_or(&self, exempt: &[Prefix]) -> Vec<Prefix> {
        if self.resolvers.is_empty() { exempt.to_vec() } else { self.resolvers.clone() }
    }

    fn validate(&self, cfg: &Config) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let resolvers = self.resolvers_or(&cfg.policy.exempt_sources);
        if resolvers.is_empty() {
            return Err(invalid(
                "learn.resolvers",
                "[]",
                "live learning needs the resolvers (learn.resolvers or policy.exempt_sources)",
            ));
        }
        if let Some(p) = resolvers.iter().find(|p| p.is_empty()) {
            return Err(invalid("learn.resolvers", p, "a zero-length prefix would learn from everyone"));
        }
        if let Some(j) = cfg.learn_journal().filter(|j| !j.is_absolute()) {
            return Err(if self.journal.is_some() {
                invalid("learn.journal", j.display(), "must be an absolute path (or \"\" for none)")
            } else {
                invalid(
                    "rpz.state_dir",
                    cfg.rpz.state_dir.display(),
                    "must be an absolute path (live learning keeps its journal there)",
                )
            });
        }
        if resolvers.len() > guard_common::MAX_LPM_SMALL as usize {
            return Err(invalid(
                "learn.resolvers",
                resolvers.len(),
                format!("at most {} prefixes", guard_common::MAX_LPM_SMALL),
            ));
        }
        if cfg.enforce.mode == Mode::Xdp {
            match self.outside_iface.as_deref() {
                None | Some("") => {
                    return Err(invalid(
                        "learn.outside_iface",
                        "(unset)",
                        "XDP mode learns the answers on the outside interface: name it (--learn-outside)",
                    ));
                }
                Some(i) if i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) => {
                    return Err(invalid(
                        "learn.outside_iface",
                        format!("{i:?}"),
                        "not a valid interface name",
                    ));
                }
                Some(i) if cfg.enforce.iface.as_deref() == Some(i) => {
                    return Err(invalid(
                        "learn.outside_iface",
                        format!("{i:?}"),
                        "must differ from enforce.iface (the inside interface)",
                    ));
                }
                Some(_) => {}
            }
        }
        if cfg.enforce.mode == Mode::Openflow {
            // The query copy refines each exempt-source flow (whatever it
            // matches): a resolver outside them has no such flow to refine.
            if let Some(p) = resolvers.iter().find(|r| {
                !cfg.policy.exempt_sources.iter().any(|e| e.len() <= r.len() && e.contains(r.addr()))
            }) {
                return Err(invalid(
                    "learn.resolvers",
                    p,
                    "in OpenFlow mode every resolver must lie inside policy.exempt_sources",
                ));
            }
            if self.openflow_packet_in_rate == 0 {
                return Err(invalid("learn.openflow_packet_in_rate", 0, "must be at least 1"));
            }
        }
        if !(1..=3600).contains(&self.window_secs) {
            return Err(invalid("learn.window_secs", self.window_secs, "must be 1..=3600"));
        }
        if !(1..=60_000).contains(&self.push_interval_ms) {
            return Err(invalid("learn.push_interval_ms", self.push_interval_ms, "must be 1..=60000"));
        }
        if !(1..=crate::rpz::update::BATCH_RECORDS).contains(&self.push_batch) {
            return Err(invalid(
                "learn.push_batch",
                self.push_batch,
                format!("must be 1..={}", crate::rpz::update::BATCH_RECORDS),
            ));
        }
        if self.queue_limit == 0 {
            return Err(invalid("learn.queue_limit", 0, "must be at least 1"));
        }
        if self.push && cfg.rpz.server.is_some() && cfg.rpz.tsig_key.is_none() {
            return Err(invalid(
                "learn.push",
                "true",
                "pushing to rpz.server needs rpz.tsig_key (or set learn.push = false)",
            ));
        }
        Ok(())
    }
}

impl Openflow {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.packet_in_rate == 0 {
            return Err(invalid("openflow.packet_in_rate", 0, "must be at least 1"));
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(invalid("openflow.max_connections", self.max_connections, "must be 1..=65536"));
        }
        if !(1..=self.max_connections).contains(&self.max_connections_per_source) {
            return Err(invalid(
                "openflow.max_connections_per_source",
                self.max_connections_per_source,
                format!("must be 1..=openflow.max_connections ({})", self.max_connections),
            ));
        }
        if !(16 * 1024..=64 * 1024 * 1024).contains(&self.send_queue_bytes) {
            return Err(invalid(
                "openflow.send_queue_bytes",
                self.send_queue_bytes,
                "must be 16384..=67108864",
            ));
        }
        for (key, v) in [
            ("openflow.drain_timeout_secs", self.drain_timeout_secs),
            ("openflow.handshake_timeout_secs", self.handshake_timeout_secs),
        ] {
            if !(1..=600).contains(&v) {
                return Err(invalid(key, v, "must be 1..=600"));
            }
        }
        if self.refusal_log_secs == 0 {
            return Err(invalid("openflow.refusal_log_secs", 0, "must be at least 1"));
        }
        if let Some(p) = self.allowed_sources.iter().find(|p| p.is_empty()) {
            return Err(invalid(
                "openflow.allowed_sources",
                p,
                "a zero-length prefix allows everyone; leave the list empty instead",
            ));
        }
        if let Some(t) = &self.tls {
            for (key, path) in [
                ("openflow.tls.cert", &t.cert),
                ("openflow.tls.key", &t.key),
                ("openflow.tls.client_ca", &t.client_ca),
            ] {
                if let Err(e) = std::fs::metadata(path) {
                    return Err(invalid(key, path.display(), format!("cannot read: {e}")));
                }
            }
        }
        Ok(())
    }
}

/// Most exempt-source flows (prefixes × MACs × ports) in OpenFlow mode.
pub const MAX_EXEMPT_FLOWS: usize = 4096;

impl Config {
    /// Checks the anti-spoofing keys of exempt sources.
    fn validate_anti_spoofing(&self) -> Result<(), ConfigError> {
        let p = &self.policy;
        if let Some(m) = p.exempt_macs.iter().find(|m| m.is_group() || m.is_zero()) {
            return Err(invalid(
                "policy.exempt_macs",
                format!("\"{m}\""),
                "a group (multicast/broadcast) or all-zero address is never a frame's source",
            ));
        }
        if p.exempt_macs.len() > guard_common::MAX_EXEMPT_MACS as usize {
            return Err(invalid(
                "policy.exempt_macs",
                p.exempt_macs.len(),
                format!("at most {} addresses", guard_common::MAX_EXEMPT_MACS),
            ));
        }
        let ports = &self.openflow.exempt_in_ports;
        if let Some(port) = ports.iter().find(|n| !(1..=crate::openflow::codec::OFPP_MAX).contains(*n)) {
            return Err(invalid(
                "openflow.exempt_in_ports",
                port,
                format!("a switch port number is 1..={}", crate::openflow::codec::OFPP_MAX),
            ));
        }
        if !ports.is_empty() && self.enforce.mode != Mode::Openflow {
            return Err(invalid(
                "openflow.exempt_in_ports",
                format!("{ports:?}"),
                "switch ports exist only with enforce.mode = \"openflow\" (XDP mode checks the route: policy.exempt_route_check)",
            ));
        }
        for (key, set) in [
            ("policy.exempt_macs", !p.exempt_macs.is_empty()),
            ("openflow.exempt_in_ports", !ports.is_empty()),
        ] {
            if set && p.exempt_sources.is_empty() {
                return Err(invalid(key, "(set)", "has no effect without policy.exempt_sources"));
            }
        }
        if self.enforce.mode == Mode::Openflow {
            let flows = p.exempt_sources.len() * p.exempt_macs.len().max(1) * ports.len().max(1);
            if flows > MAX_EXEMPT_FLOWS {
                return Err(invalid(
                    "policy.exempt_macs",
                    format!(
                        "{} MACs × {} ports × {} prefixes",
                        p.exempt_macs.len(),
                        ports.len(),
                        p.exempt_sources.len()
                    ),
                    format!("would need {flows} exempt flows; at most {MAX_EXEMPT_FLOWS}"),
                ));
            }
        }
        Ok(())
    }

    /// How the event sink writes, from `[events]` and `enforce.count_only`.
    pub fn event_settings(&self) -> EventSettings {
        EventSettings { format: self.events.format, count_only: self.enforce.count_only }
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg = Config::read_unvalidated(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and validates TOML text (`path` is only for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg = Config::load_unvalidated(text, path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text without the consistency checks, for callers that
    /// apply command-line flags first and then call [`Config::validate`].
    pub fn load_unvalidated(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// Reads a file without the consistency checks (see [`Config::load_unvalidated`]).
    pub fn read_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::load_unvalidated(&text, path)
    }

    /// Checks ranges and consistency; call again after applying flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enforce.mode == Mode::Xdp && self.enforce.iface.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("enforce.iface", "(unset)", "XDP mode needs an interface (--iface)"));
        }
        if let Some(i) = &self.enforce.iface
            && (i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace))
        {
            return Err(invalid("enforce.iface", format!("{i:?}"), "not a valid interface name"));
        }
        for (key, ports) in
            [("policy.smtp_ports", &self.policy.smtp_ports), ("policy.dns_ports", &self.policy.dns_ports)]
        {
            if let Some(p) = ports.iter().find(|p| **p == 0) {
                return Err(invalid(key, p, "port 0 cannot be protected"));
            }
        }
        if let Some(p) = self.policy.smtp_ports.iter().find(|p| self.policy.dns_ports.contains(p)) {
            return Err(invalid("policy.smtp_ports", p, "port is also in policy.dns_ports"));
        }
        if self.rpz.zone.trim_end_matches('.').is_empty()
            || self.rpz.zone.split('.').any(|l| l.len() > 63)
            || self.rpz.zone.contains(char::is_whitespace)
        {
            return Err(invalid("rpz.zone", format!("{:?}", self.rpz.zone), "not a valid zone name"));
        }
        if self.rpz.server.is_none() && self.rpz.zone_file.is_none() {
            return Err(invalid(
                "rpz.server",
                "(unset)",
                "set rpz.server (BIND to transfer the zone from) or rpz.zone_file (a local zone)",
            ));
        }
        if self.rpz.server.is_some() && self.rpz.zone_file.is_some() {
            return Err(invalid("rpz.zone_file", "(set)", "set only one of rpz.server and rpz.zone_file"));
        }
        if !(1..=86_400).contains(&self.rpz.poll_interval_secs) {
            return Err(invalid("rpz.poll_interval_secs", self.rpz.poll_interval_secs, "must be 1..=86400"));
        }
        if !(100..=3_600_000).contains(&self.rpz.poll_fast_interval_ms) {
            return Err(invalid(
                "rpz.poll_fast_interval_ms",
                self.rpz.poll_fast_interval_ms,
                "must be 100..=3600000",
            ));
        }
        if self.rpz.poll_fast_for_secs > 86_400 {
            return Err(invalid("rpz.poll_fast_for_secs", self.rpz.poll_fast_for_secs, "at most 86400"));
        }
        if !(1..=86_400).contains(&self.rpz.poll_max_backoff_secs) {
            return Err(invalid(
                "rpz.poll_max_backoff_secs",
                self.rpz.poll_max_backoff_secs,
                "must be 1..=86400",
            ));
        }
        // Above the transfer's 30 s message timeout it would no longer be
        // the short bound it exists for.
        if !(100..=30_000).contains(&self.rpz.soa_timeout_ms) {
            return Err(invalid("rpz.soa_timeout_ms", self.rpz.soa_timeout_ms, "must be 100..=30000"));
        }
        if let Some(list) = &self.rpz.notify_allow_from {
            if list.is_empty() {
                return Err(invalid(
                    "rpz.notify_allow_from",
                    "[]",
                    "would refuse every NOTIFY; leave it unset to allow only rpz.server",
                ));
            }
            if let Some(p) = list.iter().find(|p| p.is_empty()) {
                return Err(invalid("rpz.notify_allow_from", p, "a zero-length prefix allows everyone"));
            }
        }
        if !(100..=300_000).contains(&self.rpz.notify_tcp_idle_ms) {
            return Err(invalid(
                "rpz.notify_tcp_idle_ms",
                self.rpz.notify_tcp_idle_ms,
                "must be 100..=300000",
            ));
        }
        if !(1..=4096).contains(&self.rpz.notify_tcp_max_connections) {
            return Err(invalid(
                "rpz.notify_tcp_max_connections",
                self.rpz.notify_tcp_max_connections,
                "must be 1..=4096",
            ));
        }
        if self.rpz.max_transfer_records < 1000 {
            return Err(invalid(
                "rpz.max_transfer_records",
                self.rpz.max_transfer_records,
                "must be at least 1000",
            ));
        }
        if !(10..=60_000).contains(&self.rpz.query_timeout_ms) {
            return Err(invalid("rpz.query_timeout_ms", self.rpz.query_timeout_ms, "must be 10..=60000"));
        }
        if self.rpz.miss_query == MissQuery::Paper && self.rpz.resolver.or(self.rpz.server).is_none() {
            return Err(invalid("rpz.miss_query", "\"paper\"", "needs rpz.resolver or rpz.server"));
        }
        for (key, list) in [
            ("policy.exempt_sources", &self.policy.exempt_sources),
            ("policy.internal_networks", &self.policy.internal_networks),
        ] {
            if let Some(p) = list.iter().find(|p| p.is_empty()) {
                return Err(invalid(
                    key,
                    p,
                    "a zero-length prefix would switch enforcement off for everyone",
                ));
            }
            if list.len() > guard_common::MAX_LPM_SMALL as usize {
                return Err(invalid(
                    key,
                    list.len(),
                    format!("at most {} prefixes", guard_common::MAX_LPM_SMALL),
                ));
            }
        }
        self.validate_anti_spoofing()?;
        if !(1..=3600).contains(&self.cache.positive_ttl_secs) {
            return Err(invalid("cache.positive_ttl_secs", self.cache.positive_ttl_secs, "must be 1..=3600"));
        }
        if self.cache.negative_ttl_secs > 3600 {
            return Err(invalid("cache.negative_ttl_secs", self.cache.negative_ttl_secs, "at most 3600"));
        }
        if !(10..=60_000).contains(&self.cache.pending_ms) {
            return Err(invalid("cache.pending_ms", self.cache.pending_ms, "must be 10..=60000"));
        }
        if self.events.output.is_empty() {
            return Err(invalid("events.output", "\"\"", "use stdout, none or a file path"));
        }
        if !self.enforce.pin && self.enforce.pin_dir.is_some() {
            return Err(invalid(
                "enforce.pin_dir",
                self.enforce.pin_dir.as_deref().unwrap_or(Path::new("")).display(),
                "set while enforce.pin = false; drop one of them",
            ));
        }
        if let Some(d) = &self.enforce.pin_dir
            && !d.is_absolute()
        {
            return Err(invalid("enforce.pin_dir", d.display(), "must be an absolute path on a bpffs"));
        }
        if self.rpz.snapshot && !self.rpz.state_dir.is_absolute() {
            return Err(invalid("rpz.state_dir", self.rpz.state_dir.display(), "must be an absolute path"));
        }
        self.openflow.validate()?;
        self.learn.validate(self)?;
        self.lifetime.validate(self)?;
        if !(1..=65_536).contains(&self.afxdp.hold_queue) {
            return Err(invalid("afxdp.hold_queue", self.afxdp.hold_queue, "must be 1..=65536"));
        }
        if !(1..=10_000).contains(&self.afxdp.hold_timeout_ms) {
            return Err(invalid("afxdp.hold_timeout_ms", self.afxdp.hold_timeout_ms, "must be 1..=10000"));
        }
        if !self.afxdp.ring_size.is_power_of_two() || !(64..=16_384).contains(&self.afxdp.ring_size) {
            return Err(invalid(
                "afxdp.ring_size",
                self.afxdp.ring_size,
                "must be a power of two in 64..=16384",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse("[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"/tmp/z\"\n").expect("valid");
        assert_eq!(c.policy.smtp_ports, vec![25, 465, 587]);
        assert_eq!(c.enforce.xdp_mode, AttachMode::Auto);
        assert_eq!(c.rpz.zone, "rpz.example.com");
        assert_eq!(c.policy.protected_ports().len(), 5);
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
            [enforce]
            mode = "xdp"
            iface = "in0"
            xdp_mode = "native"
            pin_dir = "/sys/fs/bpf/rpz-guard"
            [policy]
            smtp_ports = [25]
            dns_ports = [53, 5353]
            exempt_sources = ["10.0.0.53", "fd00::53"]
            internal_networks = ["10.0.0.0/8"]
            [rpz]
            zone = "rpz.campus.example"
            server = "10.0.0.53:53"
            tsig_key = "/etc/rpz-guard/key"
            notify_listen = "0.0.0.0:10053"
            miss_query = "paper"
            [cache]
            negative_ttl_secs = 2
            [events]
            output = "/var/log/rpz-guard/events.jsonl"
            format = "ecs"
            [status]
            metrics_listen = "127.0.0.1:9466"
            "#,
        )
        .expect("valid");
        assert_eq!(c.enforce.xdp_mode, AttachMode::Native);
        assert_eq!(c.policy.exempt_sources.len(), 2);
        assert_eq!(c.rpz.miss_query, MissQuery::Paper);
        assert_eq!(c.events.output(), EventOutput::File("/var/log/rpz-guard/events.jsonl".into()));
        assert_eq!(c.event_settings(), EventSettings { format: EventFormat::Ecs, count_only: false });
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rpz-guard.example.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.enforce.iface.as_deref(), Some("eth1"));
        assert_eq!(c.status.metrics_listen, Some("127.0.0.1:9466".parse().expect("addr")));
    }

    #[test]
    fn lifetime_section_defaults_and_errors() {
        let base = "[enforce]\niface = \"in0\"\n[rpz]\nzone_file = \"z\"\n";
        let c = parse(base).expect("valid");
        assert_eq!(c.lifetime.max_age(crate::policy::Classes::SMTP), 14 * 86_400);
        assert_eq!(c.lifetime.refresh(), 86_400);
        assert!(!c.lifetime.ageing_on(&c), "no learning, no ageing");
        let short = parse(&format!("{base}[lifetime]\nmax_age_dns_secs = 28\nmax_age_smtp_secs = 56\n"))
            .expect("valid");
        assert_eq!(short.lifetime.refresh(), 2);
        for (extra, needle) in [
            ("[lifetime]\nmax_age_dns_secs = 0\n", "lifetime.max_age_dns_secs"),
            ("[lifetime]\nrefresh_secs = 2000000\n", "lifetime.refresh_secs"),
            ("[lifetime]\nbatch = 0\n", "lifetime.batch"),
            ("[lifetime]\nrate = 0\n", "lifetime.rate"),
            ("[lifetime]\ninterval_secs = 0\n", "lifetime.interval_secs"),
            ("[lifetime]\nageing = true\n", "lifetime.ageing"),
            ("[lifetime]\nmax_age = 5\n", "max_age"),
        ] {
            let e = parse(&format!("{base}{extra}")).expect_err(extra).to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn learn_section_defaults_and_errors() {
        let base = "[enforce]\niface = \"in0\"\n[rpz]\nzone_file = \"z\"\n[policy]\nexempt_sources = [\"10.0.0.53\"]\n";
        let c = parse(&format!("{base}[learn]\nenabled = true\noutside_iface = \"out0\"\n")).expect("valid");
        assert_eq!(c.learn.resolvers_or(&c.policy.exempt_sources), c.policy.exempt_sources);
        assert_eq!((c.learn.push_interval_ms, c.learn.push_batch), (100, 500));
        for (extra, needle) in [
            ("[learn]\nenabled = true\n", "learn.outside_iface"),
            ("[learn]\nenabled = true\noutside_iface = \"in0\"\n", "learn.outside_iface"),
            ("[learn]\nenabled = true\noutside_iface = \"out0\"\npush_batch = 0\n", "learn.push_batch"),
            (
                "[learn]\nenabled = true\noutside_iface = \"out0\"\nresolvers = [\"0.0.0.0/0\"]\n",
                "learn.resolvers",
            ),
            ("[learn]\nenabled = true\noutside_iface = \"out0\"\nwindow_secs = 0\n", "learn.window_secs"),
            ("[learn]\nenabld = true\n", "enabld"),
        ] {
            let text = format!("{base}{extra}");
            let e = parse(&text).expect_err(&text).to_string();
            assert!(e.contains(needle), "error for {text:?} should name {needle:?}: {e}");
        }
        let of = "[enforce]\nmode = \"openflow\"\n[rpz]\nzone_file = \"z\"\n[policy]\nexempt_sources = [\"10.0.0.0/24\"]\n[learn]\nenabled = true\n";
        let c = parse(of).expect("OpenFlow mode learns live (no outside interface needed)");
        assert_eq!(c.learn.openflow_answers, AnswerHandling::Hold);
        let c =
            parse(&format!("{of}openflow_answers = \"copy\"\nresolvers = [\"10.0.0.53\"]\n")).expect("copy");
        assert_eq!(c.learn.openflow_answers, AnswerHandling::Copy);
        for (extra, needle) in [
            ("resolvers = [\"10.0.1.53\"]\n", "learn.resolvers"),
            ("openflow_answers = \"drop\"\n", "openflow_answers"),
            ("openflow_packet_in_rate = 0\n", "learn.openflow_packet_in_rate"),
        ] {
            let e = parse(&format!("{of}{extra}")).expect_err(extra).to_string();
            assert!(e.contains(needle), "error for {extra:?} should name {needle:?}: {e}");
        }
        // The journal follows the state directory unless named; "" keeps none.
        let c = parse(&format!("{of}resolvers = [\"10.0.0.53\"]\n")).expect("default journal");
        assert_eq!(c.learn_journal(), Some(PathBuf::from("/var/lib/rpz-guard/live-learned.journal")));
        let moved = of.replace("[rpz]\n", "[rpz]\nstate_dir = \"/srv/rg\"\n");
        let c = parse(&moved).expect("moved state dir");
        assert_eq!(c.learn_journal(), Some(PathBuf::from("/srv/rg/live-learned.journal")));
        assert_eq!(parse(&format!("{of}journal = \"\"\n")).expect("no journal").learn_journal(), None);
        let e = parse(&format!("{of}journal = \"live.journal\"\n")).expect_err("relative").to_string();
        assert!(e.contains("learn.journal") && e.contains("live.journal"), "{e}");
        let rel = of.replace("[rpz]\n", "[rpz]\nstate_dir = \"var\"\nsnapshot = false\n");
        let e = parse(&rel).expect_err("relative state dir").to_string();
        assert!(e.contains("rpz.state_dir") && !e.contains("learn.journal"), "{e}");
        let e = parse("[enforce]\niface = \"in0\"\n[rpz]\nzone_file = \"z\"\n[learn]\nenabled = true\noutside_iface = \"out0\"\n")
            .expect_err("no resolvers")
            .to_string();
        assert!(e.contains("learn.resolvers"), "{e}");
    }

    #[test]
    fn pin_and_snapshot_are_on_by_default_with_opt_outs() {
        let c = parse("[enforce]\niface = \"eth1\"\n[rpz]\nserver = \"192.0.2.53:53\"\n").expect("valid");
        assert!(c.enforce.pin && c.rpz.snapshot);
        assert_eq!(c.rpz.state_dir, PathBuf::from("/var/lib/rpz-guard"));
        assert_eq!(c.enforce.effective_pin_dir(), Some(crate::xdp::default_pin_dir("eth1")));
        assert!(!c.enforce.pin_dir_explicit());
        let off =
            parse("[enforce]\niface = \"eth1\"\npin = false\n[rpz]\nzone_file = \"z\"\nsnapshot = false\n")
                .expect("valid");
        assert_eq!(off.enforce.effective_pin_dir(), None);
        let mine =
            parse("[enforce]\niface = \"eth1\"\npin_dir = \"/sys/fs/bpf/x\"\n[rpz]\nzone_file = \"z\"\n")
                .expect("valid");
        assert_eq!(mine.enforce.effective_pin_dir(), Some(PathBuf::from("/sys/fs/bpf/x")));
        assert!(mine.enforce.pin_dir_explicit());
    }

    #[test]
    fn errors_name_key_and_value() {
        let cases = [
            ("[enforce]\niface = \"eth1\"\nbogus = 1\n[rpz]\nzone_file = \"z\"", "bogus"),
            ("[enforce]\niface = \"eth1\"\nxdp_mode = \"turbo\"\n[rpz]\nzone_file = \"z\"", "turbo"),
            ("[rpz]\nzone_file = \"z\"", "enforce.iface"),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[policy]\nsmtp_ports = [0]",
                "policy.smtp_ports",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[policy]\nsmtp_ports = [70000]",
                "70000",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[policy]\nexempt_sources = [\"10.0.0.300\"]",
                "10.0.0.300",
            ),
            ("[enforce]\niface = \"eth1\"", "rpz.server"),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[cache]\npending_ms = 1",
                "cache.pending_ms",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nserver = \"not-an-addr\"",
                "not-an-addr",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[policy]\ninternal_networks = [\"0.0.0.0/0\"]",
                "policy.internal_networks",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[cache]\npositive_ttl_secs = 0",
                "positive_ttl_secs",
            ),
            (
                "[enforce]\niface = \"eth1\"\nmiss_transport = \"carrier-pigeon\"\n[rpz]\nzone_file = \"z\"",
                "carrier-pigeon",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[afxdp]\nring_size = 1000",
                "afxdp.ring_size",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[afxdp]\nhold_queue = 0",
                "afxdp.hold_queue",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[afxdp]\nhold_timeout_ms = 0",
                "afxdp.hold_timeout_ms",
            ),
            ("[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[afxdp]\nbind_mode = \"fast\"", "fast"),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nnotify_allow_from = []",
                "notify_allow_from",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nnotify_allow_from = [\"::/0\"]",
                "rpz.notify_allow_from",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nnotify_tcp_idle_ms = 5",
                "notify_tcp_idle_ms",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nnotify_tcp_max_connections = 0",
                "notify_tcp_max_connections",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\npoll_fast_interval_ms = 5",
                "rpz.poll_fast_interval_ms",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\npoll_max_backoff_secs = 0",
                "rpz.poll_max_backoff_secs",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nsoa_timeout_ms = 50",
                "rpz.soa_timeout_ms",
            ),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nsoa_timeout_ms = 30001",
                "rpz.soa_timeout_ms",
            ),
            (
                "[enforce]\niface = \"eth1\"\npin = false\npin_dir = \"/sys/fs/bpf/g\"\n[rpz]\nzone_file = \"z\"",
                "enforce.pin_dir",
            ),
            ("[enforce]\niface = \"eth1\"\npin_dir = \"rel/dir\"\n[rpz]\nzone_file = \"z\"", "rel/dir"),
            ("[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nstate_dir = \"var\"", "rpz.state_dir"),
            ("[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n[events]\nformat = \"cef\"", "cef"),
            (
                "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\nmax_transfer_records = 10",
                "rpz.max_transfer_records",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "error for {text:?} should name {needle:?}: {e}");
        }
    }

    #[test]
    fn anti_spoofing_keys_are_validated() {
        let xdp = "[enforce]\niface = \"eth1\"\n[rpz]\nzone_file = \"z\"\n";
        let of = "[enforce]\nmode = \"openflow\"\n[rpz]\nzone_file = \"z\"\n";
        let c = parse(xdp).expect("valid");
        assert!(c.policy.exempt_route_check, "on by default");
        assert!(c.policy.exempt_macs.is_empty() && c.openflow.exempt_in_ports.is_empty());
        let ok = parse(&format!(
            "{of}[policy]\nexempt_sources = [\"10.0.0.53\"]\nexempt_macs = [\"02:00:5e:10:00:53\"]\n\
             [openflow]\nexempt_in_ports = [3, 4]\n"
        ))
        .expect("valid");
        let oc = crate::openflow::ControllerConfig::from_config(&ok);
        assert_eq!((oc.exempt_macs.len(), oc.exempt_in_ports.clone()), (1, vec![3, 4]));
        let cases = [
            (
                format!(
                    "{xdp}[policy]\nexempt_sources = [\"10.0.0.53\"]\nexempt_macs = [\"02:00:5e:10:00\"]\n"
                ),
                "02:00:5e:10:00",
            ),
            (
                format!(
                    "{xdp}[policy]\nexempt_sources = [\"10.0.0.53\"]\nexempt_macs = [\"ff:ff:ff:ff:ff:ff\"]\n"
                ),
                "policy.exempt_macs",
            ),
            (
                format!(
                    "{xdp}[policy]\nexempt_sources = [\"10.0.0.53\"]\nexempt_macs = [\"00:00:00:00:00:00\"]\n"
                ),
                "all-zero",
            ),
            (
                format!("{xdp}[policy]\nexempt_macs = [\"02:00:5e:10:00:53\"]\n"),
                "without policy.exempt_sources",
            ),
            (format!("{xdp}[policy]\nexempt_route_check = \"yes\"\n"), "exempt_route_check"),
            (
                format!(
                    "{xdp}[policy]\nexempt_sources = [\"10.0.0.53\"]\n[openflow]\nexempt_in_ports = [3]\n"
                ),
                "openflow.exempt_in_ports",
            ),
            (
                format!(
                    "{of}[policy]\nexempt_sources = [\"10.0.0.53\"]\n[openflow]\nexempt_in_ports = [0]\n"
                ),
                "switch port number",
            ),
            (
                format!(
                    "{of}[policy]\nexempt_sources = [\"10.0.0.53\"]\n[openflow]\nexempt_in_ports = [4294967293]\n"
                ),
                "4294967293",
            ),
            (format!("{of}[openflow]\nexempt_in_ports = [3]\n"), "without policy.exempt_sources"),
        ];
        for (text, needle) in cases {
            let e = parse(&text).expect_err(&text).to_string();
            assert!(e.contains(needle), "error for {text:?} should name {needle:?}: {e}");
        }
        let many: Vec<String> = (0..=guard_common::MAX_EXEMPT_MACS)
            .map(|i| format!("\"02:00:00:00:{:02x}:{:02x}\"", i >> 8, i & 0xff))
            .collect();
        let e = parse(&format!(
            "{xdp}[policy]\nexempt_sources = [\"10.0.0.53\"]\nexempt_macs = [{}]\n",
            many.join(",")
        ))
        .expect_err("too many")
        .to_string();
        assert!(e.contains("at most 256"), "{e}");
        let prefixes: Vec<String> = (0..100).map(|i| format!("\"10.0.{i}.53\"")).collect();
        let macs: Vec<String> = (0..50).map(|i| format!("\"02:00:00:00:00:{i:02x}\"")).collect();
        let e = parse(&format!(
            "{of}[policy]\nexempt_sources = [{}]\nexempt_macs = [{}]\n",
            prefixes.join(","),
            macs.join(",")
        ))
        .expect_err("too many flows")
        .to_string();
        assert!(e.contains("exempt flows"), "{e}");
    }

    #[test]
    fn openflow_defaults_to_loopback_and_checks_its_keys() {
        let base = "[enforce]\nmode = \"openflow\"\n[rpz]\nzone_file = \"z\"\n[openflow]\n";
        let c = parse(base).expect("valid");
        assert!(c.openflow.listen.ip().is_loopback(), "safe default: {}", c.openflow.listen);
        assert!(c.openflow.tls.is_none() && c.openflow.allowed_dpids.is_empty());
        let c = parse(&format!(
            "{base}allowed_dpids = [\"0000000000abc0de\", \"00:00:00:00:00:00:00:01\"]\n\
             allowed_sources = [\"192.0.2.0/28\"]\nmax_connections_per_source = 2\n"
        ))
        .expect("valid");
        assert_eq!(c.openflow.allowed_dpids, vec![crate::openflow::Dpid(0xabc0de), crate::openflow::Dpid(1)]);
        let oc = crate::openflow::ControllerConfig::from_config(&c);
        assert_eq!((oc.max_connections_per_source, oc.allowed_sources.len()), (2, 1));
        for (extra, needle) in [
            ("allowed_dpids = [\"xyz\"]", "xyz"),
            ("allowed_dpids = [12]", "allowed_dpids"),
            ("allowed_sources = [\"0.0.0.0/0\"]", "openflow.allowed_sources"),
            ("max_connections = 0", "openflow.max_connections"),
            ("max_connections = 4\nmax_connections_per_source = 5", "openflow.max_connections_per_source"),
            ("send_queue_bytes = 100", "openflow.send_queue_bytes"),
            ("drain_timeout_secs = 0", "openflow.drain_timeout_secs"),
            ("handshake_timeout_secs = 9999", "openflow.handshake_timeout_secs"),
            (
                "[openflow.tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"k\"\nclient_ca = \"ca\"",
                "openflow.tls.cert",
            ),
            ("[openflow.tls]\ncert = \"c\"", "missing field `key`"),
        ] {
            let text = format!("{base}{extra}\n");
            let e = parse(&text).expect_err(&text).to_string();
            assert!(e.contains(needle), "error for {extra:?} should name {needle:?}: {e}");
        }
    }
}
