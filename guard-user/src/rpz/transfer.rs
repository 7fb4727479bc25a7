//! Zone transfers of the policy zone: AXFR (RFC 5936), IXFR (RFC 1995) and
//! the SOA serial, over TCP, optionally signed with TSIG (RFC 8945).
//!
//! Records stream straight into the allow set, so a 1M-entry zone is never
//! held as a record list. Every answer message must carry a valid TSIG when
//! a key is used (BIND signs each message of a transfer).

use std::{collections::BTreeSet, io, net::SocketAddr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType, rdata::SOA},
};

use super::{
    Classified, Ignored, RecordData, classify,
    tsig::{TsigKey, TsigKeyError},
    wire::{self, Conn, RequestError},
};
use crate::policy::{AllowDiff, AllowSet, Classes, Prefix};

/// The policy zone as transferred: serial and allow set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneSnapshot {
    /// The SOA serial.
    pub serial: u32,
    /// The allow entries.
    pub set: AllowSet,
    /// Records that are not allow entries (apex SOA/NS not counted).
    pub ignored: Ignored,
    /// Resource records received (without the framing SOAs).
    pub records: usize,
    /// DNS messages received.
    pub messages: usize,
}

impl From<super::zonefile::ParsedZone> for ZoneSnapshot {
    /// A zone file read from disk, as if transferred (no messages).
    fn from(z: super::zonefile::ParsedZone) -> Self {
        ZoneSnapshot { serial: z.serial, set: z.set, ignored: z.ignored, records: z.records, messages: 0 }
    }
}

/// The result of an IXFR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IxfrOutcome {
    /// The server has nothing newer than `from_serial`.
    UpToDate {
        /// The server's serial.
        serial: u32,
    },
    /// Deltas applied to a copy of the current set.
    Incremental {
        /// The new serial.
        serial: u32,
        /// The current set with the deltas applied.
        set: AllowSet,
        /// What changed, ready to mirror into the enforcement maps.
        diff: AllowDiff,
        /// Number of zone versions the deltas spanned.
        versions: usize,
        /// Records in the additions that are not allow entries.
        ignored: Ignored,
    },
    /// The server sent the whole zone (it keeps no journal for that range).
    Full(ZoneSnapshot),
}

impl IxfrOutcome {
    /// The serial the outcome brings the caller to.
    pub fn serial(&self) -> u32 {
        match self {
            IxfrOutcome::UpToDate { serial } | IxfrOutcome::Incremental { serial, .. } => *serial,
            IxfrOutcome::Full(s) => s.serial,
        }
    }
}

/// A failed exchange with the primary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// No TCP connection.
    #[error("{op} of zone {zone}: cannot connect to {server}: {source}")]
    Connect {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation (`AXFR`, `IXFR`, `SOA query`, `UPDATE`).
        op: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// The connection failed or timed out mid-exchange.
    #[error("{op} of zone {zone} from {server}: {source}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        op: &'static str,
        /// The I/O error (kind `TimedOut` on timeouts).
        source: io::Error,
    },
    /// The server refused: its rcode (and TSIG error) in BIND's words.
    #[error("{server} answered {answer} to {op} of zone {zone} ({key})")]
    Rejected {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        op: &'static str,
        /// What the server answered, e.g. `NOTAUTH (TSIG BADSIG)`.
        answer: String,
        /// The key used, e.g. `key rpz-update`, or `no key`.
        key: String,
    },
    /// An answer whose TSIG does not verify (wrong key, tampering, clock).
    #[error("{op} of zone {zone} from {server} ({key}): {why}")]
    Tsig {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        op: &'static str,
        /// The key used.
        key: String,
        /// What failed.
        why: String,
    },
    /// An answer that makes no sense (bad framing, wrong id, no SOA...).
    #[error("{op} of zone {zone} from {server}: bad answer: {why}")]
    BadResponse {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// The operation.
        op: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The key cannot sign.
    #[error(transparent)]
    Key(#[from] TsigKeyError),
}

/// One exchange's context, for building errors.
pub(crate) struct Ctx<'a> {
    pub server: SocketAddr,
    pub zone: &'a str,
    pub op: &'static str,
    pub key: Option<&'a TsigKey>,
}

