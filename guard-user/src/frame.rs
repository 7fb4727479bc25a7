//! The one userspace frame parser: link, network and transport headers,
//! hand-parsed with a bounds check on every read (capture files and
//! packet-ins are untrusted input). The learner ([`crate::learn`]) and the
//! OpenFlow controller ([`crate::openflow`]) both use it; the XDP program is
//! the kernel's own parser. All three are held to one table of awkward
//! frames (`guard_tests::awkward`), which is the README's policy written as
//! data:
//!
//! * Ethernet with at most [`MAX_VLAN_TAGS`] tags (802.1Q, 802.1ad); more is
//!   an error, not "not IP" (a filter must not pass what it cannot see into).
//! * IPv4 with options (IHL honoured); the total length must fit the frame and
//!   bounds what follows (Ethernet padding is ignored).
//! * IPv6 with hop-by-hop, routing, destination options, fragment and AH
//!   headers walked, at most [`MAX_EXT_HEADERS`]; the payload length must fit
//!   the frame.
//! * The transport header of a TCP or UDP packet that is not a later
//!   fragment must be whole (TCP: its data offset, UDP: 8 bytes), else the
//!   packet is malformed whatever its port: this closes the tiny-fragment
//!   attack (RFC 1858 §3.1, RFC 3128) in both enforcement modes.
//!
//! Supported link types (for captures): Ethernet, Linux cooked SLL and SLL2,
//! raw IP (LINKTYPE_RAW and the platform DLT_RAW values), LINKTYPE_IPV4/IPV6,
//! and BSD null/loopback.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
/// VLAN tags unwrapped (802.1ad outer + 802.1Q inner); a third is an error.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked; a longer chain is an error. The XDP
/// program has the same bound (`guard_ebpf::prog::MAX_EXT_HEADERS`).
pub const MAX_EXT_HEADERS: usize = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The link header (Ethernet, VLAN tag, SLL) is cut short.
    #[error("link header truncated")]
    TruncatedLink,
    /// More VLAN tags than [`MAX_VLAN_TAGS`].
    #[error("more than {MAX_VLAN_TAGS} VLAN tags")]
    TooManyVlanTags,
    /// A capture link type this parser does not know.
    #[error("unknown link type")]
    UnknownLinkType,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): not an error for a filter.
    #[error("not an IP frame (ethertype {ethertype:#06x})")]
    NotIp {
        /// The innermost ethertype (0 when the link type has none).
        ethertype: u16,
    },
    /// The IP header is cut short, or its total/payload length exceeds the frame.
    #[error("IP header truncated or length beyond the frame")]
    TruncatedIp,
    /// Impossible IP header fields (version, IHL < 5, total length < IHL).
    #[error("malformed IP header")]
    BadIpHeader,
    /// An IPv6 extension chain longer than [`MAX_EXT_HEADERS`].
    #[error("IPv6 extension chain longer than {MAX_EXT_HEADERS}")]
    TooManyExtHeaders,
    /// The TCP or UDP header is not whole in this packet (or first fragment).
    #[error("transport header truncated")]
    TruncatedTransport,
}

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
    /// Transport protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// Set when this is a fragment; an IPv6 atomic fragment (offset 0, no
    /// more fragments, RFC 6946) is a whole datagram and has `None`.
    pub frag: Option<Frag>,
    /// Transport header and data (of this fragment only), without link padding.
    pub payload: &'a [u8],
}

impl IpPacket<'_> {
    /// A non-first fragment: it carries no transport header.
    pub fn is_later_fragment(&self) -> bool {
        self.frag.is_some_and(|f| f.offset != 0)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at.checked_add(2)?).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

/// Strips an Ethernet header and up to [`MAX_VLAN_TAGS`] tags; returns the
/// outer VLAN id (when tagged), the ethertype (IPv4 or IPv6) and the IP
/// packet bytes.
pub fn ethernet(frame: &[u8]) -> Result<(Option<u16>, u16, &[u8]), FrameError> {
    let mut et = be16(frame, 12).ok_or(FrameError::TruncatedLink)?;
    let mut at = 14;
    let mut vlan = None;
    let mut tags = 0;
    while matches!(et, ETH_VLAN | ETH_QINQ) {
        tags += 1;
        if tags > MAX_VLAN_TAGS {
            return Err(FrameError::TooManyVlanTags);
        }
        let tci = be16(frame, at).ok_or(FrameError::TruncatedLink)?;
        vlan.get_or_insert(tci & 0x0fff);
        et = be16(frame, at + 2).ok_or(FrameError::TruncatedLink)?;
        at += 4;
    }
    ip_ethertype(et)?;
    Ok((vlan, et, frame.get(at..).ok_or(FrameError::TruncatedLink)?))
}

