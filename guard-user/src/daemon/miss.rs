//! The miss transports: how a protected packet toward a destination the
//! kernel maps do not know reaches userspace, and what happens to it.
//!
//! Both transports share one decision ([`MissDecider`]: the allow set in
//! memory, then the live learner, then the RPZ, one question per
//! destination) and one kernel verdict cache:
//! * `ringbuf`: the kernel drops the packet and sends a miss event;
//!   [`decide`] answers it, caches the verdict, records a refusal;
//! * `afxdp`: the kernel redirects the packet to an AF_XDP socket and
//!   [`crate::afxdp::HoldPath`] holds it, decides, and releases or drops
//!   it. Started by [`start_transport`]; when it cannot start, the ring
//!   buffer stays in force (fail closed), with the reason in status.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use super::{Shared, lock, status::MissTransportReport};
use crate::{
    afxdp::{HoldContext, HoldPath},
    config::{Config, MissTransport},
    events::{DetectionEvent, Reason},
    miss::{DEFAULT_LIVE_WAIT, LiveView, MissDecider, NoLive},
    policy::{Service, Verdict},
    xdp::Enforcer,
};

/// The miss decision of this daemon: its allow set, its live learner (if
/// on) and its resolver.
pub(super) fn decider(shared: &Arc<Shared>) -> Arc<MissDecider> {
    let live: Arc<dyn LiveView> = match &shared.live {
        Some(l) => l.clone(),
        None => Arc::new(NoLive),
    };
    Arc::new(MissDecider::new(shared.allow.clone(), live, shared.resolver.clone(), DEFAULT_LIVE_WAIT))
}

/// Decides the miss for `dst` (ring-buffer transport) in the background.
/// `pending` is the event the miss becomes if it is refused (its reason is
/// replaced by the verdict's).
pub(super) fn decide(
    dst: IpAddr,
    service: Service,
    pending: DetectionEvent,
    enforcer: &Arc<Mutex<Enforcer>>,
    shared: &Arc<Shared>,
    decider: &Arc<MissDecider>,
) {
    let enforcer = enforcer.clone();
    let shared = shared.clone();
    let decider = decider.clone();
    // Read now, after the kernel saw the packet: what the live learner must
    // have caught up with (its clock, not the event's coarse one).
    let seen_ns = crate::learn::live::monotonic_ns();
    tokio::spawn(async move {
        let d = decider.decide(dst, service, seen_ns).await;
        {
            let mut e = lock(&enforcer);
            // An allow-set change while asking may have revoked this
            // destination: then the pending entry expires and the next
            // packet asks again.
            if shared.resolver.generation() == d.generation
                && let Err(err) = e.cache_verdict(dst, d.classes, d.ttl)
            {
                tracing::warn!(%dst, error = %err, "caching a miss verdict failed");
            }
        }
        let verdict = Verdict::decide(service, d.classes);
        tracing::debug!(src = %pending.src, %dst, %service, classes = %d.classes, ?verdict, by = ?d.by, "miss decided");
        if let Some(reason) = Reason::from_verdict(verdict) {
            shared.events.record(&DetectionEvent { reason, ..pending });
        }
    });
}

/// Starts the configured miss transport (after the program is attached).
pub(super) fn start_transport(
    cfg: &Config,
    enforcer: &Arc<Mutex<Enforcer>>,
    shared: &Arc<Shared>,
    decider: &Arc<MissDecider>,
    iface: &str,
) {
    let configured = cfg.enforce.miss_transport;
    let mut report = MissTransportReport {
        configured: configured.to_string(),
        active: MissTransport::Ringbuf.to_string(),
        ..MissTransportReport::default()
    };
    let mut hold = None;
    if configured == MissTransport::Afxdp {
        let mut e = lock(enforcer);
        if cfg.enforce.count_only {
            report.fallback_reason = Some("count-only mode never holds packets".into());
        } else {
            let ctx = HoldContext {
                decider: decider.clone(),
                events: shared.events.clone(),
                runtime: tokio::runtime::Handle::current(),
                ports: cfg.policy.protected_ports(),
                point: format!("xdp:{iface}"),
            };
            match HoldPath::start(&mut e, iface, cfg.afxdp.hold(), ctx) {
                Ok(h) => {
                    report.active = MissTransport::Afxdp.to_string();
                    report.queues = h.queues();
                    report.zerocopy = h.zerocopy();
                    report.release_device = h.release_device().to_owned();
                    hold = Some(h);
                }
                Err(err) => {
                    tracing::error!(iface, error = %err, "AF_XDP miss path unavailable; misses are dropped and asked about (ring buffer)");
                    report.fallback_reason = Some(err.to_string());
                }
            }
        }
        if hold.is_none() {
            set_ringbuf(&mut e);
        }
    }
    let mut t = lock(&shared.transport);
    t.report = report;
    t.hold = hold;
}

/// Stops the AF_XDP hold path, if running: held packets are dropped (fail
/// closed) and a pinned program that keeps enforcing without us sends
/// misses to the ring buffer again.
pub(super) fn stop_transport(e: &mut Enforcer, shared: &Shared) {
    if let Some(h) = lock(&shared.transport).hold.take() {
        set_ringbuf(e);
        h.stop();
    }
}

fn set_ringbuf(e: &mut Enforcer) {
    if let Err(err) = e.update_settings(|s| s.miss_transport = guard_common::MISS_TRANSPORT_RINGBUF) {
        tracing::warn!(error = %err, "resetting the miss transport failed");
    }
}
