//! Ageing (issue 11): the daemon that learns removes learned entries that
//! DNS has not confirmed within `lifetime.max_age_*_secs` and that allowed
//! traffic has not used within `lifetime.idle_secs`.
//!
//! Each pass (every `interval_secs`) reads the zone as mirrored by IXFR,
//! with each entry's lifetime state (`rpz::meta`), and the last-hit times
//! of the enforcement point (XDP: the hit times in the host allow map values). Due entries are
//! removed by TSIG UPDATE in batches of `batch` owners, at most `rate`
//! entries per second. Each removal carries a prerequisite: the owner's
//! whole TXT RRset (ours and foreign) is still the one this pass read, so an
//! entry another learner just confirmed is never removed (BIND answers
//! `NXRRSET`; [`apply_owners`] then retries owner by owner, reading each
//! failed owner again: one still due is removed on what it holds now, one
//! confirmed meanwhile is kept and counted as a conflict). A removal deletes
//! the `A` RRset and every TXT of ours (two, when two learners raced);
//! foreign TXT records stay.
//!
//! Nothing is removed locally: the maps change when the zone, read back by
//! IXFR, no longer holds the entry. A rejected UPDATE removes nothing and
//! shows in status and metrics. `dry_run` only lists what would expire.
//! After a start, removals wait `idle_secs`, so that traffic using an entry
//! has been seen; entries of an older zone without a TXT get `seen` = now
//! (stamped in batches) and age from then on.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_proto::rr::RecordType;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::{
    config::Lifetime,
    events::now_ms,
    policy::{AllowSet, Prefix},
    rpz::{
        edit::{Applied, Change, OwnerEdit, OwnerRecords, Prereq, apply_owners},
        meta::{EntryMeta, Source, unix_now},
        tsig::TsigKey,
    },
};

/// How many would-expire entries status lists.
const LISTED: usize = 50;

/// Ageing counters and the last pass, for `rpz-guard status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgeingStats {
    /// True when this daemon ages entries.
    pub enabled: bool,
    /// True in dry-run mode (nothing is removed).
    pub dry_run: bool,
    /// Passes run.
    pub passes: u64,
    /// When the last pass ended (ms since the epoch).
    pub last_pass_ms: Option<u64>,
    /// Last pass: learned entries past their max age.
    pub due: usize,
    /// Last pass: due entries kept because traffic used them within `idle`.
    pub kept_used: usize,
    /// Last pass: due entries kept because the daemon started less than
    /// `idle` ago (last-hit times not known yet).
    pub kept_starting: usize,
    /// Entries removed from the zone (UPDATEs BIND accepted).
    pub removed: u64,
    /// Entries of an older zone given `seen` = now.
    pub stamped: u64,
    /// Removals refused because the entry changed meanwhile (confirmed again).
    pub conflicts: u64,
    /// UPDATEs sent.
    pub updates: u64,
    /// UPDATEs that failed (rejected, unreachable): nothing was removed.
    pub update_errors: u64,
    /// The last failure, while the last UPDATE failed.
    pub last_error: Option<String>,
    /// Dry run: the entries that would expire now (the first few).
    pub would_expire: Vec<String>,
}

/// Shared handle on [`AgeingStats`].
pub type SharedAgeing = Arc<Mutex<AgeingStats>>;

/// Last-hit times: `(destination, seconds since allowed traffic went to
/// it)`; `None` when the enforcement point keeps none.
pub type LastHits = Box<dyn Fn() -> Option<Vec<(IpAddr, u64)>> + Send + Sync>;

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Entries to remove, with the TXT they hold now (the prerequisite).
    pub expire: Vec<(Prefix, EntryMeta)>,
    /// Entries without lifetime state: `seen` is written now.
    pub stamp: Vec<Prefix>,
    /// Due entries kept because they were used within `idle`.
    pub kept_used: usize,
    /// Due entries kept while the daemon is younger than `idle`.
    pub kept_starting: usize,
    /// Entries past their max age (kept or not).
    pub due: usize,
}

