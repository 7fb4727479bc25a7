//! The NOTIFY listener (RFC 1996) so a secondary learns of zone changes at
//! once, over UDP and over TCP on the same address (RFC 7766 section 5: a
//! DNS implementation must take TCP as well; Knot DNS sends NOTIFY over TCP).
//!
//! Both transports apply the same checks, in this order, and every refusal
//! is counted by reason and logged at most once per source per interval:
//!
//! | check | refused as | answer |
//! |---|---|---|
//! | the source is in `allow_from` | `source` | REFUSED (TCP: closed at accept) |
//! | a decodable NOTIFY query | `malformed` | none (TCP: closed) |
//! | one question, `<zone> SOA` | `zone` | REFUSED |
//! | TSIG verifies with our key (required when a key is configured, unless relaxed) | `tsig` | NOTAUTH + BADSIG/BADKEY/BADTIME, or REFUSED when unsigned |
//!
//! A NOTIFY that passes is answered NOERROR (AA, signed when the request
//! was) and becomes a [`NotifyEvent`]; the follower then checks that the
//! serial it carries is newer than the one in force before it runs IXFR
//! ([`NotifyStats::not_newer`] otherwise). The event is only a hint: the
//! transfer that follows is authenticated on its own.
//!
//! TCP: RFC 1035 4.2.2 two-byte length framing, several messages per
//! connection, at most [`NotifyConfig::tcp_max_connections`] at once, a
//! connection idle for [`NotifyConfig::tcp_idle`] (or stalled mid-message)
//! is closed, messages longer than [`MAX_MESSAGE`] close it too. Every
//! connection is its own task, so no connection can stall UDP or another.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, RecordType},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, mpsc},
    task::JoinSet,
};

use super::{tsig::TsigKey, wire};
use crate::policy::Prefix;

/// Longest NOTIFY accepted over TCP. A NOTIFY with an SOA and a TSIG is
/// well under 1 KiB; anything longer is not a NOTIFY worth reading.
pub const MAX_MESSAGE: usize = 4096;

/// How a NOTIFY arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A message on a TCP connection.
    Tcp,
}

impl Transport {
    /// `udp` or `tcp`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// One NOTIFY for our zone that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyEvent {
    /// Who sent it.
    pub from: SocketAddr,
    /// The serial from the SOA in the answer section, when present.
    pub serial: Option<u32>,
    /// How it arrived.
    pub transport: Transport,
}

/// Why a NOTIFY (or a TCP connection) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The source address is not in `allow_from`.
    Source,
    /// Not a decodable NOTIFY query.
    Malformed,
    /// Not `<our zone> SOA`.
    Zone,
    /// Missing, unknown or failing TSIG.
    Tsig,
    /// TCP: the connection ended inside a length prefix or a message.
    Truncated,
    /// TCP: a length prefix of 0 or above [`MAX_MESSAGE`].
    Oversize,
    /// TCP: nothing (or only part of a message) arrived within the idle timeout.
    Idle,
    /// TCP: the connection cap was reached.
    Connections,
}

impl Reject {
    /// Every reason, in counter order.
    pub const ALL: [Reject; 8] = [
        Reject::Source,
        Reject::Malformed,
        Reject::Zone,
        Reject::Tsig,
        Reject::Truncated,
        Reject::Oversize,
        Reject::Idle,
        Reject::Connections,
    ];

    /// The reason's name in status and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Source => "source",
            Reject::Malformed => "malformed",
            Reject::Zone => "zone",
            Reject::Tsig => "tsig",
            Reject::Truncated => "truncated",
            Reject::Oversize => "oversize",
            Reject::Idle => "idle",
            Reject::Connections => "connections",
        }
    }
}

