//! What operators read: the status report, the status socket and its
//! protocol, and the table `rpz-guard status` prints.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guard_common::{STAT_COUNT, Stat};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixListener,
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use super::{DaemonError, lock};
use crate::{
    config::{Config, Mode},
    events::{EventSink, HostStats, RecentAttempt, now_ms},
    learn::live::{LiveAllow, LiveStats},
    metrics::{Counters, StatSnapshot},
    miss::{MissResolver, MissStats},
    policy::{AllowSet, Classes, Prefix},
    rpz::meta::EntryMeta,
    sync::{SharedSyncState, SyncState},
    xdp::{Enforcer, KernelVerdict},
};

/// What `rpz-guard status` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// `xdp` or `openflow`.
    pub mode: String,
    /// Where enforcement happens (`xdp:in0 (native)`, `openflow:0.0.0.0:6653`).
    pub point: String,
    /// True when only counting.
    pub count_only: bool,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Packet counters by name, in `Stat` order.
    pub counters: Vec<(String, u64)>,
    /// Allow entries: total, DNS class, SMTP class.
    pub entries: (usize, usize, usize),
    /// Synchronisation with the source.
    pub sync: SyncState,
    /// Miss path counters.
    pub miss: MissStats,
    /// Detection events recorded.
    pub events_total: u64,
    /// Events that could not be written (or were dropped: the writer fell behind).
    #[serde(default)]
    pub events_write_errors: u64,
    /// Sources with most blocked attempts (suspected infected hosts).
    pub top_sources: Vec<(IpAddr, HostStats)>,
    /// Destinations with most blocked attempts.
    pub top_destinations: Vec<(IpAddr, HostStats)>,
    /// Mode-specific details (switches for OpenFlow).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Live learning, when on.
    #[serde(default)]
    pub live: Option<LiveStats>,
    /// How misses reach userspace (XDP mode), and the AF_XDP hold path's counters.
    #[serde(default)]
    pub miss_transport: MissTransportReport,
    /// SIGHUP reloads: counts and the last outcome.
    #[serde(default)]
    pub reloads: super::reload::ReloadStats,
    /// Anti-spoofing of exempt sources: the checks in force, or `OFF`.
    #[serde(default)]
    pub anti_spoofing: String,
    /// Ageing of learned entries (issue 11), when this daemon ages.
    #[serde(default)]
    pub ageing: Option<super::ageing::AgeingStats>,
}

/// The miss transport in force and the AF_XDP hold path's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissTransportReport {
    /// `afxdp` or `ringbuf` as configured.
    pub configured: String,
    /// The one in force (`ringbuf` after a fallback).
    pub active: String,
    /// Why AF_XDP is not in force although configured (fail closed: drop and ask).
    pub fallback_reason: Option<String>,
    /// RX queues with a socket.
    pub queues: u32,
    /// Sockets bound in zero-copy mode.
    pub zerocopy: bool,
    /// The release TAP.
    pub release_device: String,
    /// Hold path counters.
    pub hold: crate::afxdp::HoldSnapshot,
}

/// The miss transport as started (see [`MissTransportReport`]).
#[derive(Default)]
pub(super) struct MissTransportState {
    /// What the report says about it.
    pub(super) report: MissTransportReport,
    /// The AF_XDP hold path, when in force.
    pub(super) hold: Option<crate::afxdp::HoldPath>,
}

/// State shared by the daemon's tasks.
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// The allow set in force.
    pub allow: watch::Receiver<Arc<AllowSet>>,
    /// The miss path.
    pub resolver: Arc<MissResolver>,
    /// Detection events.
    pub events: Arc<EventSink>,
    /// Userspace counters (OpenFlow mode).
    pub counters: Arc<Counters>,
    /// Sync state.
    pub sync: SharedSyncState,
    started: Instant,
    enforcer: Option<Arc<Mutex<Enforcer>>>,
    /// Where enforcement happens, for the report.
    pub(super) point: Mutex<String>,
    /// Mode-specific details for the report (the OpenFlow switches).
    pub(super) extra: Mutex<Option<Box<dyn Fn() -> serde_json::Value + Send + Sync>>>,
    /// Live learning, when on: entries learned and not yet in the zone,
    /// the learner's progress (see [`LiveAllow::settled`]), counters.
    pub live: Option<Arc<LiveAllow>>,
    /// The miss transport (XDP mode).
    pub(super) transport: Mutex<MissTransportState>,
    /// The service manager's notification socket (systemd `Type=notify`).
    pub(super) notify: crate::systemd::Notifier,
    /// SIGHUP reloads.
    pub(super) reloads: Mutex<super::reload::ReloadStats>,
    /// Anti-spoofing of exempt sources, as the report says it.
    anti_spoofing: Mutex<String>,
    /// Ageing of learned entries (issue 11), when this daemon ages.
    pub ageing: super::ageing::SharedAgeing,
    /// OpenFlow mode: the last hits the switches' flow statistics show.
    pub(super) flow_hits: Mutex<Option<Arc<crate::openflow::hits::FlowHits>>>,
}

