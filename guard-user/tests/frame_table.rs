//! The userspace frame parser (`guard_user::frame`, used by the learner and
//! the OpenFlow controller) against the shared table of awkward packets
//! (`guard_tests::awkward`), the same table the XDP program and the
//! controller on Open vSwitch are held to. No privileges needed.

use std::net::IpAddr;

use guard_tests::awkward::{Endpoints, HTTP, Outcome, cases};
use guard_user::frame::{self, FrameError};

/// The decision an enforcement point makes from the parser's answer, with
/// the harness configuration of `guard_tests::awkward` (SMTP tcp 25, DNS
/// tcp/udp 53 protected; the `allowed_*` hosts registered).
fn outcome(ep: &Endpoints, f: &[u8]) -> Outcome {
    let info = match frame::parse(f) {
        Ok(i) => i,
        Err(FrameError::NotIp { .. }) => return Outcome::NonIp,
        Err(FrameError::TooManyExtHeaders) => return Outcome::ExtChain,
        Err(_) => return Outcome::Malformed,
    };
    if info.later_fragment {
        return Outcome::Fragment;
    }
    let Some((_, dport)) = info.ports else { return Outcome::Unprotected };
    let protected = matches!((info.proto, dport), (6, 25) | (6, 53) | (17, 53));
    if !protected {
        return Outcome::Unprotected;
    }
    let allowed = [IpAddr::V4(ep.allowed_v4), IpAddr::V6(ep.allowed_v6)];
    if allowed.contains(&info.dst) { Outcome::Allowed } else { Outcome::Denied }
}

#[test]
fn parser_follows_the_awkward_packet_table() {
    let ep = Endpoints::example();
    let table = cases(&ep);
    assert!(table.len() >= 50, "the table shrank: {} rows", table.len());
    let wrong: Vec<String> = table
        .iter()
        .filter_map(|c| {
            let got = outcome(&ep, &c.frame);
            (got != c.outcome).then(|| format!("{}: got {got:?}, want {:?}", c.name, c.outcome))
        })
        .collect();
    assert!(wrong.is_empty(), "parser disagrees with the table:\n{}", wrong.join("\n"));
}

#[test]
fn learner_view_of_a_tiny_fragment() {
    // The learner reassembles fragments, so it reads the IP layer of a
    // tiny first fragment fine; only the enforcement view (`ports`) refuses it.
    let ep = Endpoints::example();
    let tiny = cases(&ep).into_iter().find(|c| c.name.starts_with("tiny first fragment, tcp")).expect("row");
    assert_eq!(tiny.outcome, Outcome::Malformed);
    let (_, _, ip) = frame::ethernet(&tiny.frame).expect("ethernet");
    let ip = frame::ip(ip).expect("ip layer is whole");
    assert!(ip.frag.is_some_and(|f| f.offset == 0 && f.more));
    assert_eq!(frame::ports(&ip), Err(FrameError::TruncatedTransport));
    assert_eq!(u16::from_be_bytes([ip.payload[2], ip.payload[3]]), HTTP);
}
