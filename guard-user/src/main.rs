//! The `rpz-guard` command line: argument parsing and logging setup; the work
//! is in the library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use guard_user::{
    config::{Config, Mode},
    daemon,
    ops::OpsError,
    policy::{Classes, Prefix},
    xdp::AttachMode,
};
use tokio_util::sync::CancellationToken;

/// Stop hosts from talking to external DNS and SMTP servers that the
/// organization's resolver never learned.
///
/// The allow set lives in a BIND Response Policy Zone: name servers as
/// `A 127.0.0.1`, mail exchangers as `A 127.0.0.25`. `run` enforces it at the
/// border (XDP on a Linux router, or as an OpenFlow 1.3 controller for Open
/// vSwitch); `status` asks a running daemon how it is doing. `explain`
/// says why a destination is allowed or blocked; `allow`, `revoke` and
/// `deny` change the zone by hand (TSIG UPDATE); `list` shows the set with
/// its lifetime fields.
#[derive(Parser, Debug)]
#[command(name = "rpz-guard", version, about, long_about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enforce the RPZ allow set (runs until SIGINT/SIGTERM; SIGHUP reloads).
    ///
    /// Settings come from --config (TOML); flags override the file. With no
    /// config file, --iface and one of --zone-file or --server are needed.
    /// SIGHUP re-reads the file: [policy] and [events] change in place and
    /// the events file is reopened; other changes are refused.
    Run(Box<RunArgs>),
    /// Show counters, entries, sync state and top offending hosts of a running daemon.
    Status(StatusArgs),
    /// Validate a config file and print it with every default filled in.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Learn the allow set from border DNS captures (pcap/pcapng).
    Learn(Box<LearnArgs>),
    /// Allow an address or prefix by hand (a manual entry in the RPZ).
    ///
    /// Writes the address's trigger with the class (`A 127.0.0.1` for dns,
    /// `A 127.0.0.25` for smtp; classes already there stay) and a TXT
    /// companion record `src=manual` with the creation time, the expiry and
    /// the comment, in ONE TSIG-signed UPDATE to the primary. A manual entry
    /// is never aged out unless it has an expiry. An existing learned entry
    /// becomes manual. A denied address is refused (revoke the deny first).
    /// Every router following the zone (NOTIFY, IXFR) enforces it within
    /// seconds.
    #[command(after_help = OPS_AFTER_HELP)]
    Allow(AllowArgs),
    /// Remove an entry, learned or manual, or a deny (its A, TXT and CNAME
    /// records) in one UPDATE.
    ///
    /// A learned address may be learned again from later DNS answers; to
    /// keep it out for good, `deny` it.
    #[command(after_help = OPS_AFTER_HELP)]
    Revoke(ChangeArgs),
    /// Deny an address or prefix: blocked in both modes even if learned, and
    /// never learned back.
    ///
    /// Written as `CNAME .` at the trigger (the RPZ NXDOMAIN action, what
    /// BIND operators use to block), replacing any A and TXT there, in one
    /// UPDATE. A deny covering an address (host or prefix) beats any allow
    /// of it: XDP keeps it out of the allow maps and the miss path answers
    /// deny; OpenFlow installs no allow flow; the learner skips it (counted
    /// as learn_denied). `revoke` removes the deny.
    #[command(after_help = OPS_AFTER_HELP)]
    Deny(ChangeArgs),
    /// Everything about one destination: why it is allowed or blocked.
    ///
    /// In the RPZ? By which entry (host or prefix), which class, learned or
    /// manual, first learned, last confirmed, from which DNS answer, until
    /// when? Denied? In this router's kernel maps or OpenFlow flows? A cached
    /// verdict, and when it expires? Recent blocked attempts toward it, and
    /// from which hosts?
    ///
    /// Asks the RPZ primary (signed queries of every trigger that can cover
    /// the address) and the running daemon (its status socket) at once.
    /// Either part may be unavailable (no daemon on this host, the primary
    /// down); the output says which and why, and shows the other.
    #[command(after_help = EXPLAIN_AFTER_HELP)]
    Explain(ExplainArgs),
    /// The allow set with its lifetime fields, read from the primary by AXFR.
    #[command(after_help = OPS_AFTER_HELP)]
    List(ListArgs),
    /// Remove the program and maps pinned by `run` (stops enforcement).
    Unpin {
        /// The pin directory (`run --pin DIR`, or the default
        /// /sys/fs/bpf/rpz-guard/<iface>).
        dir: PathBuf,
    },
    /// Print a shell completion script (e.g. `rpz-guard completions bash >
    /// /etc/bash_completion.d/rpz-guard`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the rpz-guard(1) manual page (roff; `rpz-guard man | man -l -`),
    /// or write every page, one per subcommand, into a directory.
    Man {
        /// Write rpz-guard.1 and rpz-guard-SUBCOMMAND.1 here instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// TOML config file (see README for every key).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Enforcement point: xdp (Linux router) or openflow (OVS controller).
    #[arg(long)]
    mode: Option<Mode>,
    /// Interface to attach XDP to: the router's inside interface.
    #[arg(long)]
    iface: Option<String>,
    /// XDP attach mode: native, generic or auto (native, else generic; on a
    /// veth generic first, which costs less there).
    #[arg(long)]
    xdp_mode: Option<AttachMode>,
    /// Only count what would be dropped; drop nothing.
    #[arg(long)]
    count_only: bool,
    /// Pin program and maps in DIR (on a bpffs) instead of the default
    /// /sys/fs/bpf/rpz-guard/<iface>. Pinning is on by default: enforcement
    /// continues while the daemon is down (crash, restart) and a restart
    /// adopts the pinned state with no gap. A DIR on a bpffs that would
    /// vanish with the daemon (a private mount namespace) is refused.
    #[arg(long = "pin", value_name = "DIR", conflicts_with = "no_pin")]
    pin_dir: Option<PathBuf>,
    /// Do not pin: the XDP program detaches when the daemon ends, also on a
    /// crash (fails open until the next start).
    #[arg(long)]
    no_pin: bool,
    /// State directory: the snapshot of the last zone applied lives here
    /// (default /var/lib/rpz-guard).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Keep no snapshot of the zone: a start with the primary down then
    /// runs deny-protected until the first transfer.
    #[arg(long)]
    no_snapshot: bool,
    /// Policy zone origin.
    #[arg(long)]
    zone: Option<String>,
    /// Local RPZ zone file as the source (re-read when it changes).
    #[arg(long)]
    zone_file: Option<PathBuf>,
    /// BIND server (ADDR:PORT) to transfer the RPZ from (AXFR, then IXFR).
    #[arg(long)]
    server: Option<SocketAddr>,
    /// TSIG key file (BIND `key` syntax) for transfers.
    #[arg(long)]
    tsig_key: Option<PathBuf>,
    /// Listen for NOTIFY from the server on ADDR:PORT, UDP and TCP.
    #[arg(long)]
    notify_listen: Option<SocketAddr>,
    /// Source prefix allowed to send NOTIFY (repeatable; default: the server's address).
    #[arg(long = "notify-allow-from", value_name = "PREFIX")]
    notify_allow_from: Vec<Prefix>,
    /// Seconds between SOA polls of the server, the safety net for a lost or
    /// late NOTIFY (jittered ±20 %; faster for a while after a NOTIFY or change).
    #[arg(long, value_name = "SECS")]
    poll_interval: Option<u64>,
    /// Exempt source prefix (repeatable): the organization's resolvers and relays.
    #[arg(long = "exempt", value_name = "PREFIX")]
    exempt: Vec<Prefix>,
    /// Anti-spoofing: honour exempt sources only from this source MAC
    /// (repeatable; both modes). Replaces policy.exempt_macs.
    #[arg(long = "exempt-mac", value_name = "MAC")]
    exempt_mac: Vec<guard_user::policy::MacAddr>,
    /// Anti-spoofing, XDP mode: switch OFF the route+neighbour check of
    /// exempt sources (on by default where the interface routes). Without
    /// --exempt-mac, an inside host can then spoof the resolver's address.
    #[arg(long)]
    no_exempt_route_check: bool,
    /// Anti-spoofing, OpenFlow mode: honour exempt sources only on this
    /// switch port (repeatable). Replaces openflow.exempt_in_ports.
    #[arg(long = "exempt-in-port", value_name = "PORT")]
    exempt_in_port: Vec<u32>,
    /// Internal destination prefix (repeatable); replaces the defaults.
    #[arg(long = "internal", value_name = "PREFIX")]
    internal: Vec<Prefix>,
    /// Detection events: stdout, none, or a file (JSON lines).
    #[arg(long)]
    events: Option<String>,
    /// Field layout of the events: native, or ecs (Elastic Common Schema).
    #[arg(long, value_name = "FORMAT")]
    events_format: Option<guard_user::events::EventFormat>,
    /// Status socket path.
    #[arg(long)]
    status_socket: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR:PORT (/metrics).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// OpenFlow listen address (openflow mode; default 127.0.0.1:6653, loopback
    /// only: a wider address should come with [openflow.tls], see README).
    #[arg(long)]
    openflow_listen: Option<SocketAddr>,
    /// Learn live from the resolvers' DNS traffic as it crosses the router
    /// (the same rules as `rpz-guard learn`): new name servers and mail
    /// exchangers are enforced at once and pushed to --server by UPDATE.
    /// XDP mode needs --learn-outside; OpenFlow mode copies the resolvers'
    /// DNS to the controller (the resolvers must be --exempt sources).
    #[arg(long)]
    learn: bool,
    /// Live learning, XDP mode: the outside interface, where the answers to
    /// the resolvers arrive (gets a copy-only XDP program).
    #[arg(long, value_name = "IFACE")]
    learn_outside: Option<String>,
    /// Live learning: a resolver prefix whose DNS is learned from
    /// (repeatable; default: the --exempt prefixes).
    #[arg(long = "learn-resolver", value_name = "PREFIX")]
    learn_resolver: Vec<Prefix>,
    /// Live learning: trust starts at these root hints (BIND root-hints
    /// format) instead of the built-in root servers.
    #[arg(long, value_name = "FILE")]
    learn_root_hints: Option<PathBuf>,
    /// Live learning: journal of entries not yet confirmed by the zone,
    /// re-read at start so none is lost across a restart (default
    /// <state dir>/live-learned.journal; `journal = ""` in the config file
    /// keeps none).
    #[arg(long, value_name = "PATH")]
    learn_journal: Option<PathBuf>,
    /// Live learning: enforce new entries locally only, never UPDATE the primary.
    #[arg(long)]
    learn_no_push: bool,
    /// Live learning, OpenFlow mode: hold (default: an answer toward a
    /// resolver goes to the controller only and is released once its
    /// learned flows are installed, so the client's first SYN finds them)
    /// or copy (forwarded at once, copied to the controller).
    #[arg(long, value_name = "hold|copy")]
    learn_openflow_answers: Option<guard_user::config::AnswerHandling>,
    /// How a miss reaches userspace in XDP mode: afxdp (hold the packet,
    /// decide, release it; falls back to ringbuf when AF_XDP is unavailable)
    /// or ringbuf (drop it and ask; the retransmission passes).
    #[arg(long, value_name = "afxdp|ringbuf")]
    miss_transport: Option<guard_user::config::MissTransport>,
    /// AF_XDP hold path: packets held at once per RX queue (more: drop and ask).
    #[arg(long, value_name = "N")]
    hold_queue: Option<usize>,
    /// AF_XDP hold path: longest wait for a decision before a held packet is dropped.
    #[arg(long, value_name = "MS")]
    hold_timeout_ms: Option<u64>,
}

