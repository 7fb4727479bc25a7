//! `rpz-guard run`: wires the allow-set source, the enforcement point, the
//! miss path, detection events, the status socket and metrics together, and
//! shuts down cleanly on SIGINT/SIGTERM.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guard_common::{EVENT_DROP, EVENT_MISS, Event, STAT_COUNT, Settings, Stat};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, unix::AsyncFd},
    net::{TcpListener, UnixListener},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, MissQuery, Mode},
    events::{DetectionEvent, EventSink, HostStats, Reason, now_ms, proto_name},
    metrics::{Counters, Gauge, StatSnapshot, render_prometheus},
    miss::{BoxFuture, LookupError, MissResolver, MissStats, RpzSource, SetSource},
    policy::{AllowSet, Classes, Prefix, Service, Verdict},
    rpz::{
        lookup::{QueryStyle, RpzClient},
        tsig::TsigKey,
    },
    sync::{SharedSyncState, Source, SyncState},
    xdp::{Enforcer, ProgramConfig},
};

/// A failure that stops the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The XDP program could not be loaded, configured or attached.
    #[error(transparent)]
    Xdp(#[from] crate::xdp::XdpError),
    /// The allow set could not be loaded at start and no pinned state exists.
    #[error("cannot load the allow set from {source_desc}: {error}")]
    Source {
        /// The source, described.
        source_desc: String,
        /// What went wrong.
        error: Box<crate::sync::SourceError>,
    },
    /// The TSIG key file is unusable.
    #[error(transparent)]
    Key(#[from] crate::rpz::tsig::TsigKeyError),
    /// A local socket could not be opened.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the socket or file is for.
        what: &'static str,
        /// Path or address.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The OpenFlow controller failed.
    #[error("OpenFlow controller: {0}")]
    Openflow(String),
}

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
}

/// Adapter: the RPZ client as a miss-path source.
struct ClientSource(RpzClient);

impl RpzSource for ClientSource {
    fn classes(&self, ip: IpAddr) -> BoxFuture<'_, Result<Classes, LookupError>> {
        Box::pin(async move { self.0.classes(ip).await.map_err(|e| LookupError { ip, why: e.to_string() }) })
    }
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
    point: Mutex<String>,
    extra: Mutex<Option<Box<dyn Fn() -> serde_json::Value + Send + Sync>>>,
}

impl Shared {
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
        }
    }

    /// Prometheus text.
    pub fn metrics(&self) -> String {
        let r = self.report();
        let sync = &r.sync;
        let stats = self.stats();
        let mut g = vec![
            gauge("entries", "Allow entries by class.", Some(("class", "any")), r.entries.0 as f64),
            gauge("entries", "Allow entries by class.", Some(("class", "dns")), r.entries.1 as f64),
            gauge("entries", "Allow entries by class.", Some(("class", "smtp")), r.entries.2 as f64),
            gauge(
                "zone_serial",
                "Serial of the policy zone in force.",
                None,
                f64::from(sync.serial.unwrap_or(0)),
            ),
            gauge(
                "sync_healthy",
                "1 when the last sync succeeded.",
                None,
                f64::from(u8::from(sync.last_error.is_none() && sync.mirror_error.is_none())),
            ),
            gauge("sync_full_loads", "Full transfers or file reads.", None, sync.full_loads as f64),
            gauge(
                "sync_incremental",
                "Incremental transfers that changed the set.",
                None,
                sync.incremental as f64,
            ),
            gauge("sync_notifies", "NOTIFY messages received.", None, sync.notifies as f64),
            gauge("miss_lookups", "RPZ questions asked by the miss path.", None, r.miss.lookups as f64),
            gauge("miss_coalesced", "Misses that waited on another question.", None, r.miss.coalesced as f64),
            gauge("miss_errors", "Failed RPZ questions (denied).", None, r.miss.errors as f64),
            gauge("events", "Detection events recorded.", None, r.events_total as f64),
            gauge("events_write_errors", "Detection events not written.", None, r.events_write_errors as f64),
            gauge("uptime_seconds", "Seconds since start.", None, r.uptime_secs as f64),
        ];
        for (ip, h) in r.top_sources.iter().take(10) {
            g.push(Gauge {
                name: "top_source_blocked",
                help: "Blocked attempts of the most active sources.",
                label: Some(("source", ip.to_string())),
                value: h.blocked as f64,
            });
        }
        render_prometheus(&stats, &g)
    }
}

