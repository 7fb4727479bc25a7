//! The program proper (compiled only for the BPF target).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, TC_ACT_SHOT,
        bpf_fib_lookup as FibLookup,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::{
        bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
        generated::{bpf_fib_lookup, bpf_redirect, bpf_xdp_load_bytes},
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, XskMap, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use guard_common::{
    CACHE_PENDING, CacheEntry, DEFAULT_EVENTS_PER_SOURCE, DEFAULT_MISSES_PER_SOURCE, DEFAULT_PENDING_MS,
    DNS_COPY_BYTES, DNS_COPY_MAX, DNS_DIR_QUERY, DNS_DIR_RESPONSE, DnsCopyBuf, DnsCopyHeader, EVENT_DROP,
    EVENT_MISS, EVENTS_BYTES, EXEMPT_VERIFY_MAC, EXEMPT_VERIFY_ROUTE, Event, HIT_SHIFT, HostValue,
    MAP_F_NO_PREALLOC, MAX_ALLOW_V4, MAX_ALLOW_V6, MAX_CACHE, MAX_EXEMPT_MACS, MAX_LPM_SMALL, MAX_PREFIXES,
    MAX_RATE, MAX_XSK_QUEUES, MISS_TRANSPORT_AFXDP, MODE_COUNT, PORT_TCP_SHIFT, PORT_UDP_SHIFT, PORTS_LEN,
    REF_BUMPS, RateState, SERVICE_DNS, STAT_COUNT, STATE_NOT_LOADED, Settings, Stat, VALUE_DENY,
    classes_required, reason,
};

/// Bound on IPv6 extension headers walked before giving up (and dropping).
pub const MAX_EXT_HEADERS: usize = 6;
/// Bound on the L4 offset, so the verifier sees a bounded packet pointer.
const MAX_L4_OFFSET: usize = 512;

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const NS_PER_SEC: u64 = 1_000_000_000;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Map update flag: only if the key is not there yet.
const BPF_NOEXIST: u64 = 1;

/// `bpf_redirect` flag: deliver to the device's receive path, not its transmit path.
const BPF_F_INGRESS: u64 = 1;

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);
#[map(name = "PORTS")]
static PORTS: Array<u32> = Array::with_max_entries(PORTS_LEN, 0);
#[map(name = "ALLOW_V4")]
static ALLOW_V4: HashMap<[u8; 4], HostValue> = HashMap::with_max_entries(MAX_ALLOW_V4, 0);
#[map(name = "ALLOW_V6")]
static ALLOW_V6: HashMap<[u8; 16], HostValue> = HashMap::with_max_entries(MAX_ALLOW_V6, 0);
#[map(name = "ALLOW_PFX_V4")]
static ALLOW_PFX_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_PREFIXES, MAP_F_NO_PREALLOC);
#[map(name = "ALLOW_PFX_V6")]
static ALLOW_PFX_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_PREFIXES, MAP_F_NO_PREALLOC);
#[map(name = "EXEMPT_V4")]
static EXEMPT_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_LPM_SMALL, MAP_F_NO_PREALLOC);
#[map(name = "EXEMPT_V6")]
static EXEMPT_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_LPM_SMALL, MAP_F_NO_PREALLOC);
#[map(name = "EXEMPT_MACS")]
static EXEMPT_MACS: HashMap<[u8; 6], u32> = HashMap::with_max_entries(MAX_EXEMPT_MACS, 0);
#[map(name = "INTERNAL_V4")]
static INTERNAL_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_LPM_SMALL, MAP_F_NO_PREALLOC);
#[map(name = "INTERNAL_V6")]
static INTERNAL_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_LPM_SMALL, MAP_F_NO_PREALLOC);
#[map(name = "VERDICT_CACHE")]
static VERDICT_CACHE: LruHashMap<[u8; 16], CacheEntry> = LruHashMap::with_max_entries(MAX_CACHE, 0);
#[map(name = "EVENT_RATE")]
static EVENT_RATE: LruHashMap<[u8; 16], RateState> = LruHashMap::with_max_entries(MAX_RATE, 0);
#[map(name = "MISS_RATE")]
static MISS_RATE: LruHashMap<[u8; 16], RateState> = LruHashMap::with_max_entries(MAX_RATE, 0);
#[map(name = "OVER_BUDGET")]
static OVER_BUDGET: PerCpuArray<OverBudget> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "SETTINGS")]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map(name = "HIT_CLOCK")]
static HIT_CLOCK: Array<u32> = Array::with_max_entries(1, 0);
// --- live learning (issue 9) ---
#[map(name = "RESOLVERS_V4")]
static RESOLVERS_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_LPM_SMALL, MAP_F_NO_PREALLOC);
#[map(name = "RESOLVERS_V6")]
static RESOLVERS_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_LPM_SMALL, MAP_F_NO_PREALLOC);
#[map(name = "DNS_COPY")]
static DNS_COPY: RingBuf = RingBuf::with_byte_size(DNS_COPY_BYTES, 0);
#[map(name = "DNS_SCRATCH")]
static DNS_SCRATCH: PerCpuArray<DnsCopyBuf> = PerCpuArray::with_max_entries(1, 0);
// --- afxdp (issue 10) ---
#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_XSK_QUEUES, 0);