/// Exit codes and where settings come from, for every operator command.
const OPS_AFTER_HELP: &str = "\
The primary, zone and TSIG key come from the same config file as `run`
(--config, default /etc/rpz-guard/rpz-guard.toml when it exists: rpz.server,
rpz.zone, rpz.tsig_key, status.socket); flags override it.

Exit codes:
  0  done
  1  other failure (unreadable config or key file, SERVFAIL, a bad answer)
  2  bad usage: a bad address, prefix, class or duration; no server or key
  3  the RPZ primary cannot be reached (connection refused, timeout)
  4  the primary refused: the TSIG key (BADKEY, BADSIG, BADTIME) or its ACL
     (REFUSED, NOTAUTH)
  5  conflict with the zone: revoke of an entry that is not there, allow of
     a denied address, or the entry kept changing meanwhile

Examples:
  rpz-guard allow 203.0.113.9 --class smtp --expires 7d --comment 'ticket 4711'
  rpz-guard allow 198.51.100.0/24 --class dns
  rpz-guard deny 192.0.2.66
  rpz-guard revoke 203.0.113.9
  rpz-guard list --class smtp --expiring-within 2d";

/// `explain`'s help epilogue: the same, plus what `explain` exits with.
const EXPLAIN_AFTER_HELP: &str = "\
The primary, zone, TSIG key and status socket come from the same config file
as `run` (--config, default /etc/rpz-guard/rpz-guard.toml when it exists);
flags override it.

