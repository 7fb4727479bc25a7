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

use crate::policy::{AllowSet, Classes};

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
}

/// Largest userspace cache before expired entries are swept.
const MAX_CACHE: usize = 200_000;

impl MissResolver {
    /// A resolver over `source`.
    pub fn new(source: Arc<dyn RpzSource>, ttl: CacheTtl) -> Self {
        MissResolver { source, ttl, state: Mutex::new(State::default()), generation: Default::default() }
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

    /// The invalidation generation. A caller that caches an answer
    /// elsewhere (the kernel) reads it before asking and writes only if it is
    /// unchanged afterwards, under the same lock as the invalidation.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn ask(&self, ip: IpAddr, tx: watch::Sender<Option<Classes>>) -> (Classes, Duration) {
        let asked_at = self.generation();
        let res = self.source.classes(ip).await;
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

    /// Counters for status and metrics.
    pub fn stats(&self) -> MissStats {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        MissStats { lookups: st.lookups, coalesced: st.coalesced, errors: st.errors, cached: st.cache.len() }
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
        // Cached now: no new question.
        assert_eq!(r.classes(ip).await.0, Classes::SMTP);
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