/// Decides one pass over `set` at `now` (Unix seconds), `uptime` seconds
/// after the start, with last-hit times `hits`.
pub fn plan(cfg: &Lifetime, set: &AllowSet, now: u64, uptime: u64, hits: Option<&[(IpAddr, u64)]>) -> Plan {
    let mut p = Plan::default();
    let used_hosts: HashMap<IpAddr, u64> = hits.unwrap_or_default().iter().copied().collect();
    let used = |prefix: &Prefix| -> bool {
        if prefix.is_host() {
            return used_hosts.get(&prefix.addr()).is_some_and(|ago| *ago <= cfg.idle_secs);
        }
        used_hosts.iter().any(|(ip, ago)| *ago <= cfg.idle_secs && prefix.contains(*ip))
    };
    for (prefix, classes) in set.iter() {
        if set.deny_covering(prefix).is_some() {
            continue;
        }
        let Some(m) = set.meta(prefix) else {
            p.stamp.push(*prefix);
            continue;
        };
        if m.source == Source::Learned && m.seen.is_none() {
            p.stamp.push(*prefix);
            continue;
        }
        let Some(deadline) = m.ages_out_at(cfg.max_age(*classes)) else { continue };
        if now < deadline {
            continue;
        }
        p.due += 1;
        if used(prefix) {
            p.kept_used += 1;
        } else if uptime < cfg.idle_secs {
            p.kept_starting += 1;
        } else {
            p.expire.push((*prefix, m.clone()));
        }
    }
    p
}

/// The UPDATE edit removing an expired entry as `set` holds it: its `A`
/// RRset and every TXT of ours, only while the owner's whole TXT RRset is
/// still the one read. Foreign TXT records stay (and do not block it).
fn removal(set: &AllowSet, prefix: Prefix) -> Option<OwnerEdit> {
    let ours = set.our_txt(&prefix);
    if ours.is_empty() {
        return None;
    }
    let mut changes = vec![Change::DeleteRrset(RecordType::A)];
    changes.extend(ours.into_iter().map(Change::DeleteTxt));
    Some(OwnerEdit { prefix, prereqs: vec![Prereq::txt_is(set.txt(&prefix))], changes })
}

/// True when the entry at `prefix` in `set` has aged out at `now` (the
/// decision of [`plan`] without the traffic test, for an owner read again).
fn still_due(cfg: &Lifetime, set: &AllowSet, prefix: Prefix, now: u64) -> bool {
    let classes = set.get(&prefix);
    !classes.is_empty()
        && !set.is_denied(prefix.addr())
        && set
            .meta(&prefix)
            .and_then(|m| m.ages_out_at(cfg.max_age(classes)))
            .is_some_and(|deadline| now >= deadline)
}

/// The UPDATE edit giving an entry without lifetime state `seen` = `now`,
/// guarded by the TXT RRset read (foreign records only, or none).
fn stamp(set: &AllowSet, prefix: Prefix, now: u64) -> Option<OwnerEdit> {
    let m = EntryMeta { source: Source::Learned, seen: Some(now), ..EntryMeta::default() };
    Some(OwnerEdit {
        prefix,
        prereqs: vec![Prereq::txt_is(set.txt(&prefix))],
        changes: vec![Change::AddTxt(m.encode_txt().ok()?)],
    })
}

/// Where the UPDATEs go.
pub struct Target {
    /// The primary.
    pub server: SocketAddr,
    /// The zone.
    pub zone: String,
    /// The TSIG key.
    pub key: TsigKey,
}

/// Runs ageing passes until `cancel`.
pub async fn run(
    cfg: Lifetime,
    target: Target,
    zone: watch::Receiver<Arc<AllowSet>>,
    hits: LastHits,
    stats: SharedAgeing,
    cancel: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    {
        let mut st = lock(&stats);
        st.enabled = true;
        st.dry_run = cfg.dry_run;
    }
    tracing::info!(
        max_age_dns_secs = cfg.max_age_dns_secs,
        max_age_smtp_secs = cfg.max_age_smtp_secs,
        idle_secs = cfg.idle_secs,
        refresh_secs = cfg.refresh(),
        interval_secs = cfg.interval_secs,
        dry_run = cfg.dry_run,
        "ageing learned entries"
    );
    let hits = Arc::new(hits);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(cfg.interval_secs)) => {}
        }
        let set = zone.borrow().clone();
        let h = hits.clone();
        let last_hits = tokio::task::spawn_blocking(move || h()).await.ok().flatten();
        let uptime = started.elapsed().as_secs();
        let plan = plan(&cfg, &set, unix_now(), uptime, last_hits.as_deref());
        tokio::select! {
            () = cancel.cancelled() => return,
            () = pass(&cfg, &target, &set, plan, &stats) => {}
        }
    }
}

