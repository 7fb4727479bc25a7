//! The miss path: decide a destination the mirrored allow set does not know
//! by asking the RPZ, with a verdict cache (positive and negative, with TTL)
//! and one in-flight question per destination however many packets wait.
//!
//! The transport of the question (BIND query, zone lookup) sits behind
//! [`RpzSource`] so XDP and OpenFlow modes share this one implementation.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::policy::{AllowSet, Classes, Service};

/// Error of one RPZ question.
#[derive(Debug, Clone, thiserror::Error)]
#[error("RPZ lookup of {ip} failed: {why}")]
pub struct LookupError {
    /// The destination asked about.
    pub ip: IpAddr,
    /// What went wrong (timeout, SERVFAIL, ...).
    pub why: String,
}

/// A boxed future, so [`RpzSource`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can tell the classes the RPZ holds for one address.
pub trait RpzSource: Send + Sync {
    /// Classes for `ip` (`Classes::NONE` when not registered).
    fn classes(&self, ip: IpAddr) -> BoxFuture<'_, Result<Classes, LookupError>>;
}

/// Answers from an in-memory allow set (the zone-file source, or tests).
pub struct SetSource(pub watch::Receiver<Arc<AllowSet>>);

impl RpzSource for SetSource {
    fn classes(&self, ip: IpAddr) -> BoxFuture<'_, Result<Classes, LookupError>> {
        let c = self.0.borrow().lookup(ip);
        Box::pin(async move { Ok(c) })
    }
}

/// Cache lifetimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTtl {
    /// How long a registered answer is trusted.
    pub positive: Duration,
    /// How long a not-registered answer is trusted (short: an UPDATE may add it).
    pub negative: Duration,
    /// How long a failed lookup is remembered as a deny before asking again.
    pub error: Duration,
}

impl Default for CacheTtl {
    fn default() -> Self {
        CacheTtl {
            positive: Duration::from_secs(60),
            negative: Duration::from_secs(5),
            error: Duration::from_secs(1),
        }
    }
}

type Waiter = watch::Receiver<Option<Classes>>;

/// Cached verdicts plus in-flight questions.
pub struct MissResolver {
    source: Arc<dyn RpzSource>,
    ttl: CacheTtl,
    state: Mutex<State>,
    /// Bumped by every invalidation: an answer to a question asked before
    /// an invalidation may predate a revocation, so it is not cached.
    generation: std::sync::atomic::AtomicU64,
    /// How long each question to the source took (failed ones included).
    latency: crate::metrics::Histogram,
}

#[derive(Default)]
struct State {
    cache: HashMap<IpAddr, (Classes, Instant)>,
    inflight: HashMap<IpAddr, Waiter>,
    lookups: u64,
    coalesced: u64,
    errors: u64,
}

/// Counters of the miss path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MissStats {
    /// Questions sent to the source.
    pub lookups: u64,
    /// Callers that waited on another caller's question.
    pub coalesced: u64,
    /// Failed questions (treated as deny, fail closed).
    pub errors: u64,
    /// Entries in the userspace cache.
    pub cached: usize,
    /// Questions finished (answered or failed); `lookups` also counts those
    /// still out.
    #[serde(default)]
    pub finished: u64,
    /// Time the finished questions took together, µs (divided by
    /// `finished`: the mean time to ask the RPZ and hear back).
    #[serde(default)]
    pub lookup_us_total: u64,
}

/// Largest userspace cache before expired entries are swept.
const MAX_CACHE: usize = 200_000;

impl MissResolver {
    /// A resolver over `source`.
    pub fn new(source: Arc<dyn RpzSource>, ttl: CacheTtl) -> Self {
        MissResolver {
            source,
            ttl,
            state: Mutex::new(State::default()),
            generation: Default::default(),
            latency: Default::default(),
        }
    }

    /// The cache lifetimes in use.
    pub fn ttl(&self) -> CacheTtl {
        self.ttl
    }

