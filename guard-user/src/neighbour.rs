//! The router's neighbour entries of exempt hosts, kept resolved by the
//! kernel so the XDP route check can verify those hosts from their first
//! packet.
//!
//! The route check (see [`crate::antispoof`]) reads the kernel's neighbour
//! table. A router has an entry for a host only once it has sent to it or
//! heard its ARP/ND. An exempt resolver that already holds the router's MAC
//! (a router restart; a resolver on a second address of a host) sends its
//! queries without asking, the router has no entry, and each query is
//! "unverified": judged like any host's, so queries to unregistered servers
//! are dropped, no answer ever comes back through the router, and nothing
//! makes the router resolve the host. The daemon breaks that circle by
//! asking the kernel for a *managed* entry (`NTF_EXT_MANAGED`, Linux 5.16)
//! for each exempt host on the enforcement interface's own subnets: the
//! kernel resolves it by ARP/ND at once and keeps it resolved. The answer
//! comes from the host that holds the address, exactly as for the router's
//! own traffic, so the check trusts nothing new. Existing entries (learnt,
//! or static ones an operator set) are left as they are.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::policy::Prefix;

/// `NDA_FLAGS_EXT` (linux/neighbour.h; not in the libc crate).
const NDA_FLAGS_EXT: u16 = 15;
/// `NTF_EXT_MANAGED`: the kernel resolves the entry and keeps it resolved.
const NTF_EXT_MANAGED: u32 = 1;

