//! One switch session: framing the byte stream, the HELLO/FEATURES
//! handshake and the main loop (messages, ECHO keepalive, allow-set
//! changes).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::{io::AsyncReadExt, sync::broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{MAX_DECODE_ERRORS, SessionEnd, conn::Conn, decide::TokenBucket};
use crate::{
    events::now_ms,
    openflow::{
        SwitchStatus, bump,
        codec::{
            Body, DecodeError, ErrorMsg, HEADER_LEN, Message, MultipartReply, MultipartReplyBody,
            OFP_VERSION, error_code, error_type, message_len,
        },
    },
    policy::{AllowSet, Classes, Prefix},
};

/// Decisions waiting for the RPZ, driven by the session's own loop (a
/// decision is a few short steps; a task each cost more than the steps).
pub(super) type Pending = FuturesUnordered<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

/// Cuts messages out of the byte stream.
#[derive(Default)]
pub(super) struct Framer {
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
}

pub(super) enum Frame {
    Msg(Message),
    Bad { err: DecodeError, head: Vec<u8> },
}

impl Framer {
    pub(super) fn next(&mut self) -> Result<Option<Frame>, SessionEnd> {
        let pending = &self.buf[self.start..];
        let Some(len) = message_len(pending) else { return Ok(None) };
        // Garbage (not an OpenFlow header at all) is refused at once rather
        // than waiting for a nonsense length to arrive.
        if !(1..=6).contains(&pending[0]) {
            return Err(SessionEnd::Protocol(format!("not OpenFlow (version byte {:#04x})", pending[0])));
        }
        if len < HEADER_LEN {
            return Err(SessionEnd::Protocol(format!("message length {len} below the header size")));
        }
        if pending.len() < len {
            return Ok(None);
        }
        let bytes = &pending[..len];
        self.start += len;
        Ok(Some(match Message::decode(bytes) {
            Ok(m) => Frame::Msg(m),
            Err(err) => Frame::Bad { err, head: bytes[..bytes.len().min(64)].to_vec() },
        }))
    }

    /// Drops consumed bytes so the buffer does not grow.
    pub(super) fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

pub(super) struct Session {
    pub(super) conn: Arc<Conn>,
    pub(super) rd: super::Reader,
    pub(super) framer: Framer,
    /// The silence clock: when the switch was last heard from, moved on by
    /// the time this session spent not reading (a long diff, a full send
    /// queue). A switch is not called dead for silence we did not listen to.
    pub(super) heard: Instant,
    /// When the switch's last message was read.
    pub(super) last_rx: Instant,
    pub(super) applied: Arc<AllowSet>,
    /// Entries of `applied` left out for lack of flow budget; every other
    /// entry with ports to protect has its proactive flows installed. (Not
    /// a copy of the set: a switch costs little beyond its queue.)
    pub(super) skipped: HashSet<Prefix>,
    pub(super) proactive_flows: usize,
    pub(super) bucket: TokenBucket,
    pub(super) decode_errors: u32,
    /// Live learning: classes installed beyond `applied` (entries learned
    /// live and not yet in the zone), so what is installed for `p` is
    /// `applied.get(p) ∪ extra[p]`.
    pub(super) extra: HashMap<Prefix, Classes>,
    /// Live learning: the learning flows' own packet-in limit.
    pub(super) learn_bucket: TokenBucket,
    /// Live learning: entries taught by any session (taken by the main loop).
    pub(super) learned: Option<broadcast::Receiver<(IpAddr, Classes)>>,
    /// Live learning: barriers sent behind learned flows, with the time
    /// their answer arrived (for the answer → flows confirmed lag).
    pub(super) barriers: VecDeque<(u32, u64)>,
    /// Live learning: drops of the learning meter counted so far.
    pub(super) learn_meter_seen: u64,
    /// The reading of the allow flows' statistics in progress (last hits).
    pub(super) hit_poll: HitPoll,
    /// The deny-protected flows are on the switch (no allow set loaded yet).
    pub(super) not_loaded: bool,
    /// Event budget per source for deny-protected drops.
    pub(super) not_loaded_events: super::decide::SourceBudget,
}

impl Session {
    /// The session's life; `hs` is what is left of the handshake timeout
    /// (TLS took the rest).
    pub(super) async fn run(
        &mut self,
        peer: SocketAddr,
        hs: Duration,
        cancel: &CancellationToken,
    ) -> SessionEnd {
        let dpid = tokio::select! {
            () = cancel.cancelled() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(hs, self.handshake()) => match r {
                Err(_) => return SessionEnd::HandshakeTimeout(self.conn.cfg.handshake_timeout()),
                Ok(Err(e)) => return e,
                Ok(Ok(d)) => d,
            },
        };
        tracing::Span::current().record("dpid", format!("{dpid:016x}"));
        // Refused before the first FLOW_MOD.
        if !self.conn.shared.board().dpid_allowed(dpid) {
            return SessionEnd::DpidNotAllowed(dpid);
        }
        self.conn.dpid.store(dpid, Ordering::Relaxed);
        let _ = self.conn.point.set(format!("openflow:{dpid:016x}"));
        self.conn.shared.board().add_switch(
            self.conn.id,
            self.conn.live.clone(),
            SwitchStatus {
                dpid,
                peer,
                since_ms: now_ms(),
                tls: self.conn.tls,
                proactive_flows: 0,
                over_budget_entries: 0,
                flows_installed: 0,
                packet_ins: 0,
                send_queue_bytes: 0,
                resyncs: 0,
            },
        );
        let synced = tokio::select! {
            () = cancel.cancelled() => return SessionEnd::Shutdown,
            r = self.resync() => r,
        };
        if let Err(e) = synced {
            return e;
        }
        info!(entries = self.applied.len(), flows = self.proactive_flows, "switch synchronised");
        match self.serve(cancel).await {
            Ok(()) => SessionEnd::Shutdown,
            Err(e) => e,
        }
    }

