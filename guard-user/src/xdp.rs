//! Loading, attaching, configuring and reading the XDP program, and
//! mirroring the allow set into its maps.
//!
//! # Minimum kernel version
//!
//! Needs BPF ring buffers and XDP links (Linux 5.9 or later); tested on 6.18.

use std::{
    collections::HashSet,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, XskMap, lpm_trie::Key},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode as AyaMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use guard_common::{
    CacheEntry, HOST_VALUE_SIZE, HostValue, MAP_ALLOW_PFX_V4, MAP_ALLOW_PFX_V6, MAP_ALLOW_V4, MAP_ALLOW_V6,
    MAP_CACHE, MAP_DNS_COPY, MAP_EVENTS, MAP_EXEMPT_MACS, MAP_EXEMPT_V4, MAP_EXEMPT_V6, MAP_HIT_CLOCK,
    MAP_INTERNAL_V4, MAP_INTERNAL_V6, MAP_MISS_RATE, MAP_PORTS, MAP_RATE, MAP_RESOLVERS_V4, MAP_RESOLVERS_V6,
    MAP_SETTINGS, MAP_STATS, MAP_XSKS, PORT_TCP_SHIFT, PORT_UDP_SHIFT, STAT_COUNT, STATE_LOADED,
    STATE_NOT_LOADED, Settings, Stat,
};

use crate::{
    metrics::StatSnapshot,
    policy::{AllowDiff, Classes, Prefix, Transport},
};

/// The XDP object built from `guard-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

/// Name of the XDP program function in [`EBPF_OBJECT`].
pub const PROGRAM_NAME: &str = "rpz_guard";

/// The live-learning program for the outside interface in [`EBPF_OBJECT`]:
/// copies DNS answers to the resolvers, passes everything.
pub const OUTSIDE_PROGRAM: &str = "rpz_guard_outside";

/// The pass-everything reference program in [`EBPF_OBJECT`], for benchmarks.
pub const REFERENCE_PROGRAM: &str = "pass_all";

/// The tc program of the AF_XDP release path (see `afxdp::release`).
pub const RELEASE_PROGRAM: &str = "rpz_release";

/// Every map the program defines; all are pinned with `--pin`.
pub const MAP_NAMES: [&str; 16] = [
    MAP_STATS,
    MAP_PORTS,
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_ALLOW_PFX_V4,
    MAP_ALLOW_PFX_V6,
    MAP_EXEMPT_V4,
    MAP_EXEMPT_V6,
    MAP_INTERNAL_V4,
    MAP_INTERNAL_V6,
    MAP_CACHE,
    MAP_RATE,
    MAP_MISS_RATE,
    MAP_EVENTS,
    MAP_SETTINGS,
    MAP_HIT_CLOCK,
];

/// File name of the pinned XDP link inside the pin directory.
pub const LINK_PIN_NAME: &str = "link";

/// Errors of the XDP loader.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The object failed to load.
    #[error("loading the XDP object failed: {source}")]
    Load {
        /// Underlying aya error.
        #[source]
        source: aya::EbpfError,
    },
    /// A program operation failed (for `load`, the message holds the verifier log).
    #[error("XDP program {what} failed on {iface}: {source}")]
    Program {
        /// What was being done.
        what: &'static str,
        /// Interface name (or `-` when not attached).
        iface: String,
        /// Underlying error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map is missing, has the wrong type, or an operation on it failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: MapError,
    },
    /// Pinning or adopting pinned state failed.
    #[error("pinning in {dir}: {why}")]
    Pin {
        /// The pin directory.
        dir: PathBuf,
        /// What failed.
        why: String,
    },
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> XdpError {
    move |source| XdpError::Map { name, source }
}

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic; generic first on a
    /// veth, where native XDP costs more per passed packet (see
    /// [`prefers_generic`]).
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

impl std::str::FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "native" => Ok(AttachMode::Native),
            "generic" => Ok(AttachMode::Generic),
            other => Err(format!("xdp mode {other:?} is not one of native, generic, auto")),
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

pub use crate::policy::ProtectedPort;

/// The program's static configuration, written at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    /// Protected destination ports.
    pub ports: Vec<ProtectedPort>,
    /// Sources never checked (own resolvers, relays).
    pub exempt_sources: Vec<Prefix>,
    /// Where exempt sources are honoured from (anti-spoofing; the default
    /// checks nothing).
    pub exempt_origin: crate::antispoof::ExemptOrigin,
    /// Destinations never checked.
    pub internal_networks: Vec<Prefix>,
    /// Kernel settings (mode, event budget, pending hold).
    pub settings: Settings,
}

/// The loaded program and its maps.
pub struct Enforcer {
    ebpf: Ebpf,
    attached: Option<(String, AttachMode)>,
    pinned_link: Option<PinnedLink>,
    pin_dir: Option<PathBuf>,
    adopted: bool,
    outside: Option<(String, AttachMode)>,
}

