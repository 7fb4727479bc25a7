//! Types shared by the rpz-guard XDP program (`guard-ebpf`) and userspace
//! (`guard-user`): map names, map keys and values, class and service bits,
//! counter indices and event records.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree on the
//! layout; sizes are checked at compile time. The `user` feature adds
//! `aya::Pod` impls so userspace can read and write the maps.
#![no_std]

/// Allow-set class: a legitimate name server (RPZ answer `127.0.0.1`).
pub const CLASS_DNS: u32 = 1 << 0;
/// Allow-set class: a legitimate mail exchanger (RPZ answer `127.0.0.25`).
pub const CLASS_SMTP: u32 = 1 << 1;
/// All class bits this version knows.
pub const CLASS_ALL: u32 = CLASS_DNS | CLASS_SMTP;
/// Allow-map value bit (issue 11): a deny (RPZ `CNAME .`). It stands alone
/// in a value and beats the classes of every other entry that matches the
/// destination (host and prefix maps alike): the packet is dropped with
/// [`reason::DENIED`].
pub const VALUE_DENY: u32 = 1 << 31;

/// Protected service: DNS (udp/tcp 53 by default). Passes with any class.
pub const SERVICE_DNS: u32 = 1;
/// Protected service: SMTP (tcp 25/465/587 by default). Passes only with [`CLASS_SMTP`].
pub const SERVICE_SMTP: u32 = 2;

/// The classes a destination must hold (any of them) for `service` to pass.
///
/// DNS passes toward any registered destination (paper, Table 1: a
/// `127.0.0.25` host also passes DNS); SMTP only toward mail exchangers.
#[inline(always)]
pub const fn classes_required(service: u32) -> u32 {
    match service {
        SERVICE_SMTP => CLASS_SMTP,
        SERVICE_DNS => CLASS_ALL,
        _ => 0,
    }
}

