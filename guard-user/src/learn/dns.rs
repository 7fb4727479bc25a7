//! A zero-copy reader of DNS messages (RFC 1035 §4.1), limited to what the
//! learning rules need: header, one question, and the records of all three
//! sections with the rdata of A, AAAA, NS, CNAME and MX decoded on demand.
//!
//! Why not `hickory_proto::op::Message::from_vec`: it allocates every name and
//! record of every message; the learner touches a few names per message.
//! The reader is differentially tested against hickory-proto
//! (`guard-user/tests/learn_dns_diff.rs`).
//!
//! Names are produced in a canonical form: lower-case wire labels
//! (`\x03www\x07example\x03com`) without the terminating root label, so they
//! can be compared and hashed as bytes.
use std::net::{Ipv4Addr, Ipv6Addr};

/// RR type A (RFC 1035).
pub const TYPE_A: u16 = 1;
/// RR type NS (RFC 1035).
pub const TYPE_NS: u16 = 2;
/// RR type CNAME (RFC 1035).
pub const TYPE_CNAME: u16 = 5;
/// RR type SOA (RFC 1035).
pub const TYPE_SOA: u16 = 6;
/// RR type MX (RFC 1035).
pub const TYPE_MX: u16 = 15;
/// RR type AAAA (RFC 3596).
pub const TYPE_AAAA: u16 = 28;

/// The mnemonic of a question type (`TYPE65` style for the rest).
pub fn type_name(t: u16) -> String {
    match t {
        TYPE_A => "A".into(),
        TYPE_NS => "NS".into(),
        TYPE_CNAME => "CNAME".into(),
        TYPE_SOA => "SOA".into(),
        TYPE_MX => "MX".into(),
        TYPE_AAAA => "AAAA".into(),
        255 => "ANY".into(),
        n => format!("TYPE{n}"),
    }
}
/// Class IN.
pub const CLASS_IN: u16 = 1;

/// Longest name in wire form, root label included (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Most compression pointers followed in one name; a name of 255 bytes has at
/// most 127 labels, so more hops than that is a loop in disguise.
const MAX_POINTER_HOPS: usize = 128;
/// Smallest resource record: root owner (1) + type, class, ttl, rdlength (10).
const MIN_RR_LEN: usize = 11;

/// Why a message could not be read. Each variant is a counter in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// Shorter than the 12-byte header.
    #[error("message shorter than the DNS header")]
    ShortHeader,
    /// A name, record or rdata runs past the end of the message.
    #[error("message truncated inside a name or record")]
    Truncated,
    /// A compression pointer that does not point strictly backward, or too many hops.
    #[error("compression pointer loop or forward pointer")]
    CompressionLoop,
    /// A name longer than 255 bytes.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// A label type other than a plain label or a pointer (RFC 6891 §5).
    #[error("unsupported label type")]
    BadLabel,
    /// Section counts that cannot fit in the message.
    #[error("section counts larger than the message can hold")]
    AbsurdCounts,
    /// Rdata of a known type with the wrong length or shape.
    #[error("malformed rdata")]
    BadRdata,
}

/// The fixed header (RFC 1035 §4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message ID.
    pub id: u16,
    /// Flags word: QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE.
    pub flags: u16,
    /// Question count.
    pub qdcount: u16,
    /// Answer count.
    pub ancount: u16,
    /// Authority count.
    pub nscount: u16,
    /// Additional count.
    pub arcount: u16,
}

impl Header {
    /// True for a response (QR bit).
    pub const fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }
    /// The opcode (0 = QUERY).
    pub const fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    /// The header RCODE (0 = NOERROR, 3 = NXDOMAIN).
    pub const fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

/// The section a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Answer section.
    Answer,
    /// Authority section.
    Authority,
    /// Additional section.
    Additional,
}

/// The question (RFC 1035 §4.1.2), pointing into the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// Offset of the name in the message.
    pub name_at: usize,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// One resource record (RFC 1035 §4.1.3), pointing into the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The section it came from.
    pub section: Section,
    /// Offset of the owner name.
    pub name_at: usize,
    /// TYPE.
    pub rtype: u16,
    /// CLASS.
    pub class: u16,
    /// Offset of the rdata.
    pub rdata_at: usize,
    /// Length of the rdata.
    pub rdata_len: usize,
}