Exit codes: 0 when at least one part answered (also for an address that is
unknown everywhere); 2 for a bad address; otherwise the code of the primary's
failure (3 unreachable, 4 refused, 1 other).

Example: mail to 203.0.113.9 is bouncing:
  rpz-guard explain 203.0.113.9            # why: not registered? denied? wrong class?
  rpz-guard allow 203.0.113.9 --class smtp --comment 'partner relay, ticket 4711'";

/// Where the operator commands find the primary, zone, key and daemon.
#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Config file to take rpz.server, rpz.zone, rpz.tsig_key and
    /// status.socket from [default: /etc/rpz-guard/rpz-guard.toml, when it exists].
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The RPZ primary: ADDR, ADDR:PORT or [V6ADDR]:PORT (port 53 by default).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = guard_user::ops::parse_server)]
    server: Option<SocketAddr>,
    /// The policy zone [default: rpz.zone of the config, else rpz.example.com].
    #[arg(long, value_name = "NAME")]
    zone: Option<String>,
    /// TSIG key file (BIND `key` syntax, `tsig-keygen` output).
    #[arg(long, value_name = "FILE")]
    tsig_key: Option<PathBuf>,
}

impl TargetArgs {
    fn spec(&self, socket: Option<PathBuf>) -> guard_user::ops::TargetSpec {
        guard_user::ops::TargetSpec {
            config: self.config.clone(),
            server: self.server,
            zone: self.zone.clone(),
            tsig_key: self.tsig_key.clone(),
            socket,
        }
    }
}

