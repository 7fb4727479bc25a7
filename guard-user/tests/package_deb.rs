//! The Debian package as an operator gets it: `cargo xtask package` builds
//! the .deb (release build, cargo-deb), which is unpacked into a scratch
//! root with `dpkg -x`. The installed binary answers `--version`, accepts
//! the shipped config (`check-config`), its manual pages render with
//! `man -l`, the completions load in bash, the systemd unit passes
//! `systemd-analyze verify` and the logrotate snippet parses.
//!
//! Needs cargo-deb, dpkg, man-db, systemd and logrotate (`cargo xtask setup`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// The package and the scratch root it was unpacked into, built once per
/// test binary.
struct Installed {
    deb: PathBuf,
    root: PathBuf,
}

fn installed() -> &'static Installed {
    static ONCE: OnceLock<Installed> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Under the target dir (replaced on each run), not in /tmp.
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-deb");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("scratch dir");
        let out = stdout(
            Command::new("cargo")
                .current_dir(repo())
                .args(["xtask", "package", "--fast", "--output"])
                .arg(&work),
        );
        let deb = out
            .lines()
            .find_map(|l| l.strip_prefix("package: "))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("cargo xtask package named no package:\n{out}"));
        assert!(
            deb.starts_with(&work) && deb.exists(),
            "package {} not in {}",
            deb.display(),
            work.display()
        );
        let root = work.join("root");
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
        Installed { deb, root }
    })
}

#[test]
fn control_declares_dependencies_and_conffiles() {
    let i = installed();
    let field = |name: &str| stdout(Command::new("dpkg-deb").arg("--field").arg(&i.deb).arg(name));
    assert_eq!(field("Package").trim(), "rpz-guard");
    assert_eq!(field("Version").trim(), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").contains("libc6"), "Depends: {}", field("Depends"));
    let recommends = field("Recommends");
    assert!(recommends.contains("bind9-dnsutils") && recommends.contains("bind9-utils"), "{recommends}");
    assert!(!field("Depends").contains("bind9"), "BIND tools are only recommended");

    let ctrl = i.root.with_file_name("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&i.deb).arg(&ctrl));
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).expect("conffiles");
    for f in ["/etc/rpz-guard/rpz-guard.toml", "/etc/logrotate.d/rpz-guard"] {
        assert!(conffiles.lines().any(|l| l == f), "{f} is not a conffile: {conffiles}");
    }
    // The unit is installed and systemd reloaded, but nothing is enabled or
    // started before the operator has edited the config.
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).expect("postinst");
    assert!(postinst.contains("daemon-reload"), "postinst: {postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "postinst starts the service: {postinst}");
    // An upgrade restarts a running service (the pinned program bridges the gap).
    assert!(postinst.contains("try-restart rpz-guard.service"), "postinst: {postinst}");

    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(&i.deb));
    for path in [
        "./usr/bin/rpz-guard",
        "./usr/lib/systemd/system/rpz-guard.service",
        "./usr/share/man/man1/rpz-guard.1.gz",
        "./usr/share/man/man1/rpz-guard-run.1.gz",
        "./usr/share/man/man1/rpz-guard-status.1.gz",
        "./usr/share/bash-completion/completions/rpz-guard",
        "./usr/share/zsh/vendor-completions/_rpz-guard",
        "./usr/share/fish/vendor_completions.d/rpz-guard.fish",
        "./usr/share/doc/rpz-guard/README.md",
        "./usr/share/doc/rpz-guard/examples/rpz-guard.example.toml",
        "./usr/share/doc/rpz-guard/operators-guide.md",
        "./usr/share/doc/rpz-guard/events.schema.json",
        "./usr/share/doc/rpz-guard/examples/bind/named.conf.rpz-primary",
        "./usr/share/doc/rpz-guard/grafana/rpz-guard.json",
        "./usr/share/doc/rpz-guard/prometheus/alerts.yml",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(path)), "{path} missing from the package:\n{listing}");
    }
}

