//! Live-learned entries to the RPZ primary: TSIG-signed UPDATEs of what
//! the zone lacks, batched (every `interval`, or at once when `batch`
//! records wait), retried with back-off while the primary is unreachable.
//! The entries stay enforced locally meanwhile, and a journal file keeps
//! every unconfirmed entry across a daemon restart.
//!
//! The zone stays the source of truth: an entry leaves [`LiveAllow`] only
//! once the zone, read back by IXFR, holds it; every other router following
//! the zone gets it the same way.
//!
//! Lifetime state (issue 11): a new entry goes in with its TXT
//! (`src=learned first seen ttl ev`, [`crate::rpz::meta`]) in the same
//! UPDATE as its `A` records. An answer that confirms an entry the zone
//! already holds refreshes its `seen` (and `ttl`, `ev`), but only once
//! `seen` is older than the refresh granularity, so hot names cause no
//! UPDATE storm; refreshes go out in batches, at most one UPDATE per second.
//! Every edit is guarded by the owner's TXT RRset as read (all of it, or
//! "no TXT"), so two learners racing never leave two TXTs of ours: the
//! loser's owner is read again and decided anew
//! ([`crate::rpz::edit::apply_owners`]).
use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    hints::Hints,
    live::{Confirmed, LiveAllow, monotonic_ns},
};
use crate::{
    policy::{AllowSet, Classes, Prefix},
    rpz::{
        edit::{Applied, Change, OwnerEdit, OwnerRecords, Prereq, apply_owners},
        meta::{EntryMeta, Source, unix_now},
        tsig::TsigKey,
    },
};

/// Where and how often to push.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The primary; `None`: entries are only enforced locally (and journalled).
    pub target: Option<(SocketAddr, String, TsigKey)>,
    /// Longest wait before queued entries go out.
    pub interval: Duration,
    /// Most records per UPDATE; a full batch goes out at once.
    pub batch: usize,
    /// One UPDATE's time limit.
    pub timeout: Duration,
    /// The journal of unconfirmed entries.
    pub journal: Option<PathBuf>,
    /// Refresh `seen` of a confirmed entry only when it is older than this
    /// (seconds); `None`: confirmations are not written back.
    pub refresh_secs: Option<u64>,
}

/// Most owners per UPDATE: each may carry two TXT records (the old one
/// deleted, the new one added) of up to ~600 bytes, and a message must stay
/// under 64 KiB.
pub const MAX_OWNERS_PER_UPDATE: usize = 80;

/// Least time between two refresh UPDATEs.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The UPDATE edit of a new live entry: its `A` records and its lifetime
/// TXT (replacing every one of ours the zone has: a class added to a known
/// entry keeps its `first`, two racing learners' records become one). A
/// manual entry's TXT is left alone. Guarded by the owner's whole TXT
/// RRset as `set` holds it, so that a writer that raced another one fails
/// rather than leave a second TXT of ours ([`apply_owners`] then reads the
/// owner again and decides anew).
fn new_entry_edit(
    set: &AllowSet,
    p: Prefix,
    classes: Classes,
    conf: Option<&Confirmed>,
    now: u64,
) -> OwnerEdit {
    let mut changes = vec![Change::AddClasses(classes)];
    let old = set.meta(&p);
    if old.is_none_or(|m| m.source == Source::Learned) {
        let at = conf.map_or(now, |c| c.at);
        let mut m = old.cloned().unwrap_or_else(|| EntryMeta::learned(at, 0, None));
        m.first = Some(m.first.map_or(at, |f| f.min(at)));
        // Older evidence (a capture of last week) never moves `seen` back.
        if m.seen.is_none_or(|s| s <= at) {
            m.seen = Some(at);
            if let Some(c) = conf {
                m.ttl = Some(c.ttl);
                m.evidence = Some(c.evidence.clone());
            }
        }
        txt_swap(&mut changes, set, &p, &m);
    }
    OwnerEdit { prefix: p, prereqs: vec![Prereq::txt_is(set.txt(&p))], changes }
}

/// Deletes every TXT of ours at the owner (exactly those records: foreign
/// ones stay) and adds the new one.
fn txt_swap(changes: &mut Vec<Change>, set: &AllowSet, p: &Prefix, new: &EntryMeta) {
    for strings in set.our_txt(p) {
        changes.push(Change::DeleteTxt(strings));
    }
    if let Ok(strings) = new.encode_txt() {
        changes.push(Change::AddTxt(strings));
    }
}

