//! Shared DNS plumbing: TCP framing (RFC 1035 4.2.2), TSIG signing of
//! requests and checking of responses (RFC 8945 5.3), rcode names.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    io,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hickory_proto::{
    dnssec::{
        rdata::{
            DNSSECRData,
            tsig::{TSIG, make_tsig_record, message_tbs},
        },
        tsig::TSigner,
    },
    op::{Message, OpCode},
    rr::{Name, RData, Record},
    serialize::binary::{BinEncodable, BinEncoder},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::tsig::{TsigKey, TsigKeyError};

/// How long to wait for a TCP connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for each message of a TCP exchange.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A DNS message id that is hard to guess.
pub(crate) fn random_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Truncation is the point: 16 random-looking bits.
    (RandomState::new().hash_one(n) & 0xffff) as u16
}

/// Seconds since the epoch, for TSIG time signed.
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A zone name as a hickory FQDN.
pub(crate) fn zone_name(zone: &str) -> Result<Name, String> {
    let fq = if zone.ends_with('.') { zone.to_owned() } else { format!("{zone}.") };
    Name::from_ascii(&fq).map_err(|e| format!("bad zone name {zone:?}: {e}"))
}

/// A request ready to send, with what is needed to check its answers.
pub(crate) struct Request {
    /// The wire bytes.
    pub bytes: Vec<u8>,
    /// The message id.
    pub id: u16,
    /// The opcode: an answer must carry the same.
    pub op_code: OpCode,
    /// Checks TSIG on the answers when the request was signed.
    pub verifier: Option<ResponseVerifier>,
}

