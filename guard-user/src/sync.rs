//! Keeping the allow set current: from an RPZ primary (AXFR at start, then
//! IXFR on NOTIFY over UDP or TCP, with SOA polling as the safety net) or
//! from a local zone file (re-read when it changes). Every new set is
//! published on a `watch` channel; consumers (map mirror, OpenFlow flows)
//! diff it against what they applied, so even a whole zone (an AXFR, or an
//! IXFR answered with the full zone as PowerDNS does) changes only what
//! differs: never a flush and reload.
//!
//! Polling: every `poll_interval` (±20 % jitter, so many routers do not
//! poll in step); for `fast_for` after a NOTIFY or a change, every
//! `fast_interval` (a primary that NOTIFYs late, or a burst of UPDATEs);
//! while the primary fails, the wait doubles up to `max_backoff`. When the
//! source fails, the current set stays in force and the error is reported
//! in [`SyncState`]. Status records how each change was learned.

use std::{
    hash::BuildHasher,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    events::now_ms,
    policy::{AllowSet, Prefix},
    rpz::{
        notify::{NotifyConfig, NotifyCounters, NotifyEvent, NotifyStats, Transport, listen_notify},
        transfer::{IxfrOutcome, SoaInfo, axfr, ixfr, serial_newer, soa_within},
        tsig::{TsigKey, TsigKeyError},
        zonefile::parse_zone,
    },
};

/// When to ask the primary for its SOA serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollConfig {
    /// Normal interval (jittered ±20 %).
    pub interval: Duration,
    /// Interval while polling fast.
    pub fast_interval: Duration,
    /// How long polling stays fast after a NOTIFY or a change.
    pub fast_for: Duration,
    /// Longest wait between attempts while the primary fails.
    pub max_backoff: Duration,
    /// Bound on one SOA query (`rpz.soa_timeout_ms`).
    pub soa_timeout: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig::from_config(&crate::config::Rpz::default())
    }
}

impl PollConfig {
    /// The `[rpz]` poll keys.
    pub fn from_config(rpz: &crate::config::Rpz) -> Self {
        let interval = Duration::from_secs(rpz.poll_interval_secs);
        PollConfig {
            interval,
            fast_interval: Duration::from_millis(rpz.poll_fast_interval_ms).min(interval),
            fast_for: Duration::from_secs(rpz.poll_fast_for_secs),
            max_backoff: Duration::from_secs(rpz.poll_max_backoff_secs).max(interval),
            soa_timeout: Duration::from_millis(rpz.soa_timeout_ms),
        }
    }
}

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
    /// An RPZ primary (BIND, Knot DNS, PowerDNS, or a secondary of one).
    Server {
        /// Address of the server.
        addr: SocketAddr,
        /// The zone origin.
        zone: String,
        /// TSIG key for transfers.
        key: Option<TsigKey>,
        /// The NOTIFY listener, when one is configured.
        notify: Option<Box<NotifyConfig>>,
        /// SOA polling.
        poll: PollConfig,
    },
}

impl Source {
    /// The source the configuration names (reads the TSIG key file).
    pub fn from_config(cfg: &Config) -> Result<Source, TsigKeyError> {
        let r = &cfg.rpz;
        let zone = r.zone.clone();
        let Some(addr) = r.server else {
            return Ok(Source::File { path: r.zone_file.clone().unwrap_or_default(), zone });
        };
        let key = r.tsig_key.as_deref().map(TsigKey::from_file).transpose()?;
        let notify = r.notify_listen.map(|listen| {
            Box::new(NotifyConfig {
                listen,
                zone: zone.clone(),
                allow_from: r.notify_allow_from.clone().unwrap_or_else(|| vec![Prefix::host(addr.ip())]),
                key: key.clone(),
                require_tsig: r.notify_require_tsig,
                tcp_idle: Duration::from_millis(r.notify_tcp_idle_ms),
                tcp_max_connections: r.notify_tcp_max_connections,
                log_interval: Duration::from_secs(60),
            })
        });
        Ok(Source::Server { addr, zone, key, notify, poll: PollConfig::from_config(r) })
    }

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

/// How a change of the allow set was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LearnedVia {
    /// A NOTIFY over UDP, then IXFR/AXFR.
    NotifyUdp,
    /// A NOTIFY over TCP, then IXFR/AXFR.
    NotifyTcp,
    /// An SOA poll found a newer serial (a NOTIFY was lost, late or never sent).
    Poll,
    /// The zone file changed.
    File,
}

