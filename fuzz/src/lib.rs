//! Shared pieces of the rpz-guard fuzz targets (`cargo xtask fuzz`).
//!
//! Each target in `fuzz_targets/` drives one decoder or state machine that
//! reads untrusted bytes through the public `guard_user` API, with an oracle
//! where one exists (hickory-proto for DNS, round trips for codecs with an
//! encoder, a model for reassembly, an independent parser for XDP verdicts).
//! A panic anywhere, also inside a tokio task, aborts the run (libFuzzer's
//! panic hook), so "never panics" is checked everywhere.
#![warn(missing_docs)]

use std::sync::OnceLock;

/// The learner tests' DNS comparison helpers (`our_facts`, `hickory_facts`),
/// shared with `guard-user/tests/learn_dns_diff.rs` rather than copied.
#[path = "../../guard-user/tests/learn_common/mod.rs"]
#[allow(missing_docs, unreachable_pub, reason = "test helper module shared with the guard-user tests")]
pub mod learn_common;

/// One multi-threaded tokio runtime for the targets that drive async code
/// (the OpenFlow controller, zone transfers, the NOTIFY listener).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime for the fuzz target")
    })
}

/// A path in `/dev/shm` (or the temp dir) private to this process, for
/// targets that must hand a file to the code under test.
pub fn scratch_file(name: &str) -> std::path::PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("rpz-guard-fuzz-{}-{name}", std::process::id()))
}

/// Link types the learner reads (capture `linktype` values).
pub const LINKTYPES: [u32; 11] = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 147];

/// Splits a fuzz input into capture frames: each is one byte choosing the
/// link type in [`LINKTYPES`], a big-endian u16 length, then that many
/// bytes (cut short at the end of the input). The timestamp advances by
/// 1 ms per frame, plus 40 s when the link byte's top bit is set (so the
/// reassembly and matching timeouts are reached).
pub fn frames(mut data: &[u8]) -> Vec<(u64, u32, &[u8])> {
    let mut out = Vec::new();
    let mut ts = 1_000_000_000u64;
    while let [lt, hi, lo, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        ts += 1_000_000 + if lt & 0x80 != 0 { 40_000_000_000 } else { 0 };
        out.push((ts, LINKTYPES[usize::from(lt & 0x7f) % LINKTYPES.len()], &rest[..len]));
        data = &rest[len..];
    }
    out
}

/// The inverse of [`frames`] for seeds: `(link type index, frame)` pairs.
pub fn encode_frames<'a>(frames: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (lt, f) in frames {
        let len = u16::try_from(f.len()).unwrap_or(u16::MAX);
        out.push(lt);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&f[..usize::from(len)]);
    }
    out
}

/// A loopback source address that changes with every call (127.x.y.z), so
/// targets opening a connection per input never run out of ports while
/// earlier connections sit in TIME_WAIT.
pub fn next_loopback_source() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) % 0x00ff_fff0 + 2;
    let [_, a, b, c] = n.to_be_bytes();
    std::net::SocketAddr::from(([127, a, b, c], 0))
}

/// A TCP stream to `to` from [`next_loopback_source`].
pub async fn connect_loopback(to: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(next_loopback_source())?;
    let s = sock.connect(to).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Rewrites the id of every complete DNS-over-TCP message in `stream`
/// (2-byte length framing, RFC 1035 section 4.2.2) to `id`, so fuzzed
/// answers get past the id check and reach the code behind it.
pub fn patch_tcp_ids(stream: &mut [u8], id: u16) {
    let mut at = 0;
    while let Some(len) = stream.get(at..at + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) {
        if let Some(m) = stream.get_mut(at + 2..at + 2 + len.min(2))
            && m.len() == 2
        {
            m.copy_from_slice(&id.to_be_bytes());
        }
        at += 2 + len;
    }
}
