//! The lab topology: creation, helpers, teardown and crash cleanup.
use std::{
    ffi::OsString,
    fmt, fs,
    hash::{DefaultHasher, Hash, Hasher},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    LabChild, LabError, Result, bind,
    dns::FixedAnswers,
    netns,
    process::{self, Recorded},
    responder::{Responder, ResponderStats},
};

/// Where labs keep their state: `<STATE_ROOT>/<prefix>/`.
pub const STATE_ROOT: &str = "/run/rpz-guard-lab";
/// Longest accepted prefix.
pub const MAX_PREFIX_LEN: usize = 8;

/// Inside interface of the router (the enforcement interface).
pub const ROUTER_INSIDE: &str = "in0";
/// Outside interface of the router, toward `inet`.
pub const ROUTER_OUTSIDE: &str = "out0";
/// Interface of the pc, bot, dns and inet hosts.
pub const HOST_IFACE: &str = "eth0";
/// Bridge of the `lan` namespace.
pub const LAN_BRIDGE: &str = "br0";
/// VLAN id for 802.1Q-tagged test frames. This kernel has no 802.1Q
/// devices (`CONFIG_VLAN_8021Q` is off), so tagged traffic is injected raw
/// with [`Lab::send_frames`]; the lan bridge (not VLAN-filtering) forwards
/// tagged frames unchanged, so XDP on `in0` sees the tag.
pub const VLAN_ID: u16 = 100;

/// A role of the topology; each has its own namespace `<prefix>-<role>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The bridge joining pc, bot, dns and the router's inside interface.
    Lan,
    /// A normal client.
    Pc,
    /// An infected client.
    Bot,
    /// The organisation's resolver (BIND 9 with the RPZ); an exempt source.
    Dns,
    /// The border router: `in0` inside, `out0` outside.
    Router,
    /// The "internet": whole address ranges with SMTP/DNS/echo listeners.
    Inet,
}

impl Role {
    /// All roles, in creation order.
    pub const ALL: [Role; 6] = [Role::Lan, Role::Pc, Role::Bot, Role::Dns, Role::Router, Role::Inet];

    /// The role's name, used as namespace suffix.
    pub fn name(self) -> &'static str {
        match self {
            Role::Lan => "lan",
            Role::Pc => "pc",
            Role::Bot => "bot",
            Role::Dns => "dns",
            Role::Router => "router",
            Role::Inet => "inet",
        }
    }

    /// The role named `name`.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the `inet` listeners are run.
#[derive(Debug, Clone, Default)]
pub enum ResponderMode {
    /// Threads of the current process with sockets in the `inet` namespace
    /// (tests: nothing is left behind if the test process dies).
    #[default]
    InProcess,
    /// A separate process, started in the `inet` namespace with this argv
    /// (for a lab that outlives its creator, e.g. `cargo xtask lab up`).
    Command(Vec<OsString>),
    /// No listeners.
    Off,
}

/// Options of [`Lab::up`].
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Namespace prefix: 1–8 of `[a-z0-9]`, starting with a letter.
    pub prefix: String,
    /// `n` of the `10.n.0.0/16` and `fd00:n::/…` addresses; derived from
    /// the prefix when `None`.
    pub subnet: Option<u8>,
    /// Start BIND in the `dns` namespace.
    pub bind: bool,
    /// How to run the `inet` listeners.
    pub responder: ResponderMode,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self::for_test("lab")
    }
}

impl LabConfig {
    /// A config with a fresh prefix derived from `test_name`, the process id
    /// and a counter, so concurrent tests never share a lab.
    pub fn for_test(test_name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let mut stem: String = test_name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .take(4)
            .collect();
        if !stem.starts_with(|c: char| c.is_ascii_lowercase()) {
            stem.insert(0, 't');
            stem.truncate(4);
        }
        let mut h = DefaultHasher::new();
        (test_name, std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)).hash(&mut h);
        std::time::SystemTime::now().hash(&mut h);
        Self::with_prefix(format!("{stem}{:04x}", h.finish() & 0xffff))
    }

    /// A config with the given prefix, BIND on, in-process responder.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), subnet: None, bind: true, responder: ResponderMode::InProcess }
    }

    /// Sets whether BIND runs.
    #[must_use]
    pub fn bind(mut self, on: bool) -> Self {
        self.bind = on;
        self
    }

    /// Sets the address number `<n>`.
    #[must_use]
    pub fn subnet(mut self, n: u8) -> Self {
        self.subnet = Some(n);
        self
    }

    /// Sets how the `inet` listeners run.
    #[must_use]
    pub fn responder(mut self, mode: ResponderMode) -> Self {
        self.responder = mode;
        self
    }
}

