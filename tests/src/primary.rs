//! The RPZ primaries rpz-guard is tested against, each started for real in
//! the lab's `dns` namespace with the lab's policy zone, TSIG key and NOTIFY
//! target (the router's inside address, port [`bind::NOTIFY_PORT`]):
//!
//! * [`PrimaryKind::Bind`]: BIND 9 (the lab's own `named`, see [`bind`]).
//! * [`PrimaryKind::Knot`]: Knot DNS 3 (`knotd`). Sends NOTIFY over TCP.
//! * [`PrimaryKind::Pdns`]: PowerDNS Authoritative 4 (`pdns_server`) with
//!   the gsqlite3 backend. gsqlite3 because it is the one backend that
//!   supports RFC 2136 UPDATE, TSIG keys and per-zone metadata
//!   (`TSIG-ALLOW-DNSUPDATE`, `TSIG-ALLOW-AXFR`, `ALSO-NOTIFY`) without a
//!   database server: one file made from Debian's schema. (The BIND backend
//!   cannot take UPDATE; gmysql/gpgsql would need a database daemon.)
//!   PowerDNS sends NOTIFY for a changed primary zone only from its
//!   periodic check, so `xfr-cycle-interval=1`; it answers IXFR with the
//!   whole zone (RFC 1995 section 4) and signs NOTIFY with the
//!   `TSIG-ALLOW-AXFR` key.
//!
//! All three take the lab's [`Lab::nsupdate`] (TSIG UPDATE on
//! `dns_v4:53`), serve AXFR/IXFR to the key, and sign their NOTIFYs.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{Lab, LabChild, LabError, Result, Role, bind, netns};

/// Which server is the primary of the lab's policy zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrimaryKind {
    /// BIND 9 (`named`), the lab's default.
    Bind,
    /// Knot DNS 3 (`knotd`).
    Knot,
    /// PowerDNS Authoritative 4 (`pdns_server`, gsqlite3 backend).
    Pdns,
}

impl PrimaryKind {
    /// Every supported primary.
    pub const ALL: [PrimaryKind; 3] = [PrimaryKind::Bind, PrimaryKind::Knot, PrimaryKind::Pdns];

    /// Short name (`bind`, `knot`, `pdns`).
    pub fn name(self) -> &'static str {
        match self {
            PrimaryKind::Bind => "bind",
            PrimaryKind::Knot => "knot",
            PrimaryKind::Pdns => "pdns",
        }
    }

    /// The name as operators know it.
    pub fn product(self) -> &'static str {
        match self {
            PrimaryKind::Bind => "BIND 9",
            PrimaryKind::Knot => "Knot DNS",
            PrimaryKind::Pdns => "PowerDNS Authoritative",
        }
    }

    /// The server binary (checked before starting).
    pub fn binary(self) -> &'static str {
        match self {
            PrimaryKind::Bind => "named",
            PrimaryKind::Knot => "knotd",
            PrimaryKind::Pdns => "pdns_server",
        }
    }
}

/// A running primary (ended when dropped; BIND belongs to the lab).
#[derive(Debug)]
pub struct Primary {
    /// Which server.
    pub kind: PrimaryKind,
    /// Its configuration directory.
    pub dir: PathBuf,
    child: Option<LabChild>,
}

