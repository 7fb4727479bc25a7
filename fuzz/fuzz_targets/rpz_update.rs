//! The readers of UPDATE answers: every UPDATE rpz-guard sends is
//! TSIG-signed and goes over TCP (RFC 1035 4.2.2 framing). A fake primary
//! on loopback reads the real client's UPDATE and answers with fuzzer bytes
//! (id patched, or decoded and re-signed with the key chained to the
//! request's MAC, or raw with the framing fuzzed too), then closes.
//!
//! Properties, for each caller:
//! * the call returns (the fake primary always closes);
//! * success only when the answer the client read really is a `NOERROR`
//!   response to that UPDATE (id, QR, opcode) with a TSIG that hickory's own
//!   verifier accepts;
//! * any other answer is an error of the kind that names the cause (I/O,
//!   bad answer, the rcode, TSIG);
//! * nothing is half applied: `push_records` counts only the batches whose
//!   answers were good; the learner's push loop keeps every entry queued
//!   (and counts no refresh) when the answer is not good.
//!
//! Input: `[mode][bytes...]`. Mode bits 0–1: the caller (`apply_batch` as
//! ageing and the operator commands use it; `push_records` as `learn
//! --update` pushes, one batch; `push_records` with 1–3 records, or with
//! two batches, the first answered well, when bits 6–7 are both set (a
//! 1001-record batch costs ~0.4 s an input, so it is rare); the live
//! learner's `push_loop` with 1–4 entries by bits 6–7). Bit 2: decode and
//! sign the answer; bit 3: patch the id; bit 4: raw bytes, their own
//! framing; bit 5: the variant of the caller (a removal with prerequisites,
//! or the push loop's refresh).
#![no_main]

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use guard_user::{
    learn::{
        live::{Confirmed, LiveAllow},
        push::{PushConfig, push_loop},
    },
    policy::{AllowSet, Classes, Prefix},
    rpz::{
        edit::{Change, OwnerEdit, Prereq, apply_batch},
        meta::Evidence,
        transfer::SyncError,
        tsig::{TsigAlgo, TsigKey},
        update::{BATCH_RECORDS, push_records},
    },
};
use hickory_proto::{
    dnssec::rdata::{
        DNSSECRData,
        tsig::{TSIG, make_tsig_record, message_tbs},
    },
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, RecordType},
};
use libfuzzer_sys::fuzz_target;
use rpz_guard_fuzz::runtime;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

const ZONE: &str = "rpz.example.com";
/// Far longer than a loopback exchange; far shorter than libFuzzer's hang limit.
const CALL_LIMIT: Duration = Duration::from_secs(10);

fn key() -> TsigKey {
    TsigKey {
        name: "fuzz-key".into(),
        algorithm: TsigAlgo::HmacSha256,
        secret: b"0123456789abcdef0123456789abcdef".to_vec(),
    }
}

/// How the fake primary answers the fuzzed request.
#[derive(Clone, Default)]
struct Script {
    bytes: Vec<u8>,
    sign: bool,
    patch_id: bool,
    raw: bool,
    /// Requests answered well (signed `NOERROR`) before the fuzzed one.
    good_before: usize,
}

/// What the client read as the answer to the fuzzed request: the message
/// bytes, or `None` when the framing cut it short. With the request's id
/// and MAC, for the oracle.
#[derive(Clone)]
struct Exchange {
    id: u16,
    mac: Vec<u8>,
    seen: Option<Vec<u8>>,
}

struct Server {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    last: Arc<Mutex<Option<Exchange>>>,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let rt = runtime();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind the fake primary");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(Mutex::new(Script::default()));
        let last = Arc::new(Mutex::new(None));
        let (s, l) = (script.clone(), last.clone());
        rt.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(conn, s.clone(), l.clone()));
            }
        });
        Server { addr, script, last }
    })
}

async fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