/// Every address of a lab with address number `n` (`subnet`).
///
/// | who | IPv4 | IPv6 |
/// |---|---|---|
/// | pc `eth0` | 10.n.0.10/24 | fd00:n::10/64 |
/// | bot `eth0` | 10.n.0.66/24 | fd00:n::66/64 |
/// | dns `eth0` (BIND) | 10.n.0.53/24 | fd00:n::53/64 |
/// | router `in0` | 10.n.0.1/24 | fd00:n::1/64 |
/// | router `out0` | 10.n.255.1/24 | fd00:n:ff::1/64 |
/// | inet `eth0` | 10.n.255.2/24 | fd00:n:ff::2/64 |
/// | inet (AnyIP on lo) | 198.51.100.0/24, 203.0.113.0/24 | 2001:db8:100::/64 |
///
/// (`n` is written as decimal digits in the IPv6 group.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabAddrs {
    /// The address number `n`.
    pub subnet: u8,
    /// pc, IPv4.
    pub pc_v4: Ipv4Addr,
    /// pc, IPv6.
    pub pc_v6: Ipv6Addr,
    /// bot, IPv4.
    pub bot_v4: Ipv4Addr,
    /// bot, IPv6.
    pub bot_v6: Ipv6Addr,
    /// BIND, IPv4 (an exempt source).
    pub dns_v4: Ipv4Addr,
    /// BIND, IPv6 (an exempt source).
    pub dns_v6: Ipv6Addr,
    /// Router inside, IPv4 (default gateway of the lan).
    pub router_in_v4: Ipv4Addr,
    /// Router inside, IPv6.
    pub router_in_v6: Ipv6Addr,
    /// Router outside, IPv4.
    pub router_out_v4: Ipv4Addr,
    /// Router outside, IPv6.
    pub router_out_v6: Ipv6Addr,
    /// inet's link address, IPv4.
    pub inet_link_v4: Ipv4Addr,
    /// inet's link address, IPv6.
    pub inet_link_v6: Ipv6Addr,
}

impl LabAddrs {
    /// The IPv4 "internet" ranges answered by `inet`.
    pub const INET_V4_RANGES: [(Ipv4Addr, u8); 2] =
        [(Ipv4Addr::new(198, 51, 100, 0), 24), (Ipv4Addr::new(203, 0, 113, 0), 24)];
    /// The IPv6 "internet" range answered by `inet`.
    pub const INET_V6_RANGE: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0), 64);

    /// The addresses for address number `n`.
    pub fn new(n: u8) -> Self {
        let v4 = |c: u8, d: u8| Ipv4Addr::new(10, n, c, d);
        let g = decimal_group(n);
        let v6 = |net: u16, host: u16| Ipv6Addr::new(0xfd00, g, net, 0, 0, 0, 0, host);
        Self {
            subnet: n,
            pc_v4: v4(0, 10),
            pc_v6: v6(0, 0x10),
            bot_v4: v4(0, 66),
            bot_v6: v6(0, 0x66),
            dns_v4: v4(0, 53),
            dns_v6: v6(0, 0x53),
            router_in_v4: v4(0, 1),
            router_in_v6: v6(0, 1),
            router_out_v4: v4(255, 1),
            router_out_v6: v6(0xff, 1),
            inet_link_v4: v4(255, 2),
            inet_link_v6: v6(0xff, 2),
        }
    }

    /// 198.51.100.`host` (served by `inet`).
    pub fn inet_v4(host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, host)
    }

    /// 203.0.113.`host` (served by `inet`).
    pub fn inet_v4_alt(host: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, host)
    }

    /// 2001:db8:100::`host` (served by `inet`; `host` is written as hex).
    pub fn inet_v6(host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, host)
    }

    /// The lan prefix, IPv4 (10.n.0.0/24).
    pub fn lan_v4(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, self.subnet, 0, 0), 24)
    }

    /// The lan prefix, IPv6 (fd00:n::/64).
    pub fn lan_v6(&self) -> (Ipv6Addr, u8) {
        (Ipv6Addr::new(0xfd00, decimal_group(self.subnet), 0, 0, 0, 0, 0, 0), 64)
    }
}

/// `n` read as hex digits of its decimal form (37 → 0x37), so addresses read
/// like the brief's `fd00:<n>::`.
fn decimal_group(n: u8) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(0)
}

/// The answer of a [`Lab::dig_query`].
#[derive(Debug, Clone)]
pub struct DigAnswer {
    /// The response code (`NOERROR`, `NXDOMAIN`, …).
    pub status: String,
    /// RDATA of the answer section, as dig prints it.
    pub answers: Vec<String>,
    /// Wall time of the dig run.
    pub elapsed: Duration,
    /// dig's full output.
    pub raw: String,
}

