//! `rpz-guard run`: wires the allow-set source, the enforcement point, the
//! miss path, detection events, the status socket and metrics together, and
//! shuts down cleanly on SIGINT/SIGTERM.
//!
//! One file per seam: [`source`] (which RPZ source, the miss-path question),
//! [`xdp`] (the XDP enforcement point: attach, map mirror, kernel events),
//! [`miss`] (deciding a miss the kernel handed up), [`learn`] (live
//! learning from the resolvers' DNS), [`openflow`] (the
//! controller enforcement point), [`status`] and [`metrics`] (what operators
//! read), [`pin`] (the pinned-state lock). This file is the start sequence.

mod learn;
mod metrics;
mod miss;
mod openflow;
mod pin;
mod source;
mod status;
mod xdp;

use std::sync::{Arc, Mutex};

use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

pub use self::{
    source::source_from,
    status::{MissTransportReport, Shared, StatusReport, query_status, render_status},
};
use crate::{
    config::{Config, Mode},
    events::{EventSink, now_ms},
    metrics::Counters,
    sync::{SharedSyncState, SyncState},
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
    /// Live learning could not start (e.g. an unreadable hints file).
    #[error("live learning: {0}")]
    Learn(String),
}

/// Locks a mutex, ignoring poisoning (a panicked task leaves plain data).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the daemon until `cancel` fires.
pub async fn run(cfg: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    cfg.validate()?;
    // Claim the status socket (and the pin directory) before touching any
    // map: a second instance must not rewrite a running one's maps.
    let status_path = cfg.status.socket.clone();
    let status = status::bind_status(&status_path)?;
    let _pin_lock = match &cfg.enforce.pin_dir {
        Some(dir) => Some(pin::lock_pin_dir(dir, &status_path)?),
        None => None,
    };
    let result = run_bound(cfg, status, cancel).await;
    let _ = std::fs::remove_file(&status_path);
    result
}

async fn run_bound(
    cfg: Config,
    status: tokio::net::UnixListener,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
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
        Mode::Xdp => Some(xdp::load(&cfg)?),
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
    let resolver = source::miss_resolver(&cfg, &source, &allow_rx).await?;

    // Mirror the set into the maps before attaching: no window where the
    // program runs on empty maps and denies legitimate traffic.
    let applied = match enforcer.as_mut() {
        Some(e) => xdp::mirror_initial(e, adopted.unwrap_or_default(), initial)?,
        None => Arc::default(),
    };

    let mut tasks = tokio::task::JoinSet::new();
    // Live learning: after the initial mirror (its diff would take back
    // journalled entries), before the enforcer is shared.
    let live = match (cfg.learn.enabled, enforcer.as_mut()) {
        (true, Some(e)) => Some(learn::start_xdp(&cfg, e, allow_rx.clone(), &mut tasks, &cancel)?),
        _ => None,
    };

    let enforcer = enforcer.map(|e| Arc::new(Mutex::new(e)));
    let shared = Arc::new(
        Shared::new(
            cfg.clone(),
            allow_rx,
            resolver,
            events,
            Arc::new(Counters::default()),
            sync_state.clone(),
            enforcer.clone(),
        )
        .with_live(live),
    );

    tasks.spawn(crate::sync::follow(source, serial, allow_tx, sync_state, cancel.clone()));
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

    let result = match (cfg.enforce.mode, enforcer) {
        (Mode::Xdp, Some(e)) => xdp::run(&cfg, e, applied, shared.clone(), &mut tasks, cancel.clone()).await,
        _ => openflow::run(&cfg, shared.clone(), cancel.clone()).await,
    };
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    result
}
