//! Lifetime state of an allow entry, kept in the RPZ itself as a TXT RRset
//! beside the trigger (same owner, [`super::encode_owner`]).
//!
//! ```text
//! 198.51.100.25.rpz.example.com. 60 IN A   127.0.0.25
//! 198.51.100.25.rpz.example.com. 60 IN TXT "rpz-guard=1" "src=learned" "first=1796601600"
//!                                          "seen=1796688000" "ttl=3600" "ev=192.0.2.1|mx.example.net.|A"
//! ```
//!
//! Why in the zone: every learner and router already follows it (IXFR),
//! BIND keeps it across restarts, and an `A` query for the trigger still
//! gets the `A` alone, so the paper's check is unchanged. One TXT record,
//! one `key=value` per character-string:
//!
//! * `rpz-guard=1` first: the format version. A TXT without it is not ours
//!   (counted, ignored, never fails a load).
//! * `src=learned|manual`; `first=`, `seen=` Unix seconds (first learned,
//!   last confirmed by DNS evidence; manual: `first` = creation); `ttl=` the
//!   record TTL that taught the entry; `ev=server|qname|qtype` the answer
//!   that last confirmed it; `exp=` Unix seconds (manual entries with an
//!   expiry only); `note=` an operator comment of at most [`MAX_NOTE`] bytes.
//! * Unknown keys are kept and written back (forward compatibility).
//!
//! A zone written by an older version has no TXT: such an entry is learned,
//! with `first` and `seen` unknown ([`EntryMeta::default`]).
//!
//! One TXT of ours per owner is the rule, but a zone may hold more (two
//! learners raced before writers were guarded, or an operator's nsupdate):
//! the mirror keeps every TXT record of an owner, foreign ones too
//! ([`crate::policy::AllowSet::txt`]), each as its raw bytes ([`TxtData`]);
//! the manual one counts, else the newest `seen`, then the larger `first`,
//! then the larger record bytes (so the choice never depends on the order
//! the records arrived in); the next refresh or removal replaces or deletes
//! them all, under a prerequisite naming the whole RRset.
//!
//! A **deny** is `CNAME .` at the trigger (the RPZ NXDOMAIN action). A
//! CNAME owner holds no other data, so a deny has no TXT.

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

pub use super::{decode_owner, encode_owner};

/// The first character-string of every TXT we write.
pub const VERSION_TAG: &str = "rpz-guard=1";
/// Most bytes of a `note=` value.
pub const MAX_NOTE: usize = 200;
/// Most bytes of one DNS character-string (RFC 1035 3.3).
pub const MAX_STRING: usize = 255;

/// One TXT record's character-strings as the zone holds them: raw bytes,
/// no zone-file escapes, not necessarily UTF-8 (somebody else's record may
/// hold any byte, and an UPDATE prerequisite naming it must hold the same).
pub type TxtData = Vec<Vec<u8>>;

/// Who made an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Learned from DNS evidence (live learning or a `learn` run); ages.
    #[default]
    Learned,
    /// Written by an operator (`rpz-guard allow`); ages only with `exp`.
    Manual,
}

impl Source {
    /// The `src=` value.
    pub const fn name(self) -> &'static str {
        match self {
            Source::Learned => "learned",
            Source::Manual => "manual",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The DNS answer that (last) confirmed a learned entry: `ev=server|qname|qtype`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Evidence {
    /// The server that answered.
    pub server: IpAddr,
    /// The question name, absolute with a trailing dot.
    pub qname: String,
    /// The question type mnemonic (`A`, `MX`, `NS`, ...).
    pub qtype: String,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}|{}", self.server, self.qname, self.qtype)
    }
}

/// The lifetime state of one allow entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Learned or manual.
    pub source: Source,
    /// First learned (manual: created), Unix seconds.
    pub first: Option<u64>,
    /// Last confirmed by DNS evidence, Unix seconds.
    pub seen: Option<u64>,
    /// The record TTL that taught the entry, seconds.
    pub ttl: Option<u32>,
    /// The answer that last confirmed it.
    pub evidence: Option<Evidence>,
    /// Manual entries: when the entry expires, Unix seconds.
    pub expires: Option<u64>,
    /// Operator comment.
    pub note: Option<String>,
    /// `key=value` strings of keys this version does not know, in order.
    pub extra: Vec<String>,
}