impl LearnedVia {
    /// The name in status and metrics.
    pub fn name(self) -> &'static str {
        match self {
            LearnedVia::NotifyUdp => "notify-udp",
            LearnedVia::NotifyTcp => "notify-tcp",
            LearnedVia::Poll => "poll",
            LearnedVia::File => "file",
        }
    }

    fn of(t: Transport) -> LearnedVia {
        match t {
            Transport::Udp => LearnedVia::NotifyUdp,
            Transport::Tcp => LearnedVia::NotifyTcp,
        }
    }
}

/// Changes of the allow set, counted by how they were learned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedCounts {
    /// After a NOTIFY over UDP.
    pub notify_udp: u64,
    /// After a NOTIFY over TCP.
    pub notify_tcp: u64,
    /// Found by an SOA poll.
    pub poll: u64,
    /// Zone file re-read.
    pub file: u64,
}

impl LearnedCounts {
    fn add(&mut self, via: LearnedVia) {
        match via {
            LearnedVia::NotifyUdp => self.notify_udp += 1,
            LearnedVia::NotifyTcp => self.notify_tcp += 1,
            LearnedVia::Poll => self.poll += 1,
            LearnedVia::File => self.file += 1,
        }
    }
}

/// One change of the allow set in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The zone serial after the change.
    pub serial: u32,
    /// How it was learned.
    pub via: LearnedVia,
    /// When it was published (ms since the epoch).
    pub at_ms: u64,
    /// Entries added or changed.
    pub upserts: usize,
    /// Entries removed.
    pub removals: usize,
    /// From the trigger (NOTIFY received, poll started) to the set published.
    pub took_ms: u64,
    /// True when the server sent the whole zone (AXFR, or IXFR answered in full).
    pub full: bool,
}

/// How many recent changes status keeps.
pub const RECENT_CHANGES: usize = 16;

/// NOTIFY counters for status: read live from the listener when the state
/// is serialised, so the status socket always shows current figures.
#[derive(Clone, Debug, Default)]
pub struct NotifyView {
    live: Option<Arc<NotifyStats>>,
    fixed: NotifyCounters,
}

impl NotifyView {
    /// The counters now.
    pub fn counters(&self) -> NotifyCounters {
        self.live.as_ref().map_or_else(|| self.fixed.clone(), |s| s.snapshot())
    }

    /// True when a listener runs (or ran, in a deserialised report).
    pub fn is_listening(&self) -> bool {
        self.live.is_some() || self.fixed != NotifyCounters::default()
    }
}

impl Serialize for NotifyView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.counters().serialize(s)
    }
}

impl<'de> Deserialize<'de> for NotifyView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(NotifyView { live: None, fixed: NotifyCounters::deserialize(d)? })
    }
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
    /// NOTIFY messages accepted (both transports).
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
    /// NOTIFY listener counters, per transport and refusals by reason.
    #[serde(default)]
    pub notify: NotifyView,
    /// SOA queries made.
    #[serde(default)]
    pub polls: u64,
    /// Polling fast (after a NOTIFY or a change) until then (ms since the epoch).
    #[serde(default)]
    pub fast_poll_until_ms: Option<u64>,
    /// Changes of the set, by how they were learned.
    #[serde(default)]
    pub learned: LearnedCounts,
    /// The last [`RECENT_CHANGES`] changes, oldest first.
    #[serde(default)]
    pub changes: Vec<Change>,
    // -- fail-closed start (issue 17) --
    /// Since when the source has been failing without a success in between
    /// (ms since the epoch); with no sync since start: "waiting for the
    /// primary since …".
    #[serde(default)]
    pub failing_since_ms: Option<u64>,
    /// Since when the daemon waits for the primary's first answer (ms
    /// since the epoch): set at start with a server source, cleared by the
    /// first transfer or SOA check that succeeds. Status and metrics are
    /// served meanwhile, from the first second.
    #[serde(default)]
    pub waiting_since_ms: Option<u64>,
    /// What the daemon enforced at start, before the source answered:
    /// a snapshot, pinned maps, or nothing (deny-protected).
    #[serde(default)]
    pub started_from: Option<String>,
    /// True while no allow set is in force: protected traffic that is not
    /// exempt or internal is dropped (reason `not_loaded`).
    #[serde(default)]
    pub deny_protected: bool,
    /// Serial of the last snapshot written to the state directory.
    #[serde(default)]
    pub snapshot_serial: Option<u32>,
    /// The last failure to write or read the snapshot.
    #[serde(default)]
    pub snapshot_error: Option<String>,
    /// The zone's SOA expire, seconds (from the primary, or the snapshot).
    #[serde(default)]
    pub soa_expire_secs: Option<u32>,
    /// When the set in force was last confirmed by the primary (a transfer
    /// or an SOA check; at start from a snapshot, its write time), ms since
    /// the epoch: the SOA expire counts from here.
    #[serde(default)]
    pub confirmed_ms: Option<u64>,
    /// The past-expire warning was logged for the current outage.
    #[serde(skip)]
    pub expire_warned: bool,
}