/// Encodes `msg`, signing it with `key` when given.
pub(crate) fn encode_request(mut msg: Message, key: Option<&TsigKey>) -> Result<Request, RequestError> {
    let (id, op_code) = (msg.id(), msg.op_code());
    let verifier = match key {
        None => None,
        Some(key) => {
            let signer = key.signer()?;
            // Valid until 2106; the u32 is what hickory's finalizer takes.
            let now = u32::try_from(now_secs()).unwrap_or(u32::MAX);
            msg.finalize(&signer, now).map_err(|e| RequestError::Encode(e.to_string()))?;
            let mac = msg
                .signature()
                .iter()
                .find_map(|r| match r.data() {
                    RData::DNSSEC(DNSSECRData::TSIG(t)) => Some(t.mac().to_vec()),
                    _ => None,
                })
                .ok_or_else(|| RequestError::Encode("signing added no TSIG record".into()))?;
            Some(ResponseVerifier { signer, prev_mac: mac, first: true })
        }
    };
    let bytes = msg.to_vec().map_err(|e| RequestError::Encode(e.to_string()))?;
    Ok(Request { bytes, id, op_code, verifier })
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error(transparent)]
    Key(#[from] TsigKeyError),
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// Checks the TSIG of each answer message, chaining MACs (RFC 8945 5.3.1).
pub(crate) struct ResponseVerifier {
    signer: TSigner,
    prev_mac: Vec<u8>,
    first: bool,
}

impl ResponseVerifier {
    /// Verifies one answer message, already decoded as `msg` (every message
    /// must be signed; BIND signs each one). Works on the raw bytes so the
    /// message is not decoded twice (RFC 8945 4.3.1 and 5.3.1).
    pub(crate) fn verify(&mut self, bytes: &[u8], msg: &Message) -> Result<(), String> {
        let record = msg
            .signature()
            .iter()
            .find(|r| r.record_type() == hickory_proto::rr::RecordType::TSIG)
            .ok_or("answer is not signed (no TSIG record)")?;
        let RData::DNSSEC(DNSSECRData::TSIG(tsig)) = record.data() else {
            return Err("answer's TSIG record has no TSIG data".into());
        };
        if record.name() != self.signer.signer_name() || tsig.algorithm() != self.signer.algorithm() {
            return Err(format!(
                "answer is signed with another key ({} {})",
                record.name(),
                tsig.algorithm()
            ));
        }
        let start = tsig_offset(bytes)
            .filter(|s| *s >= 12 && bytes.len() >= 12)
            .ok_or("cannot locate the TSIG record in the answer")?;
        let mut tbv: Vec<u8> = Vec::with_capacity(bytes.len() + 128);
        let prev_len = u16::try_from(self.prev_mac.len()).map_err(|_| "MAC too long")?;
        tbv.extend_from_slice(&prev_len.to_be_bytes());
        tbv.extend_from_slice(&self.prev_mac);
        // Header with the TSIG taken out of ARCOUNT, then the records before it.
        tbv.extend_from_slice(&bytes[..10]);
        let arcount = u16::from_be_bytes([bytes[10], bytes[11]]).saturating_sub(1);
        tbv.extend_from_slice(&arcount.to_be_bytes());
        tbv.extend_from_slice(&bytes[12..start]);
        if self.first {
            // BinEncoder writes from offset 0 of its buffer: use a fresh one.
            let mut vars = Vec::with_capacity(96);
            let mut enc = BinEncoder::new(&mut vars);
            tsig.emit_tsig_for_mac(&mut enc, record.name()).map_err(|e| format!("TSIG variables: {e}"))?;
            tbv.extend_from_slice(&vars);
        } else {
            // Later messages of a transfer: timers only (RFC 8945 5.3.1).
            let t = tsig.time();
            tbv.extend_from_slice(&t.to_be_bytes()[2..]);
            tbv.extend_from_slice(&tsig.fudge().to_be_bytes());
        }
        let want_len = tsig.algorithm().output_len().map_err(|e| e.to_string())?;
        if tsig.mac().len() < want_len {
            return Err("answer has a truncated MAC".into());
        }
        self.signer.verify(&tbv, tsig.mac()).map_err(|e| format!("answer fails TSIG verification: {e}"))?;
        let now = now_secs();
        let (lo, hi) =
            (tsig.time().saturating_sub(u64::from(tsig.fudge())), tsig.time() + u64::from(tsig.fudge()));
        if !(lo..=hi).contains(&now) {
            return Err(format!(
                "answer's TSIG time is outside the allowed window ({lo}..{hi}, now {now}): check clocks"
            ));
        }
        self.prev_mac = tsig.mac().to_vec();
        self.first = false;
        Ok(())
    }
}

/// TSIG error BADSIG (RFC 8945 section 3).
pub(crate) const TSIG_BADSIG: u16 = 16;
/// TSIG error BADKEY.
pub(crate) const TSIG_BADKEY: u16 = 17;
/// TSIG error BADTIME.
pub(crate) const TSIG_BADTIME: u16 = 18;

/// Why a signed request failed verification: the TSIG error to answer
/// with, and what to log.
#[derive(Debug)]
pub(crate) struct TsigFailure {
    pub code: u16,
    pub why: String,
}

/// Verifies the TSIG of a request we serve (RFC 8945 5.2: key, MAC, time);
/// returns its MAC, which the signed answer chains to.
pub(crate) fn verify_request(bytes: &[u8], msg: &Message, key: &TsigKey) -> Result<Vec<u8>, TsigFailure> {
    let fail = |code, why: String| TsigFailure { code, why };
    let signer = key.signer().map_err(|e| fail(TSIG_BADKEY, e.to_string()))?;
    let record = msg
        .signature()
        .iter()
        .find(|r| r.record_type() == hickory_proto::rr::RecordType::TSIG)
        .ok_or_else(|| fail(TSIG_BADSIG, "no TSIG record".into()))?;
    let RData::DNSSEC(DNSSECRData::TSIG(tsig)) = record.data() else {
        return Err(fail(TSIG_BADSIG, "TSIG record without TSIG data".into()));
    };
    if record.name() != signer.signer_name() || tsig.algorithm() != signer.algorithm() {
        return Err(fail(
            TSIG_BADKEY,
            format!(
                "signed with key {} {}, ours is {} {}",
                record.name(),
                tsig.algorithm(),
                key.name,
                key.algorithm.bind_name()
            ),
        ));
    }
    let want_len = tsig.algorithm().output_len().map_err(|e| fail(TSIG_BADSIG, e.to_string()))?;
    if tsig.mac().len() < want_len {
        return Err(fail(TSIG_BADSIG, "truncated MAC".into()));
    }
    let (mac, window, _) = signer
        .verify_message_byte(None, bytes, true)
        .map_err(|e| fail(TSIG_BADSIG, format!("MAC does not verify with key {}: {e}", key.name)))?;
    let now = now_secs();
    if !(window.start..=window.end).contains(&now) {
        return Err(fail(
            TSIG_BADTIME,
            format!(
                "TSIG time {} is outside {}..{} (now {now}): check clocks",
                tsig.time(),
                window.start,
                window.end
            ),
        ));
    }
    Ok(mac)
}

/// Signs `reply` to a request whose MAC was `request_mac` (RFC 8945 5.3).
pub(crate) fn sign_response(mut reply: Message, key: &TsigKey, request_mac: &[u8]) -> Option<Vec<u8>> {
    let signer = key.signer().ok()?;
    let pre = TSIG::new(
        signer.algorithm().clone(),
        now_secs(),
        signer.fudge(),
        Vec::new(),
        reply.id(),
        0,
        Vec::new(),
    );
    let tbs = message_tbs(Some(request_mac), &reply, &pre, signer.signer_name()).ok()?;
    let mac = signer.sign(&tbs).ok()?;
    reply.add_tsig(make_tsig_record(signer.signer_name().clone(), pre.set_mac(mac)));
    reply.to_vec().ok()
}

/// `reply` with an unsigned TSIG record carrying TSIG error `code`, in the
/// request's key name and algorithm (RFC 8945 5.2: BADSIG and BADKEY
/// answers are not signed).
pub(crate) fn tsig_error_reply(mut reply: Message, request: &Message, code: u16) -> Option<Vec<u8>> {
    let record =
        request.signature().iter().find(|r| r.record_type() == hickory_proto::rr::RecordType::TSIG)?;
    let RData::DNSSEC(DNSSECRData::TSIG(tsig)) = record.data() else { return None };
    let err = TSIG::new(
        tsig.algorithm().clone(),
        now_secs(),
        tsig.fudge(),
        Vec::new(),
        request.id(),
        code,
        Vec::new(),
    );
    reply.add_tsig(make_tsig_record(record.name().clone(), err));
    reply.to_vec().ok()
}

/// Skips a wire-format name starting at `i` (without following pointers).
fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *b.get(i)?;
        match len & 0xc0 {
            0xc0 => return Some(i + 2),
            0x00 if len == 0 => return Some(i + 1),
            0x00 => i += 1 + usize::from(len),
            _ => return None,
        }
    }
}