impl Ctx<'_> {
    pub(crate) fn key_desc(&self) -> String {
        self.key.map_or_else(|| "no key".to_owned(), |k| format!("key {}", k.name))
    }
    pub(crate) fn bad(&self, why: impl Into<String>) -> SyncError {
        SyncError::BadResponse {
            server: self.server,
            zone: self.zone.to_owned(),
            op: self.op,
            why: why.into(),
        }
    }
    pub(crate) fn io(&self, source: io::Error) -> SyncError {
        SyncError::Io { server: self.server, zone: self.zone.to_owned(), op: self.op, source }
    }
    pub(crate) fn connect(&self, source: io::Error) -> SyncError {
        SyncError::Connect { server: self.server, zone: self.zone.to_owned(), op: self.op, source }
    }
    pub(crate) fn request_error(&self, e: RequestError) -> SyncError {
        match e {
            RequestError::Key(k) => SyncError::Key(k),
            RequestError::Encode(why) => self.bad(why),
        }
    }

    /// Decodes and checks one answer to the request with `id` and
    /// `op_code`: id, QR, opcode, rcode, TSIG.
    pub(crate) fn check_answer(
        &self,
        bytes: &[u8],
        id: u16,
        op_code: OpCode,
        verifier: &mut Option<wire::ResponseVerifier>,
    ) -> Result<Message, SyncError> {
        let msg = Message::from_vec(bytes).map_err(|e| self.bad(format!("undecodable message: {e}")))?;
        if msg.id() != id {
            return Err(self.bad(format!("answer id {} does not match query id {id}", msg.id())));
        }
        if msg.message_type() != MessageType::Response {
            return Err(self.bad("the answer is not a response (QR bit clear)"));
        }
        // Even signed and chained to the request, a QUERY answer to an
        // UPDATE does not say the UPDATE was applied.
        if msg.op_code() != op_code {
            return Err(
                self.bad(format!("answer opcode {:?} is not the request's {op_code:?}", msg.op_code()))
            );
        }
        if msg.response_code() != ResponseCode::NoError {
            return Err(SyncError::Rejected {
                server: self.server,
                zone: self.zone.to_owned(),
                op: self.op,
                answer: wire::describe_answer(&msg),
                key: self.key_desc(),
            });
        }
        if let Some(v) = verifier {
            v.verify(bytes, &msg).map_err(|why| SyncError::Tsig {
                server: self.server,
                zone: self.zone.to_owned(),
                op: self.op,
                key: self.key_desc(),
                why,
            })?;
        }
        Ok(msg)
    }
}

/// A query message for `zone`.
fn query(zone: &Name, qtype: RecordType) -> Message {
    let mut msg = Message::new();
    msg.set_id(wire::random_id()).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
    let mut q = Query::query(zone.clone(), qtype);
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    msg
}

fn soa_serial_of(r: &Record) -> Option<u32> {
    match r.data() {
        RData::SOA(soa) => Some(soa.serial()),
        _ => None,
    }
}

/// A decimal octet label as `Ipv4Addr` parsing accepts it (no leading zeros).
fn decimal_octet(l: &[u8]) -> Option<u8> {
    if l.is_empty() || l.len() > 3 || (l.len() > 1 && l[0] == b'0') || !l.iter().all(u8::is_ascii_digit) {
        return None;
    }
    l.iter().try_fold(0u16, |acc, d| Some(acc * 10 + u16::from(d - b'0'))).and_then(|v| u8::try_from(v).ok())
}

/// RFC 1982 serial arithmetic: is `a` newer than `b`?
pub fn serial_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// Where the transfer state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the opening SOA.
    Start,
    /// Got the opening SOA; the next record tells AXFR-style from IXFR.
    AfterFirst,
    /// AXFR body: records until the closing SOA.
    Full,
    /// IXFR: deletions of one version step.
    Deleting,
    /// IXFR: additions of one version step.
    Adding,
    /// Closing SOA seen.
    Done,
}

/// Consumes the records of an AXFR or IXFR answer (RFC 1995 section 4).
struct Xfr<'a> {
    zone: &'a str,
    phase: Phase,
    serial: u32,
    records: usize,
    /// Every record read, whatever it was (at most `max_records`).
    seen: usize,
    /// [`max_transfer_records`] when the transfer began.
    max_records: usize,
    versions: usize,
    /// Set built from a full transfer.
    full: AllowSet,
    /// Copy of the current set for deltas (IXFR only).
    delta: Option<AllowSet>,
    /// The serial an IXFR starts from.
    from_serial: Option<u32>,
    touched: BTreeSet<Prefix>,
    ignored: Ignored,
    /// The zone's labels, lower case, for the fast IPv4-host path.
    zone_labels: Vec<Vec<u8>>,
}

impl<'a> Xfr<'a> {
    fn new(zone: &'a str, current: Option<&AllowSet>, from_serial: Option<u32>) -> Self {
        Xfr {
            zone,
            phase: Phase::Start,
            serial: 0,
            records: 0,
            seen: 0,
            max_records: max_transfer_records(),
            versions: 0,
            full: AllowSet::new(),
            delta: current.cloned(),
            from_serial,
            touched: BTreeSet::new(),
            ignored: Ignored::default(),
            zone_labels: super::canonical(zone)
                .split('.')
                .filter(|l| !l.is_empty())
                .map(|l| l.as_bytes().to_vec())
                .collect(),
        }
    }