/// A TXT that cannot be read as, or written from, an [`EntryMeta`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The TXT does not start with [`VERSION_TAG`]: somebody else's data.
    #[error("TXT is not rpz-guard lifetime data (no {VERSION_TAG} first)")]
    NotOurs,
    /// Ours, but a version this build does not read.
    #[error("rpz-guard lifetime data of version {0} (this version reads 1)")]
    Version(String),
    /// Ours, but a field is wrong.
    #[error("lifetime field {key}={value:?}: {why}")]
    Field {
        /// The key.
        key: String,
        /// The value as found (lossy UTF-8, cut to 64 bytes).
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

fn field(key: &str, value: &str, why: &'static str) -> MetaError {
    let mut v = value.to_owned();
    if v.len() > 64 {
        let mut cut = 64;
        while !v.is_char_boundary(cut) {
            cut -= 1;
        }
        v.truncate(cut);
    }
    MetaError::Field { key: key.to_owned(), value: v, why }
}

impl EntryMeta {
    /// A freshly learned entry: first = seen = `now`.
    pub fn learned(now: u64, ttl: u32, evidence: Option<Evidence>) -> Self {
        EntryMeta {
            source: Source::Learned,
            first: Some(now),
            seen: Some(now),
            ttl: Some(ttl),
            evidence,
            ..EntryMeta::default()
        }
    }

    /// A manual entry created `now`, with an optional expiry and comment.
    /// The note is checked when encoded ([`EntryMeta::encode`]).
    pub fn manual(now: u64, expires: Option<u64>, note: Option<String>) -> Self {
        EntryMeta { source: Source::Manual, first: Some(now), expires, note, ..EntryMeta::default() }
    }

    /// When this entry may be removed by ageing, Unix seconds, given the
    /// class's `max_age`: learned entries at `seen + max(max_age, ttl)`
    /// (`None` while `seen` is unknown: the clock starts when a daemon
    /// first writes it); manual ones at `exp`, never without it.
    pub fn ages_out_at(&self, max_age_secs: u64) -> Option<u64> {
        match self.source {
            Source::Learned => {
                let ttl = u64::from(self.ttl.unwrap_or(0));
                self.seen.map(|s| s.saturating_add(max_age_secs.max(ttl)))
            }
            Source::Manual => self.expires,
        }
    }

    /// The TXT character-strings, [`VERSION_TAG`] first. Errors when a
    /// string cannot be written (note too long or with control characters,
    /// an unknown key without `=`). An evidence longer than one string keeps
    /// the rightmost labels of its qname, marked with a leading `..`.
    pub fn encode(&self) -> Result<Vec<String>, MetaError> {
        let mut out = vec![VERSION_TAG.to_owned(), format!("src={}", self.source)];
        let mut num = |k: &str, v: Option<u64>| {
            if let Some(v) = v {
                out.push(format!("{k}={v}"));
            }
        };
        num("first", self.first);
        num("seen", self.seen);
        num("ttl", self.ttl.map(u64::from));
        if let Some(ev) = &self.evidence {
            out.push(encode_evidence(ev)?);
        }
        if let Some(exp) = self.expires {
            out.push(format!("exp={exp}"));
        }
        if let Some(note) = &self.note {
            check_note(note)?;
            out.push(format!("note={note}"));
        }
        for x in &self.extra {
            let Some((k, _)) = x.split_once('=') else {
                return Err(field(x, "", "unknown field without '='"));
            };
            if k.is_empty() || x.len() > MAX_STRING {
                return Err(field(k, x, "unknown field cannot be written back"));
            }
            out.push(x.clone());
        }
        Ok(out)
    }

    /// [`EntryMeta::encode`] as the record's bytes ([`TxtData`]).
    pub fn encode_txt(&self) -> Result<TxtData, MetaError> {
        Ok(self.encode()?.into_iter().map(String::into_bytes).collect())
    }

    /// Reads the character-strings of one TXT record (wire form: raw bytes,
    /// no zone-file escapes). [`MetaError::NotOurs`] for somebody else's TXT.
    pub fn decode<S: AsRef<[u8]>>(strings: &[S]) -> Result<EntryMeta, MetaError> {
        let mut it = strings.iter().map(AsRef::as_ref);
        let first = it.next().ok_or(MetaError::NotOurs)?;
        match first.strip_prefix(b"rpz-guard=") {
            Some(b"1") => {}
            Some(v) => return Err(MetaError::Version(String::from_utf8_lossy(v).into_owned())),
            None => return Err(MetaError::NotOurs),
        }
        let mut m = EntryMeta::default();
        let mut src = None;
        let mut seen_keys: Vec<&str> = Vec::new();
        for raw in it {
            let s = std::str::from_utf8(raw)
                .map_err(|_| field("?", &String::from_utf8_lossy(raw), "not UTF-8"))?;
            let (k, v) = s.split_once('=').ok_or_else(|| field(s, "", "not key=value"))?;
            let known = matches!(k, "src" | "first" | "seen" | "ttl" | "ev" | "exp" | "note");
            if known {
                if seen_keys.contains(&k) {
                    return Err(field(k, v, "given twice"));
                }
                seen_keys.push(k);
            }
            let secs = || v.parse::<u64>().map_err(|_| field(k, v, "not Unix seconds"));
            match k {
                "src" => {
                    src = Some(match v {
                        "learned" => Source::Learned,
                        "manual" => Source::Manual,
                        _ => return Err(field(k, v, "neither learned nor manual")),
                    });
                }
                "first" => m.first = Some(secs()?),
                "seen" => m.seen = Some(secs()?),
                "exp" => m.expires = Some(secs()?),
                "ttl" => m.ttl = Some(v.parse().map_err(|_| field(k, v, "not a TTL in seconds"))?),
                "ev" => m.evidence = Some(decode_evidence(v)?),
                "note" => {
                    check_note(v)?;
                    m.note = Some(v.to_owned());
                }
                "" => return Err(field(k, v, "empty key")),
                _ => m.extra.push(s.to_owned()),
            }
        }
        m.source = src.ok_or_else(|| field("src", "", "missing"))?;
        Ok(m)
    }

    /// The TXT record data in zone-file form: quoted strings, `"` and `\`
    /// escaped, other bytes outside printable ASCII as `\DDD`.
    pub fn to_zone_text(&self) -> Result<String, MetaError> {
        Ok(self.encode()?.iter().map(|s| quote(s.as_bytes())).collect::<Vec<_>>().join(" "))
    }
}

/// Seconds since the Unix epoch now (the clock of `first`, `seen`, `exp`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn check_note(note: &str) -> Result<(), MetaError> {
    if note.len() > MAX_NOTE {
        return Err(field("note", note, "longer than 200 bytes"));
    }
    if note.chars().any(char::is_control) {
        return Err(field("note", note, "contains control characters"));
    }
    Ok(())
}