/// This CPU's last source found over its drop-event budget. Until that
/// source's window ends, its further drops on this CPU are counted here
/// without the `EVENT_RATE` lookup (a flood's drop path pays an array
/// lookup, not a hash lookup and write). The count is folded into the
/// source's `EVENT_RATE` state before it matters: when the source is
/// judged there again, or when another source takes the slot.
#[derive(Clone, Copy)]
struct OverBudget {
    src: [u8; 16],
    /// Window start of the source's `EVENT_RATE` state; 0: slot empty.
    window_start_ns: u64,
    /// Drops counted here and not yet folded into `EVENT_RATE`.
    suppressed: u32,
    _pad: u32,
}

/// What the parser found out about a packet that may need a verdict.
struct Pkt {
    src: [u8; 16],
    dst: [u8; 16],
    v4: bool,
    proto: u8,
    dport: u16,
    vlan: u32,
}

/// Adds `n` to counter `stat` of this CPU.
#[inline(always)]
fn bump(stat: Stat, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU slot; XDP does not preempt itself on one CPU.
        unsafe { *p += n };
    }
}

/// A bounds-checked pointer to a `T` at `off` bytes into the packet.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// True when the packet is at least `len` bytes long. Compared as pointers,
/// like [`ptr_at`]: a scalar `data_end - data` invites LLVM to rewrite the
/// pointer checks into scalar ones the verifier cannot use.
#[inline(always)]
fn within(ctx: &XdpContext, len: usize) -> bool {
    ctx.data() + len <= ctx.data_end()
}

/// An LPM trie key laid out so that its address bytes start 8-aligned on
/// the stack. `Key` is packed, its data at offset 4; LLVM may still store
/// an address 8 bytes at a time, and the verifier refuses a misaligned
/// stack access. Here the `Key` begins at offset 4, so its data at 8.
#[repr(C, align(8))]
struct AlignedKey<K> {
    _pad: u32,
    prefix_len: u32,
    data: K,
}

/// Looks up the longest prefix of `map` covering `data` (its first `len` bits).
#[inline(always)]
fn lpm_get<K, V>(map: &LpmTrie<K, V>, len: u32, data: K) -> Option<&V> {
    let k = AlignedKey { _pad: 0, prefix_len: len, data };
    // SAFETY: `Key<K>` is packed (alignment 1): `prefix_len` then `data`,
    // exactly the bytes of `k` from offset 4 on (checked below), within `k`.
    let key = unsafe { &*(&raw const k).cast::<u8>().add(4).cast::<Key<K>>() };
    map.get(key)
}
const _: () = assert!(
    core::mem::offset_of!(AlignedKey<[u8; 4]>, prefix_len) == 4
        && core::mem::offset_of!(AlignedKey<[u8; 4]>, data) == 8
        && core::mem::offset_of!(AlignedKey<[u8; 16]>, prefix_len) == 4
        && core::mem::offset_of!(AlignedKey<[u8; 16]>, data) == 8
);

/// `v`, through a volatile stack slot: LLVM forgets what it knew about it.
/// Once `ip_end` is known to lie within the packet, LLVM would otherwise
/// drop the later [`ptr_at`] checks it implies, and the verifier, which
/// needs each of them, would refuse the program.
#[inline(always)]
fn opaque(v: usize) -> usize {
    // SAFETY: a read of a local, initialised value.
    unsafe { core::ptr::read_volatile(&v) }
}

/// Reads a big-endian u16 at `off`.
#[inline(always)]
fn be16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let b = unsafe { *p };
    Some(u16::from_be_bytes(b))
}

/// Reads `N` bytes at `off`.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    Some(unsafe { *p })
}

fn settings() -> Settings {
    SETTINGS.get(0).copied().unwrap_or_default()
}

/// Final action for a packet the policy refuses: drop, or count and pass in
/// count-only mode.
#[inline(always)]
fn refuse() -> u32 {
    if settings().mode == MODE_COUNT {
        bump(Stat::WouldDrop, 1);
        XDP_PASS
    } else {
        XDP_DROP
    }
}

/// XDP entry point.
#[xdp]
pub fn rpz_guard(ctx: XdpContext) -> u32 {
    bump(Stat::Packets, 1);
    bump(Stat::Bytes, (ctx.data_end() - ctx.data()) as u64);
    match parse(&ctx) {
        Parsed::Pass(stat) => {
            bump(stat, 1);
            XDP_PASS
        }
        Parsed::Drop(stat) => {
            bump(stat, 1);
            refuse()
        }
        Parsed::Check(pkt, service) => {
            // Live learning: a resolver's query on its way out. Other
            // protected traffic pays one comparison for it.
            if service == SERVICE_DNS && is_resolver(&pkt.src, pkt.v4) {
                copy_dns(&ctx, DNS_DIR_QUERY);
            }
            check(&ctx, &pkt, service)
        }
    }
}

/// The outside-interface program of live learning: copies DNS answers to
/// the resolvers (source port a DNS port, and later IP fragments toward a
/// resolver) to the learner and passes every packet. Traffic that is not
/// from a DNS port pays for the header walk and one port lookup.
#[xdp]
pub fn rpz_guard_outside(ctx: XdpContext) -> u32 {
    let Ok(h) = headers::<false>(&ctx) else { return XDP_PASS };
    if !h.later_fragment {
        // The source port is bytes 0..2 of both TCP and UDP headers.
        let Some(sport) = be16_at(&ctx, h.l4off) else { return XDP_PASS };
        if port_service(sport, h.proto) != SERVICE_DNS {
            return XDP_PASS;
        }
    }
    if let Some((_, dst)) = addresses(&ctx, &h)
        && is_resolver(&dst, h.v4)
    {
        copy_dns(&ctx, DNS_DIR_RESPONSE);
    }
    XDP_PASS
}