/// Map: per-CPU counters, `PerCpuArray<u64>` indexed by [`Stat`].
pub const MAP_STATS: &str = "STATS";
/// Map: protected ports, `Array<u32>` indexed by destination port (host
/// order): bits 0..8 hold the TCP service number, bits 8..16 the UDP one
/// (0 = not protected). An array lookup keeps unprotected traffic cheap.
pub const MAP_PORTS: &str = "PORTS";
/// Entries of [`MAP_PORTS`].
pub const PORTS_LEN: u32 = 65536;
/// Shift of the TCP service in a [`MAP_PORTS`] value.
pub const PORT_TCP_SHIFT: u32 = 0;
/// Shift of the UDP service in a [`MAP_PORTS`] value.
pub const PORT_UDP_SHIFT: u32 = 8;
/// Map: IPv4 host allow entries, `HashMap<[u8; 4], HostValue>`.
pub const MAP_ALLOW_V4: &str = "ALLOW_V4";
/// Map: IPv6 host allow entries, `HashMap<[u8; 16], HostValue>`.
pub const MAP_ALLOW_V6: &str = "ALLOW_V6";
/// Map: IPv4 prefix allow entries, `LpmTrie<[u8; 4], u32>`.
pub const MAP_ALLOW_PFX_V4: &str = "ALLOW_PFX_V4";
/// Map: IPv6 prefix allow entries, `LpmTrie<[u8; 16], u32>`.
pub const MAP_ALLOW_PFX_V6: &str = "ALLOW_PFX_V6";
/// Map: exempt sources (own resolvers, relays), `LpmTrie<[u8; 4], u32>`.
pub const MAP_EXEMPT_V4: &str = "EXEMPT_V4";
/// Map: exempt sources, `LpmTrie<[u8; 16], u32>`.
pub const MAP_EXEMPT_V6: &str = "EXEMPT_V6";
/// Map: source MACs that exempt sources may arrive from, `HashMap<[u8; 6], u32>`
/// (consulted for entries flagged [`EXEMPT_VERIFY_MAC`]). Not pinned: the
/// running program keeps its own instance alive, and a restart writes the
/// new program's one before it replaces the old program.
pub const MAP_EXEMPT_MACS: &str = "EXEMPT_MACS";
/// Capacity of [`MAP_EXEMPT_MACS`].
pub const MAX_EXEMPT_MACS: u32 = 256;
/// Exempt-trie value bit: the prefix is exempt (every entry has it; an
/// entry with no other bit is honoured from anywhere).
pub const EXEMPT_HONOURED: u32 = 1 << 0;
/// Exempt-trie value bit: honour the exemption only when the router's own
/// route toward the source leaves by the interface the frame came in on
/// (untagged frames) and its neighbour entry holds the frame's source MAC.
pub const EXEMPT_VERIFY_ROUTE: u32 = 1 << 1;
/// Exempt-trie value bit: honour the exemption only from a source MAC in
/// [`MAP_EXEMPT_MACS`].
pub const EXEMPT_VERIFY_MAC: u32 = 1 << 2;
/// Map: internal destinations (never checked), `LpmTrie<[u8; 4], u32>`.
pub const MAP_INTERNAL_V4: &str = "INTERNAL_V4";
/// Map: internal destinations, `LpmTrie<[u8; 16], u32>`.
pub const MAP_INTERNAL_V6: &str = "INTERNAL_V6";
/// Map: verdict cache filled by the miss path, `LruHashMap<[u8; 16], CacheEntry>`
/// (IPv4 as v4-mapped IPv6).
pub const MAP_CACHE: &str = "VERDICT_CACHE";
/// Map: per-source event budget, `LruHashMap<[u8; 16], RateState>`.
pub const MAP_RATE: &str = "EVENT_RATE";
/// Map: per-source miss-event budget, `LruHashMap<[u8; 16], RateState>`.
pub const MAP_MISS_RATE: &str = "MISS_RATE";
/// Map: per-CPU slot of the drop-event budget, the last source this CPU
/// found over budget (see the program's `OverBudget`): its further drops in
/// that window skip the [`MAP_RATE`] lookup. Not pinned: a restart loses at
/// most the few suppressed counts a slot held, which [`Stat::EventsRateLimited`]
/// has counted anyway.
pub const MAP_OVER_BUDGET: &str = "OVER_BUDGET";
/// Map: drop and miss events, `RingBuf` of [`Event`].
pub const MAP_EVENTS: &str = "EVENTS";
/// Map: runtime settings, `Array<Settings>` with one element.
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Map: the last-hit clock, `Array<u32>` with one element: the daemon's
/// copy of the current [`HostValue::hit`] tick, rewritten every second, so
/// the allowed path reads a map instead of calling the kernel's clock
/// helper. Zero (a fresh map, or a daemon stopped cleanly) makes the
/// program read the kernel's clock itself.
pub const MAP_HIT_CLOCK: &str = "HIT_CLOCK";
/// Map: AF_XDP sockets of the miss path, `XskMap` indexed by RX queue.
/// Not pinned: its entries are sockets of the running daemon, which close
/// with it (the program then falls back to the ring-buffer miss path).
pub const MAP_XSKS: &str = "XSKS";
/// Entries of [`MAP_XSKS`]: the largest RX queue index served, plus one.
pub const MAX_XSK_QUEUES: u32 = 64;

// --- live learning (issue 9): the resolvers' DNS copied to userspace. ---
/// Map: the organisation's resolvers whose DNS is copied to the live
/// learner, `LpmTrie<[u8; 4], u32>`. Empty: nothing is copied.
pub const MAP_RESOLVERS_V4: &str = "RESOLVERS_V4";
/// Map: the resolvers, `LpmTrie<[u8; 16], u32>`.
pub const MAP_RESOLVERS_V6: &str = "RESOLVERS_V6";
/// Map: copies of the resolvers' DNS packets, `RingBuf` of a
/// [`DnsCopyHeader`] followed by the first bytes of the frame.
pub const MAP_DNS_COPY: &str = "DNS_COPY";
/// Map: per-CPU scratch where a copy is assembled before it goes to
/// [`MAP_DNS_COPY`] (a ring record's size must be known when reserved).
pub const MAP_DNS_SCRATCH: &str = "DNS_SCRATCH";
/// Size of [`MAP_DNS_COPY`] in bytes (room for about 16k typical responses).
pub const DNS_COPY_BYTES: u32 = 8 * 1024 * 1024;
/// Most frame bytes copied per packet; longer frames are cut (counted as
/// [`Stat::DnsCopyCut`]) and the learner discards them as truncated.
pub const DNS_COPY_MAX: usize = 2048;
/// [`DnsCopyHeader::dir`]: a packet from a resolver, seen on the inside interface.
pub const DNS_DIR_QUERY: u32 = 1;
/// [`DnsCopyHeader::dir`]: a packet to a resolver, seen on the outside interface.
pub const DNS_DIR_RESPONSE: u32 = 2;

