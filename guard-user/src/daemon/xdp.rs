//! The XDP enforcement point: load and configure the program, mirror the
//! allow set into its maps as diffs, attach, and read the kernel's events.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guard_common::{EVENT_DROP, EVENT_MISS, Event, STATE_LOADED, STATE_NOT_LOADED, Settings};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::{DaemonError, Shared, lock};
use crate::{
    config::Config,
    events::{DetectionEvent, Reason, now_ms, proto_name},
    miss::MissDecider,
    policy::{AllowSet, Prefix, Service},
    xdp::{Enforcer, ProgramConfig},
};

/// Loads (or adopts the pinned) program and maps and writes the settings.
/// A fresh program starts "not loaded" (deny-protected); adopted maps keep
/// the state they had, so a pinned set in force stays in force.
pub(super) fn load(cfg: &Config) -> Result<Enforcer, DaemonError> {
    let mut e = Enforcer::load(cfg.enforce.effective_pin_dir().as_deref())?;
    e.check_pinned_link(cfg.enforce.iface.as_deref().unwrap_or_default())?;
    let state = if e.adopted_maps() { e.state()? } else { STATE_NOT_LOADED };
    let mut pc = program_config(cfg);
    pc.settings.state = state;
    e.configure(&pc)?;
    pc.exempt_origin.keep_neighbours_resolved(cfg);
    Ok(e)
}

/// What the configuration tells the program (also on reload). The state
/// (loaded or deny-protected) and the miss transport belong to the running
/// program and are set apart.
pub(super) fn program_config(cfg: &Config) -> ProgramConfig {
    ProgramConfig {
        ports: cfg.policy.protected_ports(),
        exempt_sources: cfg.policy.exempt_sources.clone(),
        exempt_origin: crate::antispoof::ExemptOrigin::plan(cfg),
        internal_networks: cfg.policy.internal_networks.clone(),
        settings: Settings {
            mode: if cfg.enforce.count_only { guard_common::MODE_COUNT } else { guard_common::MODE_ENFORCE },
            events_per_source_per_sec: cfg.events.per_source_per_sec,
            pending_ms: cfg.cache.pending_ms,
            misses_per_source_per_sec: cfg.events.misses_per_source_per_sec,
            // Ring buffer until the AF_XDP sockets exist (miss::start_transport).
            ..Settings::default()
        },
    }
}

/// Attaches the program (or swaps it into the pinned link) before any
/// transfer; returns the enforcement point as status shows it.
pub(super) fn attach(cfg: &Config, e: &mut Enforcer) -> Result<String, DaemonError> {
    let iface = cfg.enforce.iface.clone().unwrap_or_default();
    let used = e.attach(&iface, cfg.enforce.xdp_mode)?;
    let loaded = e.state()? == STATE_LOADED;
    let pin = match cfg.enforce.effective_pin_dir() {
        Some(d) => format!("pinned at {}", d.display()),
        None => "NOT PINNED: detaches if the daemon dies".to_owned(),
    };
    tracing::info!(
        iface,
        mode = %used,
        count_only = cfg.enforce.count_only,
        pin,
        "XDP program attached; {}",
        if loaded { "enforcing the pinned set" } else { "deny-protected until the first allow set is loaded" }
    );
    Ok(format!("xdp:{iface} ({used}, {pin})"))
}

/// Brings the maps from what they hold (`adopted`: the pinned set, or empty)
/// to `initial` (batched). With `in_force` (a snapshot or a pinned set),
/// the program leaves deny-protected mode; returns what the maps now hold.
pub(super) fn mirror_initial(
    e: &mut Enforcer,
    adopted: AllowSet,
    initial: AllowSet,
    in_force: bool,
) -> Result<Arc<AllowSet>, DaemonError> {
    let started = Instant::now();
    // The maps hold the enforced view (denies as deny entries).
    let initial = Arc::new(initial);
    let enforced = AllowSet::enforced_arc(&initial);
    let diff = adopted.diff(&enforced);
    e.apply_diff(&diff)?;
    if in_force {
        e.set_loaded(true)?;
    }
    tracing::info!(
        upserts = diff.upsert.len(),
        removals = diff.remove.len(),
        ms = started.elapsed().as_millis() as u64,
        entries = initial.len(),
        denies = initial.deny_count(),
        "allow maps mirrored"
    );
    Ok(enforced)
}

