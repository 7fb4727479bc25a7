//! Just enough DNS wire format (RFC 1035 §4.1) for the lab: a query builder
//! for readiness probes and the fixed-answer responder of the `inet` role.
//!
//! ```text
//!   header: ID(16) | QR OPCODE(4) AA TC RD RA Z(3) RCODE(4) | QD | AN | NS | AR
//!   question: QNAME (labels) QTYPE(16) QCLASS(16)
//! ```
use std::net::{Ipv4Addr, Ipv6Addr};

/// Length of the DNS header.
pub const HEADER_LEN: usize = 12;
/// QTYPE A.
pub const TYPE_A: u16 = 1;
/// QTYPE AAAA.
pub const TYPE_AAAA: u16 = 28;
/// QCLASS IN.
pub const CLASS_IN: u16 = 1;
/// RCODE FORMERR.
pub const RCODE_FORMERR: u8 = 1;
/// RCODE NOTIMP.
pub const RCODE_NOTIMP: u8 = 4;

/// Builds a recursive query (RD=1) for `name` (dotted, trailing dot optional).
/// Labels longer than 63 bytes are truncated: this is for probes only.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The ID of `msg` if it is a response (QR=1) with a complete header.
pub fn response_id(msg: &[u8]) -> Option<u16> {
    let header = msg.get(..HEADER_LEN)?;
    (header[2] & 0x80 != 0).then(|| u16::from_be_bytes([header[0], header[1]]))
}

/// A parsed question section entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Raw wire form of the name (labels + root), as received.
    pub name_wire: Vec<u8>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// Parses the single question of `msg`, or `None` when it is malformed
/// (compression pointers are not valid in a query's question here).
pub fn parse_question(msg: &[u8]) -> Option<Question> {
    let mut pos = HEADER_LEN;
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 || pos + 1 + len - HEADER_LEN > 255 {
            return None;
        }
        pos += 1 + len;
    }
    let name_wire = msg.get(HEADER_LEN..pos)?.to_vec();
    let fixed = msg.get(pos..pos + 4)?;
    Some(Question {
        name_wire,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
    })
}

/// The fixed answers of the lab's "internet" DNS responder.
#[derive(Debug, Clone, Copy)]
pub struct FixedAnswers {
    /// Answer to every A query.
    pub a: Ipv4Addr,
    /// Answer to every AAAA query.
    pub aaaa: Ipv6Addr,
    /// TTL of the answers.
    pub ttl: u32,
}

impl Default for FixedAnswers {
    fn default() -> Self {
        Self {
            a: Ipv4Addr::new(192, 0, 2, 53),
            aaaa: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53),
            ttl: 60,
        }
    }
}

/// Builds the authoritative answer to `query`: A/AAAA get the fixed address,
/// other types an empty NOERROR. Returns `None` for messages that deserve no
/// reply (responses, or shorter than a header).
pub fn answer(query: &[u8], fixed: &FixedAnswers) -> Option<Vec<u8>> {
    let header = query.get(..HEADER_LEN)?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (header[2] >> 3) & 0x0f;
    let rd = header[2] & 0x01;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&header[..2]);
    let error = |rcode: u8| -> Vec<u8> {
        let mut e = header[..2].to_vec();
        e.extend_from_slice(&[0x80 | (opcode << 3) | rd, rcode, 0, 0, 0, 0, 0, 0, 0, 0]);
        e
    };
    if opcode != 0 {
        return Some(error(RCODE_NOTIMP));
    }
    if u16::from_be_bytes([header[4], header[5]]) != 1 {
        return Some(error(RCODE_FORMERR));
    }
    let Some(q) = parse_question(query) else {
        return Some(error(RCODE_FORMERR));
    };
    let rdata: Option<Vec<u8>> = match (q.qclass, q.qtype) {
        (CLASS_IN, TYPE_A) => Some(fixed.a.octets().to_vec()),
        (CLASS_IN, TYPE_AAAA) => Some(fixed.aaaa.octets().to_vec()),
        _ => None,
    };
    // QR=1, AA=1, RD copied; RA=0 (not a resolver).
    out.extend_from_slice(&[0x84 | rd, 0]);
    out.extend_from_slice(&[0, 1, 0, u8::from(rdata.is_some()), 0, 0, 0, 0]);
    out.extend_from_slice(&q.name_wire);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    if let Some(rdata) = rdata {
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&q.qclass.to_be_bytes());
        out.extend_from_slice(&fixed.ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips_through_answer() {
        let q = build_query(0x1234, "example.com.", TYPE_A);
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        let a = answer(&q, &FixedAnswers::default()).expect("a query gets an answer");
        assert_eq!(response_id(&a), Some(0x1234));
        assert_eq!(a[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&a[6..8], &[0, 1], "one answer");
        assert_eq!(&a[a.len() - 4..], &[192, 0, 2, 53]);
        let question = parse_question(&a).expect("question is echoed");
        assert_eq!(question.name_wire, b"\x07example\x03com\x00");
    }

    #[test]
    fn aaaa_and_other_types() {
        let q = build_query(7, "x.", TYPE_AAAA);
        let a = answer(&q, &FixedAnswers::default()).expect("answered");
        assert_eq!(&a[a.len() - 16..], &FixedAnswers::default().aaaa.octets());
        let mx = answer(&build_query(8, "x.", 15), &FixedAnswers::default()).expect("answered");
        assert_eq!(&mx[6..8], &[0, 0], "no data for MX");
        assert_eq!(mx[2] & 0x04, 0x04, "authoritative");
    }

    #[test]
    fn bad_input_gets_formerr_or_nothing() {
        assert_eq!(answer(&[1, 2, 3], &FixedAnswers::default()), None);
        let mut truncated = build_query(9, "abc.", TYPE_A);
        truncated.truncate(HEADER_LEN + 3);
        let a = answer(&truncated, &FixedAnswers::default()).expect("formerr");
        assert_eq!(a[3] & 0x0f, RCODE_FORMERR);
        let mut pointer = build_query(10, "abc.", TYPE_A);
        pointer[HEADER_LEN] = 0xc0;
        let a = answer(&pointer, &FixedAnswers::default()).expect("formerr");
        assert_eq!(a[3] & 0x0f, RCODE_FORMERR);
        let mut response = build_query(11, "abc.", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(answer(&response, &FixedAnswers::default()), None);
    }
}