/// Head of a [`MAP_DNS_COPY`] record; the frame's bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCopyHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the program saw the packet.
    pub ts_ns: u64,
    /// Length of the whole frame on the wire (the copy may be shorter).
    pub wire_len: u32,
    /// [`DNS_DIR_QUERY`] or [`DNS_DIR_RESPONSE`].
    pub dir: u32,
}

/// Value of [`MAP_DNS_SCRATCH`]: a record being assembled.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsCopyBuf {
    /// The record's head.
    pub header: DnsCopyHeader,
    /// The frame's first bytes.
    pub data: [u8; DNS_COPY_MAX],
}

/// Value of [`MAP_CACHE`]: the miss path's verdict for one destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheEntry {
    /// Class bits the RPZ gave the destination; 0 = not registered (negative).
    pub classes: u32,
    /// [`CACHE_PENDING`] while userspace is still asking the RPZ.
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns()` after which the entry is stale (treated as a miss).
    pub expires_ns: u64,
}

/// Value of the host allow maps ([`MAP_ALLOW_V4`], [`MAP_ALLOW_V6`]).
///
/// The last-hit time lives beside the classes (issue 11: ageing keeps
/// entries in use) so that the allowed path, which has the value in hand,
/// notes it without a second map lookup. The program writes only `hit`,
/// and only when the tick changed: a write that lands on an element the
/// map just recycled can at worst keep another entry alive one idle period
/// longer, never change what is allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostValue {
    /// Class bits, or [`VALUE_DENY`]; the first `u32` as in every layout.
    pub classes: u32,
    /// `CLOCK_MONOTONIC_COARSE` ns `>> HIT_SHIFT` of the last allowed packet
    /// (from [`MAP_HIT_CLOCK`], or the kernel's clock while that is zero);
    /// 0: none since userspace wrote the entry.
    pub hit: u32,
}
const _: () = assert!(core::mem::size_of::<HostValue>() == 8);

/// Maps of earlier layouts that this build no longer has; their pins are
/// removed when the pinned state is migrated or unpinned. `LAST_HIT` was
/// a separate LRU map of last-hit ticks, now [`HostValue::hit`].
pub const RETIRED_MAPS: [&str; 1] = ["LAST_HIT"];
/// [`HostValue::hit`] ticks are `CLOCK_MONOTONIC_COARSE` ns shifted by this
/// (one tick = 2^30 ns, about 1.07 s; a u32 of them lasts 146 years).
pub const HIT_SHIFT: u32 = 30;
/// Size of [`HostValue`], as [`MAP_LAYOUT`] lists it.
pub const HOST_VALUE_SIZE: u32 = core::mem::size_of::<HostValue>() as u32;

/// Capacity of [`MAP_ALLOW_V4`].
pub const MAX_ALLOW_V4: u32 = 1 << 21;
/// Capacity of [`MAP_ALLOW_V6`].
pub const MAX_ALLOW_V6: u32 = 1 << 18;
/// Capacity of each allow prefix trie.
pub const MAX_PREFIXES: u32 = 1 << 16;
/// Capacity of each exempt / internal trie.
pub const MAX_LPM_SMALL: u32 = 4096;
/// Capacity of [`MAP_CACHE`].
pub const MAX_CACHE: u32 = 1 << 16;
/// Capacity of [`MAP_RATE`].
pub const MAX_RATE: u32 = 1 << 14;
/// Counter bumps the `ref_bump` benchmark program makes per run (one alone
/// is below the test run's whole-nanosecond resolution).
pub const REF_BUMPS: u32 = 8;
/// Size of [`MAP_EVENTS`] in bytes (4096 events).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// `BPF_F_NO_PREALLOC`: elements are allocated per insert. Required for
/// LPM tries; the host allow maps are preallocated instead (issue 17):
/// an insert then takes a free element instead of allocating one, which
/// halves the kernel's cost of a 1M-entry load, for a fixed ~146 MiB of
/// kernel memory (64 B × [`MAX_ALLOW_V4`] + 72 B × [`MAX_ALLOW_V6`]; the
/// 16 B-per-bucket tables, 36 MiB, exist either way).
pub const MAP_F_NO_PREALLOC: u32 = 1;

/// Expected `(name, key size, value size, max entries, map flags)` of every
/// map, so a daemon can refuse (or migrate, see guard-user's
/// `xdp::check_pinned_layout`) pinned maps of another layout instead of
/// misreading them.
pub const MAP_LAYOUT: [(&str, u32, u32, u32, u32); 16] = [
    (MAP_STATS, 4, 8, STAT_COUNT, 0),
    (MAP_PORTS, 4, 4, PORTS_LEN, 0),
    (MAP_ALLOW_V4, 4, HOST_VALUE_SIZE, MAX_ALLOW_V4, 0),
    (MAP_ALLOW_V6, 16, HOST_VALUE_SIZE, MAX_ALLOW_V6, 0),
    (MAP_ALLOW_PFX_V4, 8, 4, MAX_PREFIXES, MAP_F_NO_PREALLOC),
    (MAP_ALLOW_PFX_V6, 20, 4, MAX_PREFIXES, MAP_F_NO_PREALLOC),
    (MAP_EXEMPT_V4, 8, 4, MAX_LPM_SMALL, MAP_F_NO_PREALLOC),
    (MAP_EXEMPT_V6, 20, 4, MAX_LPM_SMALL, MAP_F_NO_PREALLOC),
    (MAP_INTERNAL_V4, 8, 4, MAX_LPM_SMALL, MAP_F_NO_PREALLOC),
    (MAP_INTERNAL_V6, 20, 4, MAX_LPM_SMALL, MAP_F_NO_PREALLOC),
    (MAP_CACHE, 16, core::mem::size_of::<CacheEntry>() as u32, MAX_CACHE, 0),
    (MAP_RATE, 16, core::mem::size_of::<RateState>() as u32, MAX_RATE, 0),
    (MAP_MISS_RATE, 16, core::mem::size_of::<RateState>() as u32, MAX_RATE, 0),
    (MAP_EVENTS, 0, 0, EVENTS_BYTES, 0),
    (MAP_SETTINGS, 4, core::mem::size_of::<Settings>() as u32, 1, 0),
    (MAP_HIT_CLOCK, 4, 4, 1, 0),
];

/// [`CacheEntry::flags`]: the kernel saw a miss and is waiting for userspace;
/// packets are dropped (reason pending) without a new miss event until expiry.
pub const CACHE_PENDING: u32 = 1;

/// Value of [`MAP_RATE`]: a token bucket of events per source host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Start of the current one-second window (`bpf_ktime_get_coarse_ns`).
    pub window_start_ns: u64,
    /// Events emitted in the current window.
    pub sent: u32,
    /// Events suppressed in the current window.
    pub suppressed: u32,
}

/// Element of [`MAP_SETTINGS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`MODE_ENFORCE`] or [`MODE_COUNT`]. Zero (the state of a fresh map)
    /// enforces, so a program whose settings were never written fails closed.
    pub mode: u32,
    /// Events per source host per second; further ones are counted, not sent.
    /// Zero means [`DEFAULT_EVENTS_PER_SOURCE`].
    pub events_per_source_per_sec: u32,
    /// How long a pending miss holds, in milliseconds (zero: [`DEFAULT_PENDING_MS`]).
    pub pending_ms: u32,
    /// Miss events (RPZ questions) per source host per second, a budget
    /// separate from drop events so a host's drops never starve its
    /// lookups. Zero means [`DEFAULT_MISSES_PER_SOURCE`].
    pub misses_per_source_per_sec: u32,
    // --- afxdp (issue 10): the miss transport and its release path. ---
    /// How a miss reaches userspace: [`MISS_TRANSPORT_RINGBUF`] (a miss
    /// event, the packet dropped) or [`MISS_TRANSPORT_AFXDP`] (the packet
    /// itself, redirected to the AF_XDP socket of its RX queue and held).
    pub miss_transport: u32,
    /// Interface index the release program hands released packets to (the
    /// enforcement interface, as ingress); 0 = release disabled.
    pub release_ifindex: u32,
    // -- fail-closed start (issue 17) --
    /// [`STATE_NOT_LOADED`] until the first allow set is in the maps, then
    /// [`STATE_LOADED`]. Zero (a fresh map) is "not loaded": protected
    /// traffic that no allow entry passes is dropped (reason
    /// [`reason::NOT_LOADED`]) instead of going to the miss path, so a
    /// program attached before its first load fails closed.
    pub state: u32,
}