/// Enforces until `cancel` fires (the program is attached already): the map
/// mirror follows the allow set, the kernel's events feed detection and the
/// miss path. On the way out a pinned program stays attached.
pub(super) async fn run(
    cfg: Config,
    enforcer: Arc<Mutex<Enforcer>>,
    applied: Arc<AllowSet>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let iface = cfg.enforce.iface.clone().unwrap_or_default();
    let ring = lock(&enforcer).take_events()?;
    let mirror = tokio::spawn(mirror(enforcer.clone(), applied, shared.clone(), cancel.clone()));
    let clock = tokio::spawn(keep_clock(enforcer.clone(), cancel.clone()));
    let decider = super::miss::decider(&shared);
    super::miss::start_transport(&cfg, &enforcer, &shared, &decider, &iface);
    let read =
        read_events(ring, enforcer.clone(), shared.clone(), decider, iface.clone(), cancel.clone()).await;
    cancel.cancel();
    let _ = mirror.await;
    let _ = clock.await;
    let mut e = lock(&enforcer);
    super::miss::stop_transport(&mut e, &shared);
    if cfg.enforce.effective_pin_dir().is_some() {
        if let Err(err) = e.stop_clock() {
            tracing::warn!(error = %err, "cannot hand the last-hit clock back to the kernel");
        }
        tracing::info!(iface, "stopping; the pinned program stays attached and enforcing the last set");
    } else {
        e.unpin()?;
        tracing::info!(iface, "stopping; XDP program detached");
    }
    read
}

/// Keeps the program's last-hit clock current, once a second, until
/// `cancel` fires. When it cannot be written, it is handed back to the
/// kernel's clock (zero), so hits are never noted with a stale tick (which
/// would make entries in use look idle to ageing).
async fn keep_clock(enforcer: Arc<Mutex<Enforcer>>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut e = lock(&enforcer);
        match e.tick_clock() {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the last-hit clock is written again");
            }
            Ok(()) => {}
            Err(err) if !failing => {
                failing = true;
                let back = e.stop_clock().is_ok();
                tracing::warn!(error = %err, handed_to_kernel = back, "cannot write the last-hit clock");
            }
            Err(_) => {}
        }
    }
}

