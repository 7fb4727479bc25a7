//! A small bounds-checked parser for the frames a packet-in carries:
//! Ethernet, up to two VLAN tags (802.1Q / 802.1ad), IPv4 (with options),
//! IPv6 (a bounded walk over extension headers), TCP and UDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the controller needs to know about a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// Outer VLAN id, when tagged.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol of the transport header (after IPv6 extension headers).
    pub proto: u8,
    /// Transport ports `(src, dst)`; `None` for a non-first fragment or a
    /// protocol without ports.
    pub ports: Option<(u16, u16)>,
    /// The packet is an IP fragment (first or later).
    pub fragment: bool,
    /// Offset of the IP header in the frame.
    pub l3_offset: usize,
    /// Offset of the transport header in the frame.
    pub l4_offset: usize,
}

/// Why a frame could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The frame ends inside a header.
    #[error("frame truncated in the {layer} header")]
    Truncated {
        /// The header being read.
        layer: &'static str,
    },
    /// Not IPv4 or IPv6.
    #[error("not an IP frame (ethertype {ethertype:#06x})")]
    NotIp {
        /// The innermost ethertype.
        ethertype: u16,
    },
    /// A header field is impossible (IHL < 5, version mismatch).
    #[error("malformed {layer} header")]
    Malformed {
        /// The header being read.
        layer: &'static str,
    },
    /// More IPv6 extension headers than we walk.
    #[error("IPv6 extension chain longer than {max}")]
    ExtChain {
        /// The bound.
        max: usize,
    },
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 extension headers walked before giving up.
pub const MAX_EXT_HEADERS: usize = 8;

fn get<const N: usize>(b: &[u8], off: usize, layer: &'static str) -> Result<[u8; N], PacketError> {
    let s = off.checked_add(N).and_then(|end| b.get(off..end)).ok_or(PacketError::Truncated { layer })?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}

fn be16(b: &[u8], off: usize, layer: &'static str) -> Result<u16, PacketError> {
    get::<2>(b, off, layer).map(u16::from_be_bytes)
}

