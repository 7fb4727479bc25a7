//! `cargo xtask run [ARGS]...`: build rpz-guard (release, with the embedded
//! XDP program) and run `rpz-guard run ARGS...`, e.g.
//! `cargo xtask run --iface eth1 --zone-file /etc/rpz-guard/rpz.zone`.

use std::os::unix::process::CommandExt as _;

use anyhow::{Result, bail};

use crate::command::{cargo, repo_root, run_step};

/// Options of `cargo xtask run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Arguments for `rpz-guard run` (see `rpz-guard run --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Builds, then replaces this process with `rpz-guard run`.
pub fn run(args: &Args) -> Result<()> {
    run_step("build", cargo().args(["build", "--release", "-p", "guard-user", "--bin", "rpz-guard"]))?;
    let bin = repo_root().join("target/release/rpz-guard");
    let err = std::process::Command::new(&bin).arg("run").args(&args.args).exec();
    bail!("cannot start {}: {err}", bin.display())
}
