//! Entries as operators read them (`list`, `explain`, the outcome of a
//! change): prefix, classes, deny, and the lifetime fields of the entry's
//! TXT companion record.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::when;
use crate::{
    policy::{Classes, Prefix},
    rpz::{edit::OwnerRecords, encode_owner},
};

/// The answer that last confirmed a learned entry (TXT `ev=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The name server that answered.
    pub server: String,
    /// The question's name.
    pub qname: String,
    /// The question's type.
    pub qtype: String,
}

/// The lifetime fields of an entry (its TXT companion record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    /// `learned` or `manual`; `None`: no rpz-guard TXT (a zone written by
    /// an older version: treated as learned, times unknown).
    pub source: Option<String>,
    /// First learned, or creation of a manual entry (Unix seconds).
    pub first: Option<u64>,
    /// Last confirmed by DNS evidence (Unix seconds).
    pub seen: Option<u64>,
    /// TTL of the record that taught it (seconds).
    pub ttl: Option<u64>,
    /// The answer that last confirmed it.
    pub evidence: Option<Evidence>,
    /// Expiry of a manual entry (Unix seconds).
    pub expires: Option<u64>,
    /// Operator comment.
    pub note: Option<String>,
}

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
    /// Lifetime fields.
    pub lifetime: Lifetime,
    /// TXT records at the owner that are not rpz-guard's (kept, ignored).
    pub foreign_txt: usize,
}

impl EntryView {
    /// The entry the records at `prefix`'s owner make.
    pub fn from_records(prefix: Prefix, zone: &str, r: &OwnerRecords) -> EntryView {
        let ours = r.txt.iter().find(|t| is_ours(t));
        EntryView {
            prefix,
            owner: encode_owner(&prefix, zone),
            classes: r.classes,
            denied: r.is_deny(),
            lifetime: ours.and_then(|t| decode(t)).unwrap_or_default(),
            foreign_txt: r.txt.iter().filter(|t| !is_ours(t)).count(),
        }
    }

    /// `learned`, `manual`, `deny`, or `learned (no lifetime record)`.
    pub fn source(&self) -> &str {
        if self.denied {
            return "deny";
        }
        self.lifetime.source.as_deref().unwrap_or("learned (no lifetime record)")
    }

    /// One line: `smtp, manual since …, expires …`.
    pub fn summary(&self, now: u64) -> String {
        if self.denied {
            return "DENIED (CNAME .)".to_owned();
        }
        let l = &self.lifetime;
        let mut s = format!("{}, {}", self.classes, self.source());
        if let Some(f) = l.first {
            s.push_str(&format!(", since {}", when::utc(f)));
        }
        if let Some(seen) = l.seen {
            s.push_str(&format!(", confirmed {}", when::utc(seen)));
        }
        match (l.expires, l.source.as_deref()) {
            (Some(e), _) => s.push_str(&format!(", expires {}", when::utc_relative(e, now))),
            (None, Some("manual")) => s.push_str(", never expires"),
            _ => {}
        }
        if let Some(n) = &l.note {
            s.push_str(&format!(", note {n:?}"));
        }
        s
    }
}

/// True for an rpz-guard TXT (its first string is the format version).
pub fn is_ours(strings: &[String]) -> bool {
    strings.first().is_some_and(|s| s == "rpz-guard=1")
}

/// The lifetime fields of one of our TXT records (`None` if not ours).
pub fn decode(strings: &[String]) -> Option<Lifetime> {
    if !is_ours(strings) {
        return None;
    }
    let mut l = Lifetime::default();
    for s in &strings[1..] {
        let Some((k, v)) = s.split_once('=') else { continue };
        match k {
            "src" => l.source = Some(v.to_owned()),
            "first" => l.first = v.parse().ok(),
            "seen" => l.seen = v.parse().ok(),
            "ttl" => l.ttl = v.parse().ok(),
            "exp" => l.expires = v.parse().ok(),
            "note" => l.note = Some(v.to_owned()),
            "ev" => {
                let mut parts = v.splitn(3, '|');
                if let (Some(server), Some(qname), Some(qtype)) = (parts.next(), parts.next(), parts.next()) {
                    l.evidence =
                        Some(Evidence { server: server.into(), qname: qname.into(), qtype: qtype.into() });
                }
            }
            _ => {}
        }
    }
    Some(l)
}

/// The TXT strings of a manual entry.
pub fn manual_txt(first: u64, expires: Option<u64>, note: Option<&str>) -> Vec<String> {
    let mut v = vec!["rpz-guard=1".to_owned(), "src=manual".to_owned(), format!("first={first}")];
    if let Some(e) = expires {
        v.push(format!("exp={e}"));
    }
    if let Some(n) = note {
        v.push(format!("note={n}"));
    }
    v
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
    let entries = snap
        .set
        .iter()
        .map(|(p, c)| EntryView {
            prefix: *p,
            owner: encode_owner(p, &target.zone),
            classes: *c,
            denied: false,
            lifetime: Lifetime::default(),
            foreign_txt: 0,
        })
        .filter(|e| filter.keeps(e, now))
        .collect();
    Ok(Listing { server, zone: target.zone.clone(), serial: snap.serial, entries })
}

impl ListFilter {
    /// True when `e` passes the filter.
    pub fn keeps(&self, e: &EntryView, now: u64) -> bool {
        if let Some(c) = self.class
            && !e.classes.contains(c)
        {
            return false;
        }
        if let Some(within) = self.expiring_within {
            let Some(at) = e.lifetime.expires else { return false };
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
            "{:<40} {:<9} {:<8} {:<20} {:<20} EXPIRES / NOTE",
            "ENTRY", "CLASS", "SOURCE", "FIRST", "CONFIRMED"
        );
        let t =
            |v: Option<u64>| v.map_or("-".to_owned(), |t| when::utc(t).trim_end_matches(" UTC").to_owned());
        for e in &self.entries {
            let l = &e.lifetime;
            let source = if e.denied { "deny" } else { l.source.as_deref().unwrap_or("learned?") };
            let class = if e.denied { "-".to_owned() } else { e.classes.to_string() };
            let mut tail = l.expires.map_or(String::new(), |x| when::utc_relative(x, now));
            if let Some(n) = &l.note {
                tail.push_str(&format!("{}{n:?}", if tail.is_empty() { "" } else { "  " }));
            }
            let _ = writeln!(
                o,
                "{:<40} {:<9} {:<8} {:<20} {:<20} {}",
                e.prefix.to_string(),
                class,
                source,
                t(l.first),
                t(l.seen),
                tail
            );
        }
        o
    }
}