/// Settings mode: drop checked packets that the policy denies.
pub const MODE_ENFORCE: u32 = 0;
/// Settings mode: observe and count only, never drop.
pub const MODE_COUNT: u32 = 1;
/// Settings state: no allow set loaded yet; deny protected traffic that
/// is not exempt, internal or in the allow maps (the zero state).
pub const STATE_NOT_LOADED: u32 = 0;
/// Settings state: an allow set is in the maps; misses go to userspace.
pub const STATE_LOADED: u32 = 1;
/// Default event budget per source per second.
pub const DEFAULT_EVENTS_PER_SOURCE: u32 = 20;
/// Default miss-event budget per source per second.
pub const DEFAULT_MISSES_PER_SOURCE: u32 = 200;
/// Default lifetime of a pending miss.
pub const DEFAULT_PENDING_MS: u32 = 1000;
/// [`Settings::miss_transport`]: a miss event on the ring buffer; the packet is dropped.
pub const MISS_TRANSPORT_RINGBUF: u32 = 0;
/// [`Settings::miss_transport`]: the packet is redirected to an AF_XDP socket and held.
pub const MISS_TRANSPORT_AFXDP: u32 = 1;

/// Event kind: a checked packet was dropped.
pub const EVENT_DROP: u32 = 1;
/// Event kind: a checked packet's destination is unknown (userspace must ask the RPZ).
pub const EVENT_MISS: u32 = 2;

