//! The allow set and the verdict rules shared by every enforcement mode.
//!
//! An entry maps an IP prefix (a host is a /32 or /128) to a set of
//! [`Classes`]. A *checked* packet (protected service, source not exempt,
//! destination not internal) passes when the destination's classes include
//! one that the service requires: DNS passes with any class, SMTP only with
//! [`Classes::SMTP`] (paper, Table 1).

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::rpz::meta::{EntryMeta, TxtData};

/// A set of allow-set classes (bit set, same bits as `guard_common::CLASS_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Classes(u32);

impl Classes {
    /// No class: not registered.
    pub const NONE: Classes = Classes(0);
    /// Legitimate name server, RPZ answer `127.0.0.1`.
    pub const DNS: Classes = Classes(guard_common::CLASS_DNS);
    /// Legitimate mail exchanger, RPZ answer `127.0.0.25`.
    pub const SMTP: Classes = Classes(guard_common::CLASS_SMTP);

    /// A deny (RPZ `CNAME .`) as the enforcement maps hold it: the
    /// [`guard_common::VALUE_DENY`] bit, which beats every class. Only in
    /// the enforced view of a set ([`AllowSet::enforced`]), never a class.
    pub const DENY: Classes = Classes(guard_common::VALUE_DENY);

    /// Builds a set from raw bits, keeping only known classes.
    pub const fn from_bits(bits: u32) -> Self {
        Classes(bits & guard_common::CLASS_ALL)
    }

    /// An allow-map value as the kernel holds it: the classes, or
    /// [`Classes::DENY`] (which then stands alone).
    pub const fn from_map_value(bits: u32) -> Self {
        if bits & guard_common::VALUE_DENY != 0 { Classes::DENY } else { Classes::from_bits(bits) }
    }

    /// True for the deny marker of the enforced view.
    pub const fn is_deny(self) -> bool {
        self.0 & guard_common::VALUE_DENY != 0
    }

    /// The raw bits (as stored in the eBPF maps).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True when no class is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when every class of `other` is in `self`.
    pub const fn contains(self, other: Classes) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union of two sets.
    #[must_use]
    pub const fn union(self, other: Classes) -> Classes {
        Classes(self.0 | other.0)
    }

    /// Set difference `self - other`.
    #[must_use]
    pub const fn without(self, other: Classes) -> Classes {
        Classes(self.0 & !other.0)
    }

    /// The class an RPZ `A` answer stands for: `127.0.0.1` → DNS,
    /// `127.0.0.25` → SMTP; anything else is not ours.
    pub fn from_rpz_answer(a: Ipv4Addr) -> Option<Classes> {
        match a.octets() {
            [127, 0, 0, 1] => Some(Classes::DNS),
            [127, 0, 0, 25] => Some(Classes::SMTP),
            _ => None,
        }
    }

    /// The RPZ `A` answers that encode this set, one per class.
    pub fn rpz_answers(self) -> Vec<Ipv4Addr> {
        let mut out = Vec::with_capacity(2);
        if self.contains(Classes::DNS) {
            out.push(Ipv4Addr::new(127, 0, 0, 1));
        }
        if self.contains(Classes::SMTP) {
            out.push(Ipv4Addr::new(127, 0, 0, 25));
        }
        out
    }
}

impl fmt::Display for Classes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_deny() {
            return f.write_str("deny");
        }
        match (self.contains(Classes::DNS), self.contains(Classes::SMTP)) {
            (false, false) => f.write_str("none"),
            (true, false) => f.write_str("dns"),
            (false, true) => f.write_str("smtp"),
            (true, true) => f.write_str("dns+smtp"),
        }
    }
}

/// A protected service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// DNS (udp/tcp 53 by default).
    Dns,
    /// SMTP (tcp 25/465/587 by default).
    Smtp,
}

impl Service {
    /// The service number shared with the XDP program.
    pub const fn number(self) -> u32 {
        match self {
            Service::Dns => guard_common::SERVICE_DNS,
            Service::Smtp => guard_common::SERVICE_SMTP,
        }
    }

    /// The service for a number from the XDP program.
    pub const fn from_number(n: u32) -> Option<Service> {
        match n {
            guard_common::SERVICE_DNS => Some(Service::Dns),
            guard_common::SERVICE_SMTP => Some(Service::Smtp),
            _ => None,
        }
    }

    /// Whether a destination holding `classes` may receive this service.
    pub const fn allows(self, classes: Classes) -> bool {
        !classes.is_deny() && classes.0 & guard_common::classes_required(self.number()) != 0
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Dns => "dns",
            Service::Smtp => "smtp",
        })
    }
}

/// An Ethernet (MAC-48) address, written `02:00:5e:10:00:53` (hyphens are
/// read too). Used to pin exempt sources to the hosts they live on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// True for a group (multicast or broadcast) address: never a frame's source.
    pub const fn is_group(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address like 02:00:5e:10:00:53");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A transport protocol of a protected port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl Transport {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }
}

/// One protected destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedPort {
    /// TCP or UDP.
    pub proto: Transport,
    /// Destination port.
    pub port: u16,
    /// The service it belongs to.
    pub service: Service,
}

/// The decision for one checked packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The destination holds a class the service needs.
    Allow,
    /// The destination is not registered at all.
    DenyNotRegistered,
    /// The destination is registered, but not for this service.
    DenyWrongClass,
}