/// True when `ip` is one of the resolvers whose DNS is learned from.
#[inline(always)]
fn is_resolver(ip: &[u8; 16], v4_addr: bool) -> bool {
    if v4_addr {
        lpm_get(&RESOLVERS_V4, 32, v4(ip)).is_some()
    } else {
        lpm_get(&RESOLVERS_V6, 128, *ip).is_some()
    }
}

/// Copies the frame (at most [`DNS_COPY_MAX`] bytes) with a header onto
/// the copy ring. The packet itself is not held: a full ring loses the
/// copy (counted), never the packet.
#[inline(always)]
fn copy_dns(ctx: &XdpContext, dir: u32) {
    let Some(buf) = DNS_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch slot, valid for the program run.
    let buf = unsafe { &mut *buf };
    let wire = ctx.data_end() - ctx.data();
    let mut n = wire;
    if n > DNS_COPY_MAX {
        n = DNS_COPY_MAX;
        bump(Stat::DnsCopyCut, 1);
    }
    if n == 0 {
        return;
    }
    // SAFETY: reads `n` (1..=DNS_COPY_MAX) packet bytes into the scratch
    // buffer, which holds DNS_COPY_MAX; the helper checks the packet bounds.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx.cast(), 0, buf.data.as_mut_ptr().cast(), n as u32) };
    if rc != 0 {
        return;
    }
    // SAFETY: a helper without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    buf.header = DnsCopyHeader { ts_ns, wire_len: wire as u32, dir };
    let len = core::mem::size_of::<DnsCopyHeader>() + n;
    // SAFETY: the first `len` bytes of the scratch value, which is
    // `size_of::<DnsCopyBuf>()` >= len long.
    let bytes = unsafe { core::slice::from_raw_parts((buf as *const DnsCopyBuf).cast::<u8>(), len) };
    match DNS_COPY.output::<[u8]>(bytes, 0) {
        Ok(()) => bump(Stat::DnsCopied, 1),
        Err(_) => bump(Stat::DnsCopyLost, 1),
    }
}

/// The release path of the AF_XDP miss transport (tc ingress of the
/// daemon's release TAP): a packet userspace held and then allowed enters
/// the enforcement interface's receive path, so routing, conntrack, NAT,
/// the firewall (`iif`) and rp_filter see it as if it had just arrived
/// there. Its verdict is cached before release, so native XDP (which does
/// not see it) and generic XDP (which does) agree.
#[classifier]
pub fn rpz_release(_ctx: TcContext) -> i32 {
    let ifindex = settings().release_ifindex;
    if ifindex == 0 {
        return TC_ACT_SHOT;
    }
    bump(Stat::Released, 1);
    // SAFETY: a helper taking plain integers; it returns TC_ACT_REDIRECT.
    unsafe { bpf_redirect(ifindex, BPF_F_INGRESS) as i32 }
}