impl Enforcer {
    /// Loads [`EBPF_OBJECT`] and the program (not attached). With `pin_dir`,
    /// maps already pinned there are reused (their contents survive), others
    /// are created and pinned.
    pub fn load(pin_dir: Option<&Path>) -> Result<Self, XdpError> {
        let mut loader = EbpfLoader::new();
        let mut adopted = false;
        let mut migration = None;
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => {
                check_bpffs(dir)?;
                std::fs::create_dir_all(dir)
                    .map_err(|e| XdpError::Pin { dir: dir.into(), why: format!("create directory: {e}") })?;
                adopted = dir.join(MAP_STATS).exists();
                if adopted && let Some(why) = check_pinned_layout(dir)? {
                    migration = Some(Migration::read(dir, why)?);
                }
                // Migrating: fresh maps, pinned in place of the old ones below.
                if migration.is_some() {
                    Vec::new()
                } else {
                    MAP_NAMES.iter().map(|n| (*n, dir.join(n))).collect()
                }
            }
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|source| XdpError::Load { source })?;
        let prog = program(&mut ebpf, "-")?;
        prog.load().map_err(|source| XdpError::Program { what: "load", iface: "-".into(), source })?;
        let mut e = Enforcer {
            ebpf,
            attached: None,
            pinned_link: None,
            pin_dir: pin_dir.map(Path::to_owned),
            adopted,
            outside: None,
        };
        if let (Some(m), Some(dir)) = (migration, pin_dir) {
            e.migrate(m, dir)?;
        }
        Ok(e)
    }

    /// Fills the fresh maps with what the old layout's pinned maps held,
    /// then pins them in their place. The old program (in the pinned link)
    /// keeps enforcing its maps until [`Enforcer::attach`] swaps this one
    /// in, holding the same set: no gap. A crash in between leaves either
    /// the old pins (migrated again next start) or this build's (adopted).
    fn migrate(&mut self, m: Migration, dir: &Path) -> Result<(), XdpError> {
        let started = std::time::Instant::now();
        self.apply_diff(&crate::policy::AllowSet::new().diff(&m.set))?;
        self.update_settings(|s| s.state = m.state)?;
        let perr = |why: String| XdpError::Pin { dir: dir.into(), why };
        for name in MAP_NAMES {
            let path = dir.join(name);
            let map = self.ebpf.map(name).ok_or_else(|| missing(name))?;
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(|e| perr(format!("remove old pin {}: {e}", path.display())))?;
            }
            map.pin(&path).map_err(|e| perr(format!("pin {}: {e}", path.display())))?;
        }
        remove_retired_pins(dir)?;
        tracing::warn!(
            dir = %dir.display(),
            entries = m.set.len(),
            loaded = m.state == STATE_LOADED,
            ms = started.elapsed().as_millis() as u64,
            differs = m.why,
            "pinned maps of another layout migrated: their allow set and state are carried into this build's \
             maps, which replace them (counters and cached verdicts start afresh)"
        );
        Ok(())
    }

    /// True when the maps were adopted from an earlier (pinned) run.
    pub fn adopted_maps(&self) -> bool {
        self.adopted
    }

    /// Attaches to `iface`. With a pin directory holding a link from an
    /// earlier run, the new program replaces the old one inside that link
    /// atomically (no gap in enforcement); otherwise a new link is made and,
    /// with a pin directory, pinned.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, XdpError> {
        let pin_dir = self.pin_dir.clone();
        let adopt = self.check_pinned_link(iface)?;
        let link_path = pin_dir.as_ref().map(|d| d.join(LINK_PIN_NAME));
        let prog = program(&mut self.ebpf, iface)?;
        let perr = |what, source| XdpError::Program { what, iface: iface.to_owned(), source };
        if let Some(path) = link_path.as_ref().filter(|_| adopt) {
            let pin_err = |why: String| XdpError::Pin { dir: path.clone(), why };
            let pinned = PinnedLink::from_pin(path).map_err(|e| pin_err(format!("open pinned link: {e}")))?;
            let link = XdpLink::try_from(FdLink::from(pinned))
                .map_err(|e| pin_err(format!("pinned link is not an XDP link: {e}")))?;
            prog.attach_to_link(link).map_err(|e| perr("replace program in pinned link", e))?;
            self.attached = Some((iface.to_owned(), mode));
            tracing::info!(iface, link = %path.display(), "replaced the program inside the pinned XDP link");
            return Ok(mode);
        }
        let (id, used) = attach_in_mode(prog, iface, mode)?;
        if let Some(path) = link_path {
            let link = prog.take_link(id).map_err(|e| perr("take link", e))?;
            let fd_link = FdLink::try_from(link).map_err(|e| XdpError::Pin {
                dir: path.clone(),
                why: format!("link is not fd-based: {e}"),
            })?;
            let pinned = fd_link
                .pin(&path)
                .map_err(|e| XdpError::Pin { dir: path.clone(), why: format!("pin link: {e}") })?;
            self.pinned_link = Some(pinned);
        }
        self.attached = Some((iface.to_owned(), used));
        Ok(used)
    }

    /// Attaches the live-learning program ([`OUTSIDE_PROGRAM`]) to the
    /// outside interface `iface`, where the answers to the resolvers
    /// arrive. It shares this program's maps; it is not pinned (without the
    /// daemon there is no learner to copy to) and detaches with this value.
    pub fn attach_outside(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, XdpError> {
        let prog = loaded_xdp(&mut self.ebpf, OUTSIDE_PROGRAM, iface)?;
        let (_, used) = attach_in_mode(prog, iface, mode)?;
        self.outside = Some((iface.to_owned(), used));
        Ok(used)
    }

    /// The outside interface and mode, once [`Enforcer::attach_outside`] ran.
    pub fn outside(&self) -> Option<(&str, AttachMode)> {
        self.outside.as_ref().map(|(i, m)| (i.as_str(), *m))
    }

    /// Names the resolvers whose DNS the programs copy to the live learner
    /// (queries from them on the inside interface, answers to them on the
    /// outside one). Empty: nothing is copied.
    pub fn set_resolvers(&mut self, resolvers: &[Prefix]) -> Result<(), XdpError> {
        self.replace_lpm(MAP_RESOLVERS_V4, MAP_RESOLVERS_V6, resolvers)
    }

    /// Takes the DNS copy ring buffer (once) for the live learner.
    pub fn take_dns_copy(&mut self) -> Result<RingBuf<MapData>, XdpError> {
        let map = self.ebpf.take_map(MAP_DNS_COPY).ok_or_else(|| missing(MAP_DNS_COPY))?;
        RingBuf::try_from(map).map_err(map_err(MAP_DNS_COPY))
    }

    /// Handles of its own on the host allow maps, so the live learner
    /// writes entries without waiting for the enforcer's lock (held for
    /// seconds while a large diff is mirrored).
    pub fn allow_writer(&self) -> Result<AllowWriter, XdpError> {
        fn reopen(ebpf: &Ebpf, name: &'static str) -> Result<aya::maps::Map, XdpError> {
            let m = ebpf.map(name).ok_or_else(|| missing(name))?;
            let id = match m {
                aya::maps::Map::HashMap(d) => d.info().map_err(map_err(name))?.id(),
                _ => return Err(missing(name)),
            };
            let data = MapData::from_id(id).map_err(map_err(name))?;
            aya::maps::Map::from_map_data(data).map_err(map_err(name))
        }
        let v4 = HashMap::try_from(reopen(&self.ebpf, MAP_ALLOW_V4)?).map_err(map_err(MAP_ALLOW_V4))?;
        let v6 = HashMap::try_from(reopen(&self.ebpf, MAP_ALLOW_V6)?).map_err(map_err(MAP_ALLOW_V6))?;
        Ok(AllowWriter { v4, v6 })
    }

    /// With a pin directory holding a link: Ok(true) when the link is on
    /// `iface` (it will be adopted), Ok(false) when its interface is gone (the
    /// stale pin is removed), an error when it is on another interface. Call
    /// before [`Enforcer::configure`] so a mistaken run changes nothing.
    pub fn check_pinned_link(&mut self, iface: &str) -> Result<bool, XdpError> {
        let Some(path) = self.pin_dir.as_ref().map(|d| d.join(LINK_PIN_NAME)).filter(|p| p.exists()) else {
            return Ok(false);
        };
        let want = std::ffi::CString::new(iface)
            .ok()
            // SAFETY: a valid C string.
            .map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) });
        let have = pinned_link_ifindex(&path)
            .map_err(|e| XdpError::Pin { dir: path.clone(), why: format!("reading the pinned link: {e}") })?;
        if have == 0 {
            tracing::warn!(link = %path.display(), "pinned XDP link lost its interface; a new one will be attached");
            std::fs::remove_file(&path)
                .map_err(|e| XdpError::Pin { dir: path.clone(), why: format!("remove stale link: {e}") })?;
            return Ok(false);
        }
        if have != want {
            return Err(XdpError::Pin {
                dir: path,
                why: format!(
                    "the pinned XDP link is on interface index {have}, not on {iface} (index {want}); \
                     run `rpz-guard unpin` on the pin directory first, or use another --pin directory"
                ),
            });
        }
        Ok(true)
    }

    /// The interface and mode, once attached.
    pub fn attached(&self) -> Option<(&str, AttachMode)> {
        self.attached.as_ref().map(|(i, m)| (i.as_str(), *m))
    }

    /// Removes pinned state (maps and link): the program detaches when this
    /// value is dropped. Used on a normal shutdown without `--pin`, or by
    /// `--unpin` cleanup.
    pub fn unpin(&mut self) -> Result<(), XdpError> {
        let Some(dir) = self.pin_dir.take() else { return Ok(()) };
        if let Some(link) = self.pinned_link.take() {
            let _ = link.unpin();
        }
        remove_pins(&dir)
    }

    /// Writes ports, exempt and internal prefixes, and settings.
    pub fn configure(&mut self, cfg: &ProgramConfig) -> Result<(), XdpError> {
        {
            let mut ports: Array<&mut MapData, u32> = self.array(MAP_PORTS)?;
            let mut want = std::collections::HashMap::<u16, u32>::new();
            for p in &cfg.ports {
                let shift = if p.proto == Transport::Tcp { PORT_TCP_SHIFT } else { PORT_UDP_SHIFT };
                *want.entry(p.port).or_default() |= p.service.number() << shift;
            }
            // Clear ports from an earlier (adopted) configuration first.
            for port in 0..u32::from(u16::MAX) + 1 {
                let cur = ports.get(&port, 0).map_err(map_err(MAP_PORTS))?;
                let new = u16::try_from(port).ok().and_then(|p| want.get(&p)).copied().unwrap_or(0);
                if cur != new {
                    ports.set(port, new, 0).map_err(map_err(MAP_PORTS))?;
                }
            }
        }
        // Allowed MACs go in before the entries that require them and leave
        // after, so a live program never checks against a partial list.
        let macs: Vec<[u8; 6]> = cfg.exempt_origin.macs.iter().map(|m| m.0).collect();
        {
            let mut m: HashMap<&mut MapData, [u8; 6], u32> = self.typed(MAP_EXEMPT_MACS)?;
            for mac in &macs {
                m.insert(mac, 1, 0).map_err(map_err(MAP_EXEMPT_MACS))?;
            }
        }
        let origin = &cfg.exempt_origin;
        self.replace_lpm_valued(MAP_EXEMPT_V4, MAP_EXEMPT_V6, &cfg.exempt_sources, |v6| {
            origin.trie_flags(v6)
        })?;
        self.replace_lpm(MAP_INTERNAL_V4, MAP_INTERNAL_V6, &cfg.internal_networks)?;
        // A cached verdict stands for the internal tries too (see `check` in
        // guard-ebpf): none may exist for an internal destination.
        self.flush_cache(Vec::new(), &cfg.internal_networks)?;
        {
            let mut m: HashMap<&mut MapData, [u8; 6], u32> = self.typed(MAP_EXEMPT_MACS)?;
            let stale: Vec<[u8; 6]> = m.keys().filter_map(Result::ok).filter(|k| !macs.contains(k)).collect();
            for k in stale {
                ignore_missing(m.remove(&k)).map_err(map_err(MAP_EXEMPT_MACS))?;
            }
        }
        let mut settings: Array<&mut MapData, Settings> = self.array(MAP_SETTINGS)?;
        settings.set(0, cfg.settings, 0).map_err(map_err(MAP_SETTINGS))?;
        self.tick_clock()
    }

    /// Writes the current last-hit tick into the program's clock map
    /// ([`guard_common::MAP_HIT_CLOCK`]). The daemon calls it every second:
    /// the allowed path then notes hits with an array read instead of a
    /// clock helper call (about 13 ns per packet on the bench machine).
    pub fn tick_clock(&mut self) -> Result<(), XdpError> {
        self.set_hit_clock(coarse_tick().max(1))
    }

    /// Hands the last-hit clock back to the kernel (zero in the clock
    /// map): for a pinned program that keeps enforcing after the daemon
    /// stopped, so no hit is noted with a stale tick.
    pub fn stop_clock(&mut self) -> Result<(), XdpError> {
        self.set_hit_clock(0)
    }

    /// Sets the tick the allowed path notes as a hit (0: the kernel's clock).
    pub fn set_hit_clock(&mut self, tick: u32) -> Result<(), XdpError> {
        let mut clock: Array<&mut MapData, u32> = self.array(MAP_HIT_CLOCK)?;
        clock.set(0, tick, 0).map_err(map_err(MAP_HIT_CLOCK))
    }

    /// Makes the tries `v4`/`v6` hold exactly `list`: wanted keys are
    /// inserted before unwanted ones go, so a live (adopted) program never
    /// sees the organisation's resolvers un-exempted mid-update.
    fn replace_lpm(&mut self, v4: &'static str, v6: &'static str, list: &[Prefix]) -> Result<(), XdpError> {
        self.replace_lpm_valued(v4, v6, list, |_| 1)
    }

    /// As [`Enforcer::replace_lpm`], each entry holding `value(is_ipv6)`
    /// (an existing entry's value is updated in place).
    fn replace_lpm_valued(
        &mut self,
        v4: &'static str,
        v6: &'static str,
        list: &[Prefix],
        value: impl Fn(bool) -> u32,
    ) -> Result<(), XdpError> {
        let want4: Vec<Key<[u8; 4]>> = list
            .iter()
            .filter_map(|p| match p.addr() {
                IpAddr::V4(a) => Some(Key::new(u32::from(p.len()), a.octets())),
                IpAddr::V6(_) => None,
            })
            .collect();
        let want6: Vec<Key<[u8; 16]>> = list
            .iter()
            .filter_map(|p| match p.addr() {
                IpAddr::V6(a) => Some(Key::new(u32::from(p.len()), a.octets())),
                IpAddr::V4(_) => None,
            })
            .collect();
        sync_trie(self.typed::<LpmTrie<&mut MapData, [u8; 4], u32>>(v4)?, v4, &want4, value(false))?;
        sync_trie(self.typed::<LpmTrie<&mut MapData, [u8; 16], u32>>(v6)?, v6, &want6, value(true))
    }

    /// Applies allow-set changes to the maps, and forgets cached verdicts
    /// the change could contradict (so a revoked entry stops at once).
    ///
    /// Changes go in with `BPF_MAP_DELETE_BATCH` / `BPF_MAP_UPDATE_BATCH`
    /// (one syscall per [`BATCH_CHUNK`] entries) where the kernel has them
    /// for the map type, one syscall per entry where not; a diff of more
    /// than [`PARALLEL_MIN`] entries is spread over [`mirror_threads`]
    /// threads (the kernel's hash maps lock per bucket, so inserts scale).
    /// All removals land before any insert (a full map makes room first).
    /// A failing entry (e.g. a full map) does not stop the others, and the
    /// cache is flushed for everything touched either way; the first error
    /// is returned so the caller can report it and retry.
    pub fn apply_diff(&mut self, diff: &AllowDiff) -> Result<(), XdpError> {
        self.apply_diff_with(diff, MirrorPath::Batched { threads: mirror_threads() })
    }

    /// As [`Enforcer::apply_diff`] with the batches on `threads` threads
    /// (1: all on the caller's thread), for benchmarks and tests.
    pub fn apply_diff_threads(&mut self, diff: &AllowDiff, threads: usize) -> Result<(), XdpError> {
        self.apply_diff_with(diff, MirrorPath::Batched { threads: threads.max(1) })
    }

    /// As [`Enforcer::apply_diff`] with one `BPF_MAP_UPDATE_ELEM` /
    /// `BPF_MAP_DELETE_ELEM` per entry: the path before batching, kept as
    /// the fallback and as the benchmark baseline.
    pub fn apply_diff_one_by_one(&mut self, diff: &AllowDiff) -> Result<(), XdpError> {
        self.apply_diff_with(diff, MirrorPath::OneByOne)
    }

    fn apply_diff_with(&mut self, diff: &AllowDiff, path: MirrorPath) -> Result<(), XdpError> {
        let mut touched_prefixes: Vec<Prefix> = Vec::new();
        let mut touched_hosts: Vec<[u8; 16]> = Vec::with_capacity(diff.remove.len() + diff.upsert.len());
        // Per map: removals (keys) and upserts (keys, values), as raw bytes.
        let mut ops: [MapOps; 4] = [
            MapOps::new(MAP_ALLOW_V4, 4, true),
            MapOps::new(MAP_ALLOW_V6, 16, true),
            MapOps::new(MAP_ALLOW_PFX_V4, 8, false),
            MapOps::new(MAP_ALLOW_PFX_V6, 20, false),
        ];
        let removals = diff.remove.iter().map(|p| (p, Classes::NONE));
        let upserts = diff.upsert.iter().map(|(p, c)| (p, *c));
        for (p, c) in removals.chain(upserts) {
            let len = u32::from(p.len()).to_ne_bytes();
            let bits = c.bits();
            match (p.addr(), p.is_host()) {
                (IpAddr::V4(a), true) => {
                    touched_hosts.push(a.to_ipv6_mapped().octets());
                    ops[0].push(&[&a.octets()], bits);
                }
                (IpAddr::V6(a), true) => {
                    touched_hosts.push(a.octets());
                    ops[1].push(&[&a.octets()], bits);
                }
                (IpAddr::V4(a), false) => {
                    touched_prefixes.push(*p);
                    ops[2].push(&[&len, &a.octets()], bits);
                }
                (IpAddr::V6(a), false) => {
                    touched_prefixes.push(*p);
                    ops[3].push(&[&len, &a.octets()], bits);
                }
            }
        }
        // The program lets a cached verdict stand for the prefix tries (see
        // `check` in guard-ebpf): verdicts inside a changed prefix are
        // forgotten before the change, so none outlives a new deny, and
        // after it, for those cached in between.
        if !touched_prefixes.is_empty() {
            self.flush_cache(Vec::new(), &touched_prefixes)?;
        }
        let mut fds = Vec::with_capacity(ops.len());
        for op in &ops {
            let map = self.ebpf.map(op.name).ok_or_else(|| missing(op.name))?;
            fds.push(map_data(map).ok_or_else(|| missing(op.name))?.fd().as_fd());
        }
        let first_err = apply_ops(&ops, &fds, path);
        self.flush_cache(touched_hosts, &touched_prefixes)?;
        first_err.map_or(Ok(()), Err)
    }

    /// Forgets the cached verdicts of `hosts` and of every address inside
    /// `prefixes`. Deleting by key costs one syscall per changed host, a
    /// scan one per cached entry (at most [`guard_common::MAX_CACHE`]):
    /// the cheaper is taken, so a 1M-entry load into an empty cache costs
    /// nothing here.
    fn flush_cache(&mut self, hosts: Vec<[u8; 16]>, prefixes: &[Prefix]) -> Result<(), XdpError> {
        let mut cache: HashMap<&mut MapData, [u8; 16], CacheEntry> = self.typed(MAP_CACHE)?;
        // With prefixes every cached address must be looked at anyway.
        let limit = if prefixes.is_empty() { hosts.len() } else { usize::MAX };
        let mut cached = Vec::new();
        let mut complete = true;
        for k in cache.keys() {
            if cached.len() >= limit {
                complete = false;
                break;
            }
            cached.push(k.map_err(map_err(MAP_CACHE))?);
        }
        let doomed: Vec<[u8; 16]> = if complete {
            let hosts: HashSet<[u8; 16]> =
                if cached.is_empty() { HashSet::new() } else { hosts.into_iter().collect() };
            cached
                .into_iter()
                .filter(|k| {
                    hosts.contains(k) || {
                        let ip = Prefix::host(IpAddr::from(*k)).addr();
                        prefixes.iter().any(|p| p.contains(ip))
                    }
                })
                .collect()
        } else {
            hosts
        };
        for k in doomed {
            ignore_missing(cache.remove(&k)).map_err(map_err(MAP_CACHE))?;
        }
        Ok(())
    }

    /// The start-up state the program runs in ([`STATE_NOT_LOADED`] or
    /// [`STATE_LOADED`]).
    pub fn state(&self) -> Result<u32, XdpError> {
        let arr: Array<&MapData, Settings> = self.typed_ref(MAP_SETTINGS)?;
        Ok(arr.get(&0, 0).map_err(map_err(MAP_SETTINGS))?.state)
    }

    /// Marks the first allow set as loaded (misses go to userspace from now
    /// on), or not loaded (protected traffic without an allow entry is
    /// dropped). Only the `state` field of the settings changes.
    pub fn set_loaded(&mut self, loaded: bool) -> Result<(), XdpError> {
        self.update_settings(|s| s.state = if loaded { STATE_LOADED } else { STATE_NOT_LOADED }).map(|_| ())
    }

    /// Reads the allow maps back (to adopt pinned state, and for tests): the
    /// enforced view, denies as [`Classes::DENY`] entries
    /// ([`crate::policy::AllowSet::from_enforced`] turns them back).
    pub fn read_allow(&self) -> Result<crate::policy::AllowSet, XdpError> {
        let mut set = crate::policy::AllowSet::new();
        for (ip, v) in self.host_entries()? {
            set.add(Prefix::host(ip), Classes::from_map_value(v.classes));
        }
        let p4: LpmTrie<&MapData, [u8; 4], u32> = self.typed_ref(MAP_ALLOW_PFX_V4)?;
        for kv in p4.iter() {
            let (k, v) = kv.map_err(map_err(MAP_ALLOW_PFX_V4))?;
            if let Ok(p) = Prefix::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                set.add(p, Classes::from_map_value(v));
            }
        }
        let p6: LpmTrie<&MapData, [u8; 16], u32> = self.typed_ref(MAP_ALLOW_PFX_V6)?;
        for kv in p6.iter() {
            let (k, v) = kv.map_err(map_err(MAP_ALLOW_PFX_V6))?;
            if let Ok(p) = Prefix::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                set.add(p, Classes::from_map_value(v));
            }
        }
        Ok(set)
    }

    /// Stores the miss path's verdict for `ip` for `ttl`.
    pub fn cache_verdict(&mut self, ip: IpAddr, classes: Classes, ttl: Duration) -> Result<(), XdpError> {
        let key = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let expires_ns = monotonic_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        let entry = CacheEntry { classes: classes.bits(), flags: 0, expires_ns };
        let mut cache: HashMap<&mut MapData, [u8; 16], CacheEntry> = self.typed(MAP_CACHE)?;
        cache.insert(key, entry, 0).map_err(map_err(MAP_CACHE))
    }

    /// Empties the verdict cache.
    pub fn clear_cache(&mut self) -> Result<(), XdpError> {
        let mut cache: HashMap<&mut MapData, [u8; 16], CacheEntry> = self.typed(MAP_CACHE)?;
        for k in cache.keys().filter_map(Result::ok).collect::<Vec<_>>() {
            ignore_missing(cache.remove(&k)).map_err(map_err(MAP_CACHE))?;
        }
        Ok(())
    }

    /// Sums the per-CPU counters.
    pub fn stats(&self) -> Result<StatSnapshot, XdpError> {
        let map = self.ebpf.map(MAP_STATS).ok_or_else(|| missing(MAP_STATS))?;
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err(MAP_STATS))?;
        let mut out = [0u64; STAT_COUNT as usize];
        for s in Stat::ALL {
            let per_cpu = arr.get(&(s as u32), 0).map_err(map_err(MAP_STATS))?;
            out[s as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Takes the event ring buffer (once) for an async reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, XdpError> {
        let map = self.ebpf.take_map(MAP_EVENTS).ok_or_else(|| missing(MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(MAP_EVENTS))
    }

    /// Runs the program once per repetition over `frame` with
    /// `BPF_PROG_TEST_RUN`; returns the XDP action and the mean time per run.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), XdpError> {
        self.test_run_program(PROGRAM_NAME, frame, repeat)
    }

    /// As [`Enforcer::test_run`], for any program of the object (e.g.
    /// [`REFERENCE_PROGRAM`]), loading it on first use.
    pub fn test_run_program(
        &mut self,
        name: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), XdpError> {
        use aya::programs::{TestRun, TestRunOptions};
        let perr = |what, source| XdpError::Program { what, iface: "-".into(), source };
        let prog = loaded_xdp(&mut self.ebpf, name, "-")?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let r = prog.test_run(opts).map_err(|e| perr("test run", e))?;
        Ok((r.return_value, r.duration))
    }

    /// Rewrites the settings element with `f` applied (e.g. the miss
    /// transport, once its sockets exist or when they cannot).
    pub fn update_settings(&mut self, f: impl FnOnce(&mut Settings)) -> Result<Settings, XdpError> {
        let mut arr: Array<&mut MapData, Settings> = self.array(MAP_SETTINGS)?;
        let mut s = arr.get(&0, 0).map_err(map_err(MAP_SETTINGS))?;
        f(&mut s);
        arr.set(0, s, 0).map_err(map_err(MAP_SETTINGS))?;
        Ok(s)
    }

    /// Puts an AF_XDP socket into the program's socket map for RX queue `queue`.
    pub fn register_xsk(&mut self, queue: u32, socket: &impl std::os::fd::AsRawFd) -> Result<(), XdpError> {
        let mut m: XskMap<&mut MapData> = self.typed(MAP_XSKS)?;
        m.set(queue, socket.as_raw_fd(), 0).map_err(map_err(MAP_XSKS))
    }

    /// Loads the release program and attaches it to the ingress of `iface`
    /// (tcx, kernel 6.6 or later). It stays attached while this value lives.
    pub fn attach_release(&mut self, iface: &str) -> Result<(), XdpError> {
        let perr = |what, source| XdpError::Program { what, iface: iface.to_owned(), source };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(RELEASE_PROGRAM)
            .ok_or(perr("lookup release program", aya::programs::ProgramError::NotLoaded))?
            .try_into()
            .map_err(|e| perr("lookup release program", e))?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| perr("load release program", e))?;
        }
        prog.attach(iface, TcAttachType::Ingress).map_err(|e| perr("attach release program", e))?;
        Ok(())
    }

    /// Every host allow entry with its value (classes and last-hit tick).
    fn host_entries(&self) -> Result<Vec<(IpAddr, HostValue)>, XdpError> {
        let mut out = Vec::new();
        let a4: HashMap<&MapData, [u8; 4], HostValue> = self.typed_ref(MAP_ALLOW_V4)?;
        for kv in a4.iter() {
            let (k, v) = kv.map_err(map_err(MAP_ALLOW_V4))?;
            out.push((IpAddr::from(k), v));
        }
        let a6: HashMap<&MapData, [u8; 16], HostValue> = self.typed_ref(MAP_ALLOW_V6)?;
        for kv in a6.iter() {
            let (k, v) = kv.map_err(map_err(MAP_ALLOW_V6))?;
            out.push((IpAddr::from(k), v));
        }
        Ok(out)
    }

    /// When allowed traffic last went to each host entry, as seconds ago
    /// (issue 11: ageing keeps entries in use). Entries with no allowed
    /// packet since userspace wrote them are left out.
    pub fn last_hits(&self) -> Result<Vec<(IpAddr, u64)>, XdpError> {
        let now = coarse_tick();
        let hits = self.host_entries()?.into_iter().filter(|(_, v)| v.hit != 0);
        Ok(hits.map(|(ip, v)| (ip, ticks_to_secs(now.wrapping_sub(v.hit)))).collect())
    }

    /// When allowed traffic last went to host entry `ip`, seconds ago:
    /// `None` without an entry or without an allowed packet since userspace
    /// wrote it. One map lookup (`rpz-guard explain`).
    pub fn last_hit(&self, ip: IpAddr) -> Result<Option<u64>, XdpError> {
        let found = |r: Result<HostValue, MapError>, name| match r {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        };
        let value = match Prefix::host(ip).addr() {
            IpAddr::V4(a) => {
                let h: HashMap<&MapData, [u8; 4], HostValue> = self.typed_ref(MAP_ALLOW_V4)?;
                found(h.get(&a.octets(), 0), MAP_ALLOW_V4)?
            }
            IpAddr::V6(a) => {
                let h: HashMap<&MapData, [u8; 16], HostValue> = self.typed_ref(MAP_ALLOW_V6)?;
                found(h.get(&a.octets(), 0), MAP_ALLOW_V6)?
            }
        };
        Ok(value.filter(|v| v.hit != 0).map(|v| ticks_to_secs(coarse_tick().wrapping_sub(v.hit))))
    }

    /// A handle on the verdict cache usable from another thread without
    /// this value (a second descriptor of the same map).
    pub fn verdict_cache(&self) -> Result<VerdictCache, XdpError> {
        let m = self.ebpf.map(MAP_CACHE).ok_or_else(|| missing(MAP_CACHE))?;
        let data = match m {
            Map::LruHashMap(d) | Map::HashMap(d) => d,
            _ => return Err(map_err(MAP_CACHE)(MapError::InvalidName { name: MAP_CACHE.into() })),
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| {
            map_err(MAP_CACHE)(MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error: e }))
        })?;
        let data = MapData::from_fd(fd).map_err(map_err(MAP_CACHE))?;
        let map = HashMap::try_from(Map::LruHashMap(data)).map_err(map_err(MAP_CACHE))?;
        Ok(VerdictCache { map })
    }

    /// What the allow maps hold for destination `ip`: `(host map, prefix
    /// trie's longest match)`, each classes or [`Classes::DENY`]; the
    /// program allows on either unless one is a deny (`rpz-guard explain`).
    /// Point lookups, never a walk of the maps.
    pub fn allow_of(&self, ip: IpAddr) -> Result<(Classes, Classes), XdpError> {
        let ip = Prefix::host(ip).addr();
        let found = |r: Result<u32, MapError>, name| match r {
            Ok(v) => Ok(Classes::from_map_value(v)),
            Err(MapError::KeyNotFound) => Ok(Classes::NONE),
            Err(e) => Err(map_err(name)(e)),
        };
        let classes = |v: HostValue| v.classes;
        match ip {
            IpAddr::V4(a) => {
                let h: HashMap<&MapData, [u8; 4], HostValue> = self.typed_ref(MAP_ALLOW_V4)?;
                let t: LpmTrie<&MapData, [u8; 4], u32> = self.typed_ref(MAP_ALLOW_PFX_V4)?;
                Ok((
                    found(h.get(&a.octets(), 0).map(classes), MAP_ALLOW_V4)?,
                    found(t.get(&Key::new(32, a.octets()), 0), MAP_ALLOW_PFX_V4)?,
                ))
            }
            IpAddr::V6(a) => {
                let h: HashMap<&MapData, [u8; 16], HostValue> = self.typed_ref(MAP_ALLOW_V6)?;
                let t: LpmTrie<&MapData, [u8; 16], u32> = self.typed_ref(MAP_ALLOW_PFX_V6)?;
                Ok((
                    found(h.get(&a.octets(), 0).map(classes), MAP_ALLOW_V6)?,
                    found(t.get(&Key::new(128, a.octets()), 0), MAP_ALLOW_PFX_V6)?,
                ))
            }
        }
    }

    /// The verdict cache's entry for `ip`, with the time it has left
    /// (`None`: no entry, or an expired one the program treats as a miss).
    pub fn cached_verdict(&self, ip: IpAddr) -> Result<Option<KernelVerdict>, XdpError> {
        let cache: HashMap<&MapData, [u8; 16], CacheEntry> = self.typed_ref(MAP_CACHE)?;
        let e = match cache.get(&cache_key(Prefix::host(ip).addr()), 0) {
            Ok(e) => e,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(map_err(MAP_CACHE)(e)),
        };
        let now = monotonic_ns();
        Ok((e.expires_ns > now).then(|| KernelVerdict {
            classes: Classes::from_bits(e.classes),
            pending: e.flags & guard_common::CACHE_PENDING != 0,
            expires_in_ms: (e.expires_ns - now) / 1_000_000,
        }))
    }

    fn typed<'a, T>(&'a mut self, name: &'static str) -> Result<T, XdpError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        typed_map(self.ebpf.map_mut(name), name)
    }

    fn typed_ref<'a, T>(&'a self, name: &'static str) -> Result<T, XdpError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = MapError>,
    {
        let m = self.ebpf.map(name).ok_or_else(|| missing(name))?;
        T::try_from(m).map_err(map_err(name))
    }

    fn array<'a, V: aya::Pod>(
        &'a mut self,
        name: &'static str,
    ) -> Result<Array<&'a mut MapData, V>, XdpError> {
        self.typed(name)
    }
}

