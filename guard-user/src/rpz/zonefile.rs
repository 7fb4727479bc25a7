//! RPZ zone files: write the allow set as a master file, read one back.
//!
//! The writer produces what `named-checkzone` accepts: an SOA, an NS, then one
//! `A 127.0.0.1` (DNS) or `A 127.0.0.25` (SMTP) record per class per entry,
//! the owner's whole TXT RRset as the set mirrors it (our lifetime records
//! and foreign ones, byte for byte), and `CNAME .` per deny, every name
//! absolute: what it writes reads back as the same set.
//!
//! The reader understands the master-file syntax of RFC 1035 section 5.1 as
//! BIND writes it (`named-compilezone -D`, `dig axfr`) and as people write it:
//! `$ORIGIN`, `$TTL`, relative and absolute names, `@`, a blank owner meaning
//! the previous owner, comments, parentheses across lines, optional TTL and
//! class in either order, quoted strings. Records that are not our IP
//! triggers with `A 127.0.0.1` / `A 127.0.0.25` are counted as ignored, never
//! guessed into an allow entry. Malformed input is an error with its line.

use std::{
    io::{self, BufWriter, Write},
    net::{Ipv4Addr, Ipv6Addr},
};

use super::{
    Classified, Ignored, RECORD_TTL, RecordData, canonical, classify, encode_owner,
    meta::{quote, unescape},
};
use crate::policy::{AllowSet, Prefix};

/// Writes `set` as a zone file for `origin` with SOA serial `serial`.
/// A prefix the policy zone cannot hold ([`super::unencodable`]) is an
/// `InvalidInput` error naming it, before anything is written.
pub fn write_zone(set: &AllowSet, origin: &str, serial: u32, out: &mut impl Write) -> io::Result<()> {
    if let Some(why) = set.iter().find_map(|(p, _)| super::unencodable(p)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    let zone = canonical(origin);
    let mut w = BufWriter::with_capacity(1 << 16, out);
    writeln!(w, "; RPZ allow set written by rpz-guard: {} entries", set.len())?;
    writeln!(w, "$TTL {RECORD_TTL}")?;
    writeln!(
        w,
        "{zone}. {RECORD_TTL} IN SOA localhost. hostmaster.localhost. ( {serial} 3600 600 86400 {RECORD_TTL} )"
    )?;
    writeln!(w, "{zone}. {RECORD_TTL} IN NS localhost.")?;
    for (prefix, classes) in set.iter() {
        let owner = encode_owner(prefix, &zone);
        for a in classes.rpz_answers() {
            writeln!(w, "{owner} {RECORD_TTL} IN A {a}")?;
        }
        write_txt(&mut w, set, prefix, &owner)?;
    }
    // TXT at owners without an allow entry (a foreign record beside
    // nothing of ours, our record of an entry whose A went): kept too.
    for (prefix, _) in set.txt_rrsets() {
        if set.get(prefix).is_empty() {
            write_txt(&mut w, set, prefix, &encode_owner(prefix, &zone))?;
        }
    }
    for prefix in set.denies() {
        if let Some(why) = super::unencodable(prefix) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        writeln!(w, "{} {RECORD_TTL} IN CNAME .", encode_owner(prefix, &zone))?;
    }
    w.flush()
}

/// Writes every TXT record the set mirrors at `prefix`'s owner, each
/// character-string quoted from its bytes ([`quote`]).
fn write_txt(w: &mut impl Write, set: &AllowSet, prefix: &Prefix, owner: &str) -> io::Result<()> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, format!("{prefix}: {why}"));
    if let Some(m) = set.meta(prefix) {
        // A state that cannot be written (a note too long) is an error
        // naming why, not a TXT without strings.
        m.to_zone_text().map_err(|e| bad(e.to_string()))?;
    }
    for record in set.txt(prefix) {
        if record.is_empty() {
            return Err(bad("a TXT record without strings".into()));
        }
        let text: Vec<String> = record.iter().map(|s| quote(s)).collect();
        writeln!(w, "{owner} {RECORD_TTL} IN TXT {}", text.join(" "))?;
    }
    Ok(())
}

/// A zone file read back: serial, allow entries and what was ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedZone {
    /// The SOA serial.
    pub serial: u32,
    /// The allow entries.
    pub set: AllowSet,
    /// Records that are not allow entries (apex SOA/NS are not counted).
    pub ignored: Ignored,
    /// Number of resource records read.
    pub records: usize,
}

