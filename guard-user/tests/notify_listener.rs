//! The NOTIFY listener on real loopback sockets, UDP and TCP on one address:
//! the same checks on both transports, several messages per TCP connection,
//! signed answers, and bad input (a source that is not allowed, a wrong
//! zone, a bad TSIG, a truncated length prefix, an oversize length, idle
//! and half-sent connections, the connection cap), each refused, counted by
//! reason, and never stalling UDP or the other connections.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use guard_user::rpz::{
    notify::{NotifyConfig, NotifyEvent, NotifyListener, Reject, Transport, listen_notify},
    tsig::{TsigAlgo, TsigKey},
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::SOA},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream, UdpSocket},
};

const ZONE: &str = "rpz.example.com.";
const IDLE: Duration = Duration::from_millis(400);

fn key() -> TsigKey {
    TsigKey {
        name: "rpz-guard-key".into(),
        algorithm: TsigAlgo::HmacSha256,
        secret: b"0123456789abcdef0123456789abcdef".to_vec(),
    }
}

fn notify(zone: &str, serial: u32, id: u16, signer: Option<&TsigKey>) -> Vec<u8> {
    let n = Name::from_ascii(zone).expect("name");
    let mut m = Message::new();
    m.set_id(id).set_op_code(OpCode::Notify).set_authoritative(true);
    m.add_query(Query::query(n.clone(), RecordType::SOA));
    m.add_answer(Record::from_rdata(n.clone(), 60, RData::SOA(SOA::new(n.clone(), n, serial, 1, 1, 1, 1))));
    if let Some(k) = signer {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        m.finalize(&k.signer().expect("signer"), u32::try_from(now).expect("time")).expect("sign");
    }
    m.to_vec().expect("encode")
}

async fn start(max_connections: usize) -> NotifyListener {
    listen_notify(NotifyConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        zone: ZONE.into(),
        allow_from: vec!["127.0.0.1/32".parse().expect("prefix")],
        key: Some(key()),
        require_tsig: true,
        tcp_idle: IDLE,
        tcp_max_connections: max_connections,
        log_interval: Duration::from_secs(60),
    })
    .await
    .expect("listener starts")
}

async fn connect(to: SocketAddr, from: Ipv4Addr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(IpAddr::V4(from), 0)).expect("bind client");
    s.connect(to).await.expect("connect")
}

async fn send_framed(s: &mut TcpStream, msg: &[u8]) {
    let mut framed = u16::try_from(msg.len()).expect("len").to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed).await.expect("write");
}

/// The next framed answer, or `None` when the listener closed the connection.
async fn recv_framed(s: &mut TcpStream) -> Option<Message> {
    let read = async {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), read).await.expect("answer or close within 3 s")
}

/// True when the peer closed (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(within, s.read(&mut b)).await, Ok(Ok(0) | Err(_)))
}

async fn udp_roundtrip(to: SocketAddr, msg: &[u8]) -> (Message, Duration) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let t = Instant::now();
    sock.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .expect("UDP answer")
        .expect("recv");
    (Message::from_vec(&buf[..n]).expect("answer decodes"), t.elapsed())
}

async fn next_event(l: &mut NotifyListener) -> NotifyEvent {
    tokio::time::timeout(Duration::from_secs(2), l.events.recv())
        .await
        .expect("event in time")
        .expect("event")
}

