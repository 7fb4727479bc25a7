//! The release path: a TAP device whose tc ingress program (`rpz_release`
//! in the XDP object) hands every frame written to it to the enforcement
//! interface's receive path (`bpf_redirect(ifindex, BPF_F_INGRESS)`).
//!
//! Why this way (tried on 6.18, `CONFIG_TUN`, `CONFIG_NET_XGRESS` built in):
//! a frame written to a TAP enters the stack *on the TAP*, so the firewall's
//! `iif`, rp_filter and policy routing would see a foreign interface. The
//! tc program moves it to the ingress of the interface it arrived on, where
//! `eth_type_trans` sees its own MAC as destination: routing, conntrack,
//! NAT, the netfilter hooks and rp_filter treat it exactly like the original
//! arrival. Native XDP does not run again (it runs in the driver, before the
//! stack); generic XDP does, and passes it on the verdict cached before the
//! release. No `AF_PACKET` or XDP TX path can do this: both transmit.
//!
//! Checksums: a frame from a wire carries complete checksums. A frame a
//! local namespace sent through a veth may carry a *partial* TCP/UDP
//! checksum (only the pseudo-header sum; `CHECKSUM_PARTIAL` metadata that
//! XDP does not see). Releasing those bytes plainly would forward a packet
//! with a wrong checksum, so [`checksum_state`] tells the two apart and the
//! release passes a partial one with a virtio-net header asking the kernel
//! to complete it, which is what the kernel's own forwarding of that frame
//! would have done. The bytes released are the bytes received either way.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::frame::PacketInfo;

/// The state of a frame's TCP/UDP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Complete (valid, or absent: UDP over IPv4 with 0), or not judged.
    AsIs,
    /// Only the pseudo-header sum is in place: the sender left the rest to
    /// offload. `start` is the transport header's offset in the frame,
    /// `offset` the checksum field's offset within it.
    Partial {
        /// Offset of the transport header.
        start: u16,
        /// Offset of the checksum field from `start`.
        offset: u16,
    },
}

/// Folds a 32-bit ones'-complement accumulator to 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Adds `data` as big-endian 16-bit words (RFC 1071).
fn add_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    fold(sum).into()
}

/// Tells a complete TCP/UDP checksum from a partial one (RFC 1071 sums
/// over the pseudo-header of RFC 793 / RFC 8200 section 8.1). Anything that
/// does not parse, is a fragment, or is neither is [`Checksum::AsIs`]: it
/// is released as received, as the kernel would forward it.
pub fn checksum_state(frame: &[u8], info: &PacketInfo) -> Checksum {
    let field = match info.proto {
        6 => 16,
        17 => 6,
        _ => return Checksum::AsIs,
    };
    if info.fragment {
        return Checksum::AsIs;
    }
    let l3 = info.l3_offset;
    let be16 = |o: usize| frame.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let end = match info.src {
        std::net::IpAddr::V4(_) => be16(l3 + 2).map(|len| l3 + usize::from(len)),
        std::net::IpAddr::V6(_) => be16(l3 + 4).map(|len| l3 + 40 + usize::from(len)),
    };
    let Some(segment) = end.and_then(|end| frame.get(info.l4_offset..end)) else { return Checksum::AsIs };
    let Some(have) = segment.get(field..field + 2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return Checksum::AsIs;
    };
    if info.proto == 17 && have == 0 && info.src.is_ipv4() {
        return Checksum::AsIs;
    }
    let mut pseudo = 0u32;
    match (info.src, info.dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            pseudo = add_words(pseudo, &s.octets());
            pseudo = add_words(pseudo, &d.octets());
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            pseudo = add_words(pseudo, &s.octets());
            pseudo = add_words(pseudo, &d.octets());
        }
        _ => return Checksum::AsIs,
    }
    let len = u32::try_from(segment.len()).unwrap_or(u32::MAX);
    pseudo = add_words(pseudo, &[0, info.proto]);
    pseudo = add_words(pseudo, &len.to_be_bytes());
    if fold(add_words(pseudo, segment)) == 0xffff {
        return Checksum::AsIs;
    }
    let (Ok(start), Ok(offset)) = (u16::try_from(info.l4_offset), u16::try_from(field)) else {
        return Checksum::AsIs;
    };
    // Linux leaves the folded pseudo-header sum, not complemented.
    let partial = fold(pseudo);
    if have == partial || (partial == 0xffff && have == 0) {
        Checksum::Partial { start, offset }
    } else {
        Checksum::AsIs
    }
}

