//! `cargo xtask gen-pcap --size 200MB --out FILE`: a realistic border DNS
//! capture with known content (see `guard_user::learn::synth`), for the
//! learner's benchmarks and for trying `rpz-guard learn`.

use anyhow::Result;

use crate::command::{cargo, run_step};

/// Options of `cargo xtask gen-pcap`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Target size, e.g. `200MB`, `1GB`, `500KB`.
    #[arg(long, default_value = "200MB")]
    pub size: String,
    /// Output pcap file.
    #[arg(long)]
    pub out: String,
    /// Seed of the generator (same seed, same capture).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the zone the learner is expected to produce.
    #[arg(long)]
    pub expected_zone: Option<String>,
}

/// Builds and runs the generator example in release mode.
pub fn run(args: &Args) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-q", "-p", "guard-user", "--example", "gen_pcap", "--"]);
    cmd.args(["--size", &args.size, "--out", &args.out, "--seed", &args.seed.to_string()]);
    if let Some(z) = &args.expected_zone {
        cmd.args(["--expected-zone", z]);
    }
    run_step("gen-pcap", &mut cmd)
}
