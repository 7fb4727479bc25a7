//! The Response Policy Zone: how allow entries are written as RPZ records.
//!
//! # Owner encoding
//!
//! * IPv4 hosts use the paper's encoding: the address literal in normal order
//!   under the policy zone, `131.112.12.18.rpz.example.com. A 127.0.0.25`.
//!   BIND treats it as a QNAME trigger, so the paper's check (a query for the
//!   IP literal at BIND) and a direct query of the zone both see it.
//! * IPv6 hosts and all prefixes use BIND's standard `rpz-ip` form:
//!   `<prefix length>.<address labels reversed>.rpz-ip.<zone>`, IPv6 groups in
//!   hex with `zz` for the longest run of zero groups (BIND ARM, "Response
//!   Policy Zone (RPZ) Rewriting"). Decoding accepts IPv4 hosts in either form.
//!
//! The record data holds the classes: `A 127.0.0.1` (DNS), `A 127.0.0.25` (SMTP),
//! one record per class. Beside them, at the same owner:
//!
//! * a TXT whose first string is `rpz-guard=1`: the entry's lifetime state
//!   ([`meta`]); any other TXT is counted as ignored;
//! * `CNAME .` (the RPZ NXDOMAIN action) instead of the `A` records: a
//!   **deny**, which beats any allow of the addresses it covers.
//!
//! Any other record (another CNAME target, local data) is counted as
//! ignored, never read as an allow.
//!
//! # Modules
//!
//! * [`zonefile`]: write the allow set as a zone file, parse zone files.
//! * [`meta`]: each entry's lifetime state (TXT beside the trigger).
//! * [`tsig`]: BIND key files → [`tsig::TsigKey`].
//! * [`transfer`]: AXFR, IXFR (deltas applied to a copy) and SOA serial.
//! * [`update`]: TSIG-signed RFC 2136 UPDATE pushes, batched.
//! * [`edit`]: operator edits of one owner (one UPDATE with prerequisites),
//!   and reading what one owner, or every owner covering an address, holds.
//! * [`notify`]: a NOTIFY listener that tells the daemon to run IXFR.
//! * [`snapshot`]: the local copy of the last zone applied, read at start.
//! * [`lookup`]: [`lookup::RpzClient`], the miss path's per-IP question.
//!
//! # BIND configuration this code expects (checked by `tests/rpz_bind.rs`)
//!
//! ```text
//! include "rpz.key";                       // tsig-keygen -a hmac-sha256 rpz-key
//! options {
//!     recursion yes;                       // only for the paper-style lookup
//!     response-policy { zone "rpz.example.com" min-update-interval 0; }
//!         qname-wait-recurse no;           // rewrites see updates at once
//!     dnssec-validation no;
//! };
//! zone "." { type primary; file "root.db"; };  // offline lab: NXDOMAIN fast
//! zone "rpz.example.com" {
//!     type primary; file "rpz.db";
//!     allow-transfer { key "rpz-key"; };   // AXFR/IXFR/SOA with the key
//!     allow-update { key "rpz-key"; };     // the learner's UPDATEs
//!     notify explicit;                     // daemons, NOTIFY signed with the key:
//!     also-notify { 192.0.2.10 port 5300 key "rpz-key"; };
//!     notify-delay 0;                      // default 5 s delays NOTIFY
//!     max-ixfr-ratio unlimited;            // else small zones get AXFR-style IXFR
//! };
//! ```
//!
//! Observed with BIND 9.18: a wrong secret is answered `NOTAUTH` with TSIG
//! error `BADSIG`, an unknown key `BADKEY`, no key `REFUSED`; rewritten
//! (paper-style) answers carry at most `max-policy-ttl` (5 s by default).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::policy::{Classes, Prefix};

pub mod edit;
pub mod lookup;
pub mod meta;
pub mod notify;
pub mod snapshot;
pub mod transfer;
pub mod tsig;
pub mod update;
mod wire;
pub mod zonefile;

/// TTL of the records we write (zone file and UPDATE). Short, so resolvers
/// and caches follow removals quickly.
pub const RECORD_TTL: u32 = 60;

/// How many ignored records are kept as examples in [`Ignored::samples`].
pub const IGNORED_SAMPLES: usize = 32;