impl SyncState {
    /// When the set in force went past the zone's SOA expire (ms since the
    /// epoch), if the source is failing and it has: a BIND secondary would
    /// stop serving the zone here. rpz-guard keeps enforcing it (fail
    /// closed) and says so in status, metrics and the log.
    pub fn expired_since(&self, now: u64) -> Option<u64> {
        self.failing_since_ms?;
        let at = self.confirmed_ms?.saturating_add(u64::from(self.soa_expire_secs?) * 1000);
        (now >= at).then_some(at)
    }

    /// Prometheus gauges of NOTIFY (per transport, refusals by reason),
    /// polling and how changes were learned.
    pub fn gauges(&self) -> Vec<crate::metrics::Gauge> {
        use crate::metrics::Gauge;
        let n = self.notify.counters();
        let g = |name, help, label: Option<(&'static str, &str)>, value: u64| Gauge {
            name,
            help,
            label: label.map(|(k, v)| (k, v.to_owned())),
            value: value as f64,
        };
        let mut out = Vec::new();
        for (t, c) in [("udp", &n.udp), ("tcp", &n.tcp)] {
            out.push(g(
                "notify_received_total",
                "NOTIFY messages received, by transport.",
                Some(("transport", t)),
                c.received,
            ));
            out.push(g(
                "notify_accepted_total",
                "NOTIFYs that passed every check, by transport.",
                Some(("transport", t)),
                c.accepted,
            ));
        }
        out.push(g(
            "notify_tcp_connections_total",
            "NOTIFY TCP connections accepted.",
            None,
            n.tcp.connections,
        ));
        out.push(g("notify_tcp_open", "NOTIFY TCP connections open now.", None, n.tcp.open));
        for (reason, v) in &n.rejected {
            out.push(g(
                "notify_rejected_total",
                "NOTIFYs (or TCP connections) refused, by reason.",
                Some(("reason", reason)),
                *v,
            ));
        }
        out.push(g(
            "notify_not_newer_total",
            "Accepted NOTIFYs whose serial was not newer (no transfer).",
            None,
            n.not_newer,
        ));
        out.push(g("sync_polls_total", "SOA queries made.", None, self.polls));
        let l = &self.learned;
        for (via, v) in
            [("notify-udp", l.notify_udp), ("notify-tcp", l.notify_tcp), ("poll", l.poll), ("file", l.file)]
        {
            out.push(g(
                "sync_changes_total",
                "Changes of the allow set, by how they were learned.",
                Some(("via", via)),
                v,
            ));
        }
        out
    }