async fn pass(cfg: &Lifetime, target: &Target, set: &AllowSet, plan: Plan, stats: &SharedAgeing) {
    {
        let mut st = lock(stats);
        st.passes += 1;
        st.due = plan.due;
        st.kept_used = plan.kept_used;
        st.kept_starting = plan.kept_starting;
        st.last_pass_ms = Some(now_ms());
        if cfg.dry_run {
            st.would_expire = plan
                .expire
                .iter()
                .take(LISTED)
                .map(|(p, m)| {
                    format!(
                        "{p} (seen {}, first {})",
                        m.seen.unwrap_or(0),
                        m.first.map_or("-".into(), |f| f.to_string())
                    )
                })
                .collect();
        }
    }
    if cfg.dry_run {
        for (p, m) in &plan.expire {
            tracing::info!(entry = %p, seen = m.seen, ttl = m.ttl, "dry run: would expire");
        }
        return;
    }
    let now = unix_now();
    // Stamps first (one batch a pass: an older zone is stamped gradually).
    let stamps: Vec<OwnerEdit> =
        plan.stamp.iter().take(cfg.batch).filter_map(|p| stamp(set, *p, now)).collect();
    if !stamps.is_empty() {
        let rebuild = |p: &Prefix, fresh: &OwnerRecords| {
            let view = fresh.view(*p);
            let bare = view.meta(p).is_none() && !view.get(p).is_empty() && !view.is_denied(p.addr());
            if bare { stamp(&view, *p, now) } else { None }
        };
        let (a, _) = send(target, stamps, rebuild, stats).await;
        lock(stats).stamped += a.done.len() as u64;
    }
    let edits: Vec<OwnerEdit> = plan.expire.iter().filter_map(|(p, _)| removal(set, *p)).collect();
    let mut edits = edits.into_iter().peekable();
    while edits.peek().is_some() {
        let chunk: Vec<OwnerEdit> = edits.by_ref().take(cfg.batch).collect();
        let owners = chunk.len();
        // Read again, an owner is removed only while still due.
        let rebuild = |p: &Prefix, fresh: &OwnerRecords| {
            let view = fresh.view(*p);
            if still_due(cfg, &view, *p, now) { removal(&view, *p) } else { None }
        };
        let (a, ok) = send(target, chunk, rebuild, stats).await;
        {
            let mut st = lock(stats);
            st.removed += a.done.len() as u64;
            st.conflicts += (a.dropped.len() + a.conflicts.len()) as u64;
        }
        for e in &a.done {
            tracing::info!(entry = %e.prefix, "expired: not confirmed by DNS within max age, not used within idle; removed from the RPZ");
        }
        for p in a.dropped.iter().chain(&a.conflicts) {
            tracing::debug!(entry = %p, "entry changed since it was read (confirmed again?): kept");
        }
        if !ok {
            return;
        }
        // Rate limit: `rate` entries per second.
        let pause = Duration::from_secs_f64(owners as f64 / f64::from(cfg.rate));
        tokio::time::sleep(pause).await;
    }
}