/// One entry of the kernel verdict cache (see [`Enforcer::cached_verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelVerdict {
    /// The classes cached (`none`: a negative answer, or a failed question).
    pub classes: Classes,
    /// Userspace is still asking the RPZ.
    pub pending: bool,
    /// Milliseconds until the entry goes stale.
    pub expires_in_ms: u64,
}

/// Writes host entries into the allow maps, independently of the
/// [`Enforcer`] (see [`Enforcer::allow_writer`]).
pub struct AllowWriter {
    v4: HashMap<MapData, [u8; 4], HostValue>,
    v6: HashMap<MapData, [u8; 16], HostValue>,
}

impl AllowWriter {
    /// Sets the classes of host `ip`. The last-hit time of an entry that
    /// stays allowed is kept; unchanged classes write nothing.
    pub fn set(&mut self, ip: IpAddr, classes: Classes) -> Result<(), XdpError> {
        let old = self.value(ip);
        if old.is_some_and(|v| v.classes == classes.bits()) {
            return Ok(());
        }
        let value = HostValue { classes: classes.bits(), hit: old.map_or(0, |v| v.hit) };
        match ip {
            IpAddr::V4(a) => self.v4.insert(a.octets(), value, 0).map_err(map_err(MAP_ALLOW_V4)),
            IpAddr::V6(a) => self.v6.insert(a.octets(), value, 0).map_err(map_err(MAP_ALLOW_V6)),
        }
    }

