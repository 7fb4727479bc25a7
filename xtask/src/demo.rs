//! `cargo xtask demo`: rpz-guard on the built-in lab, start to finish.
//!
//! Brings up the lab, registers a name server and a mail exchanger in the
//! BIND RPZ (as the learner would), starts the XDP enforcer on the router,
//! shows a legitimate mail delivery pass and a bot's direct SMTP and direct
//! DNS get blocked and reported, registers a new mail server live, prints
//! the status table, and tears everything down.

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

    say("Starting rpz-guard on the router (XDP on in0, RPZ by AXFR + NOTIFY/IXFR from BIND)");
    let events = lab.state_dir().join("events.jsonl");
    let socket = lab.state_dir().join("rpz-guard.sock");
    let daemon = start(lab, bin, &events, &socket)?;
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

fn start(
    lab: &Lab,
    bin: &std::path::Path,
    events: &std::path::Path,
    socket: &std::path::Path,
) -> Result<LabChild> {
    let a = lab.addrs();
    let server = format!("{}:53", a.dns_v4);
    let notify = format!("{}:{}", a.router_in_v4, lab.notify_port());
    let key = lab.tsig_key_file();
    let exempt = format!("{}/32", a.dns_v4);
    let args: Vec<String> = vec![
        bin.display().to_string(),
        "run".into(),
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
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
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