/// What exists of one lab (see [`Lab::status`]).
#[derive(Debug, Clone)]
pub struct LabStatus {
    /// The prefix.
    pub prefix: String,
    /// Namespaces named `<prefix>-*`.
    pub namespaces: Vec<String>,
    /// State directory, when present.
    pub state_dir: Option<PathBuf>,
    /// Address number, when recorded.
    pub subnet: Option<u8>,
    /// Recorded processes.
    pub processes: Vec<Recorded>,
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "lab {}", self.prefix)?;
        match self.subnet {
            Some(n) => {
                let a = LabAddrs::new(n);
                writeln!(
                    f,
                    "  addresses: pc {} / {}, bot {}, dns (BIND) {}, router in {} out {}, inet 198.51.100.0/24 203.0.113.0/24 2001:db8:100::/64",
                    a.pc_v4, a.pc_v6, a.bot_v4, a.dns_v4, a.router_in_v4, a.router_out_v4
                )?;
            }
            None => writeln!(f, "  addresses: unknown (no state)")?,
        }
        writeln!(
            f,
            "  namespaces: {}",
            if self.namespaces.is_empty() { "none".into() } else { self.namespaces.join(" ") }
        )?;
        match &self.state_dir {
            Some(d) => writeln!(f, "  state: {}", d.display())?,
            None => writeln!(f, "  state: none")?,
        }
        for p in &self.processes {
            writeln!(f, "  process {} {} ({})", p.pid, p.name, if p.alive { "running" } else { "gone" })?;
        }
        Ok(())
    }
}

/// What [`Lab::down_prefix`] removed.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    /// Processes ended (recorded ones and others found in the namespaces).
    pub ended: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Whether the state directory was removed.
    pub state_removed: bool,
}

/// A lab: namespaces, BIND, listeners. Tears everything down on drop (also
/// when a test panics) unless it was [`persist`](Lab::persist)ed or
/// [`attach`](Lab::attach)ed.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    addrs: LabAddrs,
    state_dir: PathBuf,
    owned: bool,
    responder: Option<Responder>,
    daemons: Vec<LabChild>,
}

