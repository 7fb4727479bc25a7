//! The AF_XDP miss transport: hold a miss's packet, decide, release it.
//!
//! With `miss_transport = "afxdp"` the XDP program redirects a packet whose
//! destination it does not know to the AF_XDP socket of its RX queue (and
//! so do later packets toward the same destination while it is pending)
//! instead of dropping it. One thread per socket ([`HoldPath`]):
//!
//! ```text
//!  RX ring ──► parse ──► malformed / not protected ──► drop (counted)
//!                 │
//!                 ├─ memory allows (RPZ mirror + live) ──► cache verdict ──► release
//!                 │
//!                 └─ hold (bounded) ──► MissDecider on the runtime ──► cache verdict
//!                        │                                   ├─ allow ──► release
//!                        │ queue full: drop, still ask        └─ deny ──► drop + event
//!                        └ hold timeout: drop (the answer is still cached)
//! ```
//!
//! Release goes through [`release::ReleaseTap`] into the enforcement
//! interface's own receive path, byte for byte as received. The kernel's
//! verdict is written before the release, so the next packet never leaves
//! XDP. Whatever fails here (no AF_XDP, no socket on a queue, a full
//! queue) falls back to the ring-buffer path: drop and ask, fail closed.

pub mod release;
pub mod xsk;

use std::{
    collections::HashMap,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    events::{DetectionEvent, EventSink, Reason, now_ms, proto_name},
    frame::{self as packet, PacketInfo},
    miss::{Decision, MissDecider},
    policy::{ProtectedPort, Service, Verdict},
    xdp::{Enforcer, VerdictCache, XdpError},
};

use self::{
    release::ReleaseTap,
    xsk::{BindMode, Frame, XskSocket, XskStats},
};

/// Most packets held for one destination; more are dropped (queue full).
pub const MAX_HELD_PER_DESTINATION: usize = 64;

/// Most destinations with a question in flight per RX queue. Beyond it a
/// new destination's frame is dropped without a question; the kernel's
/// pending entry expires and a later packet asks. (The kernel's per-source
/// miss budget keeps one host from getting here alone.)
pub const MAX_QUESTIONS_IN_FLIGHT: usize = 4096;

/// Upper bounds (µs) of the hold-time histogram buckets; the last bucket is +Inf.
pub const HOLD_BUCKETS_US: [u64; 14] =
    [10, 25, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000];