impl Verdict {
    /// The verdict for `service` toward a destination with `classes`.
    pub const fn decide(service: Service, classes: Classes) -> Verdict {
        if service.allows(classes) {
            Verdict::Allow
        } else if classes.is_empty() || classes.is_deny() {
            Verdict::DenyNotRegistered
        } else {
            Verdict::DenyWrongClass
        }
    }

    /// True for [`Verdict::Allow`].
    pub const fn is_allow(self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

/// An IP prefix with its host bits cleared; a host is a full-length prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// A prefix that could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid prefix {value:?}: {why}")]
pub struct PrefixError {
    /// The offending text.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Prefix {
    /// A prefix of `len` bits; host bits of `addr` are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(PrefixError {
                value: format!("{addr}/{len}"),
                why: "length exceeds the address size",
            });
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Prefix { addr, len })
    }

    /// A single host (/32 or /128). IPv4-mapped IPv6 addresses become IPv4.
    pub fn host(addr: IpAddr) -> Prefix {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    /// The network address.
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub const fn len(&self) -> u8 {
        self.len
    }

    /// True for a zero-length prefix (everything).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True for a single host.
    pub const fn is_host(&self) -> bool {
        match self.addr {
            IpAddr::V4(_) => self.len == 32,
            IpAddr::V6(_) => self.len == 128,
        }
    }

    /// True when `ip` lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Prefix::new(ip, self.len).is_ok_and(|p| p.addr == self.addr)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() { write!(f, "{}", self.addr) } else { write!(f, "{}/{}", self.addr, self.len) }
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32`.
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let bad = |why| PrefixError { value: s.to_owned(), why };
        match s.split_once('/') {
            None => s.parse::<IpAddr>().map(Prefix::host).map_err(|_| bad("not an IP address")),
            Some((a, l)) => {
                let addr = a.parse::<IpAddr>().map_err(|_| bad("not an IP address"))?;
                let len = l.parse::<u8>().map_err(|_| bad("prefix length is not a number"))?;
                Prefix::new(addr, len)
            }
        }
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Changes that turn one [`AllowSet`] into another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowDiff {
    /// Entries to insert or overwrite, with their new classes.
    pub upsert: Vec<(Prefix, Classes)>,
    /// Entries to delete.
    pub remove: Vec<Prefix>,
}

impl AllowDiff {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// The allow set: prefix → classes. Ordered, so diffs and output are stable.
///
/// It also mirrors the rest of the policy zone that matters to rpz-guard:
/// the denies (`CNAME .` triggers, which beat any allow of the addresses
/// they cover) and each entry's lifetime state ([`EntryMeta`], the TXT
/// beside the trigger). [`AllowSet::diff`] and [`AllowSet::apply`] are about
/// the allow entries only; enforcement points work on
/// [`AllowSet::enforced`], where denies have become entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowSet {
    entries: Entries,
    denies: BTreeSet<Prefix>,
    meta: BTreeMap<Prefix, OwnerTxt>,
}

/// The allow entries, with how many there are of each prefix length, so a
/// lookup probes only the lengths present (a set of host entries: one
/// probe, not 33 or 129). Reads go through `Deref`; every change goes
/// through [`Entries::insert`] / [`Entries::remove`], which keep the counts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entries {
    map: BTreeMap<Prefix, Classes>,
    /// Entries per prefix length: IPv4 (0..=32) and IPv6 (0..=128).
    v4: [u32; 33],
    v6: [u32; 129],
}

impl Default for Entries {
    fn default() -> Self {
        Entries { map: BTreeMap::new(), v4: [0; 33], v6: [0; 129] }
    }
}

impl std::ops::Deref for Entries {
    type Target = BTreeMap<Prefix, Classes>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Entries {
    fn count(&mut self, p: &Prefix) -> Option<&mut u32> {
        let len = usize::from(p.len());
        if p.addr().is_ipv4() { self.v4.get_mut(len) } else { self.v6.get_mut(len) }
    }

    fn insert(&mut self, p: Prefix, c: Classes) -> Option<Classes> {
        let old = self.map.insert(p, c);
        if old.is_none()
            && let Some(n) = self.count(&p)
        {
            *n += 1;
        }
        old
    }

    fn remove(&mut self, p: &Prefix) -> Option<Classes> {
        let old = self.map.remove(p);
        if old.is_some()
            && let Some(n) = self.count(p)
        {
            *n = n.saturating_sub(1);
        }
        old
    }

    /// The prefix lengths with entries for `ip`'s family, longest first,
    /// below the host length.
    fn shorter_lengths(&self, ip: IpAddr) -> impl Iterator<Item = u8> + '_ {
        let counts: &[u32] = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        let host = counts.len() - 1;
        (0..host).rev().filter(move |l| counts[*l] > 0).filter_map(|l| u8::try_from(l).ok())
    }
}

/// One TXT record of an owner as the mirror keeps it. Our lifetime record
/// in the spelling this version writes is kept decoded only (its strings
/// are [`EntryMeta::encode`]'s, made again when an edit names them): a
/// mirror of a million learned entries stores no second copy of them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TxtRecord {
    /// Ours, exactly as `EntryMeta::encode` spells it.
    Ours(EntryMeta),
    /// Any other record, as its raw bytes: foreign (`None`), or ours in
    /// another spelling (an older version's, a hand-written one).
    Raw(TxtData, Option<EntryMeta>),
}

impl TxtRecord {
    fn new(strings: TxtData, meta: Option<EntryMeta>) -> TxtRecord {
        match meta {
            Some(m) if m.encode_txt().is_ok_and(|e| e == strings) => TxtRecord::Ours(m),
            m => TxtRecord::Raw(strings, m),
        }
    }

    /// The record's character-strings, as the zone holds them.
    fn strings(&self) -> TxtData {
        match self {
            TxtRecord::Ours(m) => m.encode_txt().unwrap_or_default(),
            TxtRecord::Raw(s, _) => s.clone(),
        }
    }

    fn is(&self, strings: &[Vec<u8>]) -> bool {
        match self {
            TxtRecord::Ours(m) => m.encode_txt().is_ok_and(|e| e == strings),
            TxtRecord::Raw(s, _) => s.as_slice() == strings,
        }
    }

    fn meta(&self) -> Option<&EntryMeta> {
        match self {
            TxtRecord::Ours(m) => Some(m),
            TxtRecord::Raw(_, m) => m.as_ref(),
        }
    }

    fn into_meta(self) -> Option<EntryMeta> {
        match self {
            TxtRecord::Ours(m) => Some(m),
            TxtRecord::Raw(_, m) => m,
        }
    }
}

/// The whole TXT RRset of one owner, ours and foreign (issue 11): an edit
/// guarded by "the TXT RRset is what I read" must name every record, and
/// two of our records at one owner (two learners racing) must be seen to
/// be healed. Almost always one record.
#[derive(Clone, Debug, Default)]
struct OwnerTxt(Vec<TxtRecord>);

/// An RRset is a set: the same records in another order (an AXFR and an
/// IXFR of one zone) are the same state.
impl PartialEq for OwnerTxt {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().all(|r| other.0.contains(r))
    }
}

impl Eq for OwnerTxt {}

impl OwnerTxt {
    /// Which of the owner's lifetime records counts: a manual one before
    /// any learned one (an operator's entry never ages because of a stray
    /// learned record), then the newest `seen`, then the larger `first`,
    /// then the larger record bytes. The last key makes the choice a
    /// function of the RRset alone: an AXFR and an IXFR that list the same
    /// records in another order pick the same one (records of an RRset
    /// differ, so it always decides).
    fn best(&self) -> Option<usize> {
        let key = |m: &EntryMeta| (m.source == crate::rpz::meta::Source::Manual, m.seen, m.first);
        let mut best: Option<(usize, &EntryMeta)> = None;
        for (i, m) in self.0.iter().enumerate().filter_map(|(i, r)| r.meta().map(|m| (i, m))) {
            let better = match best {
                None => true,
                Some((j, b)) => match key(m).cmp(&key(b)) {
                    std::cmp::Ordering::Equal => self.0[i].strings() > self.0[j].strings(),
                    o => o.is_gt(),
                },
            };
            if better {
                best = Some((i, m));
            }
        }
        best.map(|(i, _)| i)
    }

    fn meta(&self) -> Option<&EntryMeta> {
        self.0.get(self.best()?)?.meta()
    }
}

/// Above this many denies, [`AllowSet::denied_by`] probes each prefix
/// length instead of scanning the denies.
const DENY_SCAN: usize = 32;

impl AllowSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `classes` to the entry for `prefix`; returns true if the set changed.
    pub fn add(&mut self, prefix: Prefix, classes: Classes) -> bool {
        if classes.is_empty() {
            return false;
        }
        let before = self.get(&prefix);
        let after = before.union(classes);
        if after != before {
            self.entries.insert(prefix, after);
        }
        before != after
    }

    /// Removes `classes` from the entry for `prefix` (the entry goes when empty);
    /// returns true if the set changed.
    pub fn remove(&mut self, prefix: &Prefix, classes: Classes) -> bool {
        let Some(before) = self.entries.get(prefix).copied() else { return false };
        let after = before.without(classes);
        if after.is_empty() {
            self.entries.remove(prefix);
        } else if after != before {
            self.entries.insert(*prefix, after);
        }
        before != after
    }

    /// The classes stored for exactly `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Classes {
        self.entries.get(prefix).copied().unwrap_or_default()
    }

    /// The classes that apply to a destination: its host entry together
    /// with the longest prefix entry covering it, as BIND picks the most
    /// specific `rpz-ip` trigger, and as the XDP maps (hash + LPM trie) decide.
    /// A deny covering the destination beats both: [`Classes::NONE`].
    pub fn lookup(&self, ip: IpAddr) -> Classes {
        let c = self.union_at(ip);
        if c.is_deny() || self.denied_by(ip).is_some() { Classes::NONE } else { c }
    }

    /// As [`AllowSet::lookup`], but a denied destination is
    /// [`Classes::DENY`] rather than [`Classes::NONE`]: for the learners,
    /// which must neither learn nor push it.
    pub fn zone_classes(&self, ip: IpAddr) -> Classes {
        if self.is_denied(ip) { Classes::DENY } else { self.union_at(ip) }
    }

    /// True when a deny covers `ip` (in either form: a deny of this set,
    /// or a [`Classes::DENY`] entry of an enforced view).
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        self.denied_by(ip).is_some() || self.union_at(ip).is_deny()
    }

    /// [`AllowSet::lookup`] of a destination no deny covers; `None` when
    /// [`AllowSet::is_denied`]. One walk of the prefix lengths instead of
    /// two (the OpenFlow packet-in path asks both per packet).
    pub fn lookup_unless_denied(&self, ip: IpAddr) -> Option<Classes> {
        if self.denied_by(ip).is_some() {
            return None;
        }
        Some(self.union_at(ip)).filter(|c| !c.is_deny())
    }

    /// The host entry's classes united with the longest prefix entry's.
    fn union_at(&self, ip: IpAddr) -> Classes {
        let host = Prefix::host(ip);
        let max = if host.addr().is_ipv4() { 32u8 } else { 128 };
        let longest = self
            .entries
            .shorter_lengths(host.addr())
            .filter(|len| *len < max)
            .filter_map(|len| Prefix::new(host.addr(), len).ok())
            .find_map(|p| self.entries.get(&p).copied())
            .unwrap_or_default();
        let c = self.get(&host).union(longest);
        if c.is_deny() { Classes::DENY } else { c }
    }

    /// Iterates over the entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Prefix, &Classes)> {
        self.entries.iter()
    }

    /// Number of entries holding each class: `(dns, smtp)`.
    pub fn class_counts(&self) -> (usize, usize) {
        self.entries.values().fold((0, 0), |(d, s), c| {
            (d + usize::from(c.contains(Classes::DNS)), s + usize::from(c.contains(Classes::SMTP)))
        })
    }

    /// What must change to turn `self` into `target` (allow entries only).
    pub fn diff(&self, target: &AllowSet) -> AllowDiff {
        let mut d = AllowDiff::default();
        for (p, c) in target.entries.iter() {
            if self.entries.get(p) != Some(c) {
                d.upsert.push((*p, *c));
            }
        }
        for p in self.entries.keys() {
            if !target.entries.contains_key(p) {
                d.remove.push(*p);
            }
        }
        d
    }

    /// Applies a diff produced by [`AllowSet::diff`].
    pub fn apply(&mut self, diff: &AllowDiff) {
        for p in &diff.remove {
            self.entries.remove(p);
        }
        for (p, c) in &diff.upsert {
            if c.is_empty() {
                self.entries.remove(p);
            } else {
                self.entries.insert(*p, *c);
            }
        }
    }

    // --- denies (RPZ `CNAME .`) ---

    /// Records a deny of `prefix`; true if new.
    pub fn deny(&mut self, prefix: Prefix) -> bool {
        self.denies.insert(prefix)
    }

    /// Drops the deny of exactly `prefix`; true if there was one.
    pub fn undeny(&mut self, prefix: &Prefix) -> bool {
        self.denies.remove(prefix)
    }

    /// The denies, in order.
    pub fn denies(&self) -> impl Iterator<Item = &Prefix> {
        self.denies.iter()
    }

    /// Number of denies.
    pub fn deny_count(&self) -> usize {
        self.denies.len()
    }

    /// The most specific deny covering `ip`, if any.
    pub fn denied_by(&self, ip: IpAddr) -> Option<Prefix> {
        self.deny_covering(&Prefix::host(ip))
    }

    /// The most specific deny covering all of `prefix` (a deny at most as
    /// long that contains it), if any.
    pub fn deny_covering(&self, prefix: &Prefix) -> Option<Prefix> {
        if self.denies.is_empty() {
            return None;
        }
        if self.denies.len() <= DENY_SCAN {
            return self
                .denies
                .iter()
                .filter(|d| d.len() <= prefix.len() && d.contains(prefix.addr()))
                .max_by_key(|d| d.len())
                .copied();
        }
        (0..=prefix.len())
            .rev()
            .filter_map(|len| Prefix::new(prefix.addr(), len).ok())
            .find(|p| self.denies.contains(p))
    }

    /// The set as an enforcement point must hold it: allow entries a deny
    /// covers entirely are dropped, and each deny becomes an entry holding
    /// [`Classes::DENY`]. A deny inside a wider allow prefix thus wins by
    /// being more specific, and a deny over a host entry wins because the
    /// host entry is gone (XDP also checks the deny bit of the union).
    /// Without denies this is `self`, not a copy.
    pub fn enforced(&self) -> Cow<'_, AllowSet> {
        if self.denies.is_empty() {
            return Cow::Borrowed(self);
        }
        let mut entries = self.entries.clone();
        for d in &self.denies {
            let (lo, hi) = span(d);
            let covered: Vec<Prefix> = entries
                .range(lo..=hi)
                .map(|(p, _)| *p)
                .filter(|p| p.len() >= d.len() && d.contains(p.addr()))
                .collect();
            for p in covered {
                entries.remove(&p);
            }
        }
        for d in &self.denies {
            entries.insert(*d, Classes::DENY);
        }
        Cow::Owned(AllowSet { entries, denies: BTreeSet::new(), meta: BTreeMap::new() })
    }

    /// The enforced view as a shared set: `set` itself when it has no
    /// denies (no copy), else a new one.
    pub fn enforced_arc(set: &std::sync::Arc<AllowSet>) -> std::sync::Arc<AllowSet> {
        match set.enforced() {
            Cow::Borrowed(_) => set.clone(),
            Cow::Owned(s) => std::sync::Arc::new(s),
        }
    }

    /// The inverse of [`AllowSet::enforced`] as far as it can be (what
    /// pinned maps hold, read back): [`Classes::DENY`] entries become denies.
    #[must_use]
    pub fn from_enforced(mut self) -> AllowSet {
        let denies: Vec<Prefix> = self.entries.iter().filter(|(_, c)| c.is_deny()).map(|(p, _)| *p).collect();
        for p in denies {
            self.entries.remove(&p);
            self.denies.insert(p);
        }
        self
    }

    // --- lifetime state (TXT beside each trigger) ---

    /// The lifetime state of exactly `prefix`, when the zone holds one of
    /// ours: with several, the manual one, else the newest `seen`, then the
    /// larger `first`, then the larger record bytes (whatever their order).
    pub fn meta(&self, prefix: &Prefix) -> Option<&EntryMeta> {
        self.meta.get(prefix)?.meta()
    }

    /// Every TXT record at `prefix`'s owner (ours and foreign), in the
    /// order read: the RRset an edit's prerequisite names.
    pub fn txt(&self, prefix: &Prefix) -> Vec<TxtData> {
        self.meta.get(prefix).map(|o| o.0.iter().map(TxtRecord::strings).collect()).unwrap_or_default()
    }

    /// Our TXT records at `prefix`'s owner (every one that decodes), as
    /// written: what an edit replacing the lifetime state deletes.
    pub fn our_txt(&self, prefix: &Prefix) -> Vec<TxtData> {
        self.meta
            .get(prefix)
            .map(|o| o.0.iter().filter(|r| r.meta().is_some()).map(TxtRecord::strings).collect())
            .unwrap_or_default()
    }

    /// Sets the lifetime state of `prefix`: our records are replaced by
    /// `meta`'s one; foreign ones stay. A state that cannot be encoded
    /// (a note too long) is kept under empty strings, so that
    /// [`AllowSet::meta`] still answers it.
    pub fn set_meta(&mut self, prefix: Prefix, meta: EntryMeta) {
        let o = self.meta.entry(prefix).or_default();
        o.0.retain(|r| r.meta().is_none());
        o.0.push(match meta.encode_txt() {
            Ok(_) => TxtRecord::Ours(meta),
            Err(_) => TxtRecord::Raw(Vec::new(), Some(meta)),
        });
    }

    /// Adds one TXT record read from the zone at `prefix`'s owner, with
    /// its lifetime state when it is ours. The same record twice is kept
    /// once (an RRset holds no duplicates).
    pub fn add_txt(&mut self, prefix: Prefix, strings: TxtData, meta: Option<EntryMeta>) {
        let o = self.meta.entry(prefix).or_default();
        if o.0.iter().any(|r| r.is(&strings)) {
            return;
        }
        o.0.push(TxtRecord::new(strings, meta));
    }

    /// Removes exactly the TXT record `strings` at `prefix`'s owner
    /// (an IXFR deletion): other records, and a newer one, stay.
    pub fn remove_txt(&mut self, prefix: &Prefix, strings: &[Vec<u8>]) {
        let Some(o) = self.meta.get_mut(prefix) else { return };
        o.0.retain(|r| !r.is(strings));
        if o.0.is_empty() {
            self.meta.remove(prefix);
        }
    }

    /// Drops every TXT record of `prefix`, returning its lifetime state.
    pub fn remove_meta(&mut self, prefix: &Prefix) -> Option<EntryMeta> {
        let o = self.meta.remove(prefix)?;
        let best = o.best()?;
        o.0.into_iter().nth(best).and_then(TxtRecord::into_meta)
    }

    /// Every lifetime state (one per owner, as [`AllowSet::meta`]), in
    /// prefix order.
    pub fn metas(&self) -> impl Iterator<Item = (&Prefix, &EntryMeta)> {
        self.meta.iter().filter_map(|(p, o)| Some((p, o.meta()?)))
    }

    /// Every owner's whole TXT RRset, in prefix order, each record as its
    /// character-strings (snapshots and zone files keep them).
    pub fn txt_rrsets(&self) -> impl Iterator<Item = (&Prefix, impl Iterator<Item = TxtData>)> {
        self.meta.iter().map(|(p, o)| (p, o.0.iter().map(TxtRecord::strings)))
    }

    /// True when the denies or the lifetime state differ from `other`'s
    /// (what [`AllowSet::diff`] does not see).
    pub fn state_differs(&self, other: &AllowSet) -> bool {
        self.denies != other.denies || self.meta != other.meta
    }
}

