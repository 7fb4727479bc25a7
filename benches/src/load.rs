//! A TCP connection load generator and a sink that accepts everything.
//!
//! Run it inside a namespace with [`guard_tests::run_in_netns`]: threads
//! spawned there inherit the namespace, sockets keep it.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Outcome of [`connect_all`].
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Connect latency of each successful connect.
    pub ok: Vec<Duration>,
    /// When each successful connect finished, from the start of the run.
    pub done_at: Vec<Duration>,
    /// Connects that failed or timed out.
    pub failed: usize,
    /// Wall time of the whole run.
    pub wall: Duration,
}

impl LoadResult {
    /// Successful connects per second of wall time.
    pub fn rate(&self) -> f64 {
        self.ok.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Connects per second up to the time 99% of the successful connects had
    /// finished: one SYN lost in the bridge costs a 1 s retransmit, which
    /// would otherwise set the whole run's wall time.
    pub fn rate_p99(&self) -> f64 {
        let mut t: Vec<f64> = self.done_at.iter().map(Duration::as_secs_f64).collect();
        if t.is_empty() {
            return 0.0;
        }
        t.sort_by(f64::total_cmp);
        let k = ((t.len() as f64 * 0.99).ceil() as usize).clamp(1, t.len());
        k as f64 / t[k - 1].max(1e-9)
    }

    /// Percentile `p` of the successful connect latencies, in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        let v: Vec<f64> = self.ok.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        crate::percentile(&v, p)
    }
}

/// Connects once to every address in `dsts` with `threads` parallel workers
/// (each connect closed at once), `timeout` per connect.
pub fn connect_all(dsts: &[SocketAddr], threads: usize, timeout: Duration) -> LoadResult {
    let next = AtomicUsize::new(0);
    let ok = Mutex::new(Vec::with_capacity(dsts.len()));
    let failed = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(dst) = dsts.get(i) else { break };
                    let t = Instant::now();
                    match TcpStream::connect_timeout(dst, timeout) {
                        Ok(stream) => {
                            let took = t.elapsed();
                            drop(stream);
                            if let Ok(mut v) = ok.lock() {
                                v.push((took, start.elapsed()));
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    let (ok, done_at) = ok.into_inner().unwrap_or_default().into_iter().unzip();
    LoadResult { ok, done_at, failed: failed.into_inner(), wall }
}

/// Accepts and closes connections on `listener` forever, on a background thread.
pub fn sink(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
}