    /// Reads more bytes; `Closed` at end of stream.
    pub(super) async fn fill(&mut self) -> Result<(), SessionEnd> {
        self.framer.compact();
        self.framer.buf.reserve(16 * 1024);
        let n = self.rd.read_buf(&mut self.framer.buf).await?;
        if n == 0 {
            return Err(SessionEnd::Closed);
        }
        Ok(())
    }

    /// Next complete message; bad ones are answered and counted.
    pub(super) async fn next_message(&mut self) -> Result<Message, SessionEnd> {
        loop {
            match self.framer.next()? {
                Some(Frame::Msg(m)) => {
                    self.heard = Instant::now();
                    self.last_rx = self.heard;
                    return Ok(m);
                }
                Some(Frame::Bad { err, head }) => self.bad_message(err, head).await?,
                None => self.fill().await?,
            }
        }
    }

    pub(super) async fn bad_message(&mut self, err: DecodeError, head: Vec<u8>) -> Result<(), SessionEnd> {
        self.decode_errors += 1;
        warn!(error = %err, "undecodable message from switch");
        let (code, fatal) = match err {
            DecodeError::BadVersion { .. } => (error_code::BAD_VERSION, true),
            DecodeError::BadLength { .. } => (error_code::BAD_LEN, false),
            _ => (error_code::BAD_LEN, false),
        };
        let xid = head.get(4..8).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        self.conn.try_send_reply(
            xid,
            Body::Error(ErrorMsg { err_type: error_type::BAD_REQUEST, code, data: head }),
        );
        if fatal || self.decode_errors > MAX_DECODE_ERRORS {
            return Err(SessionEnd::Protocol(err.to_string()));
        }
        bump(&self.conn.shared.board().protocol_errors);
        Ok(())
    }

    /// HELLO both ways (1.3 only), then FEATURES; returns the datapath id.
    pub(super) async fn handshake(&mut self) -> Result<u64, SessionEnd> {
        self.conn.send(Body::Hello { version: OFP_VERSION, bitmap: Some(1 << OFP_VERSION) }).await?;
        let m = self.next_message().await?;
        match m.body {
            Body::Hello { version, bitmap } => {
                let ok = match bitmap {
                    Some(b) => b & (1 << OFP_VERSION) != 0,
                    None => version >= OFP_VERSION,
                };
                if !ok {
                    let text = b"rpz-guard speaks OpenFlow 1.3 only".to_vec();
                    self.conn.try_send_reply(
                        m.xid,
                        Body::Error(ErrorMsg {
                            err_type: error_type::HELLO_FAILED,
                            code: error_code::HELLO_INCOMPATIBLE,
                            data: text,
                        }),
                    );
                    return Err(SessionEnd::Protocol(format!(
                        "no common version (peer version {version:#04x}, bitmap {bitmap:?})"
                    )));
                }
            }
            Body::Error(e) => return Err(SessionEnd::Protocol(format!("error before HELLO: {e}"))),
            _ => return Err(SessionEnd::Protocol("message before HELLO".into())),
        }
        self.conn.send(Body::FeaturesRequest).await?;
        loop {
            let m = self.next_message().await?;
            match m.body {
                Body::FeaturesReply(f) if f.auxiliary_id == 0 => return Ok(f.datapath_id),
                Body::FeaturesReply(_) => {
                    return Err(SessionEnd::Protocol("auxiliary connections are not supported".into()));
                }
                Body::EchoRequest(d) => {
                    self.conn.try_send_reply(m.xid, Body::EchoReply(d));
                }
                Body::Error(e) => {
                    bump(&self.conn.shared.board().switch_errors);
                    return Err(SessionEnd::Protocol(format!("error during handshake: {e}")));
                }
                Body::Hello { .. } => return Err(SessionEnd::Protocol("second HELLO".into())),
                _ => {}
            }
        }
    }

