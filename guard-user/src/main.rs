//! The `rpz-guard` command line: argument parsing, then the library.
use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use guard_user::learn;

/// rpz-guard: allow DNS and SMTP only toward servers the organisation's
/// resolver legitimately learned, kept in a BIND Response Policy Zone.
#[derive(Debug, Parser)]
#[command(name = "rpz-guard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Learn the allow set from border DNS captures (pcap/pcapng).
    Learn(LearnArgs),
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
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  rpz-guard learn border.pcap --zone-file rpz.db\n  \
tcpdump -w - port 53 | rpz-guard learn - --summary-json -\n  \
rpz-guard learn captures/ --zone rpz.corp.example --zone-file rpz.db --summary-json summary.json")]
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
    /// Write a JSON summary (counters, malformed input by reason, entries per
    /// class, elapsed time, MB/s) to PATH, or `-` for standard output.
    #[arg(long, value_name = "PATH|-")]
    summary_json: Option<PathBuf>,
    /// Start trust from this hints file (BIND root-hints format) instead of
    /// the built-in 13 root servers.
    #[arg(long, value_name = "FILE")]
    root_hints: Option<PathBuf>,
    /// Also trust the servers in FILE (root-hints format), e.g. TLD servers
    /// the resolver already knew when a capture starts mid-stream. Repeatable.
    #[arg(long, value_name = "FILE")]
    trust_initial: Vec<PathBuf>,
    /// Seconds a query waits for its response; older queries expire.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    window: f64,
    /// Never show a progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Learn(args) => run_learn(args),
    }
}

fn run_learn(args: LearnArgs) -> anyhow::Result<()> {
    if !(args.window.is_finite() && args.window > 0.0) {
        anyhow::bail!("--window must be a positive number of seconds, got {}", args.window);
    }
    let hints = learn::load_hints(args.root_hints.as_deref(), &args.trust_initial)?;
    let opts = learn::LearnOptions {
        inputs: args.inputs,
        hints,
        window: Duration::from_secs_f64(args.window),
        progress: !args.quiet && learn::stderr_is_terminal(),
    };
    let outcome = learn::run(&opts)?;
    if let Some(path) = &args.zone_file {
        learn::output::write_zone_to_path(&outcome.allow, &args.zone, path)
            .context("writing the zone file")?;
    }
    if let Some(path) = &args.summary_json {
        learn::output::write_summary(&outcome.summary, path).context("writing the summary")?;
    }
    let s = &outcome.summary;
    if args.summary_json.as_deref().is_none_or(|p| p.as_os_str() != "-") {
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
    }
    Ok(())
}