/// Reference program for benchmarks: passes everything, touches nothing.
/// Its `BPF_PROG_TEST_RUN` time is the baseline the real program is compared to.
#[xdp]
pub fn pass_all(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

// --- Reference programs for benchmarks: one primitive of the real program
// each, on the same frame, so `xdp-cost` can say what a path is made of on
// the machine at hand. Never attached. They read the frame as untagged
// IPv4 (source at 26, destination at 30) and touch only `REF_COUNT` and
// reads of the real maps.

#[map(name = "REF_COUNT")]
static REF_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(REF_BUMPS, 0);

/// Reference: [`REF_BUMPS`] per-CPU counter bumps, as [`bump`] does each.
#[xdp]
pub fn ref_bump(_ctx: XdpContext) -> u32 {
    for i in 0..REF_BUMPS {
        if let Some(p) = REF_COUNT.get_ptr_mut(i) {
            // SAFETY: a per-CPU slot; XDP does not preempt itself on one CPU.
            unsafe { *p += 1 };
        }
    }
    XDP_PASS
}

/// Reference: one lookup of the destination in `ALLOW_V4`.
#[xdp]
pub fn ref_host(ctx: XdpContext) -> u32 {
    let Some(dst) = bytes_at::<4>(&ctx, 30) else { return XDP_DROP };
    if ALLOW_V4.get_ptr_mut(dst).is_some() { XDP_PASS } else { XDP_DROP }
}

/// Reference: one `VERDICT_CACHE` lookup of the destination (v4-mapped).
#[xdp]
pub fn ref_cache(ctx: XdpContext) -> u32 {
    let Some(d) = bytes_at::<4>(&ctx, 30) else { return XDP_DROP };
    // Built in words: the real path has the key at hand already.
    let words = [0u32, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(d)];
    // SAFETY: four u32s are sixteen initialised bytes.
    let key: [u8; 16] = unsafe { core::mem::transmute(words) };
    // SAFETY: the value is not kept.
    if unsafe { VERDICT_CACHE.get(key) }.is_some() { XDP_PASS } else { XDP_DROP }
}

/// Reference: one exempt-trie lookup of the source.
#[xdp]
pub fn ref_trie(ctx: XdpContext) -> u32 {
    let Some(src) = bytes_at::<4>(&ctx, 26) else { return XDP_DROP };
    if lpm_get(&EXEMPT_V4, 32, src).is_some() { XDP_DROP } else { XDP_PASS }
}

/// Reference: one read of the coarse clock, as [`now_ns`] does.
#[xdp]
pub fn ref_clock(_ctx: XdpContext) -> u32 {
    if now_ns() != 0 { XDP_PASS } else { XDP_DROP }
}

enum Parsed {
    /// Not ours to judge: pass, counting `Stat`.
    Pass(Stat),
    /// Unparseable where a verdict was needed: drop, counting `Stat`.
    Drop(Stat),
    /// A protected packet with its service number.
    Check(Pkt, u32),
}

/// Where the L3 and L4 headers of a frame are.
struct Headers {
    /// Offset of the IP header.
    l3off: usize,
    /// IPv4 (else IPv6).
    v4: bool,
    /// TCP or UDP.
    proto: u8,
    /// Offset of the TCP/UDP header.
    l4off: usize,
    /// Outer VLAN id (0 = untagged).
    vlan: u32,
    /// A non-first fragment: no L4 header (`l4off` is meaningless).
    later_fragment: bool,
    /// Where the IP datagram ends by its own length field (within the frame).
    ip_end: usize,
}

/// Walks Ethernet, up to two VLAN tags and the IP header (IPv6: the
/// extension chain, bounded) to the TCP/UDP header. `Err` is the outcome
/// for frames with no TCP/UDP header to look at. `COUNT` bumps the
/// per-family counters (the enforcement program only: they add up to its
/// packet count).
#[inline(always)]
fn headers<const COUNT: bool>(ctx: &XdpContext) -> Result<Headers, Parsed> {
    let Some(mut ethertype) = be16_at(ctx, 12) else {
        return Err(Parsed::Pass(Stat::NonIp));
    };
    let mut off = ETH_HDR_LEN;
    let mut vlan = 0u32;
    let mut tagged = false;
    // Up to two tags (802.1ad outer + 802.1Q inner); a third is refused.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tci) = be16_at(ctx, off) else { return Err(Parsed::Drop(Stat::DropMalformed)) };
        let Some(inner) = be16_at(ctx, off + 2) else { return Err(Parsed::Drop(Stat::DropMalformed)) };
        if !tagged {
            vlan = u32::from(tci & 0x0fff);
            tagged = true;
        }
        ethertype = inner;
        off += 4;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        // A third tag: more than we inspect, so refused rather than passed.
        return Err(Parsed::Drop(Stat::DropMalformed));
    }
    if COUNT && tagged {
        bump(Stat::Vlan, 1);
    }
    // `ip_end`: where the IP datagram ends by its own length field. Lengths
    // beyond the frame are malformed, and headers must end before `ip_end`
    // (link padding is not a header): the rules of `guard_user::frame`.
    let (v4, proto, l4off, ip_end);
    let mut later_fragment = false;
    match ethertype {
        ETH_P_IP => {
            if COUNT {
                bump(Stat::Ipv4, 1);
            }
            // IHL, total length, fragment field and protocol; the header must still be whole.
            let Some(h) = bytes_at::<10>(ctx, off) else { return Err(Parsed::Drop(Stat::DropMalformed)) };
            if ptr_at::<[u8; 20]>(ctx, off).is_none() {
                return Err(Parsed::Drop(Stat::DropMalformed));
            }
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            // The ethertype names the version; like Open vSwitch, the nibble is not checked.
            if ihl < 20 || total < ihl || !within(ctx, off + total) {
                return Err(Parsed::Drop(Stat::DropMalformed));
            }
            ip_end = opaque(off + total);
            v4 = true;
            proto = h[9];
            if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
                return Err(Parsed::Pass(Stat::Unprotected));
            }
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                later_fragment = true;
            }
            l4off = off + ihl;
        }
        ETH_P_IPV6 => {
            if COUNT {
                bump(Stat::Ipv6, 1);
            }
            let Some(h) = bytes_at::<8>(ctx, off) else { return Err(Parsed::Drop(Stat::DropMalformed)) };
            if ptr_at::<[u8; 32]>(ctx, off + 8).is_none() {
                return Err(Parsed::Drop(Stat::DropMalformed));
            }
            let end = off + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
            if !within(ctx, end) {
                return Err(Parsed::Drop(Stat::DropMalformed));
            }
            ip_end = opaque(end);
            let mut next = h[6];
            let mut o = off + 40;
            let mut found = false;
            for _ in 0..MAX_EXT_HEADERS + 1 {
                match next {
                    IPPROTO_TCP | IPPROTO_UDP => {
                        found = true;
                        break;
                    }
                    // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
                    0 | 43 | 60 => {
                        if o + 2 > ip_end {
                            return Err(Parsed::Drop(Stat::DropMalformed));
                        }
                        let Some(e) = bytes_at::<2>(ctx, o) else {
                            return Err(Parsed::Drop(Stat::DropMalformed));
                        };
                        next = e[0];
                        o += (usize::from(e[1]) + 1) * 8;
                    }
                    // Authentication header: (len + 2) * 4 bytes.
                    51 => {
                        if o + 2 > ip_end {
                            return Err(Parsed::Drop(Stat::DropMalformed));
                        }
                        let Some(e) = bytes_at::<2>(ctx, o) else {
                            return Err(Parsed::Drop(Stat::DropMalformed));
                        };
                        next = e[0];
                        o += (usize::from(e[1]) + 2) * 4;
                    }
                    // Fragment header: 8 bytes; a non-first fragment has no L4 header.
                    44 => {
                        if o + 8 > ip_end {
                            return Err(Parsed::Drop(Stat::DropMalformed));
                        }
                        let Some(e) = bytes_at::<4>(ctx, o) else {
                            return Err(Parsed::Drop(Stat::DropMalformed));
                        };
                        if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                            later_fragment = true;
                            found = true;
                            next = e[0];
                            break;
                        }
                        next = e[0];
                        o += 8;
                    }
                    // ICMPv6, ESP, no-next-header, ...: not a protected service
                    // (when the chain ended inside the datagram).
                    _ if o > ip_end => return Err(Parsed::Drop(Stat::DropMalformed)),
                    _ => return Err(Parsed::Pass(Stat::Unprotected)),
                }
                if o > MAX_L4_OFFSET {
                    return Err(Parsed::Drop(Stat::DropExtChain));
                }
            }
            if !found {
                return Err(Parsed::Drop(Stat::DropExtChain));
            }
            v4 = false;
            proto = next;
            l4off = o;
        }
        _ => return Err(Parsed::Pass(Stat::NonIp)),
    }
    if l4off > MAX_L4_OFFSET {
        return Err(Parsed::Drop(Stat::DropMalformed));
    }
    Ok(Headers { l3off: off, v4, proto, l4off, vlan, later_fragment, ip_end })
}

