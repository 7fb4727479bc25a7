//! The controller against synthetic switches over loopback (no privileges):
//! handshake and resync sequence, packet-in decisions, allow-set diffs,
//! echo keepalive and dead-peer detection, several switches at once; live
//! learning (learning flows, held answers released behind the learned
//! flows and a barrier, the limit shedding without releasing).
mod learn_common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use guard_common::Stat;
use guard_user::{
    events::{EventOutput, EventSink},
    metrics::Counters,
    miss::{BoxFuture, CacheTtl, LookupError, MissResolver, RpzSource, SetSource},
    openflow::{
        ControllerConfig, ControllerShared, Learning,
        codec::{
            Action, Body, FeaturesReply, FlowMod, Instruction, Message, OFPP_NORMAL, PacketIn, flow_cmd,
            frag, message_len, meter_cmd,
        },
        flows::{
            COOKIE_PROACTIVE, COOKIE_TAG, COOKIE_TAG_MASK, COOKIE_VERDICT, PRIO_ALLOW, PRIO_DENY,
            PRIO_VERDICT,
        },
        oxm::{Match, Oxm},
        serve_listener,
    },
    policy::{AllowSet, Classes, Prefix},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::timeout,
};
use tokio_util::sync::CancellationToken;

fn pfx(s: &str) -> Prefix {
    s.parse().expect("prefix")
}

struct Rig {
    addr: SocketAddr,
    shared: ControllerShared,
    allow: watch::Sender<Arc<AllowSet>>,
    counters: Arc<Counters>,
    events: Arc<EventSink>,
    cancel: CancellationToken,
}

async fn rig(set: AllowSet, tweak: impl FnOnce(&mut ControllerConfig)) -> Rig {
    rig_with(set, None, tweak).await
}

/// As [`rig`]; the miss path asks `rpz` instead of the mirrored set.
async fn rig_with(
    set: AllowSet,
    rpz: Option<Arc<dyn RpzSource>>,
    tweak: impl FnOnce(&mut ControllerConfig),
) -> Rig {
    rig_full(set, rpz, None, tweak).await
}

/// A rig whose controller feeds the learning flows' packet-ins to `learning`.
async fn rig_learning(
    set: AllowSet,
    tweak: impl FnOnce(&mut ControllerConfig),
    learning: Option<Arc<Learning>>,
) -> Rig {
    rig_full(set, None, learning, tweak).await
}

async fn rig_full(
    set: AllowSet,
    rpz: Option<Arc<dyn RpzSource>>,
    learning: Option<Arc<Learning>>,
    tweak: impl FnOnce(&mut ControllerConfig),
) -> Rig {
    let (tx, rx) = watch::channel(Arc::new(set));
    let rpz = rpz.unwrap_or_else(|| Arc::new(SetSource(rx.clone())));
    let resolver = Arc::new(MissResolver::new(rpz, CacheTtl::default()));
    let events = Arc::new(EventSink::open(&EventOutput::None).expect("events"));
    let counters = Arc::new(Counters::default());
    let mut shared = ControllerShared::new(rx, resolver, events.clone(), counters.clone());
    if let Some(l) = learning {
        shared = shared.with_learning(l);
    }
    let mut cfg =
        ControllerConfig { echo_interval_secs: 1, dead_peer_secs: 2, ..ControllerConfig::default() };
    tweak(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    tokio::spawn(serve_listener(listener, cfg, shared.clone(), cancel.clone()));
    Rig { addr, shared, allow: tx, counters, events, cancel }
}

struct FakeSwitch {
    s: TcpStream,
    buf: Vec<u8>,
}

impl FakeSwitch {
    /// Connects and completes the handshake as datapath `dpid`.
    async fn connect(addr: SocketAddr, dpid: u64) -> FakeSwitch {
        let mut sw = FakeSwitch { s: TcpStream::connect(addr).await.expect("connect"), buf: Vec::new() };
        let hello = sw.recv().await;
        assert_eq!(hello.body, Body::Hello { version: 4, bitmap: Some(1 << 4) });
        sw.send(Message::new(1, Body::Hello { version: 6, bitmap: Some((1 << 4) | (1 << 6)) })).await;
        let fr = sw.recv().await;
        assert_eq!(fr.body, Body::FeaturesRequest);
        let reply = FeaturesReply {
            datapath_id: dpid,
            n_buffers: 0,
            n_tables: 254,
            auxiliary_id: 0,
            capabilities: 0x4f,
            reserved: 0,
        };
        sw.send(Message::new(fr.xid, Body::FeaturesReply(reply))).await;
        sw
    }

    async fn send(&mut self, m: Message) {
        self.s.write_all(&m.encode()).await.expect("send");
    }

    async fn recv(&mut self) -> Message {
        self.try_recv(Duration::from_secs(5)).await.expect("a message from the controller")
    }

    async fn try_recv(&mut self, wait: Duration) -> Option<Message> {
        loop {
            if let Some(n) = message_len(&self.buf).filter(|n| *n <= self.buf.len()) {
                let m = Message::decode(&self.buf[..n]).expect("controller sends valid messages");
                self.buf.drain(..n);
                return Some(m);
            }
            let mut chunk = [0u8; 8192];
            let n = timeout(wait, self.s.read(&mut chunk)).await.ok()?.expect("read");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Collects messages until a BARRIER_REQUEST (answering it).
    async fn until_barrier(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            if m.body == Body::BarrierRequest {
                self.send(Message::new(m.xid, Body::BarrierReply)).await;
                return out;
            }
            out.push(m);
        }
    }

    /// Messages arriving within `wait` in total, answering echo requests.
    async fn drain(&mut self, wait: Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(m) = self.try_recv(left).await else { break };
            if let Body::EchoRequest(d) = &m.body {
                self.send(Message::new(m.xid, Body::EchoReply(d.clone()))).await;
                continue;
            }
            out.push(m);
        }
        out
    }
}

fn flow_mods(ms: &[Message]) -> Vec<&FlowMod> {
    ms.iter().filter_map(|m| if let Body::FlowMod(f) = &m.body { Some(f) } else { None }).collect()
}

fn packet_in(dst: [u8; 4], proto: u8, dport: u16) -> Message {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0, 0, 64, proto, 0, 0, 10, 0, 0, 66]);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x30, 0x39]);
    f.extend_from_slice(&dport.to_be_bytes());
    // A whole TCP header (data offset 5): a shorter one is malformed.
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let pi = PacketIn {
        buffer_id: u32::MAX,
        total_len: u16::try_from(f.len()).expect("small"),
        reason: 1,
        table_id: 0,
        cookie: 0,
        r#match: Match::new(vec![Oxm::InPort(7)]),
        data: f,
    };
    Message::new(99, Body::PacketIn(pi))
}

