//! The OpenFlow 1.3 controller: one tokio task per switch connection (with
//! a tracing span carrying peer and datapath id), a writer task per
//! connection, and one short task per packet-in that needs the RPZ.
//!
//! Connection life: HELLO (version bitmap, 1.3 only) → FEATURES → resync
//! (SET_CONFIG, delete every flow with our cookie tag, meter, base flows,
//! proactive flows, BARRIER) → serve packet-ins, ECHO keepalive, allow-set
//! diffs. A peer that speaks another version, sends a length below the
//! header, garbage, or stays silent past the dead-peer timeout is
//! disconnected; other switches are unaffected.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use guard_common::Stat;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::{
    ControllerConfig, ControllerShared, OpenflowError, ProtectedPort, SwitchStatus, bump,
    codec::{
        Action, Body, DecodeError, ErrorMsg, HEADER_LEN, Message, MeterBand, MeterMod, NO_BUFFER,
        OFP_VERSION, OFPP_CONTROLLER, OFPP_NORMAL, PacketIn, PacketOut, SwitchConfig, error_code, error_type,
        flow_cmd, frag, message_len, meter_cmd, meter_flags,
    },
    flows,
    packet::{self, PacketError, PacketInfo},
};
use crate::{
    events::{DetectionEvent, Reason, now_ms, proto_name},
    policy::{AllowSet, Classes, Prefix, Verdict},
};

/// Messages queued toward one switch before packet-in replies are shed.
const OUT_QUEUE: usize = 4096;
/// Decode errors tolerated on one connection before it is closed.
const MAX_DECODE_ERRORS: u32 = 16;

/// Listens on `cfg.listen` and serves switches until `cancel` fires.
pub async fn serve(
    cfg: ControllerConfig,
    shared: ControllerShared,
    cancel: CancellationToken,
) -> Result<(), OpenflowError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| OpenflowError::Listen { addr: cfg.listen, source })?;
    serve_listener(listener, cfg, shared, cancel).await
}

/// Serves switches on an already bound listener (tests bind port 0);
/// `cfg.listen` is ignored.
pub async fn serve_listener(
    listener: TcpListener,
    cfg: ControllerConfig,
    shared: ControllerShared,
    cancel: CancellationToken,
) -> Result<(), OpenflowError> {
    let local = listener.local_addr().ok();
    *shared.board().listen.lock().unwrap_or_else(|e| e.into_inner()) = local;
    info!(listen = ?local, "OpenFlow controller listening");
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.max_switches.max(1)));
    let next_id = AtomicU64::new(1);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    bump(&shared.board().connections);
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        warn!(%peer, max = cfg.max_switches, "too many switches; refusing connection");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("switch", %peer, dpid = tracing::field::Empty);
                    let (cfg, shared, cancel) = (cfg.clone(), shared.clone(), cancel.clone());
                    tasks.spawn(
                        async move {
                            run_connection(id, stream, peer, cfg, shared, cancel).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    while tasks.join_next().await.is_some() {}
    info!("OpenFlow controller stopped");
    Ok(())
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("peer closed the connection")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no message for {0:?}: dead peer")]
    Dead(Duration),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("writer gone or stalled")]
    Writer,
    #[error("shutdown")]
    Shutdown,
}