/// Strips the link layer of a captured frame; returns the IP packet bytes.
pub fn link_payload(linktype: u32, frame: &[u8]) -> Result<&[u8], FrameError> {
    match linktype {
        LINKTYPE_ETHERNET => ethernet(frame).map(|(_, _, ip)| ip),
        LINKTYPE_LINUX_SLL => {
            let et = be16(frame, 14).ok_or(FrameError::TruncatedLink)?;
            ip_ethertype(et)?;
            frame.get(16..).ok_or(FrameError::TruncatedLink)
        }
        LINKTYPE_LINUX_SLL2 => {
            let et = be16(frame, 0).ok_or(FrameError::TruncatedLink)?;
            ip_ethertype(et)?;
            frame.get(20..).ok_or(FrameError::TruncatedLink)
        }
        LINKTYPE_RAW | DLT_RAW_12 | DLT_RAW_14 | LINKTYPE_IPV4 | LINKTYPE_IPV6 => Ok(frame),
        LINKTYPE_NULL | LINKTYPE_LOOP => {
            // The 4-byte family is in host order for NULL; any of the IPv4/IPv6
            // values in either order is accepted.
            let fam = frame.get(..4).ok_or(FrameError::TruncatedLink)?;
            let v = u32::from_le_bytes([fam[0], fam[1], fam[2], fam[3]]);
            let w = u32::from_be_bytes([fam[0], fam[1], fam[2], fam[3]]);
            if [v, w].iter().any(|f| matches!(f, 2 | 24 | 28 | 30)) {
                Ok(&frame[4..])
            } else {
                Err(FrameError::NotIp { ethertype: 0 })
            }
        }
        _ => Err(FrameError::UnknownLinkType),
    }
}

fn ip_ethertype(et: u16) -> Result<(), FrameError> {
    if et == ETH_IPV4 || et == ETH_IPV6 { Ok(()) } else { Err(FrameError::NotIp { ethertype: et }) }
}

/// Parses an IPv4 or IPv6 header by its version nibble (IPv6 extension
/// headers walked, bounded). Link types without an ethertype need this; an
/// Ethernet frame is parsed by its ethertype instead ([`parse`]).
pub fn ip(packet: &[u8]) -> Result<IpPacket<'_>, FrameError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => ipv4(packet),
        Some(6) => ipv6(packet),
        Some(_) => Err(FrameError::BadIpHeader),
        None => Err(FrameError::TruncatedIp),
    }
}

fn ipv4(p: &[u8]) -> Result<IpPacket<'_>, FrameError> {
    if p.len() < 20 {
        return Err(FrameError::TruncatedIp);
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || total < ihl {
        return Err(FrameError::BadIpHeader);
    }
    // Ethernet padding after `total` is ignored; a frame shorter than `total`
    // (a snaplen cut, or a forged length) is a truncation.
    let p = p.get(..total).ok_or(FrameError::TruncatedIp)?;
    let ff = u16::from_be_bytes([p[6], p[7]]);
    let more = ff & 0x2000 != 0;
    let offset = usize::from(ff & 0x1fff) * 8;
    let frag =
        (more || offset != 0).then(|| Frag { id: u32::from(u16::from_be_bytes([p[4], p[5]])), offset, more });
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Ok(IpPacket { src: src.into(), dst: dst.into(), proto: p[9], frag, payload: &p[ihl..] })
}

fn ipv6(p: &[u8]) -> Result<IpPacket<'_>, FrameError> {
    if p.len() < 40 {
        return Err(FrameError::TruncatedIp);
    }
    let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
    // Jumbograms (payload length 0, RFC 2675) carry nothing we can judge.
    let p = p.get(..40 + plen).ok_or(FrameError::TruncatedIp)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&p[8..24]);
    dst.copy_from_slice(&p[24..40]);
    let mut next = p[6];
    let mut at = 40;
    let mut frag = None;
    let mut walked = 0;
    loop {
        let len = match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => (usize::from(*p.get(at + 1).ok_or(FrameError::TruncatedIp)?) + 1) * 8,
            // Authentication header (RFC 4302): (len + 2) * 4 bytes.
            51 => (usize::from(*p.get(at + 1).ok_or(FrameError::TruncatedIp)?) + 2) * 4,
            44 => {
                let h = p.get(at..at + 8).ok_or(FrameError::TruncatedIp)?;
                let off_m = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                frag = Some(Frag { id, offset: usize::from(off_m >> 3) * 8, more: off_m & 1 != 0 });
                8
            }
            _ => break,
        };
        if walked == MAX_EXT_HEADERS {
            return Err(FrameError::TooManyExtHeaders);
        }
        walked += 1;
        next = p[at];
        at += len;
        // A later fragment's payload is not a header chain: stop here.
        if frag.is_some_and(|f| f.offset != 0) {
            break;
        }
    }
    Ok(IpPacket {
        src: Ipv6Addr::from(src).into(),
        dst: Ipv6Addr::from(dst).into(),
        proto: next,
        // An atomic fragment (offset 0, no more, RFC 6946) is a whole datagram.
        frag: frag.filter(|f| f.more || f.offset != 0),
        payload: p.get(at..).ok_or(FrameError::TruncatedIp)?,
    })
}

