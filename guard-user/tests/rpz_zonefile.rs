//! Zone files written by `write_zone` are accepted by BIND's own tools, and
//! what BIND writes back (`named-compilezone -D`) parses to the same set.

use std::{net::IpAddr, process::Command};

use guard_user::{
    policy::{AllowSet, Classes, Prefix},
    rpz::zonefile::{ParsedZone, parse_zone, write_zone},
};

const ZONE: &str = "rpz.example.com";

/// A deterministic mix of IPv4/IPv6 hosts and prefixes with all class sets.
fn sample_set(n: u32) -> AllowSet {
    let classes = [Classes::DNS, Classes::SMTP, Classes::DNS.union(Classes::SMTP)];
    let mut s = AllowSet::new();
    for i in 0..n {
        let c = classes[(i % 3) as usize];
        let x = i.wrapping_mul(2_654_435_761);
        let p = match i % 5 {
            0..=2 => Prefix::host(IpAddr::V4(x.into())),
            3 => Prefix::host(IpAddr::V6(
                (u128::from(x) << 64 | 0x2001_0db8_u128 << 96 | u128::from(i)).into(),
            )),
            _ => Prefix::new(IpAddr::V4(x.into()), 8 + (i % 24) as u8).expect("prefix"),
        };
        s.add(p, c);
    }
    s
}

#[test]
fn named_checkzone_accepts_and_compilezone_round_trips() {
    let dir = tempfile::tempdir().expect("temp dir");
    let set = sample_set(2000);
    let path = dir.path().join("rpz.db");
    let mut f = std::fs::File::create(&path).expect("create");
    write_zone(&set, ZONE, 2024, &mut f).expect("write");
    drop(f);

    let (parsed, _) = bind_reads_back(dir.path(), &path);
    assert_eq!(parsed.serial, 2024);
    assert_eq!(parsed.ignored.count, 0, "{:?}", parsed.ignored.samples);
    assert_eq!(parsed.set, set);
}

/// Every TXT record an owner holds is written (issue 11: only the one that
/// counted was): two of ours, a foreign one that is not UTF-8, a TXT-only
/// owner. BIND accepts the file, and its own dump reads back as the same
/// mirror, byte for byte.
#[test]
fn whole_txt_rrsets_pass_named_checkzone_and_round_trip() {
    use guard_user::rpz::meta::EntryMeta;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut set = sample_set(30);
    let hosts: Vec<Prefix> =
        set.iter().map(|(p, _)| *p).filter(|p| *p == Prefix::host(p.addr())).take(3).collect();
    for (i, p) in hosts.iter().enumerate() {
        let seen = 1_796_601_600 + i as u64;
        let (a, b) = (EntryMeta::learned(seen, 60, None), EntryMeta::learned(seen + 9, 60, None));
        set.add_txt(*p, a.encode_txt().expect("a"), Some(a));
        set.add_txt(*p, b.encode_txt().expect("b"), Some(b));
        set.add_txt(*p, vec![vec![0xff, 0xfe, b'"', b'\\'], b"v=spf1 -all".to_vec()], None);
    }
    let lonely: Prefix = "192.0.2.99".parse().expect("prefix");
    assert!(set.get(&lonely).is_empty());
    set.add_txt(lonely, vec![b"somebody else's".to_vec()], None);
    let path = dir.path().join("rpz.db");
    let mut f = std::fs::File::create(&path).expect("create");
    write_zone(&set, ZONE, 7, &mut f).expect("write");
    drop(f);
    let (parsed, text) = bind_reads_back(dir.path(), &path);
    assert_eq!(parsed.ignored.count, hosts.len() + 1, "the foreign TXTs: {:?}", parsed.ignored.samples);
    assert_eq!(parsed.set, set, "{text}");
    assert_eq!(parsed.set.txt(&hosts[0]).len(), 3);
}

#[test]
fn named_checkzone_rejects_what_parse_zone_rejects() {
    // Sanity check that the parser is not laxer than BIND on broken data.
    let dir = tempfile::tempdir().expect("temp dir");
    let text =
        "$TTL 60\n@ SOA localhost. root.localhost. 1 1 1 1 1\n@ NS localhost.\n1.2.3.4 A 127.0.0.300\n";
    let path = dir.path().join("bad.db");
    std::fs::write(&path, text).expect("write");
    let out = Command::new("named-checkzone").arg(ZONE).arg(&path).output().expect("run named-checkzone");
    assert!(!out.status.success(), "BIND accepted a bad address");
    let e = parse_zone(text, ZONE).expect_err("bad address");
    assert!(e.to_string().contains("line 4"), "{e}");
}

/// Checks the zone file at `path` with `named-checkzone`, then has BIND dump
/// it (`named-compilezone`) into `dir` and parses the dump: what BIND made of
/// the file, and the dump's text.
fn bind_reads_back(dir: &std::path::Path, path: &std::path::Path) -> (ParsedZone, String) {
    let out = Command::new("named-checkzone").arg(ZONE).arg(path).output().expect("run named-checkzone");
    assert!(
        out.status.success(),
        "named-checkzone rejected our zone:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = dir.join("dump.db");
    let out = Command::new("named-compilezone")
        .args(["-D", "-q", "-o"])
        .arg(&dumped)
        .arg(ZONE)
        .arg(path)
        .output()
        .expect("run named-compilezone");
    assert!(out.status.success(), "named-compilezone failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&dumped).expect("read dump");
    let parsed = parse_zone(&text, ZONE).expect("BIND's dump parses");
    (parsed, text)
}