async fn run_connection(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<ControllerConfig>,
    shared: ControllerShared,
    cancel: CancellationToken,
) {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let writer = tokio::spawn(write_loop(wr, rx).in_current_span());
    let tasks_stop = CancellationToken::new();
    let conn = Arc::new(Conn {
        id,
        cfg: cfg.clone(),
        shared: shared.clone(),
        tx,
        xid: AtomicU32::new(1),
        dpid: AtomicU64::new(0),
        decisions: Arc::new(Semaphore::new(cfg.max_pending_decisions.max(1))),
        stop: tasks_stop.clone(),
        packet_ins: AtomicU64::new(0),
    });
    let mut session = Session {
        conn: conn.clone(),
        rd,
        framer: Framer::default(),
        last_rx: Instant::now(),
        applied: Arc::new(AllowSet::new()),
        installed: HashMap::new(),
        proactive_flows: 0,
        over_budget: 0,
        bucket: TokenBucket::new(cfg.max_packet_ins_per_sec),
        decode_errors: 0,
    };
    let end = session.run(peer, &cancel).await;
    match &end {
        SessionEnd::Shutdown => info!("switch session ended by shutdown"),
        SessionEnd::Protocol(_) => {
            bump(&shared.board().protocol_errors);
            warn!(reason = %end, "switch disconnected");
        }
        _ => info!(reason = %end, "switch disconnected"),
    }
    shared.board().switches.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    // Stop decision tasks, let the writer flush (e.g. a final ERROR), close.
    tasks_stop.cancel();
    drop(session);
    drop(conn);
    if tokio::time::timeout(Duration::from_secs(2), writer).await.is_err() {
        debug!("writer did not finish in time");
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(m) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&m);
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(m) => batch.extend_from_slice(&m),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&batch).await {
            debug!(error = %e, "write to switch failed");
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// State shared by a session and its decision tasks.
struct Conn {
    id: u64,
    cfg: Arc<ControllerConfig>,
    shared: ControllerShared,
    tx: mpsc::Sender<Vec<u8>>,
    xid: AtomicU32,
    dpid: AtomicU64,
    decisions: Arc<Semaphore>,
    stop: CancellationToken,
    packet_ins: AtomicU64,
}

impl Conn {
    fn next_xid(&self) -> u32 {
        self.xid.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a message, waiting while the queue is full (control traffic).
    async fn send(&self, body: Body) -> Result<(), SessionEnd> {
        self.count(&body);
        let m = Message::new(self.next_xid(), body).encode();
        self.tx.send_timeout(m, self.cfg.dead_peer()).await.map_err(|_| SessionEnd::Writer)
    }

    /// Queues a reply to `xid` without waiting; false when shed.
    fn try_send_reply(&self, xid: u32, body: Body) -> bool {
        self.count(&body);
        self.tx.try_send(Message::new(xid, body).encode()).is_ok()
    }

    /// Queues a packet-in answer. A full queue pushes back on the reader
    /// of this switch (we stop reading what we cannot answer); a switch that
    /// does not drain it within the dead-peer time loses the answer.
    async fn push(&self, body: Body) -> bool {
        self.count(&body);
        let m = Message::new(self.next_xid(), body).encode();
        let ok = self.tx.send_timeout(m, self.cfg.dead_peer()).await.is_ok();
        if !ok {
            bump(&self.shared.board().packet_ins_dropped);
        }
        ok
    }

    fn count(&self, body: &Body) {
        let b = self.shared.board();
        match body {
            Body::FlowMod(f) if f.command == flow_cmd::ADD => bump(&b.flows_installed),
            Body::FlowMod(_) => bump(&b.flows_deleted),
            Body::PacketOut(_) => bump(&b.packet_outs),
            _ => {}
        }
    }

    fn point(&self) -> String {
        format!("openflow:{:016x}", self.dpid.load(Ordering::Relaxed))
    }

    /// Sends the triggering packet on through the switch's normal path.
    async fn forward(&self, in_port: u32, pi: &PacketIn) -> bool {
        let buffered = pi.buffer_id != NO_BUFFER;
        self.push(Body::PacketOut(PacketOut {
            buffer_id: pi.buffer_id,
            in_port,
            actions: vec![Action::output(OFPP_NORMAL)],
            data: if buffered { Vec::new() } else { pi.data.clone() },
        }))
        .await
    }

    async fn install_verdict(
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

    fn record(&self, info: &PacketInfo, pp: &ProtectedPort, reason: Reason) {
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
            suppressed: 0,
        };
        info!(src = %ev.src, dst = %ev.dst, dport = ev.dport, reason = ?reason, "blocked");
        self.shared.events.record(&ev);
        self.shared.counters.inc(Stat::EventsSent);
    }

    /// Finishes a decision that needed the RPZ.
    async fn decide_miss(
        self: Arc<Self>,
        info: PacketInfo,
        pp: ProtectedPort,
        known: Classes,
        in_port: u32,
        pi: PacketIn,
    ) {
        let (answer, ttl) = self.shared.resolver.classes(info.dst).await;
        let classes = known.union(answer);
        let verdict = Verdict::decide(pp.service, classes);
        let counters = &self.shared.counters;
        match Reason::from_verdict(verdict) {
            None => {
                counters.inc(Stat::PassCached);
                if self.install_verdict(&info, &pp, true, ttl).await {
                    self.forward(in_port, &pi).await;
                }
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

/// Cuts messages out of the byte stream.
#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
    start: usize,
}

enum Frame {
    Msg(Message),
    Bad { err: DecodeError, head: Vec<u8> },
}

impl Framer {
    fn next(&mut self) -> Result<Option<Frame>, SessionEnd> {
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
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket { rate, tokens: rate, last: Instant::now() }
    }

    fn take(&mut self) -> bool {
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

struct Session {
    conn: Arc<Conn>,
    rd: tokio::net::tcp::OwnedReadHalf,
    framer: Framer,
    last_rx: Instant,
    applied: Arc<AllowSet>,
    installed: HashMap<Prefix, Classes>,
    proactive_flows: usize,
    over_budget: usize,
    bucket: TokenBucket,
    decode_errors: u32,
}

impl Session {
    async fn run(&mut self, peer: SocketAddr, cancel: &CancellationToken) -> SessionEnd {
        let hs = Duration::from_secs(self.conn.cfg.handshake_secs.max(1));
        let dpid = tokio::select! {
            () = cancel.cancelled() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(hs, self.handshake()) => match r {
                Err(_) => return SessionEnd::HandshakeTimeout(hs),
                Ok(Err(e)) => return e,
                Ok(Ok(d)) => d,
            },
        };
        tracing::Span::current().record("dpid", format!("{dpid:016x}"));
        self.conn.dpid.store(dpid, Ordering::Relaxed);
        self.conn.shared.board().switches.lock().unwrap_or_else(|e| e.into_inner()).insert(
            self.conn.id,
            SwitchStatus {
                dpid,
                peer,
                since_ms: now_ms(),
                proactive_flows: 0,
                over_budget_entries: 0,
                packet_ins: 0,
            },
        );
        if let Err(e) = self.resync().await {
            return e;
        }
        info!(entries = self.applied.len(), flows = self.proactive_flows, "switch synchronised");
        match self.serve(cancel).await {
            Ok(()) => SessionEnd::Shutdown,
            Err(e) => e,
        }
    }

    /// Reads more bytes; `Closed` at end of stream.
    async fn fill(&mut self) -> Result<(), SessionEnd> {
        self.framer.compact();
        self.framer.buf.reserve(16 * 1024);
        let n = self.rd.read_buf(&mut self.framer.buf).await?;
        if n == 0 {
            return Err(SessionEnd::Closed);
        }
        Ok(())
    }

    /// Next complete message; bad ones are answered and counted.
    async fn next_message(&mut self) -> Result<Message, SessionEnd> {
        loop {
            match self.framer.next()? {
                Some(Frame::Msg(m)) => {
                    self.last_rx = Instant::now();
                    return Ok(m);
                }
                Some(Frame::Bad { err, head }) => self.bad_message(err, head).await?,
                None => self.fill().await?,
            }
        }
    }

    async fn bad_message(&mut self, err: DecodeError, head: Vec<u8>) -> Result<(), SessionEnd> {
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
    async fn handshake(&mut self) -> Result<u64, SessionEnd> {
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
                _ => {}
            }
        }
    }

    /// Full resynchronisation: delete all our flows, reinstall everything.
    async fn resync(&mut self) -> Result<(), SessionEnd> {
        let cfg = self.conn.cfg.clone();
        let c = &self.conn;
        c.send(Body::SetConfig(SwitchConfig { flags: frag::NX_MATCH, miss_send_len: 0xffff })).await?;
        c.send(Body::FlowMod(flows::delete_all_ours())).await?;
        if cfg.packet_in_rate > 0 {
            c.send(Body::MeterMod(MeterMod {
                command: meter_cmd::DELETE,
                flags: 0,
                meter_id: flows::PACKET_IN_METER,
                bands: Vec::new(),
            }))
            .await?;
            c.send(Body::MeterMod(MeterMod {
                command: meter_cmd::ADD,
                flags: meter_flags::PKTPS | meter_flags::BURST | meter_flags::STATS,
                meter_id: flows::PACKET_IN_METER,
                bands: vec![MeterBand::drop(cfg.packet_in_rate, cfg.packet_in_burst)],
            }))
            .await?;
        }
        for fm in flows::base_flows(&cfg) {
            c.send(Body::FlowMod(fm)).await?;
        }
        self.installed.clear();
        self.proactive_flows = 0;
        self.over_budget = 0;
        self.applied = c.shared.allow.borrow().clone();
        let set = self.applied.clone();
        for (p, cl) in set.iter() {
            self.try_install(p, *cl).await?;
        }
        self.conn.send(Body::BarrierRequest).await?;
        bump(&self.conn.shared.board().resyncs);
        self.publish();
        Ok(())
    }

    async fn try_install(&mut self, p: &Prefix, classes: Classes) -> Result<(), SessionEnd> {
        let cfg = self.conn.cfg.clone();
        let n = flows::allow_flow_count(&cfg, classes);
        if n == 0 {
            return Ok(());
        }
        if self.proactive_flows + n > cfg.flow_budget {
            self.over_budget += 1;
            return Ok(());
        }
        for fm in flows::allow_flows(&cfg, p, classes, flow_cmd::ADD) {
            self.conn.send(Body::FlowMod(fm)).await?;
        }
        self.installed.insert(*p, classes);
        self.proactive_flows += n;
        Ok(())
    }

    async fn uninstall(&mut self, p: &Prefix) -> Result<(), SessionEnd> {
        let cfg = self.conn.cfg.clone();
        if let Some(old) = self.installed.remove(p) {
            for fm in flows::allow_flows(&cfg, p, old, flow_cmd::DELETE_STRICT) {
                self.conn.send(Body::FlowMod(fm)).await?;
            }
            self.proactive_flows -= flows::allow_flow_count(&cfg, old);
        } else {
            self.over_budget = self.over_budget.saturating_sub(1);
        }
        self.conn.send(Body::FlowMod(flows::delete_verdicts_in(p))).await
    }

    /// Applies an allow-set change as a diff against what this switch has.
    async fn apply(&mut self, new: Arc<AllowSet>) -> Result<(), SessionEnd> {
        let diff = self.applied.diff(&new);
        if diff.is_empty() {
            self.applied = new;
            return Ok(());
        }
        let resolver = &self.conn.shared.resolver;
        let touched = diff.remove.iter().chain(diff.upsert.iter().map(|(p, _)| p));
        if touched.clone().all(Prefix::is_host) {
            resolver.invalidate(touched.map(Prefix::addr));
        } else {
            resolver.clear();
        }
        let had_over = self.over_budget > 0;
        for p in &diff.remove {
            self.uninstall(p).await?;
        }
        for (p, c) in &diff.upsert {
            if self.applied.get(p) == Classes::NONE {
                // New entry: earlier drop verdicts inside it must go now.
                self.conn.send(Body::FlowMod(flows::delete_verdicts_in(p))).await?;
            } else {
                self.uninstall(p).await?;
            }
            self.try_install(p, *c).await?;
        }
        self.applied = new;
        if had_over && !diff.remove.is_empty() {
            // Room may have opened: refill from the whole set.
            self.over_budget = 0;
            let set = self.applied.clone();
            for (p, c) in set.iter() {
                if !self.installed.contains_key(p) {
                    self.try_install(p, *c).await?;
                }
            }
        }
        self.conn.send(Body::BarrierRequest).await?;
        info!(
            upserts = diff.upsert.len(),
            removals = diff.remove.len(),
            flows = self.proactive_flows,
            "allow set applied"
        );
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let mut sw = self.conn.shared.board().switches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sw.get_mut(&self.conn.id) {
            s.proactive_flows = self.proactive_flows;
            s.over_budget_entries = self.over_budget;
            s.packet_ins = self.conn.packet_ins.load(Ordering::Relaxed);
        }
    }

    async fn serve(&mut self, cancel: &CancellationToken) -> Result<(), SessionEnd> {
        let mut echo = tokio::time::interval(self.conn.cfg.echo_interval());
        echo.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut allow = self.conn.shared.allow.clone();
        let mut watching = true;
        // The resync used the current set; only later changes matter.
        allow.mark_unchanged();
        if !Arc::ptr_eq(&allow.borrow(), &self.applied) {
            let now = allow.borrow().clone();
            self.apply(now).await?;
        }
        let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = self.next_message() => {
                    let m = r?;
                    self.handle(m).await?;
                }
                _ = echo.tick() => {
                    let dead = self.conn.cfg.dead_peer();
                    if self.last_rx.elapsed() > dead {
                        return Err(SessionEnd::Dead(dead));
                    }
                    self.conn.send(Body::EchoRequest(Vec::new())).await?;
                }
                _ = stats_tick.tick() => self.publish(),
                r = allow.changed(), if watching => {
                    if r.is_err() {
                        watching = false;
                        continue;
                    }
                    let new = allow.borrow_and_update().clone();
                    self.apply(new).await?;
                }
            }
        }
    }

    async fn handle(&mut self, m: Message) -> Result<(), SessionEnd> {
        let board = self.conn.shared.board();
        match m.body {
            Body::EchoRequest(d) => {
                self.conn.try_send_reply(m.xid, Body::EchoReply(d));
            }
            Body::Error(e) => {
                bump(&board.switch_errors);
                warn!(error = %e, xid = m.xid, "switch reported an error");
            }
            Body::FlowRemoved(f) => {
                bump(&board.flows_removed);
                debug!(cookie = f.cookie, reason = f.reason, packets = f.packet_count, "flow removed");
            }
            Body::PacketIn(pi) => {
                return if self.packet_in(pi).await { Ok(()) } else { Err(SessionEnd::Writer) };
            }
            Body::Hello { .. } => {
                return Err(SessionEnd::Protocol("second HELLO".into()));
            }
            _ => {}
        }
        Ok(())
    }

    /// Decides one packet-in; false when the switch stopped reading.
    async fn packet_in(&mut self, pi: PacketIn) -> bool {
        let conn = &self.conn;
        let counters = &conn.shared.counters;
        let board = conn.shared.board();
        bump(&board.packet_ins);
        conn.packet_ins.fetch_add(1, Ordering::Relaxed);
        counters.inc(Stat::Packets);
        counters.add(Stat::Bytes, u64::from(pi.total_len));
        if !self.bucket.take() {
            bump(&board.packet_ins_dropped);
            return true;
        }
        let info = match packet::parse(&pi.data) {
            Ok(i) => i,
            Err(e) => {
                counters.inc(if matches!(e, PacketError::ExtChain { .. }) {
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
        let in_port = pi.r#match.in_port().unwrap_or(OFPP_CONTROLLER);
        let cfg = &conn.cfg;
        let Some((_, dport)) = info.ports else {
            counters.inc(Stat::Fragment);
            return conn.forward(in_port, &pi).await;
        };
        let Some(pp) = cfg.protected_port(info.proto, dport).copied() else {
            counters.inc(Stat::Unprotected);
            return conn.forward(in_port, &pi).await;
        };
        if in_any(&cfg.exempt_sources, info.src) {
            counters.inc(Stat::ExemptSource);
            return conn.forward(in_port, &pi).await;
        }
        if in_any(&cfg.internal_networks, info.dst) {
            counters.inc(Stat::InternalDest);
            return conn.forward(in_port, &pi).await;
        }
        let known = self.applied.lookup(info.dst);
        if pp.service.allows(known) {
            counters.inc(Stat::PassAllowed);
            conn.install_verdict(&info, &pp, true, Duration::from_secs(u64::from(cfg.verdict_hard_secs)))
                .await;
            return conn.forward(in_port, &pi).await;
        }
        counters.inc(Stat::Miss);
        let Ok(permit) = conn.decisions.clone().try_acquire_owned() else {
            bump(&board.packet_ins_dropped);
            return true;
        };
        let (task_conn, stop) = (conn.clone(), conn.stop.clone());
        tokio::spawn(
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = task_conn.decide_miss(info, pp, known, in_port, pi) => {}
                }
                drop(permit);
            }
            .in_current_span(),
        );
        true
    }
}

fn in_any(prefixes: &[Prefix], ip: IpAddr) -> bool {
    prefixes.iter().any(|p| p.contains(ip))
}
