//! `cargo xtask setup`: idempotent bootstrap of a Debian 12 machine as root.
//!
//! Each step first checks whether its result is already there and does
//! nothing then, so a complete machine finishes in about a second.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::command::{output, require_root, run_step, succeeds};

/// Debian packages the project uses (lab, baselines, benchmarks, eBPF build).
pub const PACKAGES: &[&str] = &[
    "bind9",
    "bind9-utils",
    "dnsutils",
    // The other RPZ primaries of the interop tests (guard_tests::primary):
    // Knot DNS 3.2 and PowerDNS Authoritative 4.7 with its gsqlite3 backend.
    "knot",
    "pdns-server",
    "pdns-backend-sqlite3",
    "sqlite3",
    "openvswitch-switch",
    "iproute2",
    "iputils-ping",
    "procps",
    "tcpdump",
    "tshark",
    "netsniff-ng",
    "nftables",
    "xdp-tools",
    "bpftool",
    "ethtool",
    "iperf3",
    // Clock skew for the TSIG BADTIME fault test (libfaketime preloaded).
    "faketime",
    "python3-venv",
    "python3-dev",
    "build-essential",
    "pkg-config",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // The package and its tests: `systemd-analyze verify` of the units,
    // `man -l` of the pages, `logrotate -d` of the snippet.
    "systemd",
    "man-db",
    "logrotate",
];

/// cargo-deb release that builds with rustc 1.95 (`cargo xtask package`).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// The Ryu baseline (the paper's controller) lives in this venv.
pub const RYU_VENV: &str = "/opt/rpz-guard/ryu-venv";
/// bpf-linker release known to build against LLVM 22 with rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// cargo-fuzz release known to build with rustc 1.95 (about 2 minutes).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Options of `cargo xtask setup`.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub check: bool,
}

/// A setup step: given "check only", returns what it installed (or would
/// install), `None` when everything was present.
type Step = fn(bool) -> Result<Option<String>>;

/// Runs every setup step in order; the first failure stops with its name.
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    if !args.check {
        require_root("setup")?;
    }
    let mut missing = Vec::new();
    let steps: [(&str, Step); 7] = [
        ("apt packages", apt_packages),
        ("promtool", promtool),
        ("nightly rust-src", rust_src),
        ("bpf-linker", bpf_linker),
        ("cargo-fuzz", cargo_fuzz),
        ("cargo-deb", cargo_deb),
        ("ryu venv", ryu_venv),
    ];
    for (name, step) in steps {
        let t = Instant::now();
        match step(args.check).with_context(|| format!("setup step `{name}` failed"))? {
            None => println!("setup: {name}: present"),
            Some(what) if args.check => {
                println!("setup: {name}: MISSING {what}");
                missing.push(name);
            }
            Some(what) => println!("setup: {name}: installed {what} ({:.1} s)", t.elapsed().as_secs_f64()),
        }
    }
    println!("setup: done in {:.1} s", started.elapsed().as_secs_f64());
    if !missing.is_empty() {
        bail!("missing: {}; run `cargo xtask setup` as root", missing.join(", "));
    }
    Ok(())
}

/// Installed packages among `PACKAGES` (one dpkg-query call).
fn missing_packages() -> Result<Vec<&'static str>> {
    let out = output(
        Command::new("dpkg-query").arg("-W").arg("-f=${Package} ${db:Status-Abbrev}\\n").args(PACKAGES),
    )?;
    // dpkg-query exits 1 when some package is unknown; stdout still lists the rest.
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, st)| st.starts_with("ii"))
        .map(|(p, _)| p)
        .collect();
    Ok(PACKAGES.iter().copied().filter(|p| !installed.contains(p)).collect())
}