/// The source and destination addresses (IPv4 as v4-mapped IPv6).
#[inline(always)]
fn addresses(ctx: &XdpContext, h: &Headers) -> Option<([u8; 16], [u8; 16])> {
    let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
    if h.v4 {
        // Source and destination: bytes 12..20 of the IPv4 header.
        let a = bytes_at::<8>(ctx, h.l3off + 12)?;
        src[10] = 0xff;
        src[11] = 0xff;
        dst[10] = 0xff;
        dst[11] = 0xff;
        src[12..16].copy_from_slice(&a[..4]);
        dst[12..16].copy_from_slice(&a[4..]);
    } else {
        src = bytes_at::<16>(ctx, h.l3off + 8)?;
        dst = bytes_at::<16>(ctx, h.l3off + 24)?;
    }
    Some((src, dst))
}

/// The service number `port` has for `proto` in [`PORTS`] (0: none).
#[inline(always)]
fn port_service(port: u16, proto: u8) -> u32 {
    let services = PORTS.get(u32::from(port)).copied().unwrap_or(0);
    let shift = if proto == IPPROTO_TCP { PORT_TCP_SHIFT } else { PORT_UDP_SHIFT };
    (services >> shift) & 0xff
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Parsed {
    let h = match headers::<true>(ctx) {
        Ok(h) => h,
        Err(outcome) => return outcome,
    };
    if h.later_fragment {
        return Parsed::Pass(Stat::Fragment);
    }
    // The transport header must be whole, whatever the port: a first
    // fragment that splits it is the tiny-fragment attack (RFC 1858 §3.1),
    // and a switch cannot read its ports either (same rule in OpenFlow mode).
    let l4len = if h.proto == IPPROTO_TCP {
        let Some(t) = bytes_at::<1>(ctx, h.l4off + 12) else { return Parsed::Drop(Stat::DropMalformed) };
        let doff = usize::from(t[0] >> 4) * 4;
        if doff < 20 {
            return Parsed::Drop(Stat::DropMalformed);
        }
        doff
    } else {
        8
    };
    if h.l4off + l4len > h.ip_end {
        return Parsed::Drop(Stat::DropMalformed);
    }
    // Addresses are copied only once the port says the packet is protected:
    // unprotected traffic pays for the headers it needs and no more.
    // The destination port is bytes 2..4 of both TCP and UDP headers.
    let Some(dport) = be16_at(ctx, h.l4off + 2) else { return Parsed::Drop(Stat::DropMalformed) };
    let service = port_service(dport, h.proto);
    if service == 0 {
        return Parsed::Pass(Stat::Unprotected);
    }
    let Some((src, dst)) = addresses(ctx, &h) else { return Parsed::Drop(Stat::DropMalformed) };
    Parsed::Check(Pkt { src, dst, v4: h.v4, proto: h.proto, dport, vlan: h.vlan }, service)
}

#[inline(always)]
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// The verdict for a protected packet.
///
/// Ordered so that each path pays only for the lookups that can change its
/// outcome: an allowed host, one hash lookup; an exempt source, that and
/// the exempt trie; a destination the miss path already judged, those and
/// the verdict cache.
/// A cached verdict stands for the internal and prefix tries too: it only
/// exists for an address that neither covered when it missed, and
/// userspace forgets it when either changes (`Enforcer::configure`,
/// `Enforcer::apply_diff`).
#[inline(always)]
fn check(ctx: &XdpContext, pkt: &Pkt, service: u32) -> u32 {
    let required = classes_required(service);
    // The common case first: a registered host, one hash lookup, and the
    // value in hand notes the hit.
    let mut host = 0;
    if let Some(e) = host_entry(pkt) {
        // SAFETY: a map value pointer, valid for this program run.
        host = unsafe { (*e).classes };
        if host & required != 0 && host & VALUE_DENY == 0 {
            bump(Stat::PassAllowed, 1);
            note_hit(e);
            return XDP_PASS;
        }
    }
    // Everything below drops, holds or asks, unless the source is exempt
    // (checked first: the resolvers' own traffic pays no more for it).
    let exempt = if pkt.v4 {
        lpm_get(&EXEMPT_V4, 32, v4(&pkt.src)).copied()
    } else {
        lpm_get(&EXEMPT_V6, 128, pkt.src).copied()
    };
    if let Some(flags) = exempt {
        match exempt_origin(ctx, pkt, flags) {
            Origin::Honoured => {
                bump(Stat::ExemptSource, 1);
                return XDP_PASS;
            }
            Origin::Spoofed => {
                bump(Stat::DropSpoofedExempt, 1);
                drop_event(ctx, reason::SPOOFED_EXEMPT, pkt, service, now_ns());
                return refuse();
            }
            // Judged like any other host's packet below.
            Origin::Unverified => bump(Stat::ExemptUnverified, 1),
        }
    }
    // A host entry is the RPZ's own word on the address: no cached verdict
    // is looked at beside it. Nor before the first load (see below).
    if host == 0 && settings().state != STATE_NOT_LOADED {
        let now = now_ns();
        // SAFETY: the value is copied out at once; a concurrent update at
        // worst gives an older verdict, which the TTL bounds anyway.
        if let Some(e) = unsafe { VERDICT_CACHE.get(pkt.dst) }.copied()
            && now < e.expires_ns
        {
            if e.flags & CACHE_PENDING == 0 && e.classes & required != 0 {
                bump(Stat::PassCached, 1);
                return XDP_PASS;
            }
            return cached_refusal(ctx, pkt, service, &e, now);
        }
    }
    let internal = if pkt.v4 {
        lpm_get(&INTERNAL_V4, 32, v4(&pkt.dst)).is_some()
    } else {
        lpm_get(&INTERNAL_V6, 128, pkt.dst).is_some()
    };
    if internal {
        bump(Stat::InternalDest, 1);
        return XDP_PASS;
    }
    let classes = host | prefix_classes(pkt);
    let now = now_ns();
    // A deny (RPZ `CNAME .`) beats every allow that matches too.
    if classes & VALUE_DENY != 0 {
        bump(Stat::DropNotRegistered, 1);
        drop_event(ctx, reason::DENIED, pkt, service, now);
        return refuse();
    }
    if classes != 0 {
        // Allowed by a prefix (manual entries, never aged: no hit noted).
        if classes & required != 0 {
            bump(Stat::PassAllowed, 1);
            return XDP_PASS;
        }
        bump(Stat::DropWrongClass, 1);
        drop_event(ctx, reason::WRONG_CLASS, pkt, service, now);
        return refuse();
    }
    // Before the first allow set is loaded nothing can be decided: deny
    // (the zero state of SETTINGS, so a program never configured fails closed).
    let s = settings();
    if s.state == STATE_NOT_LOADED {
        bump(Stat::DropNotLoaded, 1);
        drop_event(ctx, reason::NOT_LOADED, pkt, service, now);
        return refuse();
    }
    bump(Stat::Miss, 1);
    // Pending first, so a fast userspace answer cannot be overwritten by it;
    // withdrawn when no event reached userspace (the next packet asks again).
    let hold = if s.pending_ms == 0 { DEFAULT_PENDING_MS } else { s.pending_ms };
    let pending =
        CacheEntry { classes: 0, flags: CACHE_PENDING, expires_ns: now + u64::from(hold) * 1_000_000 };
    let _ = VERDICT_CACHE.insert(pkt.dst, pending, 0);
    // The per-source question budget holds for both transports.
    let budget = or_default(s.misses_per_source_per_sec, DEFAULT_MISSES_PER_SOURCE);
    let Some(carried) = within_budget(pkt, now, &MISS_RATE, budget, None) else {
        let _ = VERDICT_CACHE.remove(pkt.dst);
        return refuse();
    };
    if afxdp(&s) {
        if let Ok(action) = XSKS.redirect(ctx.rx_queue_index(), 0) {
            bump(Stat::MissHeld, 1);
            return action;
        }
        // No socket on this queue (daemon gone, queue not served): ask
        // through the ring buffer and drop, as without AF_XDP.
        bump(Stat::MissFallback, 1);
    }
    if !write_event(ctx, EVENT_MISS, reason::PENDING, pkt, service, now, carried) {
        let _ = VERDICT_CACHE.remove(pkt.dst);
    }
    refuse()
}

/// The outcome for a non-exempt packet whose destination has a cached
/// verdict that does not pass it: a pending question (join the wait: held
/// with the first packet, or dropped), or a cached refusal.
#[inline(always)]
fn cached_refusal(ctx: &XdpContext, pkt: &Pkt, service: u32, e: &CacheEntry, now: u64) -> u32 {
    if e.flags & CACHE_PENDING != 0 {
        bump(Stat::Miss, 1);
        if afxdp(&settings())
            && let Ok(action) = XSKS.redirect(ctx.rx_queue_index(), 0)
        {
            bump(Stat::MissHeld, 1);
            return action;
        }
        return refuse();
    }
    let (stat, why) = if e.classes == 0 {
        (Stat::DropNotRegistered, reason::NOT_REGISTERED)
    } else {
        (Stat::DropWrongClass, reason::WRONG_CLASS)
    };
    bump(stat, 1);
    drop_event(ctx, why, pkt, service, now);
    refuse()
}

/// What the anti-spoofing check made of a packet from an exempt source.
enum Origin {
    /// It comes from where the exemption is honoured (or nothing is checked).
    Honoured,
    /// It comes from a MAC or interface it is not honoured from: dropped.
    Spoofed,
    /// The route check could not tell (no neighbour entry yet, or the
    /// interface does not route): not exempt, judged like any host.
    Unverified,
}

/// Checks where a packet from an exempt source came from, per the entry's
/// `flags` (the exempt-trie value). Runs only on the exempt path: allowed
/// and unprotected traffic never gets here.
#[inline(always)]
fn exempt_origin(ctx: &XdpContext, pkt: &Pkt, flags: u32) -> Origin {
    if flags & (EXEMPT_VERIFY_MAC | EXEMPT_VERIFY_ROUTE) == 0 {
        return Origin::Honoured;
    }
    let Some(smac) = bytes_at::<6>(ctx, 6) else { return Origin::Spoofed };
    // SAFETY: the value is not kept.
    if flags & EXEMPT_VERIFY_MAC != 0 && unsafe { EXEMPT_MACS.get(smac) }.is_none() {
        return Origin::Spoofed;
    }
    if flags & EXEMPT_VERIFY_ROUTE == 0 {
        return Origin::Honoured;
    }
    route_origin(ctx, pkt, &smac)
}

/// The reverse-path check of an exempt source, with the kernel's own FIB
/// and neighbour table (like strict `rp_filter`, which runs after XDP, plus
/// the MAC): the router's route toward the source must leave by the
/// interface the frame came in on, and its neighbour entry for the next hop
/// must hold the frame's source MAC. Tagged frames arrived on a trunk whose
/// VLAN devices the program does not know, so only their MAC is compared.
#[inline(always)]
fn route_origin(ctx: &XdpContext, pkt: &Pkt, smac: &[u8; 6]) -> Origin {
    // SAFETY: all-zero is a valid value (integers and unions of integers).
    let mut p: FibLookup = unsafe { core::mem::zeroed() };
    let ingress = ctx.ingress_ifindex() as u32;
    p.ifindex = ingress;
    // The reversed flow: toward the exempt source, from the destination.
    if pkt.v4 {
        p.family = AF_INET;
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(v4(&pkt.src));
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(v4(&pkt.dst));
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_4.ipv6_dst = words(&pkt.src);
        p.__bindgen_anon_3.ipv6_src = words(&pkt.dst);
    }
    // SAFETY: `p` is a whole bpf_fib_lookup on the stack, its size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut p, core::mem::size_of::<FibLookup>() as i32, 0) };
    let same_iface = pkt.vlan != 0 || p.ifindex == ingress;
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        if same_iface && bytewise_eq(&p.dmac, smac) { Origin::Honoured } else { Origin::Spoofed }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        if same_iface { Origin::Unverified } else { Origin::Spoofed }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_BLACKHOLE)
        || rc == i64::from(BPF_FIB_LKUP_RET_UNREACHABLE)
        || rc == i64::from(BPF_FIB_LKUP_RET_PROHIBIT)
        || rc == i64::from(BPF_FIB_LKUP_RET_NOT_FWDED)
    {
        // The router would never send to this source (or it is its own).
        Origin::Spoofed
    } else {
        Origin::Unverified
    }
}