/// Why a packet was dropped (the `reason` of an [`Event`]).
pub mod reason {
    /// Destination has no allow entry (RPZ said not registered).
    pub const NOT_REGISTERED: u32 = 1;
    /// Destination is registered, but not with a class the service needs
    /// (e.g. SMTP toward a `127.0.0.1` name server).
    pub const WRONG_CLASS: u32 = 2;
    /// Destination unknown; dropped until the miss path decides.
    pub const PENDING: u32 = 3;
    /// Headers on a protected path could not be parsed (fail closed).
    pub const MALFORMED: u32 = 4;
    /// No allow set loaded yet (start-up, primary down, no snapshot).
    pub const NOT_LOADED: u32 = 5;
    /// Destination covered by a deny (RPZ `CNAME .`), whatever allows it.
    pub const DENIED: u32 = 6;
    // -- anti-spoofing (issue 13) --
    /// An exempt source address arrived from a MAC or interface it is not
    /// honoured from: an inside host spoofing the resolver or relay.
    pub const SPOOFED_EXEMPT: u32 = 7;
}

/// A drop or miss event sent to userspace on [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_coarse_ns()` when the packet was seen.
    pub ts_ns: u64,
    /// [`EVENT_DROP`] or [`EVENT_MISS`].
    pub kind: u32,
    /// One of [`reason`].
    pub reason: u32,
    /// Source address; IPv4 as v4-mapped IPv6.
    pub src: [u8; 16],
    /// Destination address; IPv4 as v4-mapped IPv6.
    pub dst: [u8; 16],
    /// 4 or 6.
    pub family: u8,
    /// IP protocol (6 = TCP, 17 = UDP).
    pub proto: u8,
    /// Destination port, host order.
    pub dport: u16,
    /// Service number ([`SERVICE_DNS`], [`SERVICE_SMTP`]).
    pub service: u32,
    /// Outer VLAN id (0 = untagged).
    pub vlan: u32,
    /// Events suppressed for this source since the previous one was sent.
    pub suppressed: u32,
    /// Source MAC of the frame (the sending host, or the last router).
    pub src_mac: [u8; 6],
    /// Padding to a multiple of 8 bytes; zero.
    pub pad: [u8; 2],
}

