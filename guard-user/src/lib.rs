//! rpz-guard: stop hosts from talking to external DNS and SMTP servers that
//! the organization's resolver never learned, using a BIND Response Policy
//! Zone as the allow list and XDP (or OpenFlow) for enforcement.
#![warn(missing_docs)]

pub mod afxdp;
pub mod antispoof;
pub mod config;
pub mod daemon;
pub mod events;
pub mod frame;
pub mod learn;
pub mod metrics;
pub mod miss;
pub mod neighbour;
pub mod openflow;
pub mod ops;
pub mod policy;
pub mod rpz;
pub mod sync;
pub mod systemd;
pub mod xdp;
