//! Pushing allow entries into the RPZ primary with TSIG-signed dynamic
//! UPDATE (RFC 2136) over TCP.
//!
//! The zone is read first (AXFR) so only records it lacks are sent. Records
//! go in batches of at most [`BATCH_RECORDS`]; BIND applies each UPDATE
//! message atomically, so after a rejected batch the earlier batches stay
//! committed and the error says how many.

use std::{net::Ipv4Addr, net::SocketAddr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{DNSClass, Name, RData, Record, RecordType, rdata::A},
};

use super::{
    RECORD_TTL, encode_owner,
    transfer::{Ctx, SyncError, axfr},
    tsig::TsigKey,
    wire::{self, Conn},
};
use crate::policy::{AllowDiff, AllowSet, Classes, Prefix};

/// Records per UPDATE message. An IPv6 `rpz-ip` record with an uncompressed
/// owner is under 120 bytes, so 1000 stay far below 64 KiB.
pub const BATCH_RECORDS: usize = 1000;

/// What an UPDATE push did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Wanted records the zone already had (additions) or already lacked (removals).
    pub existing: usize,
    /// Records added by committed batches.
    pub added: usize,
    /// Records removed by committed batches.
    pub removed: usize,
    /// UPDATE messages committed.
    pub batches: usize,
    /// Serial of the zone read before the push.
    pub serial_before: u32,
}

/// A push that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// Reading the zone or talking to the server failed; `committed` says
    /// what had been applied before.
    #[error("{source} (before the failure: {} batches committed, {} records added, {} removed)", committed.batches, committed.added, committed.removed)]
    Sync {
        /// The underlying error (a rejected UPDATE is [`SyncError::Rejected`]
        /// with the rcode, e.g. `REFUSED` or `NOTAUTH (TSIG BADSIG)`).
        source: SyncError,
        /// What was applied before the failure.
        committed: UpdateReport,
    },
}

impl UpdateError {
    /// What was committed before the failure.
    pub fn committed(&self) -> UpdateReport {
        match self {
            UpdateError::Sync { committed, .. } => *committed,
        }
    }
}

/// One record change: the owner, the class value, add or delete.
fn change_record(owner: &Name, class: Classes, add: bool) -> Record {
    let ip = if class == Classes::SMTP { Ipv4Addr::new(127, 0, 0, 25) } else { Ipv4Addr::new(127, 0, 0, 1) };
    let mut r = Record::from_rdata(owner.clone(), if add { RECORD_TTL } else { 0 }, RData::A(A(ip)));
    // RFC 2136 2.5.1 (add: zone class) and 2.5.4 (delete an RR: class NONE).
    r.set_dns_class(if add { DNSClass::IN } else { DNSClass::NONE });
    r
}

/// The `(prefix, single class)` records of `set`.
fn class_records(set: &AllowSet) -> impl Iterator<Item = (Prefix, Classes)> + '_ {
    set.iter().flat_map(|(p, c)| {
        [Classes::DNS, Classes::SMTP].into_iter().filter(|k| c.contains(*k)).map(move |k| (*p, k))
    })
}

async fn push(
    server: SocketAddr,
    zone: &str,
    key: &TsigKey,
    changes: Vec<(Prefix, Classes, bool)>,
    mut report: UpdateReport,
) -> Result<UpdateReport, UpdateError> {
    let ctx = Ctx { server, zone, op: "UPDATE", key: Some(key) };
    let fail = |source, report| UpdateError::Sync { source, committed: report };
    let zone_name = wire::zone_name(zone).map_err(|why| fail(ctx.bad(why), report))?;
    if changes.is_empty() {
        return Ok(report);
    }
    let mut conn = Conn::connect(server).await.map_err(|e| fail(ctx.connect(e), report))?;
    for batch in changes.chunks(BATCH_RECORDS) {
        let mut msg = Message::new();
        msg.set_id(wire::random_id()).set_message_type(MessageType::Query).set_op_code(OpCode::Update);
        let mut zq = Query::query(zone_name.clone(), RecordType::SOA);
        zq.set_query_class(DNSClass::IN);
        msg.add_query(zq);
        for (p, c, add) in batch {
            if let Some(why) = super::unencodable(p) {
                return Err(fail(ctx.bad(why), report));
            }
            let owner = Name::from_ascii(encode_owner(p, zone))
                .map_err(|e| fail(ctx.bad(format!("owner for {p}: {e}")), report))?;
            msg.add_name_server(change_record(&owner, *c, *add));
        }
        let req = wire::encode_request(msg, Some(key)).map_err(|e| fail(ctx.request_error(e), report))?;
        let mut verifier = req.verifier;
        conn.send(&req.bytes).await.map_err(|e| fail(ctx.io(e), report))?;
        let bytes = conn.recv().await.map_err(|e| fail(ctx.io(e), report))?;
        ctx.check_answer(bytes, req.id, req.op_code, &mut verifier).map_err(|e| fail(e, report))?;
        report.batches += 1;
        let adds = batch.iter().filter(|(_, _, add)| *add).count();
        report.added += adds;
        report.removed += batch.len() - adds;
    }
    tracing::info!(%server, zone, added = report.added, removed = report.removed, batches = report.batches, "UPDATE pushed");
    Ok(report)
}

