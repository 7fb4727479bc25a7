//! One AF_XDP socket with its own UMEM, receive side only, on `libc`.
//!
//! Only what the miss path needs: a UMEM of equal frames, the fill ring
//! (frames lent to the kernel), the RX ring (frames the XDP program
//! redirected to us) and the completion ring (required by `bind`, unused:
//! we never transmit). Frames are owned by exactly one of: the fill ring,
//! the kernel, the RX ring, the caller (held), or the free list; the caller
//! returns each frame it took with [`XskSocket::recycle`].
//!
//! Kernel interface: `Documentation/networking/af_xdp.rst` and
//! `include/uapi/linux/if_xdp.h`. Copy mode works on any driver (veth,
//! generic XDP); zero-copy needs driver support and is tried first in
//! [`BindMode::Auto`].
//!
//! # Minimum kernel version
//!
//! 5.4 (`xdp_umem_reg` flags, XSKMAP lookups from BPF); tested on 6.18.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

/// Size of one UMEM frame. The kernel puts `XDP_PACKET_HEADROOM` (256)
/// bytes before the data, so frames up to 1792 bytes are received: MTU
/// 1500 with two VLAN tags fits; larger frames are dropped by the kernel
/// and counted in [`XskStats::rx_dropped`].
pub const FRAME_SIZE: u32 = 2048;

/// How to bind the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// Zero-copy when the driver supports it, else copy mode.
    #[default]
    Auto,
    /// Copy mode only (any driver).
    Copy,
    /// Zero-copy only (fails on drivers without support).
    Zerocopy,
}

impl std::fmt::Display for BindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindMode::Auto => "auto",
            BindMode::Copy => "copy",
            BindMode::Zerocopy => "zerocopy",
        })
    }
}

/// Kernel counters of one socket (`XDP_STATISTICS`). A frame the kernel
/// could not deliver is counted in `rx_dropped` (no free frame, too big)
/// or in `rx_ring_full` (userspace behind), never in both; see
/// [`XskStats::drops`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XskStats {
    /// Frames dropped for want of a free UMEM frame (fill ring empty) or room in one (too big).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full (userspace behind).
    pub rx_ring_full: u64,
    /// Times the fill ring was found empty (a cause of `rx_dropped`).
    pub rx_fill_ring_empty: u64,
}

impl XskStats {
    /// Every frame the kernel redirected to the socket but could not deliver.
    pub fn drops(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full
    }
}

impl std::ops::AddAssign for XskStats {
    fn add_assign(&mut self, o: XskStats) {
        self.rx_dropped += o.rx_dropped;
        self.rx_ring_full += o.rx_ring_full;
        self.rx_fill_ring_empty += o.rx_fill_ring_empty;
    }
}

/// A received frame: where it lies in the UMEM and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Offset of the packet data in the UMEM.
    pub addr: u64,
    /// Length of the packet.
    pub len: u32,
}

/// An anonymous shared mapping, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(len: usize, fd: Option<BorrowedFd<'_>>, offset: u64) -> io::Result<Mmap> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1),
        };
        let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh mapping; the kernel validates fd, length and offset.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, raw, off)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Mmap { ptr, len })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A single-producer single-consumer ring shared with the kernel.
struct Ring {
    // Kept for its Drop: the pointers below point into it.
    _map: Mmap,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    desc: *mut u8,
    mask: u32,
    size: u32,
    /// Our copy of the index we own (producer for fill, consumer for RX).
    local: u32,
}