/// `a == b` one byte at a time. Byte arrays on the stack sit at offsets
/// LLVM may not align (`dmac` in the lookup struct, the LPM keys); a wider
/// load or store of them would be a misaligned stack access, which the
/// verifier refuses, and equality would otherwise invite LLVM to widen.
#[inline(always)]
fn bytewise_eq<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let mut diff = 0u8;
    for i in 0..N {
        // SAFETY: reads of initialised bytes of two arrays, in bounds.
        diff |= unsafe { core::ptr::read_volatile(&a[i]) ^ core::ptr::read_volatile(&b[i]) };
    }
    diff == 0
}

/// An IPv6 address as the four 32-bit words of `bpf_fib_lookup`.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// True when misses go to the AF_XDP hold path (never in count-only mode,
/// which must not delay anything).
#[inline(always)]
fn afxdp(s: &Settings) -> bool {
    s.miss_transport == MISS_TRANSPORT_AFXDP && s.mode != MODE_COUNT
}

/// `CLOCK_MONOTONIC_COARSE` in ns: tick resolution is plenty for TTLs of
/// seconds and one-second event windows, and much cheaper than the precise
/// clock on the drop paths a flood exercises.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments, available to every program type.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Records that allowed traffic went to a host entry now (for ageing:
/// entries in use are kept). Written only when the coarse tick changed, so
/// the hot path mostly reads.
#[inline(always)]
fn note_hit(e: *mut HostValue) {
    // The daemon's copy of the tick: an array read the verifier inlines,
    // where the clock helper is a call on every allowed packet.
    let mut tick = HIT_CLOCK.get(0).copied().unwrap_or(0);
    if tick == 0 {
        tick = (now_ns() >> HIT_SHIFT) as u32;
    }
    // SAFETY: a map value pointer, valid for this program run; only `hit`
    // is written (see `HostValue`).
    unsafe {
        if (*e).hit != tick {
            (*e).hit = tick;
        }
    }
}