fn assert_signed_ok(m: &Message, id: u16) {
    assert_eq!((m.id(), m.message_type(), m.op_code()), (id, MessageType::Response, OpCode::Notify));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert!(!m.signature().is_empty(), "the answer to a signed NOTIFY is signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_tcp_share_address_and_checks() {
    let mut l = start(8).await;
    let addr = l.local_addr();
    let k = key();

    // UDP.
    let (m, _) = udp_roundtrip(addr, &notify(ZONE, 7, 1, Some(&k))).await;
    assert_signed_ok(&m, 1);
    let ev = next_event(&mut l).await;
    assert_eq!((ev.serial, ev.transport), (Some(7), Transport::Udp));

    // TCP on the same port: three NOTIFYs on one connection.
    let mut c = connect(addr, Ipv4Addr::LOCALHOST).await;
    for (id, serial) in [(10u16, 8u32), (11, 9), (12, 10)] {
        send_framed(&mut c, &notify(ZONE, serial, id, Some(&k))).await;
        let m = recv_framed(&mut c).await.expect("answer on the same connection");
        assert_signed_ok(&m, id);
        let ev = next_event(&mut l).await;
        assert_eq!((ev.serial, ev.transport), (Some(serial), Transport::Tcp));
    }
    // Two messages in one write are both answered.
    let mut both = Vec::new();
    for (id, serial) in [(13u16, 11u32), (14, 12)] {
        let msg = notify(ZONE, serial, id, Some(&k));
        both.extend_from_slice(&u16::try_from(msg.len()).expect("len").to_be_bytes());
        both.extend_from_slice(&msg);
    }
    c.write_all(&both).await.expect("write");
    assert_signed_ok(&recv_framed(&mut c).await.expect("first"), 13);
    assert_signed_ok(&recv_framed(&mut c).await.expect("second"), 14);
    for serial in [11, 12] {
        assert_eq!(next_event(&mut l).await.serial, Some(serial));
    }
    drop(c);

    // Wrong zone over TCP: REFUSED, then the connection ends.
    let mut c = connect(addr, Ipv4Addr::LOCALHOST).await;
    send_framed(&mut c, &notify("other.example.", 1, 20, Some(&k))).await;
    assert_eq!(recv_framed(&mut c).await.expect("answer").response_code(), ResponseCode::Refused);
    assert!(closed_within(&mut c, Duration::from_secs(1)).await);

    // Bad TSIG over TCP: NOTAUTH, then closed.
    let wrong = TsigKey { secret: b"another secret of the same length".to_vec(), ..key() };
    let mut c = connect(addr, Ipv4Addr::LOCALHOST).await;
    send_framed(&mut c, &notify(ZONE, 50, 21, Some(&wrong))).await;
    assert_eq!(recv_framed(&mut c).await.expect("answer").response_code(), ResponseCode::NotAuth);
    assert!(closed_within(&mut c, Duration::from_secs(1)).await);

    // Unsigned over UDP while a key is required: REFUSED, no event.
    let (m, _) = udp_roundtrip(addr, &notify(ZONE, 51, 22, None)).await;
    assert_eq!(m.response_code(), ResponseCode::Refused);

    // A source that is not allowed: closed at accept (TCP), REFUSED (UDP).
    let mut c = connect(addr, Ipv4Addr::new(127, 0, 0, 2)).await;
    assert!(closed_within(&mut c, Duration::from_secs(1)).await, "disallowed source closed");
    let outsider = UdpSocket::bind("127.0.0.2:0").await.expect("udp");
    outsider.send_to(&notify(ZONE, 52, 23, Some(&k)), addr).await.expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), outsider.recv_from(&mut buf))
        .await
        .expect("answer")
        .expect("recv");
    assert_eq!(Message::from_vec(&buf[..n]).expect("decode").response_code(), ResponseCode::Refused);

    // None of the refused ones became an event.
    assert!(l.events.try_recv().is_err(), "refused NOTIFYs produce no event");
    let s = l.stats.snapshot();
    assert_eq!((s.udp.accepted, s.tcp.accepted), (1, 5));
    assert_eq!(s.tcp.connections, 3, "the disallowed source is not counted as a served connection");
    for (reason, n) in [(Reject::Zone, 1), (Reject::Tsig, 2), (Reject::Source, 2)] {
        assert_eq!(l.stats.rejected(reason), n, "{}", reason.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tcp_input_is_closed_and_stalls_nothing() {
    let mut l = start(6).await;
    let addr = l.local_addr();
    let k = key();

    // Idle and half-sent connections stay open up to the idle timeout ...
    let mut idle = connect(addr, Ipv4Addr::LOCALHOST).await;
    let mut half = connect(addr, Ipv4Addr::LOCALHOST).await;
    let msg = notify(ZONE, 100, 30, Some(&k));
    let mut partial = u16::try_from(msg.len()).expect("len").to_be_bytes().to_vec();
    partial.extend_from_slice(&msg[..msg.len() / 2]);
    half.write_all(&partial).await.expect("write");
    let opened = Instant::now();

    // ... and meanwhile UDP and another TCP connection are answered at once.
    let (m, took) = udp_roundtrip(addr, &notify(ZONE, 101, 31, Some(&k))).await;
    assert_signed_ok(&m, 31);
    assert!(took < Duration::from_millis(200), "UDP answered in {took:?} while TCP peers stall");
    let mut good = connect(addr, Ipv4Addr::LOCALHOST).await;
    let t = Instant::now();
    send_framed(&mut good, &notify(ZONE, 102, 32, Some(&k))).await;
    assert_signed_ok(&recv_framed(&mut good).await.expect("answer"), 32);
    assert!(t.elapsed() < Duration::from_millis(200), "TCP answered in {:?}", t.elapsed());
    assert_eq!(next_event(&mut l).await.transport, Transport::Udp);
    assert_eq!(next_event(&mut l).await.transport, Transport::Tcp);

    // The stalled ones are closed after the idle timeout, not before.
    assert!(closed_within(&mut idle, IDLE * 3).await, "idle connection closed");
    assert!(closed_within(&mut half, IDLE * 3).await, "half-sent message closed");
    assert!(opened.elapsed() >= IDLE, "closed only after the idle timeout ({:?})", opened.elapsed());

    // A truncated length prefix (one byte, then EOF).
    let mut c = connect(addr, Ipv4Addr::LOCALHOST).await;
    c.write_all(&[0x00]).await.expect("write");
    c.shutdown().await.expect("shutdown");
    assert!(closed_within(&mut c, Duration::from_secs(1)).await);
    // A length of 0 and one far above any NOTIFY.
    for len in [0u16, 0xffff] {
        let mut c = connect(addr, Ipv4Addr::LOCALHOST).await;
        c.write_all(&len.to_be_bytes()).await.expect("write");
        assert!(closed_within(&mut c, Duration::from_secs(1)).await, "length {len} closed");
    }
    // Garbage framed correctly: closed without an answer.
    let mut c = connect(addr, Ipv4Addr::LOCALHOST).await;
    send_framed(&mut c, b"\x12\x34not a dns message at all").await;
    assert!(recv_framed(&mut c).await.is_none(), "garbage is not answered");

    // The connection cap: with six open, the seventh is closed at once.
    drop(good);
    let t = Instant::now();
    while l.stats.snapshot().tcp.open > 0 {
        assert!(t.elapsed() < Duration::from_secs(3), "connections still open: {:?}", l.stats.snapshot().tcp);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(connect(addr, Ipv4Addr::LOCALHOST).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut over = connect(addr, Ipv4Addr::LOCALHOST).await;
    assert!(closed_within(&mut over, Duration::from_millis(300)).await, "over the cap: closed");
    // UDP still answers with every TCP slot taken.
    let (m, _) = udp_roundtrip(addr, &notify(ZONE, 103, 33, Some(&k))).await;
    assert_signed_ok(&m, 33);
    // After the idle ones are closed, a new connection is served again.
    for c in &mut open {
        assert!(closed_within(c, IDLE * 3).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut again = connect(addr, Ipv4Addr::LOCALHOST).await;
    send_framed(&mut again, &notify(ZONE, 104, 34, Some(&k))).await;
    assert_signed_ok(&recv_framed(&mut again).await.expect("served after the cap cleared"), 34);

    let s = l.stats.snapshot();
    assert!(l.stats.rejected(Reject::Idle) >= 2 + 6, "idle: {}", l.stats.rejected(Reject::Idle));
    assert_eq!(l.stats.rejected(Reject::Truncated), 1);
    assert_eq!(l.stats.rejected(Reject::Oversize), 2);
    assert_eq!(l.stats.rejected(Reject::Malformed), 1);
    assert_eq!(l.stats.rejected(Reject::Connections), 1);
    assert_eq!(s.tcp.open, 1, "only the last connection is still open");
    assert_eq!((s.udp.accepted, s.tcp.accepted), (2, 2));
}