/// Why a record of the policy zone is not an allow entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// The owner is not an IP trigger we understand.
    Owner(OwnerError),
    /// The type is not `A` (e.g. `CNAME .` = the NXDOMAIN policy).
    OtherType(String),
    /// An `A` record whose address is neither `127.0.0.1` nor `127.0.0.25`.
    OtherAddress(Ipv4Addr),
    /// A TXT that is not rpz-guard lifetime data (somebody else's).
    ForeignTxt,
    /// rpz-guard lifetime data that cannot be read (the entry stays, as
    /// if it had no TXT).
    BadMeta(meta::MetaError),
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreReason::Owner(e) => write!(f, "{e}"),
            IgnoreReason::OtherType(t) => write!(f, "type {t} is not an allow answer"),
            IgnoreReason::OtherAddress(a) => write!(f, "A {a} is neither 127.0.0.1 nor 127.0.0.25"),
            IgnoreReason::ForeignTxt => f.write_str("TXT is not rpz-guard lifetime data"),
            IgnoreReason::BadMeta(e) => write!(f, "{e}"),
        }
    }
}

/// One record that was not taken into the allow set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredRecord {
    /// The owner name as found.
    pub owner: String,
    /// Why it was ignored.
    pub reason: IgnoreReason,
}

/// Records that were not allow entries: how many, and the first few.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignored {
    /// Number of ignored records.
    pub count: usize,
    /// The first [`IGNORED_SAMPLES`] of them.
    pub samples: Vec<IgnoredRecord>,
}

impl Ignored {
    /// Counts one ignored record, keeping it as a sample while there is room.
    pub fn push(&mut self, owner: &str, reason: IgnoreReason) {
        self.count += 1;
        if self.samples.len() < IGNORED_SAMPLES {
            self.samples.push(IgnoredRecord { owner: owner.to_owned(), reason });
        }
    }
}

/// The data of a zone record, as far as the allow set cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordData<'a> {
    /// An `A` record.
    A(Ipv4Addr),
    /// A `CNAME`: is its target the root (`CNAME .`, a deny)?
    Cname {
        /// The target is `.`.
        root: bool,
    },
    /// A `TXT`, by its character-strings (wire bytes, no escapes).
    Txt(Vec<&'a [u8]>),
    /// Any other type, by mnemonic.
    Other(&'a str),
}

/// What one zone record means for the allow set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Classified {
    /// An allow entry: this prefix holds this class.
    Entry(Prefix, Classes),
    /// A TXT record at this prefix's owner (its raw strings): its
    /// lifetime state when it is ours, else why not (foreign, unreadable).
    /// The mirror keeps every one, so that edits name the whole RRset.
    Txt(Prefix, meta::TxtData, Result<meta::EntryMeta, IgnoreReason>),
    /// A deny of this prefix (`CNAME .`).
    Deny(Prefix),
    /// A record at the zone apex (SOA, NS, ...): structure, not policy.
    Apex,
    /// Anything else.
    Ignored(IgnoreReason),
}

/// Classifies one record of the policy zone `zone`. Never guesses: only an
/// IP trigger with `A 127.0.0.1` / `A 127.0.0.25` is an entry.
pub(crate) fn classify(owner: &str, zone: &str, data: RecordData<'_>) -> Classified {
    if canonical(owner) == canonical(zone) {
        return Classified::Apex;
    }
    let on_owner = |f: &dyn Fn(Prefix) -> Classified| match decode_owner(owner, zone) {
        Ok(p) => f(p),
        Err(e) => Classified::Ignored(IgnoreReason::Owner(e)),
    };
    match data {
        RecordData::Other(t) => Classified::Ignored(IgnoreReason::OtherType(t.to_owned())),
        RecordData::Cname { root: false } => Classified::Ignored(IgnoreReason::OtherType("CNAME".into())),
        RecordData::Cname { root: true } => on_owner(&Classified::Deny),
        RecordData::Txt(strings) => {
            let decoded = match meta::EntryMeta::decode(&strings) {
                Ok(m) => Ok(m),
                Err(meta::MetaError::NotOurs) => Err(IgnoreReason::ForeignTxt),
                Err(e) => Err(IgnoreReason::BadMeta(e)),
            };
            let raw: meta::TxtData = strings.iter().map(|s| s.to_vec()).collect();
            on_owner(&|p| Classified::Txt(p, raw.clone(), decoded.clone()))
        }
        RecordData::A(a) => match Classes::from_rpz_answer(a) {
            Some(c) => on_owner(&|p| Classified::Entry(p, c)),
            None => Classified::Ignored(IgnoreReason::OtherAddress(a)),
        },
    }
}

