//! Operator control: `rpz-guard allow`, `revoke`, `deny`, `list` and
//! `explain`, talking to the RPZ primary with the configured TSIG key (and,
//! for `explain`, to the running daemon over its status socket).
//!
//! * [`change`]: `allow`, `revoke`, `deny`: each is ONE UPDATE message
//!   (BIND applies it whole or not at all), with prerequisites that make
//!   it fail instead of acting on a zone that changed since it was read,
//!   and checked (`NOERROR`) before success is reported.
//! * [`explain`]: everything about one destination, from the RPZ and from
//!   this router's daemon; either part may be unavailable and says so.
//! * [`list`]: the allow set with its lifetime fields, read by AXFR.
//!
//! Errors carry an exit code ([`OpsError::exit_code`], table in [`exit`]),
//! so scripts can tell a typo from an outage from a refused key.

pub mod change;
pub mod explain;
pub mod list;
pub mod when;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use crate::{
    config::Config,
    rpz::{transfer::SyncError, tsig::TsigKey},
};

/// Exit codes of the operator commands (documented in `--help`, the README
/// and the manual pages).
pub mod exit {
    /// Done (for `explain`: also when the address is unknown everywhere).
    pub const OK: u8 = 0;
    /// Any other failure: unreadable config or key file, an answer that
    /// makes no sense, a server failure (`SERVFAIL`).
    pub const FAILURE: u8 = 1;
    /// Bad usage: a bad address, prefix, class, duration or flag; no server
    /// or key configured.
    pub const USAGE: u8 = 2;
    /// The RPZ primary cannot be reached (connection refused, timeout).
    pub const UNREACHABLE: u8 = 3;
    /// The primary refused the request: the TSIG key (`BADKEY`, `BADSIG`,
    /// `BADTIME`) or its ACL (`REFUSED`, `NOTAUTH`).
    pub const REFUSED: u8 = 4;
    /// The change conflicts with the zone: `revoke` of an entry that is not
    /// there, `allow` of a denied address, or the zone kept changing under us.
    pub const CONFLICT: u8 = 5;
}

/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/rpz-guard/rpz-guard.toml";

/// A failed operator command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// Bad input or missing settings ([`exit::USAGE`]).
    #[error("{0}")]
    Usage(String),
    /// The config or key file is unusable ([`exit::FAILURE`]).
    #[error("{0}")]
    Config(String),
    /// The primary cannot be reached ([`exit::UNREACHABLE`]): which, for
    /// what, the I/O error and what to check.
    #[error("cannot reach the RPZ primary {0}")]
    Unreachable(String),
    /// The primary refused the key or the request ([`exit::REFUSED`]):
    /// who refused what, with which key and answer, and what it means.
    #[error("{0}")]
    Refused(String),
    /// The change conflicts with the zone ([`exit::CONFLICT`]).
    #[error("{0}")]
    Conflict(String),
    /// Any other failure talking to the primary ([`exit::FAILURE`]).
    #[error(transparent)]
    Sync(Box<SyncError>),
}

impl OpsError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            OpsError::Usage(_) => exit::USAGE,
            OpsError::Unreachable(_) => exit::UNREACHABLE,
            OpsError::Refused(_) => exit::REFUSED,
            OpsError::Conflict(_) => exit::CONFLICT,
            OpsError::Config(_) | OpsError::Sync(_) => exit::FAILURE,
        }
    }
}

impl From<SyncError> for OpsError {
    /// Sorts a failed exchange into unreachable / refused / other, naming
    /// the key error BIND gave.
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Connect { server, zone, op, source } => OpsError::Unreachable(format!(
                "{server} for the {op} of zone {zone}: {source} (is named running there, and is the address and port right?)"
            )),
            SyncError::Io { server, zone, op, source } if source.kind() == std::io::ErrorKind::TimedOut => {
                OpsError::Unreachable(format!(
                    "{server} for the {op} of zone {zone}: {source} (no answer in time)"
                ))
            }
            SyncError::Rejected { server, zone, op, answer, key } => match refusal_hint(&answer, &key, &zone)
            {
                Some(hint) => OpsError::Refused(format!(
                    "{server} refused the {op} of zone {zone} with {key}: {answer}: {hint}"
                )),
                None => OpsError::Sync(Box::new(SyncError::Rejected { server, zone, op, answer, key })),
            },
            SyncError::Tsig { server, zone, op, key, why } => OpsError::Refused(format!(
                "the answer of {server} to the {op} of zone {zone} fails TSIG verification with {key}: {why} (is the key the server's?)"
            )),
            other => OpsError::Sync(Box::new(other)),
        }
    }
}

