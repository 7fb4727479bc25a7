//! Query/response matching.
//!
//! A response matches a pending query when it comes from the address and port
//! the query went to, goes back to the address and port it came from, carries
//! the same message ID and the same question (name compared case-insensitively,
//! type and class equal), and arrives within the window. A match consumes the
//! query, so a duplicate response is unmatched. Pending queries older than the
//! window expire; the table never holds more than [`MAX_PENDING`] queries.
use std::net::IpAddr;

use super::FastMap;

/// Most queries waiting for a response.
pub const MAX_PENDING: usize = 1 << 20;

/// Identifies one outstanding query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryKey {
    /// The querier's address.
    pub client: IpAddr,
    /// The querier's port.
    pub client_port: u16,
    /// The server's address.
    pub server: IpAddr,
    /// The server's port.
    pub server_port: u16,
    /// Message ID.
    pub id: u16,
}

/// Question names up to this long are kept inside the pending entry
/// (almost all are), so a query costs no allocation.
const INLINE_NAME: usize = 52;

/// A pending query's question name.
#[derive(Debug)]
enum QName {
    Inline(u8, [u8; INLINE_NAME]),
    Heap(Box<[u8]>),
}

impl QName {
    fn new(name: &[u8]) -> QName {
        match u8::try_from(name.len()) {
            Ok(n) if name.len() <= INLINE_NAME => {
                let mut b = [0; INLINE_NAME];
                b[..name.len()].copy_from_slice(name);
                QName::Inline(n, b)
            }
            _ => QName::Heap(name.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            QName::Inline(n, b) => &b[..usize::from(*n)],
            QName::Heap(b) => b,
        }
    }
}

#[derive(Debug)]
struct Pending {
    ts_ns: u64,
    qtype: u16,
    qclass: u16,
    qname: QName,
}

/// What became of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchResult {
    /// It answers a pending query.
    Matched,
    /// No pending query has this key, or it expired.
    NoQuery,
    /// A pending query has this key but another question.
    OtherQuestion,
}

/// The table of pending queries.
#[derive(Debug)]
pub struct Matcher {
    pending: FastMap<QueryKey, Pending>,
    window_ns: u64,
    last_sweep_ns: u64,
    expired: u64,
}

impl Matcher {
    /// A matcher with the given window.
    pub fn new(window_ns: u64) -> Self {
        Matcher { pending: FastMap::default(), window_ns, last_sweep_ns: 0, expired: 0 }
    }

    /// Queries waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queries that expired unanswered so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Records a query; false when the table is full.
    pub fn query(&mut self, ts_ns: u64, key: QueryKey, qname: &[u8], qtype: u16, qclass: u16) -> bool {
        self.sweep(ts_ns);
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&key) {
            return false;
        }
        // A retransmission refreshes the entry.
        self.pending.insert(key, Pending { ts_ns, qtype, qclass, qname: QName::new(qname) });
        true
    }

    /// Matches a response (key as seen from the query's side).
    pub fn response(
        &mut self,
        ts_ns: u64,
        key: QueryKey,
        qname: &[u8],
        qtype: u16,
        qclass: u16,
    ) -> MatchResult {
        self.sweep(ts_ns);
        let Some(p) = self.pending.get(&key) else { return MatchResult::NoQuery };
        if ts_ns.saturating_sub(p.ts_ns) > self.window_ns {
            self.pending.remove(&key);
            self.expired += 1;
            return MatchResult::NoQuery;
        }
        if p.qtype != qtype || p.qclass != qclass || p.qname.as_bytes() != qname {
            return MatchResult::OtherQuestion;
        }
        self.pending.remove(&key);
        MatchResult::Matched
    }

    /// Expires old queries; runs at most once per half window of capture time.
    fn sweep(&mut self, now_ns: u64) {
        // Saturating: a capture's timestamps are untrusted and may be near u64::MAX.
        if now_ns < self.last_sweep_ns.saturating_add(self.window_ns / 2) {
            return;
        }
        self.last_sweep_ns = now_ns;
        let w = self.window_ns;
        let before = self.pending.len();
        self.pending.retain(|_, p| now_ns.saturating_sub(p.ts_ns) <= w);
        self.expired += (before - self.pending.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u16) -> QueryKey {
        QueryKey {
            client: "192.0.2.1".parse().expect("ip"),
            client_port: 5555,
            server: "198.41.0.4".parse().expect("ip"),
            server_port: 53,
            id,
        }
    }

    #[test]
    fn matches_once_within_window_and_checks_question() {
        let mut m = Matcher::new(1_000_000_000);
        assert!(m.query(0, key(1), b"\x03com", 2, 1));
        assert_eq!(m.response(1, key(2), b"\x03com", 2, 1), MatchResult::NoQuery);
        assert_eq!(m.response(1, key(1), b"\x03net", 2, 1), MatchResult::OtherQuestion);
        assert_eq!(m.response(1, key(1), b"\x03com", 2, 1), MatchResult::Matched);
        assert_eq!(m.response(2, key(1), b"\x03com", 2, 1), MatchResult::NoQuery);
        assert!(m.query(10, key(3), b"\x03com", 2, 1));
        assert_eq!(m.response(2_000_000_000, key(3), b"\x03com", 2, 1), MatchResult::NoQuery);
        assert_eq!(m.pending(), 0);
        assert_eq!(m.expired(), 1);
    }

    /// Found by the `learn_capture` fuzz target: a capture timestamp near
    /// `u64::MAX` overflowed the sweep deadline.
    #[test]
    fn timestamps_near_the_end_of_time_do_not_overflow() {
        let mut m = Matcher::new(10_000_000_000);
        assert!(m.query(u64::MAX - 1, key(1), b"\x03com", 2, 1));
        assert!(m.query(u64::MAX, key(2), b"\x03com", 2, 1));
        assert_eq!(m.response(u64::MAX, key(1), b"\x03com", 2, 1), MatchResult::Matched);
        assert!(m.query(5, key(3), b"\x03com", 2, 1));
        assert_eq!(m.pending(), 2);
    }
}
