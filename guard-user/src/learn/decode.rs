//! Link, network and transport headers, hand-parsed with a bounds check on
//! every read (a border capture is untrusted input).
//!
//! Supported link types: Ethernet (with any stack of 802.1Q / 802.1ad / QinQ
//! tags, bounded), Linux cooked SLL and SLL2, raw IP (LINKTYPE_RAW and the
//! platform DLT_RAW values), LINKTYPE_IPV4/IPV6, and BSD null/loopback.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::stats::Discard;

/// LINKTYPE_NULL (BSD loopback, host byte order family).
pub const LINKTYPE_NULL: u32 = 0;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// DLT_RAW on most platforms.
pub const DLT_RAW_12: u32 = 12;
/// DLT_RAW on OpenBSD.
pub const DLT_RAW_14: u32 = 14;
/// LINKTYPE_RAW.
pub const LINKTYPE_RAW: u32 = 101;
/// LINKTYPE_LOOP (OpenBSD loopback, network byte order family).
pub const LINKTYPE_LOOP: u32 = 108;
/// LINKTYPE_LINUX_SLL.
pub const LINKTYPE_LINUX_SLL: u32 = 113;
/// LINKTYPE_IPV4.
pub const LINKTYPE_IPV4: u32 = 228;
/// LINKTYPE_IPV6.
pub const LINKTYPE_IPV6: u32 = 229;
/// LINKTYPE_LINUX_SLL2.
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_QINQ_OLD: u16 = 0x9100;
/// Most VLAN tags unwrapped before giving up.
const MAX_VLAN_TAGS: usize = 4;
/// Most IPv6 extension headers walked.
const MAX_EXT_HEADERS: usize = 8;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Fragment information of an IP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag {
    /// Identification (IPv4: 16 bits, IPv6: 32 bits).
    pub id: u32,
    /// Offset of this fragment's data in bytes.
    pub offset: usize,
    /// More fragments follow.
    pub more: bool,
}

/// An IP datagram (or fragment) with its transport payload.
#[derive(Debug, Clone, Copy)]
pub struct IpPacket<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol number.
    pub proto: u8,
    /// Set when this is a fragment.
    pub frag: Option<Frag>,
    /// Transport header and data (of this fragment only).
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Strips the link layer; returns the IP packet bytes.
pub fn link_payload(linktype: u32, frame: &[u8]) -> Result<&[u8], Discard> {
    match linktype {
        LINKTYPE_ETHERNET => {
            let mut et = be16(frame, 12).ok_or(Discard::TruncatedLink)?;
            let mut at = 14;
            let mut tags = 0;
            while matches!(et, ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD) {
                tags += 1;
                if tags > MAX_VLAN_TAGS {
                    return Err(Discard::TooManyVlanTags);
                }
                et = be16(frame, at + 2).ok_or(Discard::TruncatedLink)?;
                at += 4;
            }
            ip_ethertype(et)?;
            frame.get(at..).ok_or(Discard::TruncatedLink)
        }
        LINKTYPE_LINUX_SLL => {
            let et = be16(frame, 14).ok_or(Discard::TruncatedLink)?;
            ip_ethertype(et)?;
            frame.get(16..).ok_or(Discard::TruncatedLink)
        }
        LINKTYPE_LINUX_SLL2 => {
            let et = be16(frame, 0).ok_or(Discard::TruncatedLink)?;
            ip_ethertype(et)?;
            frame.get(20..).ok_or(Discard::TruncatedLink)
        }
        LINKTYPE_RAW | DLT_RAW_12 | DLT_RAW_14 | LINKTYPE_IPV4 | LINKTYPE_IPV6 => Ok(frame),
        LINKTYPE_NULL | LINKTYPE_LOOP => {
            // The 4-byte family is in host order for NULL; any of the IPv4/IPv6
            // values in either order is accepted.
            let fam = frame.get(..4).ok_or(Discard::TruncatedLink)?;
            let v = u32::from_le_bytes([fam[0], fam[1], fam[2], fam[3]]);
            let w = u32::from_be_bytes([fam[0], fam[1], fam[2], fam[3]]);
            if [v, w].iter().any(|f| matches!(f, 2 | 24 | 28 | 30)) {
                Ok(&frame[4..])
            } else {
                Err(Discard::NotIp)
            }
        }
        _ => Err(Discard::UnknownLinkType),
    }
}

fn ip_ethertype(et: u16) -> Result<(), Discard> {
    if et == ETH_IPV4 || et == ETH_IPV6 { Ok(()) } else { Err(Discard::NotIp) }
}