fn apt_packages(check: bool) -> Result<Option<String>> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(None);
    }
    let list = missing.join(" ");
    if check {
        return Ok(Some(list));
    }
    println!("setup: installing {list}");
    if missing.contains(&"tshark") {
        // Never ask whether non-root users may capture.
        let mut child = Command::new("debconf-set-selections")
            .stdin(Stdio::piped())
            .spawn()
            .context("cannot run debconf-set-selections")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"wireshark-common wireshark-common/install-setuid boolean false\n")?;
        }
        child.wait()?;
    }
    // Keep package scripts from starting named / knotd / pdns / ovs daemons in the root
    // namespace: the lab starts its own, and a system named would hold port 53.
    let _no_daemons = PolicyRcGuard::install()?;
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").env("NEEDRESTART_MODE", "a").args(args);
        cmd
    };
    run_step("apt packages (apt-get update)", &mut apt(&["-q", "update"]))?;
    let mut install = apt(&[
        "-y",
        "-q",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        // With recommends, as TOOLCHAIN.md's checked recipe does.
        "install",
    ]);
    install.args(&missing);
    run_step("apt packages (apt-get install)", &mut install)?;
    stop_packaged_daemons(&missing)?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(Some(list))
}

/// The system services of the DNS servers we install: the lab starts its
/// own in namespaces, and a system one would hold port 53.
const DNS_SERVICES: &[(&str, &str)] = &[("bind9", "named"), ("knot", "knot"), ("pdns-server", "pdns")];

/// With systemd running, packages may enable and start their units despite
/// policy-rc.d on some setups: disable and stop the ones just installed.
fn stop_packaged_daemons(installed: &[&str]) -> Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        return Ok(());
    }
    for (package, unit) in DNS_SERVICES.iter().filter(|(p, _)| installed.contains(p)) {
        let out = output(Command::new("systemctl").args(["disable", "--now", unit]))?;
        if !out.status.success() {
            println!(
                "setup: note: systemctl disable --now {unit} ({package}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// `promtool` (checks the shipped alert rules) comes with Debian's
/// `prometheus` package; without its recommends, and without starting the
/// server it brings.
fn promtool(check: bool) -> Result<Option<String>> {
    if succeeds(Command::new("promtool").arg("--version")) {
        return Ok(None);
    }
    let what = "promtool (Debian package prometheus)".to_owned();
    if check {
        return Ok(Some(what));
    }
    let _no_daemons = PolicyRcGuard::install()?;
    run_step("promtool (apt-get update)", Command::new("apt-get").args(["-q", "update"]))?;
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "install",
        "prometheus",
    ]);
    run_step("promtool (apt-get install prometheus)", &mut cmd)?;
    if !succeeds(Command::new("promtool").arg("--version")) {
        bail!("prometheus was installed but `promtool --version` fails");
    }
    Ok(Some(what))
}

/// `cargo deb` for `cargo xtask package`.
fn cargo_deb(check: bool) -> Result<Option<String>> {
    let out = output(Command::new("cargo").args(["deb", "--version"]));
    if out.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION))
    {
        return Ok(None);
    }
    let what = format!("cargo-deb {CARGO_DEB_VERSION}");
    if check {
        return Ok(Some(what));
    }
    println!("setup: building {what} from crates.io; this takes about 3 minutes on 2 cores");
    run_step(
        "cargo-deb",
        Command::new("cargo").args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB_VERSION]),
    )?;
    if !succeeds(Command::new("cargo").args(["deb", "--version"])) {
        bail!("cargo-deb was built but `cargo deb --version` fails; is ~/.cargo/bin on PATH?");
    }
    Ok(Some(what))
}

/// Writes `/usr/sbin/policy-rc.d` (exit 101 = "do not start") while alive,
/// unless the machine already has one.
struct PolicyRcGuard {
    path: Option<PathBuf>,
}

impl PolicyRcGuard {
    fn install() -> Result<Self> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self { path: None });
        }
        fs::write(&path, "#!/bin/sh\n# written by cargo xtask setup during apt-get install\nexit 101\n")
            .with_context(|| format!("write {}", path.display()))?;
        set_mode(&path, 0o755)?;
        Ok(Self { path: Some(path) })
    }
}

