//! Packet in, entries out: link → IP (fragments reassembled) → UDP/TCP →
//! DNS message → query/response matching → learning rules.
//!
//! Every DNS message on port 53 in the capture is considered, whichever way it
//! goes: the border sees the organisation's resolver talking to authoritative
//! servers (evidence when the server is trusted), and possibly internal
//! clients talking to the resolver (never evidence: the resolver is not a
//! delegated server).
use std::net::IpAddr;

use super::{
    dns::Parser,
    frag::Reassembler,
    hints::Hints,
    matcher::{MatchResult, Matcher, QueryKey},
    rules::{Learner, Outcome},
    stats::{Discard, Summary},
    tcp::{FlowKey, TcpReassembler},
};
use crate::{
    frame::{self, PROTO_TCP, PROTO_UDP},
    policy::{AllowSet, Classes, Prefix},
};

/// The DNS port; a UDP/TCP packet is DNS when either port is 53.
pub const DNS_PORT: u16 = 53;
/// Default matching window.
pub const DEFAULT_WINDOW_NS: u64 = 10_000_000_000;

/// Where a DNS message travelled.
#[derive(Debug, Clone, Copy)]
struct Endpoints {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

/// The whole per-packet pipeline with its state.
#[derive(Debug)]
pub struct Pipeline {
    frags: Reassembler,
    tcp: TcpReassembler,
    matcher: Matcher,
    learner: Learner,
    parser: Parser,
    qname: Vec<u8>,
    summary: Summary,
}

impl Pipeline {
    /// A pipeline trusting `hints`, matching within `window_ns`.
    pub fn new(hints: &Hints, window_ns: u64) -> Pipeline {
        Pipeline {
            frags: Reassembler::new(),
            tcp: TcpReassembler::new(),
            matcher: Matcher::new(window_ns),
            learner: Learner::new(hints),
            parser: Parser::new(),
            qname: Vec::with_capacity(256),
            summary: Summary::default(),
        }
    }

    /// The learner (e.g. to turn on new-entry recording for live learning).
    pub fn learner_mut(&mut self) -> &mut Learner {
        &mut self.learner
    }

    /// Confirmations since the last call (only when recording is on, see
    /// [`Learner::record_confirmations`]).
    pub fn take_confirmations(&mut self) -> Vec<super::rules::Confirmation> {
        self.learner.take_confirmations()
    }

    /// See [`Learner::swap_recorded`].
    pub fn swap_recorded(
        &mut self,
        entries: &mut Vec<(Prefix, Classes)>,
        confirmations: &mut Vec<super::rules::Confirmation>,
    ) {
        self.learner.swap_recorded(entries, confirmations);
    }

    /// Entries added since the last call (only when recording is on).
    pub fn take_new_entries(&mut self) -> Vec<(Prefix, Classes)> {
        self.learner.take_new_entries()
    }

    /// The allow set learned so far (built: a copy).
    pub fn allow_set(&self) -> AllowSet {
        self.learner.allow_set()
    }

    /// The counters so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Counts an input-level problem (truncated or corrupt capture file).
    pub fn count(&mut self, why: Discard) {
        self.summary.count_discard(why);
    }

    /// Adds to the byte counter (capture bytes consumed).
    pub fn add_bytes(&mut self, n: u64) {
        self.summary.bytes += n;
    }

    /// Feeds one captured frame.
    pub fn packet(&mut self, ts_ns: u64, linktype: u32, frame: &[u8]) {
        self.summary.packets += 1;
        let ip = match frame::link_payload(linktype, frame).and_then(frame::ip) {
            Ok(ip) => ip,
            Err(why) => return self.summary.count_discard(why.into()),
        };
        if ip.proto != PROTO_UDP && ip.proto != PROTO_TCP {
            return self.summary.count_discard(Discard::NotDns);
        }
        match ip.frag {
            None => self.transport(ts_ns, ip.src, ip.dst, ip.proto, ip.payload),
            Some(f) => {
                let summary = &mut self.summary;
                let whole = self.frags.push(ts_ns, &ip, f, &mut |d| summary.count_discard(d));
                if let Some(data) = whole {
                    self.transport(ts_ns, ip.src, ip.dst, ip.proto, &data);
                }
            }
        }
    }

    fn transport(&mut self, ts_ns: u64, src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) {
        if proto == PROTO_UDP {
            match frame::udp(seg) {
                Ok((sport, dport, data)) if sport == DNS_PORT || dport == DNS_PORT => {
                    self.message(ts_ns, Endpoints { src, dst, sport, dport }, data);
                }
                Ok(_) => self.summary.count_discard(Discard::NotDns),
                Err(why) => self.summary.count_discard(why.into()),
            }
            return;
        }
        let t = match frame::tcp(seg) {
            Ok(t) if t.sport == DNS_PORT || t.dport == DNS_PORT => t,
            Ok(_) => return self.summary.count_discard(Discard::NotDns),
            Err(why) => return self.summary.count_discard(why.into()),
        };
        let ep = Endpoints { src, dst, sport: t.sport, dport: t.dport };
        let key = FlowKey { src, dst, sport: t.sport, dport: t.dport };
        // Messages are collected first: the reassembler borrows its buffer.
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        let summary = &mut self.summary;
        self.tcp.push(ts_ns, key, &t, &mut |d| summary.count_discard(d), &mut |m| msgs.push(m.to_vec()));
        for m in msgs {
            self.message(ts_ns, ep, &m);
        }
    }

    fn message(&mut self, ts_ns: u64, ep: Endpoints, data: &[u8]) {
        let msg = match self.parser.parse(data) {
            Ok(m) => m,
            Err(e) => return self.summary.count_discard(Discard::Dns(e)),
        };
        self.summary.dns_messages += 1;
        if msg.header.opcode() != 0 {
            return self.summary.count_discard(Discard::NotQuery);
        }
        let (Some(q), 1) = (msg.question, msg.header.qdcount) else {
            return self.summary.count_discard(Discard::NotOneQuestion);
        };
        self.qname.clear();
        if let Err(e) = msg.name_into(q.name_at, &mut self.qname) {
            return self.summary.count_discard(Discard::Dns(e));
        }
        if !msg.header.is_response() {
            self.summary.queries += 1;
            let key = QueryKey {
                client: ep.src,
                client_port: ep.sport,
                server: ep.dst,
                server_port: ep.dport,
                id: msg.header.id,
            };
            if !self.matcher.query(ts_ns, key, &self.qname, q.qtype, q.qclass) {
                self.summary.count_discard(Discard::PendingTableFull);
            }
            return;
        }
        self.summary.responses += 1;
        let key = QueryKey {
            client: ep.dst,
            client_port: ep.dport,
            server: ep.src,
            server_port: ep.sport,
            id: msg.header.id,
        };
        match self.matcher.response(ts_ns, key, &self.qname, q.qtype, q.qclass) {
            MatchResult::Matched => {
                self.summary.matched += 1;
                if self.learner.learn(ep.src, &msg) == Outcome::Untrusted {
                    self.summary.untrusted_responses += 1;
                }
            }
            MatchResult::NoQuery | MatchResult::OtherQuestion => self.summary.unmatched_responses += 1,
        }
    }

    /// Ends the run: final counters and the allow set.
    pub fn finish(mut self) -> (AllowSet, Summary) {
        self.summary.expired_queries = self.matcher.expired();
        self.summary.pending_at_end = self.matcher.pending() as u64;
        let set = self.learner.into_allow_set();
        let (dns, smtp) = set.class_counts();
        self.summary.entries = super::stats::EntryCounts { dns, smtp, total: set.len() };
        (set, self.summary)
    }
}