/// The request's id and TSIG MAC (the client always signs).
fn request_mac(req: &[u8]) -> (u16, Vec<u8>) {
    let m = Message::from_vec(req).expect("the client's UPDATE decodes");
    assert_eq!(m.op_code(), OpCode::Update, "the client sent an UPDATE");
    let mac = m
        .signature()
        .iter()
        .find_map(|r| match r.data() {
            RData::DNSSEC(DNSSECRData::TSIG(t)) => Some(t.mac().to_vec()),
            _ => None,
        })
        .expect("the client's UPDATE is signed");
    (m.id(), mac)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `m` signed as the primary signs its answer to the request with `mac`.
fn sign(mut m: Message, mac: &[u8]) -> Option<Vec<u8>> {
    let signer = key().signer().expect("signer");
    m.take_signature();
    let pre = TSIG::new(signer.algorithm().clone(), now(), 300, Vec::new(), m.id(), 0, Vec::new());
    let tbs = message_tbs(Some(mac), &m, &pre, signer.signer_name()).ok()?;
    let sig = signer.sign(&tbs).ok()?;
    m.add_tsig(make_tsig_record(signer.signer_name().clone(), pre.set_mac(sig)));
    m.to_vec().ok()
}

/// A good answer: `NOERROR`, the zone, signed.
fn good_answer(id: u16, mac: &[u8]) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_message_type(MessageType::Response).set_op_code(OpCode::Update);
    let mut q = Query::query(Name::from_ascii("rpz.example.com.").expect("zone"), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    sign(m, mac).expect("sign a good answer")
}

/// The framed bytes to send for the fuzzed answer, and what the client reads.
fn fuzzed_answer(s: &Script, id: u16, mac: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut msg = s.bytes.clone();
    if s.sign
        && let Ok(mut m) = Message::from_vec(&msg)
    {
        if s.patch_id {
            m.set_id(id);
        }
        if let Some(b) = sign(m, mac) {
            msg = b;
        }
    } else if s.raw {
        if s.patch_id && msg.len() >= 4 {
            msg[2..4].copy_from_slice(&id.to_be_bytes());
        }
        let seen = match msg.as_slice() {
            [hi, lo, rest @ ..] => {
                let n = usize::from(u16::from_be_bytes([*hi, *lo]));
                rest.get(..n).map(<[u8]>::to_vec)
            }
            _ => None,
        };
        return (msg, seen);
    } else if s.patch_id && msg.len() >= 2 {
        msg[..2].copy_from_slice(&id.to_be_bytes());
    }
    msg.truncate(usize::from(u16::MAX));
    let mut framed = u16::try_from(msg.len()).expect("truncated").to_be_bytes().to_vec();
    framed.extend_from_slice(&msg);
    (framed, Some(msg))
}

async fn serve(mut conn: TcpStream, script: Arc<Mutex<Script>>, last: Arc<Mutex<Option<Exchange>>>) {
    let s = script.lock().expect("script lock").clone();
    let mut n = 0;
    while let Some(req) = read_request(&mut conn).await {
        let (id, mac) = request_mac(&req);
        let out = if n < s.good_before {
            let a = good_answer(id, &mac);
            let mut framed = u16::try_from(a.len()).expect("small").to_be_bytes().to_vec();
            framed.extend_from_slice(&a);
            framed
        } else {
            let (framed, seen) = fuzzed_answer(&s, id, &mac);
            *last.lock().expect("last lock") = Some(Exchange { id, mac, seen });
            framed
        };
        if conn.write_all(&out).await.is_err() || n >= s.good_before {
            break;
        }
        n += 1;
    }
    let _ = conn.shutdown().await;
}

/// The oracle: is `seen` a signed `NOERROR` answer to the request?
/// `Err` says which check fails first, in the client's order.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Good,
    Io,
    /// A bad answer; the error says this.
    Bad(&'static str),
    Rejected(u16),
    Tsig,
}

fn expect(x: &Exchange) -> Expect {
    let Some(b) = &x.seen else { return Expect::Io };
    let Ok(m) = Message::from_vec(b) else { return Expect::Bad("undecodable") };
    if m.id() != x.id {
        return Expect::Bad("does not match");
    }
    if m.message_type() != MessageType::Response {
        return Expect::Bad("not a response");
    }
    if m.op_code() != OpCode::Update {
        return Expect::Bad("opcode");
    }
    if m.response_code() != ResponseCode::NoError {
        return Expect::Rejected(u16::from(m.response_code()));
    }
    let signer = key().signer().expect("signer");
    match signer.verify_message_byte(Some(&x.mac), b, true) {
        Ok((_, window, _)) if window.contains(&now()) || window.end == now() => Expect::Good,
        _ => Expect::Tsig,
    }
}

fn rcode_name(rcode: u16) -> String {
    const NAMES: [&str; 11] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET",
        "NOTAUTH", "NOTZONE",
    ];
    match rcode {
        16 => "BADVERS".into(),
        n => NAMES.get(usize::from(n)).map_or_else(|| format!("RCODE{n}"), |s| (*s).to_owned()),
    }
}

