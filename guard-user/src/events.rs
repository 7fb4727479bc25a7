//! Detection events: every blocked attempt, written as JSON lines and
//! aggregated per source host (suspected infected PCs) and per destination.
//!
//! Two layouts of the same event ([`EventFormat`]), both described by the
//! versioned JSON schema in `docs/events.schema.json` (see `docs/events.md`):
//! rpz-guard's own flat objects, and an Elastic Common Schema layout
//! (`source.ip`, `destination.ip`, `destination.port`, `network.transport`,
//! `event.action`, `rule.name`, ...) that Elastic, Splunk or a Suricata-EVE
//! pipeline takes without a mapping.

use std::{
    collections::{HashMap, VecDeque},
    fs::{File, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::policy::{MacAddr, Service, Verdict};

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
    /// The destination is covered by a deny (RPZ `CNAME .`), which beats
    /// any allow entry.
    Denied,
    /// An exempt source address (a resolver, a relay) came from a MAC,
    /// interface or switch port it is not honoured from: an inside host
    /// spoofing it. `src_mac` names the sender.
    SpoofedExempt,
}

/// Version of the event schema (`docs/events.schema.json`), written into
/// every event; raised on any change a consumer could trip over.
pub const SCHEMA_VERSION: u32 = 1;

/// The ECS release whose field names the `ecs` layout uses.
pub const ECS_VERSION: &str = "8.11.0";

impl Reason {
    /// Every reason, in code order (the schema lists the same set).
    pub const ALL: [Reason; 7] = [
        Reason::NotRegistered,
        Reason::WrongClass,
        Reason::Pending,
        Reason::Malformed,
        Reason::NotLoaded,
        Reason::Denied,
        Reason::SpoofedExempt,
    ];

    /// The name written into events (`not_registered`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotRegistered => "not_registered",
            Reason::WrongClass => "wrong_class",
            Reason::Pending => "pending",
            Reason::Malformed => "malformed",
            Reason::NotLoaded => "not_loaded",
            Reason::Denied => "denied",
            Reason::SpoofedExempt => "spoofed_exempt",
        }
    }

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
            guard_common::reason::DENIED => Some(Reason::Denied),
            guard_common::reason::SPOOFED_EXEMPT => Some(Reason::SpoofedExempt),
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
    /// Ethernet source of the frame: the sending host, or the last router
    /// before the enforcement point.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub src_mac: Option<MacAddr>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Field layout of the event lines (`events.format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// rpz-guard's flat objects (`src`, `dst`, `dport`, `reason`, ...).
    #[default]
    Native,
    /// Elastic Common Schema field names (`source.ip`, `rule.name`, ...).
    Ecs,
}

impl std::str::FromStr for EventFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(EventFormat::Native),
            "ecs" => Ok(EventFormat::Ecs),
            other => Err(format!("event format {other:?} is not one of native, ecs")),
        }
    }
}

/// How events are written, changeable while running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSettings {
    /// Field layout.
    pub format: EventFormat,
    /// The enforcement point only counts (events say "would block").
    pub count_only: bool,
}

/// The native layout: the event's own fields, the schema version first.
#[derive(Serialize)]
struct NativeLine<'a> {
    version: u32,
    #[serde(flatten)]
    ev: &'a DetectionEvent,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    count_only: bool,
}

impl DetectionEvent {
    /// The event as one JSON object in `settings.format`.
    pub fn to_json(&self, settings: EventSettings) -> serde_json::Value {
        match settings.format {
            EventFormat::Native => serde_json::to_value(NativeLine {
                version: SCHEMA_VERSION,
                ev: self,
                count_only: settings.count_only,
            })
            .unwrap_or_default(),
            EventFormat::Ecs => self.to_ecs(settings.count_only),
        }
    }

