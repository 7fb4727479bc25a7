//! A fast flood toward many distinct destinations from inside a lab
//! namespace: TCP SYN frames (built by [`crate::spoof::Spoofer`], here with
//! the host's own address) sent through `AF_PACKET` sockets with
//! `sendmmsg` in batches ([`SENDERS`] threads), the queueing discipline bypassed, the destination
//! address changing with every frame. The destinations run through whole
//! /8s, so none repeats within 2^24 frames per /8; route those /8s
//! to the lab's `inet` namespace so nothing leaves the lab. One process
//! reaches several times trafgen's rate here: no ring to fill and flush,
//! and only the changed address and its two checksums are rewritten.
//!
//! ```no_run
//! use guard_tests::{Lab, LabConfig, Role, flood::{Flood, FloodSpec}};
//! let lab = Lab::up(LabConfig::for_test("flood")).expect("lab");
//! let spec = FloodSpec {
//!     ns: lab.ns(Role::Bot),
//!     iface: "eth0".into(),
//!     src_mac: lab.mac(Role::Bot, "eth0").expect("mac"),
//!     dst_mac: lab.mac(Role::Router, "in0").expect("mac"),
//!     src: lab.addrs().bot_v4,
//!     first_octets: vec![110],
//!     dport: 25,
//! };
//! let flood = Flood::start(&spec).expect("flood");
//! std::thread::sleep(std::time::Duration::from_secs(1));
//! let sent = flood.stop().expect("flood ran");
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use crate::{LabError, Result, netns, spoof};

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 256;
/// Sending threads, each with its own socket and every `SENDERS`-th
/// destination: the kernel's path of a frame (two veths, the bridge, the
/// XDP program) runs on the sender's CPU, so one thread per core of the
/// lab machine.
pub const SENDERS: u64 = 2;
/// Ethernet + IPv4 + TCP SYN.
const FRAME_LEN: usize = 14 + 20 + 20;
/// Where the destination address and the checksums sit in a frame.
const DST_AT: usize = 30;
const IP_CSUM_AT: usize = 24;
const TCP_CSUM_AT: usize = 34 + 16;

/// What to send, from where.
#[derive(Debug, Clone)]
pub struct FloodSpec {
    /// Namespace of the sender.
    pub ns: String,
    /// Interface the frames leave by.
    pub iface: String,
    /// The sender's MAC.
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the router's inside interface).
    pub dst_mac: [u8; 6],
    /// The sender's address.
    pub src: Ipv4Addr,
    /// First octets of the /8s the destinations run through, in order;
    /// each gives 2^24 distinct addresses.
    pub first_octets: Vec<u8>,
    /// TCP destination port.
    pub dport: u16,
}

impl FloodSpec {
    /// Destination of frame number `i` (`None` once every /8 is used up).
    pub fn destination(&self, i: u64) -> Option<Ipv4Addr> {
        let octet = *self.first_octets.get(usize::try_from(i >> 24).ok()?)?;
        Some(Ipv4Addr::from((u32::from(octet) << 24) | (i & 0x00ff_ffff) as u32))
    }

    /// How many distinct destinations the /8s hold.
    pub fn capacity(&self) -> u64 {
        (self.first_octets.len() as u64) << 24
    }
}