impl Shared {
    /// The shared state of a daemon starting now.
    pub(super) fn new(
        config: Config,
        allow: watch::Receiver<Arc<AllowSet>>,
        resolver: Arc<MissResolver>,
        events: Arc<EventSink>,
        counters: Arc<Counters>,
        sync: SharedSyncState,
        enforcer: Option<Arc<Mutex<Enforcer>>>,
    ) -> Self {
        Shared {
            config,
            allow,
            resolver,
            events,
            counters,
            sync,
            started: Instant::now(),
            enforcer,
            point: Mutex::new(String::new()),
            extra: Mutex::new(None),
            live: None,
            transport: Mutex::new(MissTransportState::default()),
            notify: crate::systemd::Notifier::from_env(),
            reloads: Mutex::default(),
            anti_spoofing: Mutex::default(),
            ageing: Arc::default(),
            flow_hits: Mutex::default(),
        }
    }

    /// When allowed traffic last went to each destination, seconds ago
    /// (XDP: the hit times in the host allow entries; OpenFlow: the allow flows' packet
    /// counts, [`crate::openflow::hits`]); `None` without such times.
    pub fn last_hits(&self) -> Option<Vec<(IpAddr, u64)>> {
        let Some(e) = self.enforcer.as_ref() else {
            let hits = lock(&self.flow_hits).clone()?;
            // Kept for a day at least: `explain` shows them too.
            let keep = Duration::from_secs(self.config.lifetime.idle_secs.max(86_400));
            return Some(hits.last_hits(Instant::now(), keep));
        };
        match lock(e).last_hits() {
            Ok(v) => Some(v),
            Err(err) => {
                tracing::warn!(error = %err, "reading the last-hit map failed");
                None
            }
        }
    }

    /// When allowed traffic last went to `ip` under one of its `entries`,
    /// seconds ago; `None` without such times. XDP notes hits in host
    /// entries only: one map lookup, never a walk of a large set.
    fn last_hit_of(&self, ip: IpAddr, entries: &[(Prefix, Classes)]) -> Option<Option<u64>> {
        if let Some(e) = self.enforcer.as_ref() {
            return match lock(e).last_hit(ip) {
                Ok(v) => Some(v),
                Err(err) => {
                    tracing::warn!(error = %err, %ip, "reading the entry's last hit failed");
                    None
                }
            };
        }
        let hits = self.last_hits()?;
        let covered = |h: IpAddr| entries.iter().any(|(p, _)| p.contains(h));
        Some(hits.iter().filter(|(h, _)| covered(*h)).map(|(_, ago)| *ago).min())
    }

    /// Records (and logs) the anti-spoofing checks of exempt sources that
    /// `cfg` puts in force; a loud error when some exempt source is open to
    /// spoofing.
    pub(super) fn set_anti_spoofing(&self, cfg: &Config) {
        let origin = crate::antispoof::ExemptOrigin::plan(cfg);
        let summary = origin.summary(&cfg.policy.exempt_sources);
        match origin.warning(cfg) {
            Some(w) => tracing::error!("{w}"),
            None => tracing::info!(anti_spoofing = %summary, "exempt sources"),
        }
        *lock(&self.anti_spoofing) = summary;
    }

    /// The same, with live learning's shared state.
    pub(super) fn with_live(mut self, live: Option<Arc<LiveAllow>>) -> Self {
        self.live = live;
        self
    }

    /// Current counters of whichever enforcement point runs.
    pub fn stats(&self) -> StatSnapshot {
        match &self.enforcer {
            Some(e) => lock(e).stats().unwrap_or_else(|err| {
                tracing::warn!(error = %err, "reading XDP counters failed");
                [0; STAT_COUNT as usize]
            }),
            None => self.counters.snapshot(),
        }
    }

