//! The operator's guide (`docs/operators-guide.md`) shows real, checked
//! files: each snippet block is a file under `docs/` verbatim, the BIND
//! snippets pass `named-checkconf -z` (with a key from `tsig-keygen` and the
//! starting zone, in a scratch root), the zone passes `named-checkzone`, and
//! the rpz-guard configs pass `rpz-guard check-config`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// `(path under docs/, block content)` for every snippet of the guide.
fn snippets(guide: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = guide;
    while let Some(i) = rest.find("<!-- snippet:") {
        let tail = &rest[i + "<!-- snippet:".len()..];
        let path = tail.split_whitespace().next().expect("snippet path").to_owned();
        let body_start = tail.find("```").expect("fence");
        let body = &tail[body_start..];
        let first_nl = body.find('\n').expect("fence line");
        let end = body.find("```\n<!-- /snippet -->").expect("closing fence");
        out.push((path, body[first_nl + 1..end].to_owned()));
        rest = &body[end..];
    }
    out
}

#[test]
fn guide_snippets_are_the_checked_files() {
    let guide_path = docs().join("operators-guide.md");
    let guide = std::fs::read_to_string(&guide_path).expect("docs/operators-guide.md");
    let found = snippets(&guide);
    let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    for want in [
        "bind/named.conf.rpz-primary",
        "bind/db.rpz.example.com",
        "bind/named.conf.rpz-resolver",
        "config/router.toml",
    ] {
        assert!(paths.contains(&want), "the guide does not show {want}: {paths:?}");
    }
    for (path, body) in found {
        let file = std::fs::read_to_string(docs().join(&path)).unwrap_or_else(|e| panic!("docs/{path}: {e}"));
        assert_eq!(body, file, "the guide's copy of docs/{path} differs from the file");
    }
}

fn run(cmd: &mut Command) -> String {
    let out =
        cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?} (cargo xtask setup installs it): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn bind_snippets_pass_named_checkconf() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("named-root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["etc/bind", "var/lib/bind", "var/cache/bind"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let key = run(Command::new("tsig-keygen").args(["-a", "hmac-sha256", "rpz-guard"]));
    std::fs::write(root.join("etc/bind/rpz-guard.key"), key).expect("key");
    std::fs::copy(docs().join("bind/db.rpz.example.com"), root.join("var/lib/bind/db.rpz.example.com"))
        .expect("zone");
    let read = |p: &str| std::fs::read_to_string(docs().join(p)).expect("snippet");
    // The resolver snippet goes inside options { }, the zone snippet at the top level.
    let conf = format!(
        "options {{\n    directory \"/var/cache/bind\";\n    recursion yes;\n{}}};\n{}",
        read("bind/named.conf.rpz-resolver"),
        read("bind/named.conf.rpz-primary")
    );
    std::fs::write(root.join("etc/bind/named.conf"), &conf).expect("named.conf");
    let out = run(Command::new("named-checkconf").arg("-z").arg("-t").arg(&root).arg("/etc/bind/named.conf"));
    assert!(out.contains("zone rpz.example.com/IN: loaded serial 1"), "named-checkconf -z: {out}");
    // A broken edit is caught by the same check, so the check is not vacuous.
    std::fs::write(root.join("etc/bind/named.conf"), conf.replace("allow-transfer", "allow-transfr"))
        .expect("write");
    let bad = Command::new("named-checkconf")
        .arg("-t")
        .arg(&root)
        .arg("/etc/bind/named.conf")
        .output()
        .expect("run");
    assert!(!bad.status.success(), "named-checkconf accepted an unknown option");

    let zone = run(Command::new("named-checkzone")
        .arg("rpz.example.com")
        .arg(docs().join("bind/db.rpz.example.com")));
    assert!(zone.contains("OK"), "named-checkzone: {zone}");
}

#[test]
fn guide_configs_pass_check_config() {
    for name in ["router.toml", "openflow.toml"] {
        let path = docs().join("config").join(name);
        let out = run(Command::new(env!("CARGO_BIN_EXE_rpz-guard")).arg("check-config").arg(&path));
        assert!(out.contains("[rpz]"), "check-config {name}: {out}");
    }
}

#[test]
fn readme_points_to_the_guide() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README");
    assert!(readme.contains("docs/operators-guide.md"), "README links the operator's guide");
    assert!(
        readme.contains("cargo xtask demo") && readme.contains("cargo xtask test"),
        "README keeps its two commands"
    );
}
