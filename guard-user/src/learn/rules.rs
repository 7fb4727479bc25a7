//! The learning rules: an incremental state machine fed with matched
//! responses, producing allow entries.
//!
//! 1. **Trust starts at the hints.** The root servers (or a hints file) are
//!    trusted name servers and class `DNS` entries; their names are known
//!    name-server names.
//! 2. **Delegations.** A matched `NOERROR` response from a trusted server with
//!    NS records (answer or authority section) whose owner encloses the
//!    question name (bailiwick: a server may only speak for names it was
//!    asked about) makes the NS target names *known name servers*. Their
//!    A/AAAA records in the same response (glue, any section but authority)
//!    become trusted servers with class `DNS`. Names without glue
//!    (out-of-bailiwick NS) are remembered; a later matched answer from a
//!    trusted server to a question about such a name (directly or through
//!    CNAMEs) makes its addresses trusted `DNS` entries.
//! 3. **Mail.** MX records in the answer section of a matched `NOERROR`
//!    response from a trusted server, owned by the question name or a CNAME
//!    target of it, make the exchange names *mail hosts*. Their A/AAAA in the
//!    same response (additional section), or in later matched answers by
//!    trusted servers (following CNAMEs), get class `SMTP`.
//! 4. **Everything else teaches nothing**: responses from servers that are not
//!    trusted, unmatched responses (never passed here), non-`NOERROR`
//!    responses, negative answers (NXDOMAIN/NODATA: SOA in authority, no
//!    data), records about names nobody asked for. Addresses that cannot be a
//!    remote server (unspecified, loopback, multicast, broadcast, link-local)
//!    are never entries.
//!
//! QNAME minimisation needs nothing special: the resolver asks `com. NS`,
//! `example.com. NS`, ...; each referral or NS answer is a delegation whose
//! owner encloses (equals) the question name.
//!
//! A capture that starts mid-stream: resolvers cache TLD delegations for
//! days, so servers the resolver already knew are never seen being
//! delegated, and their answers teach nothing under rule 4. Pass them as
//! extra hints (`--trust-initial FILE`, root-hints format) when that matters.
//! The same option serves a resolver that forwards to upstream resolvers:
//! list the forwarders, and their (recursive) MX and NS answers count.
//!
//! What trust means: a delegated server speaks for the names below its
//! delegation, so the owner of any domain can get its own name servers and
//! mail hosts registered, exactly as in the paper. The allow set holds what
//! DNS legitimately resolved, not a judgement of the destinations; it stops
//! hosts that connect to hard-coded addresses nobody resolved.
//!
//! Memory: the state holds the learned names and addresses only (about
//! 90 MB for 900k entries learned from a generated 1 GB capture).
use std::net::{IpAddr, Ipv6Addr};

use super::{
    FastMap, FastSet,
    dns::{self, Message, Section},
    hints::Hints,
};
use crate::policy::{AllowSet, Classes, Prefix};

/// Longest CNAME chain followed inside one answer.
const MAX_CHAIN: usize = 16;
/// Most NS or MX targets taken from one response (real ones carry at most
/// 13); bounds the per-response work a hostile trusted server can cause.
const MAX_TARGETS: usize = 64;

/// What one response taught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server is not trusted: nothing learned.
    Untrusted,
    /// Trusted, but the response carries no evidence (negative, error, or no
    /// relevant records).
    Nothing,
    /// Trusted: this many entries were added or gained a class.
    Learned(usize),
}

/// One answer record that taught (or confirmed) an entry: the evidence
/// the lifetime state keeps (`rpz::meta`: `ev=server|qname|qtype`, `ttl=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The address.
    pub ip: IpAddr,
    /// The classes this answer gives it.
    pub classes: Classes,
    /// The server that answered.
    pub server: IpAddr,
    /// The question name, dotted, with a trailing dot.
    pub qname: String,
    /// The question type.
    pub qtype: u16,
    /// The address record's TTL.
    pub ttl: u32,
}