impl Lab {
    /// Creates the topology of `config`. Fails with [`LabError::Exists`] when
    /// namespaces with the prefix exist already.
    pub fn up(config: LabConfig) -> Result<Lab> {
        validate_prefix(&config.prefix)?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LabError::NotRoot);
        }
        let state_dir = state_dir(&config.prefix);
        let existing = namespaces_of(&config.prefix);
        if !existing.is_empty() {
            return Err(LabError::Exists { prefix: config.prefix.clone(), existing: existing.join(" ") });
        }
        if state_dir.exists() {
            // Leftover state without namespaces: end what it recorded, start afresh.
            Self::down_prefix(&config.prefix)?;
        }
        let subnet = config.subnet.unwrap_or_else(|| subnet_for(&config.prefix));
        let mut lab = Lab {
            prefix: config.prefix.clone(),
            addrs: LabAddrs::new(subnet),
            state_dir,
            owned: true,
            responder: None,
            daemons: Vec::new(),
        };
        let started = Instant::now();
        lab.build(&config)?;
        tracing::info!(prefix = %lab.prefix, subnet, elapsed = ?started.elapsed(), "lab up");
        Ok(lab)
    }

    /// Opens an existing lab (made by another process, e.g. `cargo xtask lab
    /// up`) without taking ownership: dropping it removes nothing.
    pub fn attach(prefix: &str) -> Result<Lab> {
        validate_prefix(prefix)?;
        let state_dir = state_dir(prefix);
        let subnet = read_subnet(&state_dir).ok_or_else(|| LabError::NotFound {
            prefix: prefix.to_owned(),
            state_dir: state_dir.display().to_string(),
        })?;
        Ok(Lab {
            prefix: prefix.to_owned(),
            addrs: LabAddrs::new(subnet),
            state_dir,
            owned: false,
            responder: None,
            daemons: Vec::new(),
        })
    }

    /// Leaves the lab running after this value is gone (its processes stay
    /// recorded, so [`Lab::down_prefix`] removes them later). An in-process
    /// responder still ends with this process.
    pub fn persist(mut self) {
        self.owned = false;
        for d in self.daemons.drain(..) {
            d.detach();
        }
    }

    fn build(&mut self, config: &LabConfig) -> Result<()> {
        for sub in ["pids", "logs"] {
            let dir = self.state_dir.join(sub);
            fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
        }
        // The owner (this process, by pid and start time) lets a parent that
        // had to kill it find and remove what it left: `Lab::owned_by`.
        let me = std::process::id();
        let start = process::start_time(me).unwrap_or(0);
        let info = format!("subnet={}\nbind={}\nowner={me} {start}\n", self.addrs.subnet, config.bind);
        let info_path = self.state_dir.join("lab.conf");
        fs::write(&info_path, info).map_err(|e| LabError::io(format!("write {}", info_path.display()), e))?;
        for role in Role::ALL {
            self.make_namespace(&self.ns(role), role == Role::Router)?;
        }
        self.wire()?;
        self.address()?;
        if config.bind {
            self.start_bind()?;
        }
        match &config.responder {
            ResponderMode::InProcess => {
                self.responder = Some(Responder::start(Some(&self.ns(Role::Inet)), FixedAnswers::default())?);
            }
            ResponderMode::Command(argv) => {
                let args: Vec<&std::ffi::OsStr> = argv.iter().map(OsString::as_os_str).collect();
                let child = self.spawn_os(Role::Inet, &args, "responder")?;
                self.daemons.push(child);
                let probe = SocketAddr::from((LabAddrs::inet_v4(1), 25));
                netns::wait_for_tcp(&self.ns(Role::Inet), probe, Duration::from_secs(10))?;
            }
            ResponderMode::Off => {}
        }
        Ok(())
    }

    fn make_namespace(&self, ns: &str, forwarding: bool) -> Result<()> {
        ip(&["netns", "add", ns])?;
        let mut sysctls = vec!["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"];
        if forwarding {
            sysctls.extend(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        }
        let mut args = vec!["sysctl", "-q", "-w"];
        args.extend(sysctls);
        netns::check(&netns::command(ns, &args), netns::exec(ns, &args)?)?;
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// Creates an extra namespace `<prefix>-<suffix>` (loopback up) that is
    /// removed with the lab; returns its name.
    pub fn create_namespace(&self, suffix: &str) -> Result<String> {
        let ns = format!("{}-{suffix}", self.prefix);
        self.make_namespace(&ns, false)?;
        Ok(ns)
    }

    fn wire(&self) -> Result<()> {
        let lan = self.ns(Role::Lan);
        ip(&[
            "-n",
            &lan,
            "link",
            "add",
            LAN_BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &lan, "link", "set", LAN_BRIDGE, "up"])?;
        // A plain L2 switch: with br_netfilter the bridge would validate IP
        // headers and drop the malformed frames tests send to the router.
        let plain = [
            "sysctl",
            "-q",
            "-w",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ];
        netns::check(&netns::command(&lan, &plain), netns::exec(&lan, &plain)?)?;
        let ports = [
            (Role::Pc, "pc", HOST_IFACE),
            (Role::Bot, "bot", HOST_IFACE),
            (Role::Dns, "dns", HOST_IFACE),
            (Role::Router, "rtr", ROUTER_INSIDE),
        ];
        for (role, port, inner) in ports {
            let ns = self.ns(role);
            ip(&["-n", &lan, "link", "add", port, "type", "veth", "peer", "name", inner, "netns", &ns])?;
            ip(&["-n", &lan, "link", "set", port, "master", LAN_BRIDGE, "up"])?;
            ip(&["-n", &ns, "link", "set", inner, "up"])?;
        }
        let (router, inet) = (self.ns(Role::Router), self.ns(Role::Inet));
        ip(&[
            "-n",
            &router,
            "link",
            "add",
            ROUTER_OUTSIDE,
            "type",
            "veth",
            "peer",
            "name",
            HOST_IFACE,
            "netns",
            &inet,
        ])?;
        ip(&["-n", &router, "link", "set", ROUTER_OUTSIDE, "up"])?;
        ip(&["-n", &inet, "link", "set", HOST_IFACE, "up"])
    }

    fn address(&self) -> Result<()> {
        let a = &self.addrs;
        let add = |role: Role, iface: &str, addr: IpAddr, len: u8| -> Result<()> {
            let (cidr, ns) = (format!("{addr}/{len}"), self.ns(role));
            let mut args = vec!["-n", &ns, "addr", "add", &cidr, "dev", iface];
            if addr.is_ipv6() {
                args.push("nodad");
            }
            ip(&args)
        };
        for (role, v4, v6) in
            [(Role::Pc, a.pc_v4, a.pc_v6), (Role::Bot, a.bot_v4, a.bot_v6), (Role::Dns, a.dns_v4, a.dns_v6)]
        {
            add(role, HOST_IFACE, v4.into(), 24)?;
            add(role, HOST_IFACE, v6.into(), 64)?;
            let ns = self.ns(role);
            ip(&["-n", &ns, "route", "add", "default", "via", &a.router_in_v4.to_string()])?;
            ip(&["-n", &ns, "-6", "route", "add", "default", "via", &a.router_in_v6.to_string()])?;
        }
        add(Role::Router, ROUTER_INSIDE, a.router_in_v4.into(), 24)?;
        add(Role::Router, ROUTER_INSIDE, a.router_in_v6.into(), 64)?;
        add(Role::Router, ROUTER_OUTSIDE, a.router_out_v4.into(), 24)?;
        add(Role::Router, ROUTER_OUTSIDE, a.router_out_v6.into(), 64)?;
        add(Role::Inet, HOST_IFACE, a.inet_link_v4.into(), 24)?;
        add(Role::Inet, HOST_IFACE, a.inet_link_v6.into(), 64)?;
        let (router, inet) = (self.ns(Role::Router), self.ns(Role::Inet));
        ip(&["-n", &router, "route", "add", "default", "via", &a.inet_link_v4.to_string()])?;
        ip(&["-n", &router, "-6", "route", "add", "default", "via", &a.inet_link_v6.to_string()])?;
        let lan16 = format!("10.{}.0.0/16", a.subnet);
        ip(&["-n", &inet, "route", "add", &lan16, "via", &a.router_out_v4.to_string()])?;
        let (lan6, len6) = a.lan_v6();
        ip(&[
            "-n",
            &inet,
            "-6",
            "route",
            "add",
            &format!("{lan6}/{len6}"),
            "via",
            &a.router_out_v6.to_string(),
        ])?;
        // AnyIP: every address of the ranges is local to inet.
        for (net, len) in LabAddrs::INET_V4_RANGES {
            ip(&["-n", &inet, "route", "add", "local", &format!("{net}/{len}"), "dev", "lo"])?;
        }
        let (net6, len6) = LabAddrs::INET_V6_RANGE;
        ip(&["-n", &inet, "-6", "route", "add", "local", &format!("{net6}/{len6}"), "dev", "lo"])
    }

    fn start_bind(&mut self) -> Result<()> {
        let dir = self.state_dir.join("bind");
        fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
        let key = self.tsig_key_file();
        bind::generate_key(&key)?;
        let a = self.addrs.clone();
        let conf = bind::write_config(
            &bind::BindSetup {
                dir: &dir,
                listen: &[a.dns_v4.into(), a.dns_v6.into()],
                transfer_to: &[a.router_in_v4.into(), a.router_in_v6.into()],
                notify_to: a.router_in_v4.into(),
            },
            &key,
        )?;
        bind::check_config(&conf)?;
        let conf_str = conf.to_string_lossy().into_owned();
        let mut named = self.spawn_os(
            Role::Dns,
            &["named", "-g", "-n", "1", "-c", &conf_str].map(std::ffi::OsStr::new),
            "named",
        )?;
        let ready = netns::wait_for_udp_dns(
            &self.ns(Role::Dns),
            SocketAddr::from((a.dns_v4, 53)),
            Duration::from_secs(15),
        );
        if let Err(e) = ready {
            let running = named.is_running();
            return Err(LabError::Command {
                command: format!("named -c {conf_str}"),
                status: if running { format!("running but not answering: {e}") } else { "exited".into() },
                stderr: tail(&named.log(), 20),
            });
        }
        self.daemons.push(named);
        Ok(())
    }

    /// The lab's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// All addresses.
    pub fn addrs(&self) -> &LabAddrs {
        &self.addrs
    }

    /// Namespace of `role`: `<prefix>-<role>`.
    pub fn ns(&self, role: Role) -> String {
        format!("{}-{}", self.prefix, role.name())
    }

    /// The router's inside (enforcement) interface.
    pub fn router_inside_iface(&self) -> &'static str {
        ROUTER_INSIDE
    }

    /// The router's outside interface.
    pub fn router_outside_iface(&self) -> &'static str {
        ROUTER_OUTSIDE
    }

    /// The state directory (`/run/rpz-guard-lab/<prefix>`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The policy zone name.
    pub fn rpz_zone(&self) -> &'static str {
        bind::RPZ_ZONE
    }

    /// File holding the TSIG key in BIND `key` syntax.
    pub fn tsig_key_file(&self) -> PathBuf {
        self.state_dir.join("tsig.key")
    }

    /// Name of the TSIG key.
    pub fn tsig_key_name(&self) -> &'static str {
        bind::TSIG_KEY_NAME
    }

    /// The key's secret (base64, as in the key file).
    pub fn tsig_secret(&self) -> Result<String> {
        let path = self.tsig_key_file();
        let text =
            fs::read_to_string(&path).map_err(|e| LabError::io(format!("read {}", path.display()), e))?;
        text.split("secret").nth(1).and_then(|rest| rest.split('"').nth(1)).map(str::to_owned).ok_or_else(
            || LabError::io(format!("parse {}", path.display()), std::io::ErrorKind::InvalidData.into()),
        )
    }

    /// BIND's address (IPv4); queries and updates go here.
    pub fn bind_addr(&self) -> IpAddr {
        self.addrs.dns_v4.into()
    }

    /// BIND's log so far (stderr of `named -g`).
    pub fn bind_log(&self) -> String {
        fs::read_to_string(self.state_dir.join("logs/named.log")).unwrap_or_default()
    }

    /// Port on the router's inside address that receives BIND's NOTIFY.
    pub fn notify_port(&self) -> u16 {
        bind::NOTIFY_PORT
    }

    /// Counters of the in-process responder (`None` in other modes).
    pub fn responder_stats(&self) -> Option<&ResponderStats> {
        self.responder.as_ref().map(Responder::stats)
    }

    /// Runs `f` on a thread inside `role`'s namespace (sockets made there stay there).
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, role: Role, f: F) -> Result<T> {
        netns::run_in_netns(&self.ns(role), f)
    }

    /// Opens a TCP connection from `role` to `addr`.
    pub fn tcp_connect(
        &self,
        role: Role,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<std::net::TcpStream> {
        netns::tcp_connect_in(&self.ns(role), addr, timeout)
    }

    /// Waits until a TCP connection from `role` to `addr` succeeds.
    pub fn wait_for_tcp(&self, role: Role, addr: SocketAddr, timeout: Duration) -> Result<()> {
        netns::wait_for_tcp(&self.ns(role), addr, timeout)
    }

    /// Runs `args` in `role`'s namespace (`ip netns exec`); returns the output
    /// whatever the exit status.
    pub fn exec(&self, role: Role, args: &[&str]) -> Result<Output> {
        netns::exec(&self.ns(role), args)
    }

    /// Like [`exec`](Lab::exec) but a non-zero exit is an error; returns stdout.
    pub fn exec_ok(&self, role: Role, args: &[&str]) -> Result<String> {
        let ns = self.ns(role);
        netns::check(&netns::command(&ns, args), netns::exec(&ns, args)?)
    }

    /// Starts `args` in `role`'s namespace; stdout and stderr go to a log
    /// file in the state dir. The child is ended when the handle is dropped,
    /// and by [`Lab::down_prefix`] after a crash.
    pub fn spawn(&self, role: Role, args: &[&str]) -> Result<LabChild> {
        let name = args.first().map(|a| basename(a)).unwrap_or_default();
        self.spawn_os(role, &args.iter().map(std::ffi::OsStr::new).collect::<Vec<_>>(), &name)
    }

    /// Like [`spawn`](Lab::spawn), but the process enters only `role`'s
    /// network namespace (`nsenter --net`), not a private mount namespace
    /// with its own `/sys` as under `ip netns exec`: it sees the host's
    /// mounts, e.g. the host's bpffs, where pinned state outlives it.
    pub fn spawn_host_mounts(&self, role: Role, args: &[&str]) -> Result<LabChild> {
        let name = args.first().map(|a| basename(a)).unwrap_or_default();
        let net = format!("--net={}", netns::netns_path(&self.ns(role)).display());
        let mut argv: Vec<&std::ffi::OsStr> = vec![net.as_ref(), "--".as_ref()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        self.spawn_with_launcher("nsenter", &argv, &name, false)
    }

    /// Like [`spawn`](Lab::spawn) but stdout is a pipe (read it through
    /// [`LabChild::child`]); stderr still goes to the log file.
    pub fn spawn_piped(&self, role: Role, args: &[&str]) -> Result<LabChild> {
        let name = args.first().map(|a| basename(a)).unwrap_or_default();
        let argv: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        self.spawn_with(role, &argv, &name, true)
    }

    /// Like [`spawn`](Lab::spawn), in a namespace made by
    /// [`create_namespace`](Lab::create_namespace).
    pub fn spawn_in(&self, ns: &str, args: &[&str]) -> Result<LabChild> {
        let name = args.first().map(|a| basename(a)).unwrap_or_default();
        let mut argv: Vec<&std::ffi::OsStr> = vec!["netns".as_ref(), "exec".as_ref(), ns.as_ref()];
        argv.extend(args.iter().map(std::ffi::OsStr::new));
        self.spawn_with_launcher("ip", &argv, &name, false)
    }

    fn spawn_os(&self, role: Role, args: &[&std::ffi::OsStr], name: &str) -> Result<LabChild> {
        self.spawn_with(role, args, name, false)
    }

    fn spawn_with(&self, role: Role, args: &[&std::ffi::OsStr], name: &str, pipe: bool) -> Result<LabChild> {
        let ns = self.ns(role);
        let mut argv: Vec<&std::ffi::OsStr> = vec!["netns".as_ref(), "exec".as_ref(), ns.as_ref()];
        argv.extend_from_slice(args);
        self.spawn_with_launcher("ip", &argv, name, pipe)
    }

    fn spawn_with_launcher(
        &self,
        launcher: &str,
        args: &[&std::ffi::OsStr],
        name: &str,
        pipe: bool,
    ) -> Result<LabChild> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let log_name = if name == "named" {
            "named.log".to_owned()
        } else {
            format!("{name}.{}.{seq}.log", std::process::id())
        };
        let log_path = self.state_dir.join("logs").join(log_name);
        let log = fs::File::create(&log_path)
            .map_err(|e| LabError::io(format!("create {}", log_path.display()), e))?;
        let log_err = log.try_clone().map_err(|e| LabError::io("clone log file", e))?;
        let mut cmd = Command::new(launcher);
        cmd.args(args);
        cmd.stdin(Stdio::null()).stderr(log_err);
        if pipe {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(log);
        }
        let line = netns::describe(&cmd);
        let child = cmd.spawn().map_err(|e| LabError::io(format!("spawn `{line}`"), e))?;
        let pid_file = self.state_dir.join("pids").join(format!("{}.pid", child.id()));
        LabChild::track(child, pid_file, Some(log_path), name.to_owned())
    }

    /// MAC address of `iface` in `role`'s namespace.
    pub fn mac(&self, role: Role, iface: &str) -> Result<[u8; 6]> {
        let out = self.exec_ok(role, &["cat", &format!("/sys/class/net/{iface}/address")])?;
        parse_mac(out.trim()).ok_or_else(|| {
            LabError::io(format!("parse MAC of {iface}: {out:?}"), std::io::ErrorKind::InvalidData.into())
        })
    }

    /// Sends raw Ethernet `frames` out of `iface` in `role`'s namespace
    /// (e.g. 802.1Q-tagged frames toward the router's `in0`).
    pub fn send_frames(&self, role: Role, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
        netns::send_frames(&self.ns(role), iface, frames)
    }

    /// Sends a TSIG-signed dynamic update of the policy zone to BIND (from
    /// the `dns` namespace). `lines` are nsupdate commands such as
    /// `update add 198.51.100.25.rpz.example.com. 60 IN A 127.0.0.25`.
    pub fn nsupdate(&self, lines: &[&str]) -> Result<()> {
        let key = self.tsig_key_file();
        let out = self.nsupdate_with_key(&key, lines)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LabError::Command {
                command: format!("nsupdate -k {} ({})", key.display(), lines.join("; ")),
                status: out.status.to_string(),
                stderr: format!(
                    "{} {}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }

    /// Runs nsupdate with the key in `key_file` and returns its raw output
    /// (for tests of refused updates).
    pub fn nsupdate_with_key(&self, key_file: &Path, lines: &[&str]) -> Result<Output> {
        let mut script = format!("server {}\nzone {}.\n", self.addrs.dns_v4, bind::RPZ_ZONE);
        for l in lines {
            script.push_str(l);
            script.push('\n');
        }
        script.push_str("send\n");
        let key = key_file.to_string_lossy();
        netns::exec_with_input(
            &self.ns(Role::Dns),
            &["nsupdate", "-t", "5", "-k", &key],
            Some(script.as_bytes()),
        )
    }

    /// Owner name of IPv4 `ip` in the policy zone (the paper's encoding:
    /// the address literal under the zone).
    pub fn rpz_owner_v4(&self, ip: Ipv4Addr) -> String {
        format!("{ip}.{}.", bind::RPZ_ZONE)
    }

    /// Adds `ip → A answer` (e.g. 127.0.0.1 DNS, 127.0.0.25 SMTP) to the RPZ.
    pub fn rpz_add_v4(&self, ip: Ipv4Addr, answer: Ipv4Addr) -> Result<()> {
        self.nsupdate(&[&format!("update add {} 60 IN A {answer}", self.rpz_owner_v4(ip))])
    }

    /// Removes every record of `ip` from the RPZ.
    pub fn rpz_delete_v4(&self, ip: Ipv4Addr) -> Result<()> {
        self.nsupdate(&[&format!("update delete {}", self.rpz_owner_v4(ip))])
    }

    /// Runs `dig +time=2 +tries=1 <args>` in `role`'s namespace.
    pub fn dig(&self, role: Role, args: &[&str]) -> Result<Output> {
        let mut all = vec!["dig", "+time=2", "+tries=1"];
        all.extend_from_slice(args);
        self.exec(role, &all)
    }

    /// Asks `server` for `name`/`qtype` from `role` and parses the answer.
    /// A query that gets no reply is an error.
    pub fn dig_query(&self, role: Role, server: IpAddr, name: &str, qtype: &str) -> Result<DigAnswer> {
        let at = format!("@{server}");
        let started = Instant::now();
        let args = [at.as_str(), name, qtype, "+noall", "+comments", "+answer"];
        let out = self.dig(role, &args)?;
        let elapsed = started.elapsed();
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("dig {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: format!("{} {}", raw.trim(), String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        let status = raw
            .lines()
            .find_map(|l| l.split("status: ").nth(1))
            .and_then(|s| s.split(',').next())
            .unwrap_or("UNKNOWN")
            .to_owned();
        let answers = raw
            .lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.len() >= 5).then(|| fields[4..].join(" "))
            })
            .collect();
        Ok(DigAnswer { status, answers, elapsed, raw })
    }

    /// Polls BIND from `role` until `name` (type A) answers `expected`
    /// (e.g. after an RPZ update); returns the time it took.
    pub fn wait_for_answer(
        &self,
        role: Role,
        name: &str,
        expected: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if let Ok(ans) = self.dig_query(role, self.bind_addr(), name, "A")
                && ans.answers.iter().any(|a| a == expected)
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(LabError::Timeout {
                    what: format!("{name} A {expected} from BIND"),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes everything of lab `prefix`: recorded processes (checked by
    /// start time), other processes inside its namespaces, the namespaces
    /// `<prefix>-*` and the state directory. Works after a crash.
    pub fn down_prefix(prefix: &str) -> Result<DownReport> {
        validate_prefix(prefix)?;
        let mut report = DownReport::default();
        let dir = state_dir(prefix);
        for rec in process::end_recorded(&dir.join("pids")) {
            report.ended.push(format!("{} {}", rec.pid, rec.name));
        }
        let me = std::process::id();
        for ns in namespaces_of(prefix) {
            // Anything still inside was started for this lab (e.g. by a test).
            if let Ok(out) = netns::exec_ok_root(&["netns", "pids", &ns]) {
                for pid in out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).filter(|&p| p != me) {
                    if let Some(start) = process::start_time(pid) {
                        process::end_pid(pid, start);
                        report.ended.push(format!("{pid} (in {ns})"));
                    }
                }
            }
            ip(&["netns", "del", &ns])?;
            report.namespaces.push(ns);
        }
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| LabError::io(format!("remove {}", dir.display()), e))?;
            report.state_removed = true;
        }
        Ok(report)
    }

    /// The labs whose state directory records process `pid` started at
    /// `start` (clock ticks, [`process::start_time`]) as their owner. A
    /// parent that ended a child the hard way (a benchmark killed at its
    /// time limit: no destructor ran) removes what it left with these and
    /// [`Lab::down_prefix`]. Pid and start time together never name a later
    /// process that reused the pid.
    pub fn owned_by(pid: u32, start: u64) -> Vec<String> {
        let Ok(dir) = fs::read_dir(STATE_ROOT) else { return Vec::new() };
        let wanted = format!("{pid} {start}");
        let mut found: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|p| validate_prefix(p).is_ok())
            .filter(|p| read_owner(&state_dir(p)).is_some_and(|o| o == wanted))
            .collect();
        found.sort();
        found
    }

    /// What exists for `prefix`, or for every lab found when `None` (state
    /// directories and namespaces named `<prefix>-<role>`).
    pub fn status(prefix: Option<&str>) -> Vec<LabStatus> {
        let mut prefixes: Vec<String> = match prefix {
            Some(p) => vec![p.to_owned()],
            None => {
                let mut found: Vec<String> = fs::read_dir(STATE_ROOT)
                    .map(|d| {
                        d.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect()
                    })
                    .unwrap_or_default();
                for ns in netns::list() {
                    if let Some((p, role)) = ns.rsplit_once('-')
                        && Role::from_name(role).is_some()
                        && validate_prefix(p).is_ok()
                    {
                        found.push(p.to_owned());
                    }
                }
                found
            }
        };
        prefixes.sort();
        prefixes.dedup();
        prefixes
            .into_iter()
            .map(|p| {
                let dir = state_dir(&p);
                LabStatus {
                    namespaces: namespaces_of(&p),
                    subnet: read_subnet(&dir),
                    processes: process::recorded(&dir.join("pids")).into_iter().map(|(_, r)| r).collect(),
                    state_dir: dir.exists().then_some(dir),
                    prefix: p,
                }
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        self.responder = None;
        self.daemons.clear();
        if let Err(e) = Self::down_prefix(&self.prefix) {
            eprintln!(
                "lab {}: teardown failed: {e}; run `cargo xtask lab down --prefix {}`",
                self.prefix, self.prefix
            );
        }
    }
}

/// Checks that `prefix` is 1–8 of `[a-z0-9]` starting with a letter (no `-`,
/// so `<prefix>-*` never matches another lab's namespaces).
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let reason = if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
        Some("must be 1 to 8 characters")
    } else if !prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("must start with a lowercase letter")
    } else if !prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Some("only a-z and 0-9 are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LabError::InvalidPrefix { prefix: prefix.to_owned(), reason }),
        None => Ok(()),
    }
}

