//! Live learning: the resolvers' DNS packets, copied as they cross the
//! router, feed the same incremental [`Pipeline`] as `rpz-guard learn`
//! (same matching, trust chain and rules, same bounded state); each new
//! entry is enforced at once and queued for the RPZ primary.
//!
//! ```text
//!  copy ring ──► LiveLearner (one thread) ──► enforce (kernel maps / flows)
//!  (kernel ts)      │ Pipeline                 LiveAllow: entries, progress,
//!                   │                          push queue, counters
//!                   └──────────────────────────────► push::push_loop ──► BIND (UPDATE)
//! ```
//!
//! [`LiveAllow`] is what the rest of the daemon sees: a cheap lookup of the
//! entries learned live and not yet confirmed by the RPZ, a progress marker
//! ([`LiveAllow::settled`]: "every packet copied before time T has been
//! learned from"), the push queue and the counters. An entry leaves it once
//! the zone (read back by IXFR) holds its classes: from then on the RPZ
//! mirror carries it like any other entry.
use std::{
    collections::VecDeque,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{FastMap, Hints, Pipeline, rules::AlsoTrusted};
use crate::frame::LINKTYPE_ETHERNET;
use crate::policy::{Classes, Prefix};

/// Most lag samples kept for the percentiles in [`LiveStats`].
const LAG_SAMPLES: usize = 4096;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns()` reads,
/// so kernel copy times and userspace times compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// One entry learned live and not yet confirmed by the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    classes: Classes,
    /// Classes sent to the primary (an UPDATE it accepted).
    pushed: Classes,
    /// Kernel time of the packet that taught the newest class.
    ts_ns: u64,
}

/// Lag samples (nanoseconds), the newest [`LAG_SAMPLES`].
#[derive(Debug, Default)]
struct Samples(VecDeque<u64>);

impl Samples {
    fn push(&mut self, v: u64) {
        if self.0.len() == LAG_SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }

    fn percentiles(&self) -> Option<Lag> {
        if self.0.is_empty() {
            return None;
        }
        let mut v: Vec<u64> = self.0.iter().copied().collect();
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Some(Lag { samples: v.len(), p50_us: at(0.5), p99_us: at(0.99), max_us: at(1.0) })
    }
}

/// Percentiles of a lag, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// Samples the figures come from (the newest ones).
    pub samples: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// Counters of live learning, for `rpz-guard status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveStats {
    /// Copied packets handed to the pipeline.
    pub packets: u64,
    /// Resolver DNS packets the enforcement point copied to the learner
    /// (the `dns_copied` counter; filled in by the status report).
    #[serde(default)]
    pub copied: u64,
    /// Resolver DNS packets not copied: the copy ring (XDP) was full, or
    /// the learning meter or packet-in queue (OpenFlow) shed them (the
    /// `dns_copy_lost` counter; filled in by the status report).
    #[serde(default)]
    pub copy_lost: u64,
    /// DNS responses seen (parsed).
    pub responses: u64,
    /// Responses that matched a query of a resolver.
    pub matched: u64,
    /// Matched responses from servers that are not trusted (taught nothing).
    pub untrusted: u64,
    /// Responses with no matching query (forged, late, unsolicited).
    pub unmatched: u64,
    /// Entries (or classes of entries) learned live that the zone lacked.
    pub learned: u64,
    /// Learned entries the zone already had (nothing to do).
    pub already_known: u64,
    /// Entries not taken because [`LiveAllow`] was full (counted, not enforced).
    pub overflow: u64,
    /// Entries whose lifetime state (`seen`) was refreshed in the zone by
    /// a confirming answer (issue 11).
    #[serde(default)]
    pub refreshed: u64,
    /// Entries not learned (nor pushed) because a deny of the zone covers
    /// them (issue 11: a deny overrides learning).
    #[serde(default)]
    pub learn_denied: u64,
    /// Entries learned live awaiting confirmation by the zone.
    pub unconfirmed: usize,
    /// Of those, not yet accepted by the primary (the push queue).
    pub queued: usize,
    /// Records the primary accepted by UPDATE.
    pub pushed: u64,
    /// UPDATEs that failed (entries stay queued and enforced).
    pub push_errors: u64,
    /// The last push error, if the last push failed.
    pub last_push_error: Option<String>,
    /// Writes to the enforcement point that failed.
    pub enforce_errors: u64,
    /// Misses (a packet to an unknown destination) whose destination turned
    /// out to be learned live: the packet crossed the border before the
    /// entry was enforced. The AF_XDP hold path waits for the learner in
    /// that case; the drop path loses that packet (TCP retransmits).
    pub raced_misses: u64,
    /// Packets the pipeline discarded as malformed (by the pipeline's reasons).
    pub malformed: u64,
    /// Answer (kernel copy time) → entry enforced locally.
    pub lag_enforced: Option<Lag>,
    /// Answer → entry accepted by the primary.
    pub lag_pushed: Option<Lag>,
    /// OpenFlow mode: answer packet-in → the switch confirmed the learned
    /// flows (its BARRIER_REPLY); the answer is released right behind them.
    #[serde(default)]
    pub lag_flows: Option<Lag>,
}

/// The newest DNS answer that confirmed an address, for its lifetime
/// state in the zone (`seen`, `ttl`, `ev`; issue 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The classes the answer gives.
    pub classes: Classes,
    /// The answer: server, question, type.
    pub evidence: crate::rpz::meta::Evidence,
    /// The address record's TTL.
    pub ttl: u32,
    /// When (Unix seconds).
    pub at: u64,
}