/// A zone file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// A syntax or data error at a line.
    #[error("zone {zone}, line {line}: {why}")]
    Syntax {
        /// The zone origin given to the parser.
        zone: String,
        /// 1-based line number (where the record starts).
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The text holds no SOA record for the zone.
    #[error("zone {zone}: no SOA record at the zone apex")]
    NoSoa {
        /// The zone origin given to the parser.
        zone: String,
    },
}

/// Parses a master file for `origin` (initial `$ORIGIN`; names outside it
/// are ignored records, an SOA outside it is an error).
pub fn parse_zone(text: &str, origin: &str) -> Result<ParsedZone, ZoneError> {
    Parser::new(origin).run(text)
}

/// A token of a logical line.
#[derive(Debug)]
struct Token {
    text: String,
    quoted: bool,
}

/// One logical record line (parentheses joined).
#[derive(Debug, Default)]
struct Logical {
    line: usize,
    indented: bool,
    tokens: Vec<Token>,
}

/// Splits master-file text into logical lines (RFC 1035 section 5.1).
struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer { chars: text.chars().peekable(), line: 1 }
    }

    /// The next logical line, `Ok(None)` at the end.
    fn next_logical(&mut self) -> Result<Option<Logical>, (usize, String)> {
        loop {
            if self.chars.peek().is_none() {
                return Ok(None);
            }
            let logical = self.read_logical()?;
            if !logical.tokens.is_empty() {
                return Ok(Some(logical));
            }
        }
    }

    fn read_logical(&mut self) -> Result<Logical, (usize, String)> {
        let mut out = Logical {
            line: self.line,
            indented: matches!(self.chars.peek(), Some(' ' | '\t')),
            tokens: Vec::new(),
        };
        let mut depth = 0usize;
        let mut open_line = 0usize;
        while let Some(&c) = self.chars.peek() {
            match c {
                '\n' => {
                    self.chars.next();
                    self.line += 1;
                    if depth == 0 {
                        return Ok(out);
                    }
                }
                ' ' | '\t' | '\r' => {
                    self.chars.next();
                }
                ';' => {
                    while let Some(&c) = self.chars.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.chars.next();
                    }
                }
                '(' => {
                    self.chars.next();
                    if depth == 0 {
                        open_line = self.line;
                    }
                    depth += 1;
                }
                ')' => {
                    self.chars.next();
                    depth = depth.checked_sub(1).ok_or((self.line, "')' without '('".to_owned()))?;
                }
                '"' => {
                    self.chars.next();
                    let start = self.line;
                    let mut text = String::new();
                    loop {
                        match self.chars.next() {
                            None => return Err((start, "unterminated quoted string".to_owned())),
                            Some('"') => break,
                            Some('\\') => {
                                text.push('\\');
                                if let Some(n) = self.chars.next() {
                                    if n == '\n' {
                                        self.line += 1;
                                    }
                                    text.push(n);
                                }
                            }
                            Some(ch) => {
                                if ch == '\n' {
                                    self.line += 1;
                                }
                                text.push(ch);
                            }
                        }
                    }
                    out.tokens.push(Token { text, quoted: true });
                }
                _ => {
                    let mut text = String::new();
                    while let Some(&ch) = self.chars.peek() {
                        if matches!(ch, ' ' | '\t' | '\r' | '\n' | ';' | '(' | ')' | '"') {
                            break;
                        }
                        self.chars.next();
                        text.push(ch);
                        if ch == '\\' {
                            // Escaped character: part of the token whatever it is.
                            match self.chars.next() {
                                Some('\n') => {
                                    return Err((self.line, "escaped newline in a name".to_owned()));
                                }
                                Some(n) => text.push(n),
                                None => return Err((self.line, "backslash at end of input".to_owned())),
                            }
                        }
                    }
                    out.tokens.push(Token { text, quoted: false });
                }
            }
        }
        if depth > 0 {
            return Err((open_line, "'(' is never closed".to_owned()));
        }
        Ok(out)
    }
}