/// Per-CPU counter indices of [`MAP_STATS`].
///
/// Discriminants are stable: userspace and metrics names depend on them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every frame the program saw.
    Packets = 0,
    /// Bytes of every frame the program saw.
    Bytes = 1,
    /// Frames carrying IPv4.
    Ipv4 = 2,
    /// Frames carrying IPv6.
    Ipv6 = 3,
    /// Frames that are not IP (ARP, LLDP, ...): passed untouched.
    NonIp = 4,
    /// Frames with at least one VLAN tag.
    Vlan = 5,
    /// IP packets that are not a protected service: passed untouched.
    Unprotected = 6,
    /// Protected packets from an exempt source: passed.
    ExemptSource = 7,
    /// Protected packets toward an internal destination: passed.
    InternalDest = 8,
    /// Protected packets passed by an allow-map entry.
    PassAllowed = 9,
    /// Protected packets passed by a positive verdict-cache entry.
    PassCached = 10,
    /// Protected packets dropped: destination not registered (negative cache).
    DropNotRegistered = 11,
    /// Protected packets dropped: destination registered with the wrong class.
    DropWrongClass = 12,
    /// Protected packets with an unknown destination (miss path): dropped while pending.
    Miss = 13,
    /// Frames whose headers were truncated or malformed where a verdict needed them: dropped.
    DropMalformed = 14,
    /// Non-first IPv4/IPv6 fragments (no L4 header): passed, see the fragment policy.
    Fragment = 15,
    /// IPv6 packets whose extension chain exceeds the parse bound: dropped.
    DropExtChain = 16,
    /// Events written to the ring buffer.
    EventsSent = 17,
    /// Events suppressed by the per-source rate limit.
    EventsRateLimited = 18,
    /// Events lost because the ring buffer was full.
    EventsLost = 19,
    /// Count-only mode: packets that enforcement would have dropped.
    WouldDrop = 20,
    // --- live learning (issue 9) ---
    /// Resolver DNS packets copied to the live learner (both interfaces).
    DnsCopied = 21,
    /// Resolver DNS packets not copied: the copy ring was full (the packet
    /// itself still passed).
    DnsCopyLost = 22,
    /// Copied packets cut at [`DNS_COPY_MAX`] bytes.
    DnsCopyCut = 23,
    // --- afxdp (issue 10) ---
    /// Miss packets (new or joining a pending destination) redirected to
    /// the AF_XDP hold path (also counted in [`Stat::Miss`]).
    MissHeld = 24,
    /// AF_XDP transport configured but no socket on the packet's RX queue:
    /// the ring-buffer path (drop and ask) was used instead.
    MissFallback = 25,
    /// Packets the release program handed to the enforcement interface.
    Released = 26,
    // -- fail-closed start (issue 17) --
    /// Protected packets dropped because no allow set is loaded yet
    /// (deny-protected start-up mode).
    DropNotLoaded = 27,
    // -- anti-spoofing (issue 13) --
    /// Protected packets from an exempt source address that arrived from a
    /// MAC or interface the exemption is not honoured from: dropped.
    DropSpoofedExempt = 28,
    /// Protected packets from an exempt source whose origin the route check
    /// could not confirm (no neighbour entry yet): judged as from any host.
    ExemptUnverified = 29,
}

/// Number of entries of [`MAP_STATS`].
pub const STAT_COUNT: u32 = 30;

