//! Live learning in OpenFlow mode (issue 9): the learning flows
//! ([`super::flows::learn_flows`]) send the resolvers' DNS to the
//! controller; every switch session feeds the packet-ins to the one
//! [`LiveLearner`] (the same `learn::Pipeline` as `rpz-guard learn` and XDP
//! mode) held here.
//!
//! ```text
//!  switch ── packet-in (learn cookie) ──► session ──► Learning::packet ──► LiveLearner
//!                                           │  taught entries                 │ enforce:
//!                                           ▼                                 ▼ broadcast
//!   FLOW_MODs (allow flows), BARRIER, PACKET_OUT (a held answer)    every other session
//! ```
//!
//! Ordering, by construction: a held answer reaches the resolver only in
//! the controller's PACKET_OUT, which the session queues behind the
//! learned entries' FLOW_MODs and a BARRIER_REQUEST on the same connection
//! (OpenFlow 1.3.5 §6.4: the switch finishes every message before a barrier
//! before it executes any after it). So on that switch the allow flows are
//! in before the resolver — and so the client — can see the answer. Other
//! switches get the entries by broadcast, as fast as they take them; a
//! client's SYN crossing one of them first still finds the entry on the
//! packet-in path ([`LiveAllow::note_miss`]).
use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::broadcast;

use crate::{
    learn::{
        Hints,
        live::{Enforce, LiveAllow, LiveLearner, ZoneLookup, monotonic_ns},
    },
    policy::Classes,
};

/// Learned entries waiting for a slow session before it must resync them all.
const LEARNED_BACKLOG: usize = 4096;
/// Counters are published to [`LiveAllow`] at most this often (ns).
const PUBLISH_NS: u64 = 100_000_000;

/// The one live learner of OpenFlow mode, shared by every switch session.
pub struct Learning {
    learner: Mutex<LiveLearner>,
    live: Arc<LiveAllow>,
    learned: broadcast::Sender<(IpAddr, Classes)>,
    published_ns: AtomicU64,
}

impl std::fmt::Debug for Learning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learning").field("live", &self.live).finish_non_exhaustive()
    }
}

impl Learning {
    /// A learner trusting `hints` (and, with `trust_zone`, the zone's name
    /// servers), matching within `window_ns`; `zone` tells what the RPZ
    /// mirror holds. Learned entries are enforced as flows by every session.
    pub fn new(
        hints: &Hints,
        window_ns: u64,
        trust_zone: bool,
        live: Arc<LiveAllow>,
        zone: ZoneLookup,
    ) -> Arc<Learning> {
        let (learned, _) = broadcast::channel(LEARNED_BACKLOG);
        let tx = learned.clone();
        // No session connected: the entry waits in `live`; a switch that
        // connects installs every live entry in its resync.
        let enforce: Enforce = Box::new(move |ip, c| {
            let _ = tx.send((ip, c));
            Ok(())
        });
        let learner = LiveLearner::new(hints, window_ns, trust_zone, live.clone(), zone, enforce);
        Arc::new(Learning { learner: Mutex::new(learner), live, learned, published_ns: AtomicU64::new(0) })
    }

    /// The live-learned entries, counters and push queue.
    pub fn live(&self) -> &Arc<LiveAllow> {
        &self.live
    }

    /// Entries learned from now on (each with every class it must pass with).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<(IpAddr, Classes)> {
        self.learned.subscribe()
    }

    /// Feeds one copied frame (received now); returns the time it was
    /// taken at and the entries it taught, already in [`LiveAllow`].
    pub fn packet(&self, frame: &[u8]) -> (u64, Vec<(IpAddr, Classes)>) {
        let ts = monotonic_ns();
        let mut l = self.learner.lock().unwrap_or_else(|e| e.into_inner());
        let taught = l.packet(ts, frame);
        if ts.saturating_sub(self.published_ns.load(Ordering::Relaxed)) >= PUBLISH_NS {
            self.published_ns.store(ts, Ordering::Relaxed);
            l.batch_done(ts);
        }
        (ts, taught)
    }

    /// Publishes the counters and progress now (the daemon, periodically:
    /// a quiet learner still shows its last packets in the status).
    pub fn publish(&self) {
        let ts = monotonic_ns();
        self.published_ns.store(ts, Ordering::Relaxed);
        self.learner.lock().unwrap_or_else(|e| e.into_inner()).batch_done(ts);
    }
}
