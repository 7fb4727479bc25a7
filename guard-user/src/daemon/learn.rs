//! Live learning in the daemon (issue 9): the learner thread reading the
//! kernel's copy ring (XDP mode) or the learner the OpenFlow sessions feed
//! ([`crate::openflow::learn`]), the UPDATE pusher, the journal replay at
//! start.
//!
//! ```text
//!  XDP inside (queries from resolvers) ─┐
//!  XDP outside (answers to resolvers) ──┴─► DNS_COPY ring ──► learner thread
//!        LiveLearner (learn::Pipeline) ──► AllowWriter (kernel maps, at once)
//!                                      └─► LiveAllow ──► push_loop ──► BIND
//! ```
//!
//! Ordering: the copy is taken before the answer is passed on, so it is on
//! the ring before the resolver (and so the client) can see the answer.
//! The learner writes the entry into the allow maps microseconds later; a
//! client's first SYN normally comes far behind (the resolver must process
//! the answer, answer the client, the client connect). When the SYN wins,
//! the miss path finds the entry through [`LiveAllow::lookup`] after
//! [`LiveAllow::settled`] (the AF_XDP hold path waits for it); the misses
//! that saw a live entry are counted (`raced_misses`).
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::{
    config::Config,
    events::EventSink,
    learn::{
        self,
        live::{LiveAllow, LiveLearner, monotonic_ns},
        push::{PushConfig, load_journal, push_loop},
    },
    openflow::Learning,
    policy::AllowSet,
    rpz::tsig::TsigKey,
    xdp::Enforcer,
};

/// Starts live learning for XDP mode: names the resolvers to the program,
/// replays the journal, starts the learner thread and the pusher, then
/// attaches the copy program to the outside interface.
pub(super) fn start_xdp(
    cfg: &Config,
    enforcer: &mut Enforcer,
    events: &Arc<EventSink>,
    zone: watch::Receiver<Arc<AllowSet>>,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &CancellationToken,
) -> Result<Arc<LiveAllow>, DaemonError> {
    let l = &cfg.learn;
    let (hints, live) = prepare(cfg, events)?;
    let resolvers = l.resolvers_or(&cfg.policy.exempt_sources);
    enforcer.set_resolvers(&resolvers)?;
    let ring = enforcer.take_dns_copy()?;
    let mut writer = enforcer.allow_writer()?;
    replay_journal(cfg, &live, &zone, |ip, c| writer.set(ip, c).map_err(|e| e.to_string()));

    let enforce: learn::live::Enforce = Box::new(move |ip, c| writer.set(ip, c).map_err(|e| e.to_string()));
    let learner =
        LiveLearner::new(&hints, window_ns(cfg), l.trust_zone, live.clone(), zone_lookup(&zone), enforce);
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rpz-guard-learn".into())
        .spawn(move || {
            // The lag from answer to enforced entry is mostly the wait for a
            // CPU after the ring's wake-up: ask the scheduler to prefer this
            // thread (it sleeps in poll(2) whenever the ring is empty).
            // SAFETY: setpriority on this thread's own id; failure only logs.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10) } != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise the learner thread's priority");
            }
            learn::live::serve_ring(ring, learner, &thread_stop)
        })
        .map_err(|source| DaemonError::Io {
            what: "cannot start the live learner thread",
            path: "-".into(),
            source,
        })?;
    let c = cancel.clone();
    tasks.spawn(async move {
        c.cancelled().await;
        stop.store(true, Ordering::Release);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    });
    start_pusher(cfg, &live, zone, tasks, cancel)?;

    let outside = l.outside_iface.clone().unwrap_or_default();
    let mode = enforcer.attach_outside(&outside, cfg.enforce.xdp_mode)?;
    tracing::info!(
        outside = %outside,
        mode = %mode,
        resolvers = ?resolvers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "live learning: copying the resolvers' DNS"
    );
    Ok(live)
}