/// Errors setting up the AF_XDP path (each means: fall back to the ring buffer).
#[derive(Debug, thiserror::Error)]
pub enum AfxdpError {
    /// The interface does not exist.
    #[error("interface {iface} not found")]
    NoInterface {
        /// Its name.
        iface: String,
    },
    /// The release TAP could not be created.
    #[error("release device {name}: {source}")]
    Release {
        /// TAP name.
        name: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An AF_XDP socket could not be opened or bound.
    #[error("AF_XDP socket on {iface} queue {queue}: {source}")]
    Socket {
        /// Interface.
        iface: String,
        /// RX queue.
        queue: u32,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A program or map operation failed.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// The wake-up descriptor or a thread could not be created.
    #[error("{what}: {source}")]
    Io {
        /// What was being made.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Sizes and limits of the hold path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldConfig {
    /// Packets held at once per RX queue; more are dropped (and asked about).
    pub hold_queue: usize,
    /// How long a packet may wait for its decision.
    pub hold_timeout: Duration,
    /// Entries of the RX and fill rings (a power of two).
    pub ring_size: u32,
    /// Zero-copy or copy mode.
    pub bind_mode: BindMode,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig {
            hold_queue: 1024,
            hold_timeout: Duration::from_millis(500),
            ring_size: 1024,
            bind_mode: BindMode::Auto,
        }
    }
}

/// Counters of the hold path (all queues).
#[derive(Default)]
pub struct HoldStats {
    received: AtomicU64,
    held: AtomicU64,
    released: AtomicU64,
    released_from_memory: AtomicU64,
    dropped_after_hold: AtomicU64,
    hold_timeouts: AtomicU64,
    queue_full: AtomicU64,
    malformed: AtomicU64,
    release_errors: AtomicU64,
    questions: AtomicU64,
    holding: AtomicU64,
    hold_hist: [AtomicU64; HOLD_BUCKETS_US.len() + 1],
    hold_sum_ns: AtomicU64,
}

impl HoldStats {
    /// Moves this worker's share of the `holding` gauge from `*was` to `now`.
    fn holding_add(&self, now: u64, was: &mut u64) {
        if now != *was {
            self.holding.fetch_add(now.wrapping_sub(*was), Ordering::Relaxed);
            *was = now;
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl HoldStats {
    fn observe_hold(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = HOLD_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(HOLD_BUCKETS_US.len());
        inc(&self.hold_hist[i]);
        self.hold_sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> HoldSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HoldSnapshot {
            received: g(&self.received),
            held: g(&self.held),
            released: g(&self.released),
            released_from_memory: g(&self.released_from_memory),
            dropped_after_hold: g(&self.dropped_after_hold),
            hold_timeouts: g(&self.hold_timeouts),
            queue_full: g(&self.queue_full),
            malformed: g(&self.malformed),
            release_errors: g(&self.release_errors),
            questions: g(&self.questions),
            holding: g(&self.holding),
            hold_hist: self.hold_hist.iter().map(g).collect(),
            hold_sum_ns: g(&self.hold_sum_ns),
            kernel: XskStats::default(),
        }
    }
}

/// The hold path's counters, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldSnapshot {
    /// Frames taken from the RX rings.
    pub received: u64,
    /// Frames that waited for a question to the RPZ (or the live learner).
    pub held: u64,
    /// Frames released into the forwarding path.
    pub released: u64,
    /// Of those: decided from memory without waiting.
    pub released_from_memory: u64,
    /// Held frames dropped because the verdict denied them.
    pub dropped_after_hold: u64,
    /// Held frames dropped because no decision came within the hold timeout.
    pub hold_timeouts: u64,
    /// Frames dropped because the hold queue (or a destination's share) was
    /// full; their destination is still asked about (drop-and-ask fallback).
    pub queue_full: u64,
    /// Frames that do not parse as a protected packet: dropped, never released.
    pub malformed: u64,
    /// Releases that failed (the frame was dropped).
    pub release_errors: u64,
    /// Decisions that needed the live learner or the RPZ.
    pub questions: u64,
    /// Frames held right now (0 when idle: nothing leaks).
    pub holding: u64,
    /// Hold time (receipt to release) per bucket of [`HOLD_BUCKETS_US`], then +Inf.
    pub hold_hist: Vec<u64>,
    /// Sum of hold times, ns.
    pub hold_sum_ns: u64,
    /// The kernel's socket counters, summed over queues.
    pub kernel: XskStats,
}

impl HoldSnapshot {
    /// Approximate hold-time quantile `q` (0..=1) in µs: the upper bound of
    /// the bucket holding it (`None` without samples or in the +Inf bucket).
    pub fn hold_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.hold_hist.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.hold_hist.iter().enumerate() {
            seen += n;
            if seen >= want {
                return HOLD_BUCKETS_US.get(i).copied();
            }
        }
        None
    }

    /// Prometheus text for these counters (appended to `/metrics`).
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        for (name, help, v) in [
            ("received", "Frames the AF_XDP hold path received.", self.received),
            ("held", "Frames held while the RPZ (or the live learner) was asked.", self.held),
            ("released", "Held frames released into the forwarding path.", self.released),
            (
                "released_from_memory",
                "Frames released on the allow set in memory.",
                self.released_from_memory,
            ),
            ("dropped_after_hold", "Held frames dropped on a deny verdict.", self.dropped_after_hold),
            ("hold_timeouts", "Held frames dropped at the hold timeout.", self.hold_timeouts),
            ("queue_full", "Frames dropped because the hold queue was full (drop and ask).", self.queue_full),
            ("malformed", "Frames that did not parse as protected packets (dropped).", self.malformed),
            ("release_errors", "Releases that failed (dropped).", self.release_errors),
            ("questions", "Hold-path decisions that waited for the live learner or the RPZ.", self.questions),
            (
                "kernel_dropped",
                "Frames the kernel could not deliver to the AF_XDP sockets.",
                self.kernel.drops(),
            ),
            (
                "kernel_ring_full",
                "Of those: an RX ring was full (userspace behind).",
                self.kernel.rx_ring_full,
            ),
        ] {
            let _ = writeln!(o, "# HELP rpz_guard_afxdp_{name}_total {help}");
            let _ = writeln!(o, "# TYPE rpz_guard_afxdp_{name}_total counter");
            let _ = writeln!(o, "rpz_guard_afxdp_{name}_total {v}");
        }
        let _ =
            writeln!(o, "# HELP rpz_guard_afxdp_hold_seconds Time from receipt to release of a held frame.");
        let _ = writeln!(o, "# TYPE rpz_guard_afxdp_hold_seconds histogram");
        let mut cum = 0;
        for (i, n) in self.hold_hist.iter().enumerate() {
            cum += n;
            let le = HOLD_BUCKETS_US.get(i).map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(o, "rpz_guard_afxdp_hold_seconds_bucket{{le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(o, "rpz_guard_afxdp_hold_seconds_sum {}", self.hold_sum_ns as f64 / 1e9);
        let _ = writeln!(o, "rpz_guard_afxdp_hold_seconds_count {cum}");
        o
    }
}

/// An `eventfd` that wakes a hold thread (decision ready, or stop).
struct Wake(OwnedFd);

impl Wake {
    fn new() -> std::io::Result<Wake> {
        // SAFETY: eventfd(2) with constant flags.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just got.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to an eventfd.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: an 8-byte read from a non-blocking eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// The running hold path: one thread per RX queue.
pub struct HoldPath {
    stats: Arc<HoldStats>,
    stop: Arc<AtomicBool>,
    wakes: Vec<Arc<Wake>>,
    threads: Vec<std::thread::JoinHandle<XskStats>>,
    kernel: Vec<Arc<std::sync::Mutex<XskStats>>>,
    queues: u32,
    zerocopy: bool,
    release_device: String,
}

/// What [`HoldPath::start`] needs besides the enforcer.
pub struct HoldContext {
    /// The shared miss decision.
    pub decider: Arc<MissDecider>,
    /// Where deny events go.
    pub events: Arc<EventSink>,
    /// The runtime that runs questions to the RPZ.
    pub runtime: tokio::runtime::Handle,
    /// Protected ports (to tell a frame's service).
    pub ports: Vec<ProtectedPort>,
    /// Enforcement point named in events (`xdp:<iface>`).
    pub point: String,
}

impl HoldPath {
    /// Opens one AF_XDP socket per RX queue of `iface` (the interface the
    /// program is attached to), the release TAP and its program, then
    /// switches the kernel's miss transport to AF_XDP. On error nothing is
    /// switched: the caller keeps the ring-buffer transport.
    pub fn start(
        enforcer: &mut Enforcer,
        iface: &str,
        cfg: HoldConfig,
        ctx: HoldContext,
    ) -> Result<HoldPath, AfxdpError> {
        let ifindex = release::ifindex(iface);
        if ifindex == 0 {
            return Err(AfxdpError::NoInterface { iface: iface.to_owned() });
        }
        let tap_name = format!("rgrel{ifindex}");
        let tap = Arc::new(
            ReleaseTap::create(&tap_name)
                .map_err(|source| AfxdpError::Release { name: tap_name.clone(), source })?,
        );
        enforcer.attach_release(&tap_name)?;
        let queues = xsk::rx_queues(iface).min(guard_common::MAX_XSK_QUEUES);
        let frames = cfg.ring_size * 2 + u32::try_from(cfg.hold_queue).unwrap_or(u32::MAX / 4);
        let mut sockets = Vec::new();
        for q in 0..queues {
            let s = XskSocket::open(ifindex, q, cfg.ring_size, frames, cfg.bind_mode)
                .map_err(|source| AfxdpError::Socket { iface: iface.to_owned(), queue: q, source })?;
            enforcer.register_xsk(q, &s)?;
            sockets.push(s);
        }
        let zerocopy = sockets.iter().all(XskSocket::zerocopy);
        let stats = Arc::new(HoldStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let ports: HashMap<(u8, u16), Service> =
            ctx.ports.iter().map(|p| ((p.proto.number(), p.port), p.service)).collect();
        let mut path = HoldPath {
            stats: stats.clone(),
            stop: stop.clone(),
            wakes: Vec::new(),
            threads: Vec::new(),
            kernel: Vec::new(),
            queues,
            zerocopy,
            release_device: tap_name,
        };
        for (q, sock) in sockets.into_iter().enumerate() {
            let wake = Arc::new(Wake::new().map_err(|source| AfxdpError::Io { what: "eventfd", source })?);
            let kernel = Arc::new(std::sync::Mutex::new(XskStats::default()));
            let (tx, rx) = mpsc::channel();
            let mut w = Worker {
                sock,
                tap: tap.clone(),
                cache: enforcer.verdict_cache()?,
                decider: ctx.decider.clone(),
                events: ctx.events.clone(),
                stats: stats.clone(),
                runtime: ctx.runtime.clone(),
                ports: ports.clone(),
                cfg,
                point: ctx.point.clone(),
                groups: HashMap::new(),
                held: 0,
                tx,
                rx,
                wake: wake.clone(),
                stop: stop.clone(),
                kernel: kernel.clone(),
                published_held: 0,
            };
            let t = std::thread::Builder::new()
                .name(format!("afxdp-q{q}"))
                .spawn(move || w.run())
                .map_err(|source| AfxdpError::Io { what: "hold thread", source })?;
            path.wakes.push(wake);
            path.threads.push(t);
            path.kernel.push(kernel);
        }
        enforcer.update_settings(|s| {
            s.miss_transport = guard_common::MISS_TRANSPORT_AFXDP;
            s.release_ifindex = ifindex;
        })?;
        tracing::info!(iface, queues, zerocopy, release = %path.release_device, "AF_XDP miss path: holding first packets");
        Ok(path)
    }

    /// Counters, including the kernel's socket counters.
    pub fn stats(&self) -> HoldSnapshot {
        let mut s = self.stats.snapshot();
        for k in &self.kernel {
            s.kernel += *k.lock().unwrap_or_else(|e| e.into_inner());
        }
        s
    }

    /// RX queues served.
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// True when every socket is bound in zero-copy mode.
    pub fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// The release TAP's name.
    pub fn release_device(&self) -> &str {
        &self.release_device
    }

    /// Stops the threads (held frames are dropped: fail closed). Switch the
    /// kernel back to the ring buffer first, or let the sockets' closing
    /// make its redirects fail over to it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakes {
            w.ring();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for HoldPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakes {
            w.ring();
        }
    }
}

/// What a received frame is: a whole protected packet (its headers and
/// service), or `None` for anything else (truncated, not IP, a fragment,
/// an unprotected port), which is dropped and never released.
pub fn judge(frame: &[u8], ports: &HashMap<(u8, u16), Service>) -> Option<(PacketInfo, Service)> {
    let info = packet::parse(frame).ok()?;
    let (_, dport) = info.ports.filter(|_| !info.fragment)?;
    let service = *ports.get(&(info.proto, dport))?;
    Some((info, service))
}

/// A frame waiting for its destination's decision.
struct Held {
    frame: Frame,
    at: Instant,
    service: Service,
    info: PacketInfo,
}

/// One hold thread: a socket, its held frames, and the questions in flight.
struct Worker {
    sock: XskSocket,
    tap: Arc<ReleaseTap>,
    cache: VerdictCache,
    decider: Arc<MissDecider>,
    events: Arc<EventSink>,
    stats: Arc<HoldStats>,
    runtime: tokio::runtime::Handle,
    ports: HashMap<(u8, u16), Service>,
    cfg: HoldConfig,
    point: String,
    /// Destinations with a question in flight, and the frames waiting on it.
    groups: HashMap<IpAddr, Vec<Held>>,
    held: usize,
    tx: mpsc::Sender<(IpAddr, Service, Decision)>,
    rx: mpsc::Receiver<(IpAddr, Service, Decision)>,
    wake: Arc<Wake>,
    stop: Arc<AtomicBool>,
    kernel: Arc<std::sync::Mutex<XskStats>>,
    /// This worker's last contribution to the `holding` gauge.
    published_held: u64,
}

const BATCH: usize = 64;

impl Worker {
    fn run(&mut self) -> XskStats {
        let mut batch = Vec::with_capacity(BATCH);
        let mut last_stats = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let timeout_ms = self.next_deadline().map_or(100, |d| {
                d.saturating_duration_since(Instant::now()).as_millis().clamp(1, 100) as i32
            });
            let mut fds = [
                libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.wake.0.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two valid pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
            if fds[1].revents != 0 {
                self.wake.clear();
            }
            while let Ok((dst, service, d)) = self.rx.try_recv() {
                self.conclude(dst, service, d);
            }
            loop {
                batch.clear();
                if self.sock.receive(&mut batch, BATCH) == 0 {
                    break;
                }
                for f in batch.drain(..) {
                    self.on_frame(f);
                }
                self.sock.refill();
            }
            self.expire();
            self.sock.refill();
            self.stats.holding_add(self.held as u64, &mut self.published_held);
            if last_stats.elapsed() > Duration::from_millis(500) {
                self.publish_kernel_stats();
                last_stats = Instant::now();
            }
        }
        // Fail closed: whatever is still held is dropped.
        for (_, v) in self.groups.drain() {
            for h in v {
                self.sock.recycle(h.frame);
            }
        }
        self.held = 0;
        self.stats.holding_add(0, &mut self.published_held);
        self.publish_kernel_stats();
        *self.kernel.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_kernel_stats(&self) {
        if let Ok(s) = self.sock.stats() {
            *self.kernel.lock().unwrap_or_else(|e| e.into_inner()) = s;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().flat_map(|v| v.iter().map(|h| h.at)).min().map(|t| t + self.cfg.hold_timeout)
    }

    /// One received frame: judge what can be judged now, hold the rest.
    fn on_frame(&mut self, frame: Frame) {
        let at = Instant::now();
        inc(&self.stats.received);
        let Some((info, service)) = judge(self.sock.data(frame), &self.ports) else {
            // Never released: what we cannot judge is dropped.
            inc(&self.stats.malformed);
            self.sock.recycle(frame);
            return;
        };
        let held = Held { frame, at, service, info };
        if let Some(waiting) = self.groups.get_mut(&info.dst) {
            if self.held >= self.cfg.hold_queue || waiting.len() >= MAX_HELD_PER_DESTINATION {
                inc(&self.stats.queue_full);
                self.sock.recycle(frame);
            } else {
                waiting.push(held);
                self.held += 1;
                inc(&self.stats.held);
            }
            return;
        }
        if let Some(d) = self.decider.in_memory(info.dst, service) {
            self.cache(info.dst, &d);
            inc(&self.stats.released_from_memory);
            self.finish(held, &d);
            return;
        }
        // Ask. Over budget the frame is dropped, but the question is still
        // asked and its answer cached: today's drop-and-ask path.
        let mut waiting = Vec::new();
        if self.held >= self.cfg.hold_queue || self.groups.len() >= MAX_QUESTIONS_IN_FLIGHT {
            inc(&self.stats.queue_full);
            self.sock.recycle(frame);
            if self.groups.len() >= MAX_QUESTIONS_IN_FLIGHT {
                // Too many questions in flight already: the kernel's pending
                // entry expires and a later packet asks again.
                return;
            }
        } else {
            waiting.push(held);
            self.held += 1;
            inc(&self.stats.held);
        }
        self.groups.insert(info.dst, waiting);
        self.ask(info.dst, service, crate::learn::live::monotonic_ns());
    }

    fn ask(&self, dst: IpAddr, service: Service, seen_ns: u64) {
        inc(&self.stats.questions);
        let decider = self.decider.clone();
        let tx = self.tx.clone();
        let wake = self.wake.clone();
        self.runtime.spawn(async move {
            let d = decider.decide(dst, service, seen_ns).await;
            if tx.send((dst, service, d)).is_ok() {
                wake.ring();
            }
        });
    }

    /// Writes the verdict into the kernel cache; false when the allow set
    /// changed meanwhile (then the decision is not trusted either).
    fn cache(&mut self, dst: IpAddr, d: &Decision) -> bool {
        let resolver = self.decider.resolver().clone();
        match self.cache.store(dst, d.classes, d.ttl, d.generation, || resolver.generation()) {
            Ok(stored) => stored,
            Err(e) => {
                // The verdict still applies to the held frames; the next
                // packet asks again (the pending entry expires).
                tracing::warn!(%dst, error = %e, "caching a miss verdict failed");
                true
            }
        }
    }

    /// The decision for `dst` came back: cache it, then release or drop
    /// every frame waiting on it.
    fn conclude(&mut self, dst: IpAddr, service: Service, d: Decision) {
        if !self.cache(dst, &d) {
            // Asked before an allow-set change: ask again while frames wait
            // (bounded by the hold timeout).
            if self.groups.get(&dst).is_some_and(|v| !v.is_empty()) {
                self.ask(dst, service, crate::learn::live::monotonic_ns());
            } else {
                self.groups.remove(&dst);
            }
            return;
        }
        let Some(waiting) = self.groups.remove(&dst) else { return };
        self.held -= waiting.len();
        let mut evented: Vec<IpAddr> = Vec::new();
        for h in waiting {
            let verdict = Verdict::decide(h.service, d.classes);
            if let Some(reason) = Reason::from_verdict(verdict) {
                inc(&self.stats.dropped_after_hold);
                // One event per source and destination: the rest of a
                // burst is the same evidence.
                if !evented.contains(&h.info.src) {
                    evented.push(h.info.src);
                    self.record(&h, reason);
                }
                self.sock.recycle(h.frame);
            } else {
                self.finish(h, &d);
            }
        }
    }

    /// Releases (or, on a deny, drops) one frame decided at once.
    fn finish(&mut self, h: Held, d: &Decision) {
        let verdict = Verdict::decide(h.service, d.classes);
        if verdict.is_allow() {
            let data = self.sock.data(h.frame);
            match self.tap.release(data, release::checksum_state(data, &h.info)) {
                Ok(()) => {
                    inc(&self.stats.released);
                    self.stats.observe_hold(h.at.elapsed());
                }
                Err(e) => {
                    inc(&self.stats.release_errors);
                    tracing::warn!(error = %e, dst = %h.info.dst, "releasing a held packet failed; dropped");
                }
            }
        } else if let Some(reason) = Reason::from_verdict(verdict) {
            inc(&self.stats.dropped_after_hold);
            self.record(&h, reason);
        }
        self.sock.recycle(h.frame);
    }

    fn record(&self, h: &Held, reason: Reason) {
        self.events.record(&DetectionEvent {
            time_ms: now_ms(),
            src: h.info.src,
            dst: h.info.dst,
            proto: proto_name(h.info.proto),
            dport: h.info.ports.map_or(0, |p| p.1),
            service: h.service,
            reason,
            vlan: h.info.vlan,
            point: self.point.clone(),
            suppressed: 0,
            src_mac: Some(h.info.src_mac),
        });
    }

    /// Drops frames that waited longer than the hold timeout (their
    /// question stays in flight; its answer is still cached).
    fn expire(&mut self) {
        let Some(cut) = Instant::now().checked_sub(self.cfg.hold_timeout) else { return };
        let mut expired = Vec::new();
        for v in self.groups.values_mut() {
            if v.iter().any(|h| h.at <= cut) {
                let (old, keep): (Vec<Held>, Vec<Held>) = v.drain(..).partition(|h| h.at <= cut);
                *v = keep;
                expired.extend(old);
            }
        }
        for h in expired {
            self.held -= 1;
            inc(&self.stats.hold_timeouts);
            self.sock.recycle(h.frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Transport;

    fn ports() -> HashMap<(u8, u16), Service> {
        [
            ProtectedPort { proto: Transport::Tcp, port: 25, service: Service::Smtp },
            ProtectedPort { proto: Transport::Udp, port: 53, service: Service::Dns },
        ]
        .iter()
        .map(|p| ((p.proto.number(), p.port), p.service))
        .collect()
    }

    fn syn(dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 10, 198, 51, 100, 25]);
        f.extend_from_slice(&[0x9c, 0x40]);
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn only_whole_protected_packets_are_judged() {
        let p = ports();
        let (info, service) = judge(&syn(25), &p).expect("a protected SYN");
        assert_eq!((service, info.dst), (Service::Smtp, "198.51.100.25".parse().expect("ip")));
        // Unprotected port, every truncation, a later fragment, a bad IHL: never.
        assert!(judge(&syn(80), &p).is_none());
        let f = syn(25);
        for cut in 0..37 {
            assert!(judge(&f[..cut], &p).is_none(), "cut at {cut}");
        }
        let mut frag = syn(25);
        frag[20] = 0x00;
        frag[21] = 0x10;
        assert!(judge(&frag, &p).is_none());
        let mut ihl = syn(25);
        ihl[14] = 0x43;
        assert!(judge(&ihl, &p).is_none());
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic, and what passes is protected.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Some((info, service)) = judge(&bytes, &ports()) {
                let dport = info.ports.map(|p| p.1);
                proptest::prop_assert!(matches!((service, dport), (Service::Smtp, Some(25)) | (Service::Dns, Some(53))));
            }
        }
    }

    #[test]
    fn quantiles_and_prometheus() {
        let s = HoldStats::default();
        for us in [5u64, 30, 30, 150, 700] {
            s.observe_hold(Duration::from_micros(us));
        }
        let snap = s.snapshot();
        assert_eq!(snap.hold_quantile_us(0.5), Some(50));
        assert_eq!(snap.hold_quantile_us(0.99), Some(1_000));
        let text = snap.prometheus();
        assert!(text.contains("rpz_guard_afxdp_hold_seconds_bucket{le=\"0.0002\"} 4"), "{text}");
        assert!(text.contains("rpz_guard_afxdp_hold_seconds_count 5"));
    }
}
