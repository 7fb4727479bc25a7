//! `rpz-guard run`: wires the allow-set source, the enforcement point, the
//! miss path, detection events, the status socket and metrics together, and
//! shuts down cleanly on SIGINT/SIGTERM.
//!
//! One file per seam: [`source`] (which RPZ source, the miss-path question),
//! [`xdp`] (the XDP enforcement point: attach, map mirror, kernel events),
//! [`miss`] (deciding a miss the kernel handed up), [`learn`] (live
//! learning from the resolvers' DNS), [`openflow`] (the
//! controller enforcement point), [`status`] and [`metrics`] (what operators
//! read), [`pin`] (the pinned-state lock), [`reload`] (SIGHUP). This file is
//! the start sequence, with the service manager's readiness and watchdog.

pub mod ageing;
mod learn;
mod metrics;
mod miss;
mod openflow;
mod pin;
mod reload;
mod snapshot;
mod source;
mod status;
mod xdp;

use std::sync::{Arc, Mutex};

use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;

pub use self::{
    reload::{ReloadRequest, ReloadStats, changed_keys, fixed_changes},
    source::source_from,
    status::{
        CachedAnswer, FlowView, KernelView, MissTransportReport, RouterView, Shared, StatusReport, Usage,
        query_explain, query_status, render_status, utc,
    },
};
use guard_common::STATE_LOADED;

use crate::{
    config::{Config, Mode},
    events::{EventSink, now_ms},
    metrics::Counters,
    policy::AllowSet,
    rpz::tsig::TsigKey,
    sync::{SharedSyncState, Source, SyncState},
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
    /// The allow set could not be loaded (kept for callers matching on it;
    /// the daemon itself no longer stops when the source is down at start).
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
    /// Live learning could not start (e.g. an unreadable hints file).
    #[error("live learning: {0}")]
    Learn(String),
    /// An enforcement task ended abnormally (a panic).
    #[error("enforcement task failed: {0}")]
    Task(String),
}

/// Locks a mutex, ignoring poisoning (a panicked task leaves plain data).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the daemon until `cancel` fires.
pub async fn run(cfg: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    run_reloadable(cfg, cancel, mpsc::unbounded_channel().1).await
}

/// Runs the daemon until `cancel` fires, applying each configuration that
/// arrives on `reloads` (`SIGHUP`, see [`reload`]).
pub async fn run_reloadable(
    cfg: Config,
    cancel: CancellationToken,
    reloads: mpsc::UnboundedReceiver<ReloadRequest>,
) -> Result<(), DaemonError> {
    cfg.validate()?;
    // Decide where to pin (on by default) before anything is loaded.
    let cfg = pin::prepare(cfg)?;
    // Claim the status socket (and the pin directory) before touching any
    // map: a second instance must not rewrite a running one's maps.
    let status_path = cfg.status.socket.clone();
    let status = status::bind_status(&status_path)?;
    let _pin_lock = match cfg.enforce.effective_pin_dir() {
        Some(dir) => Some(pin::lock_pin_dir(&dir, &status_path)?),
        None => None,
    };
    let result = run_bound(cfg, status, reloads, cancel).await;
    let _ = std::fs::remove_file(&status_path);
    result
}