    /// The NOTIFY, polling and recent-change lines of `rpz-guard status`.
    pub fn render_learning(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        if self.notify.is_listening() {
            let n = self.notify.counters();
            let refused: Vec<String> =
                n.rejected.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                o,
                "notify     udp {}/{}  tcp {}/{} (accepted/received; {} connections, {} open)  not newer {}",
                n.udp.accepted,
                n.udp.received,
                n.tcp.accepted,
                n.tcp.received,
                n.tcp.connections,
                n.tcp.open,
                n.not_newer
            );
            if !refused.is_empty() {
                let _ = writeln!(o, "NOTIFY REFUSED {}", refused.join(", "));
            }
        }
        let l = &self.learned;
        let fast = self.fast_poll_until_ms.is_some_and(|t| t > now_ms());
        let _ = writeln!(
            o,
            "learned    notify-udp {}  notify-tcp {}  poll {}  file {}   ({} SOA polls{})",
            l.notify_udp,
            l.notify_tcp,
            l.poll,
            l.file,
            self.polls,
            if fast { ", polling fast" } else { "" }
        );
        for c in self.changes.iter().rev().take(5) {
            let _ = writeln!(
                o,
                "  serial {:<10} {:<10} +{} -{} in {} ms{}  ({}s ago)",
                c.serial,
                c.via.name(),
                c.upserts,
                c.removals,
                c.took_ms,
                if c.full { " (whole zone)" } else { "" },
                now_ms().saturating_sub(c.at_ms) / 1000
            );
        }
        o
    }
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
    // Seconds for a large zone: off the runtime, so shutdown is not held up.
    let origin = zone.to_owned();
    let parsed = tokio::task::spawn_blocking(move || parse_zone(&text, &origin))
        .await
        .map_err(|e| ferr(e.to_string()))?
        .map_err(|e| ferr(e.to_string()))?;
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
    let mut st = lock(state);
    let now = now_ms();
    st.last_error = Some(e.to_string());
    st.last_error_ms = Some(now);
    st.failing_since_ms.get_or_insert(now);
    if let Some(at) = st.expired_since(now)
        && !st.expire_warned
    {
        st.expire_warned = true;
        tracing::warn!(
            expire_s = st.soa_expire_secs,
            expired_s_ago = now.saturating_sub(at) / 1000,
            serial = st.serial,
            entries = st.entries,
            "ZONE EXPIRED: the primary has not confirmed the policy zone for longer than its SOA expire; \
             the last set stays in force (fail closed) until it answers"
        );
    }
}

/// The primary confirmed the set in force (a transfer or an SOA check).
fn confirmed(st: &mut SyncState, now: u64) {
    st.last_sync_ms = Some(now);
    st.confirmed_ms = Some(now);
    st.waiting_since_ms = None;
    st.last_error = None;
    st.failing_since_ms = None;
    st.stale_start = false;
    if std::mem::take(&mut st.expire_warned) {
        tracing::info!(
            serial = st.serial,
            "the primary answers again; the zone is no longer past its SOA expire"
        );
    }
}

fn lock(state: &SharedSyncState) -> std::sync::MutexGuard<'_, SyncState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// What triggered a synchronisation step.
#[derive(Clone, Copy, Debug)]
struct Trigger {
    via: LearnedVia,
    at: Instant,
}

