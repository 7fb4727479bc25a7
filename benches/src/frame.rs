//! Hand-built Ethernet frames for the XDP benchmarks.

use std::net::{Ipv4Addr, Ipv6Addr};

/// IP protocol number of TCP.
pub const TCP: u8 = 6;
/// IP protocol number of UDP.
pub const UDP: u8 = 17;

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, vlan: Option<u16>) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A TCP SYN (20 bytes) or UDP header (8 bytes) toward `dport`.
pub fn l4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    if proto == TCP {
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        h.extend_from_slice(&[0, 8, 0, 0]);
    }
    h
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 frame (optionally VLAN-tagged) with a valid header checksum.
pub fn v4(
    macs: ([u8; 6], [u8; 6]),
    vlan: Option<u16>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    dport: u16,
) -> Vec<u8> {
    let payload = l4(proto, 40000, dport);
    let mut f = eth(macs.0, macs.1, 0x0800, vlan);
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&payload);
    f
}

/// An IPv6 frame.
pub fn v6(macs: ([u8; 6], [u8; 6]), src: Ipv6Addr, dst: Ipv6Addr, proto: u8, dport: u16) -> Vec<u8> {
    let payload = l4(proto, 40000, dport);
    let mut f = eth(macs.0, macs.1, 0x86dd, None);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.push(proto);
    f.push(64);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&payload);
    f
}

/// Placeholder MAC pair for test-run frames.
pub const TEST_MACS: ([u8; 6], [u8; 6]) = ([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = v4(TEST_MACS, None, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), TCP, 25);
        let h = &f[14..34];
        let sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded, 0xffff);
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(f[36..38], 25u16.to_be_bytes());
    }
}