fn dst_of(f: &FlowMod) -> Option<std::net::Ipv4Addr> {
    f.r#match.find(|o| if let Oxm::Ipv4Dst(a, None) = o { Some(*a) } else { None })
}

#[tokio::test]
async fn handshake_then_full_resync() {
    let set: AllowSet =
        [(pfx("192.0.2.53"), Classes::DNS), (pfx("192.0.2.25"), Classes::SMTP)].into_iter().collect();
    let r = rig(set, |c| c.exempt_sources = vec![pfx("10.0.0.53")]).await;
    let mut sw = FakeSwitch::connect(r.addr, 0x42).await;
    let ms = sw.until_barrier().await;
    // Order: SET_CONFIG (nx-match fragments), delete all ours, meter, flows.
    assert!(
        matches!(&ms[0].body, Body::SetConfig(c) if c.flags == frag::NX_MATCH && c.miss_send_len == 0xffff)
    );
    let Body::FlowMod(del) = &ms[1].body else { panic!("expected the resync delete, got {:?}", ms[1]) };
    assert_eq!((del.command, del.cookie, del.cookie_mask), (flow_cmd::DELETE, COOKIE_TAG, COOKIE_TAG_MASK));
    assert!(matches!(&ms[2].body, Body::MeterMod(m) if m.command == meter_cmd::DELETE));
    assert!(
        matches!(&ms[3].body, Body::MeterMod(m) if m.command == meter_cmd::ADD && m.bands[0].rate == 2000)
    );
    let fms = flow_mods(&ms);
    let proactive: Vec<_> = fms.iter().filter(|f| f.cookie == COOKIE_PROACTIVE).collect();
    // DNS entry: udp+tcp 53; SMTP entry: 53 twice plus 25/465/587.
    assert_eq!(proactive.len(), 2 + 5);
    assert!(proactive.iter().all(|f| f.priority == PRIO_ALLOW
        && f.instructions == vec![Instruction::ApplyActions(vec![Action::output(OFPP_NORMAL)])]));
    let to53 = proactive.iter().filter(|f| dst_of(f) == Some([192, 0, 2, 53].into())).count();
    assert_eq!(to53, 2, "a DNS-only entry gets no SMTP flows");
    assert!(fms.iter().any(|f| f.priority == 0 && f.r#match.fields.is_empty()), "table-miss NORMAL");
    let st = r.shared.status();
    assert_eq!(st.switches.len(), 1);
    assert_eq!(st.switches[0].dpid, 0x42);
    assert_eq!(st.switches[0].proactive_flows, 7);
    assert_eq!(st.resyncs, 1);

    // Reconnect: the same full resync again.
    drop(sw);
    let mut sw = FakeSwitch::connect(r.addr, 0x42).await;
    let again = sw.until_barrier().await;
    assert_eq!(flow_mods(&again).len(), fms.len());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.shared.status().resyncs, 2);
    assert_eq!(r.shared.status().switches.len(), 1, "the old connection is gone");
    r.cancel.cancel();
}

#[tokio::test]
async fn packet_ins_are_decided_and_answered() {
    let set: AllowSet =
        [(pfx("192.0.2.53"), Classes::DNS), (pfx("192.0.2.25"), Classes::SMTP)].into_iter().collect();
    let r = rig(set, |c| c.flow_budget = 0).await;
    let mut sw = FakeSwitch::connect(r.addr, 7).await;
    sw.until_barrier().await;

    // Allowed (in the set, over budget): allow verdict flow + packet-out NORMAL.
    sw.send(packet_in([192, 0, 2, 25], 6, 25)).await;
    let ms = sw.drain(Duration::from_millis(300)).await;
    let f = flow_mods(&ms);
    assert_eq!(f.len(), 1, "{ms:?}");
    assert_eq!((f[0].cookie, f[0].priority), (COOKIE_VERDICT, PRIO_VERDICT));
    assert_eq!(f[0].instructions, vec![Instruction::ApplyActions(vec![Action::output(OFPP_NORMAL)])]);
    assert!(f[0].r#match.fields.contains(&Oxm::TcpDst(25)));
    let po = ms.iter().find_map(|m| if let Body::PacketOut(p) = &m.body { Some(p) } else { None });
    let po = po.expect("the packet is sent on");
    assert_eq!((po.in_port, po.actions.clone()), (7, vec![Action::output(OFPP_NORMAL)]));
    assert_eq!(r.counters.snapshot()[Stat::PassAllowed as usize], 1);

    // Wrong class (SMTP to a name server): drop flow, no packet-out, event.
    sw.send(packet_in([192, 0, 2, 53], 6, 587)).await;
    let ms = sw.drain(Duration::from_millis(300)).await;
    let f = flow_mods(&ms);
    assert_eq!(f.len(), 1, "{ms:?}");
    assert!(f[0].instructions.is_empty(), "drop flow has no instructions");
    assert!(f[0].hard_timeout >= 1 && f[0].idle_timeout <= f[0].hard_timeout);
    assert!(!ms.iter().any(|m| matches!(m.body, Body::PacketOut(_))));
    assert_eq!(r.counters.snapshot()[Stat::DropWrongClass as usize], 1);

    // Unregistered DNS: miss path, drop, event.
    sw.send(packet_in([203, 0, 113, 9], 17, 53)).await;
    let ms = sw.drain(Duration::from_millis(300)).await;
    assert_eq!(flow_mods(&ms).len(), 1);
    let c = r.counters.snapshot();
    assert_eq!(c[Stat::DropNotRegistered as usize], 1);
    assert_eq!(c[Stat::Miss as usize], 2);
    assert_eq!(c[Stat::Packets as usize], 3);
    assert_eq!(r.events.total(), 2);
    let top = r.events.top_sources(1);
    assert_eq!(top[0].0, "10.0.0.66".parse::<std::net::IpAddr>().expect("ip"));

    // Garbage inside a packet-in: counted as malformed, nothing installed.
    let mut bad = packet_in([203, 0, 113, 9], 17, 53);
    if let Body::PacketIn(p) = &mut bad.body {
        p.data.truncate(20);
    }
    sw.send(bad).await;
    assert!(flow_mods(&sw.drain(Duration::from_millis(200)).await).is_empty());
    assert_eq!(r.counters.snapshot()[Stat::DropMalformed as usize], 1);

    // Unprotected port: sent on, no flow.
    sw.send(packet_in([203, 0, 113, 9], 6, 443)).await;
    let ms = sw.drain(Duration::from_millis(200)).await;
    assert!(flow_mods(&ms).is_empty() && ms.iter().any(|m| matches!(m.body, Body::PacketOut(_))));
    assert_eq!(r.shared.status().packet_ins, 5);
    r.cancel.cancel();
}

#[tokio::test]
async fn allow_set_changes_apply_as_diffs() {
    let set: AllowSet = [(pfx("192.0.2.25"), Classes::SMTP)].into_iter().collect();
    let r = rig(set, |_| {}).await;
    let mut a = FakeSwitch::connect(r.addr, 1).await;
    let mut b = FakeSwitch::connect(r.addr, 2).await;
    a.until_barrier().await;
    b.until_barrier().await;
    assert_eq!(r.shared.status().switches.len(), 2);

    // Add a DNS entry and a /24 SMTP prefix; remove the host.
    r.allow.send_modify(|s| {
        let mut n = (**s).clone();
        n.remove(&pfx("192.0.2.25"), Classes::SMTP);
        n.add(pfx("198.51.100.53"), Classes::DNS);
        n.add(pfx("203.0.113.0/24"), Classes::SMTP);
        *s = Arc::new(n);
    });
    for sw in [&mut a, &mut b] {
        let ms = sw.until_barrier().await;
        let f = flow_mods(&ms);
        let strict: Vec<_> = f.iter().filter(|f| f.command == flow_cmd::DELETE_STRICT).collect();
        assert_eq!(strict.len(), 5, "the removed SMTP host's five flows");
        assert!(strict.iter().all(|f| dst_of(f) == Some([192, 0, 2, 25].into())));
        let adds: Vec<_> = f.iter().filter(|f| f.command == flow_cmd::ADD).collect();
        assert_eq!(adds.len(), 2 + 5);
        assert!(adds.iter().any(|f| {
            f.r#match.fields.contains(&Oxm::Ipv4Dst([203, 0, 113, 0].into(), Some([255, 255, 255, 0].into())))
        }));
        // Verdict flows inside every touched prefix are flushed.
        let flush = f.iter().filter(|f| f.command == flow_cmd::DELETE && f.cookie == COOKIE_VERDICT).count();
        assert_eq!(flush, 3);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(r.shared.status().switches.iter().all(|s| s.proactive_flows == 7));
    r.cancel.cancel();
}

/// Issue 11: a deny (RPZ `CNAME .`) inside an allowed prefix gets flows
/// above the allow flows, its packets are dropped and reported, even with
/// the flow budget spent; lifting it takes its flows away.
#[tokio::test]
async fn denies_beat_allow_flows() {
    let set: AllowSet = [(pfx("203.0.113.0/24"), Classes::SMTP)].into_iter().collect();
    let r = rig(set, |c| c.flow_budget = 5).await;
    let mut sw = FakeSwitch::connect(r.addr, 9).await;
    sw.until_barrier().await;
    r.allow.send_modify(|s| {
        let mut n = (**s).clone();
        n.deny(pfx("203.0.113.9"));
        *s = Arc::new(n);
    });
    let ms = sw.until_barrier().await;
    let adds: Vec<_> = flow_mods(&ms).into_iter().filter(|f| f.command == flow_cmd::ADD).collect();
    assert_eq!(adds.len(), 5, "one deny flow per protected port, budget or not: {ms:?}");
    assert!(adds.iter().all(|f| f.priority == PRIO_DENY && dst_of(f) == Some([203, 0, 113, 9].into())));
    const { assert!(PRIO_DENY > PRIO_ALLOW) };
    // The switch sends the denied packet up: dropped, reported, no flow.
    sw.send(packet_in([203, 0, 113, 9], 6, 25)).await;
    let ms = sw.drain(Duration::from_millis(300)).await;
    assert!(flow_mods(&ms).is_empty() && !ms.iter().any(|m| matches!(m.body, Body::PacketOut(_))), "{ms:?}");
    assert_eq!(r.counters.snapshot()[Stat::DropNotRegistered as usize], 1);
    assert_eq!(r.events.total(), 1);
    // The rest of the prefix is still allowed by the controller too.
    sw.send(packet_in([203, 0, 113, 10], 6, 25)).await;
    let ms = sw.drain(Duration::from_millis(300)).await;
    assert!(ms.iter().any(|m| matches!(m.body, Body::PacketOut(_))));
    r.allow.send_modify(|s| {
        let mut n = (**s).clone();
        n.undeny(&pfx("203.0.113.9"));
        *s = Arc::new(n);
    });
    let ms = sw.until_barrier().await;
    let strict = flow_mods(&ms).into_iter().filter(|f| f.command == flow_cmd::DELETE_STRICT).count();
    assert_eq!(strict, 5, "the deny flows go: {ms:?}");
    r.cancel.cancel();
}

#[tokio::test]
async fn echo_keepalive_and_dead_peer() {
    let r = rig(AllowSet::new(), |_| {}).await;
    let mut sw = FakeSwitch::connect(r.addr, 9).await;
    sw.until_barrier().await;
    // We answer the switch's echo.
    sw.send(Message::new(77, Body::EchoRequest(b"ping".to_vec()))).await;
    loop {
        let m = sw.recv().await;
        if m.xid == 77 {
            assert_eq!(m.body, Body::EchoReply(b"ping".to_vec()));
            break;
        }
        assert_eq!(m.body, Body::EchoRequest(Vec::new()), "only keepalives in between");
    }
    // The controller sends echo requests; a switch answering them stays.
    let _ = sw.drain(Duration::from_millis(2500)).await;
    assert_eq!(r.shared.status().switches.len(), 1, "a live switch stays connected");
    // Silence (read but never answer): closed after the dead-peer time.
    sw.buf.clear();
    let closed = timeout(Duration::from_secs(6), async {
        let mut chunk = [0u8; 1024];
        while sw.s.read(&mut chunk).await.is_ok_and(|n| n > 0) {}
    })
    .await
    .is_ok();
    assert!(closed, "a silent switch must be disconnected");
    assert!(r.shared.status().switches.is_empty());
    r.cancel.cancel();
}

/// A switch that works through a large resync slowly, in order, as OVS
/// does on a loaded machine (nothing from it until it reaches our next
/// message), is busy, not dead: the bulk change carries barriers, and their
/// answers keep it heard from long past the 2 s dead-peer time.
#[tokio::test]
async fn a_switch_busy_with_a_large_resync_is_not_called_dead() {
    const ENTRIES: u32 = 3000;
    let set: AllowSet = (0..ENTRIES)
        .map(|i| (Prefix::host(std::net::Ipv4Addr::from(0xc612_0000 + i).into()), Classes::DNS))
        .collect();
    let r = rig(set, |_| {}).await;
    let mut sw = FakeSwitch::connect(r.addr, 0x51).await;
    let t = std::time::Instant::now();
    let (mut flows, mut barriers) = (0u32, 0u32);
    // About 3.6 s of work against a 2 s dead-peer time.
    loop {
        let m = timeout(Duration::from_secs(10), sw.recv()).await.expect("the controller keeps sending");
        match m.body {
            Body::FlowMod(_) => {
                flows += 1;
                if flows % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(6)).await;
                }
            }
            Body::BarrierRequest => {
                barriers += 1;
                sw.send(Message::new(m.xid, Body::BarrierReply)).await;
                if flows >= 2 * ENTRIES {
                    break;
                }
            }
            Body::EchoRequest(d) => sw.send(Message::new(m.xid, Body::EchoReply(d))).await,
            _ => {}
        }
    }
    // Cut off, the switch would have read the end of the stream above.
    eprintln!("busy for {:?}, {barriers} barriers", t.elapsed());
    assert!(barriers >= 5, "progress barriers in the bulk change: {barriers}");
    let _ = sw.drain(Duration::from_millis(1500)).await;
    assert_eq!(r.shared.status().switches.len(), 1, "the busy switch stays connected");
    r.cancel.cancel();
}

#[tokio::test]
async fn unknown_and_error_messages_are_counted_not_fatal() {
    let r = rig(AllowSet::new(), |_| {}).await;
    let mut sw = FakeSwitch::connect(r.addr, 3).await;
    sw.until_barrier().await;
    sw.send(Message::new(5, Body::Unknown { msg_type: 12, data: vec![0; 72] })).await; // PORT_STATUS
    sw.send(Message::new(
        6,
        Body::Error(guard_user::openflow::codec::ErrorMsg {
            err_type: 5,
            code: 1,
            data: vec![4, 14, 0, 8, 0, 0, 0, 1],
        }),
    ))
    .await;
    sw.send(packet_in([203, 0, 113, 1], 6, 443)).await;
    let ms = sw.drain(Duration::from_millis(300)).await;
    assert!(ms.iter().any(|m| matches!(m.body, Body::PacketOut(_))), "still serving after an ERROR");
    let st = r.shared.status();
    assert_eq!(st.switch_errors, 1);
    assert_eq!(st.switches.len(), 1);
    r.cancel.cancel();
}

#[tokio::test]
async fn shutdown_and_listen_errors() {
    let (_tx, rx) = watch::channel(Arc::new(AllowSet::new()));
    let resolver = Arc::new(MissResolver::new(Arc::new(SetSource(rx.clone())), CacheTtl::default()));
    let events = Arc::new(EventSink::open(&EventOutput::None).expect("events"));
    let shared = ControllerShared::new(rx, resolver, events, Arc::new(Counters::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");

    // A second controller on the same address fails with a clear error.
    let cfg = ControllerConfig { listen: addr, ..ControllerConfig::default() };
    let err = guard_user::openflow::serve(cfg, shared.clone(), CancellationToken::new())
        .await
        .expect_err("address in use");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    let cancel = CancellationToken::new();
    let task =
        tokio::spawn(serve_listener(listener, ControllerConfig::default(), shared.clone(), cancel.clone()));
    let mut sw = FakeSwitch::connect(addr, 5).await;
    sw.until_barrier().await;
    assert_eq!(shared.status().listen, Some(addr));
    cancel.cancel();
    timeout(Duration::from_secs(5), task).await.expect("serve returns on cancel").expect("join").expect("ok");
    let mut chunk = [0u8; 256];
    let eof =
        timeout(Duration::from_secs(3), async { while sw.s.read(&mut chunk).await.is_ok_and(|n| n > 0) {} })
            .await;
    assert!(eof.is_ok(), "connections are closed on shutdown");
    assert!(shared.status().switches.is_empty());
}

/// An RPZ whose first answer is read at once but delivered only when the
/// test says so: a slow lookup that a zone change overtakes.
struct HeldRpz {
    zone: watch::Receiver<Arc<AllowSet>>,
    asked: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
    first: std::sync::atomic::AtomicBool,
}

impl RpzSource for HeldRpz {
    fn classes(&self, ip: std::net::IpAddr) -> BoxFuture<'_, Result<Classes, LookupError>> {
        let c = self.zone.borrow().lookup(ip);
        let hold = self.first.swap(false, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if hold {
                self.asked.notify_one();
                self.release.acquire().await.expect("open").forget();
            }
            Ok(c)
        })
    }
}

#[tokio::test]
async fn a_verdict_taken_on_an_older_set_is_taken_again() {
    // The RPZ allows 198.51.100.25 for SMTP when the packet-in is asked
    // about; the zone revokes it (and the set changes) before the answer
    // arrives. The stale "allow" must not become a flow or a packet-out.
    let mail = pfx("198.51.100.25");
    let (zone_tx, zone_rx) =
        watch::channel(Arc::new([(mail, Classes::SMTP)].into_iter().collect::<AllowSet>()));
    let held = Arc::new(HeldRpz {
        zone: zone_rx,
        asked: Arc::new(tokio::sync::Notify::new()),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
        first: true.into(),
    });
    let r = rig_with(AllowSet::new(), Some(held.clone()), |_| {}).await;
    let mut sw = FakeSwitch::connect(r.addr, 11).await;
    sw.until_barrier().await;

    sw.send(packet_in([198, 51, 100, 25], 6, 25)).await;
    timeout(Duration::from_secs(5), held.asked.notified()).await.expect("the miss path asked the RPZ");
    zone_tx.send_replace(Arc::new(AllowSet::new()));
    r.allow.send_modify(|s| {
        let mut n = (**s).clone();
        n.add(pfx("192.0.2.53"), Classes::DNS);
        *s = Arc::new(n);
    });
    sw.until_barrier().await;
    held.release.add_permits(1);

    let ms = sw.drain(Duration::from_millis(500)).await;
    let verdicts: Vec<_> = flow_mods(&ms).into_iter().filter(|f| f.cookie == COOKIE_VERDICT).collect();
    assert_eq!(verdicts.len(), 1, "{ms:?}");
    assert!(verdicts[0].instructions.is_empty(), "a drop verdict, not the stale allow: {:?}", verdicts[0]);
    assert!(!ms.iter().any(|m| matches!(m.body, Body::PacketOut(_))), "the packet is not sent on");
    assert_eq!(r.counters.snapshot()[Stat::DropNotRegistered as usize], 1);
    r.cancel.cancel();
}

mod live {
    //! Live learning through the controller (issue 9).
    use guard_user::{
        learn::{Hints, live::LiveAllow},
        openflow::{
            codec::{Instruction, OFPP_CONTROLLER, PacketOut},
            flows::{COOKIE_LEARN_HELD, COOKIE_LEARN_QUERY, LEARN_METER, PRIO_LEARN},
        },
    };
    use hickory_proto::rr::RecordType;

    use super::{learn_common::*, *};

    const TLD: &str = "192.5.6.30";
    const NS1: &str = "203.0.113.10";
    const MAIL: &str = "203.0.113.25";
    const MAIL6: &str = "2001:db8::25";
    const IN_PORT: u32 = 3;

    fn learning() -> (Arc<Learning>, Arc<LiveAllow>) {
        let live = Arc::new(LiveAllow::new(1000).expect("eventfd"));
        let l =
            Learning::new(&Hints::root(), 10_000_000_000, true, live.clone(), Box::new(|_| Classes::NONE));
        (l, live)
    }

    fn learn_cfg(c: &mut ControllerConfig) {
        c.exempt_sources = vec![pfx(RESOLVER)];
        c.learn_resolvers = vec![pfx(RESOLVER)];
    }

    /// The resolver's conversation down to example.com's MX: queries and answers.
    fn conversation() -> Vec<Vec<u8>> {
        let mut c = Conv::new();
        let q = "example.com.";
        c.ask(
            ROOT_A,
            1,
            q,
            RecordType::MX,
            referral(vec![ns("com.", "a.gtld-servers.net.")], vec![a("a.gtld-servers.net.", TLD)]),
        );
        c.ask(
            TLD,
            2,
            q,
            RecordType::MX,
            referral(vec![ns(q, "ns1.example.com.")], vec![a("ns1.example.com.", NS1)]),
        );
        let mail = vec![a("mail.example.com.", MAIL), aaaa("mail.example.com.", MAIL6)];
        c.ask(NS1, 3, q, RecordType::MX, answer(vec![mx(q, 10, "mail.example.com.")], mail));
        c.frames.into_iter().map(|(_, f)| f).collect()
    }

    fn learn_in(cookie: u64, frame: Vec<u8>) -> Message {
        Message::new(
            0,
            Body::PacketIn(PacketIn {
                buffer_id: u32::MAX,
                total_len: u16::try_from(frame.len()).expect("small"),
                reason: 1,
                table_id: 0,
                cookie,
                r#match: Match::new(vec![Oxm::InPort(IN_PORT)]),
                data: frame,
            }),
        )
    }

    /// Messages within `ms`, without the learning meter's statistics polls.
    async fn drain(sw: &mut FakeSwitch, ms: u64) -> Vec<Message> {
        let mut v = sw.drain(Duration::from_millis(ms)).await;
        v.retain(|m| !matches!(m.body, Body::MultipartRequest(_)));
        v
    }

    fn packet_out(m: &Message) -> Option<&PacketOut> {
        if let Body::PacketOut(p) = &m.body { Some(p) } else { None }
    }

    #[tokio::test]
    async fn learning_flows_copy_queries_and_hold_answers() {
        let (l, _) = learning();
        let r = rig_learning(AllowSet::new(), learn_cfg, Some(l)).await;
        let mut sw = FakeSwitch::connect(r.addr, 0x10).await;
        let ms = sw.until_barrier().await;
        assert!(
            ms.iter().any(|m| matches!(&m.body, Body::MeterMod(mm) if mm.meter_id == LEARN_METER
                && mm.command == meter_cmd::ADD && mm.bands[0].rate == 10_000)),
            "the learning meter"
        );
        let fms = flow_mods(&ms);
        let queries: Vec<_> = fms.iter().filter(|f| f.cookie == COOKIE_LEARN_QUERY).collect();
        assert_eq!(queries.len(), 2, "udp and tcp queries of the one resolver: {queries:?}");
        for q in &queries {
            assert_eq!(q.priority, PRIO_LEARN);
            assert!(q.r#match.fields.contains(&Oxm::Ipv4Src([10, 1, 0, 53].into(), None)));
            assert!(
                q.r#match.fields.contains(&Oxm::UdpDst(53)) || q.r#match.fields.contains(&Oxm::TcpDst(53))
            );
            assert_eq!(
                q.instructions,
                vec![Instruction::ApplyActions(vec![
                    Action::output(OFPP_NORMAL),
                    Action::output(OFPP_CONTROLLER)
                ])],
                "forwarded as the exempt flow does, and copied"
            );
        }
        let held: Vec<_> = fms.iter().filter(|f| f.cookie == COOKIE_LEARN_HELD).collect();
        assert_eq!(held.len(), 3, "udp, tcp answers and later fragments toward the resolver: {held:?}");
        for h in &held {
            assert!(h.r#match.fields.contains(&Oxm::Ipv4Dst([10, 1, 0, 53].into(), None)));
            assert_eq!(
                h.instructions,
                vec![
                    Instruction::Meter(LEARN_METER),
                    Instruction::ApplyActions(vec![Action::output(OFPP_CONTROLLER)])
                ],
                "held: the controller only, metered"
            );
        }
        r.cancel.cancel();

        // Copy mode: answers forwarded at once and copied, no meter.
        let (l, _) = learning();
        let r = rig_learning(
            AllowSet::new(),
            |c| {
                learn_cfg(c);
                c.learn_hold_answers = false;
            },
            Some(l),
        )
        .await;
        let mut sw = FakeSwitch::connect(r.addr, 0x11).await;
        let ms = sw.until_barrier().await;
        assert!(!ms.iter().any(|m| matches!(&m.body, Body::MeterMod(mm) if mm.meter_id == LEARN_METER)));
        assert!(flow_mods(&ms).iter().all(|f| f.cookie != COOKIE_LEARN_HELD));
        r.cancel.cancel();
    }

    /// The ordering by construction: every held answer that teaches
    /// entries is released after their allow flows and a barrier; the
    /// query copies are never sent on (the switch forwarded them).
    #[tokio::test]
    async fn held_answers_are_released_behind_the_learned_flows() {
        let (l, live) = learning();
        let r = rig_learning(AllowSet::new(), learn_cfg, Some(l)).await;
        let mut sw = FakeSwitch::connect(r.addr, 0x12).await;
        sw.until_barrier().await;
        let frames = conversation();
        for (i, f) in frames.iter().enumerate() {
            let is_answer = i % 2 == 1;
            let cookie = if is_answer { COOKIE_LEARN_HELD } else { COOKIE_LEARN_QUERY };
            sw.send(learn_in(cookie, f.clone())).await;
            let ms = drain(&mut sw, 200).await;
            if !is_answer {
                assert!(ms.is_empty(), "a query copy gets no answer: {ms:?}");
                continue;
            }
            let out = ms.iter().position(|m| packet_out(m).is_some()).expect("the held answer is released");
            let po = packet_out(&ms[out]).expect("packet-out");
            assert_eq!(
                (po.in_port, po.actions.clone(), &po.data),
                (IN_PORT, vec![Action::output(OFPP_NORMAL)], f)
            );
            let barrier = ms.iter().position(|m| m.body == Body::BarrierRequest).expect("a barrier");
            let adds: Vec<usize> = ms
                .iter()
                .enumerate()
                .filter(|(_, m)| matches!(&m.body, Body::FlowMod(f) if f.cookie == COOKIE_PROACTIVE && f.command == flow_cmd::ADD))
                .map(|(i, _)| i)
                .collect();
            assert!(!adds.is_empty(), "answer {i} teaches an entry: {ms:?}");
            assert!(
                adds.iter().all(|a| *a < barrier) && barrier < out,
                "flows, barrier, then the answer: {ms:?}"
            );
            sw.send(Message::new(ms[barrier].xid, Body::BarrierReply)).await;
        }
        // The mail host: SMTP (25/465/587) and DNS ports, v4 and v6.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(live.lookup(ip(MAIL)), Classes::SMTP);
        assert_eq!(live.lookup(ip(MAIL6)), Classes::SMTP);
        let st = live.stats();
        assert_eq!(st.learned, 4, "{st:?}");
        assert!(st.lag_flows.is_some_and(|l| l.samples == 3), "answer → flows confirmed: {st:?}");
        let c = r.counters.snapshot();
        assert_eq!(c[Stat::DnsCopied as usize], 6);
        assert_eq!(r.shared.status().learn_released, 3);

        // An unsolicited answer teaches nothing and is released alone.
        let forged = eth_udp(ip(NS1), ip(RESOLVER), 53, 40999, &query(9, "evil.example.", RecordType::MX));
        sw.send(learn_in(COOKIE_LEARN_HELD, forged)).await;
        let ms = drain(&mut sw, 200).await;
        assert_eq!(ms.len(), 1, "only the packet-out: {ms:?}");
        assert!(packet_out(&ms[0]).is_some());

        // A switch connecting later gets the live entries in its resync.
        let mut b = FakeSwitch::connect(r.addr, 0x13).await;
        let ms = b.until_barrier().await;
        let mail = flow_mods(&ms)
            .into_iter()
            .filter(|f| f.cookie == COOKIE_PROACTIVE && dst_of(f) == Some(MAIL.parse().expect("ip")))
            .count();
        assert_eq!(mail, 5, "SMTP entry: 25/465/587 and DNS udp/tcp");

        // The zone confirms the entry: its flows stay (no delete, no re-add).
        r.allow.send_modify(|s| {
            let mut n = (**s).clone();
            n.add(pfx(MAIL), Classes::SMTP);
            *s = Arc::new(n);
        });
        let ms = sw.until_barrier().await;
        assert!(
            flow_mods(&ms).iter().all(|f| dst_of(f) != Some(MAIL.parse().expect("ip"))),
            "a confirmed live entry keeps its flows: {ms:?}"
        );
        r.cancel.cancel();
    }

    /// Over the controller's limit a held answer is shed: counted as a lost
    /// copy, never released.
    #[tokio::test]
    async fn shed_answers_are_never_released() {
        let (l, _) = learning();
        let r = rig_learning(
            AllowSet::new(),
            |c| {
                learn_cfg(c);
                c.max_packet_ins_per_sec = 5;
            },
            Some(l),
        )
        .await;
        let mut sw = FakeSwitch::connect(r.addr, 0x14).await;
        sw.until_barrier().await;
        let answer = eth_udp(ip(NS1), ip(RESOLVER), 53, 41000, &query(9, "x.example.", RecordType::A));
        for _ in 0..40 {
            sw.send(learn_in(COOKIE_LEARN_HELD, answer.clone())).await;
        }
        let ms = drain(&mut sw, 500).await;
        let outs = ms.iter().filter(|m| packet_out(m).is_some()).count() as u64;
        let st = r.shared.status();
        let lost = r.counters.snapshot()[Stat::DnsCopyLost as usize];
        assert!(st.learn_shed > 0 && outs < 40, "shed {} released {outs}", st.learn_shed);
        assert_eq!(outs + st.learn_shed, 40, "every held answer is released or shed");
        assert_eq!(lost, st.learn_shed, "shed copies are counted lost");
        r.cancel.cancel();
    }
}