    /// The classes of `ip`, from the cache or one question to the source.
    /// A failed question yields `Classes::NONE` (fail closed) for `ttl.error`.
    /// Returns the classes and how long the answer may be cached.
    pub async fn classes(&self, ip: IpAddr) -> (Classes, Duration) {
        enum Next {
            Wait(Waiter),
            Ask(watch::Sender<Option<Classes>>),
        }
        let now = Instant::now();
        let next = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((c, exp)) = st.cache.get(&ip).copied() {
                if exp > now {
                    return (c, exp - now);
                }
                st.cache.remove(&ip);
            }
            // A sender dropped by a cancelled asker leaves a dead entry: ask again.
            if let Some(w) = st.inflight.get(&ip).cloned().filter(|w| w.has_changed().is_ok()) {
                st.coalesced += 1;
                Next::Wait(w)
            } else {
                let (tx, rx) = watch::channel(None);
                st.inflight.insert(ip, rx);
                st.lookups += 1;
                Next::Ask(tx)
            }
        };
        match next {
            Next::Ask(tx) => self.ask(ip, tx).await,
            Next::Wait(mut w) => match w.wait_for(Option::is_some).await.map(|v| *v) {
                Ok(Some(c)) => (c, if c.is_empty() { self.ttl.negative } else { self.ttl.positive }),
                _ => (Classes::NONE, self.ttl.error),
            },
        }
    }

    /// Durations of the questions asked so far.
    pub fn latency(&self) -> crate::metrics::HistogramSnapshot {
        self.latency.snapshot()
    }

    /// The invalidation generation. A caller that caches an answer
    /// elsewhere (the kernel) reads it before asking and writes only if it is
    /// unchanged afterwards, under the same lock as the invalidation.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn ask(&self, ip: IpAddr, tx: watch::Sender<Option<Classes>>) -> (Classes, Duration) {
        let asked_at = self.generation();
        let started = Instant::now();
        let res = self.source.classes(ip).await;
        self.latency.observe(started.elapsed());
        let (classes, ttl) = match &res {
            Ok(c) if c.is_empty() => (*c, self.ttl.negative),
            Ok(c) => (*c, self.ttl.positive),
            Err(e) => {
                tracing::warn!(%ip, error = %e, "RPZ lookup failed; denying (fail closed)");
                (Classes::NONE, self.ttl.error)
            }
        };
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.inflight.remove(&ip);
            if res.is_err() {
                st.errors += 1;
            }
            if st.cache.len() >= MAX_CACHE {
                let now = Instant::now();
                st.cache.retain(|_, (_, exp)| *exp > now);
                if st.cache.len() >= MAX_CACHE {
                    st.cache.clear();
                }
            }
            if self.generation() == asked_at {
                st.cache.insert(ip, (classes, Instant::now() + ttl));
            }
        }
        tx.send_replace(Some(classes));
        (classes, ttl)
    }

    /// Forgets cached verdicts (after the allow set changed, so that a
    /// revoked or newly added entry is not masked by an old answer).
    pub fn invalidate(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for ip in ips {
            st.cache.remove(&ip);
        }
    }

    /// Forgets every cached verdict.
    pub fn clear(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        st.cache.clear();
    }

    /// The cached verdict for `ip` and the time it has left, if one is
    /// cached and fresh (`rpz-guard explain`; asks nothing).
    pub fn cached(&self, ip: IpAddr) -> Option<(Classes, Duration)> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (c, exp) = st.cache.get(&ip).copied()?;
        exp.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).map(|d| (c, d))
    }

    /// Counters for status and metrics.
    pub fn stats(&self) -> MissStats {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        MissStats {
            lookups: st.lookups,
            coalesced: st.coalesced,
            errors: st.errors,
            cached: st.cache.len(),
            finished: self.latency.count(),
            lookup_us_total: self.latency.sum_ns() / 1_000,
        }
    }
}