/// The smallest and largest prefix keys inside `d`, for a range scan of a
/// map ordered by (address, length).
fn span(d: &Prefix) -> (Prefix, Prefix) {
    let last = match d.addr() {
        IpAddr::V4(a) => {
            let host = if d.len() >= 32 { 0 } else { u32::MAX >> d.len() };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
        }
        IpAddr::V6(a) => {
            let host = if d.len() >= 128 { 0 } else { u128::MAX >> d.len() };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
        }
    };
    (Prefix { addr: d.addr(), len: 0 }, Prefix { addr: last, len: u8::MAX })
}

impl FromIterator<(Prefix, Classes)> for AllowSet {
    fn from_iter<I: IntoIterator<Item = (Prefix, Classes)>>(iter: I) -> Self {
        let mut s = AllowSet::new();
        for (p, c) in iter {
            s.add(p, c);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().expect("test prefix")
    }

    #[test]
    fn mac_addresses_parse_print_and_refuse_junk() {
        let m: MacAddr = "02:00:5E:10:00:53".parse().expect("mac");
        assert_eq!(m.0, [2, 0, 0x5e, 0x10, 0, 0x53]);
        assert_eq!(m.to_string(), "02:00:5e:10:00:53");
        assert_eq!("02-00-5e-10-00-53".parse::<MacAddr>(), Ok(m));
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:53:01",
            "2:0:5e:10:0:53",
            "zz:00:5e:10:00:53",
            "02005e100053",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>().expect("mac").is_group());
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().expect("mac").is_group());
        assert!(!m.is_group() && !m.is_zero());
    }

    #[test]
    fn verdicts_follow_paper_table_1() {
        assert_eq!(Verdict::decide(Service::Dns, Classes::DNS), Verdict::Allow);
        assert_eq!(Verdict::decide(Service::Dns, Classes::SMTP), Verdict::Allow);
        assert_eq!(Verdict::decide(Service::Dns, Classes::NONE), Verdict::DenyNotRegistered);
        assert_eq!(Verdict::decide(Service::Smtp, Classes::SMTP), Verdict::Allow);
        assert_eq!(Verdict::decide(Service::Smtp, Classes::DNS), Verdict::DenyWrongClass);
        assert_eq!(Verdict::decide(Service::Smtp, Classes::NONE), Verdict::DenyNotRegistered);
    }

    #[test]
    fn rpz_answers_round_trip() {
        let both = Classes::DNS.union(Classes::SMTP);
        let back = both
            .rpz_answers()
            .into_iter()
            .filter_map(Classes::from_rpz_answer)
            .fold(Classes::NONE, Classes::union);
        assert_eq!(back, both);
        assert_eq!(Classes::from_rpz_answer(Ipv4Addr::new(127, 0, 0, 2)), None);
    }

    #[test]
    fn prefixes_normalise_and_parse() {
        assert_eq!(p("192.0.2.77/24").to_string(), "192.0.2.0/24");
        assert_eq!(p("2001:db8::1").to_string(), "2001:db8::1");
        assert!(p("2001:db8::1").is_host());
        assert_eq!(Prefix::host("::ffff:192.0.2.1".parse().expect("ip")), p("192.0.2.1"));
        assert!("192.0.2.0/33".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
        assert!(p("10.0.0.0/8").contains("10.9.8.7".parse().expect("ip")));
        assert!(!p("10.0.0.0/8").contains("11.0.0.1".parse().expect("ip")));
        assert!(!p("10.0.0.0/8").contains("::1".parse().expect("ip")));
    }

    #[test]
    fn lookup_unless_denied_is_lookup_and_is_denied_in_one() {
        let mut set: AllowSet = [
            ("198.51.100.0/24".parse::<Prefix>().expect("p"), Classes::DNS),
            ("198.51.100.25/32".parse().expect("p"), Classes::SMTP),
            ("203.0.113.0/24".parse().expect("p"), Classes::DENY),
        ]
        .into_iter()
        .collect();
        set.deny("192.0.2.0/28".parse().expect("p"));
        for ip in ["198.51.100.25", "198.51.100.7", "203.0.113.9", "192.0.2.3", "192.0.2.99", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            let want = if set.is_denied(ip) { None } else { Some(set.lookup(ip)) };
            assert_eq!(set.lookup_unless_denied(ip), want, "{ip}");
        }
        assert_eq!(set.lookup_unless_denied("203.0.113.9".parse().expect("ip")), None);
        assert_eq!(set.lookup_unless_denied("192.0.2.3".parse().expect("ip")), None);
    }

    #[test]
    fn lookup_unions_host_and_prefix_entries() {
        let mut s = AllowSet::new();
        s.add(p("198.51.100.7"), Classes::DNS);
        s.add(p("198.51.100.0/24"), Classes::SMTP);
        assert_eq!(s.lookup("198.51.100.7".parse().expect("ip")), Classes::DNS.union(Classes::SMTP));
        assert_eq!(s.lookup("198.51.100.8".parse().expect("ip")), Classes::SMTP);
        assert_eq!(s.lookup("203.0.113.1".parse().expect("ip")), Classes::NONE);
    }

    #[test]
    fn lookup_takes_the_longest_prefix_like_bind_and_the_kernel() {
        let mut s = AllowSet::new();
        s.add(p("198.51.0.0/16"), Classes::SMTP);
        s.add(p("198.51.100.0/24"), Classes::DNS);
        assert_eq!(s.lookup("198.51.100.9".parse().expect("ip")), Classes::DNS);
        assert_eq!(s.lookup("198.51.7.9".parse().expect("ip")), Classes::SMTP);
    }

    #[test]
    fn diff_then_apply_reaches_target() {
        let a: AllowSet =
            [(p("192.0.2.1"), Classes::DNS), (p("192.0.2.2"), Classes::SMTP)].into_iter().collect();
        let b: AllowSet =
            [(p("192.0.2.2"), Classes::SMTP.union(Classes::DNS)), (p("2001:db8::5"), Classes::SMTP)]
                .into_iter()
                .collect();
        let d = a.diff(&b);
        assert_eq!(d.remove, vec![p("192.0.2.1")]);
        assert_eq!(d.upsert.len(), 2);
        let mut c = a.clone();
        c.apply(&d);
        assert_eq!(c, b);
        assert!(b.diff(&b).is_empty());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn a_deny_beats_any_allow_in_lookup() {
        let mut s = AllowSet::new();
        s.add(p("198.51.100.0/24"), Classes::DNS);
        s.add(p("198.51.100.7"), Classes::SMTP);
        s.add(p("203.0.113.0/24"), Classes::SMTP);
        s.add(p("203.0.113.5"), Classes::SMTP);
        s.deny(p("198.51.100.7"));
        s.deny(p("203.0.0.0/16"));
        for denied in ["198.51.100.7", "203.0.113.5", "203.0.113.99"] {
            assert_eq!(s.lookup(ip(denied)), Classes::NONE, "{denied}");
            assert_eq!(s.zone_classes(ip(denied)), Classes::DENY, "{denied}");
            assert!(s.is_denied(ip(denied)));
        }
        assert_eq!(s.lookup(ip("198.51.100.8")), Classes::DNS);
        assert_eq!(s.denied_by(ip("203.0.113.5")), Some(p("203.0.0.0/16")));
        assert_eq!(Verdict::decide(Service::Dns, Classes::DENY), Verdict::DenyNotRegistered);
    }

    #[test]
    fn enforced_view_gives_the_same_verdicts() {
        let mut s = AllowSet::new();
        s.add(p("198.51.100.0/24"), Classes::DNS);
        s.add(p("198.51.100.7"), Classes::SMTP);
        s.add(p("203.0.113.0/24"), Classes::SMTP);
        s.add(p("203.0.113.5"), Classes::SMTP);
        s.add(p("2001:db8::/32"), Classes::DNS);
        s.deny(p("198.51.100.7"));
        s.deny(p("203.0.0.0/16"));
        s.deny(p("2001:db8:bad::/48"));
        let e = s.enforced();
        // Allows a deny covers are gone; denies are entries.
        assert_eq!(e.get(&p("203.0.113.0/24")), Classes::NONE);
        assert_eq!(e.get(&p("203.0.113.5")), Classes::NONE);
        assert_eq!(e.get(&p("203.0.0.0/16")), Classes::DENY);
        assert_eq!(e.get(&p("198.51.100.7")), Classes::DENY);
        for a in [
            "198.51.100.7",
            "198.51.100.8",
            "203.0.113.5",
            "203.0.7.7",
            "2001:db8:bad::1",
            "2001:db8::1",
            "192.0.2.1",
        ] {
            assert_eq!(e.lookup(ip(a)), s.lookup(ip(a)), "{a}");
            assert_eq!(e.is_denied(ip(a)), s.is_denied(ip(a)), "{a}");
        }
        assert_eq!(e.clone().into_owned().from_enforced().denies().count(), 3);
        let none = AllowSet::new();
        assert!(matches!(none.enforced(), Cow::Borrowed(_)));
    }

    /// The old walk over every prefix length, as the reference.
    fn union_by_every_length(s: &AllowSet, ip: IpAddr) -> Classes {
        let host = Prefix::host(ip);
        let max = if host.addr().is_ipv4() { 32u8 } else { 128 };
        let longest = (0..max)
            .rev()
            .filter_map(|len| Prefix::new(host.addr(), len).ok())
            .find_map(|p| s.entries.get(&p).copied())
            .unwrap_or_default();
        let c = s.get(&host).union(longest);
        if c.is_deny() { Classes::DENY } else { c }
    }

    #[test]
    fn probing_only_present_lengths_is_the_full_walk() {
        let mut s: AllowSet = [
            (p("10.0.0.0/8"), Classes::DNS),
            (p("10.1.0.0/16"), Classes::SMTP),
            (p("10.1.2.3"), Classes::DNS),
            (p("0.0.0.0/0"), Classes::DNS),
            (p("2001:db8::/32"), Classes::SMTP),
            (p("2001:db8::25"), Classes::DNS),
            (p("192.0.2.0/24"), Classes::DENY),
        ]
        .into_iter()
        .collect();
        let probes: Vec<IpAddr> = [
            "10.1.2.3",
            "10.1.9.9",
            "10.9.9.9",
            "11.0.0.1",
            "192.0.2.7",
            "2001:db8::25",
            "2001:db8::1",
            "2001:db9::1",
        ]
        .iter()
        .map(|a| a.parse().expect("ip"))
        .collect();
        let check = |s: &AllowSet, when: &str| {
            for ip in &probes {
                assert_eq!(s.union_at(*ip), union_by_every_length(s, *ip), "{ip} {when}");
            }
            let (mut v4, mut v6) = ([0u32; 33], [0u32; 129]);
            for q in s.entries.keys() {
                let counts: &mut [u32] = if q.addr().is_ipv4() { &mut v4 } else { &mut v6 };
                counts[usize::from(q.len())] += 1;
            }
            assert_eq!((s.entries.v4, s.entries.v6), (v4, v6), "counts {when}");
        };
        check(&s, "built");
        assert!(s.remove(&p("10.1.0.0/16"), Classes::SMTP));
        assert!(!s.remove(&p("10.1.0.0/16"), Classes::SMTP));
        assert!(s.remove(&p("0.0.0.0/0"), Classes::SMTP.union(Classes::DNS)));
        assert!(s.add(p("10.1.2.3"), Classes::SMTP));
        check(&s, "after add/remove");
        let target: AllowSet =
            [(p("10.0.0.0/8"), Classes::SMTP), (p("2001:db8::/48"), Classes::DNS)].into_iter().collect();
        s.apply(&s.diff(&target));
        check(&s, "after apply");
        assert_eq!(s, target, "equal sets compare equal, counts included");
        s.deny(p("10.1.0.0/16"));
        let e = s.enforced().into_owned();
        check(&e, "enforced");
        check(&e.clone().from_enforced(), "from_enforced");
    }

    #[test]
    fn remove_drops_empty_entries() {
        let mut s = AllowSet::new();
        s.add(p("192.0.2.1"), Classes::DNS.union(Classes::SMTP));
        assert!(s.remove(&p("192.0.2.1"), Classes::SMTP));
        assert_eq!(s.get(&p("192.0.2.1")), Classes::DNS);
        assert!(s.remove(&p("192.0.2.1"), Classes::DNS));
        assert!(s.is_empty());
        assert!(!s.remove(&p("192.0.2.1"), Classes::DNS));
    }

    /// Every TXT of an owner is kept, in any order the same state; the
    /// manual record counts before learned ones, then the newest `seen`.
    #[test]
    fn txt_rrsets_are_sets() {
        use crate::rpz::meta::EntryMeta;
        let q = p("192.0.2.9");
        let (old, new) = (EntryMeta::learned(1, 60, None), EntryMeta::learned(2, 60, None));
        let foreign = vec![b"x".to_vec()];
        let rec = |m: &EntryMeta| (m.encode_txt().expect("txt"), Some(m.clone()));
        let mut a = AllowSet::new();
        let mut b = AllowSet::new();
        for r in [rec(&old), (foreign.clone(), None), rec(&new)] {
            a.add_txt(q, r.0.clone(), r.1.clone());
        }
        for r in [rec(&new), rec(&old), (foreign.clone(), None), rec(&new)] {
            b.add_txt(q, r.0.clone(), r.1.clone());
        }
        assert_eq!(a, b, "order and duplicates do not matter");
        assert_eq!((a.meta(&q), a.txt(&q).len(), a.our_txt(&q).len()), (Some(&new), 3, 2));
        let manual = EntryMeta::manual(0, None, None);
        a.add_txt(q, manual.encode_txt().expect("txt"), Some(manual.clone()));
        assert_eq!(a.meta(&q), Some(&manual), "an operator's record counts first");
        a.set_meta(q, old.clone());
        assert_eq!(
            a.txt(&q),
            vec![foreign.clone(), old.encode_txt().expect("txt")],
            "ours replaced, foreign kept"
        );
        a.remove_txt(&q, &old.encode_txt().expect("txt"));
        assert_eq!((a.meta(&q), a.txt(&q)), (None, vec![foreign.clone()]));
        a.remove_txt(&q, &foreign);
        assert_eq!(a, AllowSet::new());
    }

    /// Ours in another spelling than this version's (strings in another
    /// order: an older writer, a hand edit) is named exactly as read, so a
    /// prerequisite on it matches the zone; it still counts as ours.
    #[test]
    fn our_record_in_another_spelling_is_named_as_read() {
        use crate::rpz::meta::EntryMeta;
        let q = p("192.0.2.10");
        let m = EntryMeta::learned(5, 60, None);
        let mut spelled = m.encode_txt().expect("txt");
        let canonical = spelled.clone();
        spelled[1..].reverse();
        assert_ne!(spelled, canonical);
        let decoded = EntryMeta::decode(&spelled).expect("ours, whatever the order");
        let mut a = AllowSet::new();
        a.add_txt(q, spelled.clone(), Some(decoded.clone()));
        assert_eq!((a.txt(&q), a.our_txt(&q)), (vec![spelled.clone()], vec![spelled.clone()]));
        assert_eq!(a.meta(&q), Some(&decoded));
        a.add_txt(q, canonical.clone(), Some(m.clone()));
        assert_eq!(a.txt(&q), vec![spelled.clone(), canonical.clone()], "two records, each as read");
        a.remove_txt(&q, &spelled);
        assert_eq!(a.txt(&q), vec![canonical]);
    }

    /// Two of our records that tie on source and `seen`: the larger
    /// `first` counts, and on a full tie the larger record bytes, in
    /// whichever order the records were read (issue 11: it depended on it).
    #[test]
    fn ties_between_our_records_do_not_depend_on_order() {
        use crate::rpz::meta::{EntryMeta, Evidence};
        let q = p("192.0.2.11");
        let pick = |recs: &[&EntryMeta]| {
            let mut a = AllowSet::new();
            for m in recs {
                a.add_txt(q, m.encode_txt().expect("txt"), Some((*m).clone()));
            }
            a.meta(&q).cloned()
        };
        let mut early = EntryMeta::learned(100, 60, None);
        early.seen = Some(500);
        let mut late = EntryMeta::learned(200, 60, None);
        late.seen = Some(500);
        assert_eq!(pick(&[&early, &late]), Some(late.clone()), "same seen: the larger first");
        assert_eq!(pick(&[&late, &early]), Some(late.clone()), "in either order");
        // Same source, seen and first: only the evidence differs.
        let ev = |qname: &str| Evidence {
            server: "192.0.2.1".parse().expect("ip"),
            qname: qname.into(),
            qtype: "A".into(),
        };
        let (mut x, mut y) = (late.clone(), late.clone());
        x.evidence = Some(ev("a.example."));
        y.evidence = Some(ev("b.example."));
        assert!(y.encode_txt().expect("y") > x.encode_txt().expect("x"));
        assert_eq!(pick(&[&x, &y]), Some(y.clone()), "full tie: the larger record bytes");
        assert_eq!(pick(&[&y, &x]), Some(y.clone()), "in either order");
        // Manual still beats a newer learned one, and seen beats first.
        let manual = EntryMeta::manual(1, None, None);
        assert_eq!(pick(&[&manual, &y]), Some(manual.clone()));
        let mut newer = early.clone();
        newer.seen = Some(501);
        assert_eq!(pick(&[&late, &newer]), Some(newer));
    }
}