impl Stat {
    /// Every counter, in index order.
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::Packets,
        Stat::Bytes,
        Stat::Ipv4,
        Stat::Ipv6,
        Stat::NonIp,
        Stat::Vlan,
        Stat::Unprotected,
        Stat::ExemptSource,
        Stat::InternalDest,
        Stat::PassAllowed,
        Stat::PassCached,
        Stat::DropNotRegistered,
        Stat::DropWrongClass,
        Stat::Miss,
        Stat::DropMalformed,
        Stat::Fragment,
        Stat::DropExtChain,
        Stat::EventsSent,
        Stat::EventsRateLimited,
        Stat::EventsLost,
        Stat::WouldDrop,
        Stat::DnsCopied,
        Stat::DnsCopyLost,
        Stat::DnsCopyCut,
        Stat::MissHeld,
        Stat::MissFallback,
        Stat::Released,
        // -- fail-closed start (issue 17) --
        Stat::DropNotLoaded,
        // -- anti-spoofing (issue 13) --
        Stat::DropSpoofedExempt,
        Stat::ExemptUnverified,
    ];

    /// The outcome counters: every frame the program sees lands in exactly
    /// one of them, so they sum to [`Stat::Packets`].
    pub const OUTCOMES: [Stat; 14] = [
        Stat::NonIp,
        Stat::Unprotected,
        Stat::ExemptSource,
        Stat::InternalDest,
        Stat::PassAllowed,
        Stat::PassCached,
        Stat::DropNotRegistered,
        Stat::DropWrongClass,
        Stat::Miss,
        Stat::DropMalformed,
        Stat::Fragment,
        Stat::DropExtChain,
        // -- fail-closed start (issue 17) --
        Stat::DropNotLoaded,
        // -- anti-spoofing (issue 13) --
        Stat::DropSpoofedExempt,
    ];

    /// The snake_case name used in status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Packets => "packets",
            Stat::Bytes => "bytes",
            Stat::Ipv4 => "ipv4",
            Stat::Ipv6 => "ipv6",
            Stat::NonIp => "non_ip",
            Stat::Vlan => "vlan",
            Stat::Unprotected => "unprotected",
            Stat::ExemptSource => "exempt_source",
            Stat::InternalDest => "internal_dest",
            Stat::PassAllowed => "pass_allowed",
            Stat::PassCached => "pass_cached",
            Stat::DropNotRegistered => "drop_not_registered",
            Stat::DropWrongClass => "drop_wrong_class",
            Stat::Miss => "miss",
            Stat::DropMalformed => "drop_malformed",
            Stat::Fragment => "fragment",
            Stat::DropExtChain => "drop_ext_chain",
            Stat::EventsSent => "events_sent",
            Stat::EventsRateLimited => "events_rate_limited",
            Stat::EventsLost => "events_lost",
            Stat::WouldDrop => "would_drop",
            Stat::DnsCopied => "dns_copied",
            Stat::DnsCopyLost => "dns_copy_lost",
            Stat::DnsCopyCut => "dns_copy_cut",
            Stat::MissHeld => "miss_held",
            Stat::MissFallback => "miss_fallback",
            Stat::Released => "released",
            Stat::DropNotLoaded => "drop_not_loaded",
            Stat::DropSpoofedExempt => "drop_spoofed_exempt",
            Stat::ExemptUnverified => "exempt_unverified",
        }
    }
}

const _: () = assert!(core::mem::size_of::<CacheEntry>() == 16);
const _: () = assert!(core::mem::size_of::<RateState>() == 16);
const _: () = assert!(core::mem::size_of::<Settings>() == 28);
const _: () = assert!(core::mem::size_of::<Event>() == 72);
const _: () = assert!(core::mem::size_of::<DnsCopyHeader>() == 16);
const _: () = assert!(core::mem::size_of::<DnsCopyBuf>() == 16 + DNS_COPY_MAX);

#[cfg(feature = "user")]
mod pod {
    use super::{CacheEntry, DnsCopyBuf, DnsCopyHeader, Event, HostValue, RateState, Settings};
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for CacheEntry {}
    // SAFETY: repr(C), two u32, no padding.
    unsafe impl aya::Pod for HostValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RateState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DnsCopyHeader {}
    // SAFETY: as above (a header and a byte array, no padding).
    unsafe impl aya::Pod for DnsCopyBuf {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_indices_are_dense_and_named_uniquely() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
            for t in &Stat::ALL[..i] {
                assert_ne!(s.name(), t.name());
            }
        }
    }

    #[test]
    fn smtp_needs_smtp_class_dns_takes_any() {
        assert_eq!(classes_required(SERVICE_SMTP) & CLASS_DNS, 0);
        assert_ne!(classes_required(SERVICE_SMTP) & CLASS_SMTP, 0);
        assert_eq!(classes_required(SERVICE_DNS), CLASS_DNS | CLASS_SMTP);
        assert_eq!(classes_required(99), 0);
    }
}