impl Confirmed {
    /// The confirmation of one answer record (the learner's
    /// [`Confirmation`](super::rules::Confirmation)) seen at `at` (Unix seconds).
    pub fn from_answer(c: super::rules::Confirmation, at: u64) -> Confirmed {
        let evidence = crate::rpz::meta::Evidence {
            server: c.server,
            qname: c.qname,
            qtype: super::dns::type_name(c.qtype),
        };
        Confirmed { classes: c.classes, evidence, ttl: c.ttl, at }
    }
}

/// Live-learned entries, the learner's progress, the push queue and the
/// counters, shared by the learner thread, the pusher, the miss path and
/// the status report.
pub struct LiveAllow {
    entries: RwLock<FastMap<IpAddr, Entry>>,
    /// The newest confirmation of each address since the pusher last took them.
    confirmed: Mutex<FastMap<IpAddr, Confirmed>>,
    limit: usize,
    queue: Mutex<VecDeque<IpAddr>>,
    /// Set when the queue grew past a batch or the entries changed.
    pub(crate) queue_signal: tokio::sync::Notify,
    dirty: AtomicBool,
    progress_ns: AtomicU64,
    progress: tokio::sync::Notify,
    wake: OwnedFd,
    stats: Mutex<LiveStats>,
    /// Copies read so far (also in `stats`; this one is lock-free).
    packets: AtomicU64,
    lag_enforced: Mutex<Samples>,
    lag_pushed: Mutex<Samples>,
    lag_flows: Mutex<Samples>,
    /// Where a [`crate::events::LearnedEvent`] goes for each entry learned.
    events: std::sync::OnceLock<std::sync::Arc<crate::events::EventSink>>,
}

