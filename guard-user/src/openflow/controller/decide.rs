//! Packet-in decisions: the mirrored allow set first, then the RPZ through
//! the miss path; the verdict becomes a flow and, when allowed, a
//! PACKET_OUT of the triggering packet.

use std::{
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use guard_common::Stat;
use tracing::debug;

use super::{
    conn::Conn,
    session::{Pending, Session},
};
use crate::{
    events::{DetectionEvent, Reason, now_ms, proto_name},
    frame::{self, FrameError, PacketInfo},
    openflow::{
        ProtectedPort, bump,
        codec::{Action, Body, NO_BUFFER, OFPP_CONTROLLER, OFPP_NORMAL, PacketIn, PacketOut},
        flows,
    },
    policy::{Classes, Prefix, Verdict},
};

impl Conn {
    pub(super) fn point(&self) -> String {
        match self.point.get() {
            Some(p) => p.clone(),
            None => format!("openflow:{:016x}", self.dpid.load(Ordering::Relaxed)),
        }
    }

    /// Sends the triggering packet on through the switch's normal path.
    pub(super) async fn forward(&self, in_port: u32, pi: &PacketIn) -> bool {
        let buffered = pi.buffer_id != NO_BUFFER;
        self.push(Body::PacketOut(PacketOut {
            buffer_id: pi.buffer_id,
            in_port,
            actions: vec![Action::output(OFPP_NORMAL)],
            data: if buffered { Vec::new() } else { pi.data.clone() },
        }))
        .await
    }

    /// Admits the triggering packet: sends it on first (it need not wait
    /// for the flow install), then installs the allow flow for `ttl`.
    /// False when the switch stopped reading.
    pub(super) async fn admit(
        &self,
        info: &PacketInfo,
        pp: &ProtectedPort,
        in_port: u32,
        pi: &PacketIn,
        ttl: Duration,
    ) -> bool {
        self.forward(in_port, pi).await && self.install_verdict(info, pp, true, ttl).await
    }

    pub(super) async fn install_verdict(
        &self,
        info: &PacketInfo,
        pp: &ProtectedPort,
        allow: bool,
        ttl: Duration,
    ) -> bool {
        let ttl_secs = u16::try_from(ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)))
            .unwrap_or(u16::MAX);
        let hard = self.cfg.verdict_hard_secs.min(ttl_secs).max(1);
        let idle = self.cfg.verdict_idle_secs.min(hard);
        self.push(Body::FlowMod(flows::verdict_flow(info.dst, pp, allow, idle, hard, None))).await
    }

    pub(super) fn record(&self, info: &PacketInfo, pp: &ProtectedPort, reason: Reason) {
        self.record_suppressed(info, pp, reason, 0);
    }

    /// As [`Conn::record`], saying how many events of this source the rate
    /// limit suppressed before this one.
    pub(super) fn record_suppressed(
        &self,
        info: &PacketInfo,
        pp: &ProtectedPort,
        reason: Reason,
        suppressed: u32,
    ) {
        let ev = DetectionEvent {
            time_ms: now_ms(),
            src: info.src,
            dst: info.dst,
            proto: proto_name(info.proto),
            dport: pp.port,
            service: pp.service,
            reason,
            vlan: info.vlan,
            point: self.point(),
            suppressed,
            src_mac: Some(info.src_mac),
        };
        // The event is the record, as in XDP mode; a log line per block
        // would flood the journal under a scan.
        debug!(src = %ev.src, dst = %ev.dst, dport = ev.dport, reason = ?reason, "blocked");
        self.shared.events.record(&ev);
        self.shared.counters.inc(Stat::EventsSent);
    }

    /// Finishes a decision that needed the RPZ. `known` is what the set of
    /// generation `seen` held for the destination.
    pub(super) async fn decide_miss(
        self: Arc<Self>,
        info: PacketInfo,
        pp: ProtectedPort,
        mut known: Classes,
        mut seen: u64,
        in_port: u32,
        pi: PacketIn,
    ) {
        let mut tries = 0;
        let (verdict, ttl, _gate) = loop {
            let (answer, ttl) = self.shared.resolver.classes(info.dst).await;
            let verdict = Verdict::decide(pp.service, known.union(answer));
            let gate = self.set_gate.read().await;
            if *gate == seen {
                // Held until the verdict is queued: a set change waits for it.
                break (verdict, ttl, gate);
            }
            // The set changed under us (its flows and the resolver's cache
            // were just replaced): decide again on the new one.
            seen = *gate;
            known = Classes::NONE;
            tries += 1;
            if tries == 3 {
                debug!(dst = %info.dst, "allow set changing too fast; packet-in dropped");
                return;
            }
        };
        let counters = &self.shared.counters;
        match Reason::from_verdict(verdict) {
            None => {
                counters.inc(Stat::PassCached);
                self.admit(&info, &pp, in_port, &pi, ttl).await;
            }
            Some(reason) => {
                counters.inc(if reason == Reason::WrongClass {
                    Stat::DropWrongClass
                } else {
                    Stat::DropNotRegistered
                });
                let _ = self.install_verdict(&info, &pp, false, ttl).await;
                self.record(&info, &pp, reason);
            }
        }
    }
}