/// The live learner's view, as the miss path needs it (issue 9 implements
/// it; see `/work/notes/contract-live-afxdp.md`): entries learned from DNS
/// answers seen a moment ago, not yet in the kernel maps or the RPZ.
pub trait LiveView: Send + Sync {
    /// Classes the live learner holds for `ip`.
    fn lookup(&self, ip: IpAddr) -> Classes;
    /// As [`LiveView::lookup`], once per decided miss: a hit is a miss that
    /// raced the learner (counted by it).
    fn note_miss(&self, ip: IpAddr) -> Classes {
        self.lookup(ip)
    }
    /// Returns once the learner has processed every DNS packet the kernel
    /// copied at or before `seen_ns` (`CLOCK_MONOTONIC` ns), or after `max_wait`.
    fn settled(&self, seen_ns: u64, max_wait: Duration) -> BoxFuture<'_, ()>;
}

impl LiveView for crate::learn::live::LiveAllow {
    fn lookup(&self, ip: IpAddr) -> Classes {
        crate::learn::live::LiveAllow::lookup(self, ip)
    }

    fn note_miss(&self, ip: IpAddr) -> Classes {
        crate::learn::live::LiveAllow::note_miss(self, ip)
    }

    fn settled(&self, seen_ns: u64, max_wait: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            crate::learn::live::LiveAllow::settled(self, seen_ns, max_wait).await;
        })
    }
}

/// How long a miss waits for the live learner to catch up (contract with
/// issue 9: at most 2 ms).
pub const DEFAULT_LIVE_WAIT: Duration = Duration::from_millis(2);

/// No live learner: nothing learned, nothing to wait for.
pub struct NoLive;

impl LiveView for NoLive {
    fn lookup(&self, _ip: IpAddr) -> Classes {
        Classes::NONE
    }

    fn settled(&self, _seen_ns: u64, _max_wait: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Where a miss decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    /// The allow set in memory (RPZ mirror or live-learned entries).
    Memory,
    /// A question to the RPZ (or its userspace cache).
    Rpz,
}

/// A miss decision: the destination's classes and how long to cache them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Classes of the destination (`NONE`: not registered, or the question failed).
    pub classes: Classes,
    /// How long the kernel may cache it.
    pub ttl: Duration,
    /// [`MissResolver::generation`] read before deciding: a cache write is
    /// valid only while it is unchanged.
    pub generation: u64,
    /// Where it came from.
    pub by: DecidedBy,
}

/// The miss decision shared by every miss transport (ring buffer, AF_XDP):
/// 1. the allow set in memory (RPZ mirror + live-learned entries) allows
///    it: done, without I/O;
/// 2. otherwise let the live learner catch up to the moment the miss was
///    seen (bounded), and look again;
/// 3. otherwise ask the RPZ through the [`MissResolver`] (one question per
///    destination however many packets wait; failures deny).
///
/// Only an allow settles in memory: a destination absent from the mirror
/// may have been registered since the last transfer, which is the case this
/// path exists for.
pub struct MissDecider {
    allow: watch::Receiver<Arc<AllowSet>>,
    live: Arc<dyn LiveView>,
    resolver: Arc<MissResolver>,
    live_wait: Duration,
}

impl MissDecider {
    /// A decider over the mirrored allow set, the live learner and the resolver.
    pub fn new(
        allow: watch::Receiver<Arc<AllowSet>>,
        live: Arc<dyn LiveView>,
        resolver: Arc<MissResolver>,
        live_wait: Duration,
    ) -> Self {
        MissDecider { allow, live, resolver, live_wait }
    }

    /// The resolver (for its generation and counters).
    pub fn resolver(&self) -> &Arc<MissResolver> {
        &self.resolver
    }