#[test]
fn installed_binary_runs_and_accepts_the_shipped_config() {
    let i = installed();
    let bin = i.root.join("usr/bin/rpz-guard");
    let version = stdout(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("rpz-guard {}", env!("CARGO_PKG_VERSION")));

    let conf = i.root.join("etc/rpz-guard/rpz-guard.toml");
    let text = std::fs::read_to_string(&conf).expect("shipped config");
    assert!(text.lines().any(|l| l.starts_with("# ")), "the shipped config is commented");
    let checked = stdout(Command::new(&bin).arg("check-config").arg(&conf));
    for key in ["[enforce]", "[rpz]", "[events]", "format = \"native\""] {
        assert!(checked.contains(key), "check-config output lacks {key}:\n{checked}");
    }
    // A broken edit is refused with the key named.
    let bad = i.root.with_file_name("bad.toml");
    let broken = text.replacen("[cache]", "[cache]\npositive_ttl_sec = 60", 1);
    assert_ne!(broken, text, "the shipped config has a [cache] section");
    std::fs::write(&bad, broken).expect("write");
    let out = Command::new(&bin).arg("check-config").arg(&bad).output().expect("run");
    assert!(!out.status.success(), "a misspelt key is accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("positive_ttl_sec"), "the error names the key");
}

#[test]
fn manual_pages_render() {
    let i = installed();
    let man1 = i.root.join("usr/share/man/man1");
    // Rendered as `man` shows it; bold and underline come as overstrikes
    // (`c\bc`, `_\bc`), removed here to compare the text.
    let render = |page: &str| {
        let text =
            stdout(Command::new("man").env("MANWIDTH", "100").args(["-P", "cat", "-l"]).arg(man1.join(page)));
        let mut plain = String::with_capacity(text.len());
        for c in text.chars() {
            if c == '\u{8}' {
                plain.pop();
            } else {
                plain.push(c);
            }
        }
        plain
    };
    let top = render("rpz-guard.1.gz");
    for needle in ["rpz-guard", "SYNOPSIS", "FILES", "/etc/rpz-guard/rpz-guard.toml", "rpz-guard-run(1)"] {
        assert!(top.contains(needle), "rpz-guard(1) lacks {needle:?}:\n{top}");
    }
    let run_page = render("rpz-guard-run.1.gz");
    for needle in ["--iface", "--config", "--pin"] {
        assert!(run_page.contains(needle), "rpz-guard-run(1) lacks {needle:?}:\n{run_page}");
    }
    // Every subcommand has its page.
    let help = stdout(Command::new(i.root.join("usr/bin/rpz-guard")).arg("--help"));
    let subs: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert!(subs.contains(&"run") && subs.contains(&"man"), "subcommands from --help: {subs:?}");
    for s in subs {
        assert!(man1.join(format!("rpz-guard-{s}.1.gz")).exists(), "no page for {s}");
    }
}

#[test]
fn completions_load_in_bash() {
    let i = installed();
    let file = i.root.join("usr/share/bash-completion/completions/rpz-guard");
    let script = format!("source {} && complete -p rpz-guard", file.display());
    let out = stdout(Command::new("bash").args(["-c", &script]));
    assert!(out.contains("rpz-guard"), "complete -p: {out}");
    let zsh =
        std::fs::read_to_string(i.root.join("usr/share/zsh/vendor-completions/_rpz-guard")).expect("zsh");
    assert!(zsh.starts_with("#compdef rpz-guard"), "zsh completion header");
}

#[test]
fn systemd_unit_verifies() {
    let i = installed();
    let unit = i.root.join("usr/lib/systemd/system/rpz-guard.service");
    let text = std::fs::read_to_string(&unit).expect("unit");
    for line in ["Type=notify", "Restart=on-failure", "RuntimeDirectory=rpz-guard", "ProtectSystem=strict"] {
        assert!(text.lines().any(|l| l == line), "unit lacks {line}");
    }
    // systemd-analyze --root resolves the unit, its dependencies, ExecStart
    // and the man: documentation inside that root: lay the host's own units
    // and tools under the package's files.
    let vroot = i.root.with_file_name("verify-root");
    let _ = std::fs::remove_dir_all(&vroot);
    run(Command::new("cp").arg("-a").arg(&i.root).arg(&vroot));
    run(Command::new("cp")
        .args(["-an", "/usr/lib/systemd/system/."])
        .arg(vroot.join("usr/lib/systemd/system")));
    std::fs::create_dir_all(vroot.join("usr/bin")).expect("mkdir");
    run(Command::new("cp").args(["-a", "/usr/bin/kill"]).arg(vroot.join("usr/bin/kill")));
    let _ = std::os::unix::fs::symlink("usr/bin", vroot.join("bin"));
    let out = Command::new("systemd-analyze")
        .env("MANPATH", i.root.join("usr/share/man"))
        .arg(format!("--root={}", vroot.display()))
        .args(["verify", "rpz-guard.service"])
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {}\n{err}", out.status);
}

#[test]
fn logrotate_snippet_parses() {
    let i = installed();
    let snippet = i.root.join("etc/logrotate.d/rpz-guard");
    let state = i.root.with_file_name("logrotate.state");
    let out = Command::new("logrotate")
        .arg("--debug")
        .arg("--state")
        .arg(&state)
        .arg(&snippet)
        .output()
        .expect("logrotate (cargo xtask setup installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "logrotate -d: {}\n{err}", out.status);
    assert!(!err.contains("error:"), "logrotate -d: {err}");
    assert!(err.contains("/var/log/rpz-guard/*.jsonl"), "logrotate read the pattern: {err}");
}