impl Drop for PolicyRcGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = fs::remove_file(p);
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn rust_src(check: bool) -> Result<Option<String>> {
    let out =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is not installed (`rustup toolchain install nightly`): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "rust-src") {
        return Ok(None);
    }
    if !check {
        run_step(
            "nightly rust-src",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        )?;
    }
    Ok(Some("rust-src for nightly".into()))
}

fn bpf_linker(check: bool) -> Result<Option<String>> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(None);
    }
    let what = format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)");
    if check {
        return Ok(Some(what));
    }
    println!("setup: building {what} from crates.io; this takes about 5 minutes on 2 cores");
    let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("cargo");
    cmd.env("PATH", path).env("LLVM_SYS_221_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    run_step("bpf-linker", &mut cmd)?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was built but `bpf-linker --version` fails; is ~/.cargo/bin on PATH?");
    }
    Ok(Some(what))
}

/// cargo-fuzz for `cargo xtask fuzz` (libFuzzer targets, run with nightly).
fn cargo_fuzz(check: bool) -> Result<Option<String>> {
    if succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        return Ok(None);
    }
    let what = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    if check {
        return Ok(Some(what));
    }
    run_step(
        "cargo-fuzz",
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]),
    )?;
    Ok(Some(what))
}

/// The Ryu baseline: Python 3.11 venv, pinned eventlet/dnspython, plus dpkt
/// for the baseline pcap builder, and the `ALREADY_HANDLED` patch.
fn ryu_venv(check: bool) -> Result<Option<String>> {
    let venv = Path::new(RYU_VENV);
    let bin = venv.join("bin");
    let ready = || {
        succeeds(Command::new(bin.join("ryu-manager")).arg("--version"))
            && succeeds(Command::new(bin.join("python")).args(["-c", "import dpkt, dns.resolver, eventlet"]))
    };
    if ready() {
        return Ok(None);
    }
    let what = format!("ryu 4.34 + dpkt in {RYU_VENV}");
    if check {
        return Ok(Some(what));
    }
    println!("setup: creating {what}");
    if !bin.join("python").exists() {
        fs::create_dir_all(venv).with_context(|| format!("create {RYU_VENV}"))?;
        // Debian's python3 (3.11), not whatever else is first on PATH.
        run_step(
            "ryu venv (python3 -m venv)",
            Command::new("/usr/bin/python3").args(["-m", "venv", RYU_VENV]),
        )?;
    }
    let pip = bin.join("pip");
    run_step(
        "ryu venv (pip setuptools)",
        Command::new(&pip).args(["install", "-q", "--disable-pip-version-check", "setuptools<70", "wheel"]),
    )?;
    run_step(
        "ryu venv (pip ryu)",
        Command::new(&pip).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "ryu==4.34",
            "eventlet==0.33.3",
            "dnspython==2.6.1",
            "dpkt",
        ]),
    )?;
    patch_ryu_wsgi(venv)?;
    if !ready() {
        let out = output(Command::new(bin.join("ryu-manager")).arg("--version"))?;
        bail!("ryu-manager still fails after install: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(Some(what))
}

/// ryu 4.34 imports `ALREADY_HANDLED` from `eventlet.wsgi`, which this
/// eventlet lacks; the attribute is only a sentinel, so a placeholder works.
fn patch_ryu_wsgi(venv: &Path) -> Result<()> {
    let lib = venv.join("lib");
    let site = fs::read_dir(&lib)
        .with_context(|| format!("read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/ryu/app/wsgi.py"))
        .find(|p| p.exists())
        .with_context(|| format!("ryu/app/wsgi.py not found under {}", lib.display()))?;
    let text = fs::read_to_string(&site).with_context(|| format!("read {}", site.display()))?;
    let import = "from eventlet.wsgi import ALREADY_HANDLED";
    if !text.contains(import) {
        return Ok(());
    }
    let patched = text.replace(import, "ALREADY_HANDLED = object()  # patched by cargo xtask setup");
    fs::write(&site, patched).with_context(|| format!("write {}", site.display()))?;
    println!("setup: patched {}", site.display());
    Ok(())
}