/// Offset of the last record of the message (where a TSIG sits).
fn tsig_offset(b: &[u8]) -> Option<usize> {
    let count = |at: usize| Some(usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])));
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(b, i)? + 4;
    }
    for _ in 0..(an + ns + ar).checked_sub(1)? {
        i = skip_name(b, i)?;
        let rdlen = usize::from(u16::from_be_bytes([*b.get(i + 8)?, *b.get(i + 9)?]));
        i += 10 + rdlen;
    }
    (i < b.len()).then_some(i)
}

/// The TSIG error field (RFC 8945 4.2) of a message's TSIG record, if any.
pub(crate) fn tsig_error(msg: &Message) -> Option<u16> {
    let tsig = msg.signature().iter().find_map(|r: &Record| match r.data() {
        RData::DNSSEC(DNSSECRData::TSIG(t)) => Some(t),
        _ => None,
    })?;
    let mut buf = Vec::new();
    let mut enc = BinEncoder::new(&mut buf);
    tsig.emit(&mut enc).ok()?;
    // Algorithm name (uncompressed labels), time 6, fudge 2, MAC size 2,
    // MAC, original id 2, error 2.
    let mut i = 0usize;
    loop {
        let len = usize::from(*buf.get(i)?);
        i += 1 + len;
        if len == 0 {
            break;
        }
    }
    i += 8;
    let mac_len = usize::from(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
    i += 2 + mac_len + 2;
    Some(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]))
}

/// The mnemonic of a DNS rcode (RFC 1035, 2136, 6891).
pub(crate) fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADVERS".into(),
        n => format!("RCODE{n}"),
    }
}

/// The mnemonic of a TSIG error (RFC 8945 section 3).
pub(crate) fn tsig_error_name(err: u16) -> String {
    match err {
        16 => "BADSIG".into(),
        17 => "BADKEY".into(),
        18 => "BADTIME".into(),
        19 => "BADMODE".into(),
        20 => "BADNAME".into(),
        21 => "BADALG".into(),
        22 => "BADTRUNC".into(),
        n => format!("TSIG error {n}"),
    }
}

/// What a server answered, in BIND's words: `NOTAUTH (TSIG BADSIG)`.
pub(crate) fn describe_answer(msg: &Message) -> String {
    let rcode = rcode_name(u16::from(msg.response_code()));
    match tsig_error(msg) {
        Some(e) if e != 0 => format!("{rcode} (TSIG {})", tsig_error_name(e)),
        _ => rcode,
    }
}

