//! Loading, attaching and reading the XDP program.

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{Xdp, XdpMode as AyaMode},
};
use guard_common::{MAP_STATS, STAT_COUNT, Stat};

/// The XDP object built from `guard-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

/// Name of the XDP program function in [`EBPF_OBJECT`].
pub const PROGRAM_NAME: &str = "rpz_guard";

/// Errors of the XDP loader.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The object failed to load (the verifier log is part of the source).
    #[error("loading the XDP object failed: {source}")]
    Load {
        /// Underlying aya error, with the verifier log when there is one.
        #[source]
        source: aya::EbpfError,
    },
    /// A program operation failed.
    #[error("XDP program {what} failed on {iface}: {source}")]
    Program {
        /// What was being done (load, attach).
        what: &'static str,
        /// Interface name.
        iface: String,
        /// Underlying error, with the verifier log for `load`.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map the program must define is missing or has the wrong type.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// How to attach: driver (native), skb (generic), or native with generic fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Try native, fall back to generic.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// A loaded and attached program.
pub struct Attached {
    ebpf: Ebpf,
    /// The mode the program actually attached in.
    pub mode: AttachMode,
}

impl Attached {
    /// Loads [`EBPF_OBJECT`] and attaches it to `iface`.
    pub fn attach(iface: &str, mode: AttachMode) -> Result<Self, XdpError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|source| XdpError::Load { source })?;
        let prog_err = |what, source| XdpError::Program { what, iface: iface.to_owned(), source };
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| prog_err("lookup", aya::programs::ProgramError::NotLoaded))?
            .try_into()
            .map_err(|e| prog_err("lookup", e))?;
        prog.load().map_err(|e| prog_err("load", e))?;
        let used = match mode {
            AttachMode::Native => {
                prog.attach(iface, AyaMode::Driver).map_err(|e| prog_err("attach", e))?;
                AttachMode::Native
            }
            AttachMode::Generic => {
                prog.attach(iface, AyaMode::Skb).map_err(|e| prog_err("attach", e))?;
                AttachMode::Generic
            }
            AttachMode::Auto => match prog.attach(iface, AyaMode::Driver) {
                Ok(_) => AttachMode::Native,
                Err(e) => {
                    tracing::warn!(iface, error = %e, "native XDP attach failed; using generic mode");
                    prog.attach(iface, AyaMode::Skb).map_err(|e| prog_err("attach", e))?;
                    AttachMode::Generic
                }
            },
        };
        Ok(Self { ebpf, mode: used })
    }

    /// Sums the per-CPU counters.
    pub fn stats(&self) -> Result<[u64; STAT_COUNT as usize], XdpError> {
        let map = self.ebpf.map(MAP_STATS).ok_or(XdpError::Map {
            name: MAP_STATS,
            source: aya::maps::MapError::InvalidName { name: MAP_STATS.into() },
        })?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| XdpError::Map { name: MAP_STATS, source })?;
        let mut out = [0u64; STAT_COUNT as usize];
        for s in Stat::ALL {
            let per_cpu =
                arr.get(&(s as u32), 0).map_err(|source| XdpError::Map { name: MAP_STATS, source })?;
            out[s as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }
}
