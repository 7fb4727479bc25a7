//! The miss path's question to BIND: which classes does this IP hold?
//!
//! Two styles:
//! * [`QueryStyle::Zone`]: ask the policy zone directly for the trigger's
//!   owner name (`131.112.12.18.rpz.example.com. A`, no recursion). The
//!   authoritative answer is the truth; NXDOMAIN/NODATA = not registered.
//!   Works for IPv4 and IPv6 hosts.
//! * [`QueryStyle::Paper`]: ask the recursive BIND that applies the RPZ for
//!   the bare IP literal (`131.112.12.18. A`), exactly like the paper's
//!   Ryu/dnspython check: `127.0.0.1`/`127.0.0.25` in the rewritten answer
//!   give the classes; NXDOMAIN or anything else = not registered. IPv4
//!   only, since IPv6 entries are `rpz-ip` (response-IP) triggers that a
//!   query name cannot hit.
//!
//! Neither style sees prefix (`rpz-ip`) entries for a host: those come from
//! the transferred zone. A server error (SERVFAIL, REFUSED, timeout) is an
//! error, never "not registered", so callers do not cache a false negative.
//!
//! One UDP socket per client; concurrent queries are told apart by id.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, RecordType},
};
use tokio::{net::UdpSocket, sync::oneshot, task::JoinHandle};

use super::{encode_owner, wire};
use crate::policy::{Classes, Prefix};

/// How the RPZ is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryStyle {
    /// Query the trigger name in the policy zone (authoritative).
    #[default]
    Zone,
    /// Query the IP literal at a recursive BIND with the RPZ (the paper's way).
    Paper,
}

/// A lookup that gave no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The socket failed.
    #[error("RPZ lookup of {ip} at {server}: {source}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The address looked up.
        ip: IpAddr,
        /// The I/O error.
        source: io::Error,
    },
    /// No answer after all tries.
    #[error("RPZ lookup of {ip} at {server}: no answer after {tries} tries of {timeout:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The address looked up.
        ip: IpAddr,
        /// Tries made.
        tries: u32,
        /// Time per try.
        timeout: Duration,
    },
    /// The server answered with an error rcode.
    #[error("RPZ lookup of {ip} at {server}: server answered {rcode}")]
    Rcode {
        /// The server.
        server: SocketAddr,
        /// The address looked up.
        ip: IpAddr,
        /// The rcode, e.g. `SERVFAIL` or `REFUSED`.
        rcode: String,
    },
    /// The question cannot be asked in this style.
    #[error("RPZ lookup of {ip}: {why}")]
    Unsupported {
        /// The address looked up.
        ip: IpAddr,
        /// Why.
        why: String,
    },
}

type Pending = Arc<Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>>;

/// A client for RPZ class lookups. Hold one; it owns one UDP socket and a
/// receive task (stopped on drop).
#[derive(Debug)]
pub struct RpzClient {
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    zone: String,
    style: QueryStyle,
    timeout: Duration,
    tries: u32,
    pending: Pending,
    task: JoinHandle<()>,
}

impl Drop for RpzClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RpzClient {
    /// A client asking `server` about policy zone `zone` in `style`, waiting
    /// `timeout` per try and trying 3 times.
    pub async fn new(
        server: SocketAddr,
        zone: &str,
        style: QueryStyle,
        timeout: Duration,
    ) -> io::Result<RpzClient> {
        let bind: SocketAddr =
            if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(server).await?;
        let socket = Arc::new(socket);
        let pending: Pending = Arc::default();
        let task = tokio::spawn(receive(Arc::clone(&socket), Arc::clone(&pending)));
        Ok(RpzClient { socket, server, zone: zone.to_owned(), style, timeout, tries: 3, pending, task })
    }

    /// Sets the number of tries (at least 1).
    #[must_use]
    pub fn with_tries(mut self, tries: u32) -> Self {
        self.tries = tries.max(1);
        self
    }

