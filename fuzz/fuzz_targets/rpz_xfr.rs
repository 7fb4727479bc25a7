//! Zone transfer handling (AXFR, IXFR with its AXFR-style and incremental
//! answers, the SOA serial query) against a fake primary on loopback that
//! answers with fuzzer bytes (message ids patched to match the query):
//! garbage, truncated, reordered, oversized, wrong-serial answers. Never a
//! panic or a hang; an IXFR result is consistent (the diff turns the old
//! set into the new one); and with a TSIG key, unsigned or forged answers
//! never yield a zone.
//!
//! Input: `[op][stream...]`: op selects the operation and whether the
//! answer ids are patched; the stream is sent as is (DNS-over-TCP framing).
#![no_main]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use guard_user::{
    policy::{AllowSet, Classes, Prefix},
    rpz::{
        transfer::{IxfrOutcome, axfr, ixfr, soa_serial},
        tsig::{TsigAlgo, TsigKey},
    },
};
use libfuzzer_sys::fuzz_target;
use rpz_guard_fuzz::{patch_tcp_ids, runtime};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const ZONE: &str = "rpz.example.com";

/// The fake primary: every connection gets the current input's answer.
struct Primary {
    addr: SocketAddr,
    answer: Arc<Mutex<(Vec<u8>, bool)>>,
}

fn primary() -> &'static Primary {
    static P: OnceLock<Primary> = OnceLock::new();
    P.get_or_init(|| {
        let rt = runtime();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind the fake primary");
        let addr = listener.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new((Vec::new(), false)));
        let current = answer.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { continue };
                let (mut stream, patch) = current.lock().expect("answer lock").clone();
                tokio::spawn(async move {
                    // Read the query (length-prefixed) for its id.
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut q).await.is_err() || q.len() < 2 {
                        return;
                    }
                    if patch {
                        patch_tcp_ids(&mut stream, u16::from_be_bytes([q[0], q[1]]));
                    }
                    let _ = s.write_all(&stream).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Primary { addr, answer }
    })
}

fn current() -> AllowSet {
    [
        (Prefix::host("198.51.100.53".parse().expect("ip")), Classes::DNS),
        (Prefix::host("198.51.100.25".parse().expect("ip")), Classes::SMTP),
        ("203.0.113.0/24".parse().expect("prefix"), Classes::SMTP),
    ]
    .into_iter()
    .collect()
}

fn key() -> TsigKey {
    TsigKey { name: "rpz-fuzz".into(), algorithm: TsigAlgo::HmacSha256, secret: vec![7; 32] }
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, stream)) = data.split_first() else { return };
    let p = primary();
    *p.answer.lock().expect("answer lock") = (stream.to_vec(), op & 0x80 == 0);
    let signed = op & 0x40 != 0;
    let key = signed.then(key);
    let key = key.as_ref();
    let base = current();
    let from_serial = 100;
    let run = async {
        match op % 3 {
            0 => {
                let r = axfr(p.addr, ZONE, key).await;
                assert!(!(signed && r.is_ok()), "an unsigned or forged AXFR was accepted with a key");
            }
            1 => {
                let r = ixfr(p.addr, ZONE, key, from_serial, &base).await;
                if signed {
                    assert!(r.is_err(), "an unsigned or forged IXFR was accepted with a key");
                }
                if let Ok(IxfrOutcome::Incremental { set, diff, .. }) = r {
                    let mut replay = base.clone();
                    replay.apply(&diff);
                    assert_eq!(replay, set, "the IXFR diff does not turn the old set into the new one");
                }
            }
            _ => {
                let r = soa_serial(p.addr, ZONE, key).await;
                assert!(!(signed && r.is_ok()), "an unsigned or forged SOA answer was accepted with a key");
            }
        }
    };
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("a transfer against a closed stream must end, not hang");
    });
});