    /// The classes the maps hold for host `ip`.
    pub fn get(&self, ip: IpAddr) -> Classes {
        Classes::from_bits(self.value(ip).map_or(0, |v| v.classes))
    }

    fn value(&self, ip: IpAddr) -> Option<HostValue> {
        match ip {
            IpAddr::V4(a) => self.v4.get(&a.octets(), 0).ok(),
            IpAddr::V6(a) => self.v6.get(&a.octets(), 0).ok(),
        }
    }
}

/// The XDP program `name` of the object, loaded on first use (errors name
/// `iface`, the interface it is for, or `-`).
fn loaded_xdp<'a>(ebpf: &'a mut Ebpf, name: &str, iface: &str) -> Result<&'a mut Xdp, XdpError> {
    let perr = |what, source| XdpError::Program { what, iface: iface.to_owned(), source };
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(perr("lookup", aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(|e| perr("lookup", e))?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| perr("load", e))?;
    }
    Ok(prog)
}

/// True for interfaces where `auto` attaches in generic mode first: veth.
/// Native XDP on a veth moves every frame through the device's own NAPI
/// ring and rebuilds an skb for each passed one (copying it when its
/// headroom is short), which generic mode, running on the skb already
/// there, does not: measured with `cargo xtask bench --only xdp-e2e`,
/// generic mode spends about 13 % less CPU per passed packet and 5 % less
/// per dropped one on the lab veth (see the README). A physical NIC's
/// native mode runs before any skb exists and stays the first choice.
pub fn prefers_generic(iface: &str) -> bool {
    driver(iface).is_some_and(|d| d == "veth")
}

