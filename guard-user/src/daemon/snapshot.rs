//! The daemon's side of the zone snapshot ([`crate::rpz::snapshot`]): read
//! it at start (a bad one is refused with one log line and treated as
//! absent), and write a new one after each applied change of the set.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::{
    config::Config,
    events::now_ms,
    policy::AllowSet,
    rpz::snapshot::{self, Snapshot},
    sync::{SharedSyncState, Source},
};

/// Writes are at least this far apart: a burst of IXFRs makes one write.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// The snapshot file in force, when snapshots are on for this source (a
/// server: a local zone file is its own copy).
pub(super) fn path(cfg: &Config, source: &Source) -> Option<PathBuf> {
    match source {
        Source::Server { zone, .. } if cfg.rpz.snapshot => Some(snapshot::path(&cfg.rpz.state_dir, zone)),
        _ => None,
    }
}

/// Reads the snapshot at start. Refused ones are logged once, noted in
/// status, and treated as absent.
pub(super) fn read(path: &std::path::Path, zone: &str, state: &SharedSyncState) -> Option<Snapshot> {
    match snapshot::read(path, zone) {
        Ok(Some(s)) => {
            let age_s = now_ms().saturating_sub(s.written_ms) / 1000;
            tracing::info!(path = %path.display(), serial = s.serial, entries = s.set.len(), age_s, "zone snapshot read");
            Some(s)
        }
        Ok(None) => {
            tracing::info!(path = %path.display(), "no zone snapshot yet");
            None
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "zone snapshot refused; starting as if there were none");
            lock(state).snapshot_error = Some(format!("{} refused: {e}", path.display()));
            None
        }
    }
}

/// Writes a snapshot after each change of the set (at most one per
/// [`MIN_INTERVAL`]), until `cancel`. The serial is read under the sync
/// state lock, which the publisher holds while it swaps set and serial.
pub(super) async fn keep(
    path: PathBuf,
    zone: String,
    mut rx: watch::Receiver<Arc<AllowSet>>,
    state: SharedSyncState,
    cancel: CancellationToken,
) {
    let mut written = lock(&state).snapshot_serial;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(MIN_INTERVAL) => {}
        }
        let (serial, expire, set) = {
            let st = lock(&state);
            (st.serial, st.soa_expire_secs, rx.borrow_and_update().clone())
        };
        let Some(serial) = serial else { continue };
        if written == Some(serial) {
            continue;
        }
        let (p, z) = (path.clone(), zone.clone());
        let res =
            tokio::task::spawn_blocking(move || snapshot::write(&p, &z, serial, expire, now_ms(), &set))
                .await;
        let mut st = lock(&state);
        match res {
            Ok(Ok(())) => {
                tracing::debug!(path = %path.display(), serial, "zone snapshot written");
                written = Some(serial);
                st.snapshot_serial = Some(serial);
                st.snapshot_error = None;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "writing the zone snapshot failed; retried at the next change");
                st.snapshot_error = Some(e.to_string());
            }
            Err(e) => st.snapshot_error = Some(format!("snapshot writer: {e}")),
        }
        if cancel.is_cancelled() {
            return;
        }
    }
}
