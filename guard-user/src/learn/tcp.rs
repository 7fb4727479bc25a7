//! DNS over TCP: per-direction stream reassembly and the 2-byte length framing
//! (RFC 1035 §4.2.2, RFC 7766 §8).
//!
//! Several messages may share one segment and one message may span several.
//! Memory is bounded: at most [`MAX_FLOWS`] directions are tracked, each holds
//! at most [`MAX_BUFFER`] bytes in order and [`MAX_OOO`] out-of-order
//! segments; idle flows expire after [`FLOW_IDLE_NS`]. A stream joined
//! mid-way starts at the first segment seen (its framing may be off: the
//! messages then fail to parse and are counted, never learned from).
use std::{collections::HashMap, net::IpAddr};

use super::stats::Discard;
use crate::frame::TcpSeg;

/// Most flow directions tracked.
pub const MAX_FLOWS: usize = 65_536;
/// Most in-order bytes buffered per direction (one maximal message and its prefix, twice).
pub const MAX_BUFFER: usize = 2 * (65_535 + 2);
/// Most out-of-order segments held per direction.
pub const MAX_OOO: usize = 16;
/// Most bytes buffered over all flows together.
pub const MAX_TOTAL_BYTES: usize = 64 << 20;
/// Idle flows are forgotten after this long (capture time).
pub const FLOW_IDLE_NS: u64 = 120_000_000_000;

/// One direction of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Sender address.
    pub src: IpAddr,
    /// Receiver address.
    pub dst: IpAddr,
    /// Sender port.
    pub sport: u16,
    /// Receiver port.
    pub dport: u16,
}

#[derive(Debug, Default)]
struct Stream {
    next_seq: u32,
    buf: Vec<u8>,
    ooo: Vec<(u32, Vec<u8>)>,
    last_ns: u64,
}

/// The TCP reassembly table.
#[derive(Debug, Default)]
pub struct TcpReassembler {
    flows: HashMap<FlowKey, Stream>,
    last_sweep_ns: u64,
    /// Bytes held in all streams.
    buffered: usize,
}

impl TcpReassembler {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Flow directions tracked.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Bytes buffered over all flows.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    fn remove(&mut self, key: &FlowKey) {
        if let Some(s) = self.flows.remove(key) {
            self.buffered -= s.size();
        }
    }

    /// Feeds one segment; calls `msg` for every complete DNS message.
    pub fn push(
        &mut self,
        now_ns: u64,
        key: FlowKey,
        seg: &TcpSeg<'_>,
        discard: &mut impl FnMut(Discard),
        msg: &mut impl FnMut(&[u8]),
    ) {
        self.sweep(now_ns);
        if seg.rst {
            self.remove(&key);
            return;
        }
        if seg.syn {
            // A new connection restarts the stream.
            let s = Stream { next_seq: seg.seq.wrapping_add(1), last_ns: now_ns, ..Stream::default() };
            if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&key) {
                discard(Discard::TcpFlowTableFull);
                return;
            }
            self.remove(&key);
            self.flows.insert(key, s);
            if seg.data.is_empty() {
                return;
            }
        }
        if seg.data.is_empty() {
            if seg.fin {
                self.remove(&key);
            }
            return;
        }
        if !self.flows.contains_key(&key) {
            if self.flows.len() >= MAX_FLOWS {
                discard(Discard::TcpFlowTableFull);
                return;
            }
            // Joined mid-stream: start here.
            self.flows.insert(key, Stream { next_seq: seg.seq, ..Stream::default() });
        }
        let Some(s) = self.flows.get_mut(&key) else { return };
        let before = s.size();
        s.last_ns = now_ns;
        let seq = if seg.syn { seg.seq.wrapping_add(1) } else { seg.seq };
        s.accept(seq, seg.data, discard);
        // Out-of-order segments that now fit.
        while let Some(i) = s.ooo.iter().position(|(q, d)| {
            let rel = q.wrapping_sub(s.next_seq) as i32;
            rel <= 0 && (d.len() as i64) > -i64::from(rel)
        }) {
            let (q, d) = s.ooo.swap_remove(i);
            s.accept(q, &d, discard);
        }
        s.ooo.retain(|(q, d)| (q.wrapping_add(d.len() as u32).wrapping_sub(s.next_seq) as i32) > 0);
        s.frame(discard, msg);
        let after = s.size();
        if self.buffered - before + after > MAX_TOTAL_BYTES {
            // Over the global budget: this flow loses what it holds.
            discard(Discard::TcpStreamLoss);
            s.buf = Vec::new();
            s.ooo = Vec::new();
            self.buffered -= before;
        } else {
            self.buffered = self.buffered - before + after;
        }
        if seg.fin {
            self.remove(&key);
        }
    }

    fn sweep(&mut self, now_ns: u64) {
        if now_ns < self.last_sweep_ns.saturating_add(10_000_000_000) {
            return;
        }
        self.last_sweep_ns = now_ns;
        let mut freed = 0;
        self.flows.retain(|_, s| {
            let keep = now_ns.saturating_sub(s.last_ns) < FLOW_IDLE_NS;
            if !keep {
                freed += s.size();
            }
            keep
        });
        self.buffered -= freed;
    }
}