/// A class named on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ClassArg {
    /// Name server (RPZ answer 127.0.0.1): DNS may pass toward it.
    Dns,
    /// Mail exchanger (RPZ answer 127.0.0.25): SMTP and DNS may pass toward it.
    Smtp,
}

impl From<ClassArg> for Classes {
    fn from(c: ClassArg) -> Classes {
        match c {
            ClassArg::Dns => Classes::DNS,
            ClassArg::Smtp => Classes::SMTP,
        }
    }
}

#[derive(Args, Debug)]
struct AllowArgs {
    /// The destination: an address (203.0.113.9, 2001:db8::25) or a prefix
    /// (198.51.100.0/24).
    #[arg(value_name = "ADDR|PREFIX", value_parser = guard_user::ops::parse_target)]
    target: Prefix,
    /// What it may receive: dns (a name server) or smtp (a mail exchanger);
    /// repeat, or give dns,smtp, for both.
    #[arg(long, value_enum, required = true, value_delimiter = ',')]
    class: Vec<ClassArg>,
    /// Remove the entry then (ageing does it): a duration from now (90m,
    /// 12h, 7d, 1d12h) or a UTC time (2026-12-31, 2026-12-31T18:00:00Z,
    /// @UNIXSECONDS). Without it the entry never expires.
    #[arg(long, value_name = "DURATION|TIME")]
    expires: Option<String>,
    /// A note kept with the entry (at most 200 bytes), e.g. a ticket number.
    #[arg(long, value_name = "TEXT")]
    comment: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target_args: TargetArgs,
}

#[derive(Args, Debug)]
struct ChangeArgs {
    /// The destination: an address (203.0.113.9, 2001:db8::25) or a prefix
    /// (198.51.100.0/24).
    #[arg(value_name = "ADDR|PREFIX", value_parser = guard_user::ops::parse_target)]
    target: Prefix,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target_args: TargetArgs,
}

#[derive(Args, Debug)]
struct ExplainArgs {
    /// The destination address.
    #[arg(value_name = "ADDR")]
    addr: std::net::IpAddr,
    /// Print everything as one JSON object.
    #[arg(long)]
    json: bool,
    /// The daemon's status socket [default: status.socket of the config,
    /// else /run/rpz-guard/rpz-guard.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(flatten)]
    target_args: TargetArgs,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Only entries holding this class.
    #[arg(long, value_enum)]
    class: Option<ClassArg>,
    /// Only entries that expire within this long (90m, 12h, 7d): manual
    /// entries with an expiry, and learned entries whose last confirmation
    /// is older than max_age minus this.
    #[arg(long, value_name = "DURATION", value_parser = guard_user::ops::when::parse_duration)]
    expiring_within: Option<u64>,
    /// Print the entries as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target_args: TargetArgs,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Status socket of the daemon.
    #[arg(long, default_value = "/run/rpz-guard/rpz-guard.sock")]
    socket: PathBuf,
    /// Print the raw JSON report.
    #[arg(long, conflicts_with = "metrics")]
    json: bool,
    /// Print Prometheus metrics instead.
    #[arg(long)]
    metrics: bool,
}

