//! Keeping the allow set current: from a BIND primary (AXFR at start, then
//! IXFR on NOTIFY, with SOA polling as the fallback) or from a local zone
//! file (re-read when it changes). Every new set is published on a
//! `watch` channel; consumers (map mirror, OpenFlow flows) diff it themselves.
//!
//! When the source fails later on, the current set stays in force and the
//! error is reported in [`SyncState`]; retries back off up to a minute.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    events::now_ms,
    policy::AllowSet,
    rpz::{
        notify::listen_notify,
        transfer::{IxfrOutcome, axfr, ixfr, serial_newer, soa_serial},
        tsig::TsigKey,
        zonefile::parse_zone,
    },
};

/// Where the allow set comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A local zone file, polled for changes.
    File {
        /// The file.
        path: PathBuf,
        /// The zone origin.
        zone: String,
    },
    /// A BIND primary (or secondary) serving the policy zone.
    Server {
        /// Address of the server.
        addr: SocketAddr,
        /// The zone origin.
        zone: String,
        /// TSIG key for transfers.
        key: Option<TsigKey>,
        /// Where to listen for NOTIFY.
        notify: Option<SocketAddr>,
        /// SOA poll interval.
        poll: Duration,
    },
}

impl Source {
    /// A one-line description for logs and status.
    pub fn describe(&self) -> String {
        match self {
            Source::File { path, zone } => format!("zone file {} ({zone})", path.display()),
            Source::Server { addr, zone, key, .. } => format!(
                "{zone} from {addr}{}",
                key.as_ref().map(|k| format!(" with TSIG key {}", k.name)).unwrap_or_default()
            ),
        }
    }
}

/// The source could not give a set.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The zone file could not be read or parsed.
    #[error("zone file {path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The transfer failed.
    #[error(transparent)]
    Transfer(#[from] crate::rpz::transfer::SyncError),
}

/// What status shows about synchronisation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncState {
    /// The source, described.
    pub source: String,
    /// Serial of the set in force.
    pub serial: Option<u32>,
    /// Entries in the set in force.
    pub entries: usize,
    /// When the last successful transfer or read ended (ms since the epoch).
    pub last_sync_ms: Option<u64>,
    /// When the set last changed.
    pub last_change_ms: Option<u64>,
    /// Full transfers (or file reads).
    pub full_loads: u64,
    /// Incremental transfers that changed something.
    pub incremental: u64,
    /// NOTIFY messages received.
    pub notifies: u64,
    /// The last error, if the source is failing now.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_ms: Option<u64>,
    /// True while running on a set from pinned maps because the source failed at start.
    pub stale_start: bool,
    /// The last failure to write the set into the enforcement maps (retried).
    #[serde(default)]
    pub mirror_error: Option<String>,
}

/// Shared handle on [`SyncState`].
pub type SharedSyncState = Arc<Mutex<SyncState>>;

/// Loads the whole set once.
pub async fn load(source: &Source) -> Result<(u32, AllowSet), SourceError> {
    match source {
        Source::File { path, zone } => {
            let (serial, set, _) = read_file(path, zone).await?;
            Ok((serial, set))
        }
        Source::Server { addr, zone, key, .. } => {
            let snap = axfr(*addr, zone, key.as_ref()).await?;
            Ok((snap.serial, snap.set))
        }
    }
}

type FileStamp = (SystemTime, u64, u64);

async fn read_file(path: &PathBuf, zone: &str) -> Result<(u32, AllowSet, FileStamp), SourceError> {
    let ferr = |why: String| SourceError::File { path: path.clone(), why };
    let stamp = stamp(path).await.map_err(|e| ferr(e.to_string()))?;
    let text = tokio::fs::read_to_string(path).await.map_err(|e| ferr(e.to_string()))?;
    let parsed = parse_zone(&text, zone).map_err(|e| ferr(e.to_string()))?;
    if parsed.ignored.count > 0 {
        tracing::info!(file = %path.display(), ignored = parsed.ignored.count, "zone records that are not allow entries were ignored");
    }
    Ok((parsed.serial, parsed.set, stamp))
}

async fn stamp(path: &PathBuf) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = tokio::fs::metadata(path).await?;
    Ok((m.modified()?, m.len(), m.ino()))
}

fn record_error(state: &SharedSyncState, e: &SourceError) {
    tracing::warn!(error = %e, "allow-set source failed; the current set stays in force");
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.last_error = Some(e.to_string());
    st.last_error_ms = Some(now_ms());
}

