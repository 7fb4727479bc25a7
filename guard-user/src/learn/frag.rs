//! IP fragment reassembly with bounded memory (RFC 791 §3.2; RFC 8200 §4.5).
//!
//! Large EDNS answers arrive fragmented. Fragments are keyed by (source,
//! destination, protocol, identification); overlapping fragments drop the
//! whole datagram (RFC 5722 for IPv6, applied to IPv4 too: no honest sender
//! overlaps). Incomplete datagrams expire after [`FRAG_TIMEOUT_NS`]; at most
//! [`MAX_DATAGRAMS`] are in progress at once.
use std::{collections::HashMap, net::IpAddr};

use super::stats::Discard;
use crate::frame::{Frag, IpPacket};

/// Incomplete datagrams are dropped after this long (capture time).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;
/// Most datagrams reassembled at once.
pub const MAX_DATAGRAMS: usize = 4096;
/// Most fragment bytes held over all datagrams together.
pub const MAX_TOTAL_BYTES: usize = 32 << 20;
/// Largest reassembled payload.
const MAX_DATAGRAM_LEN: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
}

#[derive(Debug)]
struct Partial {
    first_ns: u64,
    /// (offset, data), unordered.
    parts: Vec<(usize, Vec<u8>)>,
    total: Option<usize>,
    bytes: usize,
}

/// The reassembly table.
#[derive(Debug, Default)]
pub struct Reassembler {
    table: HashMap<Key, Partial>,
    last_sweep_ns: u64,
    /// Fragment bytes held.
    held: usize,
}

impl Reassembler {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Datagrams in progress.
    pub fn in_progress(&self) -> usize {
        self.table.len()
    }

    /// Fragment bytes held.
    pub fn held(&self) -> usize {
        self.held
    }

    fn remove(&mut self, key: &Key) -> Option<Partial> {
        let p = self.table.remove(key)?;
        self.held -= p.bytes;
        Some(p)
    }

    /// Adds a fragment; returns the whole transport payload once complete.
    /// Problems are reported through `discard`.
    pub fn push(
        &mut self,
        now_ns: u64,
        ip: &IpPacket<'_>,
        frag: Frag,
        discard: &mut impl FnMut(Discard),
    ) -> Option<Vec<u8>> {
        self.expire(now_ns, discard);
        let data = ip.payload;
        let key = Key { src: ip.src, dst: ip.dst, proto: ip.proto, id: frag.id };
        let end = frag.offset + data.len();
        if end > MAX_DATAGRAM_LEN || (frag.more && !data.len().is_multiple_of(8)) {
            self.remove(&key);
            discard(Discard::BadFragment);
            return None;
        }
        let full = self.table.len() >= MAX_DATAGRAMS || self.held + data.len() > MAX_TOTAL_BYTES;
        if full && !self.table.contains_key(&key) {
            discard(Discard::FragmentTableFull);
            return None;
        }
        let p = self.table.entry(key).or_insert_with(|| Partial {
            first_ns: now_ns,
            parts: Vec::new(),
            total: None,
            bytes: 0,
        });
        let overlaps = p.parts.iter().any(|(o, d)| frag.offset < o + d.len() && *o < end);
        let bad_total = match (frag.more, p.total) {
            (false, Some(t)) => t != end,
            (false, None) => p.parts.iter().any(|(o, d)| o + d.len() > end),
            (true, Some(t)) => end > t,
            (true, None) => false,
        };
        if overlaps || bad_total || self.held + data.len() > MAX_TOTAL_BYTES {
            self.remove(&key);
            discard(Discard::BadFragment);
            return None;
        }
        if !frag.more {
            p.total = Some(end);
        }
        p.bytes += data.len();
        p.parts.push((frag.offset, data.to_vec()));
        self.held += data.len();
        match p.total {
            // No overlaps, so covering `total` bytes means complete.
            Some(t) if p.bytes == t => {
                let mut p = self.remove(&key)?;
                p.parts.sort_unstable_by_key(|(o, _)| *o);
                let mut out = Vec::with_capacity(t);
                for (_, d) in p.parts {
                    out.extend_from_slice(&d);
                }
                Some(out)
            }
            _ => None,
        }
    }

    /// Drops datagrams older than the timeout (checked at most once a second).
    pub fn expire(&mut self, now_ns: u64, discard: &mut impl FnMut(Discard)) {
        if now_ns < self.last_sweep_ns.saturating_add(1_000_000_000) || self.table.is_empty() {
            return;
        }
        self.last_sweep_ns = now_ns;
        let before = self.table.len();
        let mut freed = 0;
        self.table.retain(|_, p| {
            let keep = now_ns.saturating_sub(p.first_ns) < FRAG_TIMEOUT_NS;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.held -= freed;
        for _ in self.table.len()..before {
            discard(Discard::FragmentTimeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(offset: usize, more: bool) -> Frag {
        Frag { id: 7, offset, more }
    }

    fn ip(payload: &[u8]) -> IpPacket<'_> {
        IpPacket {
            src: "192.0.2.1".parse().expect("ip"),
            dst: "192.0.2.2".parse().expect("ip"),
            proto: 17,
            frag: None,
            payload,
        }
    }

    #[test]
    fn reassembles_out_of_order_and_rejects_overlap() {
        let mut r = Reassembler::new();
        let mut drops = Vec::new();
        let mut d = |x| drops.push(x);
        assert!(r.push(0, &ip(&[2; 4]), f(8, false), &mut d).is_none());
        let out = r.push(0, &ip(&[1; 8]), f(0, true), &mut d).expect("complete");
        assert_eq!(out, [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert!(r.push(0, &ip(&[1; 16]), f(0, true), &mut d).is_none());
        assert!(r.push(0, &ip(&[1; 8]), f(8, false), &mut d).is_none());
        assert_eq!(drops, vec![Discard::BadFragment]);
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn expires_incomplete_datagrams() {
        let mut r = Reassembler::new();
        let mut drops = Vec::new();
        let mut d = |x| drops.push(x);
        assert!(r.push(1_000_000_000, &ip(&[0; 8]), f(0, true), &mut d).is_none());
        r.expire(FRAG_TIMEOUT_NS + 2_000_000_000, &mut d);
        assert_eq!(drops, vec![Discard::FragmentTimeout]);
        assert_eq!((r.in_progress(), r.held()), (0, 0));
    }

    /// Found by the `learn_capture` fuzz target: capture timestamps near
    /// `u64::MAX` overflowed the expiry deadline.
    #[test]
    fn timestamps_near_the_end_of_time_do_not_overflow() {
        let mut r = Reassembler::new();
        r.last_sweep_ns = u64::MAX - 1;
        r.expire(u64::MAX, &mut |_| {});
        r.expire(3, &mut |_| {});
    }
}
