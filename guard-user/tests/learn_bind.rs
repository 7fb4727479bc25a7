//! Real DNS traffic: in a network namespace made by this test, real BIND
//! authoritative servers (root, com, net, org, domains with glue,
//! out-of-bailiwick NS, MX with A and AAAA, a CNAME'd mail host) and a real
//! BIND recursive resolver; a client resolves names through it while tcpdump
//! captures; the learner must find exactly the servers the zone data says
//! were used. The expected set comes from the zones this test wrote.
mod common;
mod learn_common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::Netns;
use guard_user::{
    learn::{self, Hints, LearnOptions},
    policy::{AllowSet, Classes, Prefix},
};

/// A child process killed (by its own pid) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const AUTH: &[(&str, &str)] = &[
    ("root", "198.51.100.1"),
    ("com", "198.51.100.2"),
    ("net", "198.51.100.3"),
    ("org", "198.51.100.4"),
    ("example", "198.51.100.10"),
    ("hoster", "198.51.100.20"),
    ("provider", "198.51.100.21"),
];
const RESOLVER: &str = "192.0.2.53";
const CLIENT: &str = "192.0.2.100";

const SOA: &str = "@ 300 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 300\n";

fn zones() -> Vec<(&'static str, &'static str, String)> {
    // (view, zone origin, zone text)
    vec![
        (
            "root",
            ".",
            format!(
                "$ORIGIN .\n{SOA}. NS a.root-servers.test.\na.root-servers.test. A 198.51.100.1\n\
            com. NS a.nic.com.\na.nic.com. A 198.51.100.2\nnet. NS a.nic.net.\na.nic.net. A 198.51.100.3\n\
            org. NS a.nic.org.\na.nic.org. A 198.51.100.4\n"
            ),
        ),
        (
            "com",
            "com",
            format!(
                "$ORIGIN com.\n{SOA}@ NS a.nic.com.\na.nic A 198.51.100.2\n\
            example NS ns1.example.com.\nns1.example A 198.51.100.10\nns1.example AAAA 2001:db8:a::10\n"
            ),
        ),
        (
            "net",
            "net",
            format!(
                "$ORIGIN net.\n{SOA}@ NS a.nic.net.\na.nic A 198.51.100.3\n\
            hoster NS ns.hoster.net.\nns.hoster A 198.51.100.20\n\
            provider NS ns1.provider.net.\nns1.provider A 198.51.100.21\n"
            ),
        ),
        (
            "org",
            "org",
            format!(
                "$ORIGIN org.\n{SOA}@ NS a.nic.org.\na.nic A 198.51.100.4\n\
            example NS ns.hoster.net.\n"
            ),
        ),
        (
            "example",
            "example.com",
            format!(
                "$ORIGIN example.com.\n{SOA}@ NS ns1\nns1 A 198.51.100.10\n\
            ns1 AAAA 2001:db8:a::10\n@ MX 10 mail\n@ MX 20 mx.provider.net.\nmail A 198.51.100.25\n\
            mail AAAA 2001:db8:a::25\nwww A 198.51.100.80\n"
            ),
        ),
        ("hoster", "hoster.net", format!("$ORIGIN hoster.net.\n{SOA}@ NS ns\nns A 198.51.100.20\n")),
        (
            "hoster",
            "example.org",
            format!(
                "$ORIGIN example.org.\n{SOA}@ NS ns.hoster.net.\n@ MX 10 smtp\n\
            smtp CNAME mailhost\nmailhost A 198.51.100.26\nwww A 198.51.100.81\n"
            ),
        ),
        (
            "provider",
            "provider.net",
            format!(
                "$ORIGIN provider.net.\n{SOA}@ NS ns1\nns1 A 198.51.100.21\n\
            mx A 198.51.100.30\nmx AAAA 2001:db8:a::30\n"
            ),
        ),
    ]
}

fn expected() -> AllowSet {
    let dns = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "198.51.100.10",
        "2001:db8:a::10",
        "198.51.100.20",
        "198.51.100.21",
    ];
    let smtp = ["198.51.100.25", "2001:db8:a::25", "198.51.100.30", "2001:db8:a::30", "198.51.100.26"];
    dns.iter()
        .map(|a| (Prefix::host(a.parse().expect("ip")), Classes::DNS))
        .chain(smtp.iter().map(|a| (Prefix::host(a.parse().expect("ip")), Classes::SMTP)))
        .collect()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn named(ns: &str, dir: &Path, name: &'static str, conf: &str) -> Proc {
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).expect("write named.conf");
    run_ok(Command::new("named-checkconf").arg(&conf_path));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "named", "-4", "-g", "-n", "1", "-c"])
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start named");
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        if log.lines().any(|l| l.ends_with(" running")) {
            return p;
        }
        assert!(
            Instant::now() < deadline && !log.contains("exiting (due to fatal error)"),
            "named {name}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dig(ns: &str, args: &[&str]) -> String {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "dig", "-b", CLIENT, &format!("@{RESOLVER}"), "+tries=1", "+time=3"]);
    c.args(args);
    run_ok(&mut c)
}