impl Ring {
    fn map(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        desc_size: usize,
        pgoff: u64,
    ) -> io::Result<Ring> {
        let bytes = usize::try_from(off.desc).map_err(|_| io::Error::other("ring offset"))?
            + size as usize * desc_size;
        let map = Mmap::new(bytes, Some(fd), pgoff)?;
        let base = map.ptr.as_ptr();
        let at = |o: u64| -> io::Result<*mut u8> {
            let o = usize::try_from(o).map_err(|_| io::Error::other("ring offset"))?;
            if o + 4 > bytes {
                return Err(io::Error::other("ring offset outside the mapping"));
            }
            // SAFETY: within the mapping (checked above).
            Ok(unsafe { base.add(o) })
        };
        Ok(Ring {
            producer: at(off.producer)?.cast(),
            consumer: at(off.consumer)?.cast(),
            desc: at(off.desc)?,
            mask: size - 1,
            size,
            local: 0,
            _map: map,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: a u32 index the kernel shares with us, valid while `map` lives.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }
}

/// An AF_XDP socket bound to one RX queue of an interface, with its UMEM.
pub struct XskSocket {
    fd: OwnedFd,
    umem: Mmap,
    rx: Ring,
    fill: Ring,
    _comp: Ring,
    free: Vec<u64>,
    frames: u32,
    zerocopy: bool,
}

// SAFETY: the raw pointers point into mappings the value owns; it is used
// by one thread at a time (moved into its hold thread).
unsafe impl Send for XskSocket {}

fn setsockopt<T>(fd: &OwnedFd, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` is a valid T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn getsockopt<T: Copy>(fd: &OwnedFd, name: libc::c_int, val: &mut T) -> io::Result<usize> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is a writable T of `len` bytes.
    let rc =
        unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_XDP, name, (val as *mut T).cast(), &mut len) };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(len as usize) }
}

impl XskSocket {
    /// Opens a socket on queue `queue` of interface `ifindex`, with
    /// `ring_size` entries in the RX and fill rings (a power of two) and a
    /// UMEM of `frames` frames (at least twice `ring_size`; the rest is
    /// what the caller may hold).
    pub fn open(
        ifindex: u32,
        queue: u32,
        ring_size: u32,
        frames: u32,
        mode: BindMode,
    ) -> io::Result<XskSocket> {
        if !ring_size.is_power_of_two() || frames < ring_size * 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring size must be a power of two, frames >= 2 x ring",
            ));
        }
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just got.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mmap::new(frames as usize * FRAME_SIZE as usize, None, 0)?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem.len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg)?;
        setsockopt(&fd, libc::XDP_UMEM_FILL_RING, &ring_size)?;
        // Required by bind; we never transmit, so the smallest ring will do.
        let comp_size: u32 = 64;
        setsockopt(&fd, libc::XDP_UMEM_COMPLETION_RING, &comp_size)?;
        setsockopt(&fd, libc::XDP_RX_RING, &ring_size)?;
        // SAFETY: all-zero is a valid xdp_mmap_offsets.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let got = getsockopt(&fd, libc::XDP_MMAP_OFFSETS, &mut off)?;
        if got != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(io::Error::other("kernel without ring flags in XDP_MMAP_OFFSETS (older than 5.4)"));
        }
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let rx = Ring::map(fd.as_fd(), &off.rx, ring_size, desc, libc::XDP_PGOFF_RX_RING as u64)?;
        let fill = Ring::map(fd.as_fd(), &off.fr, ring_size, 8, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let comp = Ring::map(fd.as_fd(), &off.cr, comp_size, 8, libc::XDP_UMEM_PGOFF_COMPLETION_RING)?;
        let mut sock = XskSocket {
            fd,
            umem,
            rx,
            fill,
            _comp: comp,
            free: (0..u64::from(frames)).rev().map(|i| i * u64::from(FRAME_SIZE)).collect(),
            frames,
            zerocopy: false,
        };
        // Lend the kernel a full fill ring before binding: frames arrive at once.
        sock.refill();
        let bind = |flags: u16| {
            let sa = libc::sockaddr_xdp {
                sxdp_family: libc::AF_XDP as u16,
                sxdp_flags: flags,
                sxdp_ifindex: ifindex,
                sxdp_queue_id: queue,
                sxdp_shared_umem_fd: 0,
            };
            // SAFETY: a valid sockaddr_xdp of the size passed.
            let rc = unsafe {
                libc::bind(
                    sock.fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_xdp).cast(),
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        };
        match mode {
            BindMode::Copy => bind(libc::XDP_COPY)?,
            BindMode::Zerocopy => bind(libc::XDP_ZEROCOPY)?,
            // No flag: the kernel tries zero-copy and falls back to copy.
            BindMode::Auto => bind(0)?,
        }
        let mut opts = libc::xdp_options { flags: 0 };
        if getsockopt(&sock.fd, libc::XDP_OPTIONS, &mut opts).is_ok() {
            sock.zerocopy = opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;
        }
        Ok(sock)
    }

    /// True when bound in zero-copy mode.
    pub fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Frames of the UMEM.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Frames neither lent to the kernel nor taken by the caller.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Frames currently lent to the kernel through the fill ring (or in flight).
    pub fn lent_frames(&self) -> u32 {
        self.fill.local.wrapping_sub(self.fill.consumer().load(Ordering::Acquire))
    }

    /// Moves free frames into the fill ring, as many as fit.
    pub fn refill(&mut self) {
        let cons = self.fill.consumer().load(Ordering::Acquire);
        let room = self.fill.size - self.fill.local.wrapping_sub(cons);
        let n = room.min(u32::try_from(self.free.len()).unwrap_or(u32::MAX));
        if n == 0 {
            return;
        }
        for _ in 0..n {
            let Some(addr) = self.free.pop() else { break };
            let slot = (self.fill.local & self.fill.mask) as usize * 8;
            // SAFETY: slot < size * 8, inside the descriptor array.
            unsafe { self.fill.desc.add(slot).cast::<u64>().write_volatile(addr) };
            self.fill.local = self.fill.local.wrapping_add(1);
        }
        self.fill.producer().store(self.fill.local, Ordering::Release);
    }

    /// Takes up to `max` received frames into `out`; the caller owns them
    /// until it passes each to [`XskSocket::recycle`].
    pub fn receive(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let prod = self.rx.producer().load(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.rx.local) as usize;
        let n = avail.min(max);
        for _ in 0..n {
            let slot = (self.rx.local & self.rx.mask) as usize * std::mem::size_of::<libc::xdp_desc>();
            // SAFETY: slot lies inside the descriptor array; the kernel wrote
            // it before publishing `prod` (acquire above).
            let d = unsafe { self.rx.desc.add(slot).cast::<libc::xdp_desc>().read_volatile() };
            out.push(Frame { addr: d.addr, len: d.len });
            self.rx.local = self.rx.local.wrapping_add(1);
        }
        if n > 0 {
            self.rx.consumer().store(self.rx.local, Ordering::Release);
        }
        n
    }

    /// The bytes of a received frame; empty when the descriptor points
    /// outside the UMEM (never trusted blindly).
    pub fn data(&self, f: Frame) -> &[u8] {
        let start = usize::try_from(f.addr).unwrap_or(usize::MAX);
        let end = start.saturating_add(f.len as usize);
        if end > self.umem.len || (f.addr % u64::from(FRAME_SIZE)) + u64::from(f.len) > u64::from(FRAME_SIZE)
        {
            return &[];
        }
        // SAFETY: inside the UMEM (checked), which lives as long as self;
        // the kernel does not write a frame while userspace owns it.
        unsafe { std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(start), f.len as usize) }
    }

    /// Returns a frame taken by [`XskSocket::receive`] to the free list.
    pub fn recycle(&mut self, f: Frame) {
        let base = f.addr - f.addr % u64::from(FRAME_SIZE);
        if base < u64::from(self.frames) * u64::from(FRAME_SIZE) {
            self.free.push(base);
        }
    }

    /// The kernel's counters for this socket.
    pub fn stats(&self) -> io::Result<XskStats> {
        // SAFETY: all-zero is a valid xdp_statistics.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        getsockopt(&self.fd, libc::XDP_STATISTICS, &mut s)?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
        })
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Number of RX queues of `iface` (from sysfs; 1 when unknown).
pub fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count()
        })
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}