    /// The paper's encoding, read straight from the labels without building
    /// strings: `a.b.c.d.<zone>` with `A 127.0.0.1/25`. `None` = take the
    /// general path (same result, slower).
    fn fast_host(&self, r: &Record) -> Option<(Prefix, Classes)> {
        let RData::A(a) = r.data() else { return None };
        let class = Classes::from_rpz_answer(a.0)?;
        let mut labels = r.name().iter();
        let mut octets = [0u8; 4];
        for o in &mut octets {
            *o = decimal_octet(labels.next()?)?;
        }
        let rest: Vec<&[u8]> = labels.collect();
        if rest.len() != self.zone_labels.len()
            || !rest.iter().zip(&self.zone_labels).all(|(l, z)| l.eq_ignore_ascii_case(z))
        {
            return None;
        }
        Some((Prefix::host(std::net::IpAddr::V4(octets.into())), class))
    }

    fn classify(&self, r: &Record) -> (String, Classified) {
        if let Some((p, c)) = self.fast_host(r) {
            return (String::new(), Classified::Entry(p, c));
        }
        let owner = r.name().to_ascii();
        let data = match r.data() {
            RData::A(a) => RecordData::A(a.0),
            RData::CNAME(c) => RecordData::Cname { root: c.0.is_root() },
            RData::TXT(t) => RecordData::Txt(t.txt_data().iter().map(AsRef::as_ref).collect()),
            _ => RecordData::Other(""),
        };
        let c = match classify(&owner, self.zone, data) {
            Classified::Ignored(super::IgnoreReason::OtherType(_)) => {
                Classified::Ignored(super::IgnoreReason::OtherType(r.record_type().to_string()))
            }
            c => c,
        };
        (owner, c)
    }

    fn record(&mut self, r: &Record) -> Result<(), String> {
        self.seen += 1;
        let max = self.max_records;
        if self.seen > max {
            return Err(format!(
                "more than {max} records (rpz.max_transfer_records): an endless or oversized transfer is cut; \
                 the set in force is kept"
            ));
        }
        let soa = if r.record_type() == RecordType::SOA { soa_serial_of(r) } else { None };
        match (self.phase, soa) {
            (Phase::Start, Some(s)) => {
                self.serial = s;
                self.phase = Phase::AfterFirst;
            }
            (Phase::Start, None) => return Err(format!("first record is {} not SOA", r.record_type())),
            (Phase::AfterFirst, Some(s)) if self.delta.is_some() && s != self.serial => {
                self.versions += 1;
                self.phase = Phase::Deleting;
            }
            (Phase::AfterFirst, Some(_)) => self.phase = Phase::Done,
            (Phase::AfterFirst | Phase::Full, None) => {
                self.phase = Phase::Full;
                self.records += 1;
                match self.classify(r) {
                    (_, Classified::Entry(p, c)) => {
                        self.full.add(p, c);
                    }
                    (_, Classified::Txt(p, strings, Ok(m))) => self.full.add_txt(p, strings, Some(m)),
                    (owner, Classified::Txt(p, strings, Err(why))) => {
                        self.full.add_txt(p, strings, None);
                        self.ignored.push(&owner, why);
                    }
                    (_, Classified::Deny(p)) => {
                        self.full.deny(p);
                    }
                    (_, Classified::Apex) => {}
                    (owner, Classified::Ignored(why)) => self.ignored.push(&owner, why),
                }
            }
            (Phase::Full, Some(s)) if s == self.serial => self.phase = Phase::Done,
            (Phase::Full, Some(s)) => {
                return Err(format!("SOA serial {s} inside a transfer of serial {}", self.serial));
            }
            (Phase::Deleting, Some(_)) => self.phase = Phase::Adding,
            (Phase::Adding, Some(s)) if s == self.serial => self.phase = Phase::Done,
            (Phase::Adding, Some(_)) => {
                self.versions += 1;
                self.phase = Phase::Deleting;
            }
            (Phase::Deleting | Phase::Adding, None) => {
                self.records += 1;
                let adding = self.phase == Phase::Adding;
                let (owner, c) = self.classify(r);
                let set = self.delta.as_mut().ok_or("IXFR deltas without a base set")?;
                match c {
                    Classified::Entry(p, c) => {
                        if adding {
                            set.add(p, c);
                        } else {
                            set.remove(&p, c);
                        }
                        self.touched.insert(p);
                    }
                    Classified::Txt(p, strings, meta) if adding => {
                        let meta = match meta {
                            Ok(m) => Some(m),
                            Err(why) => {
                                self.ignored.push(&owner, why);
                                None
                            }
                        };
                        set.add_txt(p, strings, meta);
                    }
                    // Exactly that record goes: a deleted older TXT of the
                    // same owner must not take the newer one along.
                    Classified::Txt(p, strings, _) => set.remove_txt(&p, &strings),
                    Classified::Deny(p) => {
                        if adding {
                            set.deny(p);
                        } else {
                            set.undeny(&p);
                        }
                    }
                    Classified::Apex => {}
                    Classified::Ignored(why) if adding => self.ignored.push(&owner, why),
                    Classified::Ignored(_) => {}
                }
            }
            (Phase::Done, _) => return Err("records after the closing SOA".into()),
        }
        Ok(())
    }
}