/// Errors of asking the kernel for a managed neighbour entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NeighbourError {
    /// The interface does not exist in this network namespace.
    #[error("no interface {iface}")]
    NoInterface {
        /// The interface name.
        iface: String,
    },
    /// The netlink socket could not be used.
    #[error("netlink: {source}")]
    Netlink {
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the entry.
    #[error("kernel refused a managed neighbour entry for {addr} on {iface}: {source}")]
    Refused {
        /// The host address.
        addr: IpAddr,
        /// The interface.
        iface: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// What became of a request for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Managed {
    /// A new managed entry: the kernel is resolving it.
    Created,
    /// The router already has an entry for it (left as it is).
    Existing,
}

/// The exempt host addresses (`/32`, `/128`) among `exempt` that lie on one
/// of `iface`'s own subnets, for the families asked (`v4`, `v6`): the hosts
/// whose neighbour entry the router itself holds. Exempt hosts behind an
/// inside router are verified through that router's entry, which all the
/// traffic toward the inside keeps resolved. Link-local subnets are skipped.
pub fn on_link_hosts(iface: &str, exempt: &[Prefix], v4: bool, v6: bool) -> Vec<IpAddr> {
    let subnets = iface_subnets(iface);
    exempt
        .iter()
        .filter(|p| p.len() == if p.addr().is_ipv6() { 128 } else { 32 })
        .map(Prefix::addr)
        .filter(|a| if a.is_ipv6() { v6 } else { v4 })
        .filter(|a| subnets.iter().any(|s| s.contains(*a)))
        .collect()
}

/// Asks the kernel for a managed neighbour entry of `addr` on `iface`
/// (created only if the router has none: an existing entry, static or
/// learnt, is never replaced).
pub fn keep_resolved(iface: &str, addr: IpAddr) -> Result<Managed, NeighbourError> {
    let c = std::ffi::CString::new(iface).map_err(|_| NeighbourError::NoInterface { iface: iface.into() })?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(NeighbourError::NoInterface { iface: iface.into() });
    }
    let msg = new_neigh(ifindex, addr);
    let netlink = |source| NeighbourError::Netlink { source };
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let raw =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if raw < 0 {
        return Err(netlink(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_nl is the kernel as destination.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: the buffer and address are valid for the call.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(netlink(io::Error::last_os_error()));
    }
    let mut buf = [0u8; 1024];
    // SAFETY: a valid buffer of its stated length.
    let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let got = usize::try_from(got).map_err(|_| netlink(io::Error::last_os_error()))?;
    match ack_errno(&buf[..got]) {
        Some(0) => Ok(Managed::Created),
        Some(e) if e == -libc::EEXIST => Ok(Managed::Existing),
        Some(e) => Err(NeighbourError::Refused {
            addr,
            iface: iface.into(),
            source: io::Error::from_raw_os_error(-e),
        }),
        None => Err(netlink(io::Error::new(io::ErrorKind::InvalidData, "no acknowledgement"))),
    }
}

/// `RTM_NEWNEIGH` for a managed entry of `addr` (create, never replace;
/// state `NUD_NONE`: the kernel resolves it), acknowledged.
fn new_neigh(ifindex: u32, addr: IpAddr) -> Vec<u8> {
    let (family, octets): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, filled in below
    m.extend_from_slice(&libc::RTM_NEWNEIGH.to_ne_bytes());
    m.extend_from_slice(&(flags as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns
    // struct ndmsg
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&libc::NUD_NONE.to_ne_bytes());
    m.extend_from_slice(&[0, 0]); // ndm_flags, ndm_type
    attr(&mut m, libc::NDA_DST, &octets);
    attr(&mut m, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn attr(m: &mut Vec<u8>, kind: u16, data: &[u8]) {
    m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(data);
    m.resize(m.len().next_multiple_of(4), 0);
}

/// The error code of a netlink acknowledgement (`NLMSG_ERROR`; 0: done).
fn ack_errno(buf: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    if kind != libc::NLMSG_ERROR as u16 {
        return None;
    }
    Some(i32::from_ne_bytes(buf.get(16..20)?.try_into().ok()?))
}

/// The subnets of `iface`'s addresses (link-local ones left out).
fn iface_subnets(iface: &str) -> Vec<Prefix> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head`, freed below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string of the node.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: address pointers of the node, read per their family.
        let (Some(a), Some(m)) = (unsafe { sock_ip(ifa.ifa_addr) }, unsafe { sock_ip(ifa.ifa_netmask) })
        else {
            continue;
        };
        let len = match m {
            IpAddr::V4(m) => u32::from(m).count_ones(),
            IpAddr::V6(m) => u128::from(m).count_ones(),
        };
        let link_local = match a {
            IpAddr::V4(a) => a.is_link_local(),
            IpAddr::V6(a) => a.is_unicast_link_local(),
        };
        if !link_local && let Ok(p) = Prefix::new(a, len as u8) {
            out.push(p);
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// The address in a `sockaddr` of family `AF_INET` or `AF_INET6`.
///
/// # Safety
/// `sa` is null or points to a sockaddr as large as its family says.
unsafe fn sock_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: per the contract, read by the family it states.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let s = &*sa.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(u32::from_be(s.sin_addr.s_addr).into()))
            }
            libc::AF_INET6 => {
                let s = &*sa.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(s.sin6_addr.s6_addr.into()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_managed_create_that_never_replaces() {
        let m = new_neigh(7, "10.1.0.54".parse().expect("addr"));
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().expect("len")) as usize, m.len());
        let flags = u16::from_ne_bytes([m[6], m[7]]);
        assert_ne!(flags & libc::NLM_F_EXCL as u16, 0, "an existing entry is never touched");
        assert_eq!(flags & libc::NLM_F_REPLACE as u16, 0);
        assert_eq!(
            &m[16..28],
            &[2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0][..],
            "ndmsg: AF_INET, ifindex 7, NUD_NONE"
        );
        assert_eq!(&m[32..36], &[10, 1, 0, 54], "NDA_DST");
        assert_eq!(u16::from_ne_bytes([m[38], m[39]]), NDA_FLAGS_EXT);
        assert_eq!(u32::from_ne_bytes(m[40..44].try_into().expect("flags")), NTF_EXT_MANAGED);
        let v6 = new_neigh(7, "fd00::53".parse().expect("addr"));
        assert_eq!(v6[16], libc::AF_INET6 as u8);
        assert_eq!(v6.len(), 16 + 12 + 20 + 8);
    }

    #[test]
    fn acknowledgements_are_read_and_anything_else_is_not() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(-libc::EEXIST));
        assert_eq!(ack_errno(&ack[..10]), None, "truncated");
        ack[4..6].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack), None, "not an acknowledgement");
    }

    #[test]
    fn an_unknown_interface_is_an_error_not_a_panic() {
        let e = keep_resolved("nosuchif0", "10.1.0.54".parse().expect("addr"));
        assert!(matches!(e, Err(NeighbourError::NoInterface { .. })), "{e:?}");
        assert!(
            on_link_hosts("nosuchif0", &[Prefix::host("10.1.0.54".parse().expect("a"))], true, true)
                .is_empty()
        );
    }
}