/// Adds to `zone` at `server` every `(prefix, class)` record of `wanted`
/// that the zone lacks (read by AXFR with the same key first).
pub async fn push_additions(
    server: SocketAddr,
    zone: &str,
    key: &TsigKey,
    wanted: &AllowSet,
) -> Result<UpdateReport, UpdateError> {
    let snap = axfr(server, zone, Some(key))
        .await
        .map_err(|source| UpdateError::Sync { source, committed: UpdateReport::default() })?;
    let mut report = UpdateReport { serial_before: snap.serial, ..UpdateReport::default() };
    let mut missing = Vec::new();
    for (p, c) in class_records(wanted) {
        if snap.set.get(&p).contains(c) {
            report.existing += 1;
        } else {
            missing.push((p, c, true));
        }
    }
    push(server, zone, key, missing, report).await
}

/// Adds `records` to `zone` at `server` without reading the zone first:
/// the caller already knows what the zone lacks (live learning checks its
/// IXFR-fed mirror of the zone). Adding a record the zone holds is a no-op
/// (RFC 2136 §3.4.2.2), so a stale mirror costs bytes, never a duplicate.
pub async fn push_records(
    server: SocketAddr,
    zone: &str,
    key: &TsigKey,
    records: &[(Prefix, Classes)],
) -> Result<UpdateReport, UpdateError> {
    let single = |c: Classes| [Classes::DNS, Classes::SMTP].into_iter().filter(move |k| c.contains(*k));
    let changes = records.iter().flat_map(|(p, c)| single(*c).map(|k| (*p, k, true))).collect();
    push(server, zone, key, changes, UpdateReport::default()).await
}

/// Removes from `zone` at `server` every `(prefix, class)` record of
/// `unwanted` that the zone holds (read by AXFR first).
pub async fn push_removals(
    server: SocketAddr,
    zone: &str,
    key: &TsigKey,
    unwanted: &AllowSet,
) -> Result<UpdateReport, UpdateError> {
    let snap = axfr(server, zone, Some(key))
        .await
        .map_err(|source| UpdateError::Sync { source, committed: UpdateReport::default() })?;
    let mut report = UpdateReport { serial_before: snap.serial, ..UpdateReport::default() };
    let mut present = Vec::new();
    for (p, c) in class_records(unwanted) {
        if snap.set.get(&p).contains(c) {
            present.push((p, c, false));
        } else {
            report.existing += 1;
        }
    }
    push(server, zone, key, present, report).await
}

/// Makes `zone` at `server` match `diff` (from [`AllowSet::diff`]): each
/// upserted prefix ends with exactly its classes, each removed prefix with
/// none. Reads the zone first (AXFR) and sends only the records that
/// differ; removals and additions of one batch commit together.
/// `existing` counts upserted prefixes that already matched.
pub async fn push_diff(
    server: SocketAddr,
    zone: &str,
    key: &TsigKey,
    diff: &AllowDiff,
) -> Result<UpdateReport, UpdateError> {
    let snap = axfr(server, zone, Some(key))
        .await
        .map_err(|source| UpdateError::Sync { source, committed: UpdateReport::default() })?;
    let mut report = UpdateReport { serial_before: snap.serial, ..UpdateReport::default() };
    let mut changes = Vec::new();
    let single = |c: Classes| [Classes::DNS, Classes::SMTP].into_iter().filter(move |k| c.contains(*k));
    for p in &diff.remove {
        changes.extend(single(snap.set.get(p)).map(|k| (*p, k, false)));
    }
    for (p, want) in &diff.upsert {
        let have = snap.set.get(p);
        if have == *want {
            report.existing += 1;
        }
        changes.extend(single(have.without(*want)).map(|k| (*p, k, false)));
        changes.extend(single(want.without(have)).map(|k| (*p, k, true)));
    }
    push(server, zone, key, changes, report).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_of_largest_records_fits_well_under_64k() {
        let zone = "rpz.example.com";
        let mut msg = Message::new();
        msg.set_op_code(OpCode::Update);
        msg.add_query(Query::query(wire::zone_name(zone).expect("zone"), RecordType::SOA));
        for i in 0..BATCH_RECORDS {
            let i = u16::try_from(i).expect("small");
            let p = Prefix::host(std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, i, 0xffff, 0xffff, 0xffff, 0xffff, i,
            )));
            let owner = Name::from_ascii(encode_owner(&p, zone)).expect("owner");
            msg.add_name_server(change_record(&owner, Classes::SMTP, true));
        }
        let len = msg.to_vec().expect("encode").len();
        assert!(len < 60_000, "batch is {len} bytes");
    }

    #[test]
    fn class_records_split_classes() {
        let set: AllowSet = [("192.0.2.1".parse::<Prefix>().expect("p"), Classes::DNS.union(Classes::SMTP))]
            .into_iter()
            .collect();
        assert_eq!(class_records(&set).count(), 2);
    }
}