/// A parsed message: the header, at most one question, and the records.
///
/// Every name reachable from the question and the records was validated while
/// parsing, so the name accessors cannot fail on a message this reader built.
#[derive(Debug)]
pub struct Message<'a> {
    buf: &'a [u8],
    /// The header.
    pub header: Header,
    /// The first question, if `qdcount >= 1`.
    pub question: Option<Question>,
    records: &'a [Record],
}

/// Reusable parser: keeps the record vector between messages so parsing does
/// not allocate in the steady state.
#[derive(Debug, Default)]
pub struct Parser {
    records: Vec<Record>,
}

fn be16(buf: &[u8], at: usize) -> Result<u16, DnsError> {
    match buf.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(DnsError::Truncated),
    }
}

/// Walks a name starting at `at`; returns the offset just after it in the
/// uncompressed position. When `out` is given, appends the canonical form.
fn walk_name(buf: &[u8], at: usize, mut out: Option<&mut Vec<u8>>) -> Result<usize, DnsError> {
    let mut pos = at;
    let mut end = None;
    let mut hops = 0;
    // Wire length so far, counting the final root label.
    let mut len = 1usize;
    // Pointers must point before the start of the segment being read, which
    // makes loops impossible.
    let mut limit = at;
    loop {
        let b = *buf.get(pos).ok_or(DnsError::Truncated)?;
        match b & 0xc0 {
            0x00 if b == 0 => {
                return Ok(end.unwrap_or(pos + 1));
            }
            0x00 => {
                let l = usize::from(b);
                let label = buf.get(pos + 1..pos + 1 + l).ok_or(DnsError::Truncated)?;
                len += l + 1;
                if len > MAX_NAME_LEN {
                    return Err(DnsError::NameTooLong);
                }
                if let Some(o) = out.as_deref_mut() {
                    o.push(b);
                    o.extend(label.iter().map(u8::to_ascii_lowercase));
                }
                pos += l + 1;
            }
            0xc0 => {
                let lo = *buf.get(pos + 1).ok_or(DnsError::Truncated)?;
                let target = (usize::from(b & 0x3f) << 8) | usize::from(lo);
                if end.is_none() {
                    end = Some(pos + 2);
                }
                hops += 1;
                if target >= limit || hops > MAX_POINTER_HOPS {
                    return Err(DnsError::CompressionLoop);
                }
                limit = target;
                pos = target;
            }
            _ => return Err(DnsError::BadLabel),
        }
    }
}

impl Parser {
    /// A parser with an empty record buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `buf`. Every name is validated; rdata of A/AAAA/NS/CNAME/MX is
    /// checked for shape. Unknown types are kept opaque.
    pub fn parse<'a>(&'a mut self, buf: &'a [u8]) -> Result<Message<'a>, DnsError> {
        if buf.len() < 12 {
            return Err(DnsError::ShortHeader);
        }
        let header = Header {
            id: be16(buf, 0)?,
            flags: be16(buf, 2)?,
            qdcount: be16(buf, 4)?,
            ancount: be16(buf, 6)?,
            nscount: be16(buf, 8)?,
            arcount: be16(buf, 10)?,
        };
        let rr_total =
            usize::from(header.ancount) + usize::from(header.nscount) + usize::from(header.arcount);
        // A question takes at least 5 bytes, a record 11.
        if usize::from(header.qdcount) * 5 + rr_total * MIN_RR_LEN > buf.len() - 12 {
            return Err(DnsError::AbsurdCounts);
        }
        let mut pos = 12;
        let mut question = None;
        for i in 0..header.qdcount {
            let name_at = pos;
            pos = walk_name(buf, pos, None)?;
            let qtype = be16(buf, pos)?;
            let qclass = be16(buf, pos + 2)?;
            pos += 4;
            if i == 0 {
                question = Some(Question { name_at, qtype, qclass });
            }
        }
        self.records.clear();
        self.records.reserve(rr_total);
        let sections = [
            (Section::Answer, header.ancount),
            (Section::Authority, header.nscount),
            (Section::Additional, header.arcount),
        ];
        for (section, count) in sections {
            for _ in 0..count {
                let name_at = pos;
                pos = walk_name(buf, pos, None)?;
                let rtype = be16(buf, pos)?;
                let class = be16(buf, pos + 2)?;
                let rdata_len = usize::from(be16(buf, pos + 8)?);
                let rdata_at = pos + 10;
                if rdata_at + rdata_len > buf.len() {
                    return Err(DnsError::Truncated);
                }
                check_rdata(buf, rtype, rdata_at, rdata_len)?;
                pos = rdata_at + rdata_len;
                self.records.push(Record { section, name_at, rtype, class, rdata_at, rdata_len });
            }
        }
        Ok(Message { buf, header, question, records: &self.records })
    }
}

