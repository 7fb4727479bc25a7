//! The RPZ master-file reader (`$ORIGIN`, `$TTL`, parentheses, quoting...):
//! arbitrary text is a clear error with a line number or a parsed zone,
//! never a panic. Round trips with the writer: a parsed zone written back
//! and read again gives the same serial and allow set; and so does any
//! allow set built from fuzzer-chosen prefixes and classes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guard_user::{
    policy::{AllowSet, Classes, Prefix},
    rpz::zonefile::{ParsedZone, ZoneError, parse_zone, write_zone},
};
use libfuzzer_sys::fuzz_target;

const ORIGINS: [&str; 3] = ["rpz.example.com", "rpz.example.com.", "Allow.RPZ"];

fn round_trip(set: &AllowSet, origin: &str, serial: u32) -> Option<ParsedZone> {
    let mut text = Vec::new();
    if let Err(e) = write_zone(set, origin, serial, &mut text) {
        // Only a prefix the zone cannot hold is refused, and then nothing is written.
        assert!(set.iter().any(|(p, _)| guard_user::rpz::unencodable(p).is_some()), "write failed: {e}");
        assert!(text.is_empty());
        return None;
    }
    let text = String::from_utf8(text).expect("the writer writes UTF-8");
    let back = parse_zone(&text, origin).unwrap_or_else(|e| panic!("own zone file rejected: {e}\n{text}"));
    assert_eq!(back.serial, serial);
    assert_eq!(&back.set, set, "zone file round trip changed the set\n{text}");
    Some(back)
}

/// Prefixes from raw bytes: 1 byte kind/length, then 4 or 16 address bytes.
fn prefixes(mut b: &[u8]) -> AllowSet {
    let mut set = AllowSet::new();
    while let [k, rest @ ..] = b {
        let v6 = k & 0x80 != 0;
        let n = if v6 { 16 } else { 4 };
        let Some(addr) = rest.get(..n) else { break };
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr).expect("16 bytes")))
        } else {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr).expect("4 bytes")))
        };
        let max = if v6 { 128 } else { 32 };
        let len = (k & 0x7f) % (max + 1);
        let classes = match k % 3 {
            0 => Classes::DNS,
            1 => Classes::SMTP,
            _ => Classes::DNS.union(Classes::SMTP),
        };
        if let Ok(p) = Prefix::new(ip, len) {
            set.add(p, classes);
        }
        b = &rest[n..];
    }
    set
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let origin = ORIGINS[usize::from(mode % 3)];
    if mode & 0x80 != 0 {
        let serial = u32::from(mode) * 7919;
        round_trip(&prefixes(rest), origin, serial);
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match parse_zone(text, origin) {
        Ok(z) => {
            assert!(z.set.len() <= z.records, "more entries than records");
            round_trip(&z.set, origin, z.serial);
        }
        Err(ZoneError::Syntax { line, .. }) => {
            assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "error line {line} out of range");
        }
        Err(_) => {}
    }
});
