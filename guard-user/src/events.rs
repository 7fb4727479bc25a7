//! Detection events: every blocked attempt, written as JSON lines and
//! aggregated per source host (suspected infected PCs) and per destination.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::policy::{Service, Verdict};

/// Why a packet was blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The destination is not in the RPZ.
    NotRegistered,
    /// The destination is in the RPZ, but not for this service (SMTP to a name server).
    WrongClass,
    /// The destination was unknown and the RPZ had not answered yet.
    Pending,
    /// The headers could not be parsed on a protected path (fail closed).
    Malformed,
    /// No allow set was loaded yet: the daemon was starting, or the primary
    /// was down at start with no snapshot (deny-protected mode).
    NotLoaded,
}

impl Reason {
    /// The reason for a deny verdict (`None` for allow).
    pub const fn from_verdict(v: Verdict) -> Option<Reason> {
        match v {
            Verdict::Allow => None,
            Verdict::DenyNotRegistered => Some(Reason::NotRegistered),
            Verdict::DenyWrongClass => Some(Reason::WrongClass),
        }
    }

    /// The reason for a `guard_common::reason` code.
    pub const fn from_code(code: u32) -> Option<Reason> {
        match code {
            guard_common::reason::NOT_REGISTERED => Some(Reason::NotRegistered),
            guard_common::reason::WRONG_CLASS => Some(Reason::WrongClass),
            guard_common::reason::PENDING => Some(Reason::Pending),
            guard_common::reason::MALFORMED => Some(Reason::Malformed),
            guard_common::reason::NOT_LOADED => Some(Reason::NotLoaded),
            _ => None,
        }
    }
}

/// One blocked attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectionEvent {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The internal host that sent the packet.
    pub src: IpAddr,
    /// The external destination.
    pub dst: IpAddr,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Destination port.
    pub dport: u16,
    /// The protected service the port belongs to.
    pub service: Service,
    /// Why it was blocked.
    pub reason: Reason,
    /// Outer VLAN id, when tagged.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vlan: Option<u16>,
    /// Where it was enforced: `xdp:<iface>` or `openflow:<datapath id>`.
    pub point: String,
    /// Events for this source suppressed by rate limiting just before this one.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub suppressed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The protocol name for an IP protocol number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

/// Where events are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventOutput {
    /// Standard output.
    Stdout,
    /// Append to a file.
    File(PathBuf),
    /// Only aggregate, write nothing.
    None,
}

/// Per-host aggregate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStats {
    /// Blocked attempts.
    pub blocked: u64,
    /// Time of the last one, ms since the epoch.
    pub last_ms: u64,
}

#[derive(Default)]
struct Aggregate {
    by_source: HashMap<IpAddr, HostStats>,
    by_destination: HashMap<IpAddr, HostStats>,
    total: u64,
}

/// Writes events and keeps the aggregates. Cheap to share behind an `Arc`.
pub struct EventSink {
    /// Lines for the writer thread; a slow disk or a stalled stdout never
    /// blocks the caller (the kernel's event reader).
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    write_errors: Arc<AtomicU64>,
    agg: Mutex<Aggregate>,
}

/// Maximum number of distinct hosts tracked per aggregate; beyond it the
/// least active half is dropped so a scan cannot grow memory without bound.
const MAX_TRACKED: usize = 100_000;

/// Lines queued for the writer before further events are counted as lost.
const QUEUE: usize = 65_536;

impl EventSink {
    /// Opens the output (files are created and appended to).
    pub fn open(output: &EventOutput) -> io::Result<EventSink> {
        let out: Option<Box<dyn Write + Send>> = match output {
            EventOutput::Stdout => Some(Box::new(io::stdout())),
            EventOutput::File(p) => Some(Box::new(open_append(p)?)),
            EventOutput::None => None,
        };
        let write_errors = Arc::new(AtomicU64::new(0));
        let (tx, writer) = match out {
            Some(w) => {
                let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
                let errors = write_errors.clone();
                let h = std::thread::Builder::new()
                    .name("rpz-guard-events".into())
                    .spawn(move || write_lines(w, &rx, &errors))?;
                (Some(tx), Some(h))
            }
            None => (None, None),
        };
        Ok(EventSink { tx, writer, write_errors, agg: Mutex::new(Aggregate::default()) })
    }