fn publish(
    tx: &watch::Sender<Arc<AllowSet>>,
    state: &SharedSyncState,
    serial: u32,
    set: AllowSet,
    full: bool,
    trigger: Trigger,
) -> bool {
    // Under the state lock, so a reader that takes the lock sees this set
    // together with its serial (the snapshot writer relies on it). The first
    // set from the source is sent even when equal: it ends deny-protected mode.
    let mut st = lock(state);
    let (diff, changed) = {
        let old = tx.borrow();
        let diff = old.diff(&set);
        // Denies and lifetime state are published too (enforcement and
        // ageing follow them), though the allow entries' diff misses them.
        let changed = !diff.is_empty() || old.state_differs(&set);
        (diff, changed)
    };
    let entries = set.len();
    if changed || st.serial.is_none() {
        tx.send_replace(Arc::new(set));
    }
    let now = now_ms();
    st.serial = Some(serial);
    st.entries = entries;
    confirmed(&mut st, now);
    if full {
        st.full_loads += 1;
    } else if changed {
        st.incremental += 1;
    }
    if changed {
        st.last_change_ms = Some(now);
        st.learned.add(trigger.via);
        let took_ms = u64::try_from(trigger.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        if st.changes.len() >= RECENT_CHANGES {
            st.changes.remove(0);
        }
        st.changes.push(Change {
            serial,
            via: trigger.via,
            at_ms: now,
            upserts: diff.upsert.len(),
            removals: diff.remove.len(),
            took_ms,
            full,
        });
        tracing::info!(
            serial,
            entries,
            upserts = diff.upsert.len(),
            removals = diff.remove.len(),
            via = trigger.via.name(),
            took_ms,
            "allow set updated"
        );
    }
    changed
}

/// `d` scaled by a random factor in 0.8..1.2, so routers do not poll in step.
fn jitter(d: Duration) -> Duration {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let r = std::collections::hash_map::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    // 0..=1000 → 800..=1200 per mille.
    d * u32::try_from(800 + r % 401).unwrap_or(1000) / 1000
}

/// The poll schedule: normal, fast for a while, or backing off.
#[derive(Debug)]
struct Schedule {
    poll: PollConfig,
    fast_until: Option<Instant>,
    backoff: Option<Duration>,
}

impl Schedule {
    fn speed_up(&mut self, state: &SharedSyncState) {
        let until = Instant::now() + self.poll.fast_for;
        self.fast_until = Some(until);
        lock(state).fast_poll_until_ms =
            Some(now_ms() + u64::try_from(self.poll.fast_for.as_millis()).unwrap_or(0));
    }

    /// The next poll after a success.
    fn ok(&mut self) -> Instant {
        self.backoff = None;
        let now = Instant::now();
        let fast = self.fast_until.is_some_and(|t| now < t);
        now + jitter(if fast { self.poll.fast_interval } else { self.poll.interval })
    }

    /// The next attempt after a failure: doubling from the interval.
    fn failed(&mut self) -> Instant {
        let b = self.backoff.map_or(self.poll.interval, |b| b * 2).min(self.poll.max_backoff);
        self.backoff = Some(b);
        Instant::now() + jitter(b)
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
    let (addr, zone, key, notify, poll) = match source {
        Source::File { path, zone } => return follow_file(path, zone, serial, tx, state, cancel).await,
        Source::Server { addr, zone, key, notify, poll } => (addr, zone, key, notify, poll),
    };
    let mut listener = match notify {
        Some(cfg) => {
            let bind = cfg.listen;
            match listen_notify(*cfg).await {
                Ok(l) => {
                    tracing::info!(listen = %l.local_addr(), "listening for NOTIFY over UDP and TCP");
                    lock(&state).notify =
                        NotifyView { live: Some(Arc::clone(&l.stats)), ..NotifyView::default() };
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(%bind, error = %e, "cannot listen for NOTIFY; relying on SOA polling");
                    None
                }
            }
        }
        None => None,
    };
    let mut schedule = Schedule { poll, fast_until: None, backoff: None };
    // A source already failing (down at start) continues its backoff.
    let failing = lock(&state).failing_since_ms.is_some();
    let mut next = if failing { schedule.failed() } else { Instant::now() + jitter(poll.interval) };
    loop {
        let ev: Option<NotifyEvent> = tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(next) => None,
            ev = async { match listener.as_mut() { Some(l) => l.events.recv().await, None => std::future::pending().await } } => {
                if ev.is_none() { listener = None; continue; }
                ev
            }
        };
        let trigger = match ev {
            None => Trigger { via: LearnedVia::Poll, at: Instant::now() },
            Some(ev) => {
                lock(&state).notifies += 1;
                if let (Some(theirs), Some(have)) = (ev.serial, serial)
                    && !serial_newer(theirs, have)
                {
                    // Answered, but nothing to fetch (a repeat, or a stale primary).
                    if let Some(l) = &listener {
                        l.stats.not_newer.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(from = %ev.from, theirs, ours = have, "NOTIFY serial not newer; no transfer");
                    continue;
                }
                // One transfer covers every NOTIFY already queued.
                if let Some(l) = listener.as_mut() {
                    while l.events.try_recv().is_ok() {
                        l.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                        lock(&state).notifies += 1;
                    }
                }
                schedule.speed_up(&state);
                Trigger { via: LearnedVia::of(ev.transport), at: Instant::now() }
            }
        };
        match step(addr, &zone, key.as_ref(), poll.soa_timeout, serial, trigger, &tx, &state).await {
            Ok((s, changed)) => {
                serial = Some(s);
                if changed {
                    schedule.speed_up(&state);
                }
                next = schedule.ok();
            }
            Err(e) => {
                record_error(&state, &e);
                next = schedule.failed();
            }
        }
    }
}

/// The first synchronisation with a server at start: from a snapshot's
/// `serial`, an SOA check and IXFR (or AXFR); with none, AXFR. A failure is
/// recorded in `state` and returned; the caller enforces what it has and
/// [`follow`] retries with backoff. (A zone file needs no such step: the
/// follower reads it at once.)
pub async fn first_sync(
    addr: SocketAddr,
    zone: &str,
    key: Option<&TsigKey>,
    soa_timeout: Duration,
    serial: Option<u32>,
    tx: &watch::Sender<Arc<AllowSet>>,
    state: &SharedSyncState,
) -> Result<u32, SourceError> {
    let trigger = Trigger { via: LearnedVia::Poll, at: Instant::now() };
    let res = step(addr, zone, key, soa_timeout, serial, trigger, tx, state).await.map(|(s, _)| s);
    if let Err(e) = &res {
        record_error(state, e);
    }
    res
}

/// One synchronisation step with the server; returns the serial in force
/// and whether the set changed. Each SOA query is bounded by `soa_timeout`.
#[expect(clippy::too_many_arguments, reason = "one step's whole context; a struct would be built per call")]
async fn step(
    addr: SocketAddr,
    zone: &str,
    key: Option<&TsigKey>,
    soa_timeout: Duration,
    serial: Option<u32>,
    trigger: Trigger,
    tx: &watch::Sender<Arc<AllowSet>>,
    state: &SharedSyncState,
) -> Result<(u32, bool), SourceError> {
    let Some(have) = serial else {
        // The SOA first: its expire tells how long the set may be held
        // without the primary (the transfer's own SOA is not kept).
        note_soa(state, soa_within(addr, zone, key, soa_timeout).await?);
        let snap = axfr(addr, zone, key).await?;
        let changed = publish(tx, state, snap.serial, snap.set, true, trigger);
        return Ok((snap.serial, changed));
    };
    let up_to_date = |serial: u32| {
        confirmed(&mut lock(state), now_ms());
        (serial, false)
    };
    if trigger.via == LearnedVia::Poll {
        lock(state).polls += 1;
        let theirs = note_soa(state, soa_within(addr, zone, key, soa_timeout).await?);
        if theirs != have && !serial_newer(theirs, have) {
            // The zone went backwards (recreated): our base is unknown to it.
            tracing::warn!(ours = have, theirs, "zone serial went backwards; transferring the whole zone");
            let snap = axfr(addr, zone, key).await?;
            let changed = publish(tx, state, snap.serial, snap.set, true, trigger);
            return Ok((snap.serial, changed));
        }
        if theirs == have {
            return Ok(up_to_date(have));
        }
    }
    let current = tx.borrow().clone();
    match ixfr(addr, zone, key, have, &current).await? {
        // A NOTIFY without a serial leads to an IXFR without an SOA query
        // first; a primary behind us (zone recreated with a lower serial)
        // answers with its own older SOA. Our set is then unknown to it:
        // take the whole zone, or entries it no longer has stay allowed.
        IxfrOutcome::UpToDate { serial } if serial != have => {
            tracing::warn!(
                ours = have,
                theirs = serial,
                "zone serial went backwards; transferring the whole zone"
            );
            let snap = axfr(addr, zone, key).await?;
            let changed = publish(tx, state, snap.serial, snap.set, true, trigger);
            Ok((snap.serial, changed))
        }
        IxfrOutcome::UpToDate { serial } => Ok(up_to_date(serial)),
        IxfrOutcome::Incremental { serial, set, .. } => {
            Ok((serial, publish(tx, state, serial, set, false, trigger)))
        }
        // The whole zone (AXFR-style IXFR): published like any set, so the
        // consumers apply only the difference.
        IxfrOutcome::Full(snap) => {
            Ok((snap.serial, publish(tx, state, snap.serial, snap.set, true, trigger)))
        }
    }
}

/// Keeps the SOA's expire; returns its serial.
fn note_soa(state: &SharedSyncState, soa: SoaInfo) -> u32 {
    lock(state).soa_expire_secs = Some(soa.expire);
    soa.serial
}

async fn follow_file(
    path: PathBuf,
    zone: String,
    serial: Option<u32>,
    tx: watch::Sender<Arc<AllowSet>>,
    state: SharedSyncState,
    cancel: CancellationToken,
) {
    // The first tick reads the file at once: the daemon does not read it
    // before (it is enforcing already, deny-protected or from pinned maps).
    let _ = serial;
    let mut last: Option<FileStamp> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let tick_at = Instant::now();
        let now = stamp(&path).await.ok();
        if now.is_some() && now == last {
            continue;
        }
        let read = tokio::select! {
            () = cancel.cancelled() => return,
            r = read_file(&path, &zone) => r,
        };
        match read {
            Ok((serial, set, st)) => {
                last = Some(st);
                publish(&tx, &state, serial, set, true, Trigger { via: LearnedVia::File, at: tick_at });
            }
            Err(e) => {
                // Remember the stamp so a broken file is reported once, not every tick.
                last = now;
                record_error(&state, &e);
            }
        }
    }
}
