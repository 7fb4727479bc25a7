//! Builds the XDP program (`guard-ebpf`) for `bpfel-unknown-none` with the
//! nightly toolchain and places the object in `OUT_DIR` for `include_bytes!`.
use std::{path::PathBuf, process::Command};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guard-ebpf");
    if let Err(missing) = check_toolchain() {
        panic!(
            "the eBPF toolchain is not ready ({missing}); run `cargo xtask setup` once (as root) and build again"
        );
    }
    let pkg = aya_build::Package {
        name: "guard-ebpf",
        root_dir: root.to_str().expect("workspace path is UTF-8"),
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([pkg], aya_build::Toolchain::default()) {
        panic!("building the XDP program failed: {e:#}");
    }
}

/// Checks what `cargo xtask setup` installs: bpf-linker and nightly rust-src.
fn check_toolchain() -> Result<(), String> {
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.map(|o| o.status.success()).unwrap_or(false) {
        return Err("bpf-linker not found on PATH".into());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustup nightly not runnable: {e}"))?;
    if !sysroot.status.success() {
        return Err("the nightly toolchain is not installed".into());
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let src = PathBuf::from(sysroot).join("lib/rustlib/src/rust/library/core");
    if !src.exists() {
        return Err("nightly rust-src is not installed".into());
    }
    Ok(())
}