fn encode_evidence(ev: &Evidence) -> Result<String, MetaError> {
    if ev.qtype.is_empty() || !ev.qtype.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(field("ev", &ev.qtype, "question type is not a mnemonic"));
    }
    if ev.qname.is_empty() || ev.qname.contains('|') || ev.qname.chars().any(char::is_control) {
        return Err(field("ev", &ev.qname, "question name with '|' or control characters"));
    }
    let s = format!("ev={ev}");
    if s.len() <= MAX_STRING {
        return Ok(s);
    }
    // Keep the rightmost labels: the registered domain says most.
    let head = format!("ev={}|..", ev.server);
    let tail = format!("|{}", ev.qtype);
    let room = MAX_STRING - head.len() - tail.len();
    let name = &ev.qname;
    let mut start = name.len() - room;
    while !name.is_char_boundary(start) {
        start += 1;
    }
    let cut = name[start..].find('.').map_or(&name[start..], |i| &name[start + i..]);
    Ok(format!("{head}{cut}{tail}"))
}

fn decode_evidence(v: &str) -> Result<Evidence, MetaError> {
    let mut parts = v.splitn(3, '|');
    let (Some(server), Some(qname), Some(qtype)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(field("ev", v, "not server|qname|qtype"));
    };
    let server = server.parse::<IpAddr>().map_err(|_| field("ev", v, "server is not an IP address"))?;
    if qname.is_empty() || qtype.is_empty() || qtype.contains('|') {
        return Err(field("ev", v, "not server|qname|qtype"));
    }
    Ok(Evidence { server, qname: qname.to_owned(), qtype: qtype.to_owned() })
}

/// One character-string in zone-file form (RFC 1035 5.1).
pub fn quote(bytes: &[u8]) -> String {
    let mut o = String::with_capacity(bytes.len() + 2);
    o.push('"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                o.push('\\');
                o.push(char::from(b));
            }
            0x20..=0x7e => o.push(char::from(b)),
            _ => o.push_str(&format!("\\{b:03}")),
        }
    }
    o.push('"');
    o
}

