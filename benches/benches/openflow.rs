//! OpenFlow codec and controller benchmarks: encode/decode of FLOW_MOD and
//! PACKET_IN, the packet-in frame parser, and the decision rate of the
//! controller (packet-ins answered per second) against a synthetic switch
//! over loopback.

use std::{
    hint::black_box,
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guard_user::{
    events::{EventOutput, EventSink},
    metrics::Counters,
    miss::{CacheTtl, MissResolver, SetSource},
    openflow::{
        ControllerConfig, ControllerShared,
        codec::{Body, FeaturesReply, Message, PacketIn, message_len},
        flows::{COOKIE_KIND_MASK, COOKIE_VERDICT},
        oxm::{Match, Oxm},
        serve_listener,
    },
    policy::{AllowSet, Classes, Prefix},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn frame(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0, 10, 9, 0, 66]);
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&[0x30, 0x39]);
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0x20, 0, 0, 0, 0, 0]);
    f
}

fn packet_in(xid: u32, dst: Ipv4Addr) -> Message {
    let data = frame(dst, 25);
    Message::new(
        xid,
        Body::PacketIn(PacketIn {
            buffer_id: u32::MAX,
            total_len: u16::try_from(data.len()).unwrap_or(u16::MAX),
            reason: 1,
            table_id: 0,
            cookie: 0x5250_4701_0000_0000,
            r#match: Match::new(vec![Oxm::InPort(1)]),
            data,
        }),
    )
}

fn codec(c: &mut Criterion) {
    let cfg = ControllerConfig::default();
    let fm = guard_user::openflow::flows::allow_flows(
        &cfg,
        &"198.51.100.25".parse::<Prefix>().expect("prefix"),
        Classes::SMTP,
        0,
    )
    .remove(0);
    let fm = Message::new(7, Body::FlowMod(fm));
    let fm_bytes = fm.encode();
    let pi = packet_in(9, Ipv4Addr::new(198, 51, 100, 25));
    let pi_bytes = pi.encode();
    let mut g = c.benchmark_group("openflow_codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("flow_mod_encode", |b| b.iter(|| black_box(&fm).encode()));
    g.bench_function("flow_mod_decode", |b| b.iter(|| Message::decode(black_box(&fm_bytes))));
    g.bench_function("packet_in_encode", |b| b.iter(|| black_box(&pi).encode()));
    g.bench_function("packet_in_decode", |b| b.iter(|| Message::decode(black_box(&pi_bytes))));
    let Body::PacketIn(p) = &pi.body else { unreachable!("built above") };
    g.bench_function("frame_parse", |b| b.iter(|| guard_user::frame::parse(black_box(&p.data))));
    g.finish();
}

/// A controller plus a synthetic switch that has finished the handshake.
struct Rig {
    _rt: tokio::runtime::Runtime,
    cancel: CancellationToken,
    sw: TcpStream,
    verdicts: Arc<AtomicU64>,
    next: u32,
}

impl Rig {
    fn start() -> Rig {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let set: AllowSet =
            [("203.0.113.0/24".parse::<Prefix>().expect("p"), Classes::SMTP)].into_iter().collect();
        let (_tx, rx) = watch::channel(Arc::new(set));
        let resolver = Arc::new(MissResolver::new(Arc::new(SetSource(rx.clone())), CacheTtl::default()));
        let events = Arc::new(EventSink::open(&EventOutput::None).expect("events"));
        let shared = ControllerShared::new(rx, resolver, events, Arc::new(Counters::default()));
        let cfg = ControllerConfig {
            max_packet_ins_per_sec: u32::MAX,
            max_pending_decisions: 1 << 20,
            ..ControllerConfig::default()
        };
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        rt.spawn(serve_listener(listener, cfg, shared, cancel.clone()));
        // The watch sender must outlive the controller's receivers.
        std::mem::forget(_tx);
        let mut sw = TcpStream::connect(addr).expect("connect");
        sw.set_nodelay(true).expect("nodelay");
        sw.write_all(&Message::new(1, Body::Hello { version: 4, bitmap: Some(1 << 4) }).encode())
            .expect("hello");
        let fr = FeaturesReply {
            datapath_id: 1,
            n_buffers: 0,
            n_tables: 254,
            auxiliary_id: 0,
            capabilities: 0,
            reserved: 0,
        };
        sw.write_all(&Message::new(2, Body::FeaturesReply(fr)).encode()).expect("features");
        let verdicts = Arc::new(AtomicU64::new(0));
        let mut rd = sw.try_clone().expect("clone");
        let v = verdicts.clone();
        thread::spawn(move || {
            let mut buf = Vec::with_capacity(1 << 20);
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                let Ok(n) = rd.read(&mut chunk) else { return };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                while let Some(len) = message_len(&buf[at..]).filter(|l| *l >= 8 && at + l <= buf.len()) {
                    // FLOW_MOD (type 14) with the verdict cookie kind.
                    let m = &buf[at..at + len];
                    if m[1] == 14 && len >= 16 {
                        let cookie = u64::from_be_bytes(m[8..16].try_into().expect("8 bytes"));
                        if cookie & COOKIE_KIND_MASK == COOKIE_VERDICT {
                            v.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    at += len;
                }
                buf.drain(..at);
            }
        });
        thread::sleep(Duration::from_millis(200));
        Rig { _rt: rt, cancel, sw, verdicts, next: 0 }
    }

    /// Sends `n` packet-ins toward `dst(i)` and waits for `n` verdict flows.
    fn round(&mut self, n: u64, dst: impl Fn(u32) -> Ipv4Addr) -> Duration {
        let target = self.verdicts.load(Ordering::Relaxed) + n;
        let t0 = Instant::now();
        let mut batch = Vec::with_capacity(64 * 128);
        for _ in 0..n {
            self.next = self.next.wrapping_add(1);
            packet_in(self.next, dst(self.next)).encode_into(&mut batch);
            if batch.len() > 60 * 1024 {
                self.sw.write_all(&batch).expect("send");
                batch.clear();
            }
        }
        self.sw.write_all(&batch).expect("send");
        while self.verdicts.load(Ordering::Relaxed) < target {
            assert!(t0.elapsed() < Duration::from_secs(60), "controller stopped answering");
            thread::yield_now();
        }
        t0.elapsed()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn decision_rate(c: &mut Criterion) {
    let mut rig = Rig::start();
    let mut g = c.benchmark_group("openflow_decisions");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    // Unknown destinations: every packet-in goes through the miss path
    // (resolver over an in-memory set; a BIND round-trip adds to this).
    g.bench_function("packet_in_miss_path", |b| {
        b.iter_custom(|iters| rig.round(iters, |i| Ipv4Addr::from(0xc612_0000 | (i & 0x1_ffff))))
    });
    // Destinations in the mirrored allow set but beyond the flow budget.
    g.bench_function("packet_in_allow_set", |b| {
        b.iter_custom(|iters| rig.round(iters, |i| Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 1)))
    });
    g.finish();
}

criterion_group!(benches, codec, decision_rate);
criterion_main!(benches);