fn publish(
    tx: &watch::Sender<Arc<AllowSet>>,
    state: &SharedSyncState,
    serial: u32,
    set: AllowSet,
    full: bool,
) {
    let changed = **tx.borrow() != set;
    let entries = set.len();
    if changed {
        tx.send_replace(Arc::new(set));
    }
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let now = now_ms();
    st.serial = Some(serial);
    st.entries = entries;
    st.last_sync_ms = Some(now);
    st.last_error = None;
    st.stale_start = false;
    if changed {
        st.last_change_ms = Some(now);
    }
    if full {
        st.full_loads += 1;
    } else if changed {
        st.incremental += 1;
    }
    if changed {
        tracing::info!(serial, entries, "allow set updated");
    }
}

/// Follows `source` until `cancel`, publishing each new set on `tx`.
/// `serial` is the serial of the set already published (None when running
/// on a stale set, which forces a full load).
pub async fn follow(
    source: Source,
    mut serial: Option<u32>,
    tx: watch::Sender<Arc<AllowSet>>,
    state: SharedSyncState,
    cancel: CancellationToken,
) {
    match source {
        Source::File { path, zone } => follow_file(path, zone, serial, tx, state, cancel).await,
        Source::Server { addr, zone, key, notify, poll } => {
            let mut notify_rx = match notify {
                Some(bind) => match listen_notify(bind, &zone).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(%bind, error = %e, "cannot listen for NOTIFY; relying on SOA polling");
                        None
                    }
                },
                None => None,
            };
            let mut backoff = Duration::from_secs(1);
            let mut next = tokio::time::Instant::now() + poll;
            loop {
                let notified = tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep_until(next) => false,
                    ev = async { match notify_rx.as_mut() { Some(l) => l.events.recv().await, None => std::future::pending().await } } => {
                        if ev.is_none() { notify_rx = None; continue; }
                        state.lock().unwrap_or_else(|e| e.into_inner()).notifies += 1;
                        true
                    }
                };
                let res = step(addr, &zone, key.as_ref(), serial, notified, &tx, &state).await;
                match res {
                    Ok(s) => {
                        serial = Some(s);
                        backoff = Duration::from_secs(1);
                        next = tokio::time::Instant::now() + poll;
                    }
                    Err(e) => {
                        record_error(&state, &e);
                        next = tokio::time::Instant::now() + backoff.min(poll);
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
        }
    }
}

/// One synchronisation step with the server; returns the serial in force.
async fn step(
    addr: SocketAddr,
    zone: &str,
    key: Option<&TsigKey>,
    serial: Option<u32>,
    notified: bool,
    tx: &watch::Sender<Arc<AllowSet>>,
    state: &SharedSyncState,
) -> Result<u32, SourceError> {
    let Some(have) = serial else {
        let snap = axfr(addr, zone, key).await?;
        publish(tx, state, snap.serial, snap.set, true);
        return Ok(snap.serial);
    };
    if !notified {
        let theirs = soa_serial(addr, zone, key).await?;
        if theirs != have && !serial_newer(theirs, have) {
            // The zone went backwards (recreated): our base is unknown to it.
            tracing::warn!(ours = have, theirs, "zone serial went backwards; transferring the whole zone");
            let snap = axfr(addr, zone, key).await?;
            publish(tx, state, snap.serial, snap.set, true);
            return Ok(snap.serial);
        }
        if theirs == have {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.last_sync_ms = Some(now_ms());
            st.last_error = None;
            return Ok(have);
        }
    }
    let current = tx.borrow().clone();
    match ixfr(addr, zone, key, have, &current).await? {
        IxfrOutcome::UpToDate { serial } => {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.last_sync_ms = Some(now_ms());
            st.last_error = None;
            Ok(serial)
        }
        IxfrOutcome::Incremental { serial, set, .. } => {
            publish(tx, state, serial, set, false);
            Ok(serial)
        }
        IxfrOutcome::Full(snap) => {
            publish(tx, state, snap.serial, snap.set, true);
            Ok(snap.serial)
        }
    }
}

async fn follow_file(
    path: PathBuf,
    zone: String,
    serial: Option<u32>,
    tx: watch::Sender<Arc<AllowSet>>,
    state: SharedSyncState,
    cancel: CancellationToken,
) {
    // Read once more on the first tick: an edit made while the initial set
    // was being mirrored must not wait for the next edit.
    let _ = serial;
    let mut last: Option<FileStamp> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stamp(&path).await.ok();
        if now.is_some() && now == last {
            continue;
        }
        match read_file(&path, &zone).await {
            Ok((serial, set, st)) => {
                last = Some(st);
                publish(&tx, &state, serial, set, true);
            }
            Err(e) => {
                // Remember the stamp so a broken file is reported once, not every tick.
                last = now;
                record_error(&state, &e);
            }
        }
    }
}