/// A question name in the learner's label form (length-prefixed, lower
/// case) as text with a trailing dot; bytes outside `[a-z0-9-_*]` become `?`
/// (the evidence is for people, never parsed back into a name).
pub fn name_text(labels: &[u8]) -> String {
    let mut out = String::with_capacity(labels.len() + 1);
    let mut i = 0;
    while let Some(&len) = labels.get(i) {
        let end = (i + 1 + usize::from(len)).min(labels.len());
        for &b in &labels[i + 1..end] {
            let ok = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*');
            out.push(if ok { char::from(b) } else { '?' });
        }
        out.push('.');
        i = end;
        if len == 0 {
            break;
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// The learner state. Grows only with what was learned (names of name
/// servers and mail hosts, trusted addresses, the allow set).
#[derive(Debug)]
pub struct Learner {
    trusted: FastSet<IpAddr>,
    ns_names: FastSet<Box<[u8]>>,
    mx_names: FastSet<Box<[u8]>>,
    /// Every entry is a host: a hash map, not the ordered [`AllowSet`]
    /// (its B-tree was a tenth of the live learner's instructions).
    allow: FastMap<IpAddr, Classes>,
    new_entries: Option<Vec<(Prefix, Classes)>>,
    confirmations: Option<Vec<Confirmation>>,
    also_trusted: Option<AlsoTrusted>,
    // Scratch space reused between responses.
    arena: Vec<u8>,
    chain: Vec<(usize, usize)>,
    resp_ns: Vec<(usize, usize)>,
    resp_mx: Vec<(usize, usize)>,
    owner: Vec<u8>,
}

/// Servers trusted from outside the learner's own state (live learning:
/// the name servers the RPZ already holds, learned before a restart or by
/// another learner).
pub struct AlsoTrusted(pub Box<dyn Fn(IpAddr) -> bool + Send>);

impl std::fmt::Debug for AlsoTrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlsoTrusted(..)")
    }
}

/// True for addresses that can be a remote server.
pub fn is_learnable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_link_local())
        }
        IpAddr::V6(a) => {
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || link_local)
                && a.to_ipv4_mapped().is_none_or(|v4| is_learnable(v4.into()))
                && a != Ipv6Addr::UNSPECIFIED
        }
    }
}

impl Learner {
    /// A learner trusting `hints`; the hint addresses are `DNS` entries.
    pub fn new(hints: &Hints) -> Learner {
        let mut l = Learner {
            trusted: FastSet::default(),
            ns_names: FastSet::default(),
            mx_names: FastSet::default(),
            allow: FastMap::default(),
            new_entries: None,
            confirmations: None,
            also_trusted: None,
            arena: Vec::with_capacity(1024),
            chain: Vec::new(),
            resp_ns: Vec::new(),
            resp_mx: Vec::new(),
            owner: Vec::with_capacity(256),
        };
        for n in &hints.names {
            l.ns_names.insert(n.as_slice().into());
        }
        for a in &hints.addrs {
            l.add(*a, Classes::DNS);
        }
        l
    }

    /// Keep a list of entries added since the last [`Learner::take_new_entries`]
    /// (for live learning). Off by default to save memory in batch runs.
    pub fn record_new_entries(&mut self, on: bool) {
        self.new_entries = on.then(Vec::new);
    }

    /// Keep every answer record that teaches or confirms an entry (new or
    /// known), with its evidence, until [`Learner::take_confirmations`]:
    /// the lifetime state's `seen`, `ttl` and `ev`. Off by default.
    pub fn record_confirmations(&mut self, on: bool) {
        self.confirmations = on.then(Vec::new);
    }