/// Sends `edits` through [`apply_owners`] (owner by owner, each failed
/// owner read again and decided anew by `rebuild`, when a prerequisite
/// fails): what was applied, and false when an UPDATE failed otherwise
/// (nothing more is sent this pass; the failure shows in status).
async fn send<F>(target: &Target, edits: Vec<OwnerEdit>, rebuild: F, stats: &SharedAgeing) -> (Applied, bool)
where
    F: FnMut(&Prefix, &OwnerRecords) -> Option<OwnerEdit>,
{
    let owners = edits.len();
    let res = apply_owners(target.server, &target.zone, &target.key, edits, rebuild).await;
    let mut st = lock(stats);
    match res {
        Ok(a) => {
            st.updates += a.updates as u64;
            st.last_error = None;
            (a, true)
        }
        Err((e, a)) => {
            tracing::warn!(error = %e, owners, "ageing UPDATE failed; nothing removed by it");
            st.updates += a.updates as u64;
            st.update_errors += 1;
            st.last_error = Some(e.to_string());
            (a, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Classes;

    fn p(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    fn cfg() -> Lifetime {
        Lifetime { max_age_dns_secs: 100, max_age_smtp_secs: 200, idle_secs: 10, ..Lifetime::default() }
    }

    #[test]
    fn plan_ages_learned_keeps_used_manual_and_fresh() {
        let mut set = AllowSet::new();
        let learned = |seen| EntryMeta { seen: Some(seen), ttl: Some(60), ..EntryMeta::learned(1, 60, None) };
        for (s, c, m) in [
            ("192.0.2.1", Classes::DNS, Some(learned(1000))), // due at 1100
            ("192.0.2.2", Classes::SMTP, Some(learned(1000))), // due at 1200
            ("192.0.2.3", Classes::DNS, Some(learned(1000))), // due, but used
            ("192.0.2.4", Classes::DNS, Some(EntryMeta::manual(1, None, None))), // never
            ("192.0.2.5", Classes::DNS, Some(EntryMeta::manual(1, Some(1050), None))), // expired
            ("192.0.2.6", Classes::DNS, None),                // older zone: stamped
            ("192.0.2.7", Classes::DNS, Some(learned(1000))), // denied: left alone
        ] {
            set.add(p(s), c);
            if let Some(m) = m {
                set.set_meta(p(s), m);
            }
        }
        let mut ttl = learned(1000);
        ttl.ttl = Some(5000);
        set.add(p("192.0.2.8"), Classes::DNS);
        set.set_meta(p("192.0.2.8"), ttl); // never before seen + ttl
        set.deny(p("192.0.2.7"));
        let hits = [("192.0.2.3".parse().expect("ip"), 3u64), ("192.0.2.1".parse().expect("ip"), 50)];
        let plan = plan(&cfg(), &set, 1150, 1000, Some(&hits));
        let expired: Vec<Prefix> = plan.expire.iter().map(|(p, _)| *p).collect();
        assert_eq!(expired, vec![p("192.0.2.1"), p("192.0.2.5")]);
        assert_eq!(plan.stamp, vec![p("192.0.2.6")]);
        assert_eq!((plan.due, plan.kept_used, plan.kept_starting), (3, 1, 0));
        // Just started: nothing removed before `idle` has passed.
        let young = super::plan(&cfg(), &set, 1150, 5, Some(&hits));
        assert!(young.expire.is_empty());
        assert_eq!(young.kept_starting, 2);
    }

    #[test]
    fn removal_guards_the_txt_it_read() {
        let m = EntryMeta::learned(10, 60, None);
        let mut set = AllowSet::new();
        set.add(p("198.51.100.25"), Classes::SMTP);
        set.set_meta(p("198.51.100.25"), m.clone());
        let e = removal(&set, p("198.51.100.25")).expect("edit");
        assert_eq!(e.prereqs, vec![Prereq::TxtIs(vec![m.encode_txt().expect("txt")])]);
        let msg = e.message("rpz.example.com").expect("message");
        assert_eq!(msg.answers().len(), 1, "the prerequisite");
        assert_eq!(msg.name_servers().len(), 2, "the A RRset and our TXT deleted");
    }

    /// Two of our TXTs (two learners raced) and a foreign one at an owner:
    /// the newest `seen` decides, the prerequisite names all three records,
    /// and the removal deletes both of ours and leaves the foreign one.
    #[test]
    fn two_of_ours_and_a_foreign_txt_still_age() {
        let q = p("198.51.100.26");
        let old = EntryMeta::learned(10, 60, None);
        let newer = EntryMeta::learned(500, 60, None);
        let foreign = vec![b"v=spf1 -all".to_vec()];
        let mut set = AllowSet::new();
        set.add(q, Classes::DNS);
        set.add_txt(q, old.encode_txt().expect("txt"), Some(old.clone()));
        set.add_txt(q, foreign.clone(), None);
        set.add_txt(q, newer.encode_txt().expect("txt"), Some(newer.clone()));
        assert_eq!(set.meta(&q), Some(&newer), "the newest seen wins");
        // Due at 600 (seen 500 + max age 100), not at 110.
        assert!(plan(&cfg(), &set, 550, 1000, None).expire.is_empty());
        let due = plan(&cfg(), &set, 600, 1000, None);
        assert_eq!(due.expire, vec![(q, newer.clone())]);
        let e = removal(&set, q).expect("edit");
        assert_eq!(
            e.prereqs,
            vec![Prereq::TxtIs(vec![
                old.encode_txt().expect("txt"),
                foreign.clone(),
                newer.encode_txt().expect("txt")
            ])]
        );
        assert_eq!(
            e.changes,
            vec![
                Change::DeleteRrset(RecordType::A),
                Change::DeleteTxt(old.encode_txt().expect("txt")),
                Change::DeleteTxt(newer.encode_txt().expect("txt")),
            ],
            "the foreign TXT stays"
        );
        assert!(still_due(&cfg(), &set, q, 600) && !still_due(&cfg(), &set, q, 599));
    }

    /// A stamp beside a foreign TXT names it (a bare "no TXT" prerequisite
    /// would fail for ever), and an owner read again is stamped only while
    /// it still lacks our TXT.
    #[test]
    fn stamps_beside_a_foreign_txt() {
        let q = p("198.51.100.27");
        let mut set = AllowSet::new();
        set.add(q, Classes::DNS);
        assert_eq!(stamp(&set, q, 5).expect("edit").prereqs, vec![Prereq::NoRrset(RecordType::TXT)]);
        set.add_txt(q, vec!["hello".into()], None);
        assert_eq!(plan(&cfg(), &set, 5, 1000, None).stamp, vec![q]);
        assert_eq!(stamp(&set, q, 5).expect("edit").prereqs, vec![Prereq::TxtIs(vec![vec!["hello".into()]])]);
    }
}