/// The edit adding the classes `classes` of a learned entry lacks in
/// `set` (`None`: it lacks none, or a deny covers it).
fn add_edit(
    set: &AllowSet,
    p: Prefix,
    classes: Classes,
    conf: Option<&Confirmed>,
    now: u64,
) -> Option<OwnerEdit> {
    let missing = classes.without(set.get(&p));
    if missing.is_empty() || set.is_denied(p.addr()) || set.deny_covering(&p).is_some() {
        return None;
    }
    Some(new_entry_edit(set, p, missing, conf, now))
}

/// What to do with a confirmation of `ip`.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Write this edit (its `seen` is stale or unknown).
    Write(OwnerEdit),
    /// Nothing to write (fresh, manual, or denied): forget it.
    Done,
    /// The zone lacks the entry: it is a new one, pushed with its `A`.
    NotInZone,
}

/// Decides the refresh of an entry the answer `conf` confirmed at `conf.at`:
/// only a learned entry (or one of an older zone, without TXT) whose `seen`
/// is older than `conf.at` by `granularity` seconds or more is rewritten
/// (`seen` never moves back). Every TXT of ours goes and one comes, guarded
/// by the whole TXT RRset `set` holds (as a new entry's edit is).
pub fn refresh_edit(set: &AllowSet, ip: IpAddr, conf: &Confirmed, granularity: u64) -> Refresh {
    let p = Prefix::host(ip);
    if set.is_denied(ip) {
        return Refresh::Done;
    }
    if !set.get(&p).contains(conf.classes) {
        return Refresh::NotInZone;
    }
    let old = set.meta(&p);
    if old.is_some_and(|m| {
        m.source == Source::Manual || m.seen.is_some_and(|s| s >= conf.at || conf.at - s < granularity)
    }) {
        return Refresh::Done;
    }
    // An entry of an older zone: `first` stays unknown, `seen` starts now.
    let mut m = old.cloned().unwrap_or_default();
    m.seen = Some(conf.at);
    m.ttl = Some(conf.ttl);
    m.evidence = Some(conf.evidence.clone());
    let mut changes = Vec::new();
    txt_swap(&mut changes, set, &p, &m);
    Refresh::Write(OwnerEdit { prefix: p, prereqs: vec![Prereq::txt_is(set.txt(&p))], changes })
}

/// The refresh edit of `ip`, when one is due (see [`refresh_edit`]).
fn refresh_of(set: &AllowSet, ip: IpAddr, conf: &Confirmed, granularity: u64) -> Option<OwnerEdit> {
    match refresh_edit(set, ip, conf, granularity) {
        Refresh::Write(e) => Some(e),
        Refresh::Done | Refresh::NotInZone => None,
    }
}

/// Sends `edits` within `timeout` through [`apply_owners`] (owner by
/// owner, re-read and decided again by `rebuild`, when the zone changed
/// under a prerequisite); the error in words, with what was applied.
async fn send_edits<F>(
    (server, zone, key): &(SocketAddr, String, TsigKey),
    edits: Vec<OwnerEdit>,
    timeout: Duration,
    rebuild: F,
) -> Result<Applied, (String, Applied)>
where
    F: FnMut(&Prefix, &OwnerRecords) -> Option<OwnerEdit>,
{
    match tokio::time::timeout(timeout, apply_owners(*server, zone, key, edits, rebuild)).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err((e, a))) => Err((e.to_string(), a)),
        Err(_) => Err((format!("UPDATE to {server} timed out"), Applied::default())),
    }
}

/// `A` records and refreshed entries in `done` edits: `(added, refreshed)`.
fn count_done(done: &[OwnerEdit]) -> (usize, usize) {
    done.iter().fold((0, 0), |(a, r), e| {
        let added: usize = e
            .changes
            .iter()
            .map(|c| if let Change::AddClasses(c) = c { c.rpz_answers().len() } else { 0 })
            .sum();
        (a + added, r + usize::from(added == 0))
    })
}

