//! `cargo xtask demo`: rpz-guard on the built-in lab, start to finish.
//!
//! Brings up the lab, registers a name server and a mail exchanger in the
//! BIND RPZ (as the learner would), starts the XDP enforcer on the router,
//! shows a legitimate mail delivery pass and a bot's direct SMTP and direct
//! DNS get blocked and reported, registers a new mail server live, then
//! shows live learning (the pc resolves a mail domain no capture ever saw,
//! through the organisation's resolver, and mails it at once, with no
//! `learn` step), prints the status table, and tears everything down.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard_tests::{Lab, LabAddrs, LabChild, LabConfig, Role};

use crate::{
    command::{cargo, repo_root, require_root, run_step},
    setup,
};

/// Options of `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
    /// Keep the lab running at the end (remove with `cargo xtask lab down --prefix demo`).
    #[arg(long)]
    pub keep: bool,
}

/// ANSI styling only on a terminal.
fn paint(code: &str, text: &str) -> String {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
}

fn say(step: &str) {
    println!("\n{}", paint("1", &format!("== {step}")));
}

fn ok(line: &str) {
    println!("   {} {line}", paint("32", "✔"));
}

fn blocked(line: &str) {
    println!("   {} {line}", paint("31", "✘"));
}

/// Runs the demo.
pub fn run(args: &Args) -> Result<()> {
    require_root("demo")?;
    if !args.no_setup {
        setup::run(&setup::Args::default())?;
    }
    say("Building rpz-guard (release, with the embedded XDP program)");
    run_step("build", cargo().args(["build", "--release", "-p", "guard-user", "--bin", "rpz-guard"]))?;
    let bin = repo_root().join("target/release/rpz-guard");

    // A leftover demo lab from an interrupted run is removed first.
    let _ = Lab::down_prefix("demo");
    say("Bringing up the lab: pc and bot behind a router, BIND with the RPZ, an 'internet' namespace");
    let lab = Lab::up(LabConfig::with_prefix("demo")).context("lab up")?;
    let result = demo(&lab, &bin);
    if args.keep {
        println!("\nlab kept: cargo xtask lab down --prefix demo");
        lab.persist();
    } else {
        say("Tearing down");
        drop(lab);
        ok("namespaces, BIND and rpz-guard are gone");
    }
    result
}

