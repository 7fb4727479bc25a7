//! Live-learned entries to the RPZ primary: TSIG-signed UPDATEs of what
//! the zone lacks, batched (every `interval`, or at once when `batch`
//! records wait), retried with back-off while the primary is unreachable.
//! The entries stay enforced locally meanwhile, and a journal file keeps
//! every unconfirmed entry across a daemon restart.
//!
//! The zone stays the source of truth: an entry leaves [`LiveAllow`] only
//! once the zone, read back by IXFR, holds it; every other router following
//! the zone gets it the same way.
use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::live::{LiveAllow, monotonic_ns};
use crate::{
    policy::{AllowSet, Classes},
    rpz::{tsig::TsigKey, update::push_records},
};

/// Where and how often to push.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The primary; `None`: entries are only enforced locally (and journalled).
    pub target: Option<(SocketAddr, String, TsigKey)>,
    /// Longest wait before queued entries go out.
    pub interval: Duration,
    /// Most records per UPDATE; a full batch goes out at once.
    pub batch: usize,
    /// One UPDATE's time limit.
    pub timeout: Duration,
    /// The journal of unconfirmed entries.
    pub journal: Option<PathBuf>,
}

/// Most back-off between failed pushes.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Reads a journal written by [`save_journal`]: `(address, classes)` per
/// line. A missing file is empty; bad lines are skipped and counted.
pub fn load_journal(path: &Path) -> std::io::Result<(Vec<(IpAddr, Classes)>, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut f = line.split_whitespace();
        let ip = f.next().and_then(|s| s.parse::<IpAddr>().ok());
        let bits = f.next().and_then(|s| s.parse::<u32>().ok()).map(Classes::from_bits);
        match (ip, bits) {
            (Some(ip), Some(c)) if !c.is_empty() && super::rules::is_learnable(ip) => out.push((ip, c)),
            _ => bad += 1,
        }
    }
    Ok((out, bad))
}

/// Writes `entries` to `path` (a temporary file renamed over it, so a
/// crash leaves the old or the new journal, never half of one).
pub fn save_journal(path: &Path, entries: &[(IpAddr, Classes)]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(f, "# rpz-guard live-learned entries not yet confirmed by the zone: address class-bits")?;
        for (ip, c) in entries {
            writeln!(f, "{ip} {}", c.bits())?;
        }
        f.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// Runs until `cancel`: pushes queued entries, drops those the zone (the
/// `zone` watch, fed by IXFR) confirms, keeps the journal current.
pub async fn push_loop(
    live: Arc<LiveAllow>,
    cfg: PushConfig,
    mut zone: watch::Receiver<Arc<AllowSet>>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    let mut retry_at = tokio::time::Instant::now();
    loop {
        let tick = tokio::time::sleep(cfg.interval);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tick => {}
            () = live.queue_signal.notified() => {
                // A batch fills up: go now; else wait for the tick.
                if live.stats().queued < cfg.batch {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(cfg.interval) => {}
                    }
                }
            }
            r = zone.changed() => if r.is_err() { break },
        }
        let set = zone.borrow_and_update().clone();
        live.prune_confirmed(|ip| set.lookup(ip));
        if let Some((server, name, key)) = &cfg.target
            && tokio::time::Instant::now() >= retry_at
        {
            loop {
                let batch: Vec<_> = live
                    .next_batch(cfg.batch)
                    .into_iter()
                    .filter(|(p, c)| !set.get(p).contains(*c) && !set.is_denied(p.addr()))
                    .collect();
                if batch.is_empty() {
                    break;
                }
                let res = tokio::time::timeout(cfg.timeout, push_records(*server, name, key, &batch)).await;
                match res {
                    Ok(Ok(_)) => {
                        live.mark_pushed(&batch, monotonic_ns());
                        backoff = Duration::from_millis(500);
                    }
                    Ok(Err(e)) => {
                        fail(&live, &mut backoff, &mut retry_at, e.to_string());
                        break;
                    }
                    Err(_) => {
                        fail(&live, &mut backoff, &mut retry_at, format!("UPDATE to {server} timed out"));
                        break;
                    }
                }
                if batch.len() < cfg.batch {
                    break;
                }
            }
        }
        save_if_dirty(&live, cfg.journal.as_deref());
    }
    save_if_dirty(&live, cfg.journal.as_deref());
}

fn fail(live: &LiveAllow, backoff: &mut Duration, retry_at: &mut tokio::time::Instant, why: String) {
    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, queued = live.stats().queued, "pushing live-learned entries failed; they stay enforced and queued");
    live.push_failed(why);
    *retry_at = tokio::time::Instant::now() + *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

fn save_if_dirty(live: &LiveAllow, journal: Option<&Path>) {
    if let Some(path) = journal
        && live.take_dirty()
        && let Err(e) = save_journal(path, &live.entries())
    {
        tracing::warn!(path = %path.display(), error = %e, "writing the live-learning journal failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_and_bad_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("live.journal");
        assert_eq!(load_journal(&path).expect("missing is empty").0, vec![]);
        let entries: Vec<(IpAddr, Classes)> = vec![
            ("192.0.2.1".parse().expect("ip"), Classes::DNS),
            ("2001:db8::25".parse().expect("ip"), Classes::SMTP.union(Classes::DNS)),
        ];
        save_journal(&path, &entries).expect("save");
        assert_eq!(load_journal(&path).expect("load"), (entries, 0));
        std::fs::write(&path, "192.0.2.1 1\nnot-an-ip 1\n192.0.2.2 0\n127.0.0.1 2\n192.0.2.3\n")
            .expect("write");
        let (got, bad) = load_journal(&path).expect("load");
        assert_eq!(got.len(), 1);
        assert_eq!(bad, 4);
    }
}