/// What [`push_learned`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LearnedReport {
    /// Serial of the zone read before the push.
    pub serial_before: u32,
    /// Class records (`A`) added, each new entry with its lifetime TXT.
    pub added: usize,
    /// Learned class records the zone already held.
    pub existing: usize,
    /// Entries already in the zone whose `seen` (`ttl`, `ev`) newer
    /// evidence refreshed.
    pub refreshed: usize,
    /// Learned entries left out because a deny covers them.
    pub denied: usize,
    /// Hint servers left out: trusted by configuration, never learned (nor
    /// pushed), as in live learning.
    pub hints: usize,
    /// UPDATE messages sent (a batch whose prerequisite failed is sent
    /// again owner by owner).
    pub updates: usize,
    /// Owners left unchanged because another writer kept changing them
    /// (their prerequisite failed on every try).
    pub conflicts: usize,
}

/// A [`push_learned`] that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushLearnedError {
    /// The zone could not be read (nothing was sent).
    #[error("reading the zone first: {0}")]
    Read(#[from] crate::rpz::transfer::SyncError),
    /// An UPDATE failed; the ones before it stay applied (each is whole
    /// or nothing, RFC 2136 §3.7).
    #[error("{why} (before the failure: {} UPDATEs sent, {} records added, {} entries refreshed)", committed.updates, committed.added, committed.refreshed)]
    Update {
        /// What the server (or the connection) said.
        why: String,
        /// What was applied before.
        committed: LearnedReport,
    },
}

/// Puts learned entries into `zone` at `server` the way live learning
/// does (one code path: the same edits, [`new_entry_edit`] and
/// [`refresh_edit`]): the zone is read first (AXFR); an entry it lacks goes
/// in with its `A` records and its lifetime TXT; one it holds gets its
/// `seen` refreshed when `confirmed` has newer evidence for it; a denied
/// one is left out, and so are the servers of `hints` (the learner starts
/// from them as entries, but they are trusted by configuration, not learned:
/// the live learner never pushes them either). UPDATEs of at most
/// [`MAX_OWNERS_PER_UPDATE`] owners.
/// A deny added after the read still wins: BIND ignores an `A` or TXT added
/// beside a CNAME (RFC 2136 §3.4.2.2).
pub async fn push_learned(
    target: &(SocketAddr, String, TsigKey),
    learned: &AllowSet,
    hints: &Hints,
    confirmed: &std::collections::HashMap<IpAddr, Confirmed>,
    timeout: Duration,
) -> Result<LearnedReport, PushLearnedError> {
    let hints: std::collections::HashSet<IpAddr> = hints.addrs.iter().copied().collect();
    let (server, zone, key) = target;
    let snap = crate::rpz::transfer::axfr(*server, zone, Some(key)).await?;
    let set = &snap.set;
    let now = unix_now();
    let mut report = LearnedReport { serial_before: snap.serial, ..LearnedReport::default() };
    let records = |c: Classes| c.rpz_answers().len();
    // One decision for the zone as read and for an owner read again.
    let decide = |set: &AllowSet, p: Prefix, c: Classes| {
        let conf = confirmed.get(&p.addr()).filter(|_| p.is_host());
        // A capture run writes each entry once: any newer evidence counts.
        add_edit(set, p, c, conf, now).or_else(|| conf.and_then(|conf| refresh_of(set, p.addr(), conf, 1)))
    };
    let mut edits = Vec::new();
    for (p, c) in learned.iter() {
        if p.is_host() && hints.contains(&p.addr()) {
            report.hints += 1;
            continue;
        }
        if set.is_denied(p.addr()) || set.deny_covering(p).is_some() {
            report.denied += 1;
            continue;
        }
        report.existing += records(c.without(c.without(set.get(p))));
        edits.extend(decide(set, *p, *c));
    }
    let mut chunks: Vec<Vec<OwnerEdit>> = Vec::new();
    while !edits.is_empty() {
        let rest = edits.split_off(edits.len().min(MAX_OWNERS_PER_UPDATE));
        chunks.push(std::mem::replace(&mut edits, rest));
    }
    for chunk in chunks {
        let rebuild = |p: &Prefix, fresh: &OwnerRecords| decide(&fresh.view(*p), *p, learned.get(p));
        let (applied, failed) = match send_edits(target, chunk, timeout, rebuild).await {
            Ok(a) => (a, None),
            Err((why, a)) => (a, Some(why)),
        };
        let (added, refreshed) = count_done(&applied.done);
        report.updates += applied.updates;
        report.added += added;
        report.refreshed += refreshed;
        report.conflicts += applied.conflicts.len();
        if let Some(why) = failed {
            return Err(PushLearnedError::Update { why, committed: report });
        }
    }
    tracing::info!(%server, zone, added = report.added, refreshed = report.refreshed, denied = report.denied, hints = report.hints, updates = report.updates, "learned entries pushed");
    Ok(report)
}

