//! The operator commands (`allow`, `revoke`, `deny`, `list`, `explain`)
//! run as an operator runs them (the binary, a config file, flags) against
//! a real BIND 9 on loopback: what lands in the zone record by record,
//! one UPDATE per command, and the errors: a bad address, a wrong key, an
//! unreachable server, a conflict, each with its exit code.

mod common;

use std::{
    process::{Command, Output},
    time::Instant,
};

use common::{Named, NamedConfig, ZONE, free_port};
use guard_user::{
    ops::exit,
    policy::{AllowSet, Classes, Prefix},
    rpz::{edit, transfer},
};

const BIN: &str = env!("CARGO_BIN_EXE_rpz-guard");

fn p(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

/// Runs `rpz-guard ARGS` with a config file naming the primary and key.
fn run(named: &Named, args: &[&str]) -> Output {
    let conf = named.path().join("ops.toml");
    if !conf.exists() {
        std::fs::write(
            &conf,
            format!(
                "[rpz]\nzone = \"{ZONE}\"\nserver = \"{}\"\ntsig_key = \"{}\"\n\n[status]\nsocket = \"{}\"\n",
                named.addr,
                named.key_file.display(),
                named.path().join("no-daemon.sock").display()
            ),
        )
        .expect("write config");
    }
    let out = Command::new(BIN).args(args).arg("--config").arg(&conf).output().expect("run rpz-guard");
    eprintln!(
        "$ rpz-guard {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

/// What the owner of `prefix` holds, read straight from BIND.
fn owner(named: &Named, prefix: &str) -> edit::OwnerRecords {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(edit::read_owner(named.addr, ZONE, Some(&named.key), &p(prefix))).expect("read owner")
}

fn serial(named: &Named) -> u32 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(transfer::soa_serial(named.addr, ZONE, Some(&named.key))).expect("SOA")
}

/// UPDATE messages BIND applied: its `updating zone` lines, told apart by
/// the client connection that sent them (one connection per command).
fn updates_logged(named: &Named) -> usize {
    let clients: std::collections::BTreeSet<String> = named
        .log()
        .lines()
        .filter(|l| l.contains("updating zone"))
        .filter_map(|l| l.split(" client ").nth(1)?.split('/').next().map(str::to_owned))
        .collect();
    clients.len()
}

#[test]
fn allow_revoke_deny_write_the_contract_records_in_one_update_each() {
    let t = Instant::now();
    let initial: AllowSet = [(p("198.51.100.7"), Classes::DNS)].into_iter().collect();
    let named = Named::start(&NamedConfig { initial, serial: Some(10), ..Default::default() });

    // allow: A 127.0.0.25 + TXT manual with exp and note; one serial step.
    let before = serial(&named);
    let o = run(
        &named,
        &["allow", "203.0.113.9", "--class", "smtp", "--expires", "7d", "--comment", "ticket 4711"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).starts_with("allowed 203.0.113.9 in zone rpz.example.com"), "{}", stdout(&o));
    let r = owner(&named, "203.0.113.9");
    assert_eq!(r.classes, Classes::SMTP);
    assert_eq!(r.txt.len(), 1, "{r:?}");
    let txt = &r.txt[0];
    assert_eq!(&txt[..2], [b"rpz-guard=1".to_vec(), b"src=manual".to_vec()], "{txt:?}");
    assert!(txt.iter().any(|s| s.starts_with(b"first=")), "{txt:?}");
    assert!(txt.iter().any(|s| s.starts_with(b"exp=")), "{txt:?}");
    assert!(txt.iter().any(|s| s == b"note=ticket 4711"), "{txt:?}");
    assert_eq!(serial(&named), before + 1, "one UPDATE, one serial step");

    // allow on a learned entry: classes added, TXT turns manual, no expiry.
    let o = run(&named, &["allow", "198.51.100.7", "--class", "smtp"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = owner(&named, "198.51.100.7");
    assert_eq!(r.classes, Classes::DNS.union(Classes::SMTP));
    assert!(r.txt.len() == 1 && !r.txt[0].iter().any(|s| s.starts_with(b"exp=")), "{r:?}");
    assert!(stdout(&o).contains("never expires"), "{}", stdout(&o));

    // deny: A and TXT gone, CNAME . in their place.
    let o = run(&named, &["deny", "203.0.113.9"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = owner(&named, "203.0.113.9");
    assert!(r.is_deny() && r.classes.is_empty() && r.txt.is_empty(), "{r:?}");
    assert!(stdout(&o).contains("DENIED"), "{}", stdout(&o));

    // allow of a denied address: refused, nothing changed.
    let s = serial(&named);
    let o = run(&named, &["allow", "203.0.113.9", "--class", "smtp"]);
    assert_eq!(code(&o), i32::from(exit::CONFLICT), "{}", stderr(&o));
    assert!(stderr(&o).contains("is denied"), "{}", stderr(&o));
    assert_eq!(serial(&named), s, "a refused allow changes nothing");

    // A deny of a prefix uses the rpz-ip owner.
    let o = run(&named, &["deny", "192.0.2.0/24"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(owner(&named, "192.0.2.0/24").is_deny());

    // An allow inside a denied prefix is written, and the output warns
    // that the wider deny still wins.
    let o = run(&named, &["allow", "192.0.2.25", "--class", "smtp"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("WARNING 192.0.2.0/24 is denied"), "{}", stdout(&o));
    assert_eq!(code(&run(&named, &["revoke", "192.0.2.25"])), 0);

    // revoke: everything at the owner goes (the deny too).
    let o = run(&named, &["revoke", "203.0.113.9"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(owner(&named, "203.0.113.9").is_empty());
    // Again: nothing there, a conflict, nothing changed.
    let s = serial(&named);
    let o = run(&named, &["revoke", "203.0.113.9"]);
    assert_eq!(code(&o), i32::from(exit::CONFLICT), "{}", stderr(&o));
    assert!(stderr(&o).contains("not in zone"), "{}", stderr(&o));
    // Only covered by a prefix: the error names the prefix.
    let o = run(&named, &["revoke", "192.0.2.7"]);
    assert_eq!(code(&o), i32::from(exit::CONFLICT), "{}", stderr(&o));
    assert!(stderr(&o).contains("covered by 192.0.2.0/24 (a deny)"), "{}", stderr(&o));
    assert_eq!(serial(&named), s);

    // Each successful command was one UPDATE in BIND's log: allow, allow,
    // deny, deny, allow, revoke, revoke.
    assert_eq!(updates_logged(&named), 7, "{}", named.log());

    // --json for scripts.
    let o = run(&named, &["allow", "2001:db8::25", "--class", "dns,smtp", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON outcome");
    assert_eq!(v["action"], "allowed");
    assert_eq!(v["owner"], "128.25.zz.db8.2001.rpz-ip.rpz.example.com.");
    assert_eq!(v["after"]["classes"], Classes::DNS.union(Classes::SMTP).bits());
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
}

#[test]
fn errors_name_what_was_wrong_with_their_exit_codes() {
    let named = Named::start(&NamedConfig::default());
    let s = serial(&named);

    // A bad address or prefix: usage, before anything is sent.
    for bad in ["203.0.113.999", "203.0.113.0/33", "0.0.0.0/0", "mail.example.net", "203.0.113.9/24"] {
        let o = run(&named, &["allow", bad, "--class", "smtp"]);
        assert_eq!(code(&o), i32::from(exit::USAGE), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(bad), "the error names {bad}: {}", stderr(&o));
    }
    let o = run(&named, &["explain", "203.0.113.999"]);
    assert_eq!(code(&o), i32::from(exit::USAGE), "{}", stderr(&o));
    let o = run(&named, &["allow", "203.0.113.9", "--class", "smtp", "--expires", "yesterday"]);
    assert_eq!(code(&o), i32::from(exit::USAGE), "{}", stderr(&o));
    assert!(stderr(&o).contains("yesterday"), "{}", stderr(&o));
    let o = run(&named, &["allow", "203.0.113.9", "--class", "smtp", "--comment", &"x".repeat(201)]);
    assert_eq!(code(&o), i32::from(exit::USAGE), "{}", stderr(&o));

    // A wrong key: same name, another secret → BADSIG, named as such.
    let dir = tempfile::tempdir().expect("tmp");
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, common::tsig_keygen("rpz-key")).expect("write key");
    let o = run(
        &named,
        &["allow", "203.0.113.9", "--class", "smtp", "--tsig-key", wrong.to_str().expect("utf-8")],
    );
    assert_eq!(code(&o), i32::from(exit::REFUSED), "{}", stderr(&o));
    assert!(stderr(&o).contains("BADSIG"), "{}", stderr(&o));
    assert!(stderr(&o).contains("key rpz-key"), "{}", stderr(&o));
    // An unknown key name → BADKEY.
    let unknown = dir.path().join("unknown.key");
    std::fs::write(&unknown, common::tsig_keygen("other-key")).expect("write key");
    let o = run(&named, &["deny", "203.0.113.9", "--tsig-key", unknown.to_str().expect("utf-8")]);
    assert_eq!(code(&o), i32::from(exit::REFUSED), "{}", stderr(&o));
    assert!(stderr(&o).contains("BADKEY"), "{}", stderr(&o));
    let o = run(&named, &["list", "--tsig-key", unknown.to_str().expect("utf-8")]);
    assert_eq!(code(&o), i32::from(exit::REFUSED), "{}", stderr(&o));
    // A key file that is not one: the file is named.
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").expect("write");
    let o = run(&named, &["revoke", "203.0.113.9", "--tsig-key", garbage.to_str().expect("utf-8")]);
    assert_eq!(code(&o), i32::from(exit::FAILURE), "{}", stderr(&o));
    assert!(stderr(&o).contains("garbage.key"), "{}", stderr(&o));

    // An unreachable server: a closed port.
    let closed = format!("127.0.0.1:{}", free_port());
    let o = run(&named, &["deny", "203.0.113.9", "--server", &closed]);
    assert_eq!(code(&o), i32::from(exit::UNREACHABLE), "{}", stderr(&o));
    assert!(stderr(&o).contains(&closed), "{}", stderr(&o));
    // explain without a daemon and without a primary: both parts named, exit 3.
    let o = run(&named, &["explain", "203.0.113.9", "--server", &closed]);
    assert_eq!(code(&o), i32::from(exit::UNREACHABLE), "{}", stderr(&o));
    assert!(stdout(&o).contains("RPZ: UNAVAILABLE"), "{}", stdout(&o));
    assert!(stdout(&o).contains("this router: UNAVAILABLE"), "{}", stdout(&o));

    // A wrong zone: the server is not its primary.
    let o = run(&named, &["deny", "203.0.113.9", "--zone", "other.example"]);
    assert_eq!(code(&o), i32::from(exit::REFUSED), "{}", stderr(&o));
    assert!(stderr(&o).contains("other.example"), "{}", stderr(&o));

    assert_eq!(serial(&named), s, "no failed command changed the zone");
    assert_eq!(updates_logged(&named), 0, "{}", named.log());
}

#[test]
fn list_and_explain_from_bind_alone() {
    let initial: AllowSet =
        [(p("198.51.100.7"), Classes::DNS), (p("203.0.113.0/24"), Classes::SMTP)].into_iter().collect();
    let named = Named::start(&NamedConfig { initial, ..Default::default() });
    assert_eq!(code(&run(&named, &["allow", "203.0.113.9", "--class", "smtp", "--expires", "2d"])), 0);
    assert_eq!(code(&run(&named, &["deny", "192.0.2.66"])), 0);

    let o = run(&named, &["list", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON listing");
    let entries = v["entries"].as_array().expect("entries");
    let find = |e: &str| entries.iter().find(|x| x["prefix"] == e).cloned();
    assert!(find("198.51.100.7").is_some() && find("203.0.113.0/24").is_some(), "{v}");
    let m = find("203.0.113.9").expect("manual entry listed");
    assert_eq!(m["meta"]["source"], "manual", "{m}");
    assert!(m["meta"]["expires"].as_u64().is_some(), "{m}");
    let d = find("192.0.2.66").expect("deny listed");
    assert_eq!(d["denied"], true, "{d}");
    let o = run(&named, &["list", "--class", "dns"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("198.51.100.7") && !stdout(&o).contains("203.0.113.9"), "{}", stdout(&o));
    // A learned entry last confirmed 13 days ago ages out within a day
    // (default max_age 14 days); the manual one expires in 2 days.
    let seen = guard_user::ops::when::now_secs() - 13 * 86_400;
    named.nsupdate(&format!(
        "update add 198.51.100.8.rpz.example.com. 60 A 127.0.0.1\n\
         update add 198.51.100.8.rpz.example.com. 60 TXT \"rpz-guard=1\" \"src=learned\" \"first={seen}\" \"seen={seen}\" \"ttl=60\""
    ));
    let o = run(&named, &["list", "--expiring-within", "3d", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON listing");
    let only: Vec<_> =
        v["entries"].as_array().expect("entries").iter().map(|e| e["prefix"].clone()).collect();
    assert_eq!(only, [serde_json::json!("198.51.100.8"), serde_json::json!("203.0.113.9")], "{v}");
    let o = run(&named, &["list", "--expiring-within", "12h", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON listing");
    assert_eq!(v["entries"], serde_json::json!([]), "{v}");
    let o = run(&named, &["list"]);
    let text = stdout(&o);
    let line =
        |e: &str| text.lines().find(|l| l.starts_with(&format!("{e} "))).unwrap_or_default().to_owned();
    assert!(line("203.0.113.9").contains("manual"), "{text}");
    assert!(line("192.0.2.66").contains("deny"), "{text}");
    assert!(line("198.51.100.7").contains("learned?"), "an entry without TXT (older zone): {text}");

    // explain with no daemon: the RPZ part, and the router part named unavailable.
    let o = run(&named, &["explain", "203.0.113.9"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "smtp       allowed",
        "entry      203.0.113.9 (host trigger 203.0.113.9.rpz.example.com.)",
        "source     manual",
        "entry      203.0.113.0/24 (prefix trigger 24.0.113.0.203.rpz-ip.rpz.example.com.)",
        "this router: UNAVAILABLE",
    ] {
        assert!(text.contains(needle), "explain lacks {needle:?}:\n{text}");
    }
    // IPv6: 129 candidate owners asked on one connection.
    assert_eq!(code(&run(&named, &["allow", "2001:db8:100::/48", "--class", "dns"])), 0);
    let t = Instant::now();
    let o = run(&named, &["explain", "2001:db8:100::25"]);
    let took = t.elapsed();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(
            "entry      2001:db8:100::/48 (prefix trigger 48.zz.100.db8.2001.rpz-ip.rpz.example.com.)"
        ),
        "{}",
        stdout(&o)
    );
    assert!(took < std::time::Duration::from_secs(5), "explain of an IPv6 address took {took:?}");
    eprintln!("explain 2001:db8:100::25 (129 owners asked) took {took:?}");

    let o = run(&named, &["explain", "192.0.2.66", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON explain");
    assert_eq!(v["rpz"]["entries"][0]["denied"], true, "{v}");
    assert!(
        v["router"].is_null() && v["router_error"].as_str().is_some_and(|e| e.contains("no-daemon.sock")),
        "{v}"
    );
}

/// The prerequisites are BIND's to check: an UPDATE built on a stale read
/// is refused whole (`NXRRSET`, `YXRRSET`, `NXDOMAIN`), leaving the zone as
/// it was; `allow` then reads again and succeeds.
#[test]
fn stale_prerequisites_are_refused_whole_by_bind() {
    use guard_user::rpz::{
        edit::{Change, OwnerEdit, Prereq},
        transfer::SyncError,
    };
    use hickory_proto::rr::RecordType;
    let named = Named::start(&NamedConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // The server's answer to an UPDATE that must be refused.
    let refused = |edit: &OwnerEdit| match rt.block_on(edit::apply(named.addr, ZONE, &named.key, edit)) {
        Err(SyncError::Rejected { answer, .. }) => answer,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let host = p("203.0.113.9");
    // A learner wrote the entry with its TXT...
    named.nsupdate(
        "update add 203.0.113.9.rpz.example.com. 60 A 127.0.0.25\n\
         update add 203.0.113.9.rpz.example.com. 60 TXT \"rpz-guard=1\" \"src=learned\" \"seen=2\"",
    );
    let s = serial(&named);
    // ... an allow decided on an older read (seen=1) is refused whole.
    let stale = OwnerEdit {
        prefix: host,
        prereqs: vec![
            Prereq::NoRrset(RecordType::CNAME),
            Prereq::TxtIs(vec![vec!["rpz-guard=1".into(), "src=learned".into(), "seen=1".into()]]),
        ],
        changes: vec![
            Change::DeleteTxt(vec!["rpz-guard=1".into(), "src=learned".into(), "seen=1".into()]),
            Change::AddClasses(Classes::DNS),
            Change::AddTxt(vec!["rpz-guard=1".into(), "src=manual".into()]),
        ],
    };
    assert_eq!(refused(&stale), "NXRRSET");
    // A deny in between: the no-CNAME prerequisite holds the allow off.
    let other = p("203.0.113.10");
    named.nsupdate("update add 203.0.113.10.rpz.example.com. 60 CNAME .");
    let over_deny = OwnerEdit {
        prefix: other,
        prereqs: vec![Prereq::NoRrset(RecordType::CNAME)],
        changes: vec![Change::AddClasses(Classes::SMTP)],
    };
    assert_eq!(refused(&over_deny), "YXRRSET");
    // A revoke of what someone else removed meanwhile.
    let gone = OwnerEdit {
        prefix: p("203.0.113.11"),
        prereqs: vec![Prereq::InUse],
        changes: vec![Change::DeleteRrset(RecordType::A)],
    };
    assert_eq!(refused(&gone), "NXDOMAIN");
    assert_eq!(serial(&named), s + 1, "only the nsupdate deny changed the zone");
    let r = owner(&named, "203.0.113.9");
    assert_eq!((r.classes, r.txt.len()), (Classes::SMTP, 1), "the learned entry is untouched: {r:?}");

    // The command reads what is there now, so it succeeds, and the entry
    // keeps the class it had (classes are added).
    let o = run(&named, &["allow", "203.0.113.9", "--class", "dns"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = owner(&named, "203.0.113.9");
    assert_eq!(r.classes, Classes::DNS.union(Classes::SMTP));
    assert_eq!(r.txt.len(), 1, "the learned TXT replaced, not kept beside: {r:?}");
    assert_eq!(&r.txt[0][..2], [b"rpz-guard=1".to_vec(), b"src=manual".to_vec()]);
    // Somebody else's TXT at the owner stays.
    named.nsupdate("update add 203.0.113.9.rpz.example.com. 60 TXT \"v=spf1 -all\"");
    let o = run(&named, &["allow", "203.0.113.9", "--class", "smtp", "--expires", "1d"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = owner(&named, "203.0.113.9");
    assert_eq!(r.txt.len(), 2, "{r:?}");
    assert!(r.txt.iter().any(|t| *t == [b"v=spf1 -all".to_vec()]), "{r:?}");
}