impl std::fmt::Debug for LiveAllow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveAllow").field("limit", &self.limit).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LiveAllow {
    /// Holds at most `limit` unconfirmed entries (further ones are counted
    /// as overflow and not taken).
    pub fn new(limit: usize) -> std::io::Result<LiveAllow> {
        // SAFETY: eventfd with valid flags; the descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just created and nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(LiveAllow {
            entries: RwLock::new(FastMap::default()),
            confirmed: Mutex::new(FastMap::default()),
            limit,
            queue: Mutex::new(VecDeque::new()),
            queue_signal: tokio::sync::Notify::new(),
            dirty: AtomicBool::new(false),
            progress_ns: AtomicU64::new(0),
            progress: tokio::sync::Notify::new(),
            wake,
            stats: Mutex::new(LiveStats::default()),
            packets: AtomicU64::new(0),
            lag_enforced: Mutex::new(Samples::default()),
            lag_pushed: Mutex::new(Samples::default()),
            lag_flows: Mutex::new(Samples::default()),
            events: std::sync::OnceLock::new(),
        })
    }

    /// Writes a [`crate::events::LearnedEvent`] to `sink` for every entry
    /// learned from now on (the first sink given stays).
    pub fn report_to(&self, sink: std::sync::Arc<crate::events::EventSink>) {
        let _ = self.events.set(sink);
    }

    /// Classes learned live for `ip` and not yet confirmed by the zone
    /// (`Classes::NONE` when none): the miss path checks this before it
    /// asks the RPZ.
    pub fn lookup(&self, ip: IpAddr) -> Classes {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).get(&ip).map_or(Classes::NONE, |e| e.classes)
    }

    /// [`LiveAllow::lookup`] for the miss path, counting a hit as a raced
    /// miss (see [`LiveStats::raced_misses`]).
    pub fn note_miss(&self, ip: IpAddr) -> Classes {
        let c = self.lookup(ip);
        if !c.is_empty() {
            lock(&self.stats).raced_misses += 1;
        }
        c
    }

    /// Waits until the learner has processed every packet copied at or
    /// before `seen_ns` (`CLOCK_MONOTONIC`, see [`monotonic_ns`]), at most
    /// `max_wait`; true when it has. A client cannot use an answer before
    /// the answer crossed the router, so after this a miss for a freshly
    /// resolved destination finds the entry in [`LiveAllow::lookup`].
    pub async fn settled(&self, seen_ns: u64, max_wait: Duration) -> bool {
        if self.progress_ns.load(Ordering::Acquire) >= seen_ns {
            return true;
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.progress_ns.load(Ordering::Acquire) >= seen_ns {
                return true;
            }
            self.wake_learner();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.progress_ns.load(Ordering::Acquire) >= seen_ns;
            }
        }
    }

    /// The learner's progress: every packet copied before this time
    /// (`CLOCK_MONOTONIC` ns) has been processed.
    pub fn progress_ns(&self) -> u64 {
        self.progress_ns.load(Ordering::Acquire)
    }

    /// Descriptor the learner polls besides its packet source: readable
    /// when someone waits in [`LiveAllow::settled`].
    pub fn wake_fd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    fn wake_learner(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd; a full
        // counter (EAGAIN) means a wake-up is pending anyway.
        unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Clears pending wake-ups (the learner, after it woke).
    pub fn clear_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut v).cast(), 8) };
    }

    /// Publishes progress (see [`LiveAllow::progress_ns`]) and wakes waiters.
    pub fn publish_progress(&self, ns: u64) {
        self.progress_ns.fetch_max(ns, Ordering::AcqRel);
        self.progress.notify_waiters();
    }

    /// Takes `classes` for `ip` (learned at kernel time `ts_ns`); returns
    /// the live classes now held when they grew, `None` when nothing
    /// changed or the set is full (counted).
    pub fn insert(&self, ip: IpAddr, classes: Classes, ts_ns: u64) -> Option<Classes> {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let full = map.len() >= self.limit;
        let e = match map.get_mut(&ip) {
            Some(e) => e,
            None if full => {
                drop(map);
                lock(&self.stats).overflow += 1;
                return None;
            }
            None => map.entry(ip).or_insert(Entry { classes: Classes::NONE, pushed: Classes::NONE, ts_ns }),
        };
        if e.classes.contains(classes) {
            return None;
        }
        e.classes = e.classes.union(classes);
        e.ts_ns = ts_ns;
        let now = e.classes;
        let unconfirmed = map.len();
        drop(map);
        let queued = {
            let mut q = lock(&self.queue);
            q.push_back(ip);
            q.len()
        };
        {
            let mut st = lock(&self.stats);
            st.unconfirmed = unconfirmed;
            st.queued = queued;
        }
        self.dirty.store(true, Ordering::Release);
        self.queue_signal.notify_one();
        Some(now)
    }

    /// Up to `max` queued entries whose classes the primary has not
    /// accepted yet, oldest first (they stay queued until
    /// [`LiveAllow::mark_pushed`]).
    pub fn next_batch(&self, max: usize) -> Vec<(Prefix, Classes)> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut q = lock(&self.queue);
        // Drop stale queue slots: confirmed, or fully pushed already.
        q.retain(|ip| map.get(ip).is_some_and(|e| !e.pushed.contains(e.classes)));
        let mut seen = std::collections::HashSet::new();
        q.iter()
            .filter(|ip| seen.insert(**ip))
            .take(max)
            .filter_map(|ip| map.get(ip).map(|e| (Prefix::host(*ip), e.classes.without(e.pushed))))
            .collect()
    }

    /// Records that the primary accepted `batch` (from
    /// [`LiveAllow::next_batch`]) at `now_ns`.
    pub fn mark_pushed(&self, batch: &[(Prefix, Classes)], now_ns: u64) {
        let mut records = 0u64;
        {
            let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
            let mut lag = lock(&self.lag_pushed);
            for (p, c) in batch {
                if let Some(e) = map.get_mut(&p.addr()) {
                    e.pushed = e.pushed.union(*c);
                    lag.push(now_ns.saturating_sub(e.ts_ns));
                }
                records += u64::from(c.contains(Classes::DNS)) + u64::from(c.contains(Classes::SMTP));
            }
        }
        let queued = {
            let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
            let mut q = lock(&self.queue);
            q.retain(|ip| map.get(ip).is_some_and(|e| !e.pushed.contains(e.classes)));
            q.len()
        };
        let mut st = lock(&self.stats);
        st.pushed += records;
        st.queued = queued;
        st.last_push_error = None;
    }

    /// Counts a failed push.
    pub fn push_failed(&self, why: String) {
        let mut st = lock(&self.stats);
        st.push_errors += 1;
        st.last_push_error = Some(why);
    }

    /// Forgets entries whose classes the zone now holds (`zone(ip)`); they
    /// are the RPZ mirror's from now on. Returns how many went.
    pub fn prune_confirmed(&self, zone: impl Fn(IpAddr) -> Classes) -> usize {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|ip, e| !zone(*ip).contains(e.classes));
        let gone = before - map.len();
        let unconfirmed = map.len();
        drop(map);
        if gone > 0 {
            self.dirty.store(true, Ordering::Release);
            let mut st = lock(&self.stats);
            st.unconfirmed = unconfirmed;
        }
        gone
    }

    /// Every unconfirmed entry (for the journal and the RPZ mirror).
    pub fn entries(&self) -> Vec<(IpAddr, Classes)> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(ip, e)| (*ip, e.classes)).collect()
    }

    /// True (once) when the entries changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Widens an RPZ mirror diff so it never takes away live classes: an
    /// upsert keeps them, a removal of a live entry becomes an upsert to
    /// the live classes.
    pub fn merge_into_diff(&self, diff: &mut crate::policy::AllowDiff) {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return;
        }
        for (p, c) in &mut diff.upsert {
            if p.is_host()
                && !c.is_deny()
                && let Some(e) = map.get(&p.addr())
            {
                *c = c.union(e.classes);
            }
        }
        let mut kept = Vec::new();
        diff.remove.retain(|p| match map.get(&p.addr()).filter(|_| p.is_host()) {
            Some(e) => {
                kept.push((*p, e.classes));
                false
            }
            None => true,
        });
        diff.upsert.extend(kept);
    }

    /// The most entries (and waiting confirmations) held.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts lifetime records (TXT) refreshed in the zone.
    pub fn refreshed(&self, n: usize) {
        lock(&self.stats).refreshed += n as u64;
    }

    /// Records that a DNS answer confirmed `ip` (the newest one wins); at
    /// most `limit` addresses wait (further ones are dropped: the next
    /// answer for them confirms them again).
    pub fn confirm(&self, ip: IpAddr, c: Confirmed) {
        let mut m = lock(&self.confirmed);
        if m.len() < self.limit || m.contains_key(&ip) {
            m.insert(ip, c);
        }
    }

    /// The confirmations recorded since the last call.
    pub fn take_confirmed(&self) -> FastMap<IpAddr, Confirmed> {
        std::mem::take(&mut *lock(&self.confirmed))
    }

    /// Forgets the live entries a deny now covers (`denied(ip)`), and makes
    /// `diff` take their host entries out of the enforcement point unless
    /// it writes them already (a deny of exactly that host): they were
    /// written there directly, so no zone diff knows them. Counted as
    /// `learn_denied`.
    pub fn drop_denied(&self, denied: impl Fn(IpAddr) -> bool, diff: &mut crate::policy::AllowDiff) {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return;
        }
        let gone: Vec<IpAddr> = map.keys().copied().filter(|ip| denied(*ip)).collect();
        if gone.is_empty() {
            return;
        }
        for ip in &gone {
            map.remove(ip);
            let host = Prefix::host(*ip);
            if !diff.upsert.iter().any(|(p, _)| *p == host) && !diff.remove.contains(&host) {
                diff.remove.push(host);
            }
        }
        let unconfirmed = map.len();
        drop(map);
        self.dirty.store(true, Ordering::Release);
        let mut st = lock(&self.stats);
        st.unconfirmed = unconfirmed;
        st.learn_denied += gone.len() as u64;
    }

    /// Adds to the counters (the learner, after each batch of packets).
    fn update_stats(&self, f: impl FnOnce(&mut LiveStats)) {
        f(&mut lock(&self.stats));
    }

    /// Records one answer → enforced lag.
    fn enforced_after(&self, ns: u64) {
        lock(&self.lag_enforced).push(ns);
    }

    /// Records one answer → flows confirmed by the switch lag (OpenFlow).
    pub fn flows_confirmed_after(&self, ns: u64) {
        lock(&self.lag_flows).push(ns);
    }

    /// Copies the learner has read so far (cheap: no lock, no percentiles).
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Acquire)
    }

    /// The counters now (with lag percentiles: sorts the samples).
    pub fn stats(&self) -> LiveStats {
        let mut s = lock(&self.stats).clone();
        s.lag_enforced = lock(&self.lag_enforced).percentiles();
        s.lag_pushed = lock(&self.lag_pushed).percentiles();
        s.lag_flows = lock(&self.lag_flows).percentiles();
        s
    }
}