/// The kernel driver behind `iface` (`ETHTOOL_GDRVINFO`), e.g. "veth";
/// `None` when it cannot be read.
fn driver(iface: &str) -> Option<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    /// `struct ethtool_drvinfo`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    /// `struct ifreq` with `ifr_data`.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        pad: [u8; 16],
    }
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 32 * 4 + 12 + 4 * 5] };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut info, pad: [0; 16] };
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `req` is a valid ifreq whose data points at a live, writable
    // ethtool_drvinfo, as SIOCETHTOOL with ETHTOOL_GDRVINFO expects.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc != 0 {
        return None;
    }
    let len = info.driver.iter().position(|b| *b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// Attaches `prog` to `iface` in `mode` (auto: native, else generic; on
/// a veth generic, else native).
fn attach_in_mode(
    prog: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachMode), XdpError> {
    let perr = |source| XdpError::Program { what: "attach", iface: iface.to_owned(), source };
    Ok(match mode {
        AttachMode::Native => (prog.attach(iface, AyaMode::Driver).map_err(perr)?, mode),
        AttachMode::Generic => (prog.attach(iface, AyaMode::Skb).map_err(perr)?, mode),
        AttachMode::Auto if prefers_generic(iface) => match prog.attach(iface, AyaMode::Skb) {
            Ok(id) => {
                tracing::info!(iface, "a veth: attached in generic mode, which costs less there than native");
                (id, AttachMode::Generic)
            }
            Err(e) => {
                tracing::warn!(iface, error = %e, "generic XDP attach failed; trying native mode");
                (prog.attach(iface, AyaMode::Driver).map_err(perr)?, AttachMode::Native)
            }
        },
        AttachMode::Auto => match prog.attach(iface, AyaMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(e) => {
                tracing::warn!(iface, error = %e, "native XDP attach failed; using generic mode");
                (prog.attach(iface, AyaMode::Skb).map_err(perr)?, AttachMode::Generic)
            }
        },
    })
}

/// The miss path's writer of the kernel verdict cache (see
/// [`Enforcer::verdict_cache`]).
pub struct VerdictCache {
    map: HashMap<MapData, [u8; 16], CacheEntry>,
}

impl VerdictCache {
    /// Caches `classes` for `ip` for `ttl`, unless the allow set changed
    /// since the decision was made: `generation` is the resolver generation
    /// read before deciding, `current` reads it now. Written first and
    /// checked after, so a concurrent invalidation (which bumps the
    /// generation before it flushes the cache) either flushes this entry or
    /// makes this call withdraw it: no lock with the mirror is needed.
    /// Returns false when the verdict was not (or no longer) cached.
    pub fn store(
        &mut self,
        ip: IpAddr,
        classes: Classes,
        ttl: Duration,
        generation: u64,
        current: impl Fn() -> u64,
    ) -> Result<bool, XdpError> {
        let key = cache_key(ip);
        if current() != generation {
            return Ok(false);
        }
        let expires_ns = monotonic_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
        let entry = CacheEntry { classes: classes.bits(), flags: 0, expires_ns };
        self.map.insert(key, entry, 0).map_err(map_err(MAP_CACHE))?;
        if current() != generation {
            ignore_missing(self.map.remove(&key)).map_err(map_err(MAP_CACHE))?;
            return Ok(false);
        }
        Ok(true)
    }
}

fn cache_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Inserts `want` into `trie`, then removes every other key.
fn sync_trie<K: aya::Pod + PartialEq>(
    mut trie: LpmTrie<&mut MapData, K, u32>,
    name: &'static str,
    want: &[Key<K>],
    value: u32,
) -> Result<(), XdpError> {
    for k in want {
        trie.insert(k, value, 0).map_err(map_err(name))?;
    }
    let have: Vec<Key<K>> = trie.keys().collect::<Result<_, _>>().map_err(map_err(name))?;
    for k in have {
        if !want.iter().any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data()) {
            ignore_missing(trie.remove(&k)).map_err(map_err(name))?;
        }
    }
    Ok(())
}

