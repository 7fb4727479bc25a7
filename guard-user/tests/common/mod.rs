//! Test support: a real BIND (`named -g`) on loopback with the RPZ as a
//! primary zone, a fresh TSIG key, and a root zone of its own so recursive
//! lookups of unregistered names answer NXDOMAIN at once.
//!
//! Use from a test file with `mod common;`. The child is killed (by its pid)
//! and its directory removed when [`Named`] is dropped, also on panic.
#![allow(dead_code, reason = "each test binary uses a different part of the support code")]

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use guard_user::{
    policy::AllowSet,
    rpz::{transfer, tsig::TsigKey, zonefile},
};

/// The policy zone used by the tests.
pub const ZONE: &str = "rpz.example.com";

/// How to set BIND up.
#[derive(Debug, Default)]
pub struct NamedConfig {
    /// Initial content of the policy zone.
    pub initial: AllowSet,
    /// Initial SOA serial (default 1).
    pub serial: Option<u32>,
    /// Send NOTIFY for the policy zone to this UDP port (at `notify_addr`).
    pub notify_port: Option<u16>,
    /// Where NOTIFYs go (default: the listen address).
    pub notify_addr: Option<std::net::Ipv4Addr>,
    /// Run inside this network namespace (made by the test) via
    /// `ip netns exec`; readiness is then read from the log only.
    pub netns: Option<String>,
    /// Address to listen on (default `127.0.0.1`).
    pub listen: Option<std::net::Ipv4Addr>,
    /// Port to listen on (default: a free loopback port; use 53 in a namespace).
    pub port: Option<u16>,
    /// Extra statements for the `options` block (each ending in `;`).
    pub options: Vec<String>,
    /// Replaces `allow-update { key "rpz-key"; };` (e.g. an `update-policy`).
    pub update_rule: Option<String>,
}

/// A running `named` child process.
pub struct Named {
    /// Its directory (config, zones, journals, log).
    pub dir: tempfile::TempDir,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// The TSIG key allowed to transfer and update the policy zone.
    pub key: TsigKey,
    /// The key file as `tsig-keygen` wrote it (usable with `nsupdate -k`).
    pub key_file: PathBuf,
    child: Child,
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("local addr").port();
        if port >= 1024 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port found for both UDP and TCP");
}

/// Runs `tsig-keygen` and returns its output (a `key` statement).
pub fn tsig_keygen(name: &str) -> String {
    let out = Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", name])
        .output()
        .expect("run tsig-keygen (package bind9-utils / bind9)");
    assert!(out.status.success(), "tsig-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("tsig-keygen output is UTF-8")
}

impl Named {
    /// Writes the config and zones, starts `named -g`, waits until it serves
    /// the policy zone (panics with its log if it does not within 20 s).
    pub fn start(cfg: &NamedConfig) -> Named {
        let dir = tempfile::Builder::new().prefix("rpz-named-").tempdir().expect("temp dir");
        let d = dir.path();
        let key_text = tsig_keygen("rpz-key");
        let key_file = d.join("rpz.key");
        std::fs::write(&key_file, &key_text).expect("write key file");
        let key = TsigKey::from_file(&key_file).expect("tsig-keygen output parses");

        let mut zone = std::fs::File::create(d.join("rpz.db")).expect("create zone file");
        zonefile::write_zone(&cfg.initial, ZONE, cfg.serial.unwrap_or(1), &mut zone)
            .expect("write zone file");
        std::fs::write(
            d.join("root.db"),
            ". 60 IN SOA localhost. root.localhost. 1 3600 600 86400 60\n\
             . 60 IN NS localhost.\n\
             localhost. 60 IN A 127.0.0.1\n",
        )
        .expect("write root zone");

        let port = cfg.port.unwrap_or_else(free_port);
        let listen = cfg.listen.unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let notify = match cfg.notify_port {
            Some(p) => {
                let to = cfg.notify_addr.unwrap_or(listen);
                format!("notify explicit; also-notify {{ {to} port {p}; }};")
            }
            None => "notify no;".to_owned(),
        };
        let update_rule =
            cfg.update_rule.clone().unwrap_or_else(|| r#"allow-update { key "rpz-key"; };"#.into());
        let extra = cfg.options.join("\n    ");
        let conf = format!(
            r#"options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on port {port} {{ {listen}; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-recursion {{ any; }};
    dnssec-validation no;
    notify no;
    response-policy {{ zone "{ZONE}" min-update-interval 0; }} qname-wait-recurse no;
    {extra}
}};
controls {{ }};
include "{dir}/rpz.key";
zone "." {{ type primary; file "root.db"; }};
zone "{ZONE}" {{
    type primary;
    file "rpz.db";
    allow-transfer {{ key "rpz-key"; }};
    {update_rule}
    // Small test zones: deltas are often larger than the zone, still IXFR.
    max-ixfr-ratio unlimited;
    notify-delay 0;
    {notify}
}};
"#,
            dir = d.display()
        );
        std::fs::write(d.join("named.conf"), conf).expect("write named.conf");
        let log = std::fs::File::create(d.join("named.log")).expect("create log");
        let mut cmd = match &cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                // `ip netns exec` execs named, so the child pid is named's.
                c.args(["netns", "exec", ns, "named"]);
                c
            }
            None => Command::new("named"),
        };
        let child = cmd
            .args(["-g", "-n", "1", "-c"])
            .arg(d.join("named.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start named (package bind9)");
        let mut named = Named { dir, addr: SocketAddr::from((listen, port)), key, key_file, child };
        named.wait_ready(cfg.netns.is_none());
        named
    }

    /// The policy zone's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, probe: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("named exited with {status} before serving:\n{}", self.log());
            }
            let log = self.log();
            if let Some(line) =
                log.lines().find(|l| l.contains("loading configuration") && l.contains("failed"))
            {
                panic!("named rejected its configuration: {line}\n{log}");
            }
            if !probe && log.lines().any(|l| l.ends_with(" running")) {
                return;
            }
            // On a thread of its own, so async tests may call `start` too.
            let ready = probe
                && std::thread::scope(|s| {
                    s.spawn(|| {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("runtime");
                        rt.block_on(transfer::soa_serial(self.addr, ZONE, Some(&self.key))).is_ok()
                    })
                    .join()
                    .expect("readiness probe thread")
                });
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "named did not serve {ZONE} within 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the real `nsupdate` with the key on `commands` (without
    /// `server`/`send`, which are added).
    pub fn nsupdate(&self, commands: &str) {
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsupdate (package bind9-dnsutils)");
        let script =
            format!("server {} {}\nzone {ZONE}\n{commands}\nsend\n", self.addr.ip(), self.addr.port());
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write nsupdate script");
        let out = child.wait_with_output().expect("nsupdate output");
        assert!(
            out.status.success(),
            "nsupdate failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The directory of the instance.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        // Child::kill signals exactly our child's pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace made by a test; deleted on drop.
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` with `lo` up.
    pub fn new(name: &str) -> Netns {
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["netns", "add", name]);
        let ns = Netns { name: name.to_owned() };
        run(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