/// Starts live learning for OpenFlow mode: the learner the controller's
/// sessions feed (the learning flows go in with each switch's resync),
/// the journal replay (its entries are installed by every switch's
/// resync) and the pusher.
pub(super) fn start_openflow(
    cfg: &Config,
    events: &Arc<EventSink>,
    zone: watch::Receiver<Arc<AllowSet>>,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &CancellationToken,
) -> Result<Arc<Learning>, DaemonError> {
    let (hints, live) = prepare(cfg, events)?;
    replay_journal(cfg, &live, &zone, |_, _| Ok(()));
    let learning =
        Learning::new(&hints, window_ns(cfg), cfg.learn.trust_zone, live.clone(), zone_lookup(&zone));
    let (l, c) = (learning.clone(), cancel.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = c.cancelled() => return,
                _ = tick.tick() => l.publish(),
            }
        }
    });
    start_pusher(cfg, &live, zone, tasks, cancel)?;
    tracing::info!(
        resolvers = ?cfg.learn.resolvers_or(&cfg.policy.exempt_sources).iter().map(ToString::to_string).collect::<Vec<_>>(),
        answers = ?cfg.learn.openflow_answers,
        "live learning: the switches copy the resolvers' DNS to the controller"
    );
    Ok(learning)
}

/// The hints the learner trusts first and the shared live state (which
/// writes a learned event per entry to `events`).
fn prepare(cfg: &Config, events: &Arc<EventSink>) -> Result<(learn::Hints, Arc<LiveAllow>), DaemonError> {
    let l = &cfg.learn;
    let hints = learn::load_hints(l.root_hints.as_deref(), &l.trust_initial)
        .map_err(|e| DaemonError::Learn(e.to_string()))?;
    let live = Arc::new(LiveAllow::new(l.queue_limit).map_err(|source| DaemonError::Io {
        what: "cannot create the live learner's eventfd",
        path: "-".into(),
        source,
    })?);
    live.report_to(events.clone());
    Ok((hints, live))
}

fn window_ns(cfg: &Config) -> u64 {
    cfg.learn.window_secs.saturating_mul(1_000_000_000)
}

fn zone_lookup(zone: &watch::Receiver<Arc<AllowSet>>) -> learn::live::ZoneLookup {
    let z = zone.clone();
    Box::new(move |ip| z.borrow().zone_classes(ip))
}

/// The UPDATE pusher (or only the journal, without a primary to push to).
fn start_pusher(
    cfg: &Config,
    live: &Arc<LiveAllow>,
    zone: watch::Receiver<Arc<AllowSet>>,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &CancellationToken,
) -> Result<(), DaemonError> {
    let l = &cfg.learn;
    let key = match (&cfg.rpz.server, &cfg.rpz.tsig_key, l.push) {
        (Some(server), Some(path), true) => Some((*server, cfg.rpz.zone.clone(), TsigKey::from_file(path)?)),
        _ => None,
    };
    if key.is_none() {
        tracing::info!(
            "live-learned entries are enforced locally only (no push: learn.push off, or no rpz.server with a key)"
        );
    }
    let journal = cfg.learn_journal();
    if let Some(dir) = journal.as_deref().and_then(std::path::Path::parent) {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::Io {
            what: "cannot create the directory of the live-learning journal",
            path: dir.display().to_string(),
            source,
        })?;
    }
    let push = PushConfig {
        target: key,
        interval: Duration::from_millis(l.push_interval_ms),
        batch: l.push_batch,
        timeout: Duration::from_secs(5),
        journal,
        refresh_secs: Some(cfg.lifetime.refresh()),
    };
    let (p_live, p_cancel) = (live.clone(), cancel.clone());
    tasks.spawn(async move {
        push_loop(p_live, push, zone, p_cancel).await;
    });
    Ok(())
}

/// Entries of the journal the zone still lacks: enforced and queued again.
/// `enforce` writes one to the kernel maps (XDP mode; OpenFlow mode installs
/// every live entry with each switch's resync).
fn replay_journal(
    cfg: &Config,
    live: &LiveAllow,
    zone: &watch::Receiver<Arc<AllowSet>>,
    mut enforce: impl FnMut(std::net::IpAddr, crate::policy::Classes) -> Result<(), String>,
) {
    let Some(path) = cfg.learn_journal() else { return };
    let path = path.as_path();
    match load_journal(path) {
        Ok((entries, bad)) => {
            let set = zone.borrow().clone();
            let mut taken = 0;
            for (ip, c) in entries {
                let have = set.lookup(ip);
                if have.contains(c) || set.is_denied(ip) {
                    continue;
                }
                if let Some(now) = live.insert(ip, c, monotonic_ns()) {
                    taken += 1;
                    if let Err(e) = enforce(ip, now.union(have)) {
                        tracing::warn!(%ip, error = %e, "enforcing a journalled entry failed");
                    }
                }
            }
            if bad > 0 {
                tracing::warn!(path = %path.display(), bad, "journal lines skipped");
            }
            tracing::info!(path = %path.display(), entries = taken, "live-learning journal replayed: enforced and queued for the primary");
        }
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read the live-learning journal"),
    }
}