/// Record types we know by mnemonic (IANA registry); others need `TYPEnnn`.
const KNOWN_TYPES: &[&str] = &[
    "A",
    "NS",
    "MD",
    "MF",
    "CNAME",
    "SOA",
    "MB",
    "MG",
    "MR",
    "NULL",
    "WKS",
    "PTR",
    "HINFO",
    "MINFO",
    "MX",
    "TXT",
    "RP",
    "AFSDB",
    "X25",
    "ISDN",
    "RT",
    "NSAP",
    "NSAP-PTR",
    "SIG",
    "KEY",
    "PX",
    "GPOS",
    "AAAA",
    "LOC",
    "NXT",
    "EID",
    "NIMLOC",
    "SRV",
    "ATMA",
    "NAPTR",
    "KX",
    "CERT",
    "A6",
    "DNAME",
    "SINK",
    "APL",
    "DS",
    "SSHFP",
    "IPSECKEY",
    "RRSIG",
    "NSEC",
    "DNSKEY",
    "DHCID",
    "NSEC3",
    "NSEC3PARAM",
    "TLSA",
    "SMIMEA",
    "HIP",
    "NINFO",
    "RKEY",
    "TALINK",
    "CDS",
    "CDNSKEY",
    "OPENPGPKEY",
    "CSYNC",
    "ZONEMD",
    "SVCB",
    "HTTPS",
    "SPF",
    "NID",
    "L32",
    "L64",
    "LP",
    "EUI48",
    "EUI64",
    "URI",
    "CAA",
    "AVC",
    "DOA",
    "AMTRELAY",
    "RESINFO",
    "TA",
    "DLV",
];

fn is_type(token: &str) -> bool {
    let up = token.to_ascii_uppercase();
    KNOWN_TYPES.contains(&up.as_str())
        || up.strip_prefix("TYPE").is_some_and(|n| !n.is_empty() && n.parse::<u16>().is_ok())
}

fn is_class(token: &str) -> bool {
    let up = token.to_ascii_uppercase();
    matches!(up.as_str(), "IN" | "CH" | "CS" | "HS" | "ANY" | "NONE")
        || up.strip_prefix("CLASS").is_some_and(|n| !n.is_empty() && n.parse::<u16>().is_ok())
}

/// Parses a TTL: seconds, or BIND's units (`1w2d3h4m5s`).
fn parse_ttl(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let (mut total, mut num, mut have) = (0u64, 0u64, false);
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = num.checked_mul(10)?.checked_add(u64::from(d))?;
            have = true;
        } else {
            let mult = match c.to_ascii_lowercase() {
                'w' => 604_800,
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return None,
            };
            if !have {
                return None;
            }
            total = total.checked_add(num.checked_mul(mult)?)?;
            (num, have) = (0, false);
        }
    }
    if have {
        total = total.checked_add(num)?;
    }
    u32::try_from(total).ok()
}

struct Parser {
    zone: String,
    origin: String,
    last_owner: Option<String>,
    out: ParsedZone,
    soa_seen: bool,
}

impl Parser {
    fn new(origin: &str) -> Self {
        let zone = canonical(origin);
        Parser { origin: zone.clone(), zone, last_owner: None, out: ParsedZone::default(), soa_seen: false }
    }

    fn err(&self, line: usize, why: impl Into<String>) -> ZoneError {
        ZoneError::Syntax { zone: self.zone.clone(), line, why: why.into() }
    }

    /// An absolute name (lower case, no trailing dot) for a name token.
    fn absolute(&self, name: &str, line: usize) -> Result<String, ZoneError> {
        if name == "@" {
            return Ok(self.origin.clone());
        }
        if name.is_empty() || name.contains("..") {
            return Err(self.err(line, format!("bad name {name:?}")));
        }
        if name.len() > 1024 {
            return Err(self.err(line, "name too long"));
        }
        if name == "." {
            return Ok(String::new());
        }
        Ok(match name.strip_suffix('.') {
            Some(abs) => abs.to_ascii_lowercase(),
            None if self.origin.is_empty() => name.to_ascii_lowercase(),
            None => format!("{}.{}", name.to_ascii_lowercase(), self.origin),
        })
    }