fn typed_map<'a, T>(m: Option<&'a mut aya::maps::Map>, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let m = m.ok_or_else(|| missing(name))?;
    T::try_from(m).map_err(map_err(name))
}

fn missing(name: &'static str) -> XdpError {
    XdpError::Map { name, source: MapError::InvalidName { name: name.into() } }
}

fn program<'a>(ebpf: &'a mut Ebpf, iface: &str) -> Result<&'a mut Xdp, XdpError> {
    let perr = |source| XdpError::Program { what: "lookup", iface: iface.to_owned(), source };
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(perr(aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(perr)
}

/// Entries per `BPF_MAP_*_BATCH` call: large enough that the syscall cost
/// vanishes, small enough that one call holds the CPU only a few ms.
pub const BATCH_CHUNK: usize = 16 * 1024;

/// Diffs of at least this many entries are spread over threads.
pub const PARALLEL_MIN: usize = 4 * BATCH_CHUNK;

/// Threads the mirror uses for a large diff: the CPUs this process may
/// run on, at most 4 (more contend on the kernel's allocator and locks).
pub fn mirror_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// How [`Enforcer`] writes allow-set changes into the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MirrorPath {
    /// `BPF_MAP_*_BATCH` on up to `threads` threads, falling back per map
    /// where the kernel lacks the batch op.
    Batched {
        /// Threads for a diff of at least [`PARALLEL_MIN`] entries.
        threads: usize,
    },
    /// One syscall per entry, on the caller's thread.
    OneByOne,
}

/// The changes for one allow map: keys to remove, then keys and values to
/// insert, as the raw bytes the kernel wants.
struct MapOps {
    name: &'static str,
    key_size: usize,
    /// Values are [`HostValue`]s (else a bare `u32` of class bits).
    host: bool,
    remove: Vec<u8>,
    upsert_keys: Vec<u8>,
    upsert_values: Vec<u8>,
}

impl MapOps {
    fn new(name: &'static str, key_size: usize, host: bool) -> Self {
        MapOps {
            name,
            key_size,
            host,
            remove: Vec::new(),
            upsert_keys: Vec::new(),
            upsert_values: Vec::new(),
        }
    }

    /// Adds the key made of `parts`; class bits 0 mean "remove".
    fn push(&mut self, parts: &[&[u8]], bits: u32) {
        let keys = if bits == 0 { &mut self.remove } else { &mut self.upsert_keys };
        for p in parts {
            keys.extend_from_slice(p);
        }
        if bits != 0 {
            self.upsert_values.extend_from_slice(&bits.to_ne_bytes());
            if self.host {
                // HostValue::hit: no allowed packet yet.
                self.upsert_values.extend_from_slice(&0u32.to_ne_bytes());
            }
        }
    }

    /// Bytes per value.
    fn value_size(&self) -> usize {
        if self.host { HOST_VALUE_SIZE as usize } else { 4 }
    }

    fn error(&self, e: std::io::Error) -> XdpError {
        XdpError::Map {
            name: self.name,
            source: MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_batch", io_error: e }),
        }
    }
}

/// One unit of mirror work: a chunk of removals or of upserts on one map.
struct Job<'a> {
    map: usize,
    fd: BorrowedFd<'a>,
    key_size: usize,
    value_size: usize,
    keys: &'a [u8],
    /// None: a removal.
    values: Option<&'a [u8]>,
}

impl Job<'_> {
    fn run(&self, path: MirrorPath) -> std::io::Result<()> {
        let ks = self.key_size;
        match (path, self.values) {
            (MirrorPath::Batched { .. }, None) => batch_delete(self.fd, self.keys, ks),
            (MirrorPath::Batched { .. }, Some(v)) => batch_update(self.fd, self.keys, v, ks),
            (MirrorPath::OneByOne, values) => {
                let mut first = Ok(());
                for (i, key) in self.keys.chunks(ks).enumerate() {
                    let r = match values {
                        None => elem_delete(self.fd, key),
                        Some(v) => {
                            elem_update(self.fd, key, &v[i * self.value_size..(i + 1) * self.value_size])
                        }
                    };
                    if r.is_err() && first.is_ok() {
                        first = r;
                    }
                }
                first
            }
        }
    }
}

/// Writes `ops` into the maps `fds`: every removal, then every upsert, in
/// chunks of [`BATCH_CHUNK`] spread over the path's threads. Every chunk
/// is tried; returns the first error (of the lowest-numbered map).
fn apply_ops(ops: &[MapOps], fds: &[BorrowedFd<'_>], path: MirrorPath) -> Option<XdpError> {
    let mut removals = Vec::new();
    let mut upserts = Vec::new();
    for (map, (op, fd)) in ops.iter().zip(fds).enumerate() {
        let (ks, vs) = (op.key_size, op.value_size());
        for keys in op.remove.chunks(ks * BATCH_CHUNK) {
            removals.push(Job { map, fd: *fd, key_size: ks, value_size: vs, keys, values: None });
        }
        for (keys, values) in
            op.upsert_keys.chunks(ks * BATCH_CHUNK).zip(op.upsert_values.chunks(vs * BATCH_CHUNK))
        {
            upserts.push(Job { map, fd: *fd, key_size: ks, value_size: vs, keys, values: Some(values) });
        }
    }
    let entries: usize = ops.iter().map(|o| (o.remove.len() + o.upsert_keys.len()) / o.key_size).sum();
    let threads = match path {
        MirrorPath::Batched { threads } if entries >= PARALLEL_MIN => threads,
        _ => 1,
    };
    let errors: std::sync::Mutex<Vec<Option<std::io::Error>>> =
        std::sync::Mutex::new((0..ops.len()).map(|_| None).collect());
    for phase in [&removals, &upserts] {
        run_jobs(phase, threads, path, &errors);
    }
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    errors.into_iter().zip(ops).find_map(|(e, op)| e.map(|e| op.error(e)))
}

/// Runs `jobs` on `threads` threads (the caller's included), each taking
/// the next job until none is left; keeps the first error per map.
fn run_jobs(
    jobs: &[Job<'_>],
    threads: usize,
    path: MirrorPath,
    errors: &std::sync::Mutex<Vec<Option<std::io::Error>>>,
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        while let Some(job) = jobs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            if let Err(e) = job.run(path) {
                let mut errs = errors.lock().unwrap_or_else(|p| p.into_inner());
                errs[job.map].get_or_insert(e);
            }
        }
    };
    let threads = threads.min(jobs.len()).max(1);
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "not supported" (no batch op for this map type).
const ENOTSUPP: i32 = 524;

/// The `bpf(2)` syscall over a zeroed `bpf_attr` of 64 bytes.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> std::io::Result<()> {
    // SAFETY: `attr` is a bpf_attr of ample size whose pointers (set by the
    // callers) stay valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn fd_u64(fd: BorrowedFd<'_>) -> u64 {
    u64::from(u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX))
}