/// Default of [`max_transfer_records`]: twice what the XDP maps can hold
/// (an entry is an A record, perhaps with a TXT beside it).
pub const DEFAULT_MAX_TRANSFER_RECORDS: usize = 2
    * (guard_common::MAX_ALLOW_V4 as usize
        + guard_common::MAX_ALLOW_V6 as usize
        + 2 * guard_common::MAX_PREFIXES as usize);

/// Longest a whole transfer may take (each message also has its own
/// read timeout): a primary that trickles records forever is cut.
pub const TRANSFER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

static MAX_TRANSFER_RECORDS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_TRANSFER_RECORDS);

/// Most records one transfer may carry before it is refused (memory bound
/// against an endless or oversized answer); process-wide, set by the daemon
/// from `rpz.max_transfer_records`.
pub fn max_transfer_records() -> usize {
    MAX_TRANSFER_RECORDS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets [`max_transfer_records`].
pub fn set_max_transfer_records(n: usize) {
    MAX_TRANSFER_RECORDS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Sends `msg` and feeds every answer record into `xfr` until it is done
/// (or, for IXFR, the first message holds a lone SOA), within
/// [`TRANSFER_DEADLINE`]. Returns messages read.
async fn run_xfr(ctx: &Ctx<'_>, msg: Message, xfr: &mut Xfr<'_>) -> Result<usize, SyncError> {
    tokio::time::timeout(TRANSFER_DEADLINE, run_xfr_unbounded(ctx, msg, xfr)).await.map_err(|_| {
        ctx.io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the transfer took longer than {} s", TRANSFER_DEADLINE.as_secs()),
        ))
    })?
}

async fn run_xfr_unbounded(ctx: &Ctx<'_>, msg: Message, xfr: &mut Xfr<'_>) -> Result<usize, SyncError> {
    let req = wire::encode_request(msg, ctx.key).map_err(|e| ctx.request_error(e))?;
    let mut verifier = req.verifier;
    let mut conn = Conn::connect(ctx.server).await.map_err(|e| ctx.connect(e))?;
    conn.send(&req.bytes).await.map_err(|e| ctx.io(e))?;
    let mut messages = 0usize;
    loop {
        let bytes = conn.recv().await.map_err(|e| ctx.io(e))?;
        let mut msg = ctx.check_answer(bytes, req.id, req.op_code, &mut verifier)?;
        messages += 1;
        let answers = msg.take_answers();
        for r in &answers {
            xfr.record(r).map_err(|why| ctx.bad(why))?;
        }
        match xfr.phase {
            Phase::Done => return Ok(messages),
            // A lone SOA: the IXFR client is up to date (RFC 1995 section 4).
            Phase::AfterFirst if xfr.from_serial.is_some_and(|f| !serial_newer(xfr.serial, f)) => {
                return Ok(messages);
            }
            _ if answers.is_empty() => return Err(ctx.bad("empty answer before the closing SOA")),
            _ => {}
        }
    }
}

/// Transfers the whole policy zone `zone` from `server` (AXFR over TCP).
pub async fn axfr(server: SocketAddr, zone: &str, key: Option<&TsigKey>) -> Result<ZoneSnapshot, SyncError> {
    let ctx = Ctx { server, zone, op: "AXFR", key };
    let name = wire::zone_name(zone).map_err(|why| ctx.bad(why))?;
    let mut xfr = Xfr::new(zone, None, None);
    let messages = run_xfr(&ctx, query(&name, RecordType::AXFR), &mut xfr).await?;
    tracing::debug!(%server, zone, serial = xfr.serial, entries = xfr.full.len(), messages, "AXFR done");
    Ok(ZoneSnapshot {
        serial: xfr.serial,
        set: xfr.full,
        ignored: xfr.ignored,
        records: xfr.records,
        messages,
    })
}