/// A UDP datagram's ports and payload (the length field must be consistent).
pub fn udp(seg: &[u8]) -> Result<(u16, u16, &[u8]), FrameError> {
    let sport = be16(seg, 0).ok_or(FrameError::TruncatedTransport)?;
    let dport = be16(seg, 2).ok_or(FrameError::TruncatedTransport)?;
    let len = usize::from(be16(seg, 4).ok_or(FrameError::TruncatedTransport)?);
    if len < 8 {
        return Err(FrameError::TruncatedTransport);
    }
    let data = seg.get(8..len).ok_or(FrameError::TruncatedTransport)?;
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

/// Parses a TCP header (RFC 9293 §3.1); the whole header (data offset) must
/// be present.
pub fn tcp(seg: &[u8]) -> Result<TcpSeg<'_>, FrameError> {
    if seg.len() < 20 {
        return Err(FrameError::TruncatedTransport);
    }
    let off = usize::from(seg[12] >> 4) * 4;
    if off < 20 {
        return Err(FrameError::TruncatedTransport);
    }
    let data = seg.get(off..).ok_or(FrameError::TruncatedTransport)?;
    let flags = seg[13];
    Ok(TcpSeg {
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        seq: u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]),
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
        data,
    })
}

/// The transport ports an enforcement point judges a packet by: `None` for a
/// later fragment or a protocol other than TCP/UDP; an error when the TCP or
/// UDP header is not whole (the tiny-fragment rule, RFC 1858 §3.1: a first
/// fragment must carry the whole transport header).
pub fn ports(ip: &IpPacket<'_>) -> Result<Option<(u16, u16)>, FrameError> {
    if ip.is_later_fragment() {
        return Ok(None);
    }
    let seg = ip.payload;
    match ip.proto {
        PROTO_TCP => tcp(seg).map(|t| Some((t.sport, t.dport))),
        PROTO_UDP if seg.len() >= 8 => {
            Ok(Some((u16::from_be_bytes([seg[0], seg[1]]), u16::from_be_bytes([seg[2], seg[3]]))))
        }
        PROTO_UDP => Err(FrameError::TruncatedTransport),
        _ => Ok(None),
    }
}

/// What an enforcement point needs to know about an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// Ethernet source address (the sending host, or the last router).
    pub src_mac: crate::policy::MacAddr,
    /// Outer VLAN id, when tagged.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol of the transport header (after IPv6 extension headers).
    pub proto: u8,
    /// Transport ports `(src, dst)`; `None` for a later fragment or a
    /// protocol without ports.
    pub ports: Option<(u16, u16)>,
    /// An IP fragment, first or later (an IPv6 atomic fragment is not one).
    pub fragment: bool,
    /// A non-first fragment (no transport header; passed by policy).
    pub later_fragment: bool,
    /// Offset of the IP header in the frame.
    pub l3_offset: usize,
    /// Offset of the transport header in the frame.
    pub l4_offset: usize,
}

/// Parses an Ethernet frame down to the transport ports, applying every
/// rule of the module docs.
pub fn parse(frame: &[u8]) -> Result<PacketInfo, FrameError> {
    let (vlan, ethertype, packet) = ethernet(frame)?;
    // The ethertype decides, as in Open vSwitch and the XDP program: the
    // version nibble is not checked (receivers drop a mismatch themselves).
    let ip = if ethertype == ETH_IPV4 { ipv4(packet)? } else { ipv6(packet)? };
    let ports = ports(&ip)?;
    // Both are sub-slices of `frame`.
    let at = |s: &[u8]| (s.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    let mut src_mac = [0u8; 6];
    // `ethernet` accepted the frame, so its 14-byte header is there.
    if let Some(m) = frame.get(6..12) {
        src_mac.copy_from_slice(m);
    }
    Ok(PacketInfo {
        src_mac: crate::policy::MacAddr(src_mac),
        vlan,
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        ports,
        fragment: ip.frag.is_some(),
        later_fragment: ip.is_later_fragment(),
        l3_offset: at(packet),
        l4_offset: at(ip.payload),
    })
}