    /// The event as one line of JSON (without the newline), as the sink
    /// writes it: the native layout keeps the field order of
    /// [`DetectionEvent`], version first.
    pub fn to_line(&self, settings: EventSettings) -> String {
        let mut out = Vec::new();
        self.write_line(settings, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends [`DetectionEvent::to_line`]'s text to `out` (nothing when it
    /// cannot be serialised), without a string of its own.
    pub fn write_line(&self, settings: EventSettings, out: &mut Vec<u8>) {
        let start = out.len();
        let r = match settings.format {
            EventFormat::Native => serde_json::to_writer(
                &mut *out,
                &NativeLine { version: SCHEMA_VERSION, ev: self, count_only: settings.count_only },
            ),
            EventFormat::Ecs => serde_json::to_writer(&mut *out, &self.to_ecs(settings.count_only)),
        };
        if r.is_err() {
            out.truncate(start);
        }
    }

    /// The ECS layout. Fields beyond ECS live under `rpz_guard`.
    fn to_ecs(&self, count_only: bool) -> serde_json::Value {
        let reason = self.reason.name();
        let (action, outcome) = if count_only { ("would_block", "allowed") } else { ("blocked", "denied") };
        let mut network = serde_json::json!({
            "transport": self.proto,
            "protocol": self.service.to_string(),
            "type": if self.dst.is_ipv4() { "ipv4" } else { "ipv6" },
            "direction": "outbound",
        });
        if let Some(v) = self.vlan {
            network["vlan"] = serde_json::json!({ "id": v.to_string() });
        }
        let mut ext = serde_json::json!({
            "version": SCHEMA_VERSION,
            "reason": reason,
            "service": self.service.to_string(),
            "point": self.point,
        });
        if self.suppressed > 0 {
            ext["suppressed"] = self.suppressed.into();
        }
        if count_only {
            ext["count_only"] = true.into();
        }
        let mut source = serde_json::json!({ "ip": self.src });
        if let Some(m) = self.src_mac {
            // ECS writes MACs as uppercase hyphenated pairs.
            source["mac"] = m.to_string().to_uppercase().replace(':', "-").into();
        }
        serde_json::json!({
            "@timestamp": rfc3339_ms(self.time_ms),
            "ecs": { "version": ECS_VERSION },
            "message": format!(
                "{action} {} from {} to {} port {} ({reason})",
                self.service, self.src, self.dst, self.dport
            ),
            "event": {
                "kind": "alert",
                "category": ["network", "intrusion_detection"],
                "type": ["connection", outcome],
                "action": action,
                "module": "rpz_guard",
                "dataset": "rpz_guard.events",
            },
            "rule": { "name": reason, "ruleset": "rpz-guard" },
            "source": source,
            "destination": { "ip": self.dst, "port": self.dport },
            "network": network,
            "observer": { "type": "firewall", "product": "rpz-guard", "version": env!("CARGO_PKG_VERSION") },
            "rpz_guard": ext,
        })
    }
}

/// One entry learned live (issue 9): a matched answer of a trusted server
/// taught an address a class the zone lacked, and it was enforced. Written
/// to the same stream as the detection events, marked `"event": "learned"`
/// (detection events carry no `event` field in the native layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedEvent {
    /// When the answer crossed the router, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The address learned.
    pub addr: IpAddr,
    /// The classes this answer taught it (services it may now be reached on).
    pub classes: Vec<Service>,
    /// The question the answer was for, dotted, with a trailing dot.
    pub qname: String,
    /// The question type (`MX`, `A`, `NS`, ...).
    pub qtype: String,
    /// The trusted server that answered.
    pub server: IpAddr,
    /// Answer → entry enforced locally (kernel maps, or flows queued to the
    /// switches), microseconds.
    pub lag_us: u64,
}

/// The native layout of a [`LearnedEvent`]: version first, then the tag.
#[derive(Serialize)]
struct NativeLearned<'a> {
    version: u32,
    event: &'static str,
    #[serde(flatten)]
    ev: &'a LearnedEvent,
}

impl LearnedEvent {
    /// The value of the native layout's `event` field.
    pub const TAG: &'static str = "learned";