    pub(super) async fn serve(&mut self, cancel: &CancellationToken) -> Result<(), SessionEnd> {
        let mut echo = tokio::time::interval(self.conn.cfg.echo_interval());
        echo.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut allow = self.conn.shared.allow.clone();
        let mut watching = true;
        // The resync used the current set; only later changes matter.
        allow.mark_unchanged();
        // Packet-ins waiting for the RPZ: polled here, no task each.
        let mut pending = Pending::new();
        if !Arc::ptr_eq(&allow.borrow(), &self.applied) {
            let now = allow.borrow().clone();
            self.apply(now, &mut pending).await?;
        }
        let mut loaded = self.conn.shared.loaded_rx();
        let mut watching_loaded = true;
        if *loaded.borrow_and_update() {
            self.leave_not_loaded(&mut pending).await?;
        }
        let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
        // Listening starts now: the resync and the first diff were not.
        self.heard = Instant::now();
        let queue = self.conn.queue.clone();
        let mut learned = self.learned.take();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = queue.writer_done.cancelled() => {
                    return Err(if queue.stalled() {
                        SessionEnd::Stalled(self.conn.cfg.drain_timeout())
                    } else {
                        SessionEnd::Writer
                    });
                }
                r = self.next_message() => {
                    let m = r?;
                    let deaf = Instant::now();
                    self.handle(m, &mut pending).await?;
                    self.not_listening_since(deaf);
                }
                Some(()) = pending.next(), if !pending.is_empty() => {}
                _ = echo.tick() => {
                    if let Some(m) = self.unless_dead()? {
                        let deaf = Instant::now();
                        self.handle(m, &mut pending).await?;
                        self.not_listening_since(deaf);
                        continue;
                    }
                    // Never waits: a full queue already keeps the switch busy.
                    self.conn.try_send_reply(self.conn.next_xid(), Body::EchoRequest(Vec::new()));
                }
                _ = stats_tick.tick() => {
                    self.publish();
                    self.poll_learn_meter();
                    self.poll_hits();
                }
                r = recv_learned(&mut learned) => {
                    if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                        learned = None;
                    } else {
                        let deaf = Instant::now();
                        self.learned_elsewhere(r).await?;
                        self.not_listening_since(deaf);
                    }
                }
                r = allow.changed(), if watching => {
                    if r.is_err() {
                        watching = false;
                        continue;
                    }
                    let new = allow.borrow_and_update().clone();
                    let deaf = Instant::now();
                    self.apply(new, &mut pending).await?;
                    self.not_listening_since(deaf);
                }
                r = loaded.changed(), if watching_loaded => {
                    // The daemon drops the sender once loaded: read it either way.
                    watching_loaded = r.is_ok();
                    if *loaded.borrow_and_update() {
                        let deaf = Instant::now();
                        self.leave_not_loaded(&mut pending).await?;
                        self.not_listening_since(deaf);
                    }
                }
            }
        }
    }

    /// The dead-peer check. The switch is dead when it was silent for
    /// `dead_peer` while we listened, or sent nothing at all for `dead_peer`
    /// plus the drain timeout (a busy switch answers the progress barriers
    /// well within that; a peer that only reads does not), and no message
    /// waits unread: one that does is returned, to be handled.
    fn unless_dead(&mut self) -> Result<Option<Message>, SessionEnd> {
        let dead = self.conn.cfg.dead_peer();
        if self.heard.elapsed() <= dead && self.last_rx.elapsed() <= dead + self.conn.cfg.drain_timeout() {
            return Ok(None);
        }
        // Unconstrained: a spent task budget must not hide a ready socket.
        match tokio::task::unconstrained(self.next_message()).now_or_never() {
            Some(m) => m.map(Some),
            None => Err(SessionEnd::Dead(dead)),
        }
    }

    /// The session did not read from `since` until now: that time does not
    /// count as the switch's silence.
    fn not_listening_since(&mut self, since: Instant) {
        let now = Instant::now();
        self.heard = (self.heard + now.duration_since(since)).min(now);
    }

    pub(super) async fn handle(&mut self, m: Message, pending: &mut Pending) -> Result<(), SessionEnd> {
        let board = self.conn.shared.board();
        match m.body {
            Body::EchoRequest(d) => {
                self.conn.try_send_reply(m.xid, Body::EchoReply(d));
            }
            Body::Error(e) => {
                bump(&board.switch_errors);
                warn!(error = %e, xid = m.xid, "switch reported an error");
                if self.hit_poll.pending.is_some_and(|(x, _)| x == m.xid) {
                    // The flow-stats reading failed: asked again next interval.
                    self.hit_poll.pending = None;
                    self.conn.shared.hits.poll_failed();
                }
            }
            Body::FlowRemoved(f) => {
                bump(&board.flows_removed);
                debug!(cookie = f.cookie, reason = f.reason, packets = f.packet_count, "flow removed");
            }
            Body::PacketIn(pi) if crate::openflow::flows::is_learn_cookie(pi.cookie) => {
                return self.learn_packet_in(pi, pending).await;
            }
            Body::BarrierReply => self.barrier_reply(m.xid),
            Body::MultipartReply(MultipartReply { body: MultipartReplyBody::Meter(ms), .. }) => {
                self.learn_meter_stats(&ms);
            }
            Body::MultipartReply(MultipartReply { flags, body: MultipartReplyBody::Flow(fs) }) => {
                self.hit_stats(m.xid, flags, fs);
            }
            Body::PacketIn(pi) => {
                return if self.packet_in(pi, pending).await {
                    Ok(())
                } else {
                    Err(SessionEnd::Stalled(self.conn.cfg.drain_timeout()))
                };
            }
            Body::Hello { .. } => {
                return Err(SessionEnd::Protocol("second HELLO".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A reading of the switch's allow-flow statistics (see
/// [`crate::openflow::hits`]): the request in flight and the parts
/// received so far.
#[derive(Default)]
pub(super) struct HitPoll {
    /// The request's xid and when it went out.
    pending: Option<(u32, Instant)>,
    /// Parts of the reply so far (OVS splits a long one).
    parts: Vec<crate::openflow::codec::FlowStats>,
    /// The last request.
    last: Option<Instant>,
}

/// A reading not answered within this long is asked again.
const HIT_POLL_TIMEOUT: Duration = Duration::from_secs(30);

impl Session {
    /// Asks for the allow flows' statistics every `hit_poll_secs`, one
    /// reading at a time.
    fn poll_hits(&mut self) {
        let every = self.conn.cfg.hit_poll_secs;
        let p = &mut self.hit_poll;
        if p.last.is_none() {
            // The flows were just installed: the first reading one interval on.
            p.last = Some(Instant::now());
            return;
        }
        if every == 0
            || p.last.is_some_and(|t| t.elapsed() < Duration::from_secs(every))
            || p.pending.is_some_and(|(_, t)| t.elapsed() < HIT_POLL_TIMEOUT)
        {
            return;
        }
        if p.pending.take().is_some() {
            // Unanswered within HIT_POLL_TIMEOUT.
            self.conn.shared.hits.poll_failed();
        }
        let xid = self.conn.next_xid();
        let req = Body::MultipartRequest(crate::openflow::hits::request());
        let now = Instant::now();
        if self.conn.try_send_reply(xid, req) {
            p.pending = Some((xid, now));
            p.parts.clear();
        } else {
            self.conn.shared.hits.poll_failed();
        }
        // A failed send is tried again one interval on, not at once.
        p.last = Some(now);
    }

    /// One part of the statistics reply; the last one completes the reading.
    fn hit_stats(&mut self, xid: u32, flags: u16, mut stats: Vec<crate::openflow::codec::FlowStats>) {
        let p = &mut self.hit_poll;
        if p.pending.map(|(x, _)| x) != Some(xid) {
            return;
        }
        p.parts.append(&mut stats);
        if flags & crate::openflow::codec::MP_MORE == 0 {
            p.pending = None;
            let parts = std::mem::take(&mut p.parts);
            self.conn.shared.hits.observe(self.conn.id, &parts, Instant::now());
        }
    }
}

/// The next learned entry; pending forever without live learning.
async fn recv_learned(
    rx: &mut Option<broadcast::Receiver<(IpAddr, Classes)>>,
) -> Result<(IpAddr, Classes), broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