/// Live counters of the listener (atomics; [`NotifyStats::snapshot`] reads them).
#[derive(Debug, Default)]
pub struct NotifyStats {
    udp_received: AtomicU64,
    udp_accepted: AtomicU64,
    tcp_connections: AtomicU64,
    tcp_open: AtomicU64,
    tcp_received: AtomicU64,
    tcp_accepted: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
    /// NOTIFYs whose serial was not newer than the one in force (answered, no transfer).
    pub not_newer: AtomicU64,
    /// Events merged because one was already queued (its IXFR covers them).
    pub coalesced: AtomicU64,
}

/// Counters of one transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportCounters {
    /// Messages received (datagrams, or messages on connections).
    pub received: u64,
    /// NOTIFYs that passed every check.
    pub accepted: u64,
    /// TCP connections accepted (0 for UDP).
    #[serde(default)]
    pub connections: u64,
    /// TCP connections open now (0 for UDP).
    #[serde(default)]
    pub open: u64,
}

/// What status shows about NOTIFY.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyCounters {
    /// Over UDP.
    pub udp: TransportCounters,
    /// Over TCP.
    pub tcp: TransportCounters,
    /// Refusals by reason (see [`Reject::name`]).
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Accepted NOTIFYs whose serial was not newer than ours (no transfer).
    pub not_newer: u64,
    /// Accepted NOTIFYs merged into a transfer already queued.
    pub coalesced: u64,
}

impl NotifyStats {
    fn reject(&self, r: Reject) {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals for `reason` so far.
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    /// A plain copy of the counters.
    pub fn snapshot(&self) -> NotifyCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NotifyCounters {
            udp: TransportCounters {
                received: get(&self.udp_received),
                accepted: get(&self.udp_accepted),
                connections: 0,
                open: 0,
            },
            tcp: TransportCounters {
                received: get(&self.tcp_received),
                accepted: get(&self.tcp_accepted),
                connections: get(&self.tcp_connections),
                open: get(&self.tcp_open),
            },
            rejected: Reject::ALL.iter().map(|r| (r.name().to_owned(), self.rejected(*r))).collect(),
            not_newer: get(&self.not_newer),
            coalesced: get(&self.coalesced),
        }
    }
}

/// What the listener accepts.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Address for both UDP and TCP (port 0: one free port for both).
    pub listen: SocketAddr,
    /// The policy zone.
    pub zone: String,
    /// Sources allowed to send NOTIFY.
    pub allow_from: Vec<Prefix>,
    /// TSIG key NOTIFYs are checked against.
    pub key: Option<TsigKey>,
    /// With a key: refuse unsigned NOTIFYs (signed ones are always verified).
    pub require_tsig: bool,
    /// A TCP connection with no complete message for this long is closed.
    pub tcp_idle: Duration,
    /// Most TCP connections open at once.
    pub tcp_max_connections: usize,
    /// A source's refusals are logged at most once per this interval.
    pub log_interval: Duration,
}

/// A running listener; stops when dropped.
#[derive(Debug)]
pub struct NotifyListener {
    /// Events for our zone.
    pub events: mpsc::Receiver<NotifyEvent>,
    /// Counters.
    pub stats: Arc<NotifyStats>,
    local: SocketAddr,
    tasks: JoinSet<()>,
}