    /// The status report.
    pub fn report(&self) -> StatusReport {
        let stats = self.stats();
        let set = self.allow.borrow().clone();
        let (dns, smtp) = set.class_counts();
        let sync = lock(&self.sync).clone();
        StatusReport {
            mode: match self.config.enforce.mode {
                Mode::Xdp => "xdp".into(),
                Mode::Openflow => "openflow".into(),
            },
            point: lock(&self.point).clone(),
            count_only: self.config.enforce.count_only,
            uptime_secs: self.started.elapsed().as_secs(),
            counters: Stat::ALL.iter().map(|s| (s.name().to_owned(), stats[*s as usize])).collect(),
            entries: (set.len(), dns, smtp),
            sync,
            miss: self.resolver.stats(),
            events_total: self.events.total(),
            events_write_errors: self.events.write_errors(),
            top_sources: self.events.top_sources(10),
            top_destinations: self.events.top_destinations(10),
            extra: lock(&self.extra).as_ref().map(|f| f()).unwrap_or_default(),
            live: self.live.as_ref().map(|l| LiveStats {
                copied: stats[Stat::DnsCopied as usize],
                copy_lost: stats[Stat::DnsCopyLost as usize],
                ..l.stats()
            }),
            miss_transport: {
                let t = lock(&self.transport);
                let mut r = t.report.clone();
                if let Some(h) = &t.hold {
                    r.hold = h.stats();
                }
                r
            },
            reloads: lock(&self.reloads).clone(),
            anti_spoofing: lock(&self.anti_spoofing).clone(),
            ageing: Some(lock(&self.ageing).clone()).filter(|a| a.enabled),
        }
    }
}

/// What one router knows about one destination: the answer to `explain
/// ADDR` on the status socket (`rpz-guard explain` shows it beside what the
/// RPZ itself holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterView {
    /// The destination.
    pub ip: IpAddr,
    /// `xdp` or `openflow`.
    pub mode: String,
    /// Where enforcement happens.
    pub point: String,
    /// The zone serial in force.
    pub serial: Option<u32>,
    /// Entries of the allow set in force that cover the destination: its
    /// host entry first, then prefixes from the longest.
    pub entries: Vec<(Prefix, Classes)>,
    /// The classes those entries give together (what a verdict uses;
    /// `none` when a deny covers the destination).
    pub classes: Classes,
    /// The most specific deny (`CNAME .`) covering the destination, in the
    /// set in force.
    #[serde(default)]
    pub denied_by: Option<Prefix>,
    /// The lifetime state the set in force holds for the covering entries
    /// (what the daemon last transferred: shown when the primary is not
    /// asked or does not answer).
    #[serde(default)]
    pub meta: Vec<(Prefix, EntryMeta)>,
    /// Classes learned live and not yet in the zone (`None`: live learning off).
    pub live: Option<Classes>,
    /// Whether allowed traffic uses the entries covering the destination
    /// (issue 11: ageing keeps those in use); `None` when none covers it or
    /// this router keeps no last-hit times.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// XDP mode: the allow maps and the verdict cache of the kernel.
    pub kernel: Option<KernelView>,
    /// XDP mode: reading the maps failed (why).
    pub kernel_error: Option<String>,
    /// OpenFlow mode: the switches and this destination's proactive flow.
    pub flows: Option<FlowView>,
    /// The miss path's userspace verdict cache.
    pub miss_cache: Option<CachedAnswer>,
    /// Blocked attempts toward the destination since the daemon started
    /// (count, last time).
    pub blocked: Option<HostStats>,
    /// The last blocked attempts toward it, newest first (bounded ring).
    pub recent: Vec<RecentAttempt>,
}

/// When allowed traffic last went to a destination's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Seconds since the last allowed packet toward the entries covering
    /// the destination (XDP: what the program noted; OpenFlow: the allow
    /// flows' packet counts); `None`: none since the daemon started.
    pub last_hit_secs: Option<u64>,
    /// `lifetime.idle_secs`: an entry hit within this long is in use.
    pub idle_secs: u64,
}