/// Learn legitimate name servers (class DNS, RPZ 127.0.0.1) and mail
/// exchangers (class SMTP, RPZ 127.0.0.25) from border DNS captures.
///
/// Rules: trust starts at the root servers; a matched response from a trusted
/// server that delegates (NS records) makes the NS names known and their
/// addresses (glue, or later matched A/AAAA answers from trusted servers)
/// trusted name servers; a matched MX answer from a trusted server makes its
/// exchanges mail hosts, whose addresses (additional section or later matched
/// answers, following CNAMEs) get class SMTP. Nothing else teaches anything:
/// unmatched responses, untrusted servers, negative answers.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  rpz-guard learn border.pcap --zone-file rpz.db\n  \
tcpdump -w - port 53 | rpz-guard learn - --summary-json -\n  \
rpz-guard learn captures/ --update 192.0.2.53:53 --tsig-key rpz.key --zone rpz.corp.example")]
struct LearnArgs {
    /// Capture files (pcap or pcapng), directories (every file in them), or
    /// `-` for standard input. Files are read in the order of their first
    /// packet's timestamp.
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<PathBuf>,
    /// Write the allow set as an RPZ zone file (IPv4 hosts as
    /// `a.b.c.d.<zone>`, IPv6 in `rpz-ip` form).
    #[arg(long, value_name = "PATH")]
    zone_file: Option<PathBuf>,
    /// Origin of the policy zone.
    #[arg(long, value_name = "NAME", default_value = "rpz.example.com")]
    zone: String,
    /// Add the entries the zone lacks to the RPZ primary at ADDR:PORT by
    /// TSIG-signed dynamic UPDATE (the zone is read by AXFR first), each
    /// with its lifetime TXT (first and last seen = the capture time of the
    /// answer, its TTL and the answer), as live learning writes them; an
    /// entry the zone holds gets its last-seen time refreshed; a denied one
    /// is never added.
    #[arg(long, value_name = "ADDR:PORT", requires = "tsig_key")]
    update: Option<SocketAddr>,
    /// BIND key file (`tsig-keygen` output) for --update.
    #[arg(long, value_name = "FILE")]
    tsig_key: Option<PathBuf>,
    /// Write a JSON summary (counters, malformed input by reason, entries per
    /// class, elapsed time, MB/s) to PATH, or `-` for standard output.
    #[arg(long, value_name = "PATH|-")]
    summary_json: Option<PathBuf>,
    /// Start trust from this hints file (BIND root-hints format) instead of
    /// the built-in 13 root servers.
    #[arg(long, value_name = "FILE")]
    root_hints: Option<PathBuf>,
    /// Also trust the servers in FILE (root-hints format), e.g. TLD servers
    /// the resolver already knew when a capture starts mid-stream, or the
    /// upstream resolvers it forwards to. Like the root servers, they become
    /// class DNS entries themselves. Repeatable.
    #[arg(long, value_name = "FILE")]
    trust_initial: Vec<PathBuf>,
    /// Seconds a query waits for its response; older queries expire.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    window: f64,
    /// Never show a progress bar (it shows only when stderr is a terminal).
    #[arg(long)]
    quiet: bool,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// File settings overridden by flags.
fn merge(args: RunArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        // Validated after the flags are applied: a flag may supply what the file lacks.
        Some(p) => Config::read_unvalidated(p)?,
        None => Config::default(),
    };
    let e = &mut cfg.enforce;
    if let Some(m) = args.mode {
        e.mode = m;
    }
    if args.iface.is_some() {
        e.iface = args.iface;
    }
    if let Some(m) = args.xdp_mode {
        e.xdp_mode = m;
    }
    e.count_only |= args.count_only;
    if args.pin_dir.is_some() {
        e.pin_dir = args.pin_dir;
        e.pin = true;
    }
    if args.no_pin {
        e.pin = false;
        e.pin_dir = None;
    }
    let r = &mut cfg.rpz;
    if let Some(z) = args.zone {
        r.zone = z;
    }
    if args.zone_file.is_some() {
        r.zone_file = args.zone_file;
        r.server = None;
    }
    if args.server.is_some() {
        r.server = args.server;
        r.zone_file = None;
    }
    if args.tsig_key.is_some() {
        r.tsig_key = args.tsig_key;
    }
    if args.notify_listen.is_some() {
        r.notify_listen = args.notify_listen;
    }
    if let Some(p) = args.poll_interval {
        r.poll_interval_secs = p;
    }
    if !args.notify_allow_from.is_empty() {
        r.notify_allow_from = Some(args.notify_allow_from);
    }
    if let Some(d) = args.state_dir {
        r.state_dir = d;
    }
    if args.no_snapshot {
        r.snapshot = false;
    }
    if !args.exempt.is_empty() {
        cfg.policy.exempt_sources = args.exempt;
    }
    if !args.exempt_mac.is_empty() {
        cfg.policy.exempt_macs = args.exempt_mac;
    }
    if args.no_exempt_route_check {
        cfg.policy.exempt_route_check = false;
    }
    if !args.exempt_in_port.is_empty() {
        cfg.openflow.exempt_in_ports = args.exempt_in_port;
    }
    if !args.internal.is_empty() {
        cfg.policy.internal_networks = args.internal;
    }
    if let Some(ev) = args.events {
        cfg.events.output = ev;
    }
    if let Some(f) = args.events_format {
        cfg.events.format = f;
    }
    if let Some(s) = args.status_socket {
        cfg.status.socket = s;
    }
    if args.metrics_listen.is_some() {
        cfg.status.metrics_listen = args.metrics_listen;
    }
    if let Some(l) = args.openflow_listen {
        cfg.openflow.listen = l;
    }
    let l = &mut cfg.learn;
    l.enabled |= args.learn;
    if args.learn_outside.is_some() {
        l.outside_iface = args.learn_outside;
    }
    if !args.learn_resolver.is_empty() {
        l.resolvers = args.learn_resolver;
    }
    if args.learn_root_hints.is_some() {
        l.root_hints = args.learn_root_hints;
    }
    if args.learn_journal.is_some() {
        l.journal = args.learn_journal;
    }
    if args.learn_no_push {
        l.push = false;
    }
    if let Some(a) = args.learn_openflow_answers {
        l.openflow_answers = a;
    }
    if let Some(t) = args.miss_transport {
        cfg.enforce.miss_transport = t;
    }
    if let Some(n) = args.hold_queue {
        cfg.afxdp.hold_queue = n;
    }
    if let Some(ms) = args.hold_timeout_ms {
        cfg.afxdp.hold_timeout_ms = ms;
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = merge(args.clone())?;
    let cancel = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let c = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => {
                    // The file again, with the same flags on top of it.
                    tracing::info!("SIGHUP: reloading the configuration");
                    let fresh = merge(args.clone()).map_err(|e| error_text(&e));
                    if reload_tx.send(fresh).is_err() {
                        break;
                    }
                }
            }
        }
        c.cancel();
    });
    daemon::run_reloadable(cfg, cancel, reload_rx).await?;
    Ok(())
}