/// Writes an entry to the enforcement point (kernel maps, or flows):
/// `(address, all classes it must now pass with)`.
pub type Enforce = Box<dyn FnMut(IpAddr, Classes) -> Result<(), String> + Send>;

/// The classes the zone (the RPZ mirror) holds for an address;
/// [`Classes::DENY`] when a deny covers it
/// ([`crate::policy::AllowSet::zone_classes`]).
pub type ZoneLookup = Box<dyn Fn(IpAddr) -> Classes + Send + Sync>;

/// The learner side of live learning: one [`Pipeline`] (new-entry
/// recording on), fed packet by packet; every new entry the zone lacks is
/// enforced at once and queued for the primary.
pub struct LiveLearner {
    pipeline: Pipeline,
    live: std::sync::Arc<LiveAllow>,
    zone: std::sync::Arc<ZoneLookup>,
    enforce: Enforce,
    /// The hints' addresses: the pipeline starts with them as entries.
    hints: std::collections::HashSet<IpAddr>,
    /// Counters already reported to `live` (the pipeline's are cumulative).
    reported: (u64, u64, u64, u64, u64, u64),
    /// Reused buffers for what each packet taught (no allocation per packet).
    new_buf: Vec<(Prefix, Classes)>,
    confirmed_buf: Vec<super::rules::Confirmation>,
}