    /// Records one event: queues its JSON line, updates the aggregates.
    pub fn record(&self, ev: &DetectionEvent) {
        let mut agg = self.agg.lock().unwrap_or_else(|e| e.into_inner());
        agg.total += 1;
        let Aggregate { by_source, by_destination, .. } = &mut *agg;
        for (map, key) in [(by_source, ev.src), (by_destination, ev.dst)] {
            if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
                prune(map);
            }
            let h = map.entry(key).or_default();
            h.blocked += 1;
            h.last_ms = ev.time_ms;
        }
        drop(agg);
        if let Some(tx) = &self.tx {
            let mut line = serde_json::to_vec(ev).unwrap_or_default();
            line.push(b'\n');
            if tx.try_send(line).is_err() {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Total events recorded.
    pub fn total(&self) -> u64 {
        self.agg.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Events that could not be written, or were dropped because the
    /// writer fell behind (the aggregates still count them).
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// The `n` sources with the most blocked attempts, most first.
    pub fn top_sources(&self, n: usize) -> Vec<(IpAddr, HostStats)> {
        top(&self.agg.lock().unwrap_or_else(|e| e.into_inner()).by_source, n)
    }

    /// The `n` destinations with the most blocked attempts, most first.
    pub fn top_destinations(&self, n: usize) -> Vec<(IpAddr, HostStats)> {
        top(&self.agg.lock().unwrap_or_else(|e| e.into_inner()).by_destination, n)
    }
}

impl Drop for EventSink {
    /// Writes out what is queued before returning.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// The writer thread: writes lines as they come, flushing when the queue is empty.
fn write_lines(mut w: Box<dyn Write + Send>, rx: &mpsc::Receiver<Vec<u8>>, errors: &AtomicU64) {
    while let Ok(line) = rx.recv() {
        // Every line of a batch whose write or flush fails is counted lost
        // (a full disk loses them all; the count must say how many).
        let mut lost = u64::from(w.write_all(&line).is_err());
        let mut batch = 1;
        while let Ok(more) = rx.try_recv() {
            lost += u64::from(w.write_all(&more).is_err());
            batch += 1;
        }
        if w.flush().is_err() {
            lost = batch;
        }
        if lost > 0 {
            errors.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

fn open_append(p: &Path) -> io::Result<File> {
    use std::os::{fd::AsRawFd, unix::fs::OpenOptionsExt};
    // O_NONBLOCK only for the open: a FIFO nobody reads is an error at
    // start (ENXIO) instead of a daemon that hangs before enforcing.
    let f =
        OpenOptions::new().create(true).append(true).custom_flags(libc::O_NONBLOCK).open(p).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENXIO) {
                io::Error::new(e.kind(), format!("{}: a FIFO with no reader", p.display()))
            } else {
                e
            }
        })?;
    // Writes then block on the writer thread only; the queue in front of
    // it counts what cannot wait as lost, so the daemon never blocks.
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(f)
}

/// Keeps the most active half (by blocked count, then recency).
fn prune(map: &mut HashMap<IpAddr, HostStats>) {
    let mut ranked: Vec<(u64, u64, IpAddr)> = map.iter().map(|(k, h)| (h.blocked, h.last_ms, *k)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    for (_, _, k) in ranked.into_iter().skip(MAX_TRACKED / 2) {
        map.remove(&k);
    }
}

fn top(map: &HashMap<IpAddr, HostStats>, n: usize) -> Vec<(IpAddr, HostStats)> {
    let mut v: Vec<_> = map.iter().map(|(k, v)| (*k, v.clone())).collect();
    v.sort_by(|a, b| b.1.blocked.cmp(&a.1.blocked).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(src: &str, dst: &str) -> DetectionEvent {
        DetectionEvent {
            time_ms: 1,
            src: src.parse().expect("ip"),
            dst: dst.parse().expect("ip"),
            proto: "tcp".into(),
            dport: 25,
            service: Service::Smtp,
            reason: Reason::NotRegistered,
            vlan: None,
            point: "xdp:test".into(),
            suppressed: 0,
        }
    }

    #[test]
    fn writes_json_lines_and_aggregates() {
        let dir = std::env::temp_dir().join(format!("rpz-guard-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let sink = EventSink::open(&EventOutput::File(path.clone())).expect("open");
        sink.record(&ev("10.0.0.66", "198.51.100.9"));
        sink.record(&ev("10.0.0.66", "198.51.100.10"));
        sink.record(&ev("10.0.0.10", "198.51.100.9"));
        let (total, top, dests) = (sink.total(), sink.top_sources(1), sink.top_destinations(5).len());
        drop(sink);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<DetectionEvent> =
            text.lines().map(|l| serde_json::from_str(l).expect("valid JSON line")).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], ev("10.0.0.66", "198.51.100.9"));
        assert_eq!(total, 3);
        assert_eq!(top[0].0, "10.0.0.66".parse::<IpAddr>().expect("ip"));
        assert_eq!(top[0].1.blocked, 2);
        assert_eq!(dests, 2);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A full disk (`/dev/full`): every event is counted as not written,
    /// one by one, and recording never blocks.
    #[test]
    fn full_disk_counts_every_lost_event() {
        let sink = EventSink::open(&EventOutput::File("/dev/full".into())).expect("open /dev/full");
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            sink.record(&ev("10.0.0.66", "198.51.100.9"));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "recording blocked");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sink.write_errors() < 1000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(sink.write_errors(), 1000, "every event on a full disk is counted as lost");
        assert_eq!(sink.total(), 1000);
    }

    /// A FIFO nobody reads: a clear error at once, not a daemon that hangs.
    #[test]
    fn fifo_without_reader_is_an_error_not_a_hang() {
        let dir = std::env::temp_dir().join(format!("rpz-guard-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("events.fifo");
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let err = EventSink::open(&EventOutput::File(path.clone())).err().expect("no reader: error");
        assert!(err.to_string().contains("FIFO with no reader"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn aggregates_stay_bounded() {
        let sink = EventSink::open(&EventOutput::None).expect("open");
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let mut e = ev("10.0.0.66", "198.51.100.9");
            e.src = IpAddr::from(i.to_be_bytes());
            sink.record(&e);
        }
        assert!(sink.agg.lock().expect("lock").by_source.len() <= MAX_TRACKED);
        assert_eq!(sink.total(), u64::from(MAX_TRACKED as u32 + 10));
    }
}