/// Parses an IPv4 or IPv6 header (IPv6 extension headers walked, bounded).
pub fn ip(packet: &[u8]) -> Result<IpPacket<'_>, Discard> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => ipv4(packet),
        Some(6) => ipv6(packet),
        Some(_) => Err(Discard::NotIp),
        None => Err(Discard::TruncatedIp),
    }
}

fn ipv4(p: &[u8]) -> Result<IpPacket<'_>, Discard> {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return Err(Discard::TruncatedIp);
    }
    let total = usize::from(be16(p, 2).ok_or(Discard::TruncatedIp)?);
    if total < ihl {
        return Err(Discard::BadIpHeader);
    }
    // Ethernet padding after `total` is ignored; a snaplen cut is a truncation.
    let p = p.get(..total).ok_or(Discard::TruncatedIp)?;
    let ff = be16(p, 6).ok_or(Discard::TruncatedIp)?;
    let more = ff & 0x2000 != 0;
    let offset = usize::from(ff & 0x1fff) * 8;
    let frag =
        (more || offset != 0).then(|| Frag { id: u32::from(be16(p, 4).unwrap_or_default()), offset, more });
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Ok(IpPacket { src: src.into(), dst: dst.into(), proto: p[9], frag, payload: &p[ihl..] })
}

fn ipv6(p: &[u8]) -> Result<IpPacket<'_>, Discard> {
    if p.len() < 40 {
        return Err(Discard::TruncatedIp);
    }
    let plen = usize::from(be16(p, 4).ok_or(Discard::TruncatedIp)?);
    // Jumbograms (payload length 0) are not DNS.
    let p = p.get(..40 + plen).ok_or(Discard::TruncatedIp)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&p[8..24]);
    dst.copy_from_slice(&p[24..40]);
    let mut next = p[6];
    let mut at = 40;
    let mut frag = None;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => {
                let len = usize::from(*p.get(at + 1).ok_or(Discard::TruncatedIp)?) * 8 + 8;
                next = p[at];
                at += len;
            }
            44 => {
                let h = p.get(at..at + 8).ok_or(Discard::TruncatedIp)?;
                let off_m = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                frag = Some(Frag { id, offset: usize::from(off_m >> 3) * 8, more: off_m & 1 != 0 });
                next = h[0];
                at += 8;
            }
            _ => {
                let payload = p.get(at..).ok_or(Discard::TruncatedIp)?;
                // An atomic fragment (offset 0, no more) is a whole datagram.
                let frag = frag.filter(|f| f.more || f.offset != 0);
                return Ok(IpPacket {
                    src: Ipv6Addr::from(src).into(),
                    dst: Ipv6Addr::from(dst).into(),
                    proto: next,
                    frag,
                    payload,
                });
            }
        }
    }
    Err(Discard::TooManyExtHeaders)
}

/// A UDP datagram's ports and payload.
pub fn udp(seg: &[u8]) -> Result<(u16, u16, &[u8]), Discard> {
    let sport = be16(seg, 0).ok_or(Discard::TruncatedTransport)?;
    let dport = be16(seg, 2).ok_or(Discard::TruncatedTransport)?;
    let len = usize::from(be16(seg, 4).ok_or(Discard::TruncatedTransport)?);
    if len < 8 {
        return Err(Discard::TruncatedTransport);
    }
    let data = seg.get(8..len).ok_or(Discard::TruncatedTransport)?;
    Ok((sport, dport, data))
}

/// The fields of a TCP segment the stream reassembler needs.
#[derive(Debug, Clone, Copy)]
pub struct TcpSeg<'a> {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// SYN flag.
    pub syn: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// Segment data.
    pub data: &'a [u8],
}

/// Parses a TCP header (RFC 9293 §3.1).
pub fn tcp(seg: &[u8]) -> Result<TcpSeg<'_>, Discard> {
    let sport = be16(seg, 0).ok_or(Discard::TruncatedTransport)?;
    let dport = be16(seg, 2).ok_or(Discard::TruncatedTransport)?;
    let seq = be32(seg, 4).ok_or(Discard::TruncatedTransport)?;
    let off = usize::from(*seg.get(12).ok_or(Discard::TruncatedTransport)? >> 4) * 4;
    let flags = *seg.get(13).ok_or(Discard::TruncatedTransport)?;
    if off < 20 {
        return Err(Discard::TruncatedTransport);
    }
    let data = seg.get(off..).ok_or(Discard::TruncatedTransport)?;
    Ok(TcpSeg {
        sport,
        dport,
        seq,
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
        data,
    })
}