async fn learn(args: LearnArgs) -> anyhow::Result<()> {
    use guard_user::{learn, rpz};
    let window = std::time::Duration::try_from_secs_f64(args.window)
        .ok()
        .filter(|w| !w.is_zero())
        .with_context(|| format!("--window must be a positive number of seconds, got {}", args.window))?;
    let key = match (&args.update, &args.tsig_key) {
        (Some(_), Some(path)) => Some(rpz::tsig::TsigKey::from_file(path)?),
        _ => None,
    };
    let hints = learn::load_hints(args.root_hints.as_deref(), &args.trust_initial)?;
    // Kept for --update: hint servers are never pushed.
    let hint_servers = hints.clone();
    let opts = learn::LearnOptions {
        inputs: args.inputs,
        hints,
        window,
        progress: !args.quiet && learn::stderr_is_terminal(),
    };
    // The pipeline is CPU-bound and synchronous. With --update, each
    // entry's newest evidence goes into its lifetime TXT.
    let evidence = key.is_some();
    let outcome = tokio::task::spawn_blocking(move || {
        if evidence { learn::run_with_evidence(&opts) } else { learn::run(&opts) }
    })
    .await??;
    if let Some(path) = &args.zone_file {
        learn::output::write_zone_to_path(&outcome.allow, &args.zone, path)
            .context("writing the zone file")?;
    }
    if let Some(path) = &args.summary_json {
        learn::output::write_summary(&outcome.summary, path).context("writing the summary")?;
    }
    let s = &outcome.summary;
    eprintln!(
        "learned {} entries ({} dns, {} smtp) from {} packets, {} matched responses, {} malformed, {:.1} MB/s",
        s.entries.total,
        s.entries.dns,
        s.entries.smtp,
        s.packets,
        s.matched,
        s.malformed_total(),
        s.mb_per_s
    );
    if let (Some(server), Some(key)) = (args.update, key) {
        let target = (server, args.zone.clone(), key);
        let r = learn::push::push_learned(
            &target,
            &outcome.allow,
            &hint_servers,
            &outcome.confirmed,
            std::time::Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("updating zone {} at {server}", args.zone))?;
        eprintln!(
            "update {}: added {} records in {} UPDATEs, {} already present, {} entries refreshed, {} denied (left out), {} hint servers (trusted, never pushed) (serial before {})",
            args.zone, r.added, r.updates, r.existing, r.refreshed, r.denied, r.hints, r.serial_before
        );
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let what = if args.metrics { "metrics" } else { "status" };
    let text = daemon::query_status(&args.socket, what).await?;
    if args.metrics || args.json {
        println!("{text}");
    } else {
        let report: daemon::StatusReport =
            serde_json::from_str(&text).context("daemon sent a malformed report")?;
        print!("{}", daemon::render_status(&report));
    }
    Ok(())
}

/// `allow`, `revoke`, `deny`.
async fn change(
    req: guard_user::ops::change::Request,
    args: &TargetArgs,
    json: bool,
) -> Result<(), OpsError> {
    use guard_user::ops::{change, when};
    let target = args.spec(None).resolve()?;
    let outcome = change::apply(&target, &req, when::now_secs()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
    } else {
        println!("{outcome}");
    }
    Ok(())
}

async fn allow(a: AllowArgs) -> Result<(), OpsError> {
    use guard_user::ops::{change::Request, when};
    let expires = match &a.expires {
        Some(e) => Some(when::parse_expiry(e, when::now_secs()).map_err(OpsError::Usage)?),
        None => None,
    };
    let classes = a.class.iter().fold(Classes::NONE, |c, k| c.union((*k).into()));
    let req = Request::Allow { prefix: a.target, classes, expires, note: a.comment };
    change(req, &a.target_args, a.json).await
}

async fn explain(a: ExplainArgs) -> Result<(), OpsError> {
    use guard_user::ops::{explain, when};
    let target = a.target_args.spec(a.socket.clone()).resolve()?;
    let (e, rpz_err) = explain::explain(&target, a.addr, when::now_secs()).await;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
    } else {
        print!("{}", e.render());
    }
    // Neither part answered: fail with the primary's error (its exit code).
    match (rpz_err, &e.router) {
        (Some(err), None) => Err(err),
        _ => Ok(()),
    }
}

