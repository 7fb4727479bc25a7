//! `cargo xtask lab up|down|status`: the reference topology for manual use,
//! the demo and benchmarks (see the `guard-tests` crate for what it holds).
use anyhow::{Context, Result};
use clap::Subcommand;
use guard_tests::{Lab, LabConfig, ResponderMode, Role, dns::FixedAnswers, responder::Responder};

use crate::command::require_root;

/// Options of `cargo xtask lab`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Create the lab and leave it running.
    Up {
        /// Namespace prefix (1-8 of a-z0-9).
        #[arg(long, default_value = "rg")]
        prefix: String,
        /// Address number n of 10.n.0.0/16 (derived from the prefix if absent).
        #[arg(long)]
        subnet: Option<u8>,
        /// Do not start BIND.
        #[arg(long)]
        no_bind: bool,
    },
    /// Remove everything of a lab, also after a crash.
    Down {
        /// Namespace prefix.
        #[arg(long, default_value = "rg")]
        prefix: String,
    },
    /// Show what exists (one prefix, or all labs).
    Status {
        /// Namespace prefix; all labs when absent.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Serve the inet listeners in the current namespace (started by `up`).
    #[command(hide = true)]
    Responder,
}

/// Runs `cargo xtask lab …`.
pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::Up { prefix, subnet, no_bind } => up(&prefix, subnet, !no_bind),
        Action::Down { prefix } => {
            require_root("lab down")?;
            let report = Lab::down_prefix(&prefix)?;
            if report.namespaces.is_empty() && report.ended.is_empty() && !report.state_removed {
                println!("lab {prefix}: nothing to remove");
            } else {
                for e in &report.ended {
                    println!("lab {prefix}: ended process {e}");
                }
                println!("lab {prefix}: removed namespaces: {}", report.namespaces.join(" "));
            }
            Ok(())
        }
        Action::Status { prefix } => {
            let all = Lab::status(prefix.as_deref());
            if all.iter().all(|s| s.namespaces.is_empty() && s.state_dir.is_none()) {
                println!("no lab{}", prefix.map(|p| format!(" with prefix {p}")).unwrap_or_default());
            }
            for s in all.iter().filter(|s| !s.namespaces.is_empty() || s.state_dir.is_some()) {
                print!("{s}");
            }
            Ok(())
        }
        Action::Responder => {
            let responder = Responder::start(None, FixedAnswers::default())?;
            responder.wait_forever()
        }
    }
}

fn up(prefix: &str, subnet: Option<u8>, bind: bool) -> Result<()> {
    require_root("lab up")?;
    let exe = std::env::current_exe().context("locate the xtask binary")?;
    let mut config = LabConfig::with_prefix(prefix).bind(bind).responder(ResponderMode::Command(vec![
        exe.into(),
        "lab".into(),
        "responder".into(),
    ]));
    config.subnet = subnet;
    let lab = Lab::up(config)?;
    let a = lab.addrs().clone();
    println!("lab {prefix} is up (state in {})", lab.state_dir().display());
    for role in Role::ALL {
        println!("  {:<7} namespace {}", role.name(), lab.ns(role));
    }
    println!("  pc      {} / {}   bot {} / {}", a.pc_v4, a.pc_v6, a.bot_v4, a.bot_v6);
    println!(
        "  router  {} {} / {} (enforcement interface)   {} {}",
        lab.router_inside_iface(),
        a.router_in_v4,
        a.router_in_v6,
        lab.router_outside_iface(),
        a.router_out_v4
    );
    if bind {
        println!(
            "  BIND    {} / {}  zone {}  TSIG key {} in {}",
            a.dns_v4,
            a.dns_v6,
            lab.rpz_zone(),
            lab.tsig_key_name(),
            lab.tsig_key_file().display()
        );
    }
    println!("  inet    198.51.100.0/24 203.0.113.0/24 2001:db8:100::/64: smtp 25/465/587, dns 53, echo 7");
    println!("try:     ip netns exec {} dig @{} 198.51.100.25", lab.ns(Role::Pc), a.dns_v4);
    println!("remove:  cargo xtask lab down --prefix {prefix}");
    lab.persist();
    Ok(())
}