/// The start sequence, failing closed from the first second:
///
/// 1. the enforcement point goes in first: the XDP program is attached (or
///    swapped into the pinned link) in deny-protected mode unless the
///    pinned maps already hold a set in force;
/// 2. the last set known is enforced at once: the zone snapshot, else the
///    pinned maps, else nothing (deny-protected: protected traffic that is
///    not exempt or internal is dropped and reported);
/// 3. status and metrics are served, then the enforcement tasks start
///    (kernel events, map mirror, or the OpenFlow controller with its base
///    flows), all before any transfer;
/// 4. the first sync with the source (IXFR from the snapshot's serial, or
///    AXFR); if the primary is down the daemon stays up, status says since
///    when, and [`crate::sync::follow`] retries with backoff.
async fn run_bound(
    cfg: Config,
    status: tokio::net::UnixListener,
    reloads: mpsc::UnboundedReceiver<ReloadRequest>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let events = Arc::new(EventSink::open(&cfg.events.output()).map_err(|source| DaemonError::Io {
        what: "cannot open event output",
        path: cfg.events.output.clone(),
        source,
    })?);
    events.configure(cfg.event_settings());
    let source = source_from(&cfg)?;
    crate::rpz::transfer::set_max_transfer_records(cfg.rpz.max_transfer_records);
    let sync_state: SharedSyncState = Arc::new(Mutex::new(SyncState {
        source: source.describe(),
        waiting_since_ms: matches!(source, Source::Server { .. }).then(now_ms),
        ..SyncState::default()
    }));

    // 1. Enforcement point first.
    let mut point = format!("openflow:{}", cfg.openflow.listen);
    let mut enforcer = match cfg.enforce.mode {
        Mode::Xdp => Some(xdp::load(&cfg)?),
        Mode::Openflow => None,
    };
    // What pinned maps hold (also a half-done first load, to diff against)
    // and whether it is a set in force.
    let (adopted, adopted_in_force) = match &enforcer {
        Some(e) if e.adopted_maps() => (Some(e.read_allow()?), e.state()? == STATE_LOADED),
        _ => (None, false),
    };
    if let Some(e) = enforcer.as_mut() {
        point = xdp::attach(&cfg, e)?;
    }

    // 2. The last set known, enforced at once.
    let snapshot_path = snapshot::path(&cfg, &source);
    let snap = snapshot_path.as_deref().and_then(|p| snapshot::read(p, &cfg.rpz.zone, &sync_state));
    let (serial, start) = match (snap, adopted.as_ref().filter(|_| adopted_in_force)) {
        (Some(s), _) => {
            let from = format!(
                "snapshot serial {} ({} entries, written {})",
                s.serial,
                s.set.len(),
                ago(s.written_ms)
            );
            {
                // The SOA expire counts from the snapshot's write (the last
                // change the primary confirmed that we know of).
                let mut st = lock(&sync_state);
                st.snapshot_serial = Some(s.serial);
                st.soa_expire_secs = s.expire;
                st.confirmed_ms = Some(s.written_ms);
            }
            (Some(s.serial), Some((from, s.set)))
        }
        (None, Some(set)) => {
            (None, Some((format!("pinned maps ({} entries)", set.len()), set.clone().from_enforced())))
        }
        (None, None) => (None, None),
    };
    let in_force = start.is_some();
    let (started_from, initial) = match start {
        Some((from, set)) => (from, set),
        None => ("nothing: deny-protected until the first transfer".to_owned(), AllowSet::new()),
    };
    tracing::info!(started_from, "enforcing at start");
    {
        let mut st = lock(&sync_state);
        st.serial = serial;
        st.entries = initial.len();
        st.started_from = Some(started_from.clone());
        st.deny_protected = !in_force;
        st.stale_start = in_force;
    }
    let (allow_tx, allow_rx) = watch::channel(Arc::new(initial.clone()));
    let resolver = source::miss_resolver(&cfg, &source, &allow_rx).await?;
    let applied = match enforcer.as_mut() {
        Some(e) => xdp::mirror_initial(e, adopted.unwrap_or_default(), initial, in_force)?,
        None => Arc::default(),
    };

    let mut tasks = tokio::task::JoinSet::new();
    // Live learning: after the initial mirror (its diff would take back
    // journalled entries), before the enforcer is shared.
    let (live, learning) = match (cfg.learn.enabled, enforcer.as_mut()) {
        (true, Some(e)) => {
            (Some(learn::start_xdp(&cfg, e, &events, allow_rx.clone(), &mut tasks, &cancel)?), None)
        }
        (true, None) => {
            let l = learn::start_openflow(&cfg, &events, allow_rx.clone(), &mut tasks, &cancel)?;
            (Some(l.live().clone()), Some(l))
        }
        _ => (None, None),
    };

    let enforcer = enforcer.map(|e| Arc::new(Mutex::new(e)));
    let reload_enforcer = enforcer.clone();
    let shared = Arc::new(
        Shared::new(
            cfg.clone(),
            allow_rx.clone(),
            resolver,
            events,
            Arc::new(Counters::default()),
            sync_state.clone(),
            enforcer.clone(),
        )
        .with_live(live),
    );
    *lock(&shared.point) = point;
    shared.set_anti_spoofing(&cfg);
    // Status and metrics from the first second, before any transfer (which
    // can take long: a primary still loading a big zone, a 1M-entry AXFR):
    // waiting for the primary, the snapshot in force, or deny-protected.
    tasks.spawn(status::serve_status(status, shared.clone(), cancel.clone()));
    if let Some(addr) = cfg.status.metrics_listen {
        let l = TcpListener::bind(addr).await.map_err(|source| DaemonError::Io {
            what: "cannot listen for metrics on",
            path: addr.to_string(),
            source,
        })?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        tasks.spawn(metrics::serve_metrics(l, shared.clone(), cancel.clone()));
    }

    // 3. Enforcement tasks before any transfer.
    let mut enforcing = match (cfg.enforce.mode, enforcer) {
        (Mode::Xdp, Some(e)) => {
            tokio::spawn(xdp::run(cfg.clone(), e, applied, shared.clone(), cancel.clone()))
        }
        _ => {
            let c = cfg.clone();
            let (sh, cn) = (shared.clone(), cancel.clone());
            let (loaded_tx, loaded_rx) = watch::channel(in_force);
            tasks.spawn(openflow_loaded(allow_rx.clone(), sync_state.clone(), loaded_tx, cancel.clone()));
            tokio::spawn(async move { openflow::run(&c, sh, learning, loaded_rx, cn).await })
        }
    };

    // 4. The first sync with a server (a zone file is read by the follower
    //    at once); a primary that is down does not stop the daemon.
    let first = match &source {
        Source::Server { addr, zone, key, poll, .. } => {
            tracing::info!(source = %source.describe(), from_serial = serial, "synchronising with the source");
            tokio::select! {
                () = cancel.cancelled() => None,
                r = &mut enforcing => return finish(r, cancel, tasks).await,
                r = crate::sync::first_sync(*addr, zone, key.as_ref(), poll.soa_timeout, serial, &allow_tx, &sync_state) => Some(r),
            }
        }
        Source::File { .. } => None,
    };
    let serial = match first {
        Some(Ok(s)) => Some(s),
        // A primary that answers but refuses us (wrong key, not allowed to
        // transfer) is a configuration error: stop and say so. A pinned
        // program keeps enforcing meanwhile (deny-protected or the last set).
        Some(Err(e)) if refused(&e) => {
            return finish_with(
                Err(DaemonError::Source { source_desc: source.describe(), error: Box::new(e) }),
                cancel,
                enforcing,
                tasks,
            )
            .await;
        }
        Some(Err(e)) => {
            tracing::error!(
                error = %e,
                enforcing = started_from,
                "the allow-set source is unreachable at start; enforcing what is known and retrying with backoff"
            );
            serial
        }
        None => serial,
    };

    if cfg.lifetime.ageing_on(&cfg)
        && let (Some(server), Some(path)) = (cfg.rpz.server, cfg.rpz.tsig_key.as_deref())
    {
        let target = ageing::Target { server, zone: cfg.rpz.zone.clone(), key: TsigKey::from_file(path)? };
        let s = shared.clone();
        let hits: ageing::LastHits = Box::new(move || s.last_hits());
        tasks.spawn(ageing::run(
            cfg.lifetime.clone(),
            target,
            allow_rx.clone(),
            hits,
            shared.ageing.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(crate::sync::follow(source, serial, allow_tx, sync_state.clone(), cancel.clone()));
    if let Some(path) = snapshot_path {
        tasks.spawn(snapshot::keep(path, cfg.rpz.zone.clone(), allow_rx, sync_state, cancel.clone()));
    }
    tasks.spawn(reload::serve(reloads, cfg.clone(), shared.clone(), reload_enforcer, cancel.clone()));
    if let Some(every) = shared.notify.watchdog_interval() {
        tasks.spawn(watchdog(shared.clone(), every, cancel.clone()));
    }
    // Attached and enforcing the best set there is (after the first sync,
    // or the last known one while the primary is down): ready.
    shared.notify.ready(&ready_status(&shared));
    let r = enforcing.await;
    shared.notify.stopping();
    finish(r, cancel, tasks).await
}

/// The `STATUS=` line sent with `READY=1`.
fn ready_status(shared: &Shared) -> String {
    let st = lock(&shared.sync);
    let point = lock(&shared.point).clone();
    match (st.serial, &st.last_error) {
        (Some(serial), None) => format!("enforcing on {point}: serial {serial}, {} entries", st.entries),
        (_, Some(e)) => {
            format!("enforcing on {point} ({} entries); the source fails, retrying: {e}", st.entries)
        }
        (None, None) => format!("enforcing on {point} ({} entries)", st.entries),
    }
}

/// Ends the other tasks once the enforcement point has stopped.
async fn finish(
    r: Result<Result<(), DaemonError>, tokio::task::JoinError>,
    cancel: CancellationToken,
    mut tasks: tokio::task::JoinSet<()>,
) -> Result<(), DaemonError> {
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    r.unwrap_or_else(|e| Err(DaemonError::Task(e.to_string())))
}

/// True when the primary answered and refused us (TSIG failure, REFUSED,
/// NOTAUTH): retrying will not help, unlike a primary that is down.
fn refused(e: &crate::sync::SourceError) -> bool {
    use crate::rpz::transfer::SyncError;
    match e {
        crate::sync::SourceError::Transfer(SyncError::Tsig { .. }) => true,
        crate::sync::SourceError::Transfer(SyncError::Rejected { answer, .. }) => {
            answer.starts_with("REFUSED") || answer.starts_with("NOTAUTH")
        }
        _ => false,
    }
}

/// Stops the enforcement task and the others, returning `result`.
async fn finish_with(
    result: Result<(), DaemonError>,
    cancel: CancellationToken,
    enforcing: tokio::task::JoinHandle<Result<(), DaemonError>>,
    tasks: tokio::task::JoinSet<()>,
) -> Result<(), DaemonError> {
    tracing::error!("stopping: {}", result.as_ref().err().map(ToString::to_string).unwrap_or_default());
    cancel.cancel();
    let _ = finish(enforcing.await, cancel, tasks).await;
    result
}

/// OpenFlow mode: deny-protected (the switches hold the not-loaded flows,
/// protected packet-ins are dropped without asking the RPZ) ends when the
/// first set from the source is published; `loaded` tells the controller.
async fn openflow_loaded(
    mut rx: watch::Receiver<Arc<crate::policy::AllowSet>>,
    state: SharedSyncState,
    loaded: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    loop {
        {
            let mut st = lock(&state);
            if !st.deny_protected || st.serial.is_some() {
                if st.deny_protected {
                    tracing::info!(
                        serial = st.serial,
                        entries = st.entries,
                        "first allow set in force; deny-protected mode ends"
                    );
                }
                st.deny_protected = false;
                loaded.send_replace(true);
                return;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// "N s ago" for a time in ms since the epoch.
fn ago(ms: u64) -> String {
    format!("{} s ago", now_ms().saturating_sub(ms) / 1000)
}
/// Pings the service manager's watchdog while the daemon works: each ping
/// follows a read of the enforcement point's counters, which takes the
/// enforcer's lock, so a stuck map update or event reader stops the pings
/// and systemd restarts the service (the pinned program keeps enforcing).
async fn watchdog(shared: Arc<Shared>, every: std::time::Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = shared.clone();
        if tokio::task::spawn_blocking(move || s.stats()).await.is_ok() {
            shared.notify.watchdog();
        }
    }
}