async fn list(a: ListArgs) -> Result<(), OpsError> {
    use guard_user::ops::{list, when};
    let target = a.target_args.spec(None).resolve()?;
    let now = when::now_secs();
    let filter = list::ListFilter { class: a.class.map(Into::into), expiring_within: a.expiring_within };
    let listing = list::list(&target, &filter, now).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&listing).unwrap_or_default());
    } else {
        print!("{}", listing.render(now));
    }
    Ok(())
}

/// What the top page says beyond the flags: files, signals, related pages.
const MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/rpz\-guard/rpz\-guard.toml\fR
The configuration read by the packaged service (\fBrun \-\-config\fR); every key with its
default is in /usr/share/doc/rpz\-guard/examples/rpz\-guard.example.toml.
Validate it with \fBrpz\-guard check\-config\fR.
.TP
\fI/run/rpz\-guard/rpz\-guard.sock\fR
The status socket asked by \fBrpz\-guard status\fR.
.TP
\fI/sys/fs/bpf/rpz\-guard\fR
Pinned XDP program, link and maps (enforcement continues while the daemon is down).
.TP
\fI/var/log/rpz\-guard/events.jsonl\fR
Detection events, one JSON object per line; the schema is in
/usr/share/doc/rpz\-guard/events.schema.json.
.SH SIGNALS
SIGTERM and SIGINT stop the daemon; with a pin directory the program keeps enforcing.
SIGHUP reloads the configuration (file and flags) without detaching: the [policy] and
[events] sections change in place and the events file is reopened (log rotation); a
change of any other key (the interface, the mode, ...) is refused, naming the keys,
and the running configuration stays.
.SH SEE ALSO
\fBrpz\-guard\-run\fR(1), \fBrpz\-guard\-status\fR(1), \fBrpz\-guard\-learn\fR(1),
\fBrpz\-guard\-explain\fR(1), \fBrpz\-guard\-allow\fR(1), \fBrpz\-guard\-revoke\fR(1),
\fBrpz\-guard\-deny\fR(1), \fBrpz\-guard\-list\fR(1),
\fBnamed.conf\fR(5), \fBsystemctl\fR(1); the operator's guide in /usr/share/doc/rpz\-guard/.
"#;