    fn run(mut self, text: &str) -> Result<ParsedZone, ZoneError> {
        let mut lexer = Lexer::new(text);
        loop {
            let logical = match lexer.next_logical() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err((line, why)) => return Err(self.err(line, why)),
            };
            self.logical(&logical)?;
        }
        if !self.soa_seen {
            return Err(ZoneError::NoSoa { zone: self.zone });
        }
        Ok(self.out)
    }

    fn logical(&mut self, l: &Logical) -> Result<(), ZoneError> {
        let t = &l.tokens;
        let first = &t[0];
        if !l.indented && !first.quoted && first.text.starts_with('$') {
            return self.directive(l);
        }
        let mut i = 0;
        let owner = if l.indented {
            self.last_owner.clone().ok_or_else(|| self.err(l.line, "record without an owner name"))?
        } else {
            i = 1;
            let o = self.absolute(&first.text, l.line)?;
            self.last_owner = Some(o.clone());
            o
        };
        // Optional TTL and class, in either order.
        for _ in 0..2 {
            match t.get(i) {
                Some(tok) if !tok.quoted && tok.text.starts_with(|c: char| c.is_ascii_digit()) => {
                    parse_ttl(&tok.text)
                        .ok_or_else(|| self.err(l.line, format!("bad TTL {:?}", tok.text)))?;
                    i += 1;
                }
                Some(tok) if !tok.quoted && is_class(&tok.text) && !is_type(&tok.text) => {
                    if !tok.text.eq_ignore_ascii_case("IN") {
                        return Err(
                            self.err(l.line, format!("class {} is not supported (only IN)", tok.text))
                        );
                    }
                    i += 1;
                }
                _ => break,
            }
        }
        let rtype = t.get(i).ok_or_else(|| self.err(l.line, format!("record for {owner} has no type")))?;
        if rtype.quoted || !is_type(&rtype.text) {
            return Err(self.err(l.line, format!("unknown record type {:?}", rtype.text)));
        }
        let rtype = rtype.text.to_ascii_uppercase();
        let rdata = &t[i + 1..];
        if rdata.is_empty() {
            return Err(self.err(l.line, format!("{rtype} record for {owner} has no data")));
        }
        self.out.records += 1;
        let strings: Vec<Vec<u8>>;
        let data = match rtype.as_str() {
            "A" => {
                let [a] = rdata else {
                    return Err(self.err(l.line, format!("A record for {owner} needs exactly one address")));
                };
                let a = a
                    .text
                    .parse::<Ipv4Addr>()
                    .map_err(|_| self.err(l.line, format!("bad IPv4 address {:?}", a.text)))?;
                RecordData::A(a)
            }
            "SOA" => return self.soa(l.line, &owner, rdata),
            "AAAA" => {
                let [a] = rdata else {
                    return Err(
                        self.err(l.line, format!("AAAA record for {owner} needs exactly one address"))
                    );
                };
                a.text
                    .parse::<Ipv6Addr>()
                    .map_err(|_| self.err(l.line, format!("bad IPv6 address {:?}", a.text)))?;
                RecordData::Other("AAAA")
            }
            "CNAME" => {
                let [target] = rdata else {
                    return Err(self.err(l.line, format!("CNAME record for {owner} needs exactly one name")));
                };
                RecordData::Cname { root: self.absolute(&target.text, l.line)?.is_empty() }
            }
            "TXT" => {
                strings = rdata
                    .iter()
                    .map(|t| {
                        unescape(&t.text)
                            .ok_or_else(|| self.err(l.line, format!("bad escape in {:?}", t.text)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                RecordData::Txt(strings.iter().map(Vec::as_slice).collect())
            }
            other => RecordData::Other(other),
        };
        let owner_fqdn = format!("{owner}.");
        match classify(&owner_fqdn, &self.zone, data) {
            Classified::Entry(p, c) => {
                self.out.set.add(p, c);
            }
            Classified::Txt(p, strings, Ok(m)) => self.out.set.add_txt(p, strings, Some(m)),
            Classified::Txt(p, strings, Err(reason)) => {
                self.out.set.add_txt(p, strings, None);
                self.out.ignored.push(&owner_fqdn, reason);
            }
            Classified::Deny(p) => {
                self.out.set.deny(p);
            }
            Classified::Apex => {}
            Classified::Ignored(reason) => self.out.ignored.push(&owner_fqdn, reason),
        }
        Ok(())
    }

    fn soa(&mut self, line: usize, owner: &str, rdata: &[Token]) -> Result<(), ZoneError> {
        if *owner != self.zone {
            return Err(self.err(line, format!("SOA for {owner}. but the zone is {}.", self.zone)));
        }
        if rdata.len() != 7 {
            return Err(self.err(line, format!("SOA needs 7 fields, found {}", rdata.len())));
        }
        let serial = rdata[2]
            .text
            .parse::<u32>()
            .map_err(|_| self.err(line, format!("bad SOA serial {:?}", rdata[2].text)))?;
        for f in &rdata[3..] {
            parse_ttl(&f.text).ok_or_else(|| self.err(line, format!("bad SOA timer {:?}", f.text)))?;
        }
        // AXFR-style dumps repeat the SOA at the end; a different serial
        // would mean two versions in one file.
        if self.soa_seen && self.out.serial != serial {
            return Err(
                self.err(line, format!("second SOA with serial {serial} (first was {})", self.out.serial))
            );
        }
        self.soa_seen = true;
        self.out.serial = serial;
        Ok(())
    }

    fn directive(&mut self, l: &Logical) -> Result<(), ZoneError> {
        let name = l.tokens[0].text.to_ascii_uppercase();
        let arg = l.tokens.get(1).map(|t| t.text.as_str());
        match (name.as_str(), arg) {
            ("$ORIGIN", Some(o)) if l.tokens.len() == 2 => {
                // A relative $ORIGIN is relative to the current one (BIND does this).
                self.origin = self.absolute(o, l.line)?;
                Ok(())
            }
            ("$TTL", Some(ttl)) if l.tokens.len() == 2 => {
                parse_ttl(ttl).ok_or_else(|| self.err(l.line, format!("bad $TTL {ttl:?}")))?;
                Ok(())
            }
            ("$ORIGIN" | "$TTL", _) => Err(self.err(l.line, format!("{name} takes exactly one argument"))),
            ("$INCLUDE" | "$GENERATE", _) => Err(self.err(l.line, format!("{name} is not supported"))),
            _ => Err(self.err(l.line, format!("unknown directive {name}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::{Classes, Prefix},
        rpz::IgnoreReason,
    };

    const Z: &str = "rpz.example.com";

    fn p(s: &str) -> Prefix {
        s.parse().expect("test prefix")
    }

    #[test]
    fn write_then_parse_round_trips() {
        let set: AllowSet = [
            (p("131.112.12.18"), Classes::SMTP),
            (p("192.0.2.1"), Classes::DNS.union(Classes::SMTP)),
            (p("198.51.100.0/24"), Classes::DNS),
            (p("2001:db8::53"), Classes::DNS),
        ]
        .into_iter()
        .collect();
        let mut out = Vec::new();
        write_zone(&set, "rpz.example.com.", 42, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("131.112.12.18.rpz.example.com. 60 IN A 127.0.0.25"), "{text}");
        let parsed = parse_zone(&text, Z).expect("parse");
        assert_eq!(parsed.serial, 42);
        assert_eq!(parsed.set, set);
        assert_eq!(parsed.ignored.count, 0);
        assert_eq!(parsed.records, 2 + 5);
    }

    /// Found by the `zonefile` fuzz target: a zero-length prefix was written
    /// as `0.0.0.0.0.rpz-ip` and silently dropped when read back.
    #[test]
    fn zero_length_prefix_is_refused_not_written() {
        for all in ["0.0.0.0/0", "::/0"] {
            let set: AllowSet =
                [(p("192.0.2.1"), Classes::DNS), (p(all), Classes::SMTP)].into_iter().collect();
            let mut out = Vec::new();
            let err = write_zone(&set, "rpz.example.com.", 1, &mut out).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains(all), "{err}");
            assert!(out.is_empty(), "nothing written");
        }
    }

    #[test]
    fn hand_written_zone_forms() {
        let text = "\
$TTL 1h
$ORIGIN rpz.example.com.
@ IN SOA ns1 hostmaster ( 2024010101 ; serial
        1h 15m 1w
        1d )
    NS localhost.
131.112.12.18   A 127.0.0.25
                A 127.0.0.1      ; same owner, second class
192.0.2.7 300 IN A 127.0.0.1
192.0.2.8 IN 300 A 127.0.0.25
10.0.0.1.RPZ.EXAMPLE.COM. A 127.0.0.1
www.evil.test CNAME .            ; NXDOMAIN policy for a name
192.0.2.9 CNAME .                ; NXDOMAIN policy for an IP
192.0.2.10 A 10.0.0.1            ; local data, not an allow
192.0.2.11 TXT \"a ; quoted\" \"(b)\"
1.2.3.4.other.test. A 127.0.0.1  ; outside the zone
24.0.2.0.192.rpz-ip A 127.0.0.1
$ORIGIN rpz-ip
128.1.zz.db8.2001 A 127.0.0.25
";
        let z = parse_zone(text, "rpz.example.com.").expect("parse");
        assert_eq!(z.serial, 2024010101);
        let want: AllowSet = [
            (p("131.112.12.18"), Classes::SMTP.union(Classes::DNS)),
            (p("192.0.2.7"), Classes::DNS),
            (p("192.0.2.8"), Classes::SMTP),
            (p("10.0.0.1"), Classes::DNS),
            (p("192.0.2.0/24"), Classes::DNS),
            (p("2001:db8::1"), Classes::SMTP),
        ]
        .into_iter()
        .collect();
        assert_eq!(z.set.iter().collect::<Vec<_>>(), want.iter().collect::<Vec<_>>());
        // `192.0.2.9 CNAME .` is a deny; the domain-name CNAME, the local
        // data, the foreign TXT and the name outside the zone are ignored.
        assert_eq!(z.set.denies().copied().collect::<Vec<_>>(), vec![p("192.0.2.9")]);
        assert_eq!(z.ignored.count, 4, "{:?}", z.ignored);
        assert!(matches!(z.ignored.samples[1].reason, IgnoreReason::OtherAddress(_)));
        assert!(matches!(z.ignored.samples[2].reason, IgnoreReason::ForeignTxt));
    }

    #[test]
    fn lifetime_state_and_denies_round_trip() {
        use crate::rpz::meta::{EntryMeta, Evidence};
        let mut set: AllowSet =
            [(p("198.51.100.25"), Classes::SMTP), (p("2001:db8::53"), Classes::DNS)].into_iter().collect();
        let ev = Evidence {
            server: "192.0.2.1".parse().expect("ip"),
            qname: "mx.example.net.".into(),
            qtype: "MX".into(),
        };
        set.set_meta(p("198.51.100.25"), EntryMeta::learned(1_796_601_600, 3600, Some(ev)));
        set.set_meta(p("2001:db8::53"), EntryMeta::manual(7, None, Some("say \"hi\" ; (x) \\".into())));
        set.deny(p("203.0.113.9"));
        set.deny(p("2001:db8:bad::/48"));
        let mut out = Vec::new();
        write_zone(&set, Z, 3, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("203.0.113.9.rpz.example.com. 60 IN CNAME ."), "{text}");
        let back = parse_zone(&text, Z).expect("parse");
        assert_eq!(back.set, set);
        assert_eq!(back.ignored.count, 0);
        // A zone of an older version (no TXT) still loads, without state.
        let old = "@ SOA a b 1 2 3 4 5\n198.51.100.25 A 127.0.0.25\n";
        let z = parse_zone(old, Z).expect("parse");
        assert_eq!((z.set.len(), z.set.metas().count()), (1, 0));
        // Our TXT with a bad field: counted, the entry stays.
        let bad = "@ SOA a b 1 2 3 4 5\n1.2.3.4 A 127.0.0.1\n1.2.3.4 TXT \"rpz-guard=1\" \"src=x\"\n";
        let z = parse_zone(bad, Z).expect("parse");
        assert_eq!((z.set.len(), z.ignored.count), (1, 1));
        assert!(matches!(z.ignored.samples[0].reason, IgnoreReason::BadMeta(_)));
    }

    /// The writer writes each owner's whole TXT RRset as the mirror holds
    /// it (issue 11: only the record that counted was written), so a zone
    /// file reads back as the same mirror: two of ours, foreign records
    /// (one not UTF-8, one with quotes), a TXT-only owner.
    #[test]
    fn whole_txt_rrsets_round_trip() {
        use crate::rpz::meta::EntryMeta;
        let q = p("198.51.100.25");
        let mut set: AllowSet = [(q, Classes::SMTP), (p("2001:db8::53"), Classes::DNS)].into_iter().collect();
        let (old, new) = (EntryMeta::learned(10, 60, None), EntryMeta::learned(20, 60, None));
        set.add_txt(q, old.encode_txt().expect("old"), Some(old));
        set.add_txt(q, new.encode_txt().expect("new"), Some(new.clone()));
        set.add_txt(q, vec![vec![0xff, 0xfe, b'"'], b"v=spf1 -all".to_vec()], None);
        set.add_txt(q, vec![b"say \"hi\" ; (x) \\".to_vec()], None);
        set.set_meta(p("2001:db8::53"), EntryMeta::manual(7, None, None));
        set.add_txt(p("192.0.2.99"), vec![b"lonely".to_vec()], None);
        let mut out = Vec::new();
        write_zone(&set, Z, 3, &mut out).expect("write");
        let text = String::from_utf8(out).expect("quoted: ASCII");
        assert!(text.contains(r#"IN TXT "\255\254\"" "v=spf1 -all""#), "{text}");
        let back = parse_zone(&text, Z).expect("parse");
        assert_eq!(back.set, set, "{text}");
        assert!(!back.set.state_differs(&set));
        assert_eq!((back.set.txt(&q).len(), back.set.meta(&q)), (4, Some(&new)));
        assert_eq!(back.records, 2 + 1 + 4 + 1 + 1 + 1, "{text}");
        // A state that cannot be written is still an error naming the entry.
        let mut bad = set.clone();
        bad.set_meta(q, EntryMeta::manual(7, None, Some("x".repeat(300))));
        let e = write_zone(&bad, Z, 3, &mut Vec::new()).expect_err("note too long");
        assert!(e.to_string().contains("198.51.100.25"), "{e}");
    }

    #[test]
    fn axfr_style_dump_with_repeated_soa() {
        let text = "\
rpz.example.com.\t60\tIN\tSOA\tlocalhost. root.localhost. 7 3600 600 86400 60
rpz.example.com.\t60\tIN\tNS\tlocalhost.
192.0.2.1.rpz.example.com. 60\tIN\tA\t127.0.0.1
rpz.example.com.\t60\tIN\tSOA\tlocalhost. root.localhost. 7 3600 600 86400 60
";
        let z = parse_zone(text, Z).expect("parse");
        assert_eq!((z.serial, z.set.len(), z.ignored.count), (7, 1, 0));
    }

    #[test]
    fn errors_name_the_line() {
        let soa = "@ SOA a b 1 2 3 4 5\n";
        let cases: &[(&str, usize, &str)] = &[
            ("@ SOA a b ( 1 2 3 4 5\n", 1, "never closed"),
            (&format!("{soa}1.2.3.4 A 127.0.0.300\n"), 2, "bad IPv4"),
            (&format!("{soa}1.2.3.4 A\n"), 2, "no data"),
            (&format!("{soa}1.2.3.4 BOGUS 1\n"), 2, "unknown record type"),
            (&format!("{soa}1.2.3.4 CH A 127.0.0.1\n"), 2, "only IN"),
            (&format!("{soa}\n\n$INCLUDE other\n"), 4, "not supported"),
            (&format!("{soa}1.2.3.4 1x A 127.0.0.1\n"), 2, "bad TTL"),
            (&format!("{soa}@ SOA a b 2 2 3 4 5\n"), 2, "second SOA"),
            ("@ SOA a b x 2 3 4 5\n", 1, "bad SOA serial"),
            ("other.test. SOA a b 1 2 3 4 5\n", 1, "SOA for other.test"),
            ("  A 127.0.0.1\n", 1, "without an owner"),
            (&format!("{soa}x TXT \"open\n"), 2, "unterminated"),
            (&format!("{soa})\n"), 2, "without '('"),
        ];
        for (text, line, what) in cases {
            match parse_zone(text, Z) {
                Err(ZoneError::Syntax { line: l, why, .. }) => {
                    assert_eq!(l, *line, "{text:?}: {why}");
                    assert!(why.contains(what), "{text:?}: {why}");
                }
                other => panic!("{text:?}: expected a syntax error, got {other:?}"),
            }
        }
        assert!(matches!(parse_zone("1.2.3.4 A 127.0.0.1\n", Z), Err(ZoneError::NoSoa { .. })));
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("3600"), Some(3600));
        assert_eq!(parse_ttl("1h30m"), Some(5400));
        assert_eq!(parse_ttl("1W"), Some(604_800));
        assert_eq!(parse_ttl("h"), None);
        assert_eq!(parse_ttl("99999999999"), None);
    }
}