/// The bytes of a zone-file character-string as the lexer keeps it
/// (quotes removed, escapes kept): `\X` is `X`, `\DDD` the byte DDD.
/// `None` for a `\DDD` above 255 or a trailing backslash.
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let d = b.get(i + 1..i + 4).filter(|d| d.iter().all(u8::is_ascii_digit));
        if let Some(d) = d {
            let v = d.iter().fold(0u16, |a, x| a * 10 + u16::from(x - b'0'));
            out.push(u8::try_from(v).ok()?);
            i += 4;
        } else {
            out.push(*b.get(i + 1)?);
            i += 2;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn strs(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn contract_example_decodes() {
        let m = EntryMeta::decode(&strs(&[
            "rpz-guard=1",
            "src=learned",
            "first=1796601600",
            "seen=1796688000",
            "ttl=3600",
            "ev=192.0.2.1|mx.example.net.|A",
        ]))
        .expect("decode");
        assert_eq!(m.source, Source::Learned);
        assert_eq!((m.first, m.seen, m.ttl), (Some(1_796_601_600), Some(1_796_688_000), Some(3600)));
        let ev = m.evidence.clone().expect("ev");
        assert_eq!(ev.server, "192.0.2.1".parse::<IpAddr>().expect("ip"));
        assert_eq!((ev.qname.as_str(), ev.qtype.as_str()), ("mx.example.net.", "A"));
        assert_eq!(
            m.to_zone_text().expect("text"),
            "\"rpz-guard=1\" \"src=learned\" \"first=1796601600\" \"seen=1796688000\" \"ttl=3600\" \"ev=192.0.2.1|mx.example.net.|A\""
        );
    }

    #[test]
    fn foreign_and_bad_txt() {
        assert_eq!(EntryMeta::decode(&strs(&["v=spf1 -all"])), Err(MetaError::NotOurs));
        assert_eq!(EntryMeta::decode::<&[u8]>(&[]), Err(MetaError::NotOurs));
        assert_eq!(EntryMeta::decode(&strs(&["rpz-guard=2", "src=x"])), Err(MetaError::Version("2".into())));
        let bad = [
            &["rpz-guard=1"][..],
            &["rpz-guard=1", "src=robot"],
            &["rpz-guard=1", "src=learned", "seen=yesterday"],
            &["rpz-guard=1", "src=learned", "seen=1", "seen=2"],
            &["rpz-guard=1", "src=learned", "ttl=-1"],
            &["rpz-guard=1", "src=learned", "ev=nothost|a.|A"],
            &["rpz-guard=1", "src=learned", "ev=192.0.2.1|a."],
            &["rpz-guard=1", "src=learned", "novalue"],
            &["rpz-guard=1", "src=manual", "=x"],
        ];
        for b in bad {
            assert!(matches!(EntryMeta::decode(&strs(b)), Err(MetaError::Field { .. })), "{b:?}");
        }
        assert!(matches!(
            EntryMeta::decode(&[b"rpz-guard=1".to_vec(), b"src=manual".to_vec(), vec![b'n', b'=', 0xff]]),
            Err(MetaError::Field { why: "not UTF-8", .. })
        ));
    }

    #[test]
    fn unknown_keys_are_kept_in_order() {
        let m = EntryMeta::decode(&strs(&["rpz-guard=1", "zz=1", "src=manual", "owner=ops=team"]))
            .expect("decode");
        assert_eq!(m.extra, vec!["zz=1".to_owned(), "owner=ops=team".to_owned()]);
        let back = m.encode().expect("encode");
        assert_eq!(back, vec!["rpz-guard=1", "src=manual", "zz=1", "owner=ops=team"]);
    }

    #[test]
    fn notes_are_bounded_and_escaped() {
        let m = EntryMeta::manual(10, Some(20), Some("say \"hi\" \\ o/".into()));
        assert_eq!(
            m.to_zone_text().expect("text"),
            r#""rpz-guard=1" "src=manual" "first=10" "exp=20" "note=say \"hi\" \\ o/""#
        );
        let long = EntryMeta::manual(1, None, Some("x".repeat(MAX_NOTE + 1)));
        assert!(matches!(long.encode(), Err(MetaError::Field { .. })));
        let ctl = EntryMeta::manual(1, None, Some("a\nb".into()));
        assert!(matches!(ctl.encode(), Err(MetaError::Field { .. })));
        assert!(EntryMeta::manual(1, None, Some("é".repeat(MAX_NOTE / 2))).encode().is_ok());
    }

    #[test]
    fn long_evidence_keeps_rightmost_labels() {
        let label = "a".repeat(60);
        let qname = format!("{label}.{label}.{label}.{label}.example.net.");
        let ev = Evidence { server: "2001:db8::53".parse().expect("ip"), qname, qtype: "MX".into() };
        let m = EntryMeta::learned(5, 60, Some(ev));
        let strings = m.encode().expect("encode");
        let e = strings.iter().find(|s| s.starts_with("ev=")).expect("ev");
        assert!(e.len() <= MAX_STRING, "{}", e.len());
        assert!(e.starts_with("ev=2001:db8::53|..") && e.ends_with(".example.net.|MX"), "{e}");
        let back = EntryMeta::decode(&strings).expect("decode");
        assert!(back.evidence.expect("ev").qname.starts_with(".."));
    }

    #[test]
    fn ageing_deadline() {
        let mut m = EntryMeta::learned(1000, 60, None);
        assert_eq!(m.ages_out_at(500), Some(1500));
        m.ttl = Some(3600);
        assert_eq!(m.ages_out_at(500), Some(4600), "never before the teaching TTL");
        assert_eq!(EntryMeta::default().ages_out_at(500), None, "seen unknown: the clock has not started");
        assert_eq!(EntryMeta::manual(1, None, None).ages_out_at(1), None);
        assert_eq!(EntryMeta::manual(1, Some(9), None).ages_out_at(1), Some(9));
    }

    #[test]
    fn zone_text_unescapes() {
        assert_eq!(unescape(r#"a\"b\\c\065\255"#), Some(b"a\"b\\cA\xff".to_vec()));
        assert_eq!(unescape(r"\256"), None);
        assert_eq!(unescape("x\\"), None);
        assert_eq!(quote(b"\x01\"\xff"), r#""\001\"\255""#);
    }

    /// The quoted strings of a zone-file TXT rdata, unescaped.
    fn split_quoted(text: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '"' {
                continue;
            }
            let mut raw = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => {
                        raw.push('\\');
                        raw.extend(chars.next());
                    }
                    c => raw.push(c),
                }
            }
            out.push(unescape(&raw).expect("unescape"));
        }
        out
    }

    fn arb_meta() -> impl Strategy<Value = EntryMeta> {
        let ip =
            prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from),];
        let ev = (ip, "([a-z0-9-]{1,20}\\.){1,4}", "[A-Z]{1,6}")
            .prop_map(|(server, qname, qtype)| Evidence { server, qname, qtype });
        (
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(ev),
            proptest::option::of(any::<u64>()),
            proptest::option::of("[^\\p{Cc}]{0,50}"),
            proptest::collection::vec("[a-y][a-z]{0,5}=[ -~]{0,20}", 0..3),
        )
            .prop_map(|(manual, first, seen, ttl, evidence, expires, note, extra)| EntryMeta {
                source: if manual { Source::Manual } else { Source::Learned },
                first,
                seen,
                ttl,
                evidence,
                expires,
                note: note.filter(|n| n.len() <= MAX_NOTE),
                // Unknown keys only: a known key here would be read as that field.
                extra: extra
                    .into_iter()
                    .filter(|x| {
                        let k = x.split('=').next().unwrap_or_default();
                        !matches!(k, "src" | "first" | "seen" | "ttl" | "ev" | "exp" | "note")
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(m in arb_meta()) {
            let strings = m.encode().expect("encode");
            prop_assert!(strings.iter().all(|s| s.len() <= MAX_STRING));
            prop_assert_eq!(EntryMeta::decode(&strings).expect("decode"), m.clone());
            // The zone-file form reads back through unescape.
            let text = m.to_zone_text().expect("text");
            let want: Vec<Vec<u8>> = strings.iter().map(|s| s.as_bytes().to_vec()).collect();
            prop_assert_eq!(split_quoted(&text), want);
        }

        #[test]
        fn decode_never_panics(v in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8)) {
            let mut v = v;
            if let Some(first) = v.first_mut() {
                *first = b"rpz-guard=1".to_vec();
            }
            let _ = EntryMeta::decode(&v);
        }
    }
}