    /// The event as one JSON object in `format`.
    pub fn to_json(&self, format: EventFormat) -> serde_json::Value {
        match format {
            EventFormat::Native => {
                serde_json::to_value(NativeLearned { version: SCHEMA_VERSION, event: Self::TAG, ev: self })
                    .unwrap_or_default()
            }
            EventFormat::Ecs => self.to_ecs(),
        }
    }

    /// The event as one line of JSON (without the newline).
    pub fn to_line(&self, format: EventFormat) -> String {
        let text = match format {
            EventFormat::Native => {
                serde_json::to_string(&NativeLearned { version: SCHEMA_VERSION, event: Self::TAG, ev: self })
            }
            EventFormat::Ecs => serde_json::to_string(&self.to_ecs()),
        };
        text.unwrap_or_default()
    }

    /// The ECS layout: the answer as `dns.question.*` and `server.ip`, the
    /// address as `destination.ip`; the rest under `rpz_guard`.
    fn to_ecs(&self) -> serde_json::Value {
        let classes: Vec<String> = self.classes.iter().map(ToString::to_string).collect();
        // ECS writes names without the root's trailing dot.
        let name = self.qname.strip_suffix('.').filter(|n| !n.is_empty()).unwrap_or(&self.qname);
        serde_json::json!({
            "@timestamp": rfc3339_ms(self.time_ms),
            "ecs": { "version": ECS_VERSION },
            "message": format!(
                "learned {} ({}) from the {} answer for {} by {}",
                self.addr,
                classes.join("+"),
                self.qtype,
                self.qname,
                self.server
            ),
            "event": {
                "kind": "event",
                "category": ["network", "configuration"],
                "type": ["protocol", "creation"],
                "action": Self::TAG,
                "module": "rpz_guard",
                "dataset": "rpz_guard.learned",
            },
            "destination": { "ip": self.addr },
            "server": { "ip": self.server },
            "dns": { "question": { "name": name, "type": self.qtype } },
            "network": { "protocol": "dns", "type": if self.addr.is_ipv4() { "ipv4" } else { "ipv6" } },
            "observer": { "type": "firewall", "product": "rpz-guard", "version": env!("CARGO_PKG_VERSION") },
            "rpz_guard": { "version": SCHEMA_VERSION, "classes": classes, "lag_us": self.lag_us },
        })
    }
}

/// `time_ms` (ms since the Unix epoch) as RFC 3339 UTC with milliseconds,
/// e.g. `2023-11-14T22:13:20.123Z`.
pub fn rfc3339_ms(time_ms: u64) -> String {
    let secs = time_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        time_ms % 1000
    )
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

/// One recent blocked attempt toward a destination (what `rpz-guard
/// explain` lists): the event without its destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentAttempt {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The internal host that sent it.
    pub src: IpAddr,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Destination port.
    pub dport: u16,
    /// The protected service.
    pub service: Service,
    /// Why it was blocked.
    pub reason: Reason,
    /// Where it was enforced.
    pub point: String,
    /// Ethernet source of the frame (the sending host, or the last router
    /// before the enforcement point), when known.
    #[serde(default)]
    pub src_mac: Option<MacAddr>,
}

/// Attempts kept per destination (newest first when read).
pub const RECENT_PER_DESTINATION: usize = 8;

/// Destinations with a ring of recent attempts. Beyond it the half with the
/// oldest last attempt is dropped, so a scan of many destinations costs
/// bounded memory: at most this many rings of [`RECENT_PER_DESTINATION`]
/// (an attempt is about 150 bytes with its two small strings: 5 MB at most).
pub const RECENT_DESTINATIONS: usize = 4096;

#[derive(Default)]
struct Aggregate {
    by_source: HashMap<IpAddr, HostStats>,
    by_destination: HashMap<IpAddr, HostStats>,
    /// The last few attempts toward each of the most recent destinations.
    recent: HashMap<IpAddr, VecDeque<RecentAttempt>>,
    total: u64,
}

/// What the writer thread is sent.
enum Msg {
    /// One JSON line.
    Line(Vec<u8>),
    /// Write to this output from now on (`None`: write nothing).
    Output(Option<Box<dyn Write + Send>>),
}