/// Most back-off between failed pushes.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Reads a journal written by [`save_journal`]: `(address, classes)` per
/// line. A missing file is empty; bad lines are skipped and counted.
pub fn load_journal(path: &Path) -> std::io::Result<(Vec<(IpAddr, Classes)>, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut f = line.split_whitespace();
        let ip = f.next().and_then(|s| s.parse::<IpAddr>().ok());
        let bits = f.next().and_then(|s| s.parse::<u32>().ok()).map(Classes::from_bits);
        match (ip, bits) {
            (Some(ip), Some(c)) if !c.is_empty() && super::rules::is_learnable(ip) => out.push((ip, c)),
            _ => bad += 1,
        }
    }
    Ok((out, bad))
}

/// Writes `entries` to `path` (a temporary file renamed over it, so a
/// crash leaves the old or the new journal, never half of one).
pub fn save_journal(path: &Path, entries: &[(IpAddr, Classes)]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(f, "# rpz-guard live-learned entries not yet confirmed by the zone: address class-bits")?;
        for (ip, c) in entries {
            writeln!(f, "{ip} {}", c.bits())?;
        }
        f.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// Runs until `cancel`: pushes queued entries, drops those the zone (the
/// `zone` watch, fed by IXFR) confirms, keeps the journal current.
pub async fn push_loop(
    live: Arc<LiveAllow>,
    cfg: PushConfig,
    mut zone: watch::Receiver<Arc<AllowSet>>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    let mut retry_at = tokio::time::Instant::now();
    let mut pending: std::collections::HashMap<IpAddr, Confirmed> = std::collections::HashMap::new();
    let mut next_refresh = tokio::time::Instant::now();
    loop {
        let tick = tokio::time::sleep(cfg.interval);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tick => {}
            () = live.queue_signal.notified() => {
                // A batch fills up: go now; else wait for the tick.
                if live.stats().queued < cfg.batch {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(cfg.interval) => {}
                    }
                }
            }
            r = zone.changed() => if r.is_err() { break },
        }
        let set = zone.borrow_and_update().clone();
        live.prune_confirmed(|ip| set.lookup(ip));
        take_confirmed(&live, &mut pending);
        if let Some(target) = &cfg.target
            && tokio::time::Instant::now() >= retry_at
        {
            let now = unix_now();
            loop {
                let per_update = cfg.batch.min(MAX_OWNERS_PER_UPDATE);
                let batch: Vec<_> = live
                    .next_batch(per_update)
                    .into_iter()
                    .filter(|(p, c)| !set.get(p).contains(*c) && !set.is_denied(p.addr()))
                    .collect();
                if batch.is_empty() {
                    break;
                }
                // The learner records an answer before the entry it taught:
                // taken after the batch, every entry finds its evidence.
                take_confirmed(&live, &mut pending);
                let wanted: std::collections::HashMap<Prefix, Classes> = batch.iter().copied().collect();
                let edits: Vec<OwnerEdit> = batch
                    .iter()
                    .map(|(p, c)| new_entry_edit(&set, *p, *c, pending.get(&p.addr()), now))
                    .collect();
                let rebuild = |p: &Prefix, fresh: &OwnerRecords| {
                    let c = wanted.get(p).copied().unwrap_or_default();
                    add_edit(&fresh.view(*p), *p, c, pending.get(&p.addr()), now)
                };
                match send_edits(target, edits, cfg.timeout, rebuild).await {
                    Ok(applied) => {
                        // Done, or nothing left to do: the zone has it (or
                        // a deny). An owner that kept changing stays queued.
                        let settled: Vec<(Prefix, Classes)> =
                            batch.iter().filter(|(p, _)| !applied.conflicts.contains(p)).copied().collect();
                        live.mark_pushed(&settled, monotonic_ns());
                        backoff = Duration::from_millis(500);
                        if !applied.conflicts.is_empty() {
                            break;
                        }
                    }
                    Err((why, applied)) => {
                        let done: Vec<(Prefix, Classes)> = batch
                            .iter()
                            .filter(|(p, _)| applied.done.iter().any(|e| e.prefix == *p))
                            .copied()
                            .collect();
                        live.mark_pushed(&done, monotonic_ns());
                        fail(&live, &mut backoff, &mut retry_at, why);
                        break;
                    }
                }
                if batch.len() < per_update {
                    break;
                }
            }
            if let Some(granularity) = cfg.refresh_secs
                && !pending.is_empty()
                && tokio::time::Instant::now() >= next_refresh
                && tokio::time::Instant::now() >= retry_at
            {
                next_refresh = tokio::time::Instant::now() + REFRESH_EVERY;
                let mut edits = Vec::new();
                let mut taken = Vec::new();
                pending.retain(|ip, c| match refresh_edit(&set, *ip, c, granularity) {
                    Refresh::Write(e) if edits.len() < cfg.batch.min(MAX_OWNERS_PER_UPDATE) => {
                        edits.push(e);
                        taken.push((*ip, c.clone()));
                        false
                    }
                    Refresh::Write(_) => true,
                    Refresh::Done => false,
                    // Pushed as a new entry (with its TXT); kept a while for that.
                    Refresh::NotInZone => now.saturating_sub(c.at) < granularity.max(60),
                });
                if !edits.is_empty() {
                    let confs: std::collections::HashMap<IpAddr, Confirmed> = taken.iter().cloned().collect();
                    let rebuild = |p: &Prefix, fresh: &OwnerRecords| {
                        confs
                            .get(&p.addr())
                            .and_then(|c| refresh_of(&fresh.view(*p), p.addr(), c, granularity))
                    };
                    match send_edits(target, edits, cfg.timeout, rebuild).await {
                        Ok(applied) => live.refreshed(applied.done.len()),
                        Err((why, applied)) => {
                            live.refreshed(applied.done.len());
                            // Retried with the next confirmations or tick.
                            for (ip, c) in taken {
                                if !applied.done.iter().any(|e| e.prefix.addr() == ip) {
                                    pending.entry(ip).or_insert(c);
                                }
                            }
                            fail(&live, &mut backoff, &mut retry_at, why);
                        }
                    }
                }
            }
        }
        save_if_dirty(&live, cfg.journal.as_deref());
    }
    save_if_dirty(&live, cfg.journal.as_deref());
}

