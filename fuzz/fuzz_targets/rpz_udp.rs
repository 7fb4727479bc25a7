//! The readers of RPZ traffic that arrives unasked. NOTIFY listener: every
//! datagram is received and decided exactly once (accepted, or refused for
//! one reason), accepted and other-zone NOTIFYs are answered with their id;
//! arbitrary bytes on a TCP connection (framing included) end with the
//! connection closed and accounted. Miss-path
//! lookups: a fake server answers the real query with fuzzer bytes (id
//! patched): a result is an error or classes that the answer really holds.
//!
//! Input: `[mode][bytes...]`: bit 0 of mode picks the reader; for NOTIFY,
//! bit 2 sends the bytes on a TCP connection instead (framing fuzzed too).
#![no_main]

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use guard_user::{
    policy::Classes,
    rpz::{
        lookup::{QueryStyle, RpzClient},
        notify::{NotifyConfig, NotifyListener, Reject, listen_notify},
    },
};
use hickory_proto::{op::Message, rr::RData};
use libfuzzer_sys::fuzz_target;
use rpz_guard_fuzz::{connect_loopback, runtime};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UdpSocket,
};

const ZONE: &str = "rpz.example.com";

struct Notify {
    listener: Mutex<NotifyListener>,
    client: UdpSocket,
}

fn notify() -> &'static Notify {
    static N: OnceLock<Notify> = OnceLock::new();
    N.get_or_init(|| {
        runtime().block_on(async {
            let config = NotifyConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                zone: ZONE.into(),
                allow_from: vec!["127.0.0.0/8".parse().expect("prefix")],
                key: None,
                require_tsig: false,
                tcp_idle: Duration::from_secs(1),
                tcp_max_connections: 64,
                log_interval: Duration::from_secs(3600),
            };
            let listener = listen_notify(config).await.expect("listen");
            let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            client.connect(listener.local_addr()).await.expect("connect");
            Notify { listener: Mutex::new(listener), client }
        })
    })
}

/// (datagrams received, decided: accepted or refused for any reason,
/// answered: accepted or refused as another zone).
fn counted(l: &NotifyListener) -> (u64, u64, u64) {
    let c = l.stats.snapshot();
    let refused: u64 = c.rejected.values().sum();
    let answered_refusals = c.rejected.get(Reject::Zone.name()).copied().unwrap_or(0);
    (c.udp.received, c.udp.accepted + refused, c.udp.accepted + answered_refusals)
}

fn fuzz_notify(datagram: &[u8]) {
    let n = notify();
    let mut l = n.listener.lock().expect("listener lock");
    let before = counted(&l);
    runtime().block_on(async {
        n.client.send(datagram).await.expect("send to the listener");
        let start = Instant::now();
        let after = loop {
            let now = counted(&l);
            if now.0 != before.0 && now.1 != before.1 {
                break now;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "datagram never counted");
            tokio::time::sleep(Duration::from_micros(20)).await;
        };
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1, 1),
            "one datagram received and decided once"
        );
        if after.2 > before.2 {
            let mut buf = vec![0u8; 65_535];
            let got = tokio::time::timeout(Duration::from_secs(5), n.client.recv(&mut buf))
                .await
                .expect("an answered NOTIFY gets its answer")
                .expect("recv");
            let reply = Message::from_vec(&buf[..got]).expect("our NOTIFY answer decodes");
            assert_eq!(reply.id().to_be_bytes(), datagram[..2], "answer id differs from the NOTIFY's");
        }
    });
    while l.events.try_recv().is_ok() {}
}

/// The TCP side of the listener: arbitrary bytes (framing included) on one
/// connection, then close; the listener must close its side too.
fn fuzz_notify_tcp(stream: &[u8]) {
    let n = notify();
    let l = n.listener.lock().expect("listener lock");
    let addr = l.local_addr();
    runtime().block_on(async {
        let mut s = connect_loopback(addr).await.expect("connect to the NOTIFY listener");
        let _ = s.write_all(stream).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let done = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        assert!(done.is_ok(), "the listener kept a closed TCP connection open");
        // Let the connection's task finish its counting before the next input.
        let start = Instant::now();
        while l.stats.snapshot().tcp.open > 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "TCP connection never accounted closed");
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
    });
}

struct Server {
    addr: SocketAddr,
    answer: Arc<Mutex<Vec<u8>>>,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let rt = runtime();
        let sock = rt.block_on(UdpSocket::bind("127.0.0.1:0")).expect("bind the fake server");
        let addr = sock.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new(Vec::new()));
        let current = answer.clone();
        rt.spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else { continue };
                let mut a = current.lock().expect("answer lock").clone();
                if n >= 2 && a.len() >= 2 {
                    a[..2].copy_from_slice(&buf[..2]);
                }
                let _ = sock.send_to(&a, from).await;
            }
        });
        Server { addr, answer }
    })
}

fn fuzz_lookup(style: QueryStyle, answer: &[u8]) {
    let s = server();
    *s.answer.lock().expect("answer lock") = answer.to_vec();
    let ip: IpAddr = "198.51.100.99".parse().expect("ip");
    let r = runtime().block_on(async {
        let c = RpzClient::new(s.addr, ZONE, style, Duration::from_millis(20)).await.expect("client");
        c.with_tries(1).lookup(ip).await
    });
    if let Ok(a) = r
        && a.classes != Classes::NONE
    {
        let m = Message::from_vec(answer).expect("an answer that gave classes decodes");
        let has = m.answers().iter().any(|r| {
            matches!(r.data(), RData::A(x) if Classes::from_rpz_answer(x.0).is_some_and(|c| a.classes.contains(c)))
        });
        assert!(has, "classes {:?} not backed by an A record of the answer", a.classes);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        if mode & 4 != 0 {
            fuzz_notify_tcp(rest);
        } else if rest.len() >= 2 {
            fuzz_notify(rest);
        }
    } else {
        fuzz_lookup(if mode & 2 == 0 { QueryStyle::Zone } else { QueryStyle::Paper }, rest);
    }
});