/// A running flood; [`Flood::stop`] ends it (dropping it does too).
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Flood {
    /// Opens the sockets in `spec.ns` and starts the senders.
    pub fn start(spec: &FloodSpec) -> Result<Flood> {
        let template = template(spec);
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let mut threads = Vec::new();
        for first in 0..SENDERS {
            let fd = open_socket(&spec.ns, &spec.iface)?;
            let (stop, sent, spec) = (stop.clone(), sent.clone(), spec.clone());
            threads.push(std::thread::spawn(move || send_loop(&fd, &spec, first, &template, &stop, &sent)));
        }
        Ok(Flood { stop, sent, threads })
    }

    /// Frames the kernel took so far (each to a destination not used before).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// False once a sender stopped (destinations used up, or an error).
    pub fn is_running(&self) -> bool {
        !self.threads.is_empty() && self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops the senders; returns the frames sent, or the error that stopped one.
    pub fn stop(mut self) -> Result<u64> {
        self.halt().map_err(|e| LabError::io("flood sender", e))?;
        Ok(self.sent())
    }

    fn halt(&mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(r) => result = result.and(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        result
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// An `AF_PACKET` socket in `ns` bound to `iface`, bypassing the qdisc.
fn open_socket(ns: &str, iface: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(iface).map_err(|_| {
        LabError::io(format!("interface name {iface:?}"), std::io::ErrorKind::InvalidInput.into())
    })?;
    netns::run_in_netns(ns, || -> std::io::Result<OwnedFd> {
        // SAFETY: plain socket calls with valid, initialised arguments; the
        // fd is owned at once.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let one: libc::c_int = 1;
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Protocol 0: bound for sending only, nothing is received.
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            if libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(fd)
        }
    })?
    .map_err(|e| LabError::io(format!("AF_PACKET socket on {iface} in {ns}"), e))
}

/// One SYN frame toward the first destination, its checksums valid.
fn template(spec: &FloodSpec) -> [u8; FRAME_LEN] {
    let sp = spoof::Spoofer { src_mac: spec.src_mac, dst_mac: spec.dst_mac, src: spec.src.into() };
    let first = spec.destination(0).unwrap_or(Ipv4Addr::UNSPECIFIED);
    let frames = sp.frames(&[SocketAddr::V4(SocketAddrV4::new(first, spec.dport))], 0);
    let mut t = [0u8; FRAME_LEN];
    if let Some(f) = frames.first().filter(|f| f.len() == FRAME_LEN) {
        t.copy_from_slice(f);
    }
    t
}

/// Sums of the IPv4 header and of the TCP segment with its pseudo-header,
/// without the destination address and the checksum fields: what stays the
/// same in every frame.
fn base_sums(t: &[u8; FRAME_LEN]) -> (u32, u32) {
    let mut ip = t[14..34].to_vec();
    ip[DST_AT - 14..DST_AT - 14 + 4].fill(0);
    ip[IP_CSUM_AT - 14..IP_CSUM_AT - 14 + 2].fill(0);
    let mut tcp = t[34..].to_vec();
    tcp[16..18].fill(0);
    let mut pseudo = t[26..30].to_vec();
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    (spoof::sum(&ip), spoof::sum(&tcp) + spoof::sum(&pseudo))
}

/// The Internet checksum of a sum, `dst` added.
fn finish(base: u32, dst: u32) -> [u8; 2] {
    let mut s = base + (dst >> 16) + (dst & 0xffff);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    (!(s as u16)).to_be_bytes()
}

/// Sends to destinations `first`, `first + SENDERS`, … until stopped or
/// used up.
fn send_loop(
    fd: &OwnedFd,
    spec: &FloodSpec,
    first: u64,
    template: &[u8; FRAME_LEN],
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let (ip_base, tcp_base) = base_sums(template);
    let mut frames = vec![*template; BATCH];
    let mut iov: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: FRAME_LEN })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut n = 0;
        while n < BATCH {
            let Some(dst) = spec.destination((next + n as u64) * SENDERS + first) else { break };
            let dst = u32::from(dst);
            let f = &mut frames[n];
            f[DST_AT..DST_AT + 4].copy_from_slice(&dst.to_be_bytes());
            f[IP_CSUM_AT..IP_CSUM_AT + 2].copy_from_slice(&finish(ip_base, dst));
            f[TCP_CSUM_AT..TCP_CSUM_AT + 2].copy_from_slice(&finish(tcp_base, dst));
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        let mut done = 0;
        while done < n && !stop.load(Ordering::Relaxed) {
            // SAFETY: `msgs[done..n]` point at live iovecs over live frames.
            let r =
                unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs[done..n].as_mut_ptr(), (n - done) as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => std::thread::yield_now(),
                    _ => return Err(e),
                }
            } else {
                done += r as usize;
                sent.fetch_add(r as u64, Ordering::Relaxed);
            }
        }
        next += done as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FloodSpec {
        FloodSpec {
            ns: String::new(),
            iface: String::new(),
            src_mac: [2, 0, 0, 0, 0, 0x66],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: Ipv4Addr::new(10, 1, 0, 66),
            first_octets: vec![110, 111],
            dport: 25,
        }
    }

    #[test]
    fn destinations_run_through_the_slash_eights_without_repeats() {
        let s = spec();
        assert_eq!(s.destination(0), Some(Ipv4Addr::new(110, 0, 0, 0)));
        assert_eq!(s.destination((1 << 24) - 1), Some(Ipv4Addr::new(110, 255, 255, 255)));
        assert_eq!(s.destination(1 << 24), Some(Ipv4Addr::new(111, 0, 0, 0)));
        assert_eq!(s.destination(2 << 24), None);
        assert_eq!(s.capacity(), 2 << 24);
    }

    #[test]
    fn rewritten_frames_keep_valid_checksums() {
        let s = spec();
        let t = template(&s);
        let (ip_base, tcp_base) = base_sums(&t);
        for i in [0u64, 1, 77_777, (1 << 24) + 5] {
            let dst = u32::from(s.destination(i).expect("in range"));
            let mut f = t;
            f[DST_AT..DST_AT + 4].copy_from_slice(&dst.to_be_bytes());
            f[IP_CSUM_AT..IP_CSUM_AT + 2].copy_from_slice(&finish(ip_base, dst));
            f[TCP_CSUM_AT..TCP_CSUM_AT + 2].copy_from_slice(&finish(tcp_base, dst));
            let mut pseudo = f[26..34].to_vec();
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            assert_eq!(finish(spoof::sum(&f[14..34]), 0), [0, 0], "IPv4 header checksum of frame {i}");
            assert_eq!(
                finish(spoof::sum(&f[34..]) + spoof::sum(&pseudo), 0),
                [0, 0],
                "TCP checksum of frame {i}"
            );
        }
    }
}
