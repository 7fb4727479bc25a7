//! The rpz-guard XDP program: DNS and SMTP egress only toward destinations the
//! organization's resolver learned (mirrored from the BIND RPZ into maps).
//!
//! Per packet: parse Ethernet, up to two VLAN tags, IPv4 (options) or IPv6
//! (bounded extension chain), then TCP/UDP. A packet is *checked* when its
//! destination port is protected ([`PORTS`]), its source is not exempt and its
//! destination is not internal. A checked packet passes when the destination's
//! classes include one the service needs (allow maps, then the verdict cache);
//! an unknown destination is a *miss*: with the AF_XDP transport the packet
//! is redirected to the socket of its RX queue and held while userspace
//! decides (later packets toward the same pending destination join it);
//! with the ring-buffer transport, or when no socket serves the queue, it is
//! dropped while userspace asks the RPZ. A tc program (`rpz_release`) puts
//! packets userspace released back into the interface's receive path.
//!
//! Awkward cases, decided here and tested from userspace:
//! * Non-first fragments carry no ports and pass: without their first
//!   fragment, which is checked, they cannot be reassembled (RFC 1858). A
//!   first fragment too short to hold the ports is dropped as malformed.
//! * Truncated IP or L4 headers are dropped as malformed (fail closed).
//! * An IPv6 extension chain longer than [`MAX_EXT_HEADERS`] is dropped.
//! * Frames that are not IP, and IP that is not TCP/UDP, pass untouched.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod prog;

/// On the host this crate is only a placeholder; `guard-user/build.rs`
/// builds the real object for `bpfel-unknown-none`.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("guard-ebpf is an eBPF program: it is built for bpfel-unknown-none by guard-user's build.rs");
}