fn gauge(name: &'static str, help: &'static str, label: Option<(&'static str, &str)>, value: f64) -> Gauge {
    Gauge { name, help, label: label.map(|(k, v)| (k, v.to_owned())), value }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The allow-set source the configuration names.
pub fn source_from(cfg: &Config) -> Result<Source, DaemonError> {
    let zone = cfg.rpz.zone.clone();
    if let Some(addr) = cfg.rpz.server {
        let key = cfg.rpz.tsig_key.as_deref().map(TsigKey::from_file).transpose()?;
        Ok(Source::Server {
            addr,
            zone,
            key,
            notify: cfg.rpz.notify_listen,
            poll: Duration::from_secs(cfg.rpz.poll_interval_secs),
        })
    } else {
        let path = cfg.rpz.zone_file.clone().unwrap_or_default();
        Ok(Source::File { path, zone })
    }
}

/// Runs the daemon until `cancel` fires.
pub async fn run(cfg: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    cfg.validate()?;
    // Claim the status socket (and the pin directory) before touching any
    // map: a second instance must not rewrite a running one's maps.
    let status_path = cfg.status.socket.clone();
    let status = bind_status(&status_path)?;
    let _pin_lock = match &cfg.enforce.pin_dir {
        Some(dir) => Some(lock_pin_dir(dir, &status_path)?),
        None => None,
    };
    let result = run_bound(cfg, status, cancel).await;
    let _ = std::fs::remove_file(&status_path);
    result
}

async fn run_bound(cfg: Config, status: UnixListener, cancel: CancellationToken) -> Result<(), DaemonError> {
    let events = Arc::new(EventSink::open(&cfg.events.output()).map_err(|source| DaemonError::Io {
        what: "cannot open event output",
        path: cfg.events.output.clone(),
        source,
    })?);
    let source = source_from(&cfg)?;
    let sync_state: SharedSyncState =
        Arc::new(Mutex::new(SyncState { source: source.describe(), ..SyncState::default() }));

    // XDP: load and configure first, so pinned maps can stand in for a
    // source that is down at start.
    let mut enforcer = match cfg.enforce.mode {
        Mode::Xdp => {
            let mut e = Enforcer::load(cfg.enforce.pin_dir.as_deref())?;
            e.check_pinned_link(cfg.enforce.iface.as_deref().unwrap_or_default())?;
            e.configure(&ProgramConfig {
                ports: cfg.policy.protected_ports(),
                exempt_sources: cfg.policy.exempt_sources.clone(),
                internal_networks: cfg.policy.internal_networks.clone(),
                settings: Settings {
                    mode: if cfg.enforce.count_only {
                        guard_common::MODE_COUNT
                    } else {
                        guard_common::MODE_ENFORCE
                    },
                    events_per_source_per_sec: cfg.events.per_source_per_sec,
                    pending_ms: cfg.cache.pending_ms,
                    misses_per_source_per_sec: cfg.events.misses_per_source_per_sec,
                },
            })?;
            Some(e)
        }
        Mode::Openflow => None,
    };
    let adopted = match &enforcer {
        Some(e) if e.adopted_maps() => Some(e.read_allow()?),
        _ => None,
    };

    tracing::info!(source = %source.describe(), "loading the allow set");
    let (serial, initial) = match crate::sync::load(&source).await {
        Ok(v) => (Some(v.0), v.1),
        Err(error) => match &adopted {
            Some(set) => {
                tracing::warn!(error = %error, entries = set.len(), "source unavailable at start; enforcing the last known set from the pinned maps");
                let mut st = lock(&sync_state);
                st.stale_start = true;
                st.last_error = Some(error.to_string());
                st.last_error_ms = Some(now_ms());
                (None, set.clone())
            }
            None => {
                return Err(DaemonError::Source { source_desc: source.describe(), error: Box::new(error) });
            }
        },
    };
    {
        let mut st = lock(&sync_state);
        st.serial = serial;
        st.entries = initial.len();
        if serial.is_some() {
            st.last_sync_ms = Some(now_ms());
            st.last_change_ms = Some(now_ms());
            st.full_loads = 1;
        }
    }
    let (dns, smtp) = initial.class_counts();
    tracing::info!(entries = initial.len(), dns, smtp, serial, "allow set loaded");
    let (allow_tx, allow_rx) = watch::channel(Arc::new(initial.clone()));

    let rpz_source: Arc<dyn RpzSource> = match (&source, cfg.rpz.miss_query) {
        (Source::Server { addr, zone, .. }, style) => {
            let (server, style) = match style {
                MissQuery::Zone => (*addr, QueryStyle::Zone),
                MissQuery::Paper => (cfg.rpz.resolver.unwrap_or(*addr), QueryStyle::Paper),
            };
            let timeout = Duration::from_millis(cfg.rpz.query_timeout_ms);
            let client =
                RpzClient::new(server, zone, style, timeout).await.map_err(|source| DaemonError::Io {
                    what: "cannot open the RPZ query socket toward",
                    path: server.to_string(),
                    source,
                })?;
            Arc::new(ClientSource(client))
        }
        (Source::File { .. }, _) => Arc::new(SetSource(allow_rx.clone())),
    };
    let resolver = Arc::new(MissResolver::new(rpz_source, cfg.cache.ttl()));

    // Mirror the set into the maps before attaching: no window where the
    // program runs on empty maps and denies legitimate traffic.
    let mut applied = Arc::new(adopted.unwrap_or_default());
    if let Some(e) = enforcer.as_mut() {
        let started = Instant::now();
        let diff = applied.diff(&initial);
        e.apply_diff(&diff)?;
        tracing::info!(
            upserts = diff.upsert.len(),
            removals = diff.remove.len(),
            ms = started.elapsed().as_millis() as u64,
            "allow maps mirrored"
        );
        applied = Arc::new(initial);
    }

    let enforcer = enforcer.map(|e| Arc::new(Mutex::new(e)));
    let shared = Arc::new(Shared {
        config: cfg.clone(),
        allow: allow_rx.clone(),
        resolver: resolver.clone(),
        events: events.clone(),
        counters: Arc::new(Counters::default()),
        sync: sync_state.clone(),
        started: Instant::now(),
        enforcer: enforcer.clone(),
        point: Mutex::new(String::new()),
        extra: Mutex::new(None),
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::sync::follow(source, serial, allow_tx, sync_state, cancel.clone()));
    tasks.spawn(serve_status(status, shared.clone(), cancel.clone()));
    if let Some(addr) = cfg.status.metrics_listen {
        let l = TcpListener::bind(addr).await.map_err(|source| DaemonError::Io {
            what: "cannot listen for metrics on",
            path: addr.to_string(),
            source,
        })?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        tasks.spawn(serve_metrics(l, shared.clone(), cancel.clone()));
    }

    let result = match (cfg.enforce.mode, enforcer) {
        (Mode::Xdp, Some(e)) => run_xdp(&cfg, e, applied, shared.clone(), &mut tasks, cancel.clone()).await,
        _ => run_openflow(&cfg, shared.clone(), cancel.clone()).await,
    };
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    result
}

async fn run_xdp(
    cfg: &Config,
    enforcer: Arc<Mutex<Enforcer>>,
    applied: Arc<AllowSet>,
    shared: Arc<Shared>,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let iface = cfg.enforce.iface.clone().unwrap_or_default();
    let ring = {
        let mut e = lock(&enforcer);
        let used = e.attach(&iface, cfg.enforce.xdp_mode)?;
        *lock(&shared.point) = format!("xdp:{iface} ({used})");
        tracing::info!(iface, mode = %used, count_only = cfg.enforce.count_only, "XDP program attached; enforcing");
        e.take_events()?
    };
    tasks.spawn(mirror(enforcer.clone(), applied, shared.clone(), cancel.clone()));
    let reader = read_events(ring, enforcer.clone(), shared.clone(), iface.clone(), cancel.clone());
    let read = reader.await;
    let mut e = lock(&enforcer);
    if cfg.enforce.pin_dir.is_some() {
        tracing::info!(iface, "stopping; the pinned program stays attached and enforcing the last set");
    } else {
        e.unpin()?;
        tracing::info!(iface, "stopping; XDP program detached");
    }
    read
}

/// Applies each new allow set to the maps as a diff; a failed update is
/// retried every few seconds until it lands (the error is in status).
async fn mirror(
    enforcer: Arc<Mutex<Enforcer>>,
    mut applied: Arc<AllowSet>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut rx = shared.allow.clone();
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
            () = async { match retry { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
        let target = rx.borrow_and_update().clone();
        let diff = applied.diff(&target);
        if diff.is_empty() {
            retry = None;
            continue;
        }
        let started = Instant::now();
        // Seconds for a large diff: let the runtime move other tasks away.
        let res = tokio::task::block_in_place(|| {
            let mut e = lock(&enforcer);
            // Userspace first, under the enforcer lock: a miss answer racing
            // with this change sees a new generation and is not cached.
            let mut changed = diff.upsert.iter().map(|(p, _)| p).chain(diff.remove.iter());
            if changed.clone().any(|p| !p.is_host()) {
                shared.resolver.clear();
            } else {
                shared.resolver.invalidate(changed.by_ref().map(Prefix::addr));
            }
            e.apply_diff(&diff)
        });
        let mut st = lock(&shared.sync);
        match res {
            Ok(()) => {
                tracing::info!(
                    upserts = diff.upsert.len(),
                    removals = diff.remove.len(),
                    us = started.elapsed().as_micros() as u64,
                    "allow maps updated"
                );
                applied = target;
                st.mirror_error = None;
                retry = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "updating the allow maps failed; retrying in 5 s");
                st.mirror_error = Some(e.to_string());
                retry = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
        }
    }
}

fn event_ip(a: [u8; 16]) -> IpAddr {
    Prefix::host(IpAddr::from(a)).addr()
}

/// Reads the kernel's ring buffer: drop events become detection events,
/// miss events go to the miss path.
async fn read_events(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    enforcer: Arc<Mutex<Enforcer>>,
    shared: Arc<Shared>,
    iface: String,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let io = |source| DaemonError::Io { what: "event ring buffer of", path: iface.clone(), source };
    // SAFETY: the ring buffer owns its map fd for its whole life, and the
    // AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| io(e.into()))?;
    let point = format!("xdp:{iface}");
    loop {
        // Without events the miss path is blind: a failure here stops the daemon.
        let mut guard = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            g = fd.readable_mut() => g.map_err(io)?,
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `Event` (size checked above); read unaligned.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            handle_event(ev, &enforcer, &shared, &point);
        }
        guard.clear_ready();
    }
}

fn handle_event(ev: Event, enforcer: &Arc<Mutex<Enforcer>>, shared: &Arc<Shared>, point: &str) {
    let Some(service) = Service::from_number(ev.service) else { return };
    let src = event_ip(ev.src);
    let dst = event_ip(ev.dst);
    // When the kernel saw the packet, not when the event was read.
    let age_ms = crate::xdp::monotonic_ns().saturating_sub(ev.ts_ns) / 1_000_000;
    let time_ms = now_ms().saturating_sub(age_ms);
    let detection = |reason: Reason, suppressed: u32| DetectionEvent {
        time_ms,
        src,
        dst,
        proto: proto_name(ev.proto),
        dport: ev.dport,
        service,
        reason,
        vlan: u16::try_from(ev.vlan).ok().filter(|v| *v != 0),
        point: point.to_owned(),
        suppressed,
    };
    match ev.kind {
        EVENT_DROP => {
            if let Some(reason) = Reason::from_code(ev.reason) {
                shared.events.record(&detection(reason, ev.suppressed));
            }
        }
        EVENT_MISS => {
            let enforcer = enforcer.clone();
            let shared = shared.clone();
            let ev_suppressed = ev.suppressed;
            let ev_detect = detection(Reason::Pending, ev_suppressed);
            tokio::spawn(async move {
                let generation = shared.resolver.generation();
                let (classes, ttl) = shared.resolver.classes(dst).await;
                {
                    let mut e = lock(&enforcer);
                    // An allow-set change while asking may have revoked this
                    // destination: then the pending entry expires and the next
                    // packet asks again.
                    if shared.resolver.generation() == generation
                        && let Err(err) = e.cache_verdict(dst, classes, ttl)
                    {
                        tracing::warn!(%dst, error = %err, "caching a miss verdict failed");
                    }
                }
                let verdict = Verdict::decide(service, classes);
                tracing::debug!(%src, %dst, %service, %classes, ?verdict, "miss decided");
                if let Some(reason) = Reason::from_verdict(verdict) {
                    shared.events.record(&DetectionEvent { reason, ..ev_detect });
                }
            });
        }
        _ => {}
    }
}

async fn run_openflow(
    cfg: &Config,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    use crate::openflow::{ControllerConfig, ControllerShared};
    let of = &cfg.openflow;
    let ccfg = ControllerConfig {
        listen: of.listen,
        protected: cfg.policy.protected_ports(),
        exempt_sources: cfg.policy.exempt_sources.clone(),
        internal_networks: cfg.policy.internal_networks.clone(),
        flow_budget: of.flow_budget,
        packet_in_rate: of.packet_in_rate,
        verdict_idle_secs: of.idle_timeout_secs,
        verdict_hard_secs: of.hard_timeout_secs,
        ..ControllerConfig::default()
    };
    let cshared = ControllerShared::new(
        shared.allow.clone(),
        shared.resolver.clone(),
        shared.events.clone(),
        shared.counters.clone(),
    );
    let view = cshared.clone();
    *lock(&shared.extra) = Some(Box::new(move || serde_json::to_value(view.status()).unwrap_or_default()));
    *lock(&shared.point) = format!("openflow:{}", of.listen);
    tracing::info!(listen = %of.listen, "OpenFlow controller mode");
    crate::openflow::serve(ccfg, cshared, cancel).await.map_err(|e| DaemonError::Openflow(e.to_string()))
}

/// An exclusive lock on `pin_dir` for this process's life (a lock file next
/// to the status socket: bpffs holds no regular files).
fn lock_pin_dir(pin_dir: &Path, status: &Path) -> Result<std::fs::File, DaemonError> {
    let name: String =
        pin_dir.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let path = status.parent().unwrap_or(Path::new("/run")).join(format!("pin{name}.lock"));
    let io = |source| DaemonError::Io {
        what: "cannot lock pin directory via",
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!("another rpz-guard is using pin directory {}", pin_dir.display()),
        )));
    }
    Ok(f)
}