#[test]
fn learns_exactly_the_servers_a_real_resolver_used() {
    let tmp = tempfile::Builder::new().prefix("rpz-learn-bind-").tempdir().expect("tempdir");
    let dir = tmp.path();
    let ns = Netns::new(&format!("lrnb{}", std::process::id() % 100_000));
    for (_, a) in AUTH {
        run_ok(Command::new("ip").args(["-n", &ns.name, "addr", "add", &format!("{a}/32"), "dev", "lo"]));
    }
    for a in [RESOLVER, CLIENT] {
        run_ok(Command::new("ip").args(["-n", &ns.name, "addr", "add", &format!("{a}/32"), "dev", "lo"]));
    }

    // One authoritative named, one view per server address.
    let mut auth = format!(
        "options {{ directory \"{d}\"; pid-file \"{d}/auth.pid\"; session-keyfile none; \
         listen-on port 53 {{ {addrs}; }}; listen-on-v6 {{ none; }}; recursion no; \
         dnssec-validation no; notify no; }};\ncontrols {{ }};\n",
        d = dir.display(),
        addrs = AUTH.iter().map(|(_, a)| *a).collect::<Vec<_>>().join("; ")
    );
    for (view, addr) in AUTH {
        auth.push_str(&format!("view \"{view}\" {{ match-destinations {{ {addr}; }};\n"));
        for (v, origin, text) in zones() {
            if v == *view {
                let file = format!("{}.db", origin.replace('.', "_"));
                std::fs::write(dir.join(&file), text).expect("write zone");
                auth.push_str(&format!("  zone \"{origin}\" {{ type primary; file \"{file}\"; }};\n"));
            }
        }
        auth.push_str("};\n");
    }
    let _auth = named(&ns.name, dir, "auth", &auth);

    let hints = ". 3600000 NS a.root-servers.test.\na.root-servers.test. 3600000 A 198.51.100.1\n";
    std::fs::write(dir.join("hints.db"), hints).expect("write hints");
    let resolver = format!(
        "options {{ directory \"{d}\"; pid-file \"{d}/res.pid\"; session-keyfile none; \
         listen-on port 53 {{ {RESOLVER}; }}; listen-on-v6 {{ none; }}; recursion yes; \
         allow-recursion {{ any; }}; query-source address {RESOLVER}; dnssec-validation no; notify no; }};\n\
         controls {{ }};\nzone \".\" {{ type hint; file \"hints.db\"; }};\n",
        d = dir.display()
    );
    let _resolver = named(&ns.name, dir, "resolver", &resolver);

    let pcap = dir.join("border.pcap");
    let mut td = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "tcpdump",
            "-Z",
            "root",
            "--immediate-mode",
            "-i",
            "lo",
            "-U",
            "-w",
        ])
        .arg(&pcap)
        .args(["port", "53"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    let stderr = td.stderr.take().expect("tcpdump stderr");
    let tcpdump = Proc(td);
    let mut line = String::new();
    let mut stderr = BufReader::new(stderr);
    stderr.read_line(&mut line).expect("tcpdump says it is listening");
    assert!(line.contains("listening"), "tcpdump: {line}");

    // What a client and an MTA would look up.
    let mx = dig(&ns.name, &["MX", "example.com", "+short"]);
    assert!(mx.contains("mail.example.com.") && mx.contains("mx.provider.net."), "{mx}");
    for (t, n) in [
        ("A", "mail.example.com"),
        ("AAAA", "mail.example.com"),
        ("A", "mx.provider.net"),
        ("AAAA", "mx.provider.net"),
        ("A", "www.example.com"),
        ("MX", "example.org"),
        ("A", "smtp.example.org"),
        ("A", "www.example.org"),
        ("A", "nonexistent.example.com"),
        // Client to resolver over TCP.
        ("+tcp", "www.example.org"),
    ] {
        dig(&ns.name, &[t, n]);
    }
    assert!(dig(&ns.name, &["A", "smtp.example.org", "+short"]).contains("198.51.100.26"));
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM so tcpdump flushes and closes the file.
    // SAFETY: kill(2) on the pid of our own child; no memory is involved.
    let rc = unsafe { libc::kill(tcpdump.0.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let mut tcpdump = tcpdump;
    let _ = tcpdump.0.wait();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);

    let out = learn::run(&LearnOptions {
        inputs: vec![pcap.clone()],
        hints: Hints::parse(hints).expect("hints"),
        window: Duration::from_secs(10),
        progress: false,
    })
    .expect("learn from the real capture");
    let s = &out.summary;
    assert_eq!(s.malformed_total(), 0, "{s:?}");
    assert!(s.packets > 0, "tcpdump captured nothing: {line}{rest}");
    assert!(s.matched >= 10 && s.untrusted_responses >= 10, "{s:?}");
    eprintln!("summary of the real capture: {s:?}");
    // The zero-copy reader agrees with hickory-proto on every message.
    let msgs = learn_common::udp_dns_payloads(&pcap);
    assert!(msgs.len() >= 20);
    for m in &msgs {
        let h = hickory_proto::op::Message::from_vec(m).expect("hickory reads BIND's messages");
        assert_eq!(learn_common::our_facts(m), Some(learn_common::hickory_facts(&h)));
    }
    // The client's TCP query and its response were reassembled and counted.
    assert!(s.dns_messages as usize >= msgs.len() + 2, "{} UDP messages; {s:?}", msgs.len());
    let want = expected();
    let d = out.allow.diff(&want);
    assert!(d.is_empty(), "learned {:?}\nexpected {:?}\nsummary {s:?}", out.allow, want);
}