    fn memory(&self, ip: IpAddr, service: Service, generation: u64) -> Option<Decision> {
        let classes = {
            let set = self.allow.borrow();
            // A deny beats live entries too.
            if set.is_denied(ip) {
                return None;
            }
            set.lookup(ip).union(self.live.lookup(ip))
        };
        service.allows(classes).then(|| Decision {
            classes,
            ttl: self.resolver.ttl().positive,
            generation,
            by: DecidedBy::Memory,
        })
    }

    /// Step 1 only: `Some` when memory allows `service` toward `ip`.
    pub fn in_memory(&self, ip: IpAddr, service: Service) -> Option<Decision> {
        let d = self.memory(ip, service, self.resolver.generation())?;
        self.live.note_miss(ip);
        Some(d)
    }

    /// The whole decision for a miss seen at `seen_ns` (`CLOCK_MONOTONIC`
    /// ns; any time read after the kernel saw the packet will do).
    pub async fn decide(&self, ip: IpAddr, service: Service, seen_ns: u64) -> Decision {
        let generation = self.resolver.generation();
        if let Some(d) = self.memory(ip, service, generation) {
            self.live.note_miss(ip);
            return d;
        }
        self.live.settled(seen_ns, self.live_wait).await;
        if let Some(d) = self.memory(ip, service, generation) {
            self.live.note_miss(ip);
            return d;
        }
        let (classes, ttl) = self.resolver.classes(ip).await;
        // Learned live while the RPZ was asked: the packet beat the learner.
        let classes = classes.union(self.live.note_miss(ip));
        Decision { classes, ttl, generation, by: DecidedBy::Rpz }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::policy::Prefix;

    struct Slow {
        calls: AtomicU64,
        fail: bool,
    }

    impl RpzSource for Slow {
        fn classes(&self, ip: IpAddr) -> BoxFuture<'_, Result<Classes, LookupError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if fail { Err(LookupError { ip, why: "timeout".into() }) } else { Ok(Classes::SMTP) }
            })
        }
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_question() {
        let src = Arc::new(Slow { calls: AtomicU64::new(0), fail: false });
        let r = Arc::new(MissResolver::new(src.clone(), CacheTtl::default()));
        let ip: IpAddr = "198.51.100.25".parse().expect("ip");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.classes(ip).await.0 })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task"), Classes::SMTP);
        }
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        // The one question took the source's 50 ms (status: its mean answer time).
        let st = r.stats();
        assert_eq!((st.lookups, st.finished), (1, 1));
        assert!((50_000..1_000_000).contains(&st.lookup_us_total), "{st:?}");
        // Cached now: no new question.
        assert_eq!(r.classes(ip).await.0, Classes::SMTP);
        assert!(
            r.cached(ip).is_some_and(|(c, left)| c == Classes::SMTP && left <= CacheTtl::default().positive)
        );
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        r.invalidate([ip]);
        assert_eq!(r.classes(ip).await.0, Classes::SMTP);
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_deny() {
        let src = Arc::new(Slow { calls: AtomicU64::new(0), fail: true });
        let r = MissResolver::new(src, CacheTtl::default());
        let (c, ttl) = r.classes("198.51.100.25".parse().expect("ip")).await;
        assert_eq!(c, Classes::NONE);
        assert_eq!(ttl, CacheTtl::default().error);
        assert_eq!(r.stats().errors, 1);
    }

    #[tokio::test]
    async fn set_source_answers_from_the_set() {
        let set: AllowSet =
            [("198.51.100.0/24".parse::<Prefix>().expect("p"), Classes::DNS)].into_iter().collect();
        let (_tx, rx) = watch::channel(Arc::new(set));
        let r = MissResolver::new(Arc::new(SetSource(rx)), CacheTtl::default());
        assert_eq!(r.classes("198.51.100.9".parse().expect("ip")).await.0, Classes::DNS);
        assert_eq!(r.classes("203.0.113.9".parse().expect("ip")).await.0, Classes::NONE);
    }
}