/// Checks rdata shape for the types the rules read.
fn check_rdata(buf: &[u8], rtype: u16, at: usize, len: usize) -> Result<(), DnsError> {
    let name_within = |name_at: usize| -> Result<(), DnsError> {
        // The name's uncompressed part must end inside the rdata.
        let end = walk_name(buf, name_at, None)?;
        if end == at + len { Ok(()) } else { Err(DnsError::BadRdata) }
    };
    match rtype {
        TYPE_A if len != 4 => Err(DnsError::BadRdata),
        TYPE_AAAA if len != 16 => Err(DnsError::BadRdata),
        TYPE_NS | TYPE_CNAME => name_within(at),
        TYPE_MX if len < 3 => Err(DnsError::BadRdata),
        TYPE_MX => name_within(at + 2),
        _ => Ok(()),
    }
}

impl<'a> Message<'a> {
    /// The raw message bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// All records of all sections, in message order.
    pub fn records(&self) -> &'a [Record] {
        self.records
    }

    /// Appends the canonical form of the name at `at` to `out`.
    pub fn name_into(&self, at: usize, out: &mut Vec<u8>) -> Result<(), DnsError> {
        walk_name(self.buf, at, Some(out)).map(|_| ())
    }

    /// The canonical name at `at` as a new vector.
    pub fn name(&self, at: usize) -> Result<Vec<u8>, DnsError> {
        let mut v = Vec::with_capacity(32);
        self.name_into(at, &mut v)?;
        Ok(v)
    }

    /// The TTL of a record (RFC 1035 3.2.1), read from the wire.
    pub fn ttl(&self, r: &Record) -> Option<u32> {
        // TTL (4) and RDLENGTH (2) come right before the rdata.
        let at = r.rdata_at.checked_sub(6)?;
        let b: [u8; 4] = self.buf.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }

    /// The IPv4 address of an A record.
    pub fn a(&self, r: &Record) -> Option<Ipv4Addr> {
        let b: [u8; 4] = self.buf.get(r.rdata_at..r.rdata_at + 4)?.try_into().ok()?;
        (r.rtype == TYPE_A && r.rdata_len == 4).then(|| Ipv4Addr::from(b))
    }

    /// The IPv6 address of an AAAA record.
    pub fn aaaa(&self, r: &Record) -> Option<Ipv6Addr> {
        let b: [u8; 16] = self.buf.get(r.rdata_at..r.rdata_at + 16)?.try_into().ok()?;
        (r.rtype == TYPE_AAAA && r.rdata_len == 16).then(|| Ipv6Addr::from(b))
    }

    /// Offset of the target name of an NS or CNAME record, or the exchange of an MX.
    pub fn target_at(&self, r: &Record) -> Option<usize> {
        match r.rtype {
            TYPE_NS | TYPE_CNAME => Some(r.rdata_at),
            TYPE_MX => Some(r.rdata_at + 2),
            _ => None,
        }
    }
}

/// Canonical name from presentation text (`www.Example.com.`), for hints,
/// tests and the generator. Returns `None` for labels over 63 bytes or names
/// over 255.
pub fn name_from_text(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() + 1);
    for label in text.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        let l = u8::try_from(label.len()).ok().filter(|&l| l <= 63)?;
        out.push(l);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    (out.len() < MAX_NAME_LEN).then_some(out)
}

