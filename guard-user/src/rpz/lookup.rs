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

#[cfg(test)]
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
        // The question in wire form, built once per lookup; each try only
        // stamps its id (the miss path asks per packet-in, so no DNS
        // library message is built or parsed here).
        let mut query = Vec::with_capacity(HEADER + qname.len() + 6);
        query_wire(&qname, self.style == QueryStyle::Paper, &mut query)
            .ok_or_else(|| LookupError::Unsupported { ip, why: format!("bad query name {qname}") })?;
        let io_err = |source| LookupError::Io { server: self.server, ip, source };
        for _ in 0..self.tries {
            let id = self.register_id();
            let (tx, rx) = oneshot::channel();
            self.lock_pending().insert(id, tx);
            query[..2].copy_from_slice(&id.to_be_bytes());
            if let Err(e) = self.socket.send(&query).await {
                self.lock_pending().remove(&id);
                return Err(io_err(e));
            }
            let answer = tokio::time::timeout(self.timeout, rx).await;
            self.lock_pending().remove(&id);
            let Ok(Ok(answer)) = answer else { continue };
            match interpret(&answer, &query[HEADER..query.len() - 4]) {
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

/// Size of the DNS header (RFC 1035 4.1.1).
const HEADER: usize = 12;
/// `TYPE` A and `CLASS` IN (RFC 1035 3.2.2, 3.2.4).
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
/// `TYPE` SOA.
const TYPE_SOA: u16 = 6;
/// Longest name in wire form (RFC 1035 2.3.4).
const MAX_NAME: usize = 255;

/// A query for `qname` (dotted, absolute) `A IN`, id 0, one question
/// (RFC 1035 4.1.1-4.1.2); `None` for a name that is not plain labels
/// of 1 to 63 bytes, or longer than 255 bytes in wire form.
fn query_wire(qname: &str, recursion: bool, out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    // id, flags (RD when recursion), QDCOUNT 1, AN/NS/AR 0.
    out.extend_from_slice(&[0, 0, if recursion { 0x01 } else { 0 }, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    let body = qname.strip_suffix('.').unwrap_or(qname);
    if !body.is_empty() {
        for label in body.split('.') {
            // Escapes (`\.`, `\DDD`) never occur in the names we build.
            if label.is_empty() || label.len() > 63 || label.contains('\\') {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() - HEADER > MAX_NAME {
        return None;
    }
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(())
}

/// Reads the name at `at` (following compression pointers, RFC 1035
/// 4.1.4) into `name`, lower-cased; returns its length there and the
/// offset after the name in place.
fn read_name(msg: &[u8], mut at: usize, name: &mut [u8; MAX_NAME]) -> Option<(usize, usize)> {
    let (mut len, mut end, mut jumps) = (0usize, None, 0u8);
    loop {
        let b = *msg.get(at)?;
        match b & 0xc0 {
            0x00 if b == 0 => {
                *name.get_mut(len)? = 0;
                return Some((len + 1, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let l = usize::from(b);
                let label = msg.get(at + 1..at + 1 + l)?;
                let dst = name.get_mut(len..len + 1 + l)?;
                dst[0] = b;
                for (d, s) in dst[1..].iter_mut().zip(label) {
                    *d = s.to_ascii_lowercase();
                }
                // Room for the root label.
                if len + 1 + l >= MAX_NAME {
                    return None;
                }
                len += 1 + l;
                at += 1 + l;
            }
            0xc0 => {
                let ptr = usize::from(u16::from_be_bytes([b & 0x3f, *msg.get(at + 1)?]));
                end.get_or_insert(at + 2);
                jumps += 1;
                // A loop of pointers cannot pass this.
                if jumps > 64 {
                    return None;
                }
                at = ptr;
            }
            // 0x40 and 0x80: extended label types (RFC 6891 obsoleted them).
            _ => return None,
        }
    }
}

/// One resource record (RFC 1035 4.1.3): its fixed fields and RDATA.
struct Rr<'a> {
    same_name: bool,
    rtype: u16,
    ttl: u32,
    rdata: &'a [u8],
}

/// Reads the record at `*at`, advancing past it; `same_name` compares its
/// owner with `qname` (lower-cased wire form).
fn read_rr<'a>(msg: &'a [u8], at: &mut usize, qname: &[u8]) -> Option<Rr<'a>> {
    let mut name = [0u8; MAX_NAME];
    let (len, next) = read_name(msg, *at, &mut name)?;
    let fixed = msg.get(next..next + 10)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let rdata = msg.get(next + 10..next + 10 + rdlen)?;
    *at = next + 10 + rdlen;
    Some(Rr { same_name: &name[..len] == qname, rtype, ttl, rdata })
}

/// Classes from an answer to the question `qname` (lower-cased wire
/// form); `Some(Err(rcode))` for server errors, `None` for answers to
/// throw away (not a response, truncated, another question, malformed).
/// Reads only what it needs and allocates nothing on the way.
fn interpret(answer: &[u8], qname: &[u8]) -> Option<Result<RpzAnswer, String>> {
    let h = answer.get(..HEADER)?;
    let count = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    // QR set, TC clear (RFC 1035 4.1.1).
    if h[2] & 0x80 == 0 || h[2] & 0x02 != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd == 0 {
        return None;
    }
    let mut at = HEADER;
    let mut name = [0u8; MAX_NAME];
    for i in 0..qd {
        let (len, next) = read_name(answer, at, &mut name)?;
        let qtype = answer.get(next..next + 4)?;
        if i == 0 && (&name[..len] != qname || u16::from_be_bytes([qtype[0], qtype[1]]) != TYPE_A) {
            return None;
        }
        at = next + 4;
    }
    let mut answers = Vec::new();
    for _ in 0..an {
        answers.push(read_rr(answer, &mut at, qname)?);
    }
    // The first SOA of the authority section gives the negative TTL (RFC 2308 5).
    let mut negative = None;
    for _ in 0..ns {
        let r = read_rr(answer, &mut at, qname)?;
        if r.rtype == TYPE_SOA && negative.is_none() {
            // MINIMUM is the last field of the SOA RDATA (RFC 1035 3.3.13).
            let min = r.rdata.len().checked_sub(4).and_then(|i| r.rdata.get(i..))?;
            negative = Some(r.ttl.min(u32::from_be_bytes([min[0], min[1], min[2], min[3]])));
        }
    }
    for _ in 0..ar {
        read_rr(answer, &mut at, qname)?;
    }
    let negative = negative.unwrap_or(0);
    // An A record must hold exactly an address.
    if answers.iter().any(|r| r.rtype == TYPE_A && r.rdata.len() != 4) {
        return None;
    }
    match u16::from(h[3] & 0x0f) {
        0 => {}
        3 => return Some(Ok(RpzAnswer { classes: Classes::NONE, ttl: negative })),
        rc => return Some(Err(wire::rcode_name(rc))),
    }
    let (mut classes, mut ttl) = (Classes::NONE, u32::MAX);
    for r in answers.iter().filter(|r| r.same_name && r.rtype == TYPE_A) {
        let a = std::net::Ipv4Addr::new(r.rdata[0], r.rdata[1], r.rdata[2], r.rdata[3]);
        if let Some(c) = Classes::from_rpz_answer(a) {
            classes = classes.union(c);
            ttl = ttl.min(r.ttl);
        }
    }
    if classes.is_empty() {
        // NODATA, or answers that are not ours: not registered.
        ttl = answers.iter().map(|r| r.ttl).min().unwrap_or(negative);
    }
    Some(Ok(RpzAnswer { classes, ttl }))
}

#[cfg(test)]
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
#[cfg(test)]
fn negative_ttl(m: &Message) -> u32 {
    m.name_servers()
        .iter()
        .find_map(|r| match r.data() {
            RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
            _ => None,
        })
        .unwrap_or(0)
}

/// The reference reading of an answer through the DNS library, which
/// [`interpret`] must agree with (tests only).
#[cfg(test)]
fn interpret_reference(answer: &[u8], name: &Name) -> Option<Result<RpzAnswer, String>> {
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

    fn wire(name: &Name) -> Vec<u8> {
        let mut q = Vec::new();
        query_wire(&name.to_ascii(), false, &mut q).expect("plain name");
        q[HEADER..q.len() - 4].to_vec()
    }

    /// The hand reading, checked against the DNS library's.
    fn read(bytes: &[u8], name: &Name) -> Option<Result<RpzAnswer, String>> {
        let ours = interpret(bytes, &wire(name));
        assert_eq!(ours, interpret_reference(bytes, name), "readings differ for {bytes:02x?}");
        ours
    }

    #[test]
    fn answers_map_to_classes() {
        let n = Name::from_ascii("131.112.12.18.").expect("name");
        let other = Name::from_ascii("1.2.3.4.").expect("name");
        let ok = |b: Vec<u8>| read(&b, &n).expect("kept").expect("no error").classes;
        assert_eq!(ok(answer(&n, ResponseCode::NoError, &[[127, 0, 0, 25]])), Classes::SMTP);
        assert_eq!(
            ok(answer(&n, ResponseCode::NoError, &[[127, 0, 0, 1], [127, 0, 0, 25]])),
            Classes::DNS.union(Classes::SMTP)
        );
        assert_eq!(ok(answer(&n, ResponseCode::NoError, &[[10, 0, 0, 1]])), Classes::NONE);
        assert_eq!(ok(answer(&n, ResponseCode::NXDomain, &[])), Classes::NONE);
        assert_eq!(read(&answer(&n, ResponseCode::ServFail, &[]), &n), Some(Err("SERVFAIL".into())));
        let a = read(&answer(&n, ResponseCode::NoError, &[[127, 0, 0, 25]]), &n).expect("kept").expect("ok");
        assert_eq!(a.ttl, 60);
        // NXDOMAIN with an SOA: negative TTL = min(SOA TTL, minimum).
        let mut m = Message::from_vec(&answer(&n, ResponseCode::NXDomain, &[])).expect("decode");
        let root = Name::root();
        m.add_name_server(Record::from_rdata(
            root.clone(),
            300,
            RData::SOA(hickory_proto::rr::rdata::SOA::new(root.clone(), root, 1, 1, 1, 1, 30)),
        ));
        let neg = read(&m.to_vec().expect("encode"), &n).expect("kept").expect("ok");
        assert_eq!((neg.classes, neg.ttl), (Classes::NONE, 30));
        assert_eq!(read(&answer(&other, ResponseCode::NoError, &[[127, 0, 0, 1]]), &n), None);
        assert_eq!(read(b"junk", &n), None);
    }

    /// Every cut of real answers, a flipped bit anywhere, names in another
    /// case and compressed owners: the hand reading agrees with the library.
    #[test]
    fn hand_reading_agrees_with_the_library() {
        let n = Name::from_ascii("25.0.18.198.rpz.example.com.").expect("name");
        let upper = Name::from_ascii("25.0.18.198.RPZ.Example.COM.").expect("name");
        let zone = Name::from_ascii("rpz.example.com.").expect("zone");
        let mut nx = Message::from_vec(&answer(&n, ResponseCode::NXDomain, &[])).expect("decode");
        nx.add_name_server(Record::from_rdata(
            zone.clone(),
            300,
            RData::SOA(hickory_proto::rr::rdata::SOA::new(zone.clone(), zone.clone(), 7, 1, 1, 1, 60)),
        ));
        let mut other_rr =
            Message::from_vec(&answer(&n, ResponseCode::NoError, &[[127, 0, 0, 25]])).expect("d");
        other_rr.add_answer(Record::from_rdata(zone.clone(), 5, RData::A(A(Ipv4Addr::new(127, 0, 0, 1)))));
        other_rr.add_additional(Record::from_rdata(zone, 9, RData::A(A(Ipv4Addr::new(10, 0, 0, 1)))));
        let samples = [
            answer(&n, ResponseCode::NoError, &[[127, 0, 0, 25]]),
            answer(&upper, ResponseCode::NoError, &[[127, 0, 0, 1], [127, 0, 0, 25]]),
            answer(&n, ResponseCode::Refused, &[]),
            answer(&n, ResponseCode::NoError, &[]),
            nx.to_vec().expect("encode"),
            other_rr.to_vec().expect("encode"),
        ];
        for s in &samples {
            assert!(read(s, &n).is_some(), "kept: {s:02x?}");
            for cut in 0..s.len() {
                read(&s[..cut], &n);
            }
            for bit in 0..s.len() * 8 {
                let mut f = s.clone();
                f[bit / 8] ^= 1 << (bit % 8);
                // Bits the library reads but this reading does not need
                // (opcode, AA, RA, Z, the question class) may differ only
                // in being kept; never in the classes or the error.
                let ours = interpret(&f, &wire(&n));
                let theirs = interpret_reference(&f, &n);
                if let (Some(a), Some(b)) = (&ours, &theirs) {
                    assert_eq!(a, b, "flip of bit {bit}");
                }
            }
        }
    }

    #[test]
    fn the_query_is_the_librarys_query() {
        for (text, rd) in [("25.0.18.198.rpz.example.com.", false), ("198.18.0.25.", true)] {
            let name = Name::from_ascii(text).expect("name");
            let mut q = Vec::new();
            query_wire(text, rd, &mut q).expect("plain name");
            q[..2].copy_from_slice(&0x1234u16.to_be_bytes());
            assert_eq!(q, query_bytes(0x1234, &name, rd).expect("encode"));
        }
        let mut q = Vec::new();
        assert_eq!(query_wire("a..b.", false, &mut q), None);
        assert_eq!(query_wire(&format!("{}.", "x".repeat(64)), false, &mut q), None);
        assert_eq!(query_wire(&"abcdefg.".repeat(40), false, &mut q), None);
    }
}
