//! `allow`, `revoke`, `deny`: read what the owner holds, decide, send ONE
//! UPDATE whose prerequisites pin what was read, check the answer.
//!
//! | command | prerequisites | changes |
//! |---|---|---|
//! | `allow` | no `CNAME` (not denied); the TXT RRset is what was read | delete our TXT, add `A` per class, add the manual TXT |
//! | `revoke` | the owner holds something | delete the `A`, `TXT` and `CNAME` RRsets |
//! | `deny` | none (a deny is absolute) | delete the `A` and `TXT` RRsets, add `CNAME .` |
//!
//! A prerequisite that fails because the zone changed between the read and
//! the UPDATE (a learner refreshed the entry) makes the command read again
//! and retry, at most [`RETRIES`] times; nothing is ever half-applied.

use std::{fmt, net::SocketAddr};

use hickory_proto::rr::RecordType;
use serde::Serialize;

use super::{OpsError, Target, list::EntryView, when};
use crate::{
    policy::{Classes, Prefix},
    rpz::{
        edit::{self, Change, OwnerEdit, OwnerRecords, Prereq},
        encode_owner,
        meta::{EntryMeta, MetaError, Source, TxtData},
        transfer::{self, SyncError},
    },
};

/// Reads and UPDATEs tried before giving up on a zone that keeps changing.
pub const RETRIES: usize = 3;

/// Longest `--comment`, in bytes (the TXT `note=` field).
pub const MAX_NOTE: usize = crate::rpz::meta::MAX_NOTE;

/// What an operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A manual entry.
    Allow {
        /// The address or prefix.
        prefix: Prefix,
        /// Classes to allow (added to those the entry has).
        classes: Classes,
        /// Unix seconds after which ageing removes it (`None`: never).
        expires: Option<u64>,
        /// Operator comment.
        note: Option<String>,
    },
    /// Remove the entry (learned, manual or deny).
    Revoke {
        /// The address or prefix.
        prefix: Prefix,
    },
    /// A deny (`CNAME .`).
    Deny {
        /// The address or prefix.
        prefix: Prefix,
    },
}

impl Request {
    /// The address or prefix changed.
    pub fn prefix(&self) -> Prefix {
        match self {
            Request::Allow { prefix, .. } | Request::Revoke { prefix } | Request::Deny { prefix } => *prefix,
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            Request::Allow { .. } => "allowed",
            Request::Revoke { .. } => "revoked",
            Request::Deny { .. } => "denied",
        }
    }
}

/// What a change did, for the operator (text) and scripts (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `allowed`, `revoked` or `denied`.
    pub action: &'static str,
    /// The address or prefix.
    pub prefix: Prefix,
    /// Its owner name in the zone.
    pub owner: String,
    /// The zone.
    pub zone: String,
    /// The primary.
    pub server: SocketAddr,
    /// The entry before the change (`None`: the owner held nothing).
    pub before: Option<EntryView>,
    /// The entry after the change (`None`: removed).
    pub after: Option<EntryView>,
    /// The zone's serial after the change (`None` if the SOA query failed).
    pub serial: Option<u32>,
    /// When (Unix seconds) and by whom.
    pub at: u64,
    /// The operator (`SUDO_USER`, `USER` or the uid).
    pub by: String,
    /// UPDATE messages sent (more than one only after a race; each was
    /// refused whole before the next).
    pub attempts: usize,
    /// What the operator should know: e.g. an allow that a wider deny
    /// still overrides.
    pub warnings: Vec<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = self.at;
        let state =
            |e: &Option<EntryView>| e.as_ref().map_or_else(|| "nothing".to_owned(), |e| e.summary(now));
        writeln!(f, "{} {} in zone {} at {}", self.action, self.prefix, self.zone, self.server)?;
        writeln!(f, "  now     {}", state(&self.after))?;
        writeln!(f, "  before  {}", state(&self.before))?;
        writeln!(
            f,
            "  serial  {}   (routers follow by NOTIFY and IXFR; `rpz-guard explain {}` shows one)",
            self.serial.map_or("unknown (SOA query failed)".to_owned(), |s| s.to_string()),
            self.prefix.addr()
        )?;
        write!(f, "  by      {} at {}", self.by, when::utc(self.at))?;
        for w in &self.warnings {
            write!(f, "\n  WARNING {w}")?;
        }
        Ok(())
    }
}