/// One `BPF_MAP_UPDATE_ELEM` (flags `BPF_ANY`).
fn elem_update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    // bpf_attr: map_fd (u32, padded), key (u64), value (u64), flags (u64).
    let mut attr = [fd_u64(fd), key.as_ptr() as u64, value.as_ptr() as u64, 0, 0, 0, 0, 0];
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// One `BPF_MAP_DELETE_ELEM`; a missing key is fine for a mirror.
fn elem_delete(fd: BorrowedFd<'_>, key: &[u8]) -> std::io::Result<()> {
    let mut attr = [fd_u64(fd), key.as_ptr() as u64, 0, 0, 0, 0, 0, 0];
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The batch part of `bpf_attr` (Linux 5.6+): in_batch, out_batch, keys,
/// values (u64 each), count and map_fd (u32 each), elem_flags, flags.
fn batch_attr(fd: BorrowedFd<'_>, keys: &[u8], values: Option<&[u8]>, count: usize) -> [u64; 8] {
    let count = u64::from(u32::try_from(count).unwrap_or(u32::MAX));
    [0, 0, keys.as_ptr() as u64, values.map_or(0, |v| v.as_ptr() as u64), count | fd_u64(fd) << 32, 0, 0, 0]
}

/// `count` as the kernel wrote it back (the entries done before a failure).
fn batch_count(attr: &[u64; 8]) -> u64 {
    attr[4] & 0xffff_ffff
}

/// True when the kernel has no batch operation for this map (ENOTSUPP), or
/// no batch command at all (EINVAL before touching `count`, which still
/// holds the `n` we asked for).
fn batch_unsupported(e: &std::io::Error, count_after: u64, n: usize) -> bool {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | ENOTSUPP) => true,
        Some(libc::EINVAL) => count_after == n as u64,
        _ => false,
    }
}

/// `BPF_MAP_UPDATE_BATCH` over `keys`/`values`; the entries the kernel did
/// not take (no batch support, or an entry failed) go one by one, so one
/// bad entry does not stop the rest.
fn batch_update(fd: BorrowedFd<'_>, keys: &[u8], values: &[u8], ks: usize) -> std::io::Result<()> {
    let n = keys.len() / ks;
    let mut attr = batch_attr(fd, keys, Some(values), n);
    let (done, mut first) = match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
        Ok(()) => return Ok(()),
        Err(e) if batch_unsupported(&e, batch_count(&attr), n) => (0, Ok(())),
        // `count` now holds the entries done before the failing one, which
        // is retried alone below (and fails again, giving the error).
        Err(e) => {
            let done = usize::try_from(batch_count(&attr)).unwrap_or(n).min(n);
            (done, if done == n { Err(e) } else { Ok(()) })
        }
    };
    for (k, v) in keys[done * ks..].chunks(ks).zip(values[done * 4..].chunks(4)) {
        if let Err(e) = elem_update(fd, k, v)
            && first.is_ok()
        {
            first = Err(e);
        }
    }
    first
}

/// `BPF_MAP_DELETE_BATCH` over `keys`. The kernel stops at the first key
/// that is not there (ENOENT): that one is skipped and the batch resumes.
fn batch_delete(fd: BorrowedFd<'_>, keys: &[u8], ks: usize) -> std::io::Result<()> {
    let mut first = Ok(());
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len() / ks;
        let mut attr = batch_attr(fd, rest, None, n);
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => break,
            Err(e) if batch_unsupported(&e, batch_count(&attr), n) => {
                for k in rest.chunks(ks) {
                    if let Err(e) = elem_delete(fd, k)
                        && first.is_ok()
                    {
                        first = Err(e);
                    }
                }
                break;
            }
            Err(e) => {
                let done = usize::try_from(batch_count(&attr)).unwrap_or(n).min(n.saturating_sub(1));
                if e.raw_os_error() != Some(libc::ENOENT) && first.is_ok() {
                    first = Err(e);
                }
                rest = &rest[(done + 1) * ks..];
            }
        }
    }
    first
}

/// The map's data, for the map types the allow mirror uses.
fn map_data(m: &aya::maps::Map) -> Option<&MapData> {
    match m {
        aya::maps::Map::HashMap(d) | aya::maps::Map::LpmTrie(d) | aya::maps::Map::Array(d) => Some(d),
        _ => None,
    }
}

/// A remove of a key that is not there is not an error for a mirror.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the XDP program
/// reads (`bpf_ktime_get_coarse_ns`) for cache expiry and event times.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fails unless `dir` (or its nearest existing ancestor) is on a bpffs.
fn check_bpffs(dir: &Path) -> Result<(), XdpError> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .map_err(|_| XdpError::Pin { dir: dir.into(), why: "path contains NUL".into() })?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast, reason = "f_type's width differs between libc targets")]
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(XdpError::Pin {
            dir: dir.into(),
            why: format!(
                "{} is not on a bpf filesystem; mount one first (mount -t bpf bpf /sys/fs/bpf)",
                probe.display()
            ),
        });
    }
    Ok(())
}

/// The bpffs every default pin directory lives under.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Where pinned state goes unless configured: `/sys/fs/bpf/rpz-guard/<iface>`,
/// or `/sys/fs/bpf/rpz-guard/<netns>/<iface>` in a network namespace other
/// than the host's (named as in `/run/netns`, else by inode), so routers in
/// different namespaces on one host never adopt each other's state.
pub fn default_pin_dir(iface: &str) -> PathBuf {
    let base = Path::new(BPFFS_ROOT).join("rpz-guard");
    match netns_label() {
        Some(ns) => base.join(ns).join(iface),
        None => base.join(iface),
    }
}

/// `dev:inode` of a namespace link such as `/proc/self/ns/net`.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The parent pid of `pid` (field 4 of `/proc/<pid>/stat`).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The outermost ancestor whose namespaces we may read: the reference for
/// "the host" (PID 1 where readable; in a sandbox, the last readable one).
fn reference_pid() -> Option<u32> {
    let mut best = None;
    let mut pid = parent_pid(std::process::id())?;
    for _ in 0..64 {
        if std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok() {
            best = Some(pid);
        }
        if pid <= 1 {
            break;
        }
        match parent_pid(pid) {
            Some(p) => pid = p,
            None => break,
        }
    }
    best
}

/// None in the host's network namespace, else a name for ours.
fn netns_label() -> Option<String> {
    let ours = ns_id(Path::new("/proc/self/ns/net"))?;
    let host = reference_pid().and_then(|p| ns_id(Path::new(&format!("/proc/{p}/ns/net"))));
    if host.is_none_or(|h| h == ours) {
        return None;
    }
    let named = std::fs::read_dir("/run/netns").ok().and_then(|dir| {
        dir.filter_map(Result::ok)
            .find(|e| ns_id(&e.path()) == Some(ours))
            .map(|e| e.file_name().to_string_lossy().into_owned())
    });
    Some(named.unwrap_or_else(|| format!("netns-{}", ours.1)))
}

/// Whether pinned state in a directory outlives the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinLifetime {
    /// The bpffs is mounted where the host sees it: pins survive the process.
    Persistent,
    /// The bpffs exists only in this process's mount namespace (e.g. under
    /// `ip netns exec`, or a service with private mounts): everything
    /// pinned there goes when the daemon's last process ends.
    Transient {
        /// Why, for the log and status.
        why: String,
    },
}

/// Mounts a bpffs at [`BPFFS_ROOT`] when `dir` is under it and none is
/// mounted there yet (systemd usually mounts one; a bare system may not).
pub fn ensure_bpffs(dir: &Path) -> Result<bool, XdpError> {
    let root = Path::new(BPFFS_ROOT);
    if !dir.starts_with(root) || check_bpffs(root).is_ok() {
        return Ok(false);
    }
    let perr = |why: String| XdpError::Pin { dir: dir.into(), why };
    std::fs::create_dir_all(root).map_err(|e| perr(format!("create {BPFFS_ROOT}: {e}")))?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| perr("path contains NUL".into()));
    let (src, target, fstype, opts) = (c("bpf")?, c(BPFFS_ROOT)?, c("bpf")?, c("mode=0700")?);
    // SAFETY: valid C strings; mount(2) does not keep the pointers.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, opts.as_ptr().cast()) };
    if rc != 0 {
        return Err(perr(format!("mount a bpffs at {BPFFS_ROOT}: {}", std::io::Error::last_os_error())));
    }
    tracing::info!(dir = BPFFS_ROOT, "mounted a bpf filesystem for the pinned state");
    Ok(true)
}

/// Tells whether the bpffs holding `dir` outlives this process: it does
/// when we share the host's mount namespace, or when the host sees the
/// same filesystem at the same path.
pub fn pin_lifetime(dir: &Path) -> PinLifetime {
    use std::os::unix::fs::MetadataExt;
    let Some(host) = reference_pid() else { return PinLifetime::Persistent };
    let ours = ns_id(Path::new("/proc/self/ns/mnt"));
    if ours.is_some() && ours == ns_id(Path::new(&format!("/proc/{host}/ns/mnt"))) {
        return PinLifetime::Persistent;
    }
    let mut probe = dir.to_path_buf();
    while !probe.exists() && probe.pop() {}
    let here = std::fs::metadata(&probe).map(|m| m.dev()).ok();
    let rel = probe.strip_prefix("/").unwrap_or(&probe);
    let there = std::fs::metadata(Path::new(&format!("/proc/{host}/root")).join(rel)).map(|m| m.dev()).ok();
    if here.is_some() && here == there {
        return PinLifetime::Persistent;
    }
    PinLifetime::Transient {
        why: format!(
            "the bpf filesystem at {} exists only in this process's mount namespace (as under `ip netns exec` \
             or a service with private mounts); pinned state would vanish with the daemon",
            probe.display()
        ),
    }
}