    /// The query name for `ip` in this client's style.
    pub fn query_name(&self, ip: IpAddr) -> Result<String, LookupError> {
        let host = Prefix::host(ip);
        match (self.style, host.addr()) {
            (QueryStyle::Zone, _) => Ok(encode_owner(&host, &self.zone)),
            (QueryStyle::Paper, IpAddr::V4(a)) => Ok(format!("{a}.")),
            (QueryStyle::Paper, IpAddr::V6(_)) => Err(LookupError::Unsupported {
                ip,
                why: "the paper's IP-literal query works for IPv4 only; use the zone style".into(),
            }),
        }
    }

    /// The classes the RPZ gives `ip` (host entries only).
    pub async fn classes(&self, ip: IpAddr) -> Result<Classes, LookupError> {
        self.lookup(ip).await.map(|a| a.classes)
    }

    /// The classes with how long the answer may be cached.
    pub async fn lookup(&self, ip: IpAddr) -> Result<RpzAnswer, LookupError> {
        let qname = self.query_name(ip)?;
        let name = Name::from_ascii(&qname)
            .map_err(|e| LookupError::Unsupported { ip, why: format!("bad query name {qname}: {e}") })?;
        let io_err = |source| LookupError::Io { server: self.server, ip, source };
        for _ in 0..self.tries {
            let id = self.register_id();
            let (tx, rx) = oneshot::channel();
            self.lock_pending().insert(id, tx);
            let bytes = query_bytes(id, &name, self.style == QueryStyle::Paper).map_err(|e| {
                self.lock_pending().remove(&id);
                io_err(e)
            })?;
            if let Err(e) = self.socket.send(&bytes).await {
                self.lock_pending().remove(&id);
                return Err(io_err(e));
            }
            let answer = tokio::time::timeout(self.timeout, rx).await;
            self.lock_pending().remove(&id);
            let Ok(Ok(answer)) = answer else { continue };
            match interpret(&answer, &name) {
                Some(Ok(a)) => return Ok(a),
                Some(Err(rcode)) => return Err(LookupError::Rcode { server: self.server, ip, rcode }),
                // Truncated or not matching the question: try again.
                None => continue,
            }
        }
        Err(LookupError::Timeout { server: self.server, ip, tries: self.tries, timeout: self.timeout })
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u16, oneshot::Sender<Vec<u8>>>> {
        // A poisoned map only means a panicking holder; the map is still valid.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A random id not in flight.
    fn register_id(&self) -> u16 {
        let pending = self.lock_pending();
        loop {
            let id = wire::random_id();
            if !pending.contains_key(&id) {
                return id;
            }
        }
    }
}

/// One-off lookup: the classes `server` gives `ip` in policy zone `zone`.
/// Callers that ask often should hold an [`RpzClient`] instead.
pub async fn query_classes(
    server: SocketAddr,
    zone: &str,
    ip: IpAddr,
    style: QueryStyle,
    timeout: Duration,
) -> Result<Classes, LookupError> {
    let client = RpzClient::new(server, zone, style, timeout).await.map_err(|source| LookupError::Io {
        server,
        ip,
        source,
    })?;
    client.classes(ip).await
}

/// Delivers each answer to the query waiting for its id.
async fn receive(socket: Arc<UdpSocket>, pending: Pending) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            // ICMP port unreachable shows up here; the waiting query times
            // out. Pause so a persistent error cannot spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        if n < 2 {
            continue;
        }
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        let waiter = pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
        if let Some(tx) = waiter {
            // The waiter may have timed out meanwhile; nothing to do then.
            let _ = tx.send(buf[..n].to_vec());
        }
    }
}

fn query_bytes(id: u16, name: &Name, recursion: bool) -> io::Result<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(recursion);
    let mut q = Query::query(name.clone(), RecordType::A);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    m.to_vec().map_err(|e| io::Error::other(e.to_string()))
}

/// An RPZ answer: the classes and how long it may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpzAnswer {
    /// The classes (NONE for not registered).
    pub classes: Classes,
    /// Seconds the answer may be cached: the smallest TTL of the `A`
    /// records used, or for a negative answer the SOA's negative TTL
    /// (RFC 2308 section 5); 0 when the answer gives none.
    pub ttl: u32,
}