/// Applies each new allow set to the maps as a diff; a failed update is
/// retried every few seconds until it lands (the error is in status).
async fn mirror(
    enforcer: Arc<Mutex<Enforcer>>,
    mut applied: Arc<AllowSet>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut rx = shared.allow.clone();
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
            () = async { match retry { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
        let target = AllowSet::enforced_arc(&rx.borrow_and_update().clone());
        let mut diff = applied.diff(&target);
        // Never take away what live learning enforces ahead of the zone,
        // unless a deny covers it now.
        if let Some(live) = &shared.live {
            live.drop_denied(|ip| target.is_denied(ip), &mut diff);
            live.merge_into_diff(&mut diff);
        }
        if diff.is_empty() {
            retry = None;
            leave_deny_protected(&enforcer, &shared);
            continue;
        }
        let started = Instant::now();
        // Seconds for a large diff: let the runtime move other tasks away.
        let res = tokio::task::block_in_place(|| {
            let mut e = lock(&enforcer);
            // Userspace first, under the enforcer lock: a miss answer racing
            // with this change sees a new generation and is not cached.
            let mut changed = diff.upsert.iter().map(|(p, _)| p).chain(diff.remove.iter());
            if changed.clone().any(|p| !p.is_host()) {
                shared.resolver.clear();
            } else {
                shared.resolver.invalidate(changed.by_ref().map(Prefix::addr));
            }
            e.apply_diff(&diff)
        });
        let mut st = lock(&shared.sync);
        match res {
            Ok(()) => {
                tracing::info!(
                    upserts = diff.upsert.len(),
                    removals = diff.remove.len(),
                    us = started.elapsed().as_micros() as u64,
                    "allow maps updated"
                );
                applied = target;
                st.mirror_error = None;
                retry = None;
                drop(st);
                leave_deny_protected(&enforcer, &shared);
            }
            Err(e) => {
                tracing::error!(error = %e, "updating the allow maps failed; retrying in 5 s");
                st.mirror_error = Some(e.to_string());
                retry = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
        }
    }
}

/// Once the maps hold a set that came from the source (the sync state has
/// a serial), misses go to userspace again: the program leaves
/// deny-protected mode. Idempotent.
fn leave_deny_protected(enforcer: &Arc<Mutex<Enforcer>>, shared: &Arc<Shared>) {
    let mut st = lock(&shared.sync);
    if !st.deny_protected || st.serial.is_none() {
        return;
    }
    match lock(enforcer).set_loaded(true) {
        Ok(()) => {
            st.deny_protected = false;
            tracing::info!(
                serial = st.serial,
                entries = st.entries,
                "first allow set in force; deny-protected mode ends"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "leaving deny-protected mode failed; retried at the next change");
            st.mirror_error = Some(e.to_string());
        }
    }
}

fn event_ip(a: [u8; 16]) -> IpAddr {
    Prefix::host(IpAddr::from(a)).addr()
}

/// Reads the kernel's ring buffer: drop events become detection events,
/// miss events go to the miss path.
async fn read_events(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    enforcer: Arc<Mutex<Enforcer>>,
    shared: Arc<Shared>,
    decider: Arc<MissDecider>,
    iface: String,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let io = |source| DaemonError::Io { what: "event ring buffer of", path: iface.clone(), source };
    // SAFETY: the ring buffer owns its map fd for its whole life, and the
    // AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| io(e.into()))?;
    let point = format!("xdp:{iface}");
    loop {
        // Without events the miss path is blind: a failure here stops the daemon.
        let mut guard = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            g = fd.readable_mut() => g.map_err(io)?,
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `Event` (size checked above); read unaligned.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            handle_event(ev, &enforcer, &shared, &decider, &point);
        }
        guard.clear_ready();
    }
}

fn handle_event(
    ev: Event,
    enforcer: &Arc<Mutex<Enforcer>>,
    shared: &Arc<Shared>,
    decider: &Arc<MissDecider>,
    point: &str,
) {
    let Some(service) = Service::from_number(ev.service) else { return };
    let src = event_ip(ev.src);
    let dst = event_ip(ev.dst);
    // When the kernel saw the packet, not when the event was read.
    let age_ms = crate::xdp::monotonic_ns().saturating_sub(ev.ts_ns) / 1_000_000;
    let time_ms = now_ms().saturating_sub(age_ms);
    let detection = |reason: Reason, suppressed: u32| DetectionEvent {
        time_ms,
        src,
        dst,
        proto: proto_name(ev.proto),
        dport: ev.dport,
        service,
        reason,
        vlan: u16::try_from(ev.vlan).ok().filter(|v| *v != 0),
        point: point.to_owned(),
        suppressed,
        // All zero: an event of a program older than the MAC field.
        src_mac: Some(crate::policy::MacAddr(ev.src_mac)).filter(|m| !m.is_zero()),
    };
    match ev.kind {
        EVENT_DROP => {
            if let Some(reason) = Reason::from_code(ev.reason) {
                shared.events.record(&detection(reason, ev.suppressed));
            }
        }
        EVENT_MISS => super::miss::decide(
            dst,
            service,
            detection(Reason::Pending, ev.suppressed),
            enforcer,
            shared,
            decider,
        ),
        _ => {}
    }
}