/// The destination's host entry, if any.
#[inline(always)]
fn host_entry(pkt: &Pkt) -> Option<*mut HostValue> {
    if pkt.v4 { ALLOW_V4.get_ptr_mut(v4(&pkt.dst)) } else { ALLOW_V6.get_ptr_mut(pkt.dst) }
}

/// Classes of the longest prefix entry covering the destination.
#[inline(always)]
fn prefix_classes(pkt: &Pkt) -> u32 {
    if pkt.v4 {
        lpm_get(&ALLOW_PFX_V4, 32, v4(&pkt.dst)).copied().unwrap_or(0)
    } else {
        lpm_get(&ALLOW_PFX_V6, 128, pkt.dst).copied().unwrap_or(0)
    }
}

/// Sends a drop event within the source's drop-event budget.
#[inline(always)]
fn drop_event(ctx: &XdpContext, why: u32, pkt: &Pkt, service: u32, now: u64) {
    let Some(slot) = OVER_BUDGET.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot, valid for the program run; XDP does not
    // preempt itself on one CPU.
    let slot = unsafe { &mut *slot };
    // Saturating: another CPU may have started the window a tick after this
    // one read the clock.
    if slot.window_start_ns != 0
        && now.saturating_sub(slot.window_start_ns) < NS_PER_SEC
        && bytewise_eq(&slot.src, &pkt.src)
    {
        slot.suppressed += 1;
        bump(Stat::EventsRateLimited, 1);
        return;
    }
    let budget = or_default(settings().events_per_source_per_sec, DEFAULT_EVENTS_PER_SOURCE);
    if let Some(carried) = within_budget(pkt, now, &EVENT_RATE, budget, Some(slot)) {
        let _ = write_event(ctx, EVENT_DROP, why, pkt, service, now, carried);
    }
}