/// A TAP device owned by this process (it disappears when closed).
pub struct ReleaseTap {
    fd: OwnedFd,
    name: String,
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str) -> io::Result<IfReqFlags> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    let mut r = IfReqFlags { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    for (d, s) in r.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

impl ReleaseTap {
    /// Creates TAP `name` (no packet-info header), disables IPv6 on it (it
    /// must not originate traffic of its own) and brings it up.
    pub fn create(name: &str) -> io::Result<ReleaseTap> {
        // SAFETY: open(2) of a fixed path.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just got.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq(name)?;
        // A virtio-net header before each frame carries the checksum state.
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF takes a struct ifreq, which `req` lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        set_up(name)?;
        Ok(ReleaseTap { fd, name: name.to_owned() })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Releases one frame (the exact bytes received); a partial checksum
    /// is left for the kernel to complete, as its own forwarding would.
    pub fn release(&self, frame: &[u8], csum: Checksum) -> io::Result<()> {
        // struct virtio_net_hdr (host byte order for a TAP without
        // TUNSETVNETLE/BE): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
        let mut hdr = [0u8; 10];
        if let Checksum::Partial { start, offset } = csum {
            hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
            hdr[6..8].copy_from_slice(&start.to_ne_bytes());
            hdr[8..10].copy_from_slice(&offset.to_ne_bytes());
        }
        let iov = [
            libc::iovec { iov_base: hdr.as_mut_ptr().cast(), iov_len: hdr.len() },
            libc::iovec { iov_base: frame.as_ptr().cast_mut().cast(), iov_len: frame.len() },
        ];
        // SAFETY: writev(2) from two valid buffers; the kernel only reads them.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != hdr.len() + frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to the release TAP"));
        }
        Ok(())
    }
}

/// Sets IFF_UP on `name`.
fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket(2) for interface ioctls.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just got.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS take a struct ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface index of `name` (0 when there is none).
pub fn ifindex(name: &str) -> u32 {
    std::ffi::CString::new(name)
        .ok()
        // SAFETY: a valid C string.
        .map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::parse;

    /// IPv4 + TCP SYN with checksum field `check`.
    fn syn(check: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 10, 198, 51, 100, 25]);
        f.extend_from_slice(&[0x9c, 0x40, 0, 25, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff]);
        f.extend_from_slice(&check.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f
    }

    #[test]
    fn tells_complete_from_partial_checksums() {
        // Pseudo-header sum and the full checksum, computed independently.
        let words: [u32; 6] = [0x0a00, 0x000a, 0xc633, 0x6419, 6, 20];
        let pseudo = fold(words.iter().sum());
        let seg: u32 = [0x9c40u32, 25, 0, 1, 0, 0, 0x5002, 0xffff, 0, 0].iter().sum();
        let full = !fold(u32::from(pseudo) + seg);
        let f = syn(full);
        assert_eq!(checksum_state(&f, &parse(&f).expect("parse")), Checksum::AsIs);
        let f = syn(pseudo);
        assert_eq!(
            checksum_state(&f, &parse(&f).expect("parse")),
            Checksum::Partial { start: 34, offset: 16 }
        );
        // Neither: a corrupt checksum is forwarded as received.
        let f = syn(full ^ 0x0101);
        assert_eq!(checksum_state(&f, &parse(&f).expect("parse")), Checksum::AsIs);
        // Truncated segment: not judged.
        let f = syn(pseudo);
        assert_eq!(checksum_state(&f[..40], &parse(&f).expect("parse")), Checksum::AsIs);
    }
}