/// Parses an Ethernet frame down to the transport ports.
pub fn parse(frame: &[u8]) -> Result<PacketInfo, PacketError> {
    let mut off = 12;
    let mut ethertype = be16(frame, off, "ethernet")?;
    off += 2;
    let mut vlan = None;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tci = be16(frame, off, "vlan")?;
        vlan.get_or_insert(tci & 0x0fff);
        ethertype = be16(frame, off + 2, "vlan")?;
        off += 4;
    }
    let l3_offset = off;
    let (src, dst, proto, l4, fragment, first) = match ethertype {
        ETH_P_IP => {
            let vihl = get::<1>(frame, off, "ipv4")?[0];
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(PacketError::Malformed { layer: "ipv4" });
            }
            let frag = be16(frame, off + 6, "ipv4")?;
            let offset = frag & 0x1fff;
            let more = frag & 0x2000 != 0;
            let proto = get::<1>(frame, off + 9, "ipv4")?[0];
            let src = Ipv4Addr::from(get::<4>(frame, off + 12, "ipv4")?);
            let dst = Ipv4Addr::from(get::<4>(frame, off + 16, "ipv4")?);
            get::<1>(frame, off + ihl - 1, "ipv4 options")?;
            (IpAddr::V4(src), IpAddr::V4(dst), proto, off + ihl, more || offset != 0, offset == 0)
        }
        ETH_P_IPV6 => {
            let v = get::<1>(frame, off, "ipv6")?[0];
            if v >> 4 != 6 {
                return Err(PacketError::Malformed { layer: "ipv6" });
            }
            let mut next = get::<1>(frame, off + 6, "ipv6")?[0];
            let src = Ipv6Addr::from(get::<16>(frame, off + 8, "ipv6")?);
            let dst = Ipv6Addr::from(get::<16>(frame, off + 24, "ipv6")?);
            let mut l4 = off + 40;
            let (mut fragment, mut first) = (false, true);
            let mut walked = 0;
            loop {
                match next {
                    // Hop-by-hop, routing, destination options.
                    0 | 43 | 60 => {
                        let h = get::<2>(frame, l4, "ipv6 extension")?;
                        next = h[0];
                        l4 += (usize::from(h[1]) + 1) * 8;
                    }
                    44 => {
                        let h = get::<4>(frame, l4, "ipv6 fragment")?;
                        next = h[0];
                        let offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                        fragment = true;
                        first = offset == 0;
                        l4 += 8;
                    }
                    _ => break,
                }
                walked += 1;
                if walked > MAX_EXT_HEADERS {
                    return Err(PacketError::ExtChain { max: MAX_EXT_HEADERS });
                }
            }
            (IpAddr::V6(src), IpAddr::V6(dst), next, l4, fragment, first)
        }
        other => return Err(PacketError::NotIp { ethertype: other }),
    };
    let ports = match proto {
        6 | 17 if first => {
            let layer = if proto == 6 { "tcp" } else { "udp" };
            Some((be16(frame, l4, layer)?, be16(frame, l4 + 2, layer)?))
        }
        _ => None,
    };
    Ok(PacketInfo { vlan, src, dst, proto, ports, fragment, l3_offset, l4_offset: l4 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut f = eth(ETH_P_IP);
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0, 10, 0, 0, 5, 198, 51, 100, 25]);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn parses_ipv4_tcp_and_fragments() {
        let p = parse(&ipv4(6, 0, &[0x30, 0x39, 0, 25])).expect("tcp");
        assert_eq!(p.ports, Some((12345, 25)));
        assert_eq!(p.dst, "198.51.100.25".parse::<IpAddr>().expect("ip"));
        assert!(!p.fragment);
        let first = parse(&ipv4(6, 0x2000, &[0, 1, 0, 25])).expect("first fragment");
        assert!(first.fragment);
        assert_eq!(first.ports, Some((1, 25)));
        let later = parse(&ipv4(6, 0x0010, &[])).expect("later fragment");
        assert!(later.fragment);
        assert_eq!(later.ports, None);
        assert!(matches!(parse(&ipv4(6, 0, &[0, 1])), Err(PacketError::Truncated { layer: "tcp" })));
    }

    #[test]
    fn parses_vlan_and_ipv6_extensions() {
        let mut f = eth(ETH_P_8021Q);
        f.extend_from_slice(&[0x00, 0x07]);
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 24, 0, 64]);
        f.extend_from_slice(
            &[0x20, 0x01, 0x0d, 0xb8]
                .iter()
                .chain([0u8; 11].iter())
                .chain([1].iter())
                .copied()
                .collect::<Vec<_>>(),
        );
        f.extend_from_slice(
            &[0x20, 0x01, 0x0d, 0xb8]
                .iter()
                .chain([0u8; 11].iter())
                .chain([2].iter())
                .copied()
                .collect::<Vec<_>>(),
        );
        // Hop-by-hop (8 bytes) then UDP.
        f.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&[0x04, 0xd2, 0, 53, 0, 8, 0, 0]);
        let p = parse(&f).expect("v6");
        assert_eq!(p.vlan, Some(7));
        assert_eq!(p.proto, 17);
        assert_eq!(p.ports, Some((1234, 53)));
        assert_eq!(p.dst, "2001:db8::2".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn rejects_non_ip_and_garbage() {
        assert!(matches!(parse(&eth(0x0806)), Err(PacketError::NotIp { ethertype: 0x0806 })));
        assert!(parse(&[]).is_err());
        let mut bad = ipv4(6, 0, &[0, 1, 0, 25]);
        bad[14] = 0x43;
        assert!(matches!(parse(&bad), Err(PacketError::Malformed { .. })));
    }
}