/// Asks `server` for the changes to `zone` since `from_serial` (IXFR over
/// TCP) and applies them to a copy of `current`. A server that answers with
/// the whole zone gives [`IxfrOutcome::Full`]; one that does not do IXFR at
/// all (NOTIMP, FORMERR) is asked for an AXFR instead.
pub async fn ixfr(
    server: SocketAddr,
    zone: &str,
    key: Option<&TsigKey>,
    from_serial: u32,
    current: &AllowSet,
) -> Result<IxfrOutcome, SyncError> {
    let ctx = Ctx { server, zone, op: "IXFR", key };
    let name = wire::zone_name(zone).map_err(|why| ctx.bad(why))?;
    let mut msg = query(&name, RecordType::IXFR);
    let root = Name::root();
    let soa = SOA::new(root.clone(), root, from_serial, 0, 0, 0, 0);
    msg.add_name_server(Record::from_rdata(name, 0, RData::SOA(soa)));
    let mut xfr = Xfr::new(zone, Some(current), Some(from_serial));
    let messages = match run_xfr(&ctx, msg, &mut xfr).await {
        Ok(m) => m,
        Err(SyncError::Rejected { answer, .. }) if answer == "NOTIMP" || answer == "FORMERR" => {
            tracing::info!(%server, zone, answer, "server does not do IXFR, falling back to AXFR");
            return axfr(server, zone, key).await.map(IxfrOutcome::Full);
        }
        Err(e) => return Err(e),
    };
    let serial = xfr.serial;
    match xfr.phase {
        Phase::AfterFirst => Ok(IxfrOutcome::UpToDate { serial }),
        Phase::Done if xfr.versions == 0 && xfr.records == 0 && serial == from_serial => {
            Ok(IxfrOutcome::UpToDate { serial })
        }
        Phase::Done if xfr.versions == 0 => Ok(IxfrOutcome::Full(ZoneSnapshot {
            serial,
            set: xfr.full,
            ignored: xfr.ignored,
            records: xfr.records,
            messages,
        })),
        _ => {
            let set = xfr.delta.unwrap_or_default();
            let mut diff = AllowDiff::default();
            for p in &xfr.touched {
                let (old, new) = (current.get(p), set.get(p));
                if old != new {
                    if new.is_empty() {
                        diff.remove.push(*p);
                    } else {
                        diff.upsert.push((*p, new));
                    }
                }
            }
            tracing::debug!(%server, zone, from_serial, serial, versions = xfr.versions, changes = diff.upsert.len() + diff.remove.len(), "IXFR applied");
            Ok(IxfrOutcome::Incremental { serial, set, diff, versions: xfr.versions, ignored: xfr.ignored })
        }
    }
}

/// The SOA serial of `zone` at `server` (a signed query over TCP when a key
/// is given, so it passes the same ACL as the transfers).
pub async fn soa_serial(server: SocketAddr, zone: &str, key: Option<&TsigKey>) -> Result<u32, SyncError> {
    soa(server, zone, key).await.map(|s| s.serial)
}

/// The fields of the zone's SOA that rpz-guard uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoaInfo {
    /// The serial.
    pub serial: u32,
    /// The expire timer, seconds: how long a secondary may serve the zone
    /// without reaching the primary.
    pub expire: u32,
}

/// Default of [`soa_within`]'s bound (`rpz.soa_timeout_ms`).
pub const DEFAULT_SOA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Asks `server` for the SOA of `zone` (over TCP, signed with `key`),
/// within [`DEFAULT_SOA_TIMEOUT`].
pub async fn soa(server: SocketAddr, zone: &str, key: Option<&TsigKey>) -> Result<SoaInfo, SyncError> {
    soa_within(server, zone, key, DEFAULT_SOA_TIMEOUT).await
}