/// Writes events and keeps the aggregates. Cheap to share behind an `Arc`.
pub struct EventSink {
    /// Lines for the writer thread; a slow disk or a stalled stdout never
    /// blocks the caller (the kernel's event reader).
    tx: Option<mpsc::SyncSender<Msg>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// False while the output is `none`: no line is even formatted.
    writing: AtomicBool,
    settings: Mutex<EventSettings>,
    write_errors: Arc<AtomicU64>,
    agg: Mutex<Aggregate>,
}

/// Maximum number of distinct hosts tracked per aggregate; beyond it the
/// least active half is dropped so a scan cannot grow memory without bound.
const MAX_TRACKED: usize = 100_000;

/// Room for a typical native event line (about 250 bytes) and its newline.
const LINE_CAPACITY: usize = 320;

/// Lines queued for the writer before further events are counted as lost.
const QUEUE: usize = 65_536;

/// Opens an output: files are created and appended to.
fn open_output(output: &EventOutput) -> io::Result<Option<Box<dyn Write + Send>>> {
    Ok(match output {
        EventOutput::Stdout => Some(Box::new(io::stdout())),
        EventOutput::File(p) => Some(Box::new(open_append(p)?)),
        EventOutput::None => None,
    })
}

impl EventSink {
    /// Opens the output (files are created and appended to).
    pub fn open(output: &EventOutput) -> io::Result<EventSink> {
        let out = open_output(output)?;
        let writing = AtomicBool::new(out.is_some());
        let write_errors = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let errors = write_errors.clone();
        let writer = std::thread::Builder::new()
            .name("rpz-guard-events".into())
            .spawn(move || write_lines(out, &rx, &errors))?;
        Ok(EventSink {
            tx: Some(tx),
            writer: Some(writer),
            writing,
            settings: Mutex::new(EventSettings::default()),
            write_errors,
            agg: Mutex::new(Aggregate::default()),
        })
    }