impl std::fmt::Debug for LiveLearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveLearner").field("live", &self.live).finish_non_exhaustive()
    }
}

impl LiveLearner {
    /// A learner trusting `hints` and, with `trust_zone`, every `DNS` entry
    /// of the zone; matching within `window_ns`.
    pub fn new(
        hints: &Hints,
        window_ns: u64,
        trust_zone: bool,
        live: std::sync::Arc<LiveAllow>,
        zone: ZoneLookup,
        enforce: Enforce,
    ) -> LiveLearner {
        let mut pipeline = Pipeline::new(hints, window_ns);
        let zone = std::sync::Arc::new(zone);
        pipeline.learner_mut().record_new_entries(true);
        pipeline.learner_mut().record_confirmations(true);
        if trust_zone {
            let z = zone.clone();
            pipeline.learner_mut().also_trust(AlsoTrusted(Box::new(move |ip| z(ip).contains(Classes::DNS))));
        }
        let hints = hints.addrs.iter().copied().collect();
        LiveLearner {
            pipeline,
            live,
            zone,
            enforce,
            hints,
            reported: (0, 0, 0, 0, 0, 0),
            new_buf: Vec::new(),
            confirmed_buf: Vec::new(),
        }
    }

    /// Feeds one Ethernet frame copied at kernel time `ts_ns`; entries it
    /// teaches are enforced before this returns. Returns them, each with
    /// every class it must now pass with (what was given to the enforce
    /// function; empty for almost every packet, without allocating).
    pub fn packet(&mut self, ts_ns: u64, frame: &[u8]) -> Vec<(IpAddr, Classes)> {
        self.pipeline.packet(ts_ns, LINKTYPE_ETHERNET, frame);
        let (mut new, mut confirmations) =
            (std::mem::take(&mut self.new_buf), std::mem::take(&mut self.confirmed_buf));
        self.pipeline.swap_recorded(&mut new, &mut confirmations);
        let mut taught = Vec::new();
        if confirmations.is_empty() {
            // Every new entry comes with a confirmation.
            (self.new_buf, self.confirmed_buf) = (new, confirmations);
            return taught;
        }
        // The pipeline reports an address only the first time it learns it.
        // One it knew whose entry the zone no longer holds (aged out, or a
        // deny revoked since) is learned again; one a deny now covers is
        // counted below.
        for c in &confirmations {
            let p = Prefix::host(c.ip);
            if new.iter().any(|(q, k)| *q == p && k.contains(c.classes)) {
                continue;
            }
            if self.hints.contains(&c.ip) {
                // Trusted by configuration, never learned (nor pushed).
                continue;
            }
            let zone = (self.zone)(c.ip);
            if zone.is_deny() || !(zone.contains(c.classes) || self.live.lookup(c.ip).contains(c.classes)) {
                new.push((p, c.classes));
            }
        }
        // Confirmations go to the pusher before the entries: an entry it
        // takes from the queue always finds the answer that taught it (its
        // TXT carries the evidence; issue 11).
        self.confirm(&confirmations);
        for &(p, c) in &new {
            let ip = p.addr();
            let zone = (self.zone)(ip);
            if zone.is_deny() {
                // A deny overrides learning: neither enforced nor pushed.
                self.live.update_stats(|s| s.learn_denied += 1);
                continue;
            }
            if zone.contains(c) {
                self.live.update_stats(|s| s.already_known += 1);
                continue;
            }
            let Some(live) = self.live.insert(ip, c, ts_ns) else { continue };
            taught.push((ip, live.union(zone)));
            let res = (self.enforce)(ip, live.union(zone));
            let done = monotonic_ns();
            let lag_ns = done.saturating_sub(ts_ns);
            match res {
                Ok(()) => {
                    self.live.enforced_after(lag_ns);
                    tracing::debug!(%ip, classes = %live, lag_us = lag_ns / 1000, "learned live");
                }
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "enforcing a live-learned entry failed");
                    self.live.update_stats(|s| s.enforce_errors += 1);
                }
            }
            self.live.update_stats(|s| s.learned += 1);
            // The answer that taught it: the newest confirmation of `ip`.
            if let Some(sink) = self.live.events.get()
                && let Some(by) = confirmations.iter().rev().find(|k| k.ip == ip)
            {
                sink.record_learned(&learned_event(ip, c, by, ts_ns, done));
            }
        }
        (self.new_buf, self.confirmed_buf) = (new, confirmations);
        taught
    }

    /// Hands the answers that confirmed addresses to [`LiveAllow::confirm`]
    /// (denied addresses are left out): the pusher refreshes their
    /// lifetime state in the zone.
    fn confirm(&self, confirmations: &[super::rules::Confirmation]) {
        let now = crate::rpz::meta::unix_now();
        for c in confirmations {
            if (self.zone)(c.ip).is_deny() {
                continue;
            }
            self.live.confirm(c.ip, Confirmed::from_answer(c.clone(), now));
        }
    }

    /// Ends a batch: publishes progress `drained_from_ns` (the time taken
    /// before the batch was read) and the pipeline's counters.
    pub fn batch_done(&mut self, drained_from_ns: u64) {
        self.live.publish_progress(drained_from_ns);
        let s = self.pipeline.summary();
        let malformed: u64 = s.malformed.values().sum();
        let now =
            (s.packets, s.responses, s.matched, s.untrusted_responses, s.unmatched_responses, malformed);
        if now != self.reported {
            self.reported = now;
            self.live.packets.store(now.0, Ordering::Release);
            self.live.update_stats(|st| {
                (st.packets, st.responses, st.matched, st.untrusted, st.unmatched, st.malformed) = now;
            });
        }
    }

    /// The shared state.
    pub fn live(&self) -> &std::sync::Arc<LiveAllow> {
        &self.live
    }
}