fn demo(lab: &Lab, bin: &std::path::Path) -> Result<()> {
    let a = lab.addrs().clone();
    let ns_ip = LabAddrs::inet_v4(53);
    let mx_ip = LabAddrs::inet_v4(25);
    let mx6 = LabAddrs::inet_v6(0x25);
    say("Registering what the organisation's resolver learned (TSIG-signed UPDATE to BIND)");
    for (ip, answer, what) in
        [(IpAddr::V4(ns_ip), "127.0.0.1", "name server"), (IpAddr::V4(mx_ip), "127.0.0.25", "mail exchanger")]
    {
        lab.nsupdate(&[&format!("update add {ip}.rpz.example.com. 300 IN A {answer}")])?;
        ok(&format!("{ip:<15} A {answer:<11} ({what})"));
    }
    let owner6 = "128.25.zz.100.db8.2001.rpz-ip.rpz.example.com.";
    lab.nsupdate(&[&format!("update add {owner6} 300 IN A 127.0.0.25")])?;
    ok(&format!("{mx6:<15} A 127.0.0.25  (mail exchanger, IPv6)"));

    say(
        "An authoritative DNS world outside (root and demo. on 192.0.2.1), a recursive resolver inside (10.x.0.54)",
    );
    let world = live_world(lab)?;
    ok(&format!(
        "fresh.demo. MX 10 mx.fresh.demo.  mx.fresh.demo. A {FRESH_MX}  (nobody has resolved it yet)"
    ));

    say(
        "Starting rpz-guard on the router (XDP on in0, RPZ by AXFR + NOTIFY/IXFR from BIND, live learning: copy program on out0)",
    );
    let events = lab.state_dir().join("events.jsonl");
    let socket = lab.state_dir().join("rpz-guard.sock");
    let daemon = start(lab, bin, &events, &socket, &world.learn_args)?;
    let st = status_text(bin, &socket)?;
    for l in st.lines().take(4) {
        println!("   {l}");
    }

    say("The pc delivers mail to its domain's MX (resolved through the organisation's DNS)");
    let delivered = |role, to: SocketAddr| -> Result<String> {
        let s = lab.tcp_connect(role, to, Duration::from_secs(3)).map_err(|e| anyhow::anyhow!("{e}"))?;
        guard_tests::smtp::deliver(s).map_err(|e| anyhow::anyhow!(e))
    };
    match delivered(Role::Pc, SocketAddr::new(IpAddr::V4(mx_ip), 25)) {
        Ok(banner) => ok(&format!("SMTP {mx_ip}:25 delivered ({})", banner.trim())),
        Err(e) => bail!("legitimate mail delivery failed: {e}"),
    }
    match delivered(Role::Pc, SocketAddr::new(IpAddr::V6(mx6), 587)) {
        Ok(_) => ok(&format!("SMTP [{mx6}]:587 delivered")),
        Err(e) => bail!("legitimate IPv6 mail delivery failed: {e}"),
    }
    match lab.dig_query(Role::Pc, IpAddr::V4(ns_ip), "www.example.net", "A") {
        Ok(_) => ok(&format!("DNS query to registered name server {ns_ip} answered")),
        Err(e) => bail!("query to a registered name server failed: {e}"),
    }

    say("The bot talks straight to hard-coded addresses");
    let relay = LabAddrs::inet_v4_alt(66);
    for port in [25, 587] {
        match lab.tcp_connect(
            Role::Bot,
            SocketAddr::new(IpAddr::V4(relay), port),
            Duration::from_millis(1500),
        ) {
            Ok(_) => bail!("bot reached {relay}:{port}: not blocked"),
            Err(_) => blocked(&format!("SMTP {relay}:{port} blocked (never resolved as an MX)")),
        }
    }
    match lab.tcp_connect(Role::Bot, SocketAddr::new(IpAddr::V4(ns_ip), 25), Duration::from_millis(1500)) {
        Ok(_) => bail!("bot reached SMTP on a name server: not blocked"),
        Err(_) => blocked(&format!("SMTP {ns_ip}:25 blocked (a name server, not a mail exchanger)")),
    }
    let rogue = LabAddrs::inet_v4_alt(99);
    match lab.dig_query(Role::Bot, IpAddr::V4(rogue), "cc.example", "A") {
        Ok(_) => bail!("bot's direct DNS to {rogue} was answered: not blocked"),
        Err(_) => blocked(&format!("DNS to {rogue} blocked (a direct external query)")),
    }

    say("A new mail server is registered at BIND; enforcement follows without a restart");
    let new_mx = LabAddrs::inet_v4_alt(77);
    let to = SocketAddr::new(IpAddr::V4(new_mx), 465);
    let t = Instant::now();
    lab.nsupdate(&[&format!("update add {new_mx}.rpz.example.com. 300 IN A 127.0.0.25")])?;
    let mut open = false;
    while t.elapsed() < Duration::from_secs(5) {
        if lab.tcp_connect(Role::Pc, to, Duration::from_millis(200)).is_ok() {
            open = true;
            break;
        }
    }
    if !open {
        bail!("{to} still blocked 5 s after the update");
    }
    ok(&format!("{to} reachable {} ms after the UPDATE", t.elapsed().as_millis()));

    say(
        "Live learning: the pc resolves a mail domain no capture ever saw and mails it at once (no `learn` step)",
    );
    let resolver = IpAddr::V4(world.resolver);
    let rpz_has = |ip: std::net::Ipv4Addr| -> Result<bool> {
        let d = lab.dig_query(Role::Dns, IpAddr::V4(a.dns_v4), &format!("{ip}.rpz.example.com"), "A")?;
        Ok(d.status == "NOERROR")
    };
    if rpz_has(FRESH_MX)? {
        bail!("{FRESH_MX} is in the RPZ before anyone resolved it");
    }
    ok(&format!("the RPZ does not know {FRESH_MX}"));
    let mx = lab.dig_query(Role::Pc, resolver, "fresh.demo", "MX")?;
    ok(&format!("pc: dig MX fresh.demo @{resolver} → {}", mx.answers.join(", ")));
    let ad = lab.dig_query(Role::Pc, resolver, "mx.fresh.demo", "A")?;
    ok(&format!("pc: dig A mx.fresh.demo → {}", ad.answers.join(", ")));
    let t = Instant::now();
    match delivered(Role::Pc, SocketAddr::new(IpAddr::V4(FRESH_MX), 25)) {
        Ok(_) => ok(&format!(
            "SMTP {FRESH_MX}:25 delivered at once ({} ms, first SYN: the router learned the answer as it crossed)",
            t.elapsed().as_millis()
        )),
        Err(e) => bail!("mail to the freshly resolved {FRESH_MX} failed: {e}"),
    }
    let t = Instant::now();
    while !rpz_has(FRESH_MX)? {
        if t.elapsed() > Duration::from_secs(5) {
            bail!("{FRESH_MX} did not reach the RPZ within 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&format!(
        "{FRESH_MX}.rpz.example.com. A 127.0.0.25 is now at BIND (pushed by TSIG UPDATE; every router following the zone has it)"
    ));
    let stranger = LabAddrs::inet_v4_alt(126);
    match lab.tcp_connect(Role::Bot, SocketAddr::new(IpAddr::V4(stranger), 25), Duration::from_millis(1500)) {
        Ok(_) => bail!("bot reached {stranger}:25: not blocked"),
        Err(_) => blocked(&format!("bot: SMTP {stranger}:25 still blocked (nobody resolved it)")),
    }

    say("Detection events (JSON lines, one per blocked attempt; rate-limited per host)");
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    for l in text.lines().take(6) {
        println!("   {l}");
    }
    if text.lines().count() > 6 {
        println!("   … {} more", text.lines().count() - 6);
    }
    if !text.contains(&a.bot_v4.to_string()) {
        bail!("no detection event names the bot {}", a.bot_v4);
    }

    say("rpz-guard status");
    for l in status_text(bin, &socket)?.lines() {
        println!("   {l}");
    }
    say("Stopping rpz-guard (SIGTERM: detaches XDP, removes its socket)");
    let status = daemon.stop(Duration::from_secs(10))?;
    if !status.success() {
        bail!("rpz-guard exited with {status}");
    }
    ok("stopped cleanly");
    Ok(())
}

/// The mail host of the domain nobody resolved before the demo does.
const FRESH_MX: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 125);
/// The authoritative server of the demo world.
const AUTH: &str = "192.0.2.1";