/// `rpz-guard man`: the top page on stdout, or every page into `out_dir`.
fn man_pages(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Subcommand pages are named after their display name (rpz-guard-run).
    cmd.build();
    let mut top = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut top)?;
    top.extend_from_slice(MAN_EXTRA.as_bytes());
    let Some(dir) = out_dir else {
        use std::io::Write as _;
        std::io::stdout().write_all(&top)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for sub in cmd.get_subcommands() {
        let page = clap_mangen::Man::new(sub.clone())
            .generate_to(dir)
            .with_context(|| format!("writing a page into {}", dir.display()))?;
        println!("{}", page.display());
    }
    let page = dir.join("rpz-guard.1");
    std::fs::write(&page, top).with_context(|| format!("writing {}", page.display()))?;
    println!("{}", page.display());
    Ok(())
}

/// An error and its causes, each said once: many of our errors already
/// name their cause in their own text (so a log line of the error alone
/// is complete), and `{:#}` would repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Operator commands: errors carry their exit code (ops::exit).
    let ops = |r: Result<(), OpsError>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    };
    let other = |r: anyhow::Result<()>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    };
    rt.block_on(async {
        match cli.command {
            Command::Allow(a) => ops(allow(a).await),
            Command::Revoke(a) => {
                let req = guard_user::ops::change::Request::Revoke { prefix: a.target };
                ops(change(req, &a.target_args, a.json).await)
            }
            Command::Deny(a) => {
                let req = guard_user::ops::change::Request::Deny { prefix: a.target };
                ops(change(req, &a.target_args, a.json).await)
            }
            Command::Explain(a) => ops(explain(a).await),
            Command::List(a) => ops(list(a).await),
            Command::Run(a) => other(run(*a).await),
            Command::Status(a) => other(status(a).await),
            Command::Learn(a) => other(learn(*a).await),
            Command::CheckConfig { file } => other((|| {
                let cfg = Config::load(&file)?;
                print!("{}", toml::to_string_pretty(&cfg)?);
                Ok(())
            })()),
            Command::Unpin { dir } => other((|| {
                guard_user::xdp::remove_pins(&dir)?;
                println!("removed pinned rpz-guard state in {}", dir.display());
                Ok(())
            })()),
            Command::Completions { shell } => {
                let mut cmd = Cli::command();
                clap_complete::generate(shell, &mut cmd, "rpz-guard", &mut std::io::stdout());
                ExitCode::SUCCESS
            }
            Command::Man { out_dir } => other(man_pages(out_dir.as_deref())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the zone first: {0}")]
    struct Inline(#[source] std::io::Error);

    /// A cause the error already names is said once; one it does not is added.
    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::other("10.0.0.53:53 answered NOTAUTH (TSIG BADSIG)");
        let e = anyhow::Error::new(Inline(io())).context("updating zone rpz.example.com");
        assert_eq!(
            error_text(&e),
            "updating zone rpz.example.com: reading the zone first: 10.0.0.53:53 answered NOTAUTH (TSIG BADSIG)"
        );
        let plain = anyhow::Error::new(io()).context("reading /etc/rpz-guard.toml");
        assert_eq!(
            error_text(&plain),
            "reading /etc/rpz-guard.toml: 10.0.0.53:53 answered NOTAUTH (TSIG BADSIG)"
        );
    }
}