impl Primary {
    /// Starts `kind` in `lab`'s `dns` namespace, listening on the lab's
    /// BIND address, port 53. For [`PrimaryKind::Bind`] the lab must have
    /// been made with BIND (the default); for the others, without it
    /// (`LabConfig::bind(false)`). Fails with a clear message when the
    /// server is not installed (`cargo xtask setup` installs all three).
    pub fn start(lab: &Lab, kind: PrimaryKind) -> Result<Primary> {
        require_binary(kind.binary())?;
        let dir = lab.state_dir().join(kind.name());
        if kind == PrimaryKind::Bind {
            return Ok(Primary { kind, dir: lab.state_dir().join("bind"), child: None });
        }
        fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
        let key_file = lab.tsig_key_file();
        if !key_file.exists() {
            bind::generate_key(&key_file)?;
        }
        let secret = lab.tsig_secret()?;
        let a = lab.addrs();
        let notify_to = SocketAddr::from((a.router_in_v4, bind::NOTIFY_PORT));
        let child = match kind {
            PrimaryKind::Knot => start_knot(lab, &dir, &secret, notify_to)?,
            PrimaryKind::Pdns => start_pdns(lab, &dir, &secret, notify_to)?,
            PrimaryKind::Bind => unreachable!("handled above"),
        };
        let mut p = Primary { kind, dir, child: Some(child) };
        let ready = netns::wait_for_udp_dns(
            &lab.ns(Role::Dns),
            SocketAddr::from((a.dns_v4, 53)),
            Duration::from_secs(15),
        );
        if let Err(e) = ready {
            return Err(LabError::Command {
                command: kind.binary().into(),
                status: if p.is_running() {
                    format!("running but not answering: {e}")
                } else {
                    "exited".into()
                },
                stderr: p.log(),
            });
        }
        Ok(p)
    }

    /// Whether the server process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_none_or(LabChild::is_running)
    }

    /// The server's log so far (BIND: see [`Lab::bind_log`]).
    pub fn log(&self) -> String {
        self.child.as_ref().map(LabChild::log).unwrap_or_default()
    }
}

fn require_binary(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/usr/bin"].iter().any(|d| Path::new(d).join(name).is_file());
    if found {
        Ok(())
    } else {
        Err(LabError::Command {
            command: name.into(),
            status: "not installed".into(),
            stderr: format!("{name} is missing: run `cargo xtask setup` (installs bind9, knot, pdns-server)"),
        })
    }
}

/// The lab's empty policy zone as a zone file (serial 1).
fn zone_text() -> String {
    "$TTL 60\n@ IN SOA localhost. root.localhost. 1 3600 600 86400 60\n@ IN NS localhost.\n".into()
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| LabError::io(format!("write {}", path.display()), e))
}

/// The minimal Knot DNS primary for rpz-guard (also the README's example):
/// the zone with its key ACL for UPDATE and transfers, NOTIFY to the
/// router signed with the key, journal kept so IXFR is answered as deltas.
pub fn knot_config(dir: &Path, listen: SocketAddr, secret: &str, notify_to: SocketAddr) -> String {
    let d = dir.display();
    let zone = bind::RPZ_ZONE;
    let key = bind::TSIG_KEY_NAME;
    format!(
        r#"# Generated by guard-tests: Knot DNS as the rpz-guard RPZ primary.
server:
    rundir: "{d}"
    listen: {ip}@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{d}"
key:
  - id: {key}
    algorithm: hmac-sha256
    secret: {secret}
remote:
  - id: rpz-guard
    address: {nip}@{nport}
    key: {key}
acl:
  - id: rpz-guard-acl
    key: {key}
    action: [transfer, update]
zone:
  - domain: {zone}
    file: "{d}/{zone}.zone"
    notify: rpz-guard
    acl: rpz-guard-acl
    zonefile-sync: -1
"#,
        ip = listen.ip(),
        port = listen.port(),
        nip = notify_to.ip(),
        nport = notify_to.port(),
    )
}

fn start_knot(lab: &Lab, dir: &Path, secret: &str, notify_to: SocketAddr) -> Result<LabChild> {
    let listen = SocketAddr::from((lab.addrs().dns_v4, 53));
    let conf = dir.join("knot.conf");
    write(&conf, &knot_config(dir, listen, secret, notify_to))?;
    write(&dir.join(format!("{}.zone", bind::RPZ_ZONE)), &zone_text())?;
    let mut check = std::process::Command::new("knotc");
    check.arg("-c").arg(&conf).arg("conf-check");
    netns::run_ok(&mut check)?;
    let conf = conf.to_string_lossy().into_owned();
    lab.spawn(Role::Dns, &["knotd", "-c", &conf])
}

