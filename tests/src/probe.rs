//! Continuous probers for fault and start-up tests: a bot that keeps asking
//! an unregistered DNS server (every answer is a packet that got through),
//! and a client that keeps opening TCP connections to a registered
//! destination (every failure is a legitimate connection lost).
//!
//! Each prober runs on its own thread from a socket made in the role's
//! namespace, until [`Prober::stop`] returns its tally.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{Lab, Result, Role, dns, netns};

/// What a prober saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Probes sent (queries, or connection attempts).
    pub sent: u64,
    /// Probes answered (a DNS response, or an established connection).
    pub answered: u64,
    /// Probes not answered (timed out, refused, reset).
    pub failed: u64,
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    /// When each answered probe was sent.
    answered_sent_at: std::sync::Mutex<Vec<Instant>>,
}

/// A running prober.
pub struct Prober {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// From `role`, a UDP DNS query to `server` every `every`; answers are
    /// counted whenever they come (a query is answered if its ID comes back).
    pub fn dns(lab: &Lab, role: Role, server: SocketAddr, every: Duration) -> Result<Prober> {
        Prober::dns_in(&lab.ns(role), server, every)
    }

    /// As [`Prober::dns`] from any network namespace `ns`.
    pub fn dns_in(ns: &str, server: SocketAddr, every: Duration) -> Result<Prober> {
        let sock = netns::run_in_netns(ns, || UdpSocket::bind(("0.0.0.0", 0)))?
            .map_err(|e| crate::LabError::io(format!("bind a UDP socket in {ns}"), e))?;
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .map_err(|e| crate::LabError::io("set_read_timeout", e))?;
        let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::new(Counts::default()));
        let (s, c) = (stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            let mut id: u16 = 0;
            let mut outstanding = std::collections::HashMap::new();
            let mut next = Instant::now();
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    id = id.wrapping_add(1);
                    if sock.send_to(&dns::build_query(id, "probe.example.net", 1), server).is_ok() {
                        outstanding.insert(id, Instant::now());
                        c.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    next += every;
                }
                if let Ok((n, _)) = sock.recv_from(&mut buf)
                    && let Some(rid) = dns::response_id(&buf[..n])
                    && let Some(at) = outstanding.remove(&rid)
                {
                    c.answered.fetch_add(1, Ordering::Relaxed);
                    c.answered_sent_at.lock().unwrap_or_else(|e| e.into_inner()).push(at);
                }
            }
            c.failed.store(outstanding.len() as u64, Ordering::Relaxed);
        });
        Ok(Prober { stop, counts, thread: Some(thread) })
    }

    /// From `role`, a TCP connection to `addr` every `every`, each given
    /// `timeout` to establish (one at a time).
    pub fn tcp(lab: &Lab, role: Role, addr: SocketAddr, every: Duration, timeout: Duration) -> Prober {
        Prober::tcp_in(&lab.ns(role), addr, every, timeout)
    }

    /// As [`Prober::tcp`] from any network namespace `ns`.
    pub fn tcp_in(ns: &str, addr: SocketAddr, every: Duration, timeout: Duration) -> Prober {
        let ns = ns.to_owned();
        let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::new(Counts::default()));
        let (s, c) = (stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.sent.fetch_add(1, Ordering::Relaxed);
                match netns::tcp_connect_in(&ns, addr, timeout) {
                    Ok(_) => {
                        c.answered.fetch_add(1, Ordering::Relaxed);
                        c.answered_sent_at.lock().unwrap_or_else(|e| e.into_inner()).push(t);
                    }
                    Err(_) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(every.saturating_sub(t.elapsed()));
            }
        });
        Prober { stop, counts, thread: Some(thread) }
    }

    /// The tally so far (probes still in flight count as neither).
    pub fn tally(&self) -> Tally {
        Tally {
            sent: self.counts.sent.load(Ordering::Relaxed),
            answered: self.counts.answered.load(Ordering::Relaxed),
            failed: self.counts.failed.load(Ordering::Relaxed),
        }
    }

    /// Answered probes that were sent at or after `t` (e.g. after the
    /// enforcement point was in place: each one is a packet that got through).
    pub fn answered_sent_after(&self, t: Instant) -> u64 {
        let at = self.counts.answered_sent_at.lock().unwrap_or_else(|e| e.into_inner());
        at.iter().filter(|s| **s >= t).count() as u64
    }

    /// Stops the prober and returns the final tally (for DNS, queries still
    /// unanswered at the end count as failed).
    pub fn stop(mut self) -> Tally {
        self.halt();
        self.tally()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}