impl Usage {
    /// True when the entry counts as in use.
    pub fn in_use(&self) -> bool {
        self.last_hit_secs.is_some_and(|a| a <= self.idle_secs)
    }
}

/// The kernel's view of one destination (XDP mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelView {
    /// Classes in the host allow map.
    pub host: Classes,
    /// Classes of the longest match in the prefix allow trie.
    pub prefix: Classes,
    /// The verdict cache entry, when fresh.
    pub cache: Option<KernelVerdict>,
}

/// The OpenFlow view of one destination: flows follow the allow set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    /// Switches connected now.
    pub switches: usize,
    /// Switches with allow-set entries left out for lack of flow budget.
    pub over_budget_switches: usize,
    /// A proactive allow flow for the destination is installed on each
    /// connected switch (it is in the allow set in force, and no deny
    /// covers it).
    pub allow_flow: bool,
    /// A deny flow covering it (above every allow flow) is installed on
    /// each connected switch.
    #[serde(default)]
    pub deny_flow: bool,
}

/// A verdict the miss path cached in userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// Classes the RPZ gave (`none`: not registered, or the question failed).
    pub classes: Classes,
    /// Milliseconds until it expires.
    pub expires_in_ms: u64,
}

impl Shared {
    /// Everything this daemon knows about destination `ip` (the status
    /// socket's `explain ADDR`). Point lookups, but for the last hits,
    /// which are read whole (the XDP side offers no point lookup of them;
    /// the socket runs this on a blocking thread).
    pub fn explain(&self, ip: IpAddr) -> RouterView {
        let host = Prefix::host(ip);
        let ip = host.addr();
        let set = self.allow.borrow().clone();
        let max = if ip.is_ipv4() { 32u8 } else { 128 };
        let entries: Vec<(Prefix, Classes)> = std::iter::once(host)
            .chain((0..max).rev().filter_map(|len| Prefix::new(ip, len).ok()))
            .map(|p| (p, set.get(&p)))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        let (kernel, kernel_error) = match &self.enforcer {
            None => (None, None),
            Some(e) => {
                let e = lock(e);
                match e.allow_of(ip).and_then(|(host, prefix)| Ok((host, prefix, e.cached_verdict(ip)?))) {
                    Ok((host, prefix, cache)) => (Some(KernelView { host, prefix, cache }), None),
                    Err(err) => (None, Some(err.to_string())),
                }
            }
        };
        let denied_by = set.denied_by(ip);
        let flows = match self.config.enforce.mode {
            Mode::Xdp => None,
            Mode::Openflow => {
                let of = lock(&self.extra)
                    .as_ref()
                    .and_then(|f| serde_json::from_value::<crate::openflow::ControllerStatus>(f()).ok())
                    .unwrap_or_default();
                Some(FlowView {
                    switches: of.switches.len(),
                    over_budget_switches: of.switches.iter().filter(|s| s.over_budget_entries > 0).count(),
                    allow_flow: !entries.is_empty() && denied_by.is_none() && !of.switches.is_empty(),
                    deny_flow: denied_by.is_some() && !of.switches.is_empty(),
                })
            }
        };
        let usage = if entries.is_empty() {
            None
        } else {
            self.last_hit_of(ip, &entries)
                .map(|last_hit_secs| Usage { last_hit_secs, idle_secs: self.config.lifetime.idle_secs })
        };
        RouterView {
            ip,
            mode: match self.config.enforce.mode {
                Mode::Xdp => "xdp".into(),
                Mode::Openflow => "openflow".into(),
            },
            point: lock(&self.point).clone(),
            serial: lock(&self.sync).serial,
            classes: set.lookup(ip),
            denied_by,
            meta: entries.iter().filter_map(|(p, _)| set.meta(p).map(|m| (*p, m.clone()))).collect(),
            entries,
            live: self.live.as_ref().map(|l| l.lookup(ip)),
            usage,
            kernel,
            kernel_error,
            flows,
            miss_cache: self.resolver.cached(ip).map(|(classes, left)| CachedAnswer {
                classes,
                expires_in_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            }),
            blocked: self.events.destination(ip),
            recent: self.events.recent_toward(ip),
        }
    }
}

/// Binds the status socket, replacing a stale one left by a crash.
pub(super) fn bind_status(path: &Path) -> Result<UnixListener, DaemonError> {
    let io = |source| DaemonError::Io {
        what: "cannot open status socket",
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another rpz-guard is running with this status socket (set status.socket)",
            )));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    UnixListener::bind(path).map_err(io)
}