/// Runs `req` against the target's primary: one checked UPDATE (retried
/// whole, after a fresh read, if the zone changed under it).
pub async fn apply(target: &Target, req: &Request, now: u64) -> Result<Outcome, OpsError> {
    let key = target.key()?;
    let prefix = req.prefix();
    if let Request::Allow { note: Some(n), .. } = req
        && n.len() > MAX_NOTE
    {
        return Err(OpsError::Usage(format!("--comment is {} bytes; at most {MAX_NOTE}", n.len())));
    }
    let (server, zone) = (target.server()?, target.zone.as_str());
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = edit::read_owner(server, zone, Some(key), &prefix).await?;
        let edit = plan(req, &before, target, now).await?;
        match edit::apply(server, zone, key, &edit).await {
            Ok(()) => {
                let after = edit::read_owner(server, zone, Some(key), &prefix).await.ok();
                let serial = transfer::soa_serial(server, zone, Some(key)).await.ok();
                let mut warnings = Vec::new();
                if let Request::Allow { .. } = req {
                    // A wider deny still wins over this allow.
                    let covering =
                        edit::read_covering(server, zone, Some(key), prefix.addr()).await.unwrap_or_default();
                    for (p, _) in covering.iter().filter(|(p, r)| r.is_deny() && p.len() < prefix.len()) {
                        warnings.push(format!(
                            "{p} is denied (CNAME . at {}): the deny still blocks {prefix}; `rpz-guard revoke {p}` lifts it",
                            encode_owner(p, zone)
                        ));
                    }
                }
                let outcome = Outcome {
                    action: req.verb(),
                    prefix,
                    owner: encode_owner(&prefix, zone),
                    zone: zone.to_owned(),
                    server,
                    before: (!before.is_empty()).then(|| EntryView::from_records(prefix, zone, &before)),
                    after: after.filter(|a| !a.is_empty()).map(|a| EntryView::from_records(prefix, zone, &a)),
                    serial,
                    at: now,
                    by: super::operator(),
                    attempts,
                    warnings,
                };
                tracing::info!(
                    action = outcome.action, %prefix, zone, %server, by = %outcome.by,
                    serial = ?outcome.serial, "RPZ changed by operator"
                );
                return Ok(outcome);
            }
            Err(e) if edit::prerequisite_failed(&e) => {
                let answer = match e {
                    SyncError::Rejected { answer, .. } => answer,
                    other => other.to_string(),
                };
                if let Request::Revoke { .. } = req
                    && answer == "NXDOMAIN"
                {
                    return Err(OpsError::Conflict(format!(
                        "{prefix} was removed by someone else meanwhile"
                    )));
                }
                if attempts >= RETRIES {
                    return Err(OpsError::Conflict(format!(
                        "the entry for {prefix} kept changing while being {} ({attempts} tries, last answer {answer}); nothing was changed",
                        req.verb()
                    )));
                }
                tracing::info!(%prefix, answer, "the entry changed since it was read; reading again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The UPDATE for `req`, given what the owner holds now.
async fn plan(req: &Request, have: &OwnerRecords, target: &Target, now: u64) -> Result<OwnerEdit, OpsError> {
    let prefix = req.prefix();
    let owner = encode_owner(&prefix, &target.zone);
    match req {
        Request::Allow { classes, expires, note, .. } => {
            if have.is_deny() {
                return Err(OpsError::Conflict(format!(
                    "{prefix} is denied (CNAME . at {owner}); a deny is not overridden by allow: \
                     `rpz-guard revoke {prefix}` first if it really is legitimate"
                )));
            }
            if let Some(other) = &have.cname {
                return Err(OpsError::Conflict(format!(
                    "{owner} holds CNAME {other}, which is not an rpz-guard entry; refusing to change it"
                )));
            }
            // Our TXT (also one this version cannot read) is replaced;
            // somebody else's stays.
            let ours: Vec<&TxtData> = have
                .txt
                .iter()
                .filter(|t| !matches!(EntryMeta::decode(t), Err(MetaError::NotOurs)))
                .collect();
            // A manual entry keeps its creation time and unknown keys; a
            // learned one becomes manual now.
            let mut meta = ours
                .iter()
                .find_map(|t| EntryMeta::decode(t).ok().filter(|m| m.source == Source::Manual))
                .unwrap_or_else(|| EntryMeta::manual(now, None, None));
            meta.expires = *expires;
            meta.note = note.clone();
            let txt = meta
                .encode_txt()
                .map_err(|e| OpsError::Usage(format!("cannot write the entry's TXT: {e}")))?;
            let mut changes: Vec<Change> = ours.iter().map(|t| Change::DeleteTxt((*t).clone())).collect();
            changes.push(Change::AddClasses(*classes));
            changes.push(Change::AddTxt(txt));
            let txt_prereq = if have.txt.is_empty() {
                Prereq::NoRrset(RecordType::TXT)
            } else {
                Prereq::TxtIs(have.txt.clone())
            };
            Ok(OwnerEdit { prefix, prereqs: vec![Prereq::NoRrset(RecordType::CNAME), txt_prereq], changes })
        }
        Request::Revoke { .. } => {
            if have.is_empty() {
                let covering =
                    edit::read_covering(target.server()?, &target.zone, target.key.as_ref(), prefix.addr())
                        .await
                        .unwrap_or_default();
                let cover: Vec<String> = covering
                    .iter()
                    .filter(|(p, _)| *p != prefix && p.len() < prefix.len())
                    .map(|(p, r)| format!("{p}{}", if r.is_deny() { " (a deny)" } else { "" }))
                    .collect();
                return Err(OpsError::Conflict(if cover.is_empty() {
                    format!(
                        "{prefix} is not in zone {} (no records at {owner}); nothing to revoke",
                        target.zone
                    )
                } else {
                    format!(
                        "{prefix} has no entry of its own in zone {} (no records at {owner}); it is covered by {}: revoke that, or deny {prefix}",
                        target.zone,
                        cover.join(", ")
                    )
                }));
            }
            Ok(OwnerEdit {
                prefix,
                prereqs: vec![Prereq::InUse],
                changes: vec![
                    Change::DeleteRrset(RecordType::A),
                    Change::DeleteRrset(RecordType::TXT),
                    Change::DeleteRrset(RecordType::CNAME),
                ],
            })
        }
        Request::Deny { .. } => Ok(OwnerEdit {
            prefix,
            prereqs: vec![],
            changes: vec![
                Change::DeleteRrset(RecordType::A),
                Change::DeleteRrset(RecordType::TXT),
                Change::AddDeny,
            ],
        }),
    }
}