/// Presentation form (`www.example.com.`) of a canonical name.
pub fn name_to_text(name: &[u8]) -> String {
    let mut s = String::with_capacity(name.len() + 1);
    let mut i = 0;
    while let Some(&l) = name.get(i) {
        let label = name.get(i + 1..i + 1 + usize::from(l)).unwrap_or_default();
        s.push_str(&String::from_utf8_lossy(label));
        s.push('.');
        i += 1 + usize::from(l);
    }
    if s.is_empty() {
        s.push('.');
    }
    s
}

/// True when canonical `name` equals `zone` or lies below it.
pub fn is_subdomain(name: &[u8], zone: &[u8]) -> bool {
    if zone.is_empty() {
        return true;
    }
    if !name.ends_with(zone) {
        return false;
    }
    // The suffix must start on a label boundary of `name`.
    let start = name.len() - zone.len();
    let mut i = 0;
    while i < start {
        i += 1 + usize::from(name[i]);
    }
    i == start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(qd: u16, an: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80];
        for c in [qd, an, 0, 0] {
            m.extend(c.to_be_bytes());
        }
        m
    }

    #[test]
    fn reads_compressed_names_lowercased() {
        let mut m = header(1, 1);
        m.extend(b"\x03WWW\x07example\x03com\x00\x00\x01\x00\x01");
        m.extend(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x07\x04mail\xc0\x10");
        let mut p = Parser::new();
        let msg = p.parse(&m).expect("valid message");
        let q = msg.question.expect("question");
        assert_eq!(name_to_text(&msg.name(q.name_at).expect("name")), "www.example.com.");
        let r = msg.records()[0];
        assert_eq!(r.rtype, TYPE_CNAME);
        let t = msg.target_at(&r).expect("target");
        assert_eq!(name_to_text(&msg.name(t).expect("name")), "mail.example.com.");
    }

    #[test]
    fn rejects_pointer_loops_and_forward_pointers() {
        let mut m = header(1, 0);
        m.extend(b"\xc0\x0c\x00\x01\x00\x01");
        assert_eq!(Parser::new().parse(&m).err(), Some(DnsError::CompressionLoop));
        let mut m = header(1, 0);
        m.extend(b"\xc0\x20\x00\x01\x00\x01");
        assert_eq!(Parser::new().parse(&m).err(), Some(DnsError::CompressionLoop));
    }

    #[test]
    fn rejects_long_names_counts_and_labels() {
        let mut m = header(1, 0);
        for _ in 0..5 {
            m.push(63);
            m.extend([b'a'; 63]);
        }
        m.extend(b"\x00\x00\x01\x00\x01");
        assert_eq!(Parser::new().parse(&m).err(), Some(DnsError::NameTooLong));
        let mut m = header(1, 60000);
        m.extend(b"\x00\x00\x01\x00\x01");
        assert_eq!(Parser::new().parse(&m).err(), Some(DnsError::AbsurdCounts));
        let mut m = header(1, 0);
        m.extend(b"\x41\x00\x00\x01\x00\x01");
        assert_eq!(Parser::new().parse(&m).err(), Some(DnsError::BadLabel));
        assert_eq!(Parser::new().parse(&m[..5]).err(), Some(DnsError::ShortHeader));
    }

    #[test]
    fn checks_rdata_shapes() {
        let mut m = header(0, 1);
        m.extend(b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x03\x01\x02\x03");
        assert_eq!(Parser::new().parse(&m).err(), Some(DnsError::BadRdata));
    }

    #[test]
    fn subdomain_respects_label_boundaries() {
        let n = |s| name_from_text(s).expect("name");
        assert!(is_subdomain(&n("a.example.com"), &n("example.com")));
        assert!(is_subdomain(&n("example.com"), &n("example.com")));
        assert!(!is_subdomain(&n("aexample.com"), &n("example.com")));
        assert!(is_subdomain(&n("com"), &n(".")));
    }
}