    /// Confirmations since the last call (empty unless recording).
    pub fn take_confirmations(&mut self) -> Vec<Confirmation> {
        self.confirmations.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Entries added or extended since the last call (empty unless recording).
    pub fn take_new_entries(&mut self) -> Vec<(Prefix, Classes)> {
        self.new_entries.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// [`Learner::take_new_entries`] and [`Learner::take_confirmations`]
    /// into `entries` and `confirmations` (cleared first), handing their
    /// old buffers back to the recorder: the per-packet path allocates
    /// nothing for them once warm.
    pub fn swap_recorded(
        &mut self,
        entries: &mut Vec<(Prefix, Classes)>,
        confirmations: &mut Vec<Confirmation>,
    ) {
        entries.clear();
        confirmations.clear();
        if let Some(v) = self.new_entries.as_mut() {
            std::mem::swap(v, entries);
        }
        if let Some(v) = self.confirmations.as_mut() {
            std::mem::swap(v, confirmations);
        }
    }

    /// Also trust the servers `f` accepts (live learning: the RPZ's name
    /// servers). A resolver that restarts with a warm cache never shows
    /// the delegations it already knows, so without this a restarted
    /// learner would learn nothing from the TLD servers it asks.
    pub fn also_trust(&mut self, f: AlsoTrusted) {
        self.also_trusted = Some(f);
    }

    /// True when `ip` is a trusted name server.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.contains(&ip) || self.also_trusted.as_ref().is_some_and(|f| (f.0)(ip))
    }

    /// Trusted name servers known so far.
    pub fn trusted_count(&self) -> usize {
        self.trusted.len()
    }

    /// The allow set learned so far (built: a copy).
    pub fn allow_set(&self) -> AllowSet {
        self.allow.iter().map(|(ip, c)| (Prefix::host(*ip), *c)).collect()
    }

    /// Consumes the learner, returning the allow set.
    pub fn into_allow_set(self) -> AllowSet {
        let mut v: Vec<(Prefix, Classes)> =
            self.allow.into_iter().map(|(ip, c)| (Prefix::host(ip), c)).collect();
        // In order: the B-tree fills its nodes left to right.
        v.sort_unstable_by_key(|e| e.0);
        v.into_iter().collect()
    }

    fn add(&mut self, ip: IpAddr, classes: Classes) -> bool {
        if !is_learnable(ip) {
            return false;
        }
        if classes.contains(Classes::DNS) {
            self.trusted.insert(ip);
        }
        if classes.is_empty() {
            return false;
        }
        let e = self.allow.entry(ip).or_default();
        let before = *e;
        *e = e.union(classes);
        let changed = before != *e;
        if changed && let Some(v) = self.new_entries.as_mut() {
            v.push((Prefix::host(ip), classes));
        }
        changed
    }

    fn push_name(&mut self, msg: &Message<'_>, at: usize) -> Option<(usize, usize)> {
        let start = self.arena.len();
        match msg.name_into(at, &mut self.arena) {
            Ok(()) => Some((start, self.arena.len())),
            Err(_) => {
                self.arena.truncate(start);
                None
            }
        }
    }

    fn in_list(&self, list: &[(usize, usize)], name: &[u8]) -> bool {
        list.iter().any(|&(s, e)| &self.arena[s..e] == name)
    }

    /// Applies the rules to a *matched* response from `server`.
    pub fn learn(&mut self, server: IpAddr, msg: &Message<'_>) -> Outcome {
        if !self.is_trusted(server) {
            return Outcome::Untrusted;
        }
        let Some(q) = msg.question else { return Outcome::Nothing };
        if msg.header.rcode() != 0 || !msg.header.is_response() {
            return Outcome::Nothing;
        }
        self.arena.clear();
        self.chain.clear();
        self.resp_ns.clear();
        self.resp_mx.clear();
        let Some(qname) = self.push_name(msg, q.name_at) else { return Outcome::Nothing };
        self.chain.push(qname);
        let records = msg.records();
        // The question name and its CNAME targets within the answer.
        for _ in 0..MAX_CHAIN {
            let mut grew = false;
            for r in records.iter().filter(|r| r.section == Section::Answer && r.rtype == dns::TYPE_CNAME) {
                self.owner.clear();
                if msg.name_into(r.name_at, &mut self.owner).is_err() {
                    continue;
                }
                let owner = std::mem::take(&mut self.owner);
                let in_chain = self.in_list(&self.chain, &owner);
                self.owner = owner;
                if !in_chain {
                    continue;
                }
                let Some(t) = msg.target_at(r) else { continue };
                let Some(range) = self.push_name(msg, t) else { continue };
                let (s, e) = range;
                if self.chain.iter().any(|&(cs, ce)| self.arena[cs..ce] == self.arena[s..e]) {
                    self.arena.truncate(s);
                } else {
                    self.chain.push(range);
                    grew = true;
                }
            }
            if !grew || self.chain.len() > MAX_CHAIN {
                break;
            }
        }
        let (qs, qe) = qname;
        for r in records {
            let owner_ok = |l: &mut Learner| -> bool {
                l.owner.clear();
                msg.name_into(r.name_at, &mut l.owner).is_ok()
            };
            match (r.rtype, r.section) {
                (dns::TYPE_NS, Section::Answer | Section::Authority) => {
                    if self.resp_ns.len() >= MAX_TARGETS
                        || !owner_ok(self)
                        || !dns::is_subdomain(&self.arena[qs..qe], &self.owner)
                    {
                        continue;
                    }
                    if let Some(t) = msg.target_at(r)
                        && let Some((s, e)) = self.push_name(msg, t)
                    {
                        self.resp_ns.push((s, e));
                        if !self.ns_names.contains(&self.arena[s..e]) {
                            self.ns_names.insert(self.arena[s..e].into());
                        }
                    }
                }
                (dns::TYPE_MX, Section::Answer) => {
                    if self.resp_mx.len() >= MAX_TARGETS
                        || !owner_ok(self)
                        || !self.in_list(&self.chain, &self.owner)
                    {
                        continue;
                    }
                    if let Some(t) = msg.target_at(r)
                        && let Some((s, e)) = self.push_name(msg, t)
                    {
                        self.resp_mx.push((s, e));
                        if !self.mx_names.contains(&self.arena[s..e]) {
                            self.mx_names.insert(self.arena[s..e].into());
                        }
                    }
                }
                _ => {}
            }
        }
        // Is the question (or a name it aliases) a known name server or mail host?
        let chain_dns = self.chain.iter().any(|&(s, e)| self.ns_names.contains(&self.arena[s..e]));
        let chain_smtp = self.chain.iter().any(|&(s, e)| self.mx_names.contains(&self.arena[s..e]));
        if chain_dns || chain_smtp {
            // Later answers for the CNAME targets count too.
            for i in 0..self.chain.len() {
                let (s, e) = self.chain[i];
                if chain_dns && !self.ns_names.contains(&self.arena[s..e]) {
                    self.ns_names.insert(self.arena[s..e].into());
                }
                if chain_smtp && !self.mx_names.contains(&self.arena[s..e]) {
                    self.mx_names.insert(self.arena[s..e].into());
                }
            }
        }
        let mut learned = 0;
        for r in records {
            let ip: IpAddr = match r.rtype {
                dns::TYPE_A => match msg.a(r) {
                    Some(a) => a.into(),
                    None => continue,
                },
                dns::TYPE_AAAA => match msg.aaaa(r) {
                    Some(a) => a.into(),
                    None => continue,
                },
                _ => continue,
            };
            if r.section == Section::Authority {
                continue;
            }
            self.owner.clear();
            if msg.name_into(r.name_at, &mut self.owner).is_err() {
                continue;
            }
            let mut classes = Classes::NONE;
            if r.section == Section::Answer && self.in_list(&self.chain, &self.owner) {
                if chain_dns {
                    classes = classes.union(Classes::DNS);
                }
                if chain_smtp {
                    classes = classes.union(Classes::SMTP);
                }
            }
            if self.in_list(&self.resp_ns, &self.owner) {
                classes = classes.union(Classes::DNS);
            }
            if self.in_list(&self.resp_mx, &self.owner) {
                classes = classes.union(Classes::SMTP);
            }
            if !classes.is_empty() && self.add(ip, classes) {
                learned += 1;
            }
            if !classes.is_empty() && is_learnable(ip) && self.confirmations.is_some() {
                let ttl = msg.ttl(r).unwrap_or(0);
                let qname = name_text(&self.arena[qs..qe]);
                if let Some(v) = self.confirmations.as_mut() {
                    v.push(Confirmation { ip, classes, server, qname, qtype: q.qtype, ttl });
                }
            }
        }
        if learned > 0 { Outcome::Learned(learned) } else { Outcome::Nothing }
    }
}
