//! Operator edits of the policy zone, one owner at a time: reading what an
//! owner holds (A, TXT, CNAME), and changing it with ONE TSIG-signed RFC 2136
//! UPDATE whose prerequisites guard the state the change was decided on.
//!
//! BIND applies an UPDATE message as a whole or not at all (RFC 2136 §3.7),
//! so a change made here is never half-applied: either every record of it is
//! in the zone (and the answer is `NOERROR`), or none is and the answer says
//! why (`YXRRSET`: a prerequisite failed, `NOTAUTH (TSIG BADSIG)`, ...).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, CNAME, TXT},
    },
};

use super::meta::{EntryMeta, TxtData};
use super::{
    RECORD_TTL, encode_owner,
    transfer::{Ctx, SyncError},
    tsig::TsigKey,
    wire::{self, Conn},
};
use crate::policy::{AllowSet, Classes, Prefix};

/// What one owner of the policy zone holds, as far as rpz-guard cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerRecords {
    /// The classes its `A 127.0.0.1` / `A 127.0.0.25` records give.
    pub classes: Classes,
    /// `A` records that are neither (not ours; kept, reported).
    pub other_a: Vec<Ipv4Addr>,
    /// Each TXT record, as its character-strings (raw bytes: a
    /// prerequisite naming the RRset must hold exactly what the zone does).
    pub txt: Vec<TxtData>,
    /// The CNAME target, when there is one (`.` is the RPZ NXDOMAIN action:
    /// a deny).
    pub cname: Option<String>,
    /// Other record types found at the owner, by mnemonic.
    pub other_types: Vec<String>,
}

impl OwnerRecords {
    /// True when the owner holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
            && self.other_a.is_empty()
            && self.txt.is_empty()
            && self.cname.is_none()
            && self.other_types.is_empty()
    }

    /// True when the owner is a deny (`CNAME .`).
    pub fn is_deny(&self) -> bool {
        self.cname.as_deref() == Some(".")
    }

    /// The owner as a one-owner [`AllowSet`] (classes, every TXT record
    /// with its lifetime state, a deny), so that the edit builders that
    /// decide on the mirror decide the same way on a fresh read.
    pub fn view(&self, prefix: Prefix) -> AllowSet {
        let mut set = AllowSet::new();
        set.add(prefix, self.classes);
        for t in &self.txt {
            set.add_txt(prefix, t.clone(), EntryMeta::decode(t).ok());
        }
        if self.is_deny() {
            set.deny(prefix);
        }
        set
    }

    fn take(&mut self, r: &Record) {
        match r.data() {
            RData::A(a) => match Classes::from_rpz_answer(a.0) {
                Some(c) => self.classes = self.classes.union(c),
                None => self.other_a.push(a.0),
            },
            RData::TXT(t) => {
                self.txt.push(t.txt_data().iter().map(|s| s.to_vec()).collect());
            }
            RData::CNAME(c) => self.cname = Some(c.0.to_ascii()),
            _ => self.other_types.push(r.record_type().to_string()),
        }
    }
}

/// A condition the zone must meet for an UPDATE to apply (RFC 2136 §2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prereq {
    /// The owner holds at least one record (§2.4.4, "name is in use");
    /// the server answers `NXDOMAIN` otherwise.
    InUse,
    /// The owner holds no RRset of this type (§2.4.3); the server answers
    /// `YXRRSET` otherwise.
    NoRrset(RecordType),
    /// The TXT RRset is exactly these records (§2.4.2, value dependent);
    /// the server answers `NXRRSET` otherwise.
    TxtIs(Vec<TxtData>),
}

impl Prereq {
    /// "The TXT RRset is exactly `records`" (the whole RRset an edit read):
    /// [`Prereq::NoRrset`] when it is empty.
    pub fn txt_is(records: Vec<TxtData>) -> Prereq {
        if records.is_empty() { Prereq::NoRrset(RecordType::TXT) } else { Prereq::TxtIs(records) }
    }
}

