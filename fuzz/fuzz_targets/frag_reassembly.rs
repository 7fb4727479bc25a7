//! IP fragment reassembly against a model: a datagram is cut into
//! fragments at fuzzer-chosen 8-byte boundaries and delivered in a
//! fuzzer-chosen order, interleaved with hostile fragments of other
//! datagrams (any offset, length, flag, time). Unless the reassembler
//! reports a problem for it, the datagram comes out exactly once, exactly
//! as sent, when its last missing fragment arrives, and never before. The
//! table and byte counters stay within their caps.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use arbitrary::Arbitrary;
use guard_user::{
    frame::{Frag, IpPacket},
    learn::frag::{MAX_DATAGRAMS, MAX_TOTAL_BYTES, Reassembler},
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Case {
    payload: Vec<u8>,
    /// Fragment sizes in 8-byte units (modulo 64, plus 1), cycled.
    cuts: Vec<u8>,
    /// Delivery order of the fragments (a permutation is built from it).
    order: Vec<u16>,
    /// Hostile fragments: (id, offset in 8-byte units, more, time step, data).
    hostile: Vec<(u16, u16, bool, u8, Vec<u8>)>,
}

const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53));
const DST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 53));

fuzz_target!(|case: Case| {
    let payload = &case.payload[..case.payload.len().min(65_000)];
    let mut frags = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < payload.len() || frags.is_empty() {
        let units = case.cuts.get(i % case.cuts.len().max(1)).map_or(64, |c| usize::from(c % 64) + 1);
        let end = (at + units * 8).min(payload.len());
        frags.push((at, end < payload.len(), &payload[at..end]));
        at = end;
        i += 1;
    }
    // A permutation: sort fragment indices by the fuzzer's keys.
    let mut perm: Vec<usize> = (0..frags.len()).collect();
    perm.sort_by_key(|&n| case.order.get(n).copied().unwrap_or(0));
    let mut r = Reassembler::new();
    let mut hostile = case.hostile.iter();
    let mut now = 1_000_000_000u64;
    let mut outputs = 0;
    // Any reported problem (ours, or a timeout seen while pushing a hostile
    // fragment) may have cost our datagram; completeness is then not required.
    let mut problem = false;
    for (step, &n) in perm.iter().enumerate() {
        let (offset, more, data) = frags[n];
        let ip = IpPacket {
            src: SRC,
            dst: DST,
            proto: 17,
            frag: Some(Frag { id: 7, offset, more }),
            payload: data,
        };
        let out = r.push(now, &ip, Frag { id: 7, offset, more }, &mut |_| problem = true);
        match out {
            Some(whole) => {
                outputs += 1;
                assert_eq!(step + 1, perm.len(), "datagram emitted before its last fragment");
                assert_eq!(whole, payload, "reassembled datagram differs from the one sent");
            }
            None if step + 1 == perm.len() && !problem => {
                panic!("every fragment arrived in order of the fuzzer yet no datagram");
            }
            None => {}
        }
        if let Some((id, off, more, dt, d)) = hostile.next() {
            now += u64::from(*dt) * 250_000_000;
            let hid = u32::from(*id) + 1000;
            let f = Frag { id: hid, offset: usize::from(*off) * 8, more: *more };
            let hip = IpPacket { src: SRC, dst: DST, proto: 17, frag: Some(f), payload: d };
            let _ = r.push(now, &hip, f, &mut |_| problem = true);
        }
        assert!(r.in_progress() <= MAX_DATAGRAMS && r.held() <= MAX_TOTAL_BYTES);
    }
    assert!(outputs <= 1);
});