/// Why an owner name is not an allow entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// The name is not below the policy zone.
    #[error("{owner} is not inside zone {zone}")]
    OutsideZone {
        /// The owner name.
        owner: String,
        /// The policy zone origin.
        zone: String,
    },
    /// The name is a trigger of a kind we do not use (QNAME of a domain,
    /// `rpz-nsip`, `rpz-client-ip`, ...).
    #[error("{owner} is not an IP trigger")]
    NotIpTrigger {
        /// The owner name.
        owner: String,
    },
    /// The name looks like an IP trigger but its labels are invalid.
    #[error("{owner} is a malformed IP trigger: {why}")]
    Malformed {
        /// The owner name.
        owner: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Lower-cases `name` and strips one trailing dot.
fn canonical(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Why `prefix` cannot be written into the policy zone, if it cannot: a
/// zero-length prefix would allow every destination, and the reader
/// ([`decode_owner`]) refuses it, so writers refuse it too rather than
/// write an entry that silently vanishes when read back.
#[expect(clippy::len_zero, reason = "Prefix::len is a prefix length in bits, not a size")]
pub fn unencodable(prefix: &Prefix) -> Option<String> {
    (prefix.len() == 0).then(|| {
        format!("{prefix} cannot be an RPZ allow entry: a zero-length prefix would allow every destination")
    })
}

/// The owner name (fully qualified, with trailing dot) for `prefix` in `zone`.
pub fn encode_owner(prefix: &Prefix, zone: &str) -> String {
    let zone = canonical(zone);
    match prefix.addr() {
        IpAddr::V4(a) if prefix.is_host() => format!("{a}.{zone}."),
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.{}.rpz-ip.{zone}.", prefix.len(), o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => format!("{}.{}.rpz-ip.{zone}.", prefix.len(), v6_labels_reversed(a)),
    }
}

/// IPv6 groups, least significant first, with `zz` for the longest zero run.
fn v6_labels_reversed(a: Ipv6Addr) -> String {
    let g = a.segments();
    // Longest run of zero groups (length >= 2, like RFC 5952's `::`).
    let (mut best, mut best_len, mut i) = (0usize, 0usize, 0usize);
    while i < 8 {
        if g[i] == 0 {
            let start = i;
            while i < 8 && g[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    let mut labels: Vec<String> = Vec::with_capacity(8);
    let mut j = 0;
    while j < 8 {
        if best_len >= 2 && j == best {
            labels.push("zz".into());
            j += best_len;
        } else {
            labels.push(format!("{:x}", g[j]));
            j += 1;
        }
    }
    labels.reverse();
    labels.join(".")
}

/// The allow-entry prefix an owner name in `zone` stands for.
pub fn decode_owner(owner: &str, zone: &str) -> Result<Prefix, OwnerError> {
    let name = canonical(owner);
    let zone_c = canonical(zone);
    let rel = if zone_c.is_empty() {
        name.as_str()
    } else {
        name.strip_suffix(zone_c.as_str())
            .and_then(|r| r.strip_suffix('.'))
            .ok_or_else(|| OwnerError::OutsideZone { owner: owner.to_owned(), zone: zone.to_owned() })?
    };
    let labels: Vec<&str> = rel.split('.').collect();
    let malformed = |why| OwnerError::Malformed { owner: owner.to_owned(), why };
    match labels.split_last() {
        Some((&"rpz-ip", rest)) => decode_rpz_ip(rest).map_err(malformed),
        _ if labels.len() == 4
            && labels.iter().all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())) =>
        {
            rel.parse::<Ipv4Addr>()
                .map(|a| Prefix::host(IpAddr::V4(a)))
                .map_err(|_| malformed("octet out of range"))
        }
        _ => Err(OwnerError::NotIpTrigger { owner: owner.to_owned() }),
    }
}

/// Decodes the labels before `rpz-ip`: `<len>.<reversed address labels>`.
fn decode_rpz_ip(labels: &[&str]) -> Result<Prefix, &'static str> {
    let (len, addr) = labels.split_first().ok_or("missing prefix length")?;
    let len: u8 = len.parse().map_err(|_| "prefix length is not a number")?;
    let mut parts: Vec<&str> = addr.to_vec();
    parts.reverse();
    let ip = if parts.len() == 4 && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        IpAddr::V4(parts.join(".").parse::<Ipv4Addr>().map_err(|_| "bad IPv4 octet")?)
    } else {
        let mut groups: Vec<u16> = Vec::with_capacity(8);
        let mut zz_at = None;
        for p in &parts {
            if *p == "zz" {
                if zz_at.is_some() {
                    return Err("more than one zz");
                }
                zz_at = Some(groups.len());
            } else {
                if p.is_empty() || p.len() > 4 {
                    return Err("bad IPv6 group");
                }
                groups.push(u16::from_str_radix(p, 16).map_err(|_| "bad IPv6 group")?);
            }
        }
        if let Some(at) = zz_at {
            if groups.len() > 6 {
                return Err("zz stands for no groups");
            }
            let fill = 8 - groups.len();
            groups.splice(at..at, std::iter::repeat_n(0, fill));
        }
        let g: [u16; 8] = groups.try_into().map_err(|_| "IPv6 address needs 8 groups")?;
        IpAddr::V6(Ipv6Addr::new(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]))
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max || len == 0 {
        return Err("prefix length out of range");
    }
    let prefix = Prefix::new(ip, len).map_err(|_| "prefix length out of range")?;
    if prefix.addr() != ip {
        return Err("host bits set beyond the prefix length");
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift) for no-panic checks.
    pub(crate) fn junk(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 0xff) as u8
            })
            .collect()
    }

    #[test]
    fn junk_never_panics_the_parsers() {
        let z = "rpz.example.com";
        let pieces: &[&str] = &[
            "(",
            ")",
            "\"",
            ";",
            "\n",
            " ",
            "\t",
            "$ORIGIN",
            "@",
            "A",
            "SOA",
            "127.0.0.1",
            "\\",
            "1.2.3.4",
            "{",
            "}",
            "key",
            "*",
        ];
        for seed in 0..2000u64 {
            let bytes = junk(seed, (seed % 200) as usize);
            let text = String::from_utf8_lossy(&bytes);
            let _ = zonefile::parse_zone(&text, z);
            let _ = tsig::TsigKey::parse_all(&text);
            let _ = decode_owner(&text, z);
            // Token soup: syntactically closer to real input.
            let soup: String =
                bytes.iter().map(|b| pieces[usize::from(*b) % pieces.len()]).collect::<Vec<_>>().join(" ");
            let _ = zonefile::parse_zone(&soup, z);
            let _ = tsig::TsigKey::parse_all(&soup);
        }
    }

    const Z: &str = "rpz.example.com";

    fn p(s: &str) -> Prefix {
        s.parse().expect("test prefix")
    }

    #[test]
    fn ipv4_host_uses_paper_encoding() {
        assert_eq!(encode_owner(&p("131.112.12.18"), Z), "131.112.12.18.rpz.example.com.");
        assert_eq!(decode_owner("131.112.12.18.rpz.example.com.", Z), Ok(p("131.112.12.18")));
        assert_eq!(decode_owner("131.112.12.18.RPZ.Example.COM", "rpz.example.com."), Ok(p("131.112.12.18")));
    }

    #[test]
    fn ipv4_rpz_ip_forms() {
        assert_eq!(encode_owner(&p("192.0.2.0/24"), Z), "24.0.2.0.192.rpz-ip.rpz.example.com.");
        assert_eq!(decode_owner("24.0.2.0.192.rpz-ip.rpz.example.com", Z), Ok(p("192.0.2.0/24")));
        assert_eq!(decode_owner("32.1.2.0.192.rpz-ip.rpz.example.com", Z), Ok(p("192.0.2.1")));
    }

    #[test]
    fn ipv6_rpz_ip_forms() {
        let cases = [
            ("2001:db8::1", "128.1.zz.db8.2001.rpz-ip.rpz.example.com."),
            ("2001:db8::/32", "32.zz.db8.2001.rpz-ip.rpz.example.com."),
            ("2001:db8:0:1:0:0:0:5", "128.5.zz.1.0.db8.2001.rpz-ip.rpz.example.com."),
            ("2001:db8:1:2:3:4:5:6", "128.6.5.4.3.2.1.db8.2001.rpz-ip.rpz.example.com."),
        ];
        for (prefix, owner) in cases {
            assert_eq!(encode_owner(&p(prefix), Z), owner, "encode {prefix}");
            assert_eq!(decode_owner(owner, Z), Ok(p(prefix)), "decode {owner}");
        }
    }

    #[test]
    fn other_names_are_not_entries() {
        assert!(matches!(
            decode_owner("www.example.net.rpz.example.com", Z),
            Err(OwnerError::NotIpTrigger { .. })
        ));
        assert!(matches!(decode_owner("1.2.3.4.other.zone", Z), Err(OwnerError::OutsideZone { .. })));
        assert!(matches!(decode_owner("1.2.3.999.rpz.example.com", Z), Err(OwnerError::Malformed { .. })));
        assert!(matches!(
            decode_owner("24.1.2.0.192.rpz-ip.rpz.example.com", Z),
            Err(OwnerError::Malformed { .. })
        ));
        assert!(matches!(
            decode_owner("129.zz.rpz-ip.rpz.example.com", Z),
            Err(OwnerError::Malformed { .. })
        ));
        assert!(matches!(
            decode_owner("128.zz.1.zz.rpz-ip.rpz.example.com", Z),
            Err(OwnerError::Malformed { .. })
        ));
    }
}