pub(super) async fn accept_failed(what: &'static str, e: &std::io::Error) {
    tracing::warn!(error = %e, what, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Reads a request of at most `N` bytes, waiting at most two seconds.
pub(super) async fn read_request<const N: usize>(conn: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = [0u8; N];
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Status socket protocol: the client writes one line, `status` (JSON reply),
/// `metrics` (Prometheus text) or `explain ADDR` (JSON [`RouterView`], or
/// `{"error": ...}` for a bad address), and reads to EOF.
pub(super) async fn serve_status(listener: UnixListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let mut conn = tokio::select! {
            () = cancel.cancelled() => return,
            c = listener.accept() => match c { Ok(c) => c.0, Err(e) => { accept_failed("status", &e).await; continue; } },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let request = read_request::<128>(&mut conn).await;
            let body = match request.trim() {
                "metrics" => shared.metrics(),
                r if r.starts_with("explain ") => {
                    let (sh, addr) = (shared.clone(), r["explain ".len()..].to_owned());
                    tokio::task::spawn_blocking(move || explain_reply(&sh, &addr)).await.unwrap_or_default()
                }
                _ => serde_json::to_string(&shared.report()).unwrap_or_default(),
            };
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// The reply to `explain ADDR`.
fn explain_reply(shared: &Shared, addr: &str) -> String {
    match addr.trim().parse::<IpAddr>() {
        Ok(ip) => serde_json::to_string(&shared.explain(ip)).unwrap_or_default(),
        Err(_) => serde_json::json!({ "error": format!("{addr:?} is not an IP address") }).to_string(),
    }
}

/// Asks a running daemon what it knows about `ip` (`explain` on its status socket).
pub async fn query_explain(socket: &Path, ip: IpAddr) -> Result<RouterView, std::io::Error> {
    let text = query_status(socket, &format!("explain {ip}")).await?;
    serde_json::from_str(&text).map_err(|e| {
        let why = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) if v.get("error").is_some() => format!("the daemon refused: {}", v["error"]),
            // An older daemon answers any other request with its status report.
            Ok(v) if v.get("uptime_secs").is_some() => {
                "the daemon predates `explain` (restart it with this version)".to_owned()
            }
            _ => format!("malformed explain reply: {e}"),
        };
        std::io::Error::new(std::io::ErrorKind::InvalidData, why)
    })
}

/// Asks a running daemon over its status socket (`what`: `status`, `metrics`
/// or `explain ADDR`).
pub async fn query_status(socket: &Path, what: &str) -> Result<String, std::io::Error> {
    let mut s = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot reach rpz-guard at {}: {e} (is it running?)", socket.display()),
        )
    })?;
    s.write_all(format!("{what}\n").as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "status reply timed out"))??;
    Ok(out)
}