/// The error names the cause the oracle found.
fn check_error(e: &SyncError, want: &Expect) {
    let text = e.to_string();
    let ok = match (e, want) {
        (SyncError::Io { .. }, Expect::Io) => true,
        (SyncError::BadResponse { why, .. }, Expect::Bad(cause)) => why.contains(cause),
        (SyncError::Rejected { answer, .. }, Expect::Rejected(rc)) => answer.starts_with(&rcode_name(*rc)),
        (SyncError::Tsig { .. }, Expect::Tsig) => true,
        _ => false,
    };
    assert!(ok, "the oracle says {want:?}, the client said: {text}");
    assert!(text.contains("UPDATE") && text.contains(ZONE), "error without context: {text}");
}

fn take_last() -> Exchange {
    server().last.lock().expect("last lock").take().expect("the fuzzed answer was sent")
}

fn edits(removal: bool) -> Vec<OwnerEdit> {
    let prefix: Prefix = "198.51.100.7".parse().expect("prefix");
    let txt: Vec<Vec<u8>> = vec![b"rpz-guard=1".to_vec(), b"src=learned".to_vec()];
    let e = if removal {
        // What ageing sends: guarded by the TXT it read.
        OwnerEdit {
            prefix,
            prereqs: vec![Prereq::TxtIs(vec![txt])],
            changes: vec![Change::DeleteRrset(RecordType::A), Change::DeleteRrset(RecordType::TXT)],
        }
    } else {
        // What `allow` sends: no deny at the owner.
        OwnerEdit {
            prefix,
            prereqs: vec![Prereq::NoRrset(RecordType::CNAME)],
            changes: vec![Change::AddClasses(Classes::SMTP), Change::AddTxt(txt)],
        }
    };
    vec![e]
}

fn fuzz_apply(removal: bool) {
    let s = server();
    let r = runtime()
        .block_on(async {
            tokio::time::timeout(CALL_LIMIT, apply_batch(s.addr, ZONE, &key(), &edits(removal))).await
        })
        .expect("apply_batch returns once the primary closed");
    let want = expect(&take_last());
    match r {
        Ok(()) => {
            assert_eq!(want, Expect::Good, "success on an answer that is not a signed NOERROR to the UPDATE")
        }
        Err(e) => check_error(&e, &want),
    }
}

fn records(n: usize) -> Vec<(Prefix, Classes)> {
    (0..n)
        .map(|i| {
            let i = u32::try_from(i).expect("small");
            (Prefix::host(IpAddr::V4((0xc633_6400 + i).into())), Classes::SMTP)
        })
        .collect()
}

