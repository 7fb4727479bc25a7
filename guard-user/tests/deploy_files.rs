//! The monitoring files in `deploy/` against the real tools and the real
//! daemon: `promtool check rules` and `promtool test rules` for the alerts,
//! every PromQL expression of the Grafana dashboard parsed by promtool, the
//! dashboard's layout checked, and every metric name the dashboard and the
//! alerts use found in the metrics of a running `rpz-guard` (whose
//! exposition passes `promtool check metrics`).
//!
//! Needs promtool (Debian package `prometheus`, installed by `cargo xtask setup`).

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rpz-guard");

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(rel)
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool not runnable ({e}); `cargo xtask setup` installs it"));
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(deploy("grafana/rpz-guard.json")).expect("dashboard"))
        .expect("dashboard is JSON")
}

/// Every PromQL expression of the dashboard, Grafana's variables replaced
/// by what Grafana would send.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard()["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("target expr");
            let concrete =
                expr.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$job", ".*");
            out.push((p["title"].as_str().unwrap_or_default().to_owned(), concrete));
        }
    }
    out
}

fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("alerts");
    // The expressions are the `expr:` scalars (plain or folded `>-` blocks).
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim_start().strip_prefix("expr:") else { continue };
        let indent = l.len() - l.trim_start().len();
        if rest.trim() == ">-" {
            let mut e = String::new();
            while let Some(next) = lines.peek().filter(|n| n.len() - n.trim_start().len() > indent) {
                e.push_str(next.trim());
                e.push(' ');
                lines.next();
            }
            exprs.push(e);
        } else {
            exprs.push(rest.trim().to_owned());
        }
    }
    exprs
}

/// Metric names (`rpz_guard_*`, `process_*`) an expression reads; name
/// regexes like `rpz_guard_learn_.*` are not names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["rpz_guard_", "process_"] {
        let mut rest = expr;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let preceded =
                rest[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !preceded && !tail[len..].starts_with(['.', '*']) {
                names.insert(tail[..len].to_owned());
            }
            rest = &tail[len..];
        }
    }
    names
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = deploy("prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().expect("utf-8")], None);
    assert!(ok && out.contains("SUCCESS"), "promtool check rules:\n{out}");
    let tests = deploy("prometheus/alerts.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().expect("utf-8")], None);
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
    let names: BTreeSet<_> = alert_exprs().iter().flat_map(|e| metric_names(e)).collect();
    for want in
        ["rpz_guard_last_sync_timestamp_seconds", "rpz_guard_source_up", "rpz_guard_map_update_failing"]
    {
        assert!(names.contains(want), "alerts read {names:?}");
    }
}

#[test]
fn dashboard_queries_parse_and_panels_fit() {
    let d = dashboard();
    assert_eq!(d["uid"], "rpz-guard");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);

    // Layout: unique ids, inside the 24-column grid, no two panels overlap.
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64, &str)> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate panel id at {title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (g["x"].as_u64(), g["y"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else { panic!("gridPos of {title}") };
        assert!(x + w <= 24 && w > 0 && h > 0, "{title} leaves the grid");
        for (bx, by, bw, bh, other) in &boxes {
            let apart = x + w <= *bx || bx + bw <= x || y + h <= *by || by + bh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((x, y, w, h, title));
        if p["type"] != "row" {
            assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "{title} has no query");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title} ignores the data source variable");
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Verdicts per second by path",
        "Top blocked sources (suspected infected hosts)",
        "Sync lag",
        "Zone serial",
        "Miss-path latency",
        "Live learning",
    ] {
        assert!(titles.contains(&want), "dashboard lacks {want:?}: {titles:?}");
    }

    // promtool parses every query (as a recording rule).
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::json!(expr)
        ));
    }
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-queries.yml");
    std::fs::write(&file, &rules).expect("write");
    let (ok, out) = promtool(&["check", "rules", file.to_str().expect("utf-8")], None);
    assert!(ok, "a dashboard query does not parse:\n{out}\n{rules}");
}

/// `rpz-guard run` in OpenFlow mode on loopback (no interface or lab
/// needed) with a zone file; SIGTERM on drop.
struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &Path) -> Daemon {
    let zone = dir.join("rpz.zone");
    std::fs::write(
        &zone,
        "$TTL 60\n@ IN SOA ns hostmaster 7 3600 600 86400 60\n@ IN NS ns\n198.51.100.25 IN A 127.0.0.25\n",
    )
    .expect("zone");
    let socket = dir.join("status.sock");
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let child = Command::new(BIN)
        .args(["run", "--mode", "openflow", "--zone", "rpz.example.com", "--events", "none"])
        .arg("--openflow-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--zone-file")
        .arg(&zone)
        .arg("--status-socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rpz-guard");
    let d = Daemon { child, socket };
    let t = Instant::now();
    while !d.socket.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn scrape(d: &Daemon) -> String {
    let t = Instant::now();
    loop {
        let out = Command::new(BIN)
            .args(["status", "--metrics", "--socket"])
            .arg(&d.socket)
            .output()
            .expect("status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("rpz_guard_entries") {
            return text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no metrics from rpz-guard: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Name prefixes that only appear with traffic (blocked sources, checked
/// in the lab), with live learning on, or with AF_XDP configured.
const CONDITIONAL: &[&str] = &["rpz_guard_top_source_blocked", "rpz_guard_live_", "rpz_guard_afxdp_"];

#[test]
fn dashboard_and_alerts_read_metrics_the_daemon_exports() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-metrics");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let d = start_daemon(&dir);
    let text = scrape(&d);
    drop(d);
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{out}\n{text}");
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let used: BTreeSet<String> = dashboard_exprs()
        .iter()
        .map(|(_, e)| e.clone())
        .chain(alert_exprs())
        .flat_map(|e| metric_names(&e))
        .collect();
    let missing: Vec<_> = used
        .iter()
        .filter(|n| !exported.contains(*n) && !CONDITIONAL.iter().any(|c| n.starts_with(c)))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alerts use metrics rpz-guard does not export: {missing:?}\nexported: {exported:?}"
    );
}

#[test]
fn metric_names_are_extracted_from_queries() {
    let n = metric_names(
        r#"sum by (x) (rate(rpz_guard_a_total{y="z"}[5m])) / rpz_guard_b + process_c{__name__=~"rpz_guard_learn_.*"}"#,
    );
    assert_eq!(n.into_iter().collect::<Vec<_>>(), ["process_c", "rpz_guard_a_total", "rpz_guard_b"]);
}
