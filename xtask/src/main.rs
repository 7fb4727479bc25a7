//! `cargo xtask <task>`: developer and operator tasks for rpz-guard.
//!
//! Each task lives in its own module with an `Args` struct and a `run`
//! function; adding a task is one enum variant and one match arm.
mod bench;
mod command;
mod demo;
mod fuzz;
mod gen_pcap;
mod lab;
mod package;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "rpz-guard tasks: demo, setup, lab, test")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// See rpz-guard work on the built-in lab: mail passes, a bot is blocked and reported.
    Demo(demo::Args),
    /// Generate a realistic border DNS capture with known content.
    GenPcap(gen_pcap::Args),
    /// Build rpz-guard and run `rpz-guard run ARGS` (e.g. `--iface eth1 --server 192.0.2.53:53`).
    Run(run::Args),
    /// Install what rpz-guard needs on a Debian 12 machine (idempotent, as root).
    Setup(setup::Args),
    /// Bring the network lab up or down, or show what exists.
    Lab(lab::Args),
    /// Run setup, fmt, clippy (host and eBPF) and all tests, as CI does.
    Test(test::Args),
    /// Build rpz-guard with the embedded XDP object.
    BuildEbpf,
    /// Run the benchmarks and write target/bench-report/REPORT.md.
    Bench(bench::Args),
    /// Build and run the cargo-fuzz targets (fuzz/) for a bounded time each.
    Fuzz(fuzz::Args),
    /// Build the Debian package (target/debian/rpz-guard_*.deb) with cargo-deb.
    Package(package::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Demo(args) => demo::run(&args),
        Task::Run(args) => run::run(&args),
        Task::GenPcap(args) => gen_pcap::run(&args),
        Task::Setup(args) => setup::run(&args),
        Task::Lab(args) => lab::run(args),
        Task::Test(args) => test::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Package(args) => package::run(&args),
        Task::BuildEbpf => {
            command::run_step("build-ebpf", command::cargo().args(["build", "-p", "guard-user"]))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
