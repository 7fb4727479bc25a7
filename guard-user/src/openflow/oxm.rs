//! OXM flow matches (OpenFlow 1.3.5 §7.2.2): `ofp_match` of type OXM, a list
//! of TLVs `class:16 | field:7 | hasmask:1 | length:8 | value | mask`, padded
//! to a multiple of 8 bytes.
//!
//! Besides the standard `OFPXMC_OPENFLOW_BASIC` fields we decode Open
//! vSwitch's `NXM_NX_IP_FRAG` (class `NXM_1`, field 26), the fragment
//! selector used by the fragment policy; any other field is kept as raw bytes
//! so that a decoded match re-encodes byte for byte.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    codec::DecodeError,
    wire::{Put, Reader, len16, pad8},
};

/// `OFPXMC_OPENFLOW_BASIC`.
pub const CLASS_BASIC: u16 = 0x8000;
/// `OFPXMC_NXM_1` (Nicira extensions, used by OVS for `nw_frag`).
pub const CLASS_NXM1: u16 = 0x0001;
/// `OFPMT_OXM`.
pub const MATCH_TYPE_OXM: u16 = 1;

const F_IN_PORT: u8 = 0;
const F_ETH_SRC: u8 = 4;
const F_ETH_TYPE: u8 = 5;
const F_VLAN_VID: u8 = 6;
const F_IP_PROTO: u8 = 10;
const F_IPV4_SRC: u8 = 11;
const F_IPV4_DST: u8 = 12;
const F_TCP_SRC: u8 = 13;
const F_TCP_DST: u8 = 14;
const F_UDP_SRC: u8 = 15;
const F_UDP_DST: u8 = 16;
const F_IPV6_SRC: u8 = 26;
const F_IPV6_DST: u8 = 27;
/// `NXM_NX_IP_FRAG` field number in class `NXM_1`.
const NX_IP_FRAG: u8 = 26;

/// `nw_frag` bit: the packet is a fragment (first or later).
pub const FRAG_ANY: u8 = 1;
/// `nw_frag` bit: the packet is a non-first fragment.
pub const FRAG_LATER: u8 = 2;

/// One OXM TLV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Oxm {
    /// `OXM_OF_IN_PORT`.
    InPort(u32),
    /// `OXM_OF_ETH_TYPE`.
    EthType(u16),
    /// `OXM_OF_VLAN_VID` with optional mask (`0x1000` = tag present).
    VlanVid(u16, Option<u16>),
    /// `OXM_OF_IP_PROTO`.
    IpProto(u8),
    /// `OXM_OF_IPV4_SRC` with optional mask.
    Ipv4Src(Ipv4Addr, Option<Ipv4Addr>),
    /// `OXM_OF_IPV4_DST` with optional mask.
    Ipv4Dst(Ipv4Addr, Option<Ipv4Addr>),
    /// `OXM_OF_IPV6_SRC` with optional mask.
    Ipv6Src(Ipv6Addr, Option<Ipv6Addr>),
    /// `OXM_OF_IPV6_DST` with optional mask.
    Ipv6Dst(Ipv6Addr, Option<Ipv6Addr>),
    /// `OXM_OF_TCP_SRC`.
    TcpSrc(u16),
    /// `OXM_OF_TCP_DST`.
    TcpDst(u16),
    /// `OXM_OF_UDP_SRC`.
    UdpSrc(u16),
    /// `OXM_OF_UDP_DST`.
    UdpDst(u16),
    /// OVS `NXM_NX_IP_FRAG` (`nw_frag`): value and optional mask of
    /// [`FRAG_ANY`] / [`FRAG_LATER`].
    IpFrag(u8, Option<u8>),
    /// Any other field, kept verbatim (value and mask concatenated).
    Other {
        /// OXM class.
        class: u16,
        /// Field number (7 bits).
        field: u8,
        /// Whether a mask follows the value.
        has_mask: bool,
        /// Value followed by mask, as on the wire.
        payload: Vec<u8>,
    },
}

/// An `ofp_match` of type OXM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    /// The TLVs in wire order.
    pub fields: Vec<Oxm>,
}