pub(super) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket { rate, tokens: rate, last: Instant::now() }
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-source event budget for deny-protected drops (the XDP program's
/// `EVENT_RATE` map, here per switch): at most `per_sec` events per source
/// per second, the rest counted and reported with the next one sent.
pub(super) struct SourceBudget {
    per_sec: u32,
    /// Source → (window start, sent in the window, suppressed since the last sent).
    seen: std::collections::HashMap<IpAddr, (Instant, u32, u32)>,
}

impl SourceBudget {
    /// Sources remembered; beyond it the table starts afresh (a spoofed
    /// flood cannot grow it, and a fresh table only lets events through).
    const MAX_SOURCES: usize = 4096;

    pub(super) fn new(per_sec: u32) -> Self {
        SourceBudget { per_sec: per_sec.max(1), seen: std::collections::HashMap::new() }
    }

    /// Some(suppressed before this one) when an event for `src` may go now.
    pub(super) fn admit(&mut self, src: IpAddr, now: Instant) -> Option<u32> {
        if self.seen.len() >= Self::MAX_SOURCES && !self.seen.contains_key(&src) {
            self.seen.clear();
        }
        let e = self.seen.entry(src).or_insert((now, 0, 0));
        if now.duration_since(e.0) >= Duration::from_secs(1) {
            (e.0, e.1) = (now, 0);
        }
        if e.1 < self.per_sec {
            e.1 += 1;
            Some(std::mem::take(&mut e.2))
        } else {
            e.2 = e.2.saturating_add(1);
            None
        }
    }
}

impl Session {
    /// Decides one packet-in; false when the switch stopped reading.
    pub(super) async fn packet_in(&mut self, pi: PacketIn, pending: &mut Pending) -> bool {
        let conn = &self.conn;
        let counters = &conn.shared.counters;
        let board = conn.shared.board();
        bump(&board.packet_ins);
        bump(&conn.live.packet_ins);
        counters.inc(Stat::Packets);
        counters.add(Stat::Bytes, u64::from(pi.total_len));
        if !self.bucket.take() {
            bump(&board.packet_ins_dropped);
            return true;
        }
        let in_port = pi.r#match.in_port().unwrap_or(OFPP_CONTROLLER);
        // The same awkward-packet policy as the XDP program (`frame` module).
        let info = match frame::parse(&pi.data) {
            Ok(i) => i,
            Err(FrameError::NotIp { .. }) => {
                // Behind more VLAN tags than the switch parses: not ours to judge.
                counters.inc(Stat::NonIp);
                return conn.forward(in_port, &pi).await;
            }
            Err(e) => {
                counters.inc(if e == FrameError::TooManyExtHeaders {
                    Stat::DropExtChain
                } else {
                    Stat::DropMalformed
                });
                debug!(error = %e, "packet-in not parsed; dropped");
                return true;
            }
        };
        counters.inc(if info.src.is_ipv4() { Stat::Ipv4 } else { Stat::Ipv6 });
        if info.vlan.is_some() {
            counters.inc(Stat::Vlan);
        }
        let cfg = &conn.cfg;
        let Some((_, dport)) = info.ports else {
            counters.inc(if info.later_fragment { Stat::Fragment } else { Stat::Unprotected });
            return conn.forward(in_port, &pi).await;
        };
        let Some(pp) = cfg.protected_port(info.proto, dport).copied() else {
            counters.inc(Stat::Unprotected);
            return conn.forward(in_port, &pi).await;
        };
        if in_any(&cfg.exempt_sources, info.src) {
            // The exempt flows match only where the exemption is honoured,
            // so what reaches the controller is mostly spoofed.
            if !cfg.exempt_origin().honours(info.src_mac, in_port) {
                counters.inc(Stat::DropSpoofedExempt);
                conn.record(&info, &pp, Reason::SpoofedExempt);
                return true;
            }
            counters.inc(Stat::ExemptSource);
            return conn.forward(in_port, &pi).await;
        }
        if in_any(&cfg.internal_networks, info.dst) {
            counters.inc(Stat::InternalDest);
            return conn.forward(in_port, &pi).await;
        }
        // A deny (its flow sends the packet here) beats every allow.
        let Some(mut known) = self.applied.lookup_unless_denied(info.dst) else {
            counters.inc(Stat::DropNotRegistered);
            conn.record(&info, &pp, Reason::Denied);
            return true;
        };
        if !pp.service.allows(known) {
            // Learned live, its flows not in yet (another switch, over budget).
            known = known.union(self.live_classes(info.dst));
        }
        if pp.service.allows(known) {
            counters.inc(Stat::PassAllowed);
            let hard = Duration::from_secs(u64::from(cfg.verdict_hard_secs));
            return conn.admit(&info, &pp, in_port, &pi, hard).await;
        }
        if !conn.shared.is_loaded() {
            // Deny-protected (no allow set yet): dropped and reported
            // without asking the RPZ, and no verdict flow (none is final).
            counters.inc(Stat::DropNotLoaded);
            match self.not_loaded_events.admit(info.src, Instant::now()) {
                Some(suppressed) => conn.record_suppressed(&info, &pp, Reason::NotLoaded, suppressed),
                None => counters.inc(Stat::EventsRateLimited),
            }
            return true;
        }
        counters.inc(Stat::Miss);
        let seen = *conn.set_gate.read().await;
        let Ok(permit) = conn.decisions.clone().try_acquire_owned() else {
            bump(&board.packet_ins_dropped);
            return true;
        };
        let conn = conn.clone();
        // Dropped with the session when it ends.
        pending.push(Box::pin(async move {
            conn.decide_miss(info, pp, known, seen, in_port, pi).await;
            drop(permit);
        }));
        true
    }
}

fn in_any(prefixes: &[Prefix], ip: IpAddr) -> bool {
    prefixes.iter().any(|p| p.contains(ip))
}