/// Asks `server` for the SOA of `zone`, the whole exchange bounded by
/// `timeout`. An SOA answer is one small message, so its bound is short,
/// unlike a transfer's: a primary that accepts the connection but does not
/// answer (BIND still loading a big zone) costs seconds, not the 30 s read
/// timeout of a transfer message.
pub async fn soa_within(
    server: SocketAddr,
    zone: &str,
    key: Option<&TsigKey>,
    timeout: std::time::Duration,
) -> Result<SoaInfo, SyncError> {
    let ctx = Ctx { server, zone, op: "SOA query", key };
    let name = wire::zone_name(zone).map_err(|why| ctx.bad(why))?;
    let req = wire::encode_request(query(&name, RecordType::SOA), key).map_err(|e| ctx.request_error(e))?;
    let mut verifier = req.verifier;
    let exchange = async {
        let mut conn = Conn::connect(server).await.map_err(|e| ctx.connect(e))?;
        conn.send(&req.bytes).await.map_err(|e| ctx.io(e))?;
        conn.recv().await.map(<[u8]>::to_vec).map_err(|e| ctx.io(e))
    };
    let bytes = tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        ctx.io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} ms (rpz.soa_timeout_ms)", timeout.as_millis()),
        ))
    })??;
    let msg = ctx.check_answer(&bytes, req.id, req.op_code, &mut verifier)?;
    msg.answers()
        .iter()
        .find(|r| r.record_type() == RecordType::SOA && r.name() == &name)
        .and_then(|r| match r.data() {
            RData::SOA(soa) => {
                Some(SoaInfo { serial: soa.serial(), expire: u32::try_from(soa.expire()).unwrap_or(0) })
            }
            _ => None,
        })
        .ok_or_else(|| ctx.bad("no SOA for the zone in the answer (is the server authoritative for it?)"))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, CNAME, TXT};

    use super::*;

    const Z: &str = "rpz.example.com.";

    fn soa(serial: u32) -> Record {
        let n = Name::from_ascii(Z).expect("name");
        Record::from_rdata(n.clone(), 60, RData::SOA(SOA::new(n.clone(), n, serial, 1, 1, 1, 1)))
    }

    fn a(owner: &str, last: u8) -> Record {
        let n = Name::from_ascii(format!("{owner}.{Z}")).expect("name");
        Record::from_rdata(n, 60, RData::A(A(Ipv4Addr::new(127, 0, 0, last))))
    }

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    /// Only a response of the request's own opcode answers it, and a
    /// bad answer says what is wrong with it. Found by the `rpz_update`
    /// fuzz target: a NOERROR answer with QR clear was "answer id N does
    /// not match query id N", and a signed NOERROR QUERY answer to an
    /// UPDATE counted as the UPDATE applied.
    #[test]
    fn answer_must_be_a_response_of_the_requests_opcode() {
        use hickory_proto::dnssec::rdata::DNSSECRData;

        use crate::rpz::tsig::{TsigAlgo, TsigKey};

        let key = TsigKey { name: "k".into(), algorithm: TsigAlgo::HmacSha256, secret: vec![7; 32] };
        let ctx =
            Ctx { server: "127.0.0.1:53".parse().expect("addr"), zone: Z, op: "UPDATE", key: Some(&key) };
        let check = |op: OpCode, qr: MessageType, rcode: ResponseCode| {
            let mut m = query(&wire::zone_name(Z).expect("zone"), RecordType::SOA);
            m.set_op_code(OpCode::Update);
            let req = wire::encode_request(m, Some(&key)).expect("sign");
            let signed = Message::from_vec(&req.bytes).expect("decode");
            let mac = signed
                .signature()
                .iter()
                .find_map(|r| match r.data() {
                    RData::DNSSEC(DNSSECRData::TSIG(t)) => Some(t.mac().to_vec()),
                    _ => None,
                })
                .expect("request MAC");
            let mut a = Message::new();
            a.set_id(req.id).set_message_type(qr).set_op_code(op).set_response_code(rcode);
            let bytes = wire::sign_response(a, &key, &mac).expect("signed answer");
            let mut v = req.verifier;
            ctx.check_answer(&bytes, req.id, req.op_code, &mut v)
        };
        check(OpCode::Update, MessageType::Response, ResponseCode::NoError).expect("the UPDATE's own answer");
        for (op, qr, rcode, cause) in [
            (OpCode::Query, MessageType::Response, ResponseCode::NoError, "opcode"),
            (OpCode::Notify, MessageType::Response, ResponseCode::Refused, "opcode"),
            (OpCode::Update, MessageType::Query, ResponseCode::NoError, "not a response"),
        ] {
            match check(op, qr, rcode) {
                Err(SyncError::BadResponse { why, .. }) => {
                    assert!(why.contains(cause), "{op:?} {qr:?}: {why}")
                }
                other => panic!("{op:?} {qr:?} {rcode:?}: accepted, or the wrong cause: {other:?}"),
            }
        }
    }

    #[test]
    fn axfr_sequence_builds_set() {
        let mut x = Xfr::new(Z, None, None);
        let cname = Record::from_rdata(
            Name::from_ascii(format!("9.9.9.9.{Z}")).expect("name"),
            60,
            RData::CNAME(CNAME(Name::root())),
        );
        for r in [soa(5), a("192.0.2.1", 1), a("192.0.2.1", 25), a("192.0.2.2", 2), cname, soa(5)] {
            x.record(&r).expect("record");
        }
        assert_eq!(x.phase, Phase::Done);
        assert_eq!(x.full.get(&p("192.0.2.1")), Classes::DNS.union(Classes::SMTP));
        assert_eq!(x.full.len(), 1);
        // 192.0.2.2 A 127.0.0.2 is ignored; 9.9.9.9 CNAME . is a deny.
        assert_eq!(x.ignored.count, 1);
        assert_eq!(x.full.denies().copied().collect::<Vec<_>>(), vec![p("9.9.9.9")]);
        assert!(x.record(&a("192.0.2.3", 1)).is_err());
    }

    #[test]
    fn endless_transfer_is_cut_at_the_record_cap() {
        let mut x = Xfr::new(Z, None, None);
        x.max_records = 100;
        x.record(&soa(5)).expect("soa");
        let mut n = 1;
        let err = loop {
            let o = (n % 250) as u8;
            match x.record(&a(&format!("192.0.{}.{o}", n / 250), 25)) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 1000, "never cut");
        };
        assert_eq!(n, 100, "cut at the cap");
        assert!(err.contains("rpz.max_transfer_records"), "{err}");
        assert_eq!(
            max_transfer_records(),
            DEFAULT_MAX_TRANSFER_RECORDS,
            "tests never change the process-wide cap"
        );
    }

    #[test]
    fn ixfr_sequence_applies_deltas() {
        let current: AllowSet =
            [(p("192.0.2.1"), Classes::DNS), (p("192.0.2.2"), Classes::SMTP)].into_iter().collect();
        let mut x = Xfr::new(Z, Some(&current), Some(5));
        let seq = [
            soa(7),
            soa(5),
            a("192.0.2.1", 1),
            soa(6),
            a("192.0.2.3", 25),
            soa(6),
            soa(7),
            a("192.0.2.2", 1),
            soa(7),
        ];
        for r in &seq {
            x.record(r).expect("record");
        }
        assert_eq!(x.phase, Phase::Done);
        assert_eq!(x.versions, 2);
        let set = x.delta.expect("delta");
        let want: AllowSet =
            [(p("192.0.2.2"), Classes::SMTP.union(Classes::DNS)), (p("192.0.2.3"), Classes::SMTP)]
                .into_iter()
                .collect();
        assert_eq!(set, want);
        assert_eq!(x.touched.len(), 3);
    }

    fn txt(owner: &str, strings: &[&str]) -> Record {
        let n = Name::from_ascii(format!("{owner}.{Z}")).expect("name");
        Record::from_rdata(n, 60, RData::TXT(TXT::new(strings.iter().map(|s| (*s).to_owned()).collect())))
    }

    fn cname_root(owner: &str) -> Record {
        let n = Name::from_ascii(format!("{owner}.{Z}")).expect("name");
        Record::from_rdata(n, 60, RData::CNAME(CNAME(Name::root())))
    }

    #[test]
    fn ixfr_carries_lifetime_state_and_denies() {
        let mut current: AllowSet = [(p("192.0.2.1"), Classes::DNS)].into_iter().collect();
        let old = ["rpz-guard=1", "src=learned", "first=10", "seen=10"];
        current.set_meta(p("192.0.2.1"), crate::rpz::meta::EntryMeta::decode(&old).expect("meta"));
        let mut x = Xfr::new(Z, Some(&current), Some(5));
        let new = ["rpz-guard=1", "src=learned", "first=10", "seen=99"];
        let seq = [
            soa(6),
            soa(5),
            txt("192.0.2.1", &old),
            soa(6),
            txt("192.0.2.1", &new),
            txt("192.0.2.1", &["v=spf1 -all"]),
            cname_root("203.0.113.9"),
            soa(6),
        ];
        for r in &seq {
            x.record(r).expect("record");
        }
        let set = x.delta.expect("delta");
        assert_eq!(set.meta(&p("192.0.2.1")).and_then(|m| m.seen), Some(99));
        assert!(set.is_denied("203.0.113.9".parse().expect("ip")));
        assert_eq!(x.ignored.count, 1, "the foreign TXT");
        let strs = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<Vec<u8>>>();
        assert_eq!(set.txt(&p("192.0.2.1")), vec![strs(&new), strs(&["v=spf1 -all"])], "the whole RRset");
        // Deleting an older TXT of the owner keeps the newer one.
        let mut y = Xfr::new(Z, Some(&set), Some(6));
        for r in [soa(7), soa(6), txt("192.0.2.1", &old), cname_root("203.0.113.9"), soa(7), soa(7)] {
            y.record(&r).expect("record");
        }
        let set = y.delta.expect("delta");
        assert_eq!(set.meta(&p("192.0.2.1")).and_then(|m| m.seen), Some(99));
        assert!(!set.is_denied("203.0.113.9".parse().expect("ip")));
        // A second TXT of ours (two learners raced): both mirrored, the
        // newest seen counts; deleting one leaves the other.
        let mid = ["rpz-guard=1", "src=learned", "first=10", "seen=50"];
        let mut z = Xfr::new(Z, Some(&set), Some(7));
        for r in [soa(8), soa(7), soa(8), txt("192.0.2.1", &mid), soa(8)] {
            z.record(&r).expect("record");
        }
        let set = z.delta.expect("delta");
        assert_eq!(set.txt(&p("192.0.2.1")).len(), 3);
        assert_eq!(set.meta(&p("192.0.2.1")).and_then(|m| m.seen), Some(99));
        let mut w = Xfr::new(Z, Some(&set), Some(8));
        for r in [soa(9), soa(8), txt("192.0.2.1", &new), soa(9), soa(9)] {
            w.record(&r).expect("record");
        }
        let set = w.delta.expect("delta");
        assert_eq!(set.meta(&p("192.0.2.1")).and_then(|m| m.seen), Some(50));
        assert_eq!(set.txt(&p("192.0.2.1")), vec![strs(&["v=spf1 -all"]), strs(&mid)]);
    }

    /// Foreign TXT records that are not UTF-8 are mirrored byte for byte:
    /// two that lossy UTF-8 would make one stay two, and an IXFR deletion
    /// removes exactly the one it names (issue 11).
    #[test]
    fn non_utf8_txt_is_mirrored_as_bytes() {
        let raw = |b: &'static [u8]| {
            let n = Name::from_ascii(format!("192.0.2.1.{Z}")).expect("name");
            Record::from_rdata(n, 60, RData::TXT(TXT::from_bytes(vec![b])))
        };
        let current: AllowSet = [(p("192.0.2.1"), Classes::DNS)].into_iter().collect();
        let mut x = Xfr::new(Z, Some(&current), Some(5));
        for r in [soa(6), soa(5), soa(6), raw(&[0xff]), raw(&[0xfe]), soa(6)] {
            x.record(&r).expect("record");
        }
        let set = x.delta.expect("delta");
        assert_eq!(set.txt(&p("192.0.2.1")), vec![vec![vec![0xff]], vec![vec![0xfe]]]);
        let mut y = Xfr::new(Z, Some(&set), Some(6));
        for r in [soa(7), soa(6), raw(&[0xff]), soa(7), soa(7)] {
            y.record(&r).expect("record");
        }
        let set = y.delta.expect("delta");
        assert_eq!(set.txt(&p("192.0.2.1")), vec![vec![vec![0xfe]]]);
    }

    #[test]
    fn fast_path_agrees_with_decode_owner() {
        let x = Xfr::new(Z, None, None);
        let owners = [
            "192.0.2.1",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "a.b.c.d",
            "1.2.3.4.RPZ",
            "24.0.2.0.192.rpz-ip",
            "*.1.2.3",
        ];
        for o in owners {
            let Ok(n) = Name::from_ascii(format!("{o}.{Z}")) else { continue };
            let r = Record::from_rdata(n, 60, RData::A(A(Ipv4Addr::new(127, 0, 0, 1))));
            let fast = x.fast_host(&r).map(|(p, _)| p);
            let slow = crate::rpz::decode_owner(&r.name().to_ascii(), Z)
                .ok()
                .filter(|p| p.is_host() && p.addr().is_ipv4());
            if fast.is_some() {
                assert_eq!(fast, slow, "{o}");
            }
            let (_, c) = x.classify(&r);
            match crate::rpz::decode_owner(&r.name().to_ascii(), Z) {
                Ok(p) => assert_eq!(c, Classified::Entry(p, Classes::DNS), "{o}"),
                Err(_) => assert!(matches!(c, Classified::Ignored(_)), "{o}"),
            }
        }
        let other = Record::from_rdata(
            Name::from_ascii("1.2.3.4.other.test.").expect("name"),
            60,
            RData::A(A(Ipv4Addr::new(127, 0, 0, 1))),
        );
        assert_eq!(x.fast_host(&other), None);
    }

    #[test]
    fn serial_arithmetic() {
        assert!(serial_newer(2, 1));
        assert!(serial_newer(0, u32::MAX));
        assert!(!serial_newer(1, 1));
        assert!(!serial_newer(1, 2));
        assert!(serial_newer(0x7fff_ffff, 0));
        // Exactly half the space apart: undefined, so neither is newer.
        assert!(!serial_newer(0x8000_0001, 1) && !serial_newer(1, 0x8000_0001));
    }

    #[test]
    fn transfer_must_start_with_soa() {
        let mut x = Xfr::new(Z, None, None);
        assert!(x.record(&a("192.0.2.1", 1)).is_err());
        let mut x = Xfr::new(Z, None, None);
        for r in [soa(5), a("192.0.2.1", 1)] {
            x.record(&r).expect("record");
        }
        assert!(x.record(&soa(6)).is_err());
    }
}