    /// Sets the layout (and count-only marking) of the lines written from now on.
    pub fn configure(&self, settings: EventSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// The settings in force.
    pub fn settings(&self) -> EventSettings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches to `output`, opened afresh (a file again by its name: after
    /// log rotation the new file). Lines queued before go to the old output.
    /// On an error the old output stays in use.
    pub fn reopen(&self, output: &EventOutput) -> io::Result<()> {
        let out = open_output(output)?;
        let on = out.is_some();
        if let Some(tx) = &self.tx {
            // Blocks only while the queue is full; the writer drains it.
            tx.send(Msg::Output(out)).map_err(|_| io::Error::other("the event writer has stopped"))?;
        }
        self.writing.store(on, Ordering::Relaxed);
        Ok(())
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
        if agg.recent.len() >= RECENT_DESTINATIONS && !agg.recent.contains_key(&ev.dst) {
            prune_recent(&mut agg.recent);
        }
        let ring = agg.recent.entry(ev.dst).or_default();
        if ring.len() >= RECENT_PER_DESTINATION {
            ring.pop_front();
        }
        ring.push_back(RecentAttempt {
            time_ms: ev.time_ms,
            src: ev.src,
            proto: ev.proto.clone(),
            dport: ev.dport,
            service: ev.service,
            reason: ev.reason,
            point: ev.point.clone(),
            src_mac: ev.src_mac,
        });
        drop(agg);
        if let Some(tx) = self.tx.as_ref().filter(|_| self.writing.load(Ordering::Relaxed)) {
            // One buffer of the usual line's size, newline included.
            let mut line = Vec::with_capacity(LINE_CAPACITY);
            ev.write_line(self.settings(), &mut line);
            line.push(b'\n');
            if tx.try_send(Msg::Line(line)).is_err() {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes one [`LearnedEvent`] (not a blocked attempt: the aggregates
    /// and [`EventSink::total`] leave it out).
    pub fn record_learned(&self, ev: &LearnedEvent) {
        if let Some(tx) = self.tx.as_ref().filter(|_| self.writing.load(Ordering::Relaxed)) {
            let mut line = ev.to_line(self.settings().format).into_bytes();
            line.push(b'\n');
            if tx.try_send(Msg::Line(line)).is_err() {
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

    /// Blocked attempts toward `dst` (count and last time), if any was seen
    /// (and not pruned since).
    pub fn destination(&self, dst: IpAddr) -> Option<HostStats> {
        self.agg.lock().unwrap_or_else(|e| e.into_inner()).by_destination.get(&dst).cloned()
    }

    /// The last [`RECENT_PER_DESTINATION`] blocked attempts toward `dst`,
    /// newest first.
    pub fn recent_toward(&self, dst: IpAddr) -> Vec<RecentAttempt> {
        let agg = self.agg.lock().unwrap_or_else(|e| e.into_inner());
        agg.recent.get(&dst).map(|r| r.iter().rev().cloned().collect()).unwrap_or_default()
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

/// The writer thread: writes lines as they come, flushing when the queue is
/// empty and before switching outputs.
fn write_lines(mut out: Option<Box<dyn Write + Send>>, rx: &mpsc::Receiver<Msg>, errors: &AtomicU64) {
    let mut next = rx.recv().ok();
    while let Some(msg) = next.take() {
        // Every line of a batch whose write or flush fails is counted lost
        // (a full disk loses them all; the count must say how many).
        let (mut lines, mut lost) = (0u64, 0u64);
        let mut msg = Some(msg);
        // Everything already queued, then one flush.
        while let Some(m) = msg.take() {
            match m {
                Msg::Line(line) => {
                    if let Some(w) = out.as_mut() {
                        lines += 1;
                        lost += u64::from(w.write_all(&line).is_err());
                    }
                }
                Msg::Output(new) => {
                    if let Some(w) = out.as_mut()
                        && w.flush().is_err()
                    {
                        lost = lines;
                    }
                    (lines, out) = (0, new);
                }
            }
            msg = rx.try_recv().ok();
        }
        if let Some(w) = out.as_mut()
            && w.flush().is_err()
        {
            lost = lost.max(lines);
        }
        if lost > 0 {
            errors.fetch_add(lost, Ordering::Relaxed);
        }
        next = rx.recv().ok();
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

/// Keeps the half of the rings whose last attempt is the most recent.
fn prune_recent(map: &mut HashMap<IpAddr, VecDeque<RecentAttempt>>) {
    let mut ranked: Vec<(u64, IpAddr)> =
        map.iter().map(|(k, r)| (r.back().map_or(0, |a| a.time_ms), *k)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    for (_, k) in ranked.into_iter().skip(RECENT_DESTINATIONS / 2) {
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
            src_mac: None,
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
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn native_layout_carries_the_schema_version() {
        let v = ev("10.0.0.66", "198.51.100.9").to_json(EventSettings::default());
        assert_eq!(v["version"], SCHEMA_VERSION);
        assert_eq!(v["reason"], "not_registered");
        assert_eq!(v["dport"], 25);
        assert!(v.get("count_only").is_none() && v.get("vlan").is_none());
        let back: DetectionEvent = serde_json::from_value(v).expect("native line reads back");
        assert_eq!(back, ev("10.0.0.66", "198.51.100.9"));
    }

    #[test]
    fn ecs_layout_names_the_ecs_fields() {
        let mut e = ev("fd00:1::66", "2001:db8:100::25");
        e.vlan = Some(12);
        e.suppressed = 3;
        e.reason = Reason::WrongClass;
        let v = e.to_json(EventSettings { format: EventFormat::Ecs, count_only: false });
        assert_eq!(v["@timestamp"], "1970-01-01T00:00:00.001Z");
        assert_eq!(v["source"]["ip"], "fd00:1::66");
        assert_eq!(v["destination"]["ip"], "2001:db8:100::25");
        assert_eq!(v["destination"]["port"], 25);
        assert_eq!(v["network"]["transport"], "tcp");
        assert_eq!(v["network"]["type"], "ipv6");
        assert_eq!(v["network"]["vlan"]["id"], "12");
        assert_eq!(v["event"]["action"], "blocked");
        assert_eq!(v["rule"]["name"], "wrong_class");
        assert_eq!(v["rpz_guard"]["suppressed"], 3);
        assert_eq!(v["rpz_guard"]["version"], SCHEMA_VERSION);
        let counting = e.to_json(EventSettings { format: EventFormat::Ecs, count_only: true });
        assert_eq!(counting["event"]["action"], "would_block");
        assert_eq!(counting["event"]["type"][1], "allowed");
    }

    #[test]
    fn reasons_are_listed_once_with_their_wire_names() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).expect("serialize"), r.name());
        }
        let codes: Vec<_> = (0..16).filter_map(Reason::from_code).collect();
        assert_eq!(codes, Reason::ALL, "every kernel reason code is in Reason::ALL");
    }

    #[test]
    fn reopen_follows_log_rotation_and_format_changes() {
        let dir = std::env::temp_dir().join(format!("rpz-guard-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("events.jsonl");
        let rotated = dir.join("events.jsonl.1");
        let _ = std::fs::remove_file(&path);
        let sink = EventSink::open(&EventOutput::File(path.clone())).expect("open");
        sink.record(&ev("10.0.0.66", "198.51.100.9"));
        // logrotate renames; the sink keeps writing into the renamed file
        // until it is told to reopen.
        std::fs::rename(&path, &rotated).expect("rotate");
        sink.record(&ev("10.0.0.66", "198.51.100.10"));
        sink.configure(EventSettings { format: EventFormat::Ecs, count_only: false });
        sink.reopen(&EventOutput::File(path.clone())).expect("reopen");
        sink.record(&ev("10.0.0.66", "198.51.100.11"));
        // A failed reopen keeps the current output.
        assert!(sink.reopen(&EventOutput::File(dir.join("missing/dir/events.jsonl"))).is_err());
        sink.record(&ev("10.0.0.66", "198.51.100.12"));
        drop(sink);
        let old = std::fs::read_to_string(&rotated).expect("rotated file");
        let new = std::fs::read_to_string(&path).expect("new file");
        assert_eq!(old.lines().count(), 2, "{old}");
        let lines: Vec<serde_json::Value> =
            new.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        assert_eq!(lines.len(), 2, "{new}");
        assert_eq!(lines[0]["destination"]["ip"], "198.51.100.11");
        assert_eq!(lines[1]["destination"]["ip"], "198.51.100.12");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn recent_attempts_per_destination_are_a_bounded_ring() {
        let sink = EventSink::open(&EventOutput::None).expect("open");
        for i in 0..20u64 {
            let mut e = ev("10.0.0.66", "198.51.100.9");
            e.time_ms = i;
            e.src = IpAddr::from([10, 0, 0, u8::try_from(i).expect("small")]);
            sink.record(&e);
        }
        let dst: IpAddr = "198.51.100.9".parse().expect("ip");
        let recent = sink.recent_toward(dst);
        assert_eq!(recent.len(), RECENT_PER_DESTINATION);
        assert_eq!(recent[0].time_ms, 19, "newest first");
        assert_eq!(recent[RECENT_PER_DESTINATION - 1].time_ms, 20 - RECENT_PER_DESTINATION as u64);
        assert_eq!(sink.destination(dst).map(|h| h.blocked), Some(20));
        assert!(sink.recent_toward("198.51.100.10".parse().expect("ip")).is_empty());
        // A scan of many destinations: the rings stay bounded, the newest stay.
        for i in 0..(RECENT_DESTINATIONS as u32 * 3) {
            let mut e = ev("10.0.0.66", "198.51.100.9");
            e.dst = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            e.time_ms = 100 + u64::from(i);
            sink.record(&e);
        }
        let recent = &sink.agg.lock().expect("lock").recent;
        assert!(recent.len() <= RECENT_DESTINATIONS);
        let newest = IpAddr::from((0x0a00_0000 + RECENT_DESTINATIONS as u32 * 3 - 1).to_be_bytes());
        assert!(recent.contains_key(&newest));
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