/// The event of one entry learned from the answer `by` (kernel time
/// `ts_ns`), enforced at `done_ns` (both `CLOCK_MONOTONIC`).
fn learned_event(
    ip: IpAddr,
    classes: Classes,
    by: &super::rules::Confirmation,
    ts_ns: u64,
    done_ns: u64,
) -> crate::events::LearnedEvent {
    use crate::policy::Service;
    let lag_ns = done_ns.saturating_sub(ts_ns);
    let classes = [(Classes::DNS, Service::Dns), (Classes::SMTP, Service::Smtp)]
        .into_iter()
        .filter(|(c, _)| classes.contains(*c))
        .map(|(_, s)| s)
        .collect();
    crate::events::LearnedEvent {
        // The wall clock of the answer: now, less the time since it was copied.
        time_ms: crate::events::now_ms().saturating_sub(monotonic_ns().saturating_sub(ts_ns) / 1_000_000),
        addr: ip,
        classes,
        qname: by.qname.clone(),
        qtype: super::dns::type_name(by.qtype),
        server: by.server,
        lag_us: lag_ns / 1000,
    }
}

/// The learner thread's loop (XDP mode): drains the kernel's copy ring
/// into `learner`, publishes progress, sleeps in poll(2) on the ring and
/// the wake-up eventfd of [`LiveAllow::settled`]; returns once `stop` is set
/// (seen within 100 ms).
pub fn serve_ring(
    mut ring: aya::maps::RingBuf<aya::maps::MapData>,
    mut learner: LiveLearner,
    stop: &std::sync::atomic::AtomicBool,
) {
    let hdr = std::mem::size_of::<guard_common::DnsCopyHeader>();
    let ring_fd = ring.as_raw_fd();
    let wake_fd = learner.live().wake_fd();
    while !stop.load(Ordering::Acquire) {
        // Everything submitted before this instant is readable now, so
        // once the ring reads empty it has all been learned from.
        let from = monotonic_ns();
        learner.live().clear_wake();
        while let Some(item) = ring.next() {
            if item.len() < hdr {
                continue;
            }
            // SAFETY: the kernel wrote a whole header (size checked above); read unaligned.
            let h: guard_common::DnsCopyHeader =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<guard_common::DnsCopyHeader>()) };
            learner.packet(h.ts_ns, &item[hdr..]);
        }
        learner.batch_done(from);
        let mut fds = [
            libc::pollfd { fd: ring_fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: wake_fd, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfd structs; a bounded timeout so `stop` is seen.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn insert_queue_push_confirm() {
        let live = LiveAllow::new(2).expect("eventfd");
        assert_eq!(live.insert(ip("192.0.2.1"), Classes::DNS, 10), Some(Classes::DNS));
        assert_eq!(live.insert(ip("192.0.2.1"), Classes::DNS, 11), None, "nothing new");
        assert_eq!(live.insert(ip("192.0.2.1"), Classes::SMTP, 12), Some(Classes::DNS.union(Classes::SMTP)));
        assert_eq!(live.insert(ip("192.0.2.2"), Classes::SMTP, 13), Some(Classes::SMTP));
        assert_eq!(live.insert(ip("192.0.2.3"), Classes::SMTP, 14), None, "full");
        assert_eq!(live.stats().overflow, 1);
        let batch = live.next_batch(10);
        assert_eq!(batch.len(), 2, "{batch:?}");
        live.mark_pushed(&batch[..1], 100);
        assert_eq!(live.next_batch(10).len(), 1);
        let st = live.stats();
        assert_eq!((st.queued, st.unconfirmed), (1, 2));
        assert_eq!(
            live.prune_confirmed(|a| if a == ip("192.0.2.1") { Classes::DNS } else { Classes::NONE }),
            0
        );
        assert_eq!(
            live.prune_confirmed(|a| if a == ip("192.0.2.1") {
                Classes::DNS.union(Classes::SMTP)
            } else {
                Classes::NONE
            }),
            1
        );
        assert_eq!(live.lookup(ip("192.0.2.1")), Classes::NONE);
        assert_eq!(live.lookup(ip("192.0.2.2")), Classes::SMTP);
    }

    #[test]
    fn merged_diff_keeps_live_classes() {
        let live = LiveAllow::new(10).expect("eventfd");
        live.insert(ip("192.0.2.1"), Classes::SMTP, 1);
        let mut diff = crate::policy::AllowDiff {
            upsert: vec![(Prefix::host(ip("192.0.2.1")), Classes::DNS)],
            remove: vec![Prefix::host(ip("192.0.2.9"))],
        };
        live.merge_into_diff(&mut diff);
        assert_eq!(diff.upsert, vec![(Prefix::host(ip("192.0.2.1")), Classes::DNS.union(Classes::SMTP))]);
        let mut diff =
            crate::policy::AllowDiff { upsert: vec![], remove: vec![Prefix::host(ip("192.0.2.1"))] };
        live.merge_into_diff(&mut diff);
        assert!(diff.remove.is_empty());
        assert_eq!(diff.upsert, vec![(Prefix::host(ip("192.0.2.1")), Classes::SMTP)]);
    }

    #[test]
    fn denied_live_entries_leave_the_maps() {
        let live = LiveAllow::new(10).expect("eventfd");
        live.insert(ip("192.0.2.1"), Classes::SMTP, 1);
        live.insert(ip("192.0.2.2"), Classes::SMTP, 1);
        live.insert(ip("192.0.2.3"), Classes::DNS, 1);
        let deny = Prefix::host(ip("192.0.2.2"));
        // The zone now denies 192.0.2.0/31 (.1) and exactly .2 (an upsert to DENY).
        let mut diff = crate::policy::AllowDiff { upsert: vec![(deny, Classes::DENY)], remove: vec![] };
        live.drop_denied(|a| a == ip("192.0.2.1") || a == ip("192.0.2.2"), &mut diff);
        live.merge_into_diff(&mut diff);
        assert_eq!(diff.upsert, vec![(deny, Classes::DENY)], "a deny is never widened by live classes");
        assert_eq!(diff.remove, vec![Prefix::host(ip("192.0.2.1"))]);
        assert_eq!(live.lookup(ip("192.0.2.1")), Classes::NONE);
        assert_eq!(live.lookup(ip("192.0.2.3")), Classes::DNS);
        assert_eq!(live.stats().learn_denied, 2);
    }

    #[tokio::test]
    async fn settled_waits_for_progress_or_times_out() {
        let live = std::sync::Arc::new(LiveAllow::new(10).expect("eventfd"));
        live.publish_progress(100);
        assert!(live.settled(50, Duration::ZERO).await);
        assert!(!live.settled(200, Duration::from_millis(5)).await);
        let l = live.clone();
        let waiter = tokio::spawn(async move { l.settled(300, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        live.publish_progress(300);
        assert!(waiter.await.expect("join"));
    }
}