fn fuzz_push(n: usize) {
    let s = server();
    let recs = records(n);
    let r = runtime()
        .block_on(async { tokio::time::timeout(CALL_LIMIT, push_records(s.addr, ZONE, &key(), &recs)).await })
        .expect("push_records returns once the primary closed");
    let want = expect(&take_last());
    let good_before = s.script.lock().expect("script lock").good_before;
    match r {
        Ok(rep) => {
            assert_eq!(want, Expect::Good, "success on an answer that is not a signed NOERROR to the UPDATE");
            assert_eq!((rep.added, rep.batches), (n, good_before + 1));
        }
        Err(e) => {
            let c = e.committed();
            assert_eq!(c.batches, good_before, "committed batches are the well-answered ones");
            assert_eq!(c.added, good_before * BATCH_RECORDS, "committed records are those of good batches");
            let guard_user::rpz::update::UpdateError::Sync { source, .. } = &e else { unreachable!() };
            check_error(source, &want);
        }
    }
}

/// The learner's push loop: one UPDATE (new entries, or the refresh of
/// confirmed ones), answered with the fuzzed bytes.
fn fuzz_push_loop(refresh: bool, entries: usize) {
    let s = server();
    let live = Arc::new(LiveAllow::new(64).expect("live"));
    let mut zone = AllowSet::new();
    let ips: Vec<IpAddr> = records(entries).into_iter().map(|(p, _)| p.addr()).collect();
    for ip in &ips {
        if refresh {
            // In the zone, without lifetime state: the first confirmation stamps it.
            zone.add(Prefix::host(*ip), Classes::SMTP);
            let evidence = Evidence {
                server: "192.0.2.53".parse().expect("ip"),
                qname: "mx.example.".into(),
                qtype: "MX".into(),
            };
            live.confirm(*ip, Confirmed { classes: Classes::SMTP, evidence, ttl: 300, at: now() });
        } else {
            live.insert(*ip, Classes::SMTP, 1);
        }
    }
    let (_zone_tx, zone_rx) = tokio::sync::watch::channel(Arc::new(zone));
    let cfg = PushConfig {
        target: Some((s.addr, ZONE.to_owned(), key())),
        interval: Duration::from_millis(1),
        batch: 80,
        timeout: Duration::from_secs(5),
        journal: None,
        refresh_secs: refresh.then_some(60),
    };
    let cancel = CancellationToken::new();
    let st = runtime().block_on(async {
        let task = tokio::spawn(push_loop(live.clone(), cfg, zone_rx, cancel.clone()));
        let start = Instant::now();
        let st = loop {
            let st = live.stats();
            if st.push_errors > 0 || st.pushed > 0 || st.refreshed > 0 {
                break st;
            }
            assert!(start.elapsed() < CALL_LIMIT, "the push loop never finished its UPDATE");
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        cancel.cancel();
        task.await.expect("push loop");
        st
    });
    let want = expect(&take_last());
    let good = want == Expect::Good;
    if refresh {
        assert_eq!(st.refreshed, if good { entries as u64 } else { 0 }, "{want:?}");
    } else {
        assert_eq!(st.pushed, if good { entries as u64 } else { 0 }, "{want:?}");
        assert_eq!(st.queued, if good { 0 } else { entries }, "entries stay queued on {want:?}");
        if !good {
            assert_eq!(live.next_batch(80).len(), entries, "entries stay queued on {want:?}");
        }
    }
    assert_eq!(st.push_errors > 0, !good, "{want:?}: {:?}", st.last_push_error);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let s = server();
    let (caller, count) = (mode & 3, usize::from(mode >> 6));
    let two_batches = caller == 2 && count == 3;
    *s.script.lock().expect("script lock") = Script {
        bytes: rest.to_vec(),
        sign: mode & 4 != 0,
        patch_id: mode & 8 != 0,
        raw: mode & 16 != 0,
        good_before: usize::from(two_batches),
    };
    *s.last.lock().expect("last lock") = None;
    match caller {
        0 => fuzz_apply(mode & 32 != 0),
        1 => fuzz_push(1),
        2 if two_batches => fuzz_push(BATCH_RECORDS + 1),
        2 => fuzz_push(1 + count),
        _ => fuzz_push_loop(mode & 32 != 0, 1 + count),
    }
});