/// Renders a report as the table `rpz-guard status` prints.
pub fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "rpz-guard  {}  {}{}  up {}s",
        r.mode,
        r.point,
        if r.count_only { "  [count-only]" } else { "" },
        r.uptime_secs
    );
    let sync = &r.sync;
    let _ = writeln!(o, "\nsource     {}", sync.source);
    let _ = writeln!(
        o,
        "serial     {}   entries {} (dns {}, smtp {})",
        sync.serial.map_or("-".into(), |s| s.to_string()),
        r.entries.0,
        r.entries.1,
        r.entries.2
    );
    let ago = |ms: Option<u64>| {
        ms.map_or("never".to_owned(), |t| format!("{}s ago", now_ms().saturating_sub(t) / 1000))
    };
    let _ = writeln!(
        o,
        "last sync  {}   full {}  incremental {}  notifies {}",
        ago(sync.last_sync_ms),
        sync.full_loads,
        sync.incremental,
        sync.notifies
    );
    match &sync.last_error {
        Some(e) => {
            let _ = writeln!(
                o,
                "SYNC ERROR {} ({}){}",
                e,
                ago(sync.last_error_ms),
                if sync.stale_start { "  [running on pinned set]" } else { "" }
            );
        }
        None => {
            let _ = writeln!(o, "sync       ok");
        }
    }
    if let Some(e) = &sync.mirror_error {
        let _ = writeln!(o, "MAP ERROR  {e} (retrying)");
    }
    o.push_str(&sync.render_learning());
    render_fail_closed(&mut o, sync);
    if let Some(a) = &r.ageing {
        render_ageing(&mut o, a);
    }
    let _ = writeln!(o, "\ncounters");
    for (name, v) in &r.counters {
        if *v != 0
            || matches!(
                name.as_str(),
                "packets" | "pass_allowed" | "drop_not_registered" | "drop_wrong_class" | "miss"
            )
        {
            let _ = writeln!(o, "  {name:<22} {v:>12}");
        }
    }
    let mean = if r.miss.finished == 0 {
        String::new()
    } else {
        format!("  mean answer {:.2} ms", r.miss.lookup_us_total as f64 / r.miss.finished as f64 / 1e3)
    };
    let _ = writeln!(
        o,
        "\nmiss path  lookups {}  coalesced {}  errors {}  cached {}{mean}",
        r.miss.lookups, r.miss.coalesced, r.miss.errors, r.miss.cached
    );
    let t = &r.miss_transport;
    if !t.active.is_empty() {
        let h = &t.hold;
        let _ = writeln!(
            o,
            "miss transport {}{}",
            t.active,
            t.fallback_reason
                .as_ref()
                .map_or(String::new(), |w| format!("  (FALLBACK from {}: {w})", t.configured))
        );
        if t.active == "afxdp" {
            let q = |p: f64| h.hold_quantile_us(p).map_or("-".to_owned(), |us| format!("<={us}us"));
            let _ = writeln!(
                o,
                "  held {}  released {} ({} from memory)  dropped after hold {}  hold timeouts {}  queue full {}  malformed {}",
                h.held,
                h.released,
                h.released_from_memory,
                h.dropped_after_hold,
                h.hold_timeouts,
                h.queue_full,
                h.malformed
            );
            let _ = writeln!(
                o,
                "  hold time p50 {} p99 {}  queues {} ({})  release via {}  kernel drops {}",
                q(0.5),
                q(0.99),
                t.queues,
                if t.zerocopy { "zero-copy" } else { "copy" },
                t.release_device,
                h.kernel.drops()
            );
        }
    }
    if !r.anti_spoofing.is_empty() {
        let _ = writeln!(o, "exempt     anti-spoofing: {}", r.anti_spoofing);
    }
    let _ = writeln!(
        o,
        "events     {}{}",
        r.events_total,
        if r.events_write_errors > 0 {
            format!("  ({} NOT WRITTEN)", r.events_write_errors)
        } else {
            String::new()
        }
    );
    if let Some(l) = &r.live {
        render_live(&mut o, l);
    }
    if !r.top_sources.is_empty() {
        let _ = writeln!(o, "\ntop offending hosts (suspected infected)");
        for (ip, h) in &r.top_sources {
            let _ = writeln!(o, "  {:<40} {:>8} blocked", ip.to_string(), h.blocked);
        }
    }
    if !r.top_destinations.is_empty() {
        let _ = writeln!(o, "\ntop blocked destinations");
        for (ip, h) in &r.top_destinations {
            let _ = writeln!(o, "  {:<40} {:>8} blocked", ip.to_string(), h.blocked);
        }
    }
    if let (Some(msg), Some(at)) = (&r.reloads.last_message, r.reloads.last_ms) {
        let _ = writeln!(
            o,
            "\nreload     {} ({}s ago)   applied {}  refused {}  failed {}",
            msg,
            now_ms().saturating_sub(at) / 1000,
            r.reloads.applied,
            r.reloads.refused,
            r.reloads.failed
        );
    }
    if let Ok(of) = serde_json::from_value::<crate::openflow::ControllerStatus>(r.extra.clone()) {
        let _ = write!(o, "\n{}", of.render());
    } else if !r.extra.is_null() {
        let _ = writeln!(o, "\n{}", serde_json::to_string_pretty(&r.extra).unwrap_or_default());
    }
    o
}