/// Moves the learner's new confirmations into `pending`, bounded like the
/// live set (a dropped one is confirmed again by the next answer).
fn take_confirmed(live: &LiveAllow, pending: &mut std::collections::HashMap<IpAddr, Confirmed>) {
    for (ip, c) in live.take_confirmed() {
        if pending.len() < live.limit() || pending.contains_key(&ip) {
            pending.insert(ip, c);
        }
    }
}

fn fail(live: &LiveAllow, backoff: &mut Duration, retry_at: &mut tokio::time::Instant, why: String) {
    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, queued = live.stats().queued, "pushing live-learned entries failed; they stay enforced and queued");
    live.push_failed(why);
    *retry_at = tokio::time::Instant::now() + *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

fn save_if_dirty(live: &LiveAllow, journal: Option<&Path>) {
    if let Some(path) = journal
        && live.take_dirty()
        && let Err(e) = save_journal(path, &live.entries())
    {
        tracing::warn!(path = %path.display(), error = %e, "writing the live-learning journal failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpz::meta::Evidence;

    fn conf(at: u64) -> Confirmed {
        let evidence = Evidence {
            server: "192.0.2.53".parse().expect("ip"),
            qname: "example.com.".into(),
            qtype: "MX".into(),
        };
        Confirmed { classes: Classes::SMTP, evidence, ttl: 300, at }
    }

    #[test]
    fn refresh_only_when_seen_is_stale() {
        let ip: IpAddr = "198.51.100.25".parse().expect("ip");
        let p = Prefix::host(ip);
        let mut set = AllowSet::new();
        assert_eq!(refresh_edit(&set, ip, &conf(1000), 100), Refresh::NotInZone);
        set.add(p, Classes::SMTP);
        // An entry of an older zone (no TXT): seen = the answer's time, first unknown.
        let Refresh::Write(e) = refresh_edit(&set, ip, &conf(1000), 100) else { panic!("stamp") };
        assert_eq!(e.changes.len(), 1);
        let Change::AddTxt(strings) = &e.changes[0] else { panic!("add") };
        let m = EntryMeta::decode(strings).expect("ours");
        assert_eq!((m.first, m.seen, m.ttl), (None, Some(1000), Some(300)));
        set.set_meta(p, EntryMeta::learned(900, 60, None));
        assert_eq!(refresh_edit(&set, ip, &conf(950), 100), Refresh::Done, "seen 50 s ago: no UPDATE");
        let Refresh::Write(e) = refresh_edit(&set, ip, &conf(1000), 100) else { panic!("refresh") };
        assert!(matches!(&e.changes[0], Change::DeleteTxt(_)), "the old TXT goes exactly");
        let Change::AddTxt(strings) = &e.changes[1] else { panic!("add") };
        let m = EntryMeta::decode(strings).expect("ours");
        assert_eq!((m.first, m.seen), (Some(900), Some(1000)), "first is kept");
        assert_eq!(m.evidence.expect("ev").qname, "example.com.");
        set.set_meta(p, EntryMeta::learned(900, 60, None));
        assert_eq!(
            refresh_edit(&set, ip, &conf(500), 0),
            Refresh::Done,
            "older evidence: seen never moves back"
        );
        set.set_meta(p, EntryMeta::manual(1, None, None));
        assert_eq!(refresh_edit(&set, ip, &conf(5000), 100), Refresh::Done, "manual entries are not touched");
        set.deny(p);
        assert_eq!(refresh_edit(&set, ip, &conf(5000), 100), Refresh::Done);
    }

    #[test]
    fn new_entries_carry_their_txt() {
        let p = Prefix::host("198.51.100.25".parse().expect("ip"));
        let e = new_entry_edit(&AllowSet::new(), p, Classes::SMTP, Some(&conf(77)), 80);
        assert_eq!(e.changes[0], Change::AddClasses(Classes::SMTP));
        let Change::AddTxt(strings) = &e.changes[1] else { panic!("txt") };
        let m = EntryMeta::decode(strings).expect("ours");
        assert_eq!((m.source, m.first, m.seen, m.ttl), (Source::Learned, Some(77), Some(77), Some(300)));
        let msg = crate::rpz::edit::batch_message("rpz.example.com", &[e.clone(), e]).expect("message");
        assert_eq!(msg.name_servers().len(), 4);
        // A class added by older evidence (a capture): seen and ev stay, first goes back.
        let mut set = AllowSet::new();
        set.add(p, Classes::DNS);
        let newer = EntryMeta::learned(1000, 60, None);
        set.set_meta(p, newer.clone());
        let e = new_entry_edit(&set, p, Classes::SMTP, Some(&conf(500)), 2000);
        let Change::AddTxt(strings) = &e.changes[2] else { panic!("txt: {:?}", e.changes) };
        let m = EntryMeta::decode(strings).expect("ours");
        assert_eq!((m.first, m.seen, m.ttl, m.evidence), (Some(500), Some(1000), Some(60), None));
    }

    /// Every writer's edit is guarded by the TXT RRset it read: no TXT
    /// (a bare "no TXT RRset"), or the whole RRset, foreign records too.
    #[test]
    fn writers_guard_the_txt_rrset_they_read() {
        let ip: IpAddr = "198.51.100.25".parse().expect("ip");
        let p = Prefix::host(ip);
        let e = new_entry_edit(&AllowSet::new(), p, Classes::SMTP, Some(&conf(77)), 80);
        assert_eq!(e.prereqs, vec![Prereq::NoRrset(hickory_proto::rr::RecordType::TXT)]);
        let mut set = AllowSet::new();
        set.add(p, Classes::SMTP);
        set.add_txt(p, vec!["v=spf1 -all".into()], None);
        let Refresh::Write(e) = refresh_edit(&set, ip, &conf(1000), 100) else { panic!("stamp") };
        assert_eq!(e.prereqs, vec![Prereq::TxtIs(vec![vec!["v=spf1 -all".into()]])]);
        assert_eq!(e.changes.len(), 1, "the foreign TXT is not deleted: {:?}", e.changes);
    }

    /// Two of our TXTs at one owner (two learners raced): the newest
    /// `seen` counts, and a refresh or a new class replaces both by one.
    #[test]
    fn two_of_our_txts_become_one() {
        let ip: IpAddr = "198.51.100.25".parse().expect("ip");
        let p = Prefix::host(ip);
        let a = EntryMeta::learned(400, 60, None);
        let b = EntryMeta::learned(900, 60, None);
        let (ta, tb) = (a.encode_txt().expect("a"), b.encode_txt().expect("b"));
        let mut set = AllowSet::new();
        set.add(p, Classes::SMTP);
        set.add_txt(p, tb.clone(), Some(b.clone()));
        set.add_txt(p, ta.clone(), Some(a));
        set.add_txt(p, vec!["foreign".into()], None);
        assert_eq!(set.meta(&p), Some(&b), "the newest seen wins, whatever the order");
        let Refresh::Write(e) = refresh_edit(&set, ip, &conf(1000), 100) else { panic!("refresh") };
        assert_eq!(e.prereqs, vec![Prereq::TxtIs(vec![tb.clone(), ta.clone(), vec!["foreign".into()]])]);
        assert_eq!(&e.changes[..2], [Change::DeleteTxt(tb.clone()), Change::DeleteTxt(ta.clone())]);
        let Change::AddTxt(strings) = &e.changes[2] else { panic!("add: {:?}", e.changes) };
        let m = EntryMeta::decode(strings).expect("ours");
        assert_eq!((m.first, m.seen), (Some(900), Some(1000)), "first of the record that counts");
        assert_eq!(e.changes.len(), 3);
        let e = new_entry_edit(&set, p, Classes::DNS, Some(&conf(1000)), 1000);
        let deleted = e.changes.iter().filter(|c| matches!(c, Change::DeleteTxt(_))).count();
        let added = e.changes.iter().filter(|c| matches!(c, Change::AddTxt(_))).count();
        assert_eq!((deleted, added), (2, 1), "{:?}", e.changes);
    }

    /// A writer that lost a race decides again on the owner as read anew.
    #[test]
    fn rebuild_from_a_fresh_read() {
        let ip: IpAddr = "198.51.100.25".parse().expect("ip");
        let p = Prefix::host(ip);
        let theirs = EntryMeta::learned(950, 60, None);
        let fresh = crate::rpz::edit::OwnerRecords {
            classes: Classes::SMTP,
            txt: vec![theirs.encode_txt().expect("txt")],
            ..Default::default()
        };
        // The other learner added the entry: nothing to add any more.
        assert_eq!(add_edit(&fresh.view(p), p, Classes::SMTP, Some(&conf(1000)), 1000), None);
        // It wrote a fresh seen: no refresh either; an older one is replaced.
        assert_eq!(refresh_of(&fresh.view(p), ip, &conf(1000), 100), None);
        let e = refresh_of(&fresh.view(p), ip, &conf(1100), 100).expect("refresh");
        assert_eq!(e.prereqs, vec![Prereq::TxtIs(fresh.txt.clone())]);
        assert_eq!(e.changes[0], Change::DeleteTxt(fresh.txt[0].clone()));
    }

    #[test]
    fn journal_round_trip_and_bad_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("live.journal");
        assert_eq!(load_journal(&path).expect("missing is empty").0, vec![]);
        let entries: Vec<(IpAddr, Classes)> = vec![
            ("192.0.2.1".parse().expect("ip"), Classes::DNS),
            ("2001:db8::25".parse().expect("ip"), Classes::SMTP.union(Classes::DNS)),
        ];
        save_journal(&path, &entries).expect("save");
        assert_eq!(load_journal(&path).expect("load"), (entries, 0));
        std::fs::write(&path, "192.0.2.1 1\nnot-an-ip 1\n192.0.2.2 0\n127.0.0.1 2\n192.0.2.3\n")
            .expect("write");
        let (got, bad) = load_journal(&path).expect("load");
        assert_eq!(got.len(), 1);
        assert_eq!(bad, 4);
    }
}
