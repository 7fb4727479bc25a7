//! Lab support for rpz-guard's privileged integration tests, the demo and the
//! benchmarks: a reference topology in network namespaces with a real BIND 9
//! RPZ, created per test and torn down on drop.
//!
//! ```text
//!   pc ──┐                     lan (bridge br0)
//!   bot ─┼── br0 ──┬── in0 [router] out0 ── eth0 [inet] 198.51.100.0/24,
//!   dns ─┘         │                             203.0.113.0/24,
//!  (BIND + RPZ)    └ pc eth0.100 ⇄ router in0.100   2001:db8:100::/64
//! ```
//!
//! Every role lives in its own namespace `<prefix>-<role>`; interfaces have
//! fixed names inside them, so labs never collide as long as prefixes differ.
//! See [`Lab`] for the addresses and helpers.
//!
//! # Example
//!
//! ```no_run
//! use std::{net::{Ipv4Addr, SocketAddr}, time::Duration};
//! use guard_tests::{Lab, LabAddrs, LabConfig, Role};
//!
//! // Unique prefix per test; everything is removed when `lab` drops.
//! let lab = Lab::up(LabConfig::for_test("my_test")).expect("lab up");
//! let mx = LabAddrs::inet_v4(25);
//! lab.rpz_add_v4(mx, Ipv4Addr::new(127, 0, 0, 25)).expect("nsupdate");
//! lab.wait_for_answer(Role::Pc, &mx.to_string(), "127.0.0.25", Duration::from_secs(5)).expect("rewrite");
//! // Start the daemon under test on the router (ended when `guard` drops):
//! let guard = lab.spawn(Role::Router, &["sleep", "60"]).expect("spawn");
//! lab.tcp_connect(Role::Pc, SocketAddr::from((mx, 25)), Duration::from_secs(2)).expect("smtp");
//! # drop(guard);
//! ```
//!
//! Pinning note: `ip netns exec` gives the command a fresh `/sys`, so a
//! process that pins BPF objects inside a lab namespace must mount bpffs
//! itself (`mount -t bpf bpf /sys/fs/bpf`); the lab does not do that.
#![warn(missing_docs)]

pub mod awkward;
pub mod bind;
pub mod capture;
pub mod dns;
pub mod flood;
pub mod heavy;
pub mod lab;
pub mod load;
pub mod netns;
pub mod old_layout;
pub mod ovs;
pub mod primary;
pub mod probe;
pub mod process;
pub mod responder;
pub mod smtp;
pub mod spoof;

use std::time::Duration;

pub use capture::Capture;
pub use lab::{Lab, LabAddrs, LabConfig, LabStatus, ResponderMode, Role};
pub use netns::{run_in_netns, tcp_connect_in, tcp_retransmissions, wait_for_tcp, wait_for_udp_dns};
pub use primary::{Primary, PrimaryKind};
pub use process::LabChild;

/// Errors of the lab library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (trimmed).
        stderr: String,
    },
    /// The prefix is not usable as a lab name.
    #[error("invalid lab prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A lab with this prefix already exists.
    #[error(
        "a lab with prefix {prefix:?} already exists (namespaces: {existing}); run `cargo xtask lab down --prefix {prefix}`"
    )]
    Exists {
        /// The prefix in use.
        prefix: String,
        /// The namespaces found.
        existing: String,
    },
    /// No lab with this prefix exists.
    #[error("no lab with prefix {prefix:?} (no state in {state_dir})")]
    NotFound {
        /// The prefix asked for.
        prefix: String,
        /// Where its state was looked for.
        state_dir: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The lab needs root (network namespaces, BIND on port 53).
    #[error("the lab needs root (network namespaces); run as root")]
    NotRoot,
}

impl LabError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