impl Match {
    /// A match from fields.
    pub fn new(fields: Vec<Oxm>) -> Self {
        Match { fields }
    }

    /// The first field that `pick` maps to something.
    pub fn find<T>(&self, pick: impl Fn(&Oxm) -> Option<T>) -> Option<T> {
        self.fields.iter().find_map(pick)
    }

    /// The `in_port` field, if present.
    pub fn in_port(&self) -> Option<u32> {
        self.find(|f| if let Oxm::InPort(p) = f { Some(*p) } else { None })
    }

    /// Appends the match (header, TLVs, padding) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u16(MATCH_TYPE_OXM);
        out.put_u16(0);
        for f in &self.fields {
            f.encode(out);
        }
        let len = out.len() - start;
        out.set_u16(start + 2, len16(len));
        out.put_zeros(pad8(len));
    }

    /// Decodes a match (with its padding) from `r`.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Match, DecodeError> {
        let typ = r.u16()?;
        let len = usize::from(r.u16()?);
        if typ != MATCH_TYPE_OXM {
            return Err(DecodeError::Malformed { what: "ofp_match", why: "match type is not OXM" });
        }
        if len < 4 {
            return Err(DecodeError::Malformed { what: "ofp_match", why: "length below 4" });
        }
        let body = r.bytes(len - 4)?;
        r.skip(pad8(len))?;
        let mut fr = Reader::new(body, "oxm");
        let mut fields = Vec::new();
        while fr.remaining() > 0 {
            fields.push(Oxm::decode(&mut fr)?);
        }
        Ok(Match { fields })
    }
}

fn hdr(out: &mut Vec<u8>, class: u16, field: u8, has_mask: bool, len: usize) {
    out.put_u16(class);
    out.put_u8((field << 1) | u8::from(has_mask));
    out.put_u8(u8::try_from(len).unwrap_or(u8::MAX));
}

