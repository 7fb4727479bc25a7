//! Entries as operators read them (`list`, `explain`, the outcome of a
//! change): prefix, classes, deny, and the lifetime fields of the entry's
//! TXT companion record.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::when;
use crate::{
    policy::{Classes, Prefix},
    rpz::{
        edit::OwnerRecords,
        encode_owner,
        meta::{EntryMeta, MetaError, Source},
    },
};

/// One entry of the policy zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    /// The address or prefix.
    pub prefix: Prefix,
    /// Its owner name (trigger) in the zone.
    pub owner: String,
    /// Its classes (`none` for a deny).
    pub classes: Classes,
    /// A deny (`CNAME .`).
    pub denied: bool,
    /// Lifetime fields (its `rpz-guard=1` TXT); `None` when it has none (a
    /// zone written by an older version: learned, times unknown) or it
    /// cannot be read (see `meta_error`).
    pub meta: Option<EntryMeta>,
    /// Why the entry's own TXT cannot be read, when it cannot.
    pub meta_error: Option<String>,
    /// When ageing may remove it (Unix seconds): a learned entry at `seen`
    /// plus the class's `max_age` (at least the TTL that taught it; kept
    /// past it while traffic uses it), a manual one at its expiry. `None`:
    /// never, or not known yet (no lifetime record).
    #[serde(default)]
    pub ages_out: Option<u64>,
    /// TXT records at the owner that are not rpz-guard's (kept, ignored;
    /// counted by `explain`, not by `list`).
    pub foreign_txt: usize,
}

impl EntryView {
    /// The entry the records at `prefix`'s owner make.
    pub fn from_records(prefix: Prefix, zone: &str, r: &OwnerRecords) -> EntryView {
        let (mut meta, mut meta_error, mut foreign_txt) = (None, None, 0);
        for t in &r.txt {
            match EntryMeta::decode(t) {
                Ok(m) => meta = Some(m),
                Err(MetaError::NotOurs) => foreign_txt += 1,
                Err(e) => meta_error = Some(e.to_string()),
            }
        }
        EntryView {
            prefix,
            owner: encode_owner(&prefix, zone),
            classes: r.classes,
            denied: r.is_deny(),
            meta,
            meta_error,
            ages_out: None,
            foreign_txt,
        }
    }

    /// The same, with [`EntryView::ages_out`] from `lifetime`'s max ages.
    #[must_use]
    pub fn with_ageing(mut self, lifetime: &crate::config::Lifetime) -> EntryView {
        if !self.denied {
            self.ages_out = self.meta.as_ref().and_then(|m| m.ages_out_at(lifetime.max_age(self.classes)));
        }
        self
    }

    /// `learned`, `manual`, `deny`, or `learned (no lifetime record)`.
    pub fn source(&self) -> &'static str {
        match (&self.meta, self.denied) {
            (_, true) => "deny",
            (Some(m), false) => m.source.name(),
            (None, false) => "learned (no lifetime record)",
        }
    }

    /// One line: `smtp, manual, since …, expires …`.
    pub fn summary(&self, now: u64) -> String {
        if self.denied {
            return "DENIED (CNAME .)".to_owned();
        }
        let mut s = format!("{}, {}", self.classes, self.source());
        let Some(m) = &self.meta else { return s };
        if let Some(f) = m.first {
            s.push_str(&format!(", since {}", when::utc(f)));
        }
        if let Some(seen) = m.seen {
            s.push_str(&format!(", confirmed {}", when::utc(seen)));
        }
        match (m.expires, m.source) {
            (Some(e), _) => s.push_str(&format!(", expires {}", when::utc_relative(e, now))),
            (None, Source::Manual) => s.push_str(", never expires"),
            (None, Source::Learned) => {}
        }
        if let Some(n) = &m.note {
            s.push_str(&format!(", note {n:?}"));
        }
        s
    }
}

/// What `list` is asked for.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only entries holding this class.
    pub class: Option<Classes>,
    /// Only entries that expire (or would age out) within this many seconds.
    pub expiring_within: Option<u64>,
}

/// The zone as `list` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    /// The primary.
    pub server: SocketAddr,
    /// The zone.
    pub zone: String,
    /// Its serial.
    pub serial: u32,
    /// The entries, in prefix order.
    pub entries: Vec<EntryView>,
}

/// Reads the zone by AXFR and keeps the entries `filter` asks for.
pub async fn list(target: &super::Target, filter: &ListFilter, now: u64) -> Result<Listing, super::OpsError> {
    let server = target.server()?;
    let snap = crate::rpz::transfer::axfr(server, &target.zone, target.key.as_ref()).await?;
    let set = &snap.set;
    let allows = set.iter().map(|(p, c)| (*p, *c, false));
    let denies = set.denies().map(|p| (*p, Classes::NONE, true));
    let mut entries: Vec<EntryView> = allows
        .chain(denies)
        .map(|(p, classes, denied)| EntryView {
            prefix: p,
            owner: encode_owner(&p, &target.zone),
            classes,
            denied,
            meta: set.meta(&p).cloned(),
            meta_error: None,
            ages_out: None,
            foreign_txt: 0,
        })
        .map(|e| e.with_ageing(&target.lifetime))
        .filter(|e| filter.keeps(e, now))
        .collect();
    entries.sort_by_key(|e| e.prefix);
    Ok(Listing { server, zone: target.zone.clone(), serial: snap.serial, entries })
}

impl ListFilter {
    /// True when `e` passes the filter.
    pub fn keeps(&self, e: &EntryView, now: u64) -> bool {
        if let Some(c) = self.class
            && (e.denied || !e.classes.contains(c))
        {
            return false;
        }
        if let Some(within) = self.expiring_within {
            let Some(at) = e.ages_out else { return false };
            if at > now.saturating_add(within) {
                return false;
            }
        }
        true
    }
}

impl Listing {
    /// The table `rpz-guard list` prints.
    pub fn render(&self, now: u64) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "zone {} at {}, serial {}: {} entries",
            self.zone,
            self.server,
            self.serial,
            self.entries.len()
        );
        let _ = writeln!(
            o,
            "{:<40} {:<9} {:<8} {:<20} {:<20} AGES OUT / NOTE",
            "ENTRY", "CLASS", "SOURCE", "FIRST", "CONFIRMED"
        );
        let t =
            |v: Option<u64>| v.map_or("-".to_owned(), |t| when::utc(t).trim_end_matches(" UTC").to_owned());
        for e in &self.entries {
            let m = e.meta.clone().unwrap_or_default();
            let source = if e.denied {
                "deny"
            } else if e.meta.is_none() {
                "learned?"
            } else {
                m.source.name()
            };
            let class = if e.denied { "-".to_owned() } else { e.classes.to_string() };
            let mut tail = e.ages_out.map_or(String::new(), |x| when::utc_relative(x, now));
            if let Some(n) = &m.note {
                tail.push_str(&format!("{}{n:?}", if tail.is_empty() { "" } else { "  " }));
            }
            let line = format!(
                "{:<40} {:<9} {:<8} {:<20} {:<20} {}",
                e.prefix.to_string(),
                class,
                source,
                t(m.first),
                t(m.seen),
                tail
            );
            let _ = writeln!(o, "{}", line.trim_end());
        }
        o
    }
}