/// The negative-caching TTL from the authority section's SOA (RFC 2308 5).
fn negative_ttl(m: &Message) -> u32 {
    m.name_servers()
        .iter()
        .find_map(|r| match r.data() {
            RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
            _ => None,
        })
        .unwrap_or(0)
}

/// Classes from an answer; `Some(Err(rcode))` for server errors, `None`
/// for answers to throw away (wrong question, truncated, undecodable).
fn interpret(answer: &[u8], name: &Name) -> Option<Result<RpzAnswer, String>> {
    let m = Message::from_vec(answer).ok()?;
    if m.message_type() != MessageType::Response || m.truncated() {
        return None;
    }
    let q = m.queries().first()?;
    if q.name() != name || q.query_type() != RecordType::A {
        return None;
    }
    match m.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Some(Ok(RpzAnswer { classes: Classes::NONE, ttl: negative_ttl(&m) }));
        }
        rc => return Some(Err(wire::rcode_name(u16::from(rc)))),
    }
    let (mut classes, mut ttl) = (Classes::NONE, u32::MAX);
    for r in m.answers().iter().filter(|r| r.name() == name) {
        if let RData::A(a) = r.data()
            && let Some(c) = Classes::from_rpz_answer(a.0)
        {
            classes = classes.union(c);
            ttl = ttl.min(r.ttl());
        }
    }
    if classes.is_empty() {
        // NODATA, or answers that are not ours: not registered.
        let any = m.answers().iter().map(|r| r.ttl()).min();
        ttl = any.unwrap_or_else(|| negative_ttl(&m));
    }
    Some(Ok(RpzAnswer { classes, ttl }))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::{Record, rdata::A};

    use super::*;

    fn answer(name: &Name, rcode: ResponseCode, addrs: &[[u8; 4]]) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(1).set_message_type(MessageType::Response).set_response_code(rcode);
        m.add_query(Query::query(name.clone(), RecordType::A));
        for a in addrs {
            m.add_answer(Record::from_rdata(name.clone(), 60, RData::A(A(Ipv4Addr::from(*a)))));
        }
        m.to_vec().expect("encode")
    }

    #[test]
    fn answers_map_to_classes() {
        let n = Name::from_ascii("131.112.12.18.").expect("name");
        let other = Name::from_ascii("1.2.3.4.").expect("name");
        let ok = |b: Vec<u8>| interpret(&b, &n).expect("kept").expect("no error").classes;
        assert_eq!(ok(answer(&n, ResponseCode::NoError, &[[127, 0, 0, 25]])), Classes::SMTP);
        assert_eq!(
            ok(answer(&n, ResponseCode::NoError, &[[127, 0, 0, 1], [127, 0, 0, 25]])),
            Classes::DNS.union(Classes::SMTP)
        );
        assert_eq!(ok(answer(&n, ResponseCode::NoError, &[[10, 0, 0, 1]])), Classes::NONE);
        assert_eq!(ok(answer(&n, ResponseCode::NXDomain, &[])), Classes::NONE);
        assert_eq!(interpret(&answer(&n, ResponseCode::ServFail, &[]), &n), Some(Err("SERVFAIL".into())));
        let a =
            interpret(&answer(&n, ResponseCode::NoError, &[[127, 0, 0, 25]]), &n).expect("kept").expect("ok");
        assert_eq!(a.ttl, 60);
        // NXDOMAIN with an SOA: negative TTL = min(SOA TTL, minimum).
        let mut m = Message::from_vec(&answer(&n, ResponseCode::NXDomain, &[])).expect("decode");
        let root = Name::root();
        m.add_name_server(Record::from_rdata(
            root.clone(),
            300,
            RData::SOA(hickory_proto::rr::rdata::SOA::new(root.clone(), root, 1, 1, 1, 1, 30)),
        ));
        let neg = interpret(&m.to_vec().expect("encode"), &n).expect("kept").expect("ok");
        assert_eq!((neg.classes, neg.ttl), (Classes::NONE, 30));
        assert_eq!(interpret(&answer(&other, ResponseCode::NoError, &[[127, 0, 0, 1]]), &n), None);
        assert_eq!(interpret(b"junk", &n), None);
    }
}