/// The minimal PowerDNS primary settings for rpz-guard (also the README's
/// example); the zone itself, the key and the metadata are made with
/// `pdnsutil` (see [`pdns_zone_commands`]).
pub fn pdns_config(dir: &Path, listen: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "# Generated by guard-tests: PowerDNS Authoritative as the rpz-guard RPZ primary.\n\
         launch=gsqlite3\n\
         gsqlite3-database={d}/pdns.sqlite3\n\
         local-address={ip}\n\
         local-port={port}\n\
         socket-dir={d}\n\
         daemon=no\n\
         guardian=no\n\
         disable-syslog=yes\n\
         loglevel=6\n\
         primary=yes\n\
         dnsupdate=yes\n\
         # UPDATE and transfers are authorised by the TSIG key (zone metadata) only.\n\
         allow-dnsupdate-from=0.0.0.0/0,::/0\n\
         allow-axfr-ips=\n\
         # NOTIFY for changed primary zones is sent from this periodic check (default 60 s).\n\
         xfr-cycle-interval=1\n\
         webserver=no\n\
         api=no\n",
        ip = listen.ip(),
        port = listen.port(),
    )
}

/// `pdnsutil` argument lists that create the policy zone (serial 1), import
/// the key, allow UPDATE and transfers with it, and add the router as a
/// NOTIFY target.
pub fn pdns_zone_commands(secret: &str, notify_to: SocketAddr) -> Vec<Vec<String>> {
    let zone = bind::RPZ_ZONE;
    let key = bind::TSIG_KEY_NAME;
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        // No NS record: PowerDNS resolves NS names (getaddrinfo) before it
        // sends NOTIFY, and the lab has no resolver, so each UPDATE would
        // wait 20 s for "localhost." to time out. ALSO-NOTIFY needs no NS.
        v(&["create-zone", zone]),
        v(&["set-kind", zone, "primary"]),
        v(&["replace-rrset", zone, "@", "SOA", "60", "localhost. root.localhost. 1 3600 600 86400 60"]),
        v(&["import-tsig-key", key, "hmac-sha256", secret]),
        v(&["set-meta", zone, "TSIG-ALLOW-DNSUPDATE", key]),
        v(&["set-meta", zone, "TSIG-ALLOW-AXFR", key]),
        v(&["set-meta", zone, "ALSO-NOTIFY", &notify_to.to_string()]),
        // Queue a NOTIFY on every UPDATE too, not only from the periodic check.
        v(&["set-meta", zone, "NOTIFY-DNSUPDATE", "1"]),
    ]
}

/// Debian's gsqlite3 schema.
const PDNS_SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";

fn start_pdns(lab: &Lab, dir: &Path, secret: &str, notify_to: SocketAddr) -> Result<LabChild> {
    let listen = SocketAddr::from((lab.addrs().dns_v4, 53));
    write(&dir.join("pdns.conf"), &pdns_config(dir, listen))?;
    let db = dir.join("pdns.sqlite3");
    let _ = fs::remove_file(&db);
    let schema = fs::read(PDNS_SCHEMA)
        .map_err(|e| LabError::io(format!("read {PDNS_SCHEMA} (pdns-backend-sqlite3)"), e))?;
    let db_arg = db.to_string_lossy().into_owned();
    let out = netns::exec_with_input(&lab.ns(Role::Dns), &["sqlite3", &db_arg], Some(&schema))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("sqlite3 {db_arg} < {PDNS_SCHEMA}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let config_dir = format!("--config-dir={}", dir.display());
    for args in pdns_zone_commands(secret, notify_to) {
        let mut cmd = std::process::Command::new("pdnsutil");
        cmd.arg(&config_dir).args(&args);
        netns::run_ok(&mut cmd)?;
    }
    lab.spawn(Role::Dns, &["pdns_server", &config_dir])
}