/// What a refusal means, for the answers that are about the key or the
/// server's ACL (`None` for other rcodes).
fn refusal_hint(answer: &str, key: &str, zone: &str) -> Option<String> {
    let hint = if answer.contains("BADSIG") {
        format!("BADSIG: the server knows {key} but its secret differs; use the key file named.conf includes")
    } else if answer.contains("BADKEY") {
        format!("BADKEY: the server has no {key} with this algorithm; check the key name and algorithm")
    } else if answer.contains("BADTIME") {
        "BADTIME: the clocks of this host and the server differ by more than 5 minutes".to_owned()
    } else if answer.starts_with("REFUSED") {
        format!(
            "the server does not allow it for {key} (allow-update / allow-transfer in the zone's statement?)"
        )
    } else if answer.starts_with("NOTAUTH") || answer.starts_with("NOTZONE") {
        format!("the server is not the primary of zone {zone} (check --zone and --server)")
    } else {
        return None;
    };
    Some(hint)
}

/// Where the operator commands find the primary, the zone, the key and the
/// daemon: the same config file as `run`, then flags.
#[derive(Debug, Clone, Default)]
pub struct TargetSpec {
    /// `--config`; else [`DEFAULT_CONFIG`] when it exists.
    pub config: Option<PathBuf>,
    /// `--server`.
    pub server: Option<SocketAddr>,
    /// `--zone`.
    pub zone: Option<String>,
    /// `--tsig-key`.
    pub tsig_key: Option<PathBuf>,
    /// `--socket` (explain only).
    pub socket: Option<PathBuf>,
}

/// The primary, zone and key to use, resolved.
#[derive(Debug, Clone)]
pub struct Target {
    /// The RPZ primary (`None`: none configured; only `explain` goes on
    /// without one).
    pub server: Option<SocketAddr>,
    /// The policy zone.
    pub zone: String,
    /// The TSIG key, when one is configured.
    pub key: Option<TsigKey>,
    /// The daemon's status socket.
    pub socket: PathBuf,
    /// The config file read, if any.
    pub config: Option<PathBuf>,
    /// `[lifetime]` of that config: when learned entries age out.
    pub lifetime: crate::config::Lifetime,
}

impl Target {
    /// The primary, required by every command but `explain`.
    pub fn server(&self) -> Result<SocketAddr, OpsError> {
        self.server.ok_or_else(|| {
            OpsError::Usage(format!(
                "no RPZ primary: give --server ADDR[:PORT] or set rpz.server in {}",
                self.config
                    .as_deref()
                    .map_or(format!("{DEFAULT_CONFIG} (not found)"), |p| p.display().to_string())
            ))
        })
    }

    /// The key, required for changes.
    pub fn key(&self) -> Result<&TsigKey, OpsError> {
        self.key.as_ref().ok_or_else(|| {
            OpsError::Usage(format!(
                "changing the zone needs the TSIG key: give --tsig-key FILE or set rpz.tsig_key in {}",
                self.config.as_deref().map_or(DEFAULT_CONFIG.into(), |p| p.display().to_string())
            ))
        })
    }
}

impl TargetSpec {
    /// Reads the config file (if any) and applies the flags over it.
    pub fn resolve(&self) -> Result<Target, OpsError> {
        let path = match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let cfg = match &path {
            Some(p) => Config::read_unvalidated(p).map_err(|e| OpsError::Config(e.to_string()))?,
            None => Config::default(),
        };
        let server = self.server.or(cfg.rpz.server);
        let zone = self.zone.clone().unwrap_or(cfg.rpz.zone);
        crate::rpz::edit::check_zone(&zone).map_err(OpsError::Usage)?;
        let key = match self.tsig_key.as_ref().or(cfg.rpz.tsig_key.as_ref()) {
            Some(p) => Some(TsigKey::from_file(p).map_err(|e| OpsError::Config(e.to_string()))?),
            None => None,
        };
        let socket = self.socket.clone().unwrap_or(cfg.status.socket);
        Ok(Target { server, zone, key, socket, config: path, lifetime: cfg.lifetime })
    }
}

