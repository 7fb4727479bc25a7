//! Deciding a miss the kernel handed up: ask the miss path (cache, then the
//! RPZ, one question per destination), cache the verdict in the kernel so the
//! next packet is decided there, and record a refusal as a detection event.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use super::{Shared, lock};
use crate::{
    events::{DetectionEvent, Reason},
    policy::{Service, Verdict},
    xdp::Enforcer,
};

/// Decides the miss for `dst` in the background. `pending` is the event the
/// miss becomes if it is refused (its reason is replaced by the verdict's).
pub(super) fn decide(
    dst: IpAddr,
    service: Service,
    pending: DetectionEvent,
    enforcer: &Arc<Mutex<Enforcer>>,
    shared: &Arc<Shared>,
) {
    let enforcer = enforcer.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let generation = shared.resolver.generation();
        let (classes, ttl) = shared.resolver.classes(dst).await;
        // Learned live meanwhile: the packet beat the learner (counted).
        let classes = classes.union(super::learn::note_miss(shared.live.as_ref(), dst));
        {
            let mut e = lock(&enforcer);
            // An allow-set change while asking may have revoked this
            // destination: then the pending entry expires and the next
            // packet asks again.
            if shared.resolver.generation() == generation
                && let Err(err) = e.cache_verdict(dst, classes, ttl)
            {
                tracing::warn!(%dst, error = %err, "caching a miss verdict failed");
            }
        }
        let verdict = Verdict::decide(service, classes);
        tracing::debug!(src = %pending.src, %dst, %service, %classes, ?verdict, "miss decided");
        if let Some(reason) = Reason::from_verdict(verdict) {
            shared.events.record(&DetectionEvent { reason, ..pending });
        }
    });
}