impl NotifyListener {
    /// The address the listener is bound to, UDP and TCP (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// A listener that could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A socket cannot be bound.
    #[error("NOTIFY listener for zone {zone}: cannot bind {transport} {bind}: {source}")]
    Bind {
        /// The address.
        bind: SocketAddr,
        /// `UDP` or `TCP`.
        transport: &'static str,
        /// The zone.
        zone: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The zone name is not a DNS name.
    #[error("NOTIFY listener: {why}")]
    Zone {
        /// What is wrong.
        why: String,
    },
}

/// Starts answering NOTIFY for the configured zone on UDP and TCP.
pub async fn listen_notify(config: NotifyConfig) -> Result<NotifyListener, NotifyError> {
    let zone = wire::zone_name(&config.zone).map_err(|why| NotifyError::Zone { why })?;
    let (udp, tcp) = bind_both(&config).await?;
    let local = udp.local_addr().map_err(|source| NotifyError::Bind {
        bind: config.listen,
        transport: "UDP",
        zone: config.zone.clone(),
        source,
    })?;
    // Small queue: a burst of NOTIFYs needs one IXFR, not many.
    let (tx, events) = mpsc::channel(16);
    let stats = Arc::new(NotifyStats::default());
    let core = Arc::new(Core {
        zone,
        allow_from: config.allow_from,
        key: config.key,
        require_tsig: config.require_tsig,
        stats: Arc::clone(&stats),
        tx,
        log: RejectLog::new(config.log_interval),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(serve_udp(udp, Arc::clone(&core)));
    let limit = Arc::new(Semaphore::new(config.tcp_max_connections.max(1)));
    tasks.spawn(serve_tcp(tcp, core, limit, config.tcp_idle));
    Ok(NotifyListener { events, stats, local, tasks })
}

/// Binds UDP, then TCP on the same port (with port 0, retries until one
/// free port serves both).
async fn bind_both(config: &NotifyConfig) -> Result<(UdpSocket, TcpListener), NotifyError> {
    let err = |transport, source| NotifyError::Bind {
        bind: config.listen,
        transport,
        zone: config.zone.clone(),
        source,
    };
    let mut last = None;
    for _ in 0..8 {
        let udp = UdpSocket::bind(config.listen).await.map_err(|e| err("UDP", e))?;
        let port = udp.local_addr().map_err(|e| err("UDP", e))?.port();
        match TcpListener::bind(SocketAddr::new(config.listen.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if config.listen.port() == 0 => last = Some(e),
            Err(e) => return Err(err("TCP", e)),
        }
    }
    Err(err("TCP", last.unwrap_or_else(|| io::Error::other("no free port for UDP and TCP"))))
}

/// What both transports share.
struct Core {
    zone: Name,
    allow_from: Vec<Prefix>,
    key: Option<TsigKey>,
    require_tsig: bool,
    stats: Arc<NotifyStats>,
    tx: mpsc::Sender<NotifyEvent>,
    log: RejectLog,
}

/// The verdict on one message.
struct Handled {
    /// What to send back, if anything.
    reply: Option<Vec<u8>>,
    /// The event, or why it was refused (with a detail for the log).
    result: Result<NotifyEvent, (Reject, String)>,
}

impl Core {
    fn allowed(&self, ip: IpAddr) -> bool {
        let ip = Prefix::host(ip).addr(); // IPv4-mapped IPv6 → IPv4
        self.allow_from.iter().any(|p| p.contains(ip))
    }

    fn refuse(&self, reason: Reject, from: SocketAddr, transport: Transport, detail: &str) {
        self.stats.reject(reason);
        self.log.log(reason, from, transport, detail);
    }

    /// Counts and passes on an accepted NOTIFY; false when the follower is gone.
    fn accept(&self, ev: NotifyEvent) -> bool {
        let counter = match ev.transport {
            Transport::Udp => &self.stats.udp_accepted,
            Transport::Tcp => &self.stats.tcp_accepted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(from = %ev.from, serial = ?ev.serial, transport = ev.transport.name(), "NOTIFY");
        match self.tx.try_send(ev) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Applies every check to one message.
    fn handle(&self, bytes: &[u8], from: SocketAddr, transport: Transport) -> Handled {
        let refuse = |reason, detail: String, reply| Handled { reply, result: Err((reason, detail)) };
        let Ok(msg) = Message::from_vec(bytes) else {
            return refuse(Reject::Malformed, "undecodable message".into(), None);
        };
        if msg.message_type() != MessageType::Query || msg.op_code() != OpCode::Notify {
            return refuse(
                Reject::Malformed,
                format!("{:?} {:?} is not a NOTIFY query", msg.message_type(), msg.op_code()),
                None,
            );
        }
        let Some(q) = msg.queries().first() else {
            return refuse(Reject::Malformed, "NOTIFY without a question".into(), None);
        };
        let answer = |rcode: ResponseCode, authoritative: bool| {
            let mut reply = Message::new();
            reply
                .set_id(msg.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Notify)
                .set_authoritative(authoritative)
                .set_response_code(rcode);
            reply.add_query(q.clone());
            reply
        };
        let encode = |m: Message| m.to_vec().ok();
        if !self.allowed(from.ip()) {
            return refuse(
                Reject::Source,
                "source not in rpz.notify_allow_from".into(),
                encode(answer(ResponseCode::Refused, false)),
            );
        }
        if msg.queries().len() != 1 || q.query_type() != RecordType::SOA || q.name() != &self.zone {
            return refuse(
                Reject::Zone,
                format!("NOTIFY for {} {} (ours: {} SOA)", q.name(), q.query_type(), self.zone),
                encode(answer(ResponseCode::Refused, false)),
            );
        }
        let signed = !msg.signature().is_empty();
        let request_mac = match (&self.key, signed) {
            (Some(key), true) => match wire::verify_request(bytes, &msg, key) {
                Ok(mac) => Some((key, mac)),
                Err(e) => {
                    let reply = wire::tsig_error_reply(answer(ResponseCode::NotAuth, false), &msg, e.code);
                    return refuse(Reject::Tsig, e.why, reply);
                }
            },
            (None, true) => {
                let reply =
                    wire::tsig_error_reply(answer(ResponseCode::NotAuth, false), &msg, wire::TSIG_BADKEY);
                return refuse(Reject::Tsig, "signed NOTIFY but no TSIG key is configured".into(), reply);
            }
            (Some(key), false) if self.require_tsig => {
                return refuse(
                    Reject::Tsig,
                    format!("unsigned NOTIFY; key {} is required", key.name),
                    encode(answer(ResponseCode::Refused, false)),
                );
            }
            _ => None,
        };
        let reply = answer(ResponseCode::NoError, true);
        let reply = match request_mac {
            Some((key, mac)) => wire::sign_response(reply, key, &mac),
            None => encode(reply),
        };
        let serial = msg.answers().iter().find_map(|r| match r.data() {
            RData::SOA(s) if r.name() == &self.zone => Some(s.serial()),
            _ => None,
        });
        Handled { reply, result: Ok(NotifyEvent { from, serial, transport }) }
    }
}

async fn serve_udp(socket: UdpSocket, core: Arc<Core>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY socket receive failed");
                // Do not spin if the error persists.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        core.stats.udp_received.fetch_add(1, Ordering::Relaxed);
        let handled = core.handle(&buf[..n], from, Transport::Udp);
        if let Some(reply) = &handled.reply
            && let Err(e) = socket.send_to(reply, from).await
        {
            tracing::warn!(%from, error = %e, "cannot answer NOTIFY");
        }
        match handled.result {
            Ok(ev) => {
                if !core.accept(ev) {
                    return;
                }
            }
            Err((reason, detail)) => core.refuse(reason, from, Transport::Udp, &detail),
        }
    }
}

async fn serve_tcp(listener: TcpListener, core: Arc<Core>, limit: Arc<Semaphore>, idle: Duration) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // E.g. out of file descriptors: pause instead of spinning.
                tracing::warn!(error = %e, "NOTIFY TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !core.allowed(from.ip()) {
            core.refuse(Reject::Source, from, Transport::Tcp, "source not in rpz.notify_allow_from");
            continue;
        }
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            core.refuse(Reject::Connections, from, Transport::Tcp, "too many NOTIFY connections open");
            continue;
        };
        core.stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
        core.stats.tcp_open.fetch_add(1, Ordering::Relaxed);
        let core = Arc::clone(&core);
        tokio::spawn(async move {
            serve_connection(stream, from, &core, idle).await;
            core.stats.tcp_open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// How reading one framed message ended.
enum Read {
    Message,
    /// The peer closed between messages.
    Closed,
    Refused(Reject, String),
}

async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>, idle: Duration) -> Read {
    let mut len = [0u8; 2];
    // The first byte may take up to `idle`; so may the rest of the message.
    match tokio::time::timeout(idle, stream.read(&mut len[..1])).await {
        Err(_) => return Read::Refused(Reject::Idle, format!("no message for {idle:?}")),
        Ok(Ok(0)) => return Read::Closed,
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Read::Refused(Reject::Truncated, format!("read failed: {e}")),
    }
    let rest = async {
        stream
            .read_exact(&mut len[1..])
            .await
            .map_err(|e| (Reject::Truncated, format!("length prefix: {e}")))?;
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 || n > MAX_MESSAGE {
            return Err((Reject::Oversize, format!("length prefix {n} (at most {MAX_MESSAGE})")));
        }
        buf.resize(n, 0);
        stream
            .read_exact(buf)
            .await
            .map_err(|e| (Reject::Truncated, format!("message of {n} bytes: {e}")))?;
        Ok::<(), (Reject, String)>(())
    };
    match tokio::time::timeout(idle, rest).await {
        Err(_) => Read::Refused(Reject::Idle, format!("message not complete within {idle:?}")),
        Ok(Err((r, why))) => Read::Refused(r, why),
        Ok(Ok(())) => Read::Message,
    }
}

async fn serve_connection(mut stream: TcpStream, from: SocketAddr, core: &Core, idle: Duration) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(512);
    loop {
        match read_message(&mut stream, &mut buf, idle).await {
            Read::Message => {}
            Read::Closed => return,
            Read::Refused(reason, why) => return core.refuse(reason, from, Transport::Tcp, &why),
        }
        core.stats.tcp_received.fetch_add(1, Ordering::Relaxed);
        let handled = core.handle(&buf, from, Transport::Tcp);
        if let Some(reply) = handled.reply {
            let mut framed = Vec::with_capacity(reply.len() + 2);
            // Replies are built from a message of at most MAX_MESSAGE bytes.
            framed.extend_from_slice(&u16::try_from(reply.len()).unwrap_or(u16::MAX).to_be_bytes());
            framed.extend_from_slice(&reply);
            match tokio::time::timeout(idle, stream.write_all(&framed)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%from, error = %e, "cannot answer NOTIFY over TCP"),
                Err(_) => tracing::debug!(%from, "NOTIFY answer not taken within the idle timeout"),
            }
        }
        match handled.result {
            Ok(ev) => {
                if !core.accept(ev) {
                    return;
                }
            }
            // A refused message ends the connection: nothing good follows.
            Err((reason, detail)) => return core.refuse(reason, from, Transport::Tcp, &detail),
        }
    }
}

/// Most sources remembered for log suppression; past it, refusals are
/// only counted (the map never grows without bound).
const LOG_SOURCES: usize = 1024;

/// Logs a refusal once per source per interval, with how many were
/// suppressed since.
struct RejectLog {
    interval: Duration,
    /// Per source: when it was last logged, and refusals not logged since.
    seen: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl RejectLog {
    fn new(interval: Duration) -> Self {
        RejectLog { interval, seen: Mutex::new(HashMap::new()) }
    }

    fn log(&self, reason: Reject, from: SocketAddr, transport: Transport, detail: &str) {
        let now = Instant::now();
        let suppressed = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !seen.contains_key(&from.ip()) && seen.len() >= LOG_SOURCES {
                seen.retain(|_, (t, _)| now.duration_since(*t) < self.interval);
                if seen.len() >= LOG_SOURCES {
                    return;
                }
            }
            match seen.get_mut(&from.ip()) {
                Some(entry) if now.duration_since(entry.0) < self.interval => {
                    entry.1 += 1;
                    return;
                }
                Some(entry) => std::mem::replace(entry, (now, 0)).1,
                None => {
                    seen.insert(from.ip(), (now, 0));
                    0
                }
            }
        };
        tracing::warn!(
            %from,
            transport = transport.name(),
            reason = reason.name(),
            detail,
            suppressed_since_last = suppressed,
            "NOTIFY refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::Query,
        rr::{Record, rdata::SOA},
    };

    use super::*;
    use crate::rpz::tsig::TsigAlgo;

    const ZONE: &str = "rpz.example.com.";

    fn notify(zone: &str, serial: Option<u32>) -> Message {
        let n = Name::from_ascii(zone).expect("name");
        let mut m = Message::new();
        m.set_id(4242).set_op_code(OpCode::Notify).set_authoritative(true);
        m.add_query(Query::query(n.clone(), RecordType::SOA));
        if let Some(s) = serial {
            m.add_answer(Record::from_rdata(
                n.clone(),
                60,
                RData::SOA(SOA::new(n.clone(), n, s, 1, 1, 1, 1)),
            ));
        }
        m
    }

    fn key(secret: &[u8]) -> TsigKey {
        TsigKey { name: "notify-key".into(), algorithm: TsigAlgo::HmacSha256, secret: secret.to_vec() }
    }

    fn core(key: Option<TsigKey>, require_tsig: bool) -> (Core, mpsc::Receiver<NotifyEvent>) {
        let (tx, rx) = mpsc::channel(4);
        let core = Core {
            zone: Name::from_ascii(ZONE).expect("zone"),
            allow_from: vec!["127.0.0.0/8".parse().expect("prefix")],
            key,
            require_tsig,
            stats: Arc::default(),
            tx,
            log: RejectLog::new(Duration::from_secs(60)),
        };
        (core, rx)
    }

    fn from() -> SocketAddr {
        "127.0.0.1:5353".parse().expect("addr")
    }

    fn rcode(reply: &Option<Vec<u8>>) -> ResponseCode {
        Message::from_vec(reply.as_ref().expect("a reply")).expect("reply decodes").response_code()
    }

    #[test]
    fn answers_our_zone_and_refuses_others() {
        let (c, _rx) = core(None, false);
        let h = c.handle(&notify("RPZ.example.com.", Some(9)).to_vec().expect("enc"), from(), Transport::Udp);
        assert_eq!(h.result, Ok(NotifyEvent { from: from(), serial: Some(9), transport: Transport::Udp }));
        let r = Message::from_vec(h.reply.as_ref().expect("reply")).expect("reply");
        assert_eq!((r.id(), r.message_type(), r.op_code()), (4242, MessageType::Response, OpCode::Notify));
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.authoritative());
        let h = c.handle(&notify("other.test.", None).to_vec().expect("enc"), from(), Transport::Tcp);
        assert!(matches!(h.result, Err((Reject::Zone, _))));
        assert_eq!(rcode(&h.reply), ResponseCode::Refused);
        let h = c.handle(&notify(ZONE, None).to_vec().expect("enc"), from(), Transport::Udp);
        assert_eq!(h.result.map(|e| e.serial), Ok(None));
        let h = c.handle(b"\x00\x01garbage", from(), Transport::Udp);
        assert!(matches!(h.result, Err((Reject::Malformed, _))) && h.reply.is_none());
        let outsider: SocketAddr = "192.0.2.9:53".parse().expect("addr");
        let h = c.handle(&notify(ZONE, Some(1)).to_vec().expect("enc"), outsider, Transport::Udp);
        assert!(matches!(h.result, Err((Reject::Source, _))));
        assert_eq!(rcode(&h.reply), ResponseCode::Refused);
        // A query (not a NOTIFY) is not answered.
        let mut q = notify(ZONE, None);
        q.set_op_code(OpCode::Query);
        assert!(matches!(
            c.handle(&q.to_vec().expect("enc"), from(), Transport::Udp).result,
            Err((Reject::Malformed, _))
        ));
        for seed in 0..2000 {
            let mut d = notify(ZONE, Some(1)).to_vec().expect("enc");
            let j = crate::rpz::tests::junk(seed, d.len());
            // Flip some bytes of a valid NOTIFY, and truncate.
            for (i, b) in j.iter().enumerate().filter(|(i, _)| i % 7 == (seed as usize) % 7) {
                d[i] ^= b;
            }
            d.truncate(d.len() - (seed as usize % d.len()));
            let _ = c.handle(&d, from(), Transport::Udp);
        }
    }

    #[test]
    fn tsig_is_checked_and_the_answer_signed() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let (c, _rx) = core(Some(k.clone()), true);
        // Signed with our key: accepted, and the answer verifies against the request.
        let req = wire::encode_request(notify(ZONE, Some(3)), Some(&k)).expect("sign");
        let h = c.handle(&req.bytes, from(), Transport::Tcp);
        assert_eq!(h.result.map(|e| e.serial), Ok(Some(3)));
        let reply = h.reply.expect("reply");
        let msg = Message::from_vec(&reply).expect("decode");
        assert_eq!(msg.response_code(), ResponseCode::NoError);
        req.verifier.expect("verifier").verify(&reply, &msg).expect("signed answer verifies");
        // Another secret: NOTAUTH with TSIG error BADSIG.
        let bad =
            wire::encode_request(notify(ZONE, Some(3)), Some(&key(b"another secret, same length!!!!!")))
                .expect("sign");
        let h = c.handle(&bad.bytes, from(), Transport::Udp);
        assert!(matches!(h.result, Err((Reject::Tsig, _))));
        let msg = Message::from_vec(h.reply.as_ref().expect("reply")).expect("decode");
        assert_eq!(wire::describe_answer(&msg), "NOTAUTH (TSIG BADSIG)");
        // Another key name: BADKEY.
        let other = TsigKey { name: "other".into(), ..k.clone() };
        let bad = wire::encode_request(notify(ZONE, Some(3)), Some(&other)).expect("sign");
        let h = c.handle(&bad.bytes, from(), Transport::Udp);
        let msg = Message::from_vec(h.reply.as_ref().expect("reply")).expect("decode");
        assert_eq!(wire::describe_answer(&msg), "NOTAUTH (TSIG BADKEY)");
        // Tampered after signing: BADSIG.
        let mut tampered = req.bytes.clone();
        let at = tampered.len() / 3;
        tampered[at] ^= 0x01;
        let h = c.handle(&tampered, from(), Transport::Udp);
        assert!(h.result.is_err());
        // Unsigned while a key is required: REFUSED.
        let h = c.handle(&notify(ZONE, Some(3)).to_vec().expect("enc"), from(), Transport::Udp);
        assert!(matches!(h.result, Err((Reject::Tsig, _))));
        assert_eq!(rcode(&h.reply), ResponseCode::Refused);
        // Unsigned accepted when relaxed; a bad signature still is not.
        let (relaxed, _rx) = core(Some(k.clone()), false);
        let h = relaxed.handle(&notify(ZONE, Some(3)).to_vec().expect("enc"), from(), Transport::Udp);
        assert!(h.result.is_ok());
        assert!(relaxed.handle(&tampered, from(), Transport::Udp).result.is_err());
        // Signed but we have no key: BADKEY.
        let (nokey, _rx) = core(None, false);
        let h = nokey.handle(&req.bytes, from(), Transport::Udp);
        let msg = Message::from_vec(h.reply.as_ref().expect("reply")).expect("decode");
        assert_eq!(wire::describe_answer(&msg), "NOTAUTH (TSIG BADKEY)");
    }

    #[test]
    fn refusals_are_logged_once_per_source_per_interval() {
        let log = RejectLog::new(Duration::from_secs(60));
        for i in 0..5u16 {
            log.log(Reject::Zone, SocketAddr::from(([192, 0, 2, 1], i)), Transport::Udp, "x");
        }
        let seen = log.seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen.values().next().map(|v| v.1), Some(4), "four suppressed after the first");
        drop(seen);
        for i in 0..(LOG_SOURCES as u32 + 50) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            log.log(Reject::Zone, SocketAddr::from((ip, 53)), Transport::Tcp, "x");
        }
        assert!(log.seen.lock().expect("lock").len() <= LOG_SOURCES, "bounded memory");
    }
}