impl Stream {
    fn size(&self) -> usize {
        self.buf.len() + self.ooo.iter().map(|(_, d)| d.len()).sum::<usize>()
    }

    fn accept(&mut self, seq: u32, data: &[u8], discard: &mut impl FnMut(Discard)) {
        let rel = seq.wrapping_sub(self.next_seq) as i32;
        if rel > 0 {
            if self.ooo.len() >= MAX_OOO || data.len() > MAX_BUFFER {
                discard(Discard::TcpStreamLoss);
                return;
            }
            self.ooo.push((seq, data.to_vec()));
            return;
        }
        // Retransmitted bytes are skipped.
        let skip = usize::try_from(-i64::from(rel)).unwrap_or(usize::MAX);
        let Some(fresh) = data.get(skip..) else { return };
        if self.buf.len() + fresh.len() > MAX_BUFFER {
            discard(Discard::TcpStreamLoss);
            self.buf.clear();
            self.ooo.clear();
            self.next_seq = seq.wrapping_add(data.len() as u32);
            return;
        }
        self.buf.extend_from_slice(fresh);
        self.next_seq = self.next_seq.wrapping_add(fresh.len() as u32);
    }

    fn frame(&mut self, discard: &mut impl FnMut(Discard), msg: &mut impl FnMut(&[u8])) {
        let mut at = 0;
        while let Some(len) = self.buf.get(at..at + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        {
            if len == 0 {
                discard(Discard::Dns(super::dns::DnsError::ShortHeader));
                at += 2;
                continue;
            }
            let Some(m) = self.buf.get(at + 2..at + 2 + len) else { break };
            msg(m);
            at += 2 + len;
        }
        self.buf.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, syn: bool, data: &[u8]) -> TcpSeg<'_> {
        TcpSeg { sport: 1000, dport: 53, seq, syn, fin: false, rst: false, data }
    }

    #[test]
    fn frames_split_joined_and_reordered_messages() {
        let key = FlowKey {
            src: "192.0.2.1".parse().expect("ip"),
            dst: "192.0.2.2".parse().expect("ip"),
            sport: 1000,
            dport: 53,
        };
        let mut t = TcpReassembler::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut drops = Vec::new();
        let mut d = |x| drops.push(x);
        t.push(0, key, &seg(99, true, &[]), &mut d, &mut |m| got.push(m.to_vec()));
        // Two messages in one segment, the second cut in half.
        t.push(0, key, &seg(100, false, &[0, 2, 1, 1, 0, 3, 2]), &mut d, &mut |m| got.push(m.to_vec()));
        // A later segment first, then the missing one, then a retransmission.
        t.push(0, key, &seg(109, false, &[0, 1, 3]), &mut d, &mut |m| got.push(m.to_vec()));
        t.push(0, key, &seg(107, false, &[2, 2]), &mut d, &mut |m| got.push(m.to_vec()));
        t.push(0, key, &seg(107, false, &[2, 2]), &mut d, &mut |m| got.push(m.to_vec()));
        assert_eq!(got, vec![vec![1, 1], vec![2, 2, 2], vec![3]]);
        assert_eq!(t.buffered(), 0);
        // A half message stays buffered until FIN drops the flow.
        t.push(0, key, &seg(112, false, &[0, 9, 1]), &mut d, &mut |m| got.push(m.to_vec()));
        assert_eq!(t.buffered(), 3);
        let fin = TcpSeg { fin: true, ..seg(115, false, &[]) };
        t.push(0, key, &fin, &mut d, &mut |m| got.push(m.to_vec()));
        assert_eq!((t.buffered(), t.flows()), (0, 0));
        assert!(drops.is_empty());
    }

    /// Found by the `learn_capture` fuzz target: capture timestamps near
    /// `u64::MAX` overflowed the sweep deadline.
    #[test]
    fn timestamps_near_the_end_of_time_do_not_overflow() {
        let mut r = TcpReassembler::new();
        r.sweep(u64::MAX - 1);
        r.sweep(u64::MAX);
        r.sweep(3);
    }
}