/// Parses a server as `ADDR:PORT`, `[V6]:PORT` or a bare address (port 53).
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not ADDR, ADDR:PORT or [V6ADDR]:PORT"))
}

/// Parses an address or prefix for `allow`, `revoke`, `deny`, with the
/// reason when it is not one (`203.0.113.999`, `10.0.0.0/33`, `/0`).
pub fn parse_target(s: &str) -> Result<crate::policy::Prefix, String> {
    let p: crate::policy::Prefix = s.parse().map_err(|e: crate::policy::PrefixError| e.to_string())?;
    if let Some(why) = crate::rpz::unencodable(&p) {
        return Err(why);
    }
    if let Some((addr, _)) = s.split_once('/')
        && addr.parse::<IpAddr>().is_ok_and(|a| a != p.addr())
    {
        return Err(format!(
            "{s} has host bits set beyond the prefix length (the prefix is {p}); write {p} to mean it"
        ));
    }
    Ok(p)
}

/// Who runs this command, for the record of a change (`SUDO_USER` or
/// `USER`, else the uid).
pub fn operator() -> String {
    std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| {
        // SAFETY: getuid has no preconditions and cannot fail.
        format!("uid {}", unsafe { libc::getuid() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_default_to_port_53() {
        assert_eq!(parse_server("192.0.2.53"), Ok("192.0.2.53:53".parse().expect("addr")));
        assert_eq!(parse_server("192.0.2.53:5353"), Ok("192.0.2.53:5353".parse().expect("addr")));
        assert_eq!(parse_server("2001:db8::53"), Ok("[2001:db8::53]:53".parse().expect("addr")));
        assert!(parse_server("ns1.example.com").is_err());
    }

    #[test]
    fn targets_are_checked() {
        assert_eq!(parse_target("203.0.113.9").expect("host").to_string(), "203.0.113.9");
        assert_eq!(parse_target("203.0.113.0/24").expect("prefix").to_string(), "203.0.113.0/24");
        for bad in ["203.0.113.999", "203.0.113.0/33", "0.0.0.0/0", "203.0.113.9/24", "mx.example.net", ""] {
            assert!(parse_target(bad).is_err(), "{bad} accepted");
        }
        let e = parse_target("203.0.113.9/24").expect_err("host bits");
        assert!(e.contains("203.0.113.0/24"), "{e}");
    }

    #[test]
    fn refusals_name_the_key_error() {
        let rejected = |answer: &str| SyncError::Rejected {
            server: "192.0.2.53:53".parse().expect("addr"),
            zone: "rpz.example.com".into(),
            op: "UPDATE",
            answer: answer.into(),
            key: "key rpz-key".into(),
        };
        for (answer, code, needle) in [
            ("NOTAUTH (TSIG BADSIG)", exit::REFUSED, "BADSIG"),
            ("NOTAUTH (TSIG BADKEY)", exit::REFUSED, "BADKEY"),
            ("NOTAUTH (TSIG BADTIME)", exit::REFUSED, "clocks"),
            ("REFUSED", exit::REFUSED, "allow-update"),
            ("NOTAUTH", exit::REFUSED, "not the primary"),
            ("SERVFAIL", exit::FAILURE, "SERVFAIL"),
        ] {
            let e = OpsError::from(rejected(answer));
            assert_eq!(e.exit_code(), code, "{answer}");
            assert!(e.to_string().contains(needle), "{answer}: {e}");
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = OpsError::from(SyncError::Connect {
            server: "192.0.2.53:53".parse().expect("addr"),
            zone: "z".into(),
            op: "UPDATE",
            source: refused,
        });
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
        assert!(e.to_string().contains("192.0.2.53:53"), "{e}");
    }
}