/// State directory of lab `prefix`.
pub fn state_dir(prefix: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(prefix)
}

/// Address number derived from the prefix (1–250).
pub fn subnet_for(prefix: &str) -> u8 {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let h = prefix.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    (h % 250) as u8 + 1
}

fn namespaces_of(prefix: &str) -> Vec<String> {
    let stem = format!("{prefix}-");
    netns::list().into_iter().filter(|n| n.starts_with(&stem)).collect()
}

fn read_subnet(dir: &Path) -> Option<u8> {
    let text = fs::read_to_string(dir.join("lab.conf")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("subnet="))?.trim().parse().ok()
}

/// The `owner=<pid> <start>` line of a lab's `lab.conf`.
fn read_owner(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join("lab.conf")).ok()?;
    Some(text.lines().find_map(|l| l.strip_prefix("owner="))?.trim().to_owned())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn ip(args: &[&str]) -> Result<()> {
    netns::exec_ok_root(args).map(drop)
}

fn basename(path: &str) -> String {
    Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.to_owned())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("rg").is_ok());
        assert!(validate_prefix("abcd1234").is_ok());
        for bad in ["", "abcdefghi", "1abc", "ab-c", "AB", "a_b"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn test_prefixes_are_short_valid_and_distinct() {
        let a = LabConfig::for_test("lab_smoke::up_and_down").prefix;
        let b = LabConfig::for_test("lab_smoke::up_and_down").prefix;
        let c = LabConfig::for_test("9-weird name").prefix;
        for p in [&a, &b, &c] {
            validate_prefix(p).expect("generated prefixes are valid");
        }
        assert_ne!(a, b);
        assert!(a.starts_with("labs"));
        assert!(c.starts_with('t'));
    }

    #[test]
    fn addresses_follow_the_plan() {
        let a = LabAddrs::new(37);
        assert_eq!(a.pc_v4, Ipv4Addr::new(10, 37, 0, 10));
        assert_eq!(a.pc_v6.to_string(), "fd00:37::10");
        assert_eq!(a.router_out_v6.to_string(), "fd00:37:ff::1");
        assert_eq!(a.lan_v6(), ("fd00:37::".parse().expect("literal"), 64));
        assert_eq!(LabAddrs::inet_v6(0x25).to_string(), "2001:db8:100::25");
        let n = subnet_for("rg");
        assert!((1..=250).contains(&n));
        assert_eq!(n, subnet_for("rg"));
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::from_name(r.name()), Some(r));
        }
        assert_eq!(Role::from_name("nope"), None);
    }
}