/// The outside DNS world and the inside resolver, kept running.
struct LiveWorld {
    resolver: std::net::Ipv4Addr,
    learn_args: Vec<String>,
    _auth: LabChild,
    _resolver: LabChild,
}

/// An authoritative named for `.` and `demo.` in its own namespace behind
/// `inet` (the lab's `inet` answers DNS on every address itself), and a
/// recursive named on a second address of the `dns` host whose root hints
/// point at it. The resolver is exempt and is the one live learning
/// follows.
fn live_world(lab: &Lab) -> Result<LiveWorld> {
    let a = lab.addrs().clone();
    let auth_ns = lab.create_namespace("auth")?;
    let inet = lab.ns(Role::Inet);
    let ip = |args: &[&str]| guard_tests::netns::exec_ok_root(args).map(drop);
    ip(&[
        "-n", &inet, "link", "add", "name", "auth0", "type", "veth", "peer", "name", "eth0", "netns",
        &auth_ns,
    ])?;
    ip(&["-n", &inet, "addr", "add", "192.0.2.254/24", "dev", "auth0"])?;
    ip(&["-n", &inet, "link", "set", "auth0", "up"])?;
    ip(&["-n", &auth_ns, "addr", "add", &format!("{AUTH}/24"), "dev", "eth0"])?;
    ip(&["-n", &auth_ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &auth_ns, "route", "add", "default", "via", "192.0.2.254"])?;
    lab.exec_ok(Role::Inet, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let dir = lab.state_dir().join("demo-auth");
    std::fs::create_dir_all(&dir)?;
    let soa = |o: &str| {
        format!("$TTL 300\n{o} IN SOA a.root.demo. h.demo. 1 3600 600 86400 60\n{o} IN NS a.root.demo.\n")
    };
    std::fs::write(
        dir.join("root.zone"),
        format!("{}demo. IN NS a.root.demo.\na.root.demo. IN A {AUTH}\n", soa(".")),
    )?;
    std::fs::write(
        dir.join("demo.zone"),
        format!(
            "{}a.root.demo. IN A {AUTH}\nfresh.demo. IN MX 10 mx.fresh.demo.\nmx.fresh.demo. IN A {FRESH_MX}\n",
            soa("demo.")
        ),
    )?;
    let d = dir.display();
    std::fs::write(
        dir.join("named.conf"),
        format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; listen-on port 53 {{ {AUTH}; }}; \
             listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; }};\ncontrols {{ }};\n\
             zone \".\" {{ type primary; file \"root.zone\"; }};\nzone \"demo\" {{ type primary; file \"demo.zone\"; }};\n"
        ),
    )?;
    let conf = dir.join("named.conf").display().to_string();
    let auth =
        lab.spawn(Role::Inet, &["ip", "netns", "exec", &auth_ns, "named", "-g", "-n", "1", "-c", &conf])?;
    let resolver = std::net::Ipv4Addr::new(10, a.subnet, 0, 54);
    ip(&["-n", &lab.ns(Role::Dns), "addr", "add", &format!("{resolver}/24"), "dev", "eth0"])?;
    let rdir = lab.state_dir().join("demo-resolver");
    std::fs::create_dir_all(&rdir)?;
    let hints = rdir.join("root.hints");
    std::fs::write(&hints, format!(". 3600000 NS a.root.demo.\na.root.demo. 3600000 A {AUTH}\n"))?;
    let r = rdir.display();
    std::fs::write(
        rdir.join("named.conf"),
        format!(
            "options {{ directory \"{r}\"; pid-file \"{r}/named.pid\"; listen-on port 53 {{ {resolver}; }}; \
             listen-on-v6 {{ none; }}; recursion yes; allow-recursion {{ any; }}; dnssec-validation no; \
             query-source address {resolver}; }};\ncontrols {{ }};\nzone \".\" {{ type hint; file \"root.hints\"; }};\n"
        ),
    )?;
    let rconf = rdir.join("named.conf").display().to_string();
    let res = lab.spawn(Role::Dns, &["named", "-g", "-n", "1", "-c", &rconf])?;
    guard_tests::netns::wait_for_udp_dns(
        &lab.ns(Role::Pc),
        SocketAddr::new(IpAddr::V4(resolver), 53),
        Duration::from_secs(20),
    )
    .context("the demo resolver does not answer")?;
    let learn_args = vec![
        "--exempt".into(),
        format!("{resolver}/32"),
        "--learn".into(),
        "--learn-outside".into(),
        lab.router_outside_iface().into(),
        "--learn-resolver".into(),
        format!("{resolver}/32"),
        "--learn-root-hints".into(),
        hints.display().to_string(),
        "--learn-journal".into(),
        lab.state_dir().join("live.journal").display().to_string(),
    ];
    Ok(LiveWorld { resolver, learn_args, _auth: auth, _resolver: res })
}

