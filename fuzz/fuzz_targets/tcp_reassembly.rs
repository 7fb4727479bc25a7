//! TCP stream reassembly of DNS over TCP, against a model: a stream of
//! length-prefixed messages is cut into segments at fuzzer-chosen points
//! and delivered in a fuzzer-chosen order, with duplicates, optionally
//! mixed with hostile segments of another flow. Unless the reassembler
//! reports a loss, the messages it delivers are exactly a prefix of those
//! sent, in order; once every segment has arrived, all of them. The flow
//! and byte counters always stay within their caps.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use arbitrary::Arbitrary;
use guard_user::{
    frame::TcpSeg,
    learn::tcp::{FlowKey, MAX_FLOWS, MAX_TOTAL_BYTES, TcpReassembler},
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Case {
    isn: u32,
    messages: Vec<Vec<u8>>,
    /// Segment sizes (taken modulo 700, plus 1), cycled.
    cuts: Vec<u16>,
    /// Delivery: indices into the segments (modulo their count).
    order: Vec<u16>,
    /// Finish by delivering every segment in order.
    complete: bool,
    /// Hostile segments of a second flow, interleaved.
    hostile: Vec<(u32, bool, bool, bool, Vec<u8>)>,
}

fn key(port: u16) -> FlowKey {
    let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53));
    FlowKey { src: a, dst: b, sport: port, dport: 53 }
}

fn seg(seq: u32, syn: bool, data: &[u8]) -> TcpSeg<'_> {
    TcpSeg { sport: 40_000, dport: 53, seq, syn, fin: false, rst: false, data }
}

fuzz_target!(|case: Case| {
    let messages: Vec<Vec<u8>> =
        case.messages.into_iter().filter(|m| !m.is_empty() && m.len() <= 65_535).take(64).collect();
    let mut stream = Vec::new();
    for m in &messages {
        stream.extend_from_slice(&(m.len() as u16).to_be_bytes());
        stream.extend_from_slice(m);
    }
    let mut segments = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let size = case.cuts.get(i % case.cuts.len().max(1)).map_or(512, |c| usize::from(c % 700) + 1);
        let end = (at + size).min(stream.len());
        segments.push((at, &stream[at..end]));
        at = end;
        i += 1;
    }
    let mut t = TcpReassembler::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut lost = false;
    let mut hostile_got = 0usize;
    let good = key(40_000);
    let bad = key(40_001);
    t.push(0, good, &seg(case.isn, true, &[]), &mut |_| lost = true, &mut |m| got.push(m.to_vec()));
    let mut hostile = case.hostile.iter();
    let deliver_all = segments.iter().enumerate().map(|(n, _)| n as u16);
    let order: Vec<u16> = if case.complete {
        case.order.iter().copied().chain(deliver_all).collect()
    } else {
        case.order.clone()
    };
    for (n, idx) in order.iter().enumerate() {
        if segments.is_empty() {
            break;
        }
        let (off, data) = segments[usize::from(*idx) % segments.len()];
        let s = seg(case.isn.wrapping_add(1).wrapping_add(off as u32), false, data);
        t.push(n as u64, good, &s, &mut |_| lost = true, &mut |m| got.push(m.to_vec()));
        if let Some((seq, syn, fin, rst, d)) = hostile.next() {
            let h = TcpSeg { sport: 40_001, dport: 53, seq: *seq, syn: *syn, fin: *fin, rst: *rst, data: d };
            t.push(n as u64, bad, &h, &mut |_| {}, &mut |_| hostile_got += 1);
        }
        assert!(t.flows() <= MAX_FLOWS && t.buffered() <= MAX_TOTAL_BYTES);
        if !lost {
            assert!(got.len() <= messages.len(), "more messages than sent");
            assert_eq!(got[..], messages[..got.len()], "a delivered message differs from the one sent");
        }
    }
    if case.complete && !lost {
        assert_eq!(got, messages, "every segment arrived, yet messages are missing");
    }
});