/// One change at the owner (RFC 2136 §2.5), applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Delete every RRset at the owner (§2.5.3).
    DeleteAll,
    /// Delete the RRset of this type (§2.5.2).
    DeleteRrset(RecordType),
    /// Delete this one TXT record (§2.5.4), leaving others at the owner.
    DeleteTxt(TxtData),
    /// Add the `A` records that encode these classes.
    AddClasses(Classes),
    /// Add one TXT record with these character-strings.
    AddTxt(TxtData),
    /// Add `CNAME .` (the RPZ NXDOMAIN action: a deny).
    AddDeny,
}

/// One UPDATE message for the owner of `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerEdit {
    /// The entry whose owner name is changed.
    pub prefix: Prefix,
    /// Conditions checked by the server before anything changes.
    pub prereqs: Vec<Prereq>,
    /// The changes, in order.
    pub changes: Vec<Change>,
}

impl OwnerEdit {
    /// The UPDATE message (unsigned) for `zone`.
    pub fn message(&self, zone: &str) -> Result<Message, String> {
        batch_message(zone, std::slice::from_ref(self))
    }

    /// Appends this edit's prerequisites and changes to `msg`.
    fn fill(&self, zone: &str, msg: &mut Message) -> Result<(), String> {
        if let Some(why) = super::unencodable(&self.prefix) {
            return Err(why);
        }
        let owner = Name::from_ascii(encode_owner(&self.prefix, zone))
            .map_err(|e| format!("owner name for {}: {e}", self.prefix))?;
        let empty = |rtype: RecordType, class: DNSClass| {
            let mut r = Record::update0(owner.clone(), 0, rtype);
            r.set_dns_class(class);
            r
        };
        let txt = |strings: &TxtData, ttl: u32, class: DNSClass| {
            if strings.iter().any(|s| s.len() > 255) {
                return Err("a TXT character-string is longer than 255 bytes".to_owned());
            }
            // Bytes, not text: a foreign record's non-UTF-8 bytes must be
            // named exactly, or the prerequisite never matches.
            let rdata = TXT::from_bytes(strings.iter().map(Vec::as_slice).collect());
            let mut r = Record::from_rdata(owner.clone(), ttl, RData::TXT(rdata));
            r.set_dns_class(class);
            Ok(r)
        };
        for p in &self.prereqs {
            // The prerequisite section is the answer section of an UPDATE.
            match p {
                Prereq::InUse => msg.add_answer(empty(RecordType::ANY, DNSClass::ANY)),
                Prereq::NoRrset(t) => msg.add_answer(empty(*t, DNSClass::NONE)),
                Prereq::TxtIs(records) => {
                    for r in records {
                        msg.add_answer(txt(r, 0, DNSClass::IN)?);
                    }
                    &mut *msg
                }
            };
        }
        for c in &self.changes {
            match c {
                Change::DeleteAll => {
                    msg.add_name_server(empty(RecordType::ANY, DNSClass::ANY));
                }
                Change::DeleteRrset(t) => {
                    msg.add_name_server(empty(*t, DNSClass::ANY));
                }
                Change::AddClasses(classes) => {
                    for a in classes.rpz_answers() {
                        msg.add_name_server(Record::from_rdata(owner.clone(), RECORD_TTL, RData::A(A(a))));
                    }
                }
                Change::DeleteTxt(strings) => {
                    msg.add_name_server(txt(strings, 0, DNSClass::NONE)?);
                }
                Change::AddTxt(strings) => {
                    msg.add_name_server(txt(strings, RECORD_TTL, DNSClass::IN)?);
                }
                Change::AddDeny => {
                    msg.add_name_server(Record::from_rdata(
                        owner.clone(),
                        RECORD_TTL,
                        RData::CNAME(CNAME(Name::root())),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One UPDATE message (unsigned) for `zone` holding every edit of `edits`:
/// BIND applies it whole or not at all, prerequisites of every owner
/// included (the learner's and the ageing's batches).
pub fn batch_message(zone: &str, edits: &[OwnerEdit]) -> Result<Message, String> {
    let zone_name = wire::zone_name(zone)?;
    let mut msg = Message::new();
    msg.set_id(wire::random_id()).set_message_type(MessageType::Query).set_op_code(OpCode::Update);
    let mut zq = Query::query(zone_name, RecordType::SOA);
    zq.set_query_class(DNSClass::IN);
    msg.add_query(zq);
    for e in edits {
        e.fill(zone, &mut msg)?;
    }
    Ok(msg)
}

/// Sends `edits` to `server` as one TSIG-signed UPDATE (see
/// [`batch_message`]) and checks the answer, like [`apply`].
pub async fn apply_batch(
    server: SocketAddr,
    zone: &str,
    key: &TsigKey,
    edits: &[OwnerEdit],
) -> Result<(), SyncError> {
    let ctx = Ctx { server, zone, op: "UPDATE", key: Some(key) };
    let msg = batch_message(zone, edits).map_err(|why| ctx.bad(why))?;
    let req = wire::encode_request(msg, Some(key)).map_err(|e| ctx.request_error(e))?;
    let mut verifier = req.verifier;
    let mut conn = Conn::connect(server).await.map_err(|e| ctx.connect(e))?;
    conn.send(&req.bytes).await.map_err(|e| ctx.io(e))?;
    let bytes = conn.recv().await.map_err(|e| ctx.io(e))?;
    ctx.check_answer(bytes, req.id, req.op_code, &mut verifier)?;
    tracing::debug!(%server, zone, owners = edits.len(), "UPDATE batch applied");
    Ok(())
}

/// Checks that `zone` is a valid zone name (before anything is sent).
pub fn check_zone(zone: &str) -> Result<(), String> {
    wire::zone_name(zone).map(|_| ())
}

/// Sends `edit` to `server` as one TSIG-signed UPDATE and checks the answer
/// (rcode `NOERROR` and the answer's TSIG). A failed prerequisite is
/// [`SyncError::Rejected`] with the server's rcode (`NXDOMAIN`, `YXRRSET`).
pub async fn apply(server: SocketAddr, zone: &str, key: &TsigKey, edit: &OwnerEdit) -> Result<(), SyncError> {
    apply_batch(server, zone, key, std::slice::from_ref(edit)).await
}

/// True when the server refused an UPDATE because a prerequisite failed
/// (RFC 2136 §3.2.5: `YXDOMAIN`, `YXRRSET`, `NXDOMAIN`, `NXRRSET`):
/// the zone changed since it was read.
pub fn prerequisite_failed(e: &SyncError) -> bool {
    matches!(e, SyncError::Rejected { answer, .. }
        if ["YXDOMAIN", "YXRRSET", "NXDOMAIN", "NXRRSET"].iter().any(|r| answer.starts_with(r)))
}

/// Most UPDATEs [`apply_owners`] sends for one owner whose prerequisite
/// keeps failing (another writer at the same owner each time).
pub const OWNER_TRIES: usize = 3;

/// What [`apply_owners`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The owners changed, each by the edit BIND accepted.
    pub done: Vec<OwnerEdit>,
    /// Owners whose fresh read left nothing to do (the rebuilder said so).
    pub dropped: Vec<Prefix>,
    /// Owners given up: their prerequisite failed [`OWNER_TRIES`] times.
    pub conflicts: Vec<Prefix>,
    /// UPDATE messages sent.
    pub updates: usize,
    /// Owners re-read after a failed prerequisite.
    pub rereads: usize,
}

/// Sends `edits` as one UPDATE; when a prerequisite fails (the zone
/// changed since the edits were decided), owner by owner: each owner whose
/// own edit fails is read again ([`read_owner`]) and `rebuild` decides its
/// edit anew from what it holds now (`None`: nothing to do any more), up to
/// [`OWNER_TRIES`] UPDATEs per owner. The one fallback every writer of
/// the zone shares (the learners, ageing): an edit guarded by "the TXT
/// RRset is what I read" never creates a second lifetime TXT, and a writer
/// that lost a race writes on what the winner left.
///
/// Any other failure (unreachable, TSIG, `REFUSED`) stops at once: the
/// error, with what was applied before it.
pub async fn apply_owners<F>(
    server: SocketAddr,
    zone: &str,
    key: &TsigKey,
    edits: Vec<OwnerEdit>,
    mut rebuild: F,
) -> Result<Applied, (SyncError, Applied)>
where
    F: FnMut(&Prefix, &OwnerRecords) -> Option<OwnerEdit>,
{
    let mut out = Applied::default();
    if edits.is_empty() {
        return Ok(out);
    }
    if edits.len() > 1 {
        out.updates += 1;
        match apply_batch(server, zone, key, &edits).await {
            Ok(()) => {
                out.done = edits;
                return Ok(out);
            }
            Err(e) if prerequisite_failed(&e) => {
                tracing::debug!(%server, owners = edits.len(), "a prerequisite failed: owner by owner");
            }
            Err(e) => return Err((e, out)),
        }
    }
    for mut edit in edits {
        let mut tries = 0;
        loop {
            tries += 1;
            out.updates += 1;
            match apply(server, zone, key, &edit).await {
                Ok(()) => {
                    out.done.push(edit);
                    break;
                }
                Err(e) if prerequisite_failed(&e) => {
                    if tries >= OWNER_TRIES {
                        tracing::info!(entry = %edit.prefix, tries, "the owner kept changing: given up for now");
                        out.conflicts.push(edit.prefix);
                        break;
                    }
                    out.rereads += 1;
                    let fresh = match read_owner(server, zone, Some(key), &edit.prefix).await {
                        Ok(r) => r,
                        Err(e) => return Err((e, out)),
                    };
                    match rebuild(&edit.prefix, &fresh) {
                        Some(next) => edit = next,
                        None => {
                            out.dropped.push(edit.prefix);
                            break;
                        }
                    }
                }
                Err(e) => return Err((e, out)),
            }
        }
    }
    Ok(out)
}

/// The records at the owner of `prefix` (one signed `ANY` query over TCP;
/// an authoritative server answers every RRset of the name over TCP).
pub async fn read_owner(
    server: SocketAddr,
    zone: &str,
    key: Option<&TsigKey>,
    prefix: &Prefix,
) -> Result<OwnerRecords, SyncError> {
    let mut found = read_owners(server, zone, key, std::slice::from_ref(prefix)).await?;
    Ok(found.pop().map(|(_, r)| r).unwrap_or_default())
}

/// Every entry of the zone that covers `ip`: its host owner and each prefix
/// owner (`rpz-ip`) from the longest to the shortest, with what each holds.
/// Owners that hold nothing are left out. One TCP connection, one query
/// per candidate owner (33 for IPv4, 129 for IPv6): a whole-zone transfer
/// is not needed to explain one address.
pub async fn read_covering(
    server: SocketAddr,
    zone: &str,
    key: Option<&TsigKey>,
    ip: IpAddr,
) -> Result<Vec<(Prefix, OwnerRecords)>, SyncError> {
    let host = Prefix::host(ip);
    let max = if host.addr().is_ipv4() { 32u8 } else { 128 };
    let candidates: Vec<Prefix> = std::iter::once(host)
        .chain((1..max).rev().filter_map(|len| Prefix::new(host.addr(), len).ok()))
        .collect();
    let found = read_owners(server, zone, key, &candidates).await?;
    Ok(found.into_iter().filter(|(_, r)| !r.is_empty()).collect())
}

/// One `ANY` query per prefix's owner, in order, on one connection.
async fn read_owners(
    server: SocketAddr,
    zone: &str,
    key: Option<&TsigKey>,
    prefixes: &[Prefix],
) -> Result<Vec<(Prefix, OwnerRecords)>, SyncError> {
    let ctx = Ctx { server, zone, op: "query", key };
    let mut conn = Conn::connect(server).await.map_err(|e| ctx.connect(e))?;
    let mut out = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        let owner =
            Name::from_ascii(encode_owner(p, zone)).map_err(|e| ctx.bad(format!("owner for {p}: {e}")))?;
        let mut msg = Message::new();
        msg.set_id(wire::random_id()).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
        // No recursion: the zone's own data, never a rewritten answer.
        msg.set_recursion_desired(false);
        let mut q = Query::query(owner.clone(), RecordType::ANY);
        q.set_query_class(DNSClass::IN);
        msg.add_query(q);
        let req = wire::encode_request(msg, key).map_err(|e| ctx.request_error(e))?;
        let mut verifier = req.verifier;
        conn.send(&req.bytes).await.map_err(|e| ctx.io(e))?;
        let bytes = conn.recv().await.map_err(|e| ctx.io(e))?;
        let nxdomain = Message::from_vec(bytes)
            .is_ok_and(|m| m.id() == req.id && m.response_code() == ResponseCode::NXDomain);
        if nxdomain {
            // The owner does not exist: it holds nothing. Still a signed
            // answer: a forged NXDOMAIN must not hide an entry.
            if let (Some(v), Ok(m)) = (verifier.as_mut(), Message::from_vec(bytes)) {
                v.verify(bytes, &m).map_err(|why| SyncError::Tsig {
                    server,
                    zone: zone.to_owned(),
                    op: ctx.op,
                    key: ctx.key_desc(),
                    why,
                })?;
            }
            out.push((*p, OwnerRecords::default()));
            continue;
        }
        let answer = ctx.check_answer(bytes, req.id, req.op_code, &mut verifier)?;
        if !answer.authoritative() {
            return Err(ctx.bad(format!(
                "the answer for {owner} is not authoritative: is {server} the primary of zone {zone}?"
            )));
        }
        let mut rec = OwnerRecords::default();
        for r in answer.answers().iter().filter(|r| r.name() == &owner) {
            rec.take(r);
        }
        out.push((*p, rec));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "rpz.example.com";

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    /// The wire form of each kind of prerequisite and change, as RFC 2136
    /// §2.4 and §2.5 lay them out (class and type of the empty records).
    #[test]
    fn message_sections_follow_rfc2136() {
        let edit = OwnerEdit {
            prefix: p("203.0.113.9"),
            prereqs: vec![
                Prereq::InUse,
                Prereq::NoRrset(RecordType::CNAME),
                Prereq::TxtIs(vec![vec!["rpz-guard=1".into()]]),
            ],
            changes: vec![
                Change::DeleteAll,
                Change::DeleteTxt(vec!["rpz-guard=1".into()]),
                Change::DeleteRrset(RecordType::TXT),
                Change::AddClasses(Classes::DNS.union(Classes::SMTP)),
                Change::AddTxt(vec!["rpz-guard=1".into(), "src=manual".into()]),
                Change::AddDeny,
            ],
        };
        let msg = edit.message(Z).expect("message");
        let back = Message::from_vec(&msg.to_vec().expect("encode")).expect("decode");
        assert_eq!(back.op_code(), OpCode::Update);
        let pre: Vec<_> = back.answers().iter().map(|r| (r.dns_class(), r.record_type(), r.ttl())).collect();
        assert_eq!(
            pre,
            [
                (DNSClass::ANY, RecordType::ANY, 0),
                (DNSClass::NONE, RecordType::CNAME, 0),
                (DNSClass::IN, RecordType::TXT, 0)
            ]
        );
        let up: Vec<_> = back.name_servers().iter().map(|r| (r.dns_class(), r.record_type())).collect();
        assert_eq!(
            up,
            [
                (DNSClass::ANY, RecordType::ANY),
                (DNSClass::NONE, RecordType::TXT),
                (DNSClass::ANY, RecordType::TXT),
                (DNSClass::IN, RecordType::A),
                (DNSClass::IN, RecordType::A),
                (DNSClass::IN, RecordType::TXT),
                (DNSClass::IN, RecordType::CNAME),
            ]
        );
        let owner = Name::from_ascii("203.0.113.9.rpz.example.com.").expect("name");
        assert!(back.answers().iter().chain(back.name_servers()).all(|r| r.name() == &owner));
    }

    #[test]
    fn prefixes_use_rpz_ip_owners_and_zero_length_is_refused() {
        let edit = OwnerEdit { prefix: p("203.0.113.0/24"), prereqs: vec![], changes: vec![Change::AddDeny] };
        let msg = edit.message(Z).expect("message");
        assert_eq!(msg.name_servers()[0].name().to_ascii(), "24.0.113.0.203.rpz-ip.rpz.example.com.");
        let zero = OwnerEdit { prefix: p("0.0.0.0/0"), ..edit };
        assert!(zero.message(Z).is_err());
    }

    /// A fresh read seen as a one-owner set: every TXT kept, ours decoded,
    /// the newest `seen` counting; the prerequisite names the whole RRset.
    #[test]
    fn fresh_reads_keep_every_txt() {
        let q = p("203.0.113.9");
        let old: TxtData = vec!["rpz-guard=1".into(), "src=learned".into(), "seen=5".into()];
        let new: TxtData = vec!["rpz-guard=1".into(), "src=learned".into(), "seen=9".into()];
        let r = OwnerRecords {
            classes: Classes::DNS,
            txt: vec![new.clone(), vec!["v=spf1 -all".into()], old.clone()],
            ..OwnerRecords::default()
        };
        let v = r.view(q);
        assert_eq!(v.get(&q), Classes::DNS);
        assert_eq!(v.meta(&q).and_then(|m| m.seen), Some(9));
        assert_eq!(v.txt(&q), r.txt);
        assert_eq!(v.our_txt(&q), vec![new, old]);
        assert_eq!(Prereq::txt_is(v.txt(&q)), Prereq::TxtIs(r.txt.clone()));
        assert_eq!(Prereq::txt_is(Vec::new()), Prereq::NoRrset(RecordType::TXT));
        let deny = OwnerRecords { cname: Some(".".into()), ..OwnerRecords::default() };
        assert!(deny.view(q).is_denied(q.addr()));
    }

    #[test]
    fn long_txt_strings_are_refused() {
        let edit = OwnerEdit {
            prefix: p("203.0.113.9"),
            prereqs: vec![],
            changes: vec![Change::AddTxt(vec![vec![b'x'; 256]])],
        };
        assert!(edit.message(Z).is_err());
    }

    /// A foreign TXT that is not UTF-8 is read, and named in an UPDATE,
    /// byte for byte (issue 11: lossy UTF-8 made its prerequisite fail
    /// for ever).
    #[test]
    fn txt_bytes_are_named_exactly() {
        let raw: TxtData = vec![vec![0xff, 0xfe, b'a'], vec![0x80]];
        let mut r = OwnerRecords::default();
        let owner = Name::from_ascii("203.0.113.9.rpz.example.com.").expect("name");
        r.take(&Record::from_rdata(
            owner,
            60,
            RData::TXT(TXT::from_bytes(vec![&[0xff, 0xfe, b'a'], &[0x80]])),
        ));
        assert_eq!(r.txt, vec![raw.clone()]);
        let edit = OwnerEdit {
            prefix: p("203.0.113.9"),
            prereqs: vec![Prereq::txt_is(r.view(p("203.0.113.9")).txt(&p("203.0.113.9")))],
            changes: vec![Change::DeleteTxt(raw.clone())],
        };
        let msg = edit.message(Z).expect("message");
        let back = Message::from_vec(&msg.to_vec().expect("encode")).expect("decode");
        for rec in back.answers().iter().chain(back.name_servers()) {
            let RData::TXT(t) = rec.data() else { panic!("TXT: {rec:?}") };
            assert_eq!(t.txt_data().iter().map(|s| s.to_vec()).collect::<TxtData>(), raw);
        }
    }
}