fn start(
    lab: &Lab,
    bin: &std::path::Path,
    events: &std::path::Path,
    socket: &std::path::Path,
    extra: &[String],
) -> Result<LabChild> {
    let a = lab.addrs();
    let server = format!("{}:53", a.dns_v4);
    let notify = format!("{}:{}", a.router_in_v4, lab.notify_port());
    let key = lab.tsig_key_file();
    let exempt = format!("{}/32", a.dns_v4);
    let args: Vec<String> = vec![
        bin.display().to_string(),
        "run".into(),
        // The lab's own state directory: the demo leaves nothing in the
        // host's /var/lib/rpz-guard.
        "--state-dir".into(),
        lab.state_dir().join("rpz-guard-state").display().to_string(),
        "--iface".into(),
        lab.router_inside_iface().into(),
        "--server".into(),
        server,
        "--tsig-key".into(),
        key.display().to_string(),
        "--notify-listen".into(),
        notify,
        "--exempt".into(),
        exempt,
        "--events".into(),
        events.display().to_string(),
        "--status-socket".into(),
        socket.display().to_string(),
    ];
    let argv: Vec<&str> = args.iter().chain(extra).map(String::as_str).collect();
    let mut child = lab.spawn(Role::Router, &argv)?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if socket.exists() && status_text(bin, socket).is_ok() {
            return Ok(child);
        }
        if !child.is_running() {
            bail!("rpz-guard exited at start:\n{}", child.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("rpz-guard did not become ready:\n{}", child.log())
}

fn status_text(bin: &std::path::Path, socket: &std::path::Path) -> Result<String> {
    let out = Command::new(bin).arg("status").arg("--socket").arg(socket).output()?;
    if !out.status.success() {
        bail!("rpz-guard status: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