impl Oxm {
    /// `OXM_OF_ETH_SRC` (exact), kept as [`Oxm::Other`] as the decoder
    /// reads it, so a match round-trips unchanged.
    pub fn eth_src(mac: [u8; 6]) -> Oxm {
        Oxm::Other { class: CLASS_BASIC, field: F_ETH_SRC, has_mask: false, payload: mac.to_vec() }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let basic = |out: &mut Vec<u8>, field: u8, v: &[u8], m: Option<&[u8]>| {
            hdr(out, CLASS_BASIC, field, m.is_some(), v.len() + m.map_or(0, <[u8]>::len));
            out.extend_from_slice(v);
            if let Some(m) = m {
                out.extend_from_slice(m);
            }
        };
        match self {
            Oxm::InPort(p) => basic(out, F_IN_PORT, &p.to_be_bytes(), None),
            Oxm::EthType(t) => basic(out, F_ETH_TYPE, &t.to_be_bytes(), None),
            Oxm::VlanVid(v, m) => {
                basic(out, F_VLAN_VID, &v.to_be_bytes(), m.map(u16::to_be_bytes).as_ref().map(|a| &a[..]))
            }
            Oxm::IpProto(p) => basic(out, F_IP_PROTO, &[*p], None),
            Oxm::Ipv4Src(a, m) => {
                basic(out, F_IPV4_SRC, &a.octets(), m.map(|m| m.octets()).as_ref().map(|a| &a[..]))
            }
            Oxm::Ipv4Dst(a, m) => {
                basic(out, F_IPV4_DST, &a.octets(), m.map(|m| m.octets()).as_ref().map(|a| &a[..]))
            }
            Oxm::Ipv6Src(a, m) => {
                basic(out, F_IPV6_SRC, &a.octets(), m.map(|m| m.octets()).as_ref().map(|a| &a[..]))
            }
            Oxm::Ipv6Dst(a, m) => {
                basic(out, F_IPV6_DST, &a.octets(), m.map(|m| m.octets()).as_ref().map(|a| &a[..]))
            }
            Oxm::TcpSrc(p) => basic(out, F_TCP_SRC, &p.to_be_bytes(), None),
            Oxm::TcpDst(p) => basic(out, F_TCP_DST, &p.to_be_bytes(), None),
            Oxm::UdpSrc(p) => basic(out, F_UDP_SRC, &p.to_be_bytes(), None),
            Oxm::UdpDst(p) => basic(out, F_UDP_DST, &p.to_be_bytes(), None),
            Oxm::IpFrag(v, m) => {
                hdr(out, CLASS_NXM1, NX_IP_FRAG, m.is_some(), 1 + usize::from(m.is_some()));
                out.put_u8(*v);
                if let Some(m) = m {
                    out.put_u8(*m);
                }
            }
            Oxm::Other { class, field, has_mask, payload } => {
                hdr(out, *class, *field & 0x7f, *has_mask, payload.len());
                out.extend_from_slice(payload);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Oxm, DecodeError> {
        let class = r.u16()?;
        let fm = r.u8()?;
        let (field, has_mask) = (fm >> 1, fm & 1 == 1);
        let len = usize::from(r.u8()?);
        let payload = r.bytes(len)?;
        let bad = || DecodeError::Malformed { what: "oxm", why: "field length does not fit its type" };
        let mut p = Reader::new(payload, "oxm value");
        // Known fields must have exactly their size; odd sizes stay raw.
        let known = match (class, field, has_mask, len) {
            (CLASS_BASIC, F_IN_PORT, false, 4) => Some(Oxm::InPort(p.u32()?)),
            (CLASS_BASIC, F_ETH_TYPE, false, 2) => Some(Oxm::EthType(p.u16()?)),
            (CLASS_BASIC, F_VLAN_VID, false, 2) => Some(Oxm::VlanVid(p.u16()?, None)),
            (CLASS_BASIC, F_VLAN_VID, true, 4) => Some(Oxm::VlanVid(p.u16()?, Some(p.u16()?))),
            (CLASS_BASIC, F_IP_PROTO, false, 1) => Some(Oxm::IpProto(p.u8()?)),
            (CLASS_BASIC, F_IPV4_SRC | F_IPV4_DST, m, l) if l == if m { 8 } else { 4 } => {
                let a = Ipv4Addr::from(p.array::<4>()?);
                let mask = if m { Some(Ipv4Addr::from(p.array::<4>()?)) } else { None };
                Some(if field == F_IPV4_SRC { Oxm::Ipv4Src(a, mask) } else { Oxm::Ipv4Dst(a, mask) })
            }
            (CLASS_BASIC, F_IPV6_SRC | F_IPV6_DST, m, l) if l == if m { 32 } else { 16 } => {
                let a = Ipv6Addr::from(p.array::<16>()?);
                let mask = if m { Some(Ipv6Addr::from(p.array::<16>()?)) } else { None };
                Some(if field == F_IPV6_SRC { Oxm::Ipv6Src(a, mask) } else { Oxm::Ipv6Dst(a, mask) })
            }
            (CLASS_BASIC, F_TCP_SRC, false, 2) => Some(Oxm::TcpSrc(p.u16()?)),
            (CLASS_BASIC, F_TCP_DST, false, 2) => Some(Oxm::TcpDst(p.u16()?)),
            (CLASS_BASIC, F_UDP_SRC, false, 2) => Some(Oxm::UdpSrc(p.u16()?)),
            (CLASS_BASIC, F_UDP_DST, false, 2) => Some(Oxm::UdpDst(p.u16()?)),
            (CLASS_NXM1, NX_IP_FRAG, false, 1) => Some(Oxm::IpFrag(p.u8()?, None)),
            (CLASS_NXM1, NX_IP_FRAG, true, 2) => Some(Oxm::IpFrag(p.u8()?, Some(p.u8()?))),
            _ => None,
        };
        if has_mask && len % 2 != 0 {
            return Err(bad());
        }
        Ok(known.unwrap_or_else(|| Oxm::Other { class, field, has_mask, payload: payload.to_vec() }))
    }
}

/// The IPv4 netmask of a prefix length (0..=32).
pub fn v4_mask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) })
}

/// The IPv6 netmask of a prefix length (0..=128).
pub fn v6_mask(len: u8) -> Ipv6Addr {
    Ipv6Addr::from(if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) })
}
