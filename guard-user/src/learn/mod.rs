//! Learning the allow set from border DNS traffic (pcap/pcapng captures).
//!
//! The pipeline is streaming and incremental ([`pipeline::Pipeline`]: one
//! packet in, entries out), so the same code serves batch learning from files
//! and live learning. Memory is bounded by the learned state plus fixed-size
//! tables: pending queries expire after the window, fragments and TCP
//! streams have caps and timeouts.
//!
//! The rules are documented in [`rules`]; the stages in
//! [`capture`] → [`crate::frame`] → [`frag`] / [`tcp`] → [`dns`] → [`matcher`] →
//! [`rules`]; outputs in [`output`]; a capture generator with known content
//! in [`synth`].
pub mod capture;
pub mod dns;
pub mod frag;
pub mod hints;
pub mod live;
pub mod matcher;
pub mod output;
pub mod pcapw;
pub mod pipeline;
pub mod push;
pub mod rules;
pub mod stats;
pub mod synth;
pub mod tcp;

use std::{
    collections::HashMap,
    io::IsTerminal,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use capture::{CaptureError, Input};
pub use hints::{Hints, HintsError};
pub use pipeline::Pipeline;
pub use stats::Summary;

use crate::policy::AllowSet;

/// A hash map of the per-packet path: foldhash, seeded per process. SipHash
/// (std's default) took a third of the live learner's instructions; the
/// random seed still keeps hash flooding by chosen names or addresses out of
/// reach.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set form of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Errors of a learning run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LearnError {
    /// An input could not be read or is not a capture.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// A hints file could not be read.
    #[error("{path}: {source}")]
    HintsIo {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A hints file is invalid.
    #[error("{path}: {source}")]
    Hints {
        /// The file.
        path: String,
        /// What is wrong.
        source: HintsError,
    },
    /// No input given.
    #[error("no input: give capture files, directories, or - for standard input")]
    NoInput,
}

/// What to learn from and how.
#[derive(Debug, Clone)]
pub struct LearnOptions {
    /// Files, directories, or `-` (stdin).
    pub inputs: Vec<PathBuf>,
    /// Trusted starting servers (see [`load_hints`]).
    pub hints: Hints,
    /// Query/response matching window.
    pub window: Duration,
    /// Show a progress bar (callers pass true only on a terminal).
    pub progress: bool,
}

/// The result of a learning run.
#[derive(Debug, Clone)]
pub struct LearnOutcome {
    /// The learned allow set.
    pub allow: AllowSet,
    /// Counters, elapsed time and throughput.
    pub summary: Summary,
    /// The newest answer that taught or confirmed each address, at its
    /// capture time (never later than now); empty unless asked for
    /// ([`run_with_evidence`]).
    pub confirmed: HashMap<IpAddr, live::Confirmed>,
}

/// Builds the trusted starting set: the built-in root hints, or `root_hints`
/// (BIND root-hints format) instead; plus every `extra` file (same format),
/// for captures that start mid-stream.
pub fn load_hints(root_hints: Option<&Path>, extra: &[PathBuf]) -> Result<Hints, LearnError> {
    let read = |p: &Path| -> Result<Hints, LearnError> {
        let path = p.display().to_string();
        let text = std::fs::read_to_string(p)
            .map_err(|source| LearnError::HintsIo { path: path.clone(), source })?;
        Hints::parse(&text).map_err(|source| LearnError::Hints { path, source })
    };
    let mut h = match root_hints {
        Some(p) => read(p)?,
        None => Hints::root(),
    };
    for p in extra {
        h.extend(read(p)?);
    }
    Ok(h)
}

/// True when standard error is a terminal (progress bars go there).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Runs the whole pipeline over the inputs.
pub fn run(opts: &LearnOptions) -> Result<LearnOutcome, LearnError> {
    run_inner(opts, false)
}

/// [`run`], also keeping each address's newest evidence
/// ([`LearnOutcome::confirmed`]): what the lifetime state of an entry
/// pushed to the RPZ says (`seen`, `ttl`, `ev`; `rpz::meta`). The time is
/// the answer's capture time: old evidence does not make an entry look
/// freshly confirmed.
pub fn run_with_evidence(opts: &LearnOptions) -> Result<LearnOutcome, LearnError> {
    run_inner(opts, true)
}

fn run_inner(opts: &LearnOptions, evidence: bool) -> Result<LearnOutcome, LearnError> {
    if opts.inputs.is_empty() {
        return Err(LearnError::NoInput);
    }
    let start = Instant::now();
    let inputs = capture::resolve_inputs(&opts.inputs)?;
    let total: Option<u64> = inputs.iter().map(Input::size).sum();
    let bar = match (opts.progress, total) {
        (true, Some(t)) if t > 0 => {
            let b = indicatif::ProgressBar::new(t);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(b)
        }
        (true, _) => Some(indicatif::ProgressBar::new_spinner()),
        _ => None,
    };
    let window_ns = u64::try_from(opts.window.as_nanos()).unwrap_or(u64::MAX);
    let mut p = Pipeline::new(&opts.hints, window_ns);
    p.learner_mut().record_confirmations(evidence);
    let mut confirmed: HashMap<IpAddr, live::Confirmed> = HashMap::new();
    let now = crate::rpz::meta::unix_now();
    let mut names = Vec::with_capacity(inputs.len());
    for input in &inputs {
        names.push(input.name());
        if let Some(b) = &bar {
            b.set_message(input.name());
        }
        let mut problems = Vec::new();
        let mut bytes = 0u64;
        let mut since_tick = 0u64;
        capture::read_capture(
            input,
            &mut |ts, link, frame| {
                p.packet(ts, link, frame);
                if evidence {
                    let at = (ts / 1_000_000_000).min(now);
                    for c in p.take_confirmations() {
                        // Files are read in time order, but not every
                        // packet within one need be: keep the newest.
                        if confirmed.get(&c.ip).is_none_or(|old| old.at <= at) {
                            confirmed.insert(c.ip, live::Confirmed::from_answer(c, at));
                        }
                    }
                }
                true
            },
            &mut |d| problems.push(d),
            &mut |n| {
                bytes += n;
                since_tick += n;
                if since_tick >= 1 << 22 {
                    if let Some(b) = &bar {
                        b.inc(since_tick);
                    }
                    since_tick = 0;
                }
            },
        )?;
        if let Some(b) = &bar {
            b.inc(since_tick);
        }
        for d in problems {
            let warn = || tracing::warn!(input = %input.name(), problem = d.as_str(), "capture input damaged; rest skipped");
            match &bar {
                Some(b) => b.suspend(warn),
                None => warn(),
            }
            p.count(d);
        }
        p.add_bytes(bytes);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let (allow, mut summary) = p.finish();
    summary.inputs = names;
    summary.elapsed_secs = start.elapsed().as_secs_f64();
    summary.mb_per_s =
        if summary.elapsed_secs > 0.0 { summary.bytes as f64 / 1e6 / summary.elapsed_secs } else { 0.0 };
    Ok(LearnOutcome { allow, summary, confirmed })
}