/// Compares the pinned maps in `dir` with this build's [`guard_common::MAP_LAYOUT`]:
/// Ok(None) when they match (adopt them), Ok(Some(why)) when they differ
/// but the allow set and state can be carried over ([`Migration`]), an
/// error when not even that can be read safely.
fn check_pinned_layout(dir: &Path) -> Result<Option<String>, XdpError> {
    let mut differs = Vec::new();
    for (name, key, value, max, flags) in guard_common::MAP_LAYOUT {
        let path = dir.join(name);
        if !path.exists() {
            // A map this build added: the old
            // layout is carried over into a fresh set of maps.
            differs.push(format!("{name} (absent; new in this build)"));
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| XdpError::Pin {
            dir: dir.into(),
            why: format!("pinned map {name} is missing or unreadable ({e}); remove the old state with `rpz-guard unpin {}`", dir.display()),
        })?;
        let have = (info.key_size(), info.value_size(), info.max_entries(), info.map_flags());
        if have == (key, value, max, flags) {
            continue;
        }
        let what = format!(
            "{name} (key {}, value {}, entries {}, flags {:#x}; this build: {key}, {value}, {max}, {flags:#x})",
            have.0, have.1, have.2, have.3
        );
        let readable = match name {
            n if MIGRATED_MAPS.contains(&n) => have.0 == key && have.1 >= 4,
            MAP_SETTINGS => have.0 == key,
            _ => true,
        };
        if !readable {
            return Err(XdpError::Pin {
                dir: dir.into(),
                why: format!(
                    "pinned map {what} comes from another rpz-guard version whose allow set this build cannot read; \
                     the old program keeps enforcing its last set. `rpz-guard unpin {}` (stops enforcement) \
                     or use a new --pin directory",
                    dir.display()
                ),
            });
        }
        differs.push(what);
    }
    Ok((!differs.is_empty()).then(|| differs.join(", ")))
}

/// The allow maps a layout migration carries over: their keys are the same
/// in every layout so far, and the class bits are the first `u32` of a value.
const MIGRATED_MAPS: [&str; 4] = [MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_ALLOW_PFX_V4, MAP_ALLOW_PFX_V6];

/// What a pin directory of another map layout held, carried into a fresh
/// set of maps: the new program gets the same allow set and start-up state
/// before it replaces the old one inside the pinned link, so an upgrade
/// across a layout change never opens (nor freezes) enforcement.
struct Migration {
    set: crate::policy::AllowSet,
    state: u32,
    why: String,
}

impl Migration {
    /// Reads the allow maps and the settings' state of the pinned maps in
    /// `dir`, whatever their value sizes (class bits first).
    fn read(dir: &Path, why: String) -> Result<Self, XdpError> {
        let perr = |why: String| XdpError::Pin { dir: dir.into(), why };
        let mut set = crate::policy::AllowSet::new();
        for name in MIGRATED_MAPS {
            let data =
                MapData::from_pin(dir.join(name)).map_err(|e| perr(format!("open pinned {name}: {e}")))?;
            let info = data.info().map_err(|e| perr(format!("pinned {name}: {e}")))?;
            let entries =
                raw_entries(data.fd().as_fd(), info.key_size() as usize, info.value_size() as usize)
                    .map_err(|e| perr(format!("read pinned {name}: {e}")))?;
            for (k, v) in entries {
                let classes = Classes::from_map_value(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
                let prefix = match k.len() {
                    4 => Some(Prefix::host(IpAddr::from(<[u8; 4]>::try_from(&k[..]).unwrap_or_default()))),
                    16 => Some(Prefix::host(IpAddr::from(<[u8; 16]>::try_from(&k[..]).unwrap_or_default()))),
                    8 | 20 => {
                        let len = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]);
                        let addr = match <[u8; 4]>::try_from(&k[4..]) {
                            Ok(a) => IpAddr::from(a),
                            Err(_) => IpAddr::from(<[u8; 16]>::try_from(&k[4..]).unwrap_or_default()),
                        };
                        u8::try_from(len).ok().and_then(|l| Prefix::new(addr, l).ok())
                    }
                    _ => None,
                };
                if let Some(p) = prefix.filter(|_| !classes.is_empty()) {
                    set.add(p, classes);
                }
            }
        }
        let data = MapData::from_pin(dir.join(MAP_SETTINGS))
            .map_err(|e| perr(format!("open pinned {MAP_SETTINGS}: {e}")))?;
        let info = data.info().map_err(|e| perr(format!("pinned {MAP_SETTINGS}: {e}")))?;
        let settings = raw_entries(data.fd().as_fd(), 4, info.value_size() as usize)
            .map_err(|e| perr(format!("read pinned {MAP_SETTINGS}: {e}")))?;
        // Layouts before the state field enforced their set as loaded.
        let offset = std::mem::offset_of!(Settings, state);
        let state = settings
            .first()
            .and_then(|(_, v)| v.get(offset..offset + 4))
            .map_or(STATE_LOADED, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        Ok(Migration { set, state: if state == STATE_LOADED { STATE_LOADED } else { STATE_NOT_LOADED }, why })
    }
}

/// Every `(key, value)` of a map, read with `BPF_MAP_GET_NEXT_KEY` and
/// `BPF_MAP_LOOKUP_ELEM` (any map type, any sizes). Values shorter than 4
/// bytes are padded (the callers read a `u32` at their start).
fn raw_entries(fd: BorrowedFd<'_>, ks: usize, vs: usize) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut out = Vec::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; ks];
        let cur = key.as_ref().map_or(0, |k| k.as_ptr() as u64);
        let mut attr = [fd_u64(fd), cur, next.as_mut_ptr() as u64, 0, 0, 0, 0, 0];
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let mut value = vec![0u8; vs.max(4)];
        let mut attr = [fd_u64(fd), next.as_ptr() as u64, value.as_mut_ptr() as u64, 0, 0, 0, 0, 0];
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            // Deleted between the two calls: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
            Ok(()) => out.push((next.clone(), value)),
        }
        key = Some(next);
    }
}

/// The program's last-hit clock ([`HostValue::hit`]) now: `CLOCK_MONOTONIC_COARSE`
/// (what `bpf_ktime_get_coarse_ns` reads) shifted by `HIT_SHIFT`.
pub fn coarse_tick() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let ns = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0);
    (ns >> guard_common::HIT_SHIFT) as u32
}

/// The interface index a pinned XDP link is attached to (0 once its
/// interface is gone), read with `BPF_OBJ_GET` + `BPF_OBJ_GET_INFO_BY_FD`.
fn pinned_link_ifindex(path: &Path) -> std::io::Result<u32> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr of ample size holding a valid path pointer.
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let raw = i32::try_from(fd).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // bpf_link_info: type, id, prog_id (u32 each), then an 8-aligned union whose xdp member is the ifindex.
    let mut info = [0u32; 64];
    let mut attr = [0u64; 16];
    attr[0] =
        u64::from(u32::try_from(raw).unwrap_or(0)) | (u64::from(std::mem::size_of_val(&info) as u32) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr holds bpf_fd, info_len and a pointer to a buffer of info_len bytes.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), std::mem::size_of_val(&attr))
    };
    drop(fd);
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if info[0] != BPF_LINK_TYPE_XDP {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "pinned link is not an XDP link"));
    }
    Ok(info[4])
}

/// Removes the pins of maps that earlier layouts had and this build has not
/// ([`guard_common::RETIRED_MAPS`]), so a migration leaves no stale state.
fn remove_retired_pins(dir: &Path) -> Result<(), XdpError> {
    remove_pin_files(dir, guard_common::RETIRED_MAPS.iter().copied())
}

/// Removes the pins `names` in `dir` that exist.
fn remove_pin_files<'a>(dir: &Path, names: impl IntoIterator<Item = &'a str>) -> Result<(), XdpError> {
    for name in names {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| XdpError::Pin {
                dir: dir.into(),
                why: format!("remove {}: {e}", p.display()),
            })?;
        }
    }
    Ok(())
}

/// Removes every pin rpz-guard makes in `dir` (earlier layouts' too), and
/// the directory if empty.
pub fn remove_pins(dir: &Path) -> Result<(), XdpError> {
    remove_retired_pins(dir)?;
    remove_pin_files(dir, MAP_NAMES.iter().copied().chain([LINK_PIN_NAME]))?;
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// A fd-bearing map is needed by tokio's `AsyncFd`; re-exported for the daemon.
pub fn ring_fd(rb: &RingBuf<MapData>) -> std::os::fd::BorrowedFd<'_> {
    rb.as_fd()
}

/// A number of last-hit ticks as whole seconds (a tick is 2^`HIT_SHIFT` ns).
fn ticks_to_secs(ticks: u32) -> u64 {
    (u64::from(ticks) << guard_common::HIT_SHIFT) / 1_000_000_000
}