/// A settings value, or its default when unset (zero).
#[inline(always)]
fn or_default(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v }
}

/// Takes one unit of the source's per-second `budget` in `rate`: `None`
/// when it is spent (counted), else the number suppressed in the window
/// that just ended (to report with the next event). With `slot` (drop
/// events), a source found over budget takes this CPU's [`OverBudget`]
/// slot, and what the slot counted is folded back first.
#[inline(always)]
fn within_budget(
    pkt: &Pkt,
    now: u64,
    rate: &LruHashMap<[u8; 16], RateState>,
    budget: u32,
    slot: Option<&mut OverBudget>,
) -> Option<u32> {
    let mut carried = 0u32;
    let mut slot = slot;
    // What this CPU's slot counted for this source, taken back.
    let mut folded = 0u32;
    if let Some(sl) = slot.as_deref_mut()
        && bytewise_eq(&sl.src, &pkt.src)
    {
        folded = sl.suppressed;
        sl.suppressed = 0;
        sl.window_start_ns = 0;
    }
    match rate.get_ptr_mut(pkt.src) {
        Some(st) => {
            // SAFETY: the pointer is valid for this program run; races between
            // CPUs only blur the count, which is a budget, not an invariant.
            let st = unsafe { &mut *st };
            st.suppressed += folded;
            if now.saturating_sub(st.window_start_ns) >= NS_PER_SEC {
                carried = st.suppressed;
                st.window_start_ns = now;
                st.sent = 0;
                st.suppressed = 0;
            }
            if st.sent >= budget {
                st.suppressed += 1;
                bump(Stat::EventsRateLimited, 1);
                if let Some(sl) = slot {
                    take_slot(sl, rate, pkt, st.window_start_ns);
                }
                return None;
            }
            st.sent += 1;
        }
        None => {
            // The slot's count is of a window that has ended: report it now.
            carried = folded;
            let st = RateState { window_start_ns: now, sent: 1, suppressed: 0 };
            let _ = rate.insert(pkt.src, st, 0);
        }
    }
    Some(carried)
}

/// Gives this CPU's [`OverBudget`] slot to `pkt`'s source, first giving
/// what it counted back to its previous source.
#[inline(always)]
fn take_slot(sl: &mut OverBudget, rate: &LruHashMap<[u8; 16], RateState>, pkt: &Pkt, window_start_ns: u64) {
    release_slot(sl, rate);
    *sl = OverBudget { src: pkt.src, window_start_ns, suppressed: 0, _pad: 0 };
}

/// Folds what the slot counted into its source's `rate` state and empties
/// the slot. An entry the LRU evicted meanwhile (the slot's hits do not
/// refresh it) is put back over budget for its window, holding the count,
/// so the source's next event still reports it.
#[inline(always)]
fn release_slot(sl: &mut OverBudget, rate: &LruHashMap<[u8; 16], RateState>) {
    if sl.suppressed != 0 {
        match rate.get_ptr_mut(sl.src) {
            // SAFETY: as in `within_budget`.
            Some(st) => unsafe { (*st).suppressed += sl.suppressed },
            None => {
                let st = RateState {
                    window_start_ns: sl.window_start_ns,
                    sent: u32::MAX,
                    suppressed: sl.suppressed,
                };
                let _ = rate.insert(sl.src, st, BPF_NOEXIST);
            }
        }
    }
    sl.suppressed = 0;
    sl.window_start_ns = 0;
}

/// Writes an event to the ring buffer; false when it is full (counted).
#[inline(always)]
fn write_event(
    ctx: &XdpContext,
    kind: u32,
    why: u32,
    pkt: &Pkt,
    service: u32,
    now: u64,
    carried: u32,
) -> bool {
    // The Ethernet source (bytes 6..12), read only on this slow path.
    let src_mac = bytes_at::<6>(ctx, 6).unwrap_or_default();
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        bump(Stat::EventsLost, 1);
        return false;
    };
    slot.write(Event {
        ts_ns: now,
        kind,
        reason: why,
        src: pkt.src,
        dst: pkt.dst,
        family: if pkt.v4 { 4 } else { 6 },
        proto: pkt.proto,
        dport: pkt.dport,
        service,
        vlan: pkt.vlan,
        suppressed: carried,
        src_mac,
        pad: [0; 2],
    });
    slot.submit(0);
    bump(Stat::EventsSent, 1);
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