fn bind_status(path: &Path) -> Result<UnixListener, DaemonError> {
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

/// Logs a failed accept and pauses briefly (e.g. out of file descriptors).
async fn accept_failed(what: &'static str, e: &std::io::Error) {
    tracing::warn!(error = %e, what, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Reads a request of at most `N` bytes, waiting at most two seconds.
async fn read_request<const N: usize>(conn: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = [0u8; N];
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Status socket protocol: the client writes one line, `status` (JSON reply)
/// or `metrics` (Prometheus text), and reads to EOF.
async fn serve_status(listener: UnixListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let mut conn = tokio::select! {
            () = cancel.cancelled() => return,
            c = listener.accept() => match c { Ok(c) => c.0, Err(e) => { accept_failed("status", &e).await; continue; } },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let body = match read_request::<64>(&mut conn).await.trim() {
                "metrics" => shared.metrics(),
                _ => serde_json::to_string(&shared.report()).unwrap_or_default(),
            };
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// A minimal HTTP/1.0 responder for `GET /metrics` (and `/status`).
async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let mut conn = tokio::select! {
            () = cancel.cancelled() => return,
            c = listener.accept() => match c { Ok(c) => c.0, Err(e) => { accept_failed("metrics", &e).await; continue; } },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let req = read_request::<1024>(&mut conn).await;
            let (code, body) = match req.split_whitespace().nth(1).unwrap_or("") {
                "/metrics" => ("200 OK", shared.metrics()),
                "/status" => ("200 OK", serde_json::to_string(&shared.report()).unwrap_or_default()),
                _ => ("404 Not Found", "try /metrics or /status\n".to_owned()),
            };
            let head = format!(
                "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Asks a running daemon over its status socket (`what`: `status` or `metrics`).
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
    let _ = writeln!(
        o,
        "\nmiss path  lookups {}  coalesced {}  errors {}  cached {}",
        r.miss.lookups, r.miss.coalesced, r.miss.errors, r.miss.cached
    );
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
    if !r.extra.is_null() {
        let _ = writeln!(o, "\n{}", serde_json::to_string_pretty(&r.extra).unwrap_or_default());
    }
    o
}
