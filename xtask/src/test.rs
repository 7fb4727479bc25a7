//! `cargo xtask test`: what CI runs. Setup, formatting, lints (host crates
//! and the eBPF crate on its own target), then unit and privileged
//! integration tests, then every fuzz target for a bounded time. The first
//! failing step ends the run non-zero.
use std::{process::Command, time::Instant};

use anyhow::{Context, Result};

use crate::{
    command::{cargo, repo_root, run_step, run_step_counting_tests},
    fuzz, package, setup,
};

/// Options of `cargo xtask test`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Skip `cargo xtask setup` (the machine is known to be ready).
    #[arg(long)]
    pub no_setup: bool,
    /// Wall-time cap of each fuzz target after the tests (`60s`, `2m`). The
    /// fuzz step is deterministic: a fixed seed and a fixed number of inputs
    /// per target (see `cargo xtask fuzz --ci`).
    #[arg(long, default_value = "60s", value_parser = fuzz::parse_duration_secs)]
    pub fuzz_time: u64,
    /// libFuzzer seed of the fuzz step.
    #[arg(long, default_value_t = fuzz::CI_SEED)]
    pub fuzz_seed: u32,
    /// Skip the fuzz step.
    #[arg(long)]
    pub no_fuzz: bool,
    /// Extra arguments passed to `cargo test` (after `--`), e.g. a filter.
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// Runs every step, printing the time each took.
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let mut times = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        println!("==> {name}");
        let t = Instant::now();
        f().with_context(|| format!("test step `{name}` failed"))?;
        let secs = t.elapsed().as_secs_f64();
        println!("<== {name}: ok ({secs:.1} s)");
        times.push((name.to_owned(), secs));
        Ok(())
    };
    if !args.no_setup {
        step("setup", &mut || setup::run(&setup::Args::default()))?;
    }
    step("fmt", &mut || {
        run_step("fmt", cargo().args(["fmt", "--all", "--check"]))?;
        // The fuzz crate is its own workspace (see fuzz/Cargo.toml).
        run_step("fmt fuzz", cargo().args(["fmt", "--all", "--check", "--manifest-path", "fuzz/Cargo.toml"]))
    })?;
    // guard-ebpf is a no_std bpf program: it is linted on its own target below.
    step("clippy", &mut || {
        run_step(
            "clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "guard-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )
    })?;
    step("clippy-ebpf", &mut || {
        let mut cmd = Command::new("rustup");
        cmd.current_dir(repo_root().join("guard-ebpf")).args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "guard-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
        run_step("clippy-ebpf", &mut cmd)
    })?;
    // The release build and the .deb, timed on their own; the package test
    // (guard-user/tests/package_deb.rs) then reuses this build.
    step("package", &mut || {
        package::build(&package::Args { fast: true, ..package::Args::default() }).map(drop)
    })?;
    let mut totals = (0, 0);
    step("tests", &mut || {
        let mut cmd = cargo();
        cmd.args(["test", "--workspace", "--exclude", "guard-ebpf"]);
        if !args.test_args.is_empty() {
            cmd.arg("--").args(&args.test_args);
        }
        totals = run_step_counting_tests("tests", &mut cmd)?;
        Ok(())
    })?;
    if !args.no_fuzz {
        // Every target, deterministic and bounded (fixed seed, fixed inputs,
        // committed seeds only); a crash, hang or runaway allocation fails CI.
        let plan = fuzz::Plan::ci(args.fuzz_time, args.fuzz_seed);
        step("fuzz", &mut || fuzz::run_targets(&fuzz::targets()?, &plan))?;
    }
    println!("test: all steps passed in {:.1} s", started.elapsed().as_secs_f64());
    for (name, secs) in times {
        println!("  {name:<12} {secs:>7.1} s");
    }
    // One closing line over all test binaries (cargo's last line is often
    // an empty doc-test run).
    println!("tests: {} passed, {} failed", totals.0, totals.1);
    Ok(())
}
