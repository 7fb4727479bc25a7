//! Ageing (issue 11): the daemon that learns removes learned entries that
//! DNS has not confirmed within `lifetime.max_age_*_secs` and that allowed
//! traffic has not used within `lifetime.idle_secs`.
//!
//! Each pass (every `interval_secs`) reads the zone as mirrored by IXFR,
//! with each entry's lifetime state (`rpz::meta`), and the last-hit times
//! of the enforcement point (XDP: the hit times in the host allow map values). Due entries are
//! removed by TSIG UPDATE in batches of `batch` owners, at most `rate`
//! entries per second. Each removal carries a prerequisite: the entry's TXT
//! is still the one this pass read, so an entry another learner just
//! confirmed is never removed (BIND answers `NXRRSET`; the batch is then
//! retried owner by owner and the stale ones counted as conflicts).
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

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::{
    config::Lifetime,
    events::now_ms,
    policy::{AllowSet, Prefix},
    rpz::{
        edit::{Change, OwnerEdit, Prereq, apply_batch},
        meta::{EntryMeta, Source, unix_now},
        transfer::SyncError,
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

/// The UPDATE edit removing an expired entry: its `A` and TXT RRsets,
/// only while its TXT is still the one read.
fn removal(prefix: Prefix, m: &EntryMeta) -> Option<OwnerEdit> {
    let txt = m.encode().ok()?;
    Some(OwnerEdit {
        prefix,
        prereqs: vec![Prereq::TxtIs(vec![txt])],
        changes: vec![
            Change::DeleteRrset(hickory_proto::rr::RecordType::A),
            Change::DeleteRrset(hickory_proto::rr::RecordType::TXT),
        ],
    })
}

/// The UPDATE edit giving an entry without lifetime state `seen` = `now`.
fn stamp(prefix: Prefix, now: u64) -> Option<OwnerEdit> {
    let m = EntryMeta { source: Source::Learned, seen: Some(now), ..EntryMeta::default() };
    Some(OwnerEdit {
        prefix,
        prereqs: vec![Prereq::NoRrset(hickory_proto::rr::RecordType::TXT)],
        changes: vec![Change::AddTxt(m.encode().ok()?)],
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

/// True when BIND refused the message because a prerequisite failed.
fn prerequisite_failed(e: &SyncError) -> bool {
    matches!(e, SyncError::Rejected { answer, .. }
        if answer.starts_with("NXRRSET") || answer.starts_with("YXRRSET") || answer.starts_with("NXDOMAIN"))
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
            () = pass(&cfg, &target, plan, &stats) => {}
        }
    }
}

async fn pass(cfg: &Lifetime, target: &Target, plan: Plan, stats: &SharedAgeing) {
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
    let stamps: Vec<OwnerEdit> = plan.stamp.iter().take(cfg.batch).filter_map(|p| stamp(*p, now)).collect();
    if !stamps.is_empty() {
        let n = send(target, &stamps, stats).await;
        lock(stats).stamped += n as u64;
    }
    let edits: Vec<OwnerEdit> = plan.expire.iter().filter_map(|(p, m)| removal(*p, m)).collect();
    for chunk in edits.chunks(cfg.batch) {
        let n = send(target, chunk, stats).await;
        if n > 0 {
            lock(stats).removed += n as u64;
            for e in chunk {
                tracing::info!(entry = %e.prefix, "expired: not confirmed by DNS within max age, not used within idle; removed from the RPZ");
            }
        }
        if lock(stats).last_error.is_some() {
            return;
        }
        // Rate limit: `rate` entries per second.
        let pause = Duration::from_secs_f64(chunk.len() as f64 / f64::from(cfg.rate));
        tokio::time::sleep(pause).await;
    }
}

/// Sends `edits` as one UPDATE; when a prerequisite fails, owner by owner.
/// Returns how many owners BIND changed.
async fn send(target: &Target, edits: &[OwnerEdit], stats: &SharedAgeing) -> usize {
    let res = apply_batch(target.server, &target.zone, &target.key, edits).await;
    lock(stats).updates += 1;
    match res {
        Ok(()) => {
            lock(stats).last_error = None;
            edits.len()
        }
        Err(e) if prerequisite_failed(&e) && edits.len() > 1 => {
            let mut done = 0;
            for one in edits {
                done += send_one(target, one, stats).await;
            }
            done
        }
        Err(e) if prerequisite_failed(&e) => {
            lock(stats).conflicts += 1;
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, owners = edits.len(), "ageing UPDATE failed; nothing removed");
            let mut st = lock(stats);
            st.update_errors += 1;
            st.last_error = Some(e.to_string());
            0
        }
    }
}

async fn send_one(target: &Target, edit: &OwnerEdit, stats: &SharedAgeing) -> usize {
    let res = apply_batch(target.server, &target.zone, &target.key, std::slice::from_ref(edit)).await;
    lock(stats).updates += 1;
    match res {
        Ok(()) => 1,
        Err(e) if prerequisite_failed(&e) => {
            tracing::debug!(entry = %edit.prefix, "entry changed since it was read (confirmed again?): kept");
            lock(stats).conflicts += 1;
            0
        }
        Err(e) => {
            let mut st = lock(stats);
            st.update_errors += 1;
            st.last_error = Some(e.to_string());
            0
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
        let e = removal(p("198.51.100.25"), &m).expect("edit");
        assert_eq!(e.prereqs, vec![Prereq::TxtIs(vec![m.encode().expect("txt")])]);
        let msg = e.message("rpz.example.com").expect("message");
        assert_eq!(msg.answers().len(), 1, "the prerequisite");
        assert_eq!(msg.name_servers().len(), 2, "A and TXT RRsets deleted");
    }
}