/// A TCP connection to a DNS server with RFC 1035 4.2.2 length framing.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects within [`CONNECT_TIMEOUT`].
    pub(crate) async fn connect(server: SocketAddr) -> io::Result<Conn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::with_capacity(1 << 16) })
    }

    /// Sends one message.
    pub(crate) async fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let len = u16::try_from(msg.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message longer than 65535 bytes"))?;
        let mut framed = Vec::with_capacity(msg.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(msg);
        self.stream.write_all(&framed).await
    }

    /// Receives one message within [`READ_TIMEOUT`].
    pub(crate) async fn recv(&mut self) -> io::Result<&[u8]> {
        let read = async {
            let mut len = [0u8; 2];
            self.stream.read_exact(&mut len).await?;
            let len = usize::from(u16::from_be_bytes(len));
            self.buf.resize(len, 0);
            self.stream.read_exact(&mut self.buf).await?;
            Ok::<_, io::Error>(())
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))??;
        Ok(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{MessageType, Query},
        rr::RecordType,
    };

    use super::*;
    use crate::rpz::tsig::TsigAlgo;

    fn key(secret: &[u8]) -> TsigKey {
        TsigKey { name: "test-key".into(), algorithm: TsigAlgo::HmacSha256, secret: secret.to_vec() }
    }

    /// A response signed the way a server does: MAC over the request MAC,
    /// the message and the TSIG variables (RFC 8945 5.3).
    fn signed_response(server_key: &TsigKey, req: &Request, req_mac: &[u8]) -> Vec<u8> {
        let signer = server_key.signer().expect("signer");
        let mut resp = Message::new();
        resp.set_id(req.id).set_message_type(MessageType::Response);
        resp.add_query(Query::query(zone_name("rpz.example.com").expect("zone"), RecordType::SOA));
        let pre = TSIG::new(signer.algorithm().clone(), now_secs(), 300, Vec::new(), req.id, 0, Vec::new());
        let tbs = message_tbs(Some(req_mac), &resp, &pre, signer.signer_name()).expect("tbs");
        let mac = signer.sign(&tbs).expect("mac");
        resp.add_tsig(make_tsig_record(signer.signer_name().clone(), pre.set_mac(mac)));
        resp.to_vec().expect("encode")
    }

    #[test]
    fn responses_are_verified_and_tampering_is_caught() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let mut m = Message::new();
        m.set_id(77);
        m.add_query(Query::query(zone_name("rpz.example.com").expect("zone"), RecordType::SOA));
        let req = encode_request(m.clone(), Some(&k)).expect("sign");
        let req_msg = Message::from_vec(&req.bytes).expect("decode request");
        let req_mac = match req_msg.signature()[0].data() {
            RData::DNSSEC(DNSSECRData::TSIG(t)) => t.mac().to_vec(),
            other => panic!("no TSIG in request: {other:?}"),
        };
        let good = signed_response(&k, &req, &req_mac);
        let forged = signed_response(&key(b"another secret of the same size!"), &req, &req_mac);
        let mut v = encode_request(m.clone(), Some(&k)).expect("sign").verifier.expect("verifier");
        // A fresh request has a different MAC; use the one this response chains to.
        v.prev_mac = req_mac.clone();
        v.verify(&good, &Message::from_vec(&good).expect("decode")).expect("valid response verifies");

        let mut tampered = good.clone();
        tampered[13] ^= 0x20; // a bit of the question name
        let mut v2 = req.verifier.expect("verifier");
        let tm = Message::from_vec(&tampered).expect("decode");
        assert!(v2.verify(&tampered, &tm).is_err(), "tampered response accepted");

        let mut v3 = encode_request(m, Some(&k)).expect("sign").verifier.expect("verifier");
        v3.prev_mac = req_mac;
        let e =
            v3.verify(&forged, &Message::from_vec(&forged).expect("decode")).expect_err("wrong key accepted");
        assert!(e.contains("TSIG"), "{e}");
    }

    #[test]
    fn tsig_offset_never_panics() {
        for seed in 0..3000u64 {
            let j = crate::rpz::tests::junk(seed, (seed % 300) as usize);
            if let Some(at) = tsig_offset(&j) {
                assert!(at < j.len());
            }
        }
    }

    #[test]
    fn names_of_codes() {
        assert_eq!(rcode_name(9), "NOTAUTH");
        assert_eq!(rcode_name(5), "REFUSED");
        assert_eq!(tsig_error_name(16), "BADSIG");
        assert_eq!(tsig_error_name(17), "BADKEY");
        assert!(zone_name("rpz.example.com").is_ok());
        assert!(zone_name("bad..name").is_err());
    }
}
