//! The OpenFlow controller's read loop, end to end: a fuzzer-controlled
//! "switch" connects to the real controller over loopback TCP and sends an
//! arbitrary byte stream cut into writes at fuzzer-chosen points. The
//! controller must never panic, must close the session once the peer has
//! closed, must keep serving other switches, must only send messages its
//! own decoder reads back, and must never send a PACKET_OUT that forwards
//! a frame toward a protected port of an unregistered destination.
//!
//! Input: `[n][n chunk sizes][stream...]`; chunk sizes are cycled.
#![no_main]

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use guard_user::{
    events::{EventOutput, EventSink},
    frame as packet,
    metrics::Counters,
    miss::{CacheTtl, MissResolver, SetSource},
    openflow::{
        ControllerConfig, ControllerShared,
        codec::{Body, HEADER_LEN, Message, message_len},
        serve_listener,
    },
    policy::{AllowSet, Classes, Prefix},
};
use libfuzzer_sys::fuzz_target;
use rpz_guard_fuzz::runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Controller {
    addr: SocketAddr,
    cfg: ControllerConfig,
    allow: Arc<AllowSet>,
    task: tokio::task::JoinHandle<()>,
}

fn controller() -> &'static Controller {
    static C: OnceLock<Controller> = OnceLock::new();
    C.get_or_init(|| {
        let rt = runtime();
        let allow: Arc<AllowSet> = Arc::new(
            [
                (Prefix::host("198.51.100.53".parse().expect("ip")), Classes::DNS),
                (Prefix::host("198.51.100.25".parse().expect("ip")), Classes::SMTP),
                ("2001:db8::25/128".parse().expect("prefix"), Classes::SMTP),
            ]
            .into_iter()
            .collect(),
        );
        let (tx, rx) = tokio::sync::watch::channel(allow.clone());
        std::mem::forget(tx); // the set never changes during the run
        let resolver = Arc::new(MissResolver::new(Arc::new(SetSource(rx.clone())), CacheTtl::default()));
        let events = Arc::new(EventSink::open(&EventOutput::None).expect("event sink"));
        let shared = ControllerShared::new(rx, resolver, events, Arc::new(Counters::default()));
        let cfg = ControllerConfig { handshake_secs: 2, ..ControllerConfig::default() };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the controller's loopback listener");
        let addr = listener.local_addr().expect("local addr");
        let token = tokio_util::sync::CancellationToken::new();
        let (c, s) = (cfg.clone(), shared);
        let task = rt.spawn(async move {
            let _ = serve_listener(listener, c, s, token).await;
        });
        Controller { addr, cfg, allow, task }
    })
}

/// Checks every message the controller sent.
fn check_sent(c: &Controller, bytes: &[u8]) {
    let mut at = 0;
    while let Some(len) = message_len(&bytes[at..]) {
        assert!(len >= HEADER_LEN, "controller sent a length below the header");
        let Some(raw) = bytes.get(at..at + len) else { break };
        let m = Message::decode(raw).unwrap_or_else(|e| panic!("controller sent undecodable bytes: {e}"));
        if let Body::PacketOut(po) = &m.body
            && let Ok(info) = packet::parse(&po.data)
            && let Some((_, dport)) = info.ports
            && let Some(pp) = c.cfg.protected_port(info.proto, dport)
        {
            assert!(
                pp.service.allows(c.allow.lookup(info.dst)),
                "controller forwarded {info:?} to an unregistered destination"
            );
        }
        at += len;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 8);
    let (cuts, stream) = rest.split_at(n.min(rest.len()));
    let c = controller();
    assert!(!c.task.is_finished(), "the controller stopped serving");
    let sent = runtime().block_on(async {
        let sock = tokio::net::TcpStream::connect(c.addr).await.expect("connect to the controller");
        sock.set_nodelay(true).expect("nodelay");
        let (mut rd, mut wr) = sock.into_split();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let done = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got)).await;
            assert!(done.is_ok(), "the controller kept a connection open 10 s after its peer closed");
            got
        });
        let mut at = 0;
        let mut i = 0;
        while at < stream.len() {
            let size = cuts.get(i % cuts.len().max(1)).map_or(stream.len(), |&s| usize::from(s.max(1)));
            let end = (at + size).min(stream.len());
            if wr.write_all(&stream[at..end]).await.is_err() {
                break; // the controller closed on us: fine
            }
            tokio::task::yield_now().await;
            at = end;
            i += 1;
        }
        let _ = wr.shutdown().await;
        reader.await.expect("reader task")
    });
    check_sent(c, &sent);
    assert!(!c.task.is_finished(), "the controller stopped serving");
});