/// The live-learning block of `rpz-guard status`.
fn render_live(o: &mut String, l: &LiveStats) {
    use std::fmt::Write as _;
    let lag = |x: &Option<crate::learn::live::Lag>| {
        x.map_or("-".to_owned(), |l| {
            format!("p50 {:.0} µs  p99 {:.0} µs  ({} samples)", l.p50_us, l.p99_us, l.samples)
        })
    };
    let _ = writeln!(
        o,
        "\nlive learning  copied {}  copy-ring drops {}  responses {}  matched {}  unmatched {}  untrusted {}  malformed {}",
        l.copied, l.copy_lost, l.responses, l.matched, l.unmatched, l.untrusted, l.malformed
    );
    let _ = writeln!(
        o,
        "  learned {}  already in zone {}  unconfirmed {}  queued {}  pushed {}  push errors {}{}",
        l.learned,
        l.already_known,
        l.unconfirmed,
        l.queued,
        l.pushed,
        l.push_errors,
        l.last_push_error.as_deref().map(|e| format!("  (LAST PUSH FAILED: {e})")).unwrap_or_default()
    );
    if l.overflow > 0 || l.enforce_errors > 0 || l.raced_misses > 0 || l.learn_denied > 0 {
        let _ = writeln!(
            o,
            "  overflow {}  enforce errors {}  raced misses {}  denied (not learned) {}",
            l.overflow, l.enforce_errors, l.raced_misses, l.learn_denied
        );
    }
    let _ = writeln!(o, "  answer → enforced  {}", lag(&l.lag_enforced));
    let _ = writeln!(o, "  answer → at BIND   {}", lag(&l.lag_pushed));
    if l.lag_flows.is_some() {
        let _ = writeln!(o, "  answer → flows in  {}  (OpenFlow: switch confirmed)", lag(&l.lag_flows));
    }
}

/// The ageing lines (issue 11).
fn render_ageing(o: &mut String, a: &super::ageing::AgeingStats) {
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "ageing     {}passes {}  due {} (kept: used {}, starting {})  removed {}  stamped {}  conflicts {}  updates {} (failed {})",
        if a.dry_run { "[DRY RUN] " } else { "" },
        a.passes,
        a.due,
        a.kept_used,
        a.kept_starting,
        a.removed,
        a.stamped,
        a.conflicts,
        a.updates,
        a.update_errors
    );
    if let Some(e) = &a.last_error {
        let _ = writeln!(o, "AGEING UPDATE FAILED (nothing removed): {e}");
    }
    for w in &a.would_expire {
        let _ = writeln!(o, "  would expire {w}");
    }
}

/// The start-up and outage lines (issue 17): what was enforced at start,
/// deny-protected mode, how long the source has been failing, the snapshot.
fn render_fail_closed(o: &mut String, sync: &crate::sync::SyncState) {
    use std::fmt::Write as _;
    let at = |ms: u64| {
        let secs = now_ms().saturating_sub(ms) / 1000;
        format!("{} ({secs} s ago)", utc(ms))
    };
    if sync.deny_protected {
        let _ = writeln!(
            o,
            "DENY-PROTECTED  no allow set yet: protected traffic that is not exempt or internal is dropped (reason not_loaded)"
        );
    }
    if let (Some(at_ms), Some(expire)) = (sync.expired_since(now_ms()), sync.soa_expire_secs) {
        let _ = writeln!(
            o,
            "EXPIRED    the zone is past its SOA expire ({expire} s without the primary) since {}; \
             the last set stays in force (fail closed)",
            at(at_ms)
        );
    }
    let waiting = sync.waiting_since_ms.or(sync.failing_since_ms).filter(|_| sync.last_sync_ms.is_none());
    if let Some(since) = waiting {
        let _ = writeln!(
            o,
            "waiting for the primary since {}; {}",
            at(since),
            if sync.failing_since_ms.is_some() {
                "retrying with backoff"
            } else {
                "first transfer under way"
            }
        );
    } else if let Some(since) = sync.failing_since_ms {
        let _ = writeln!(o, "SOURCE DOWN since {}; the last set stays in force (fail closed)", at(since));
    }
    if let Some(from) = &sync.started_from {
        let _ = writeln!(o, "started    from {from}");
    }
    match (&sync.snapshot_error, sync.snapshot_serial) {
        (Some(e), _) => {
            let _ = writeln!(o, "SNAPSHOT   {e}");
        }
        (None, Some(s)) => {
            let _ = writeln!(o, "snapshot   serial {s}");
        }
        (None, None) => {}
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for ms since the Unix epoch (civil date from
/// days, proleptic Gregorian).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod fail_closed_tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_601_600_000 + 3_723_000), "2026-12-07 01:02:03 UTC");
    }
}
