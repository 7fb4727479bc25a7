//! The OpenFlow 1.3 controller: one tokio task per switch connection (with
//! a tracing span carrying peer and datapath id) that also drives its
//! packet-ins waiting for the RPZ, and a writer task per connection.
//!
//! Connection life: HELLO (version bitmap, 1.3 only) → FEATURES → resync
//! (SET_CONFIG, delete every flow with our cookie tag, meter, base flows,
//! proactive flows, BARRIER) → serve packet-ins, ECHO keepalive, allow-set
//! diffs. A peer that speaks another version, sends a length below the
//! header, garbage, or stays silent past the dead-peer timeout is
//! disconnected; other switches are unaffected.
//!
//! Admission ([`super::admission`]): source prefix and connection caps at
//! accept, then TLS when configured, then the handshake (all within the
//! handshake timeout) and the datapath id; only then the first FLOW_MOD.
//! Cost per peer is bounded by the send queue ([`queue`]): a switch that
//! does not drain it within the drain timeout is disconnected.
//!
//! Files: this one accepts connections and runs each one's life;
//! [`session`] reads and frames messages, does the handshake and the main
//! loop; [`program`] programs the switch's flows (resync, allow-set diffs);
//! [`decide`] answers packet-ins (local set, then the RPZ); [`learn`] feeds
//! the learning flows' packet-ins to live learning and installs what they
//! teach before a held answer is released; [`conn`] is the
//! send side shared by the session and its pending decisions; [`queue`] the
//! bounded byte queue and the writer task.

mod conn;
mod decide;
mod learn;
mod program;
mod queue;
mod session;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use self::{
    conn::Conn,
    decide::TokenBucket,
    queue::SendQueue,
    session::{Framer, Session},
};
use super::{
    ControllerConfig, ControllerShared, OpenflowError, SwitchLive,
    admission::{Admission, Refusal},
    bump, tls,
};
use crate::policy::AllowSet;

/// Decode errors tolerated on one connection before it is closed.
const MAX_DECODE_ERRORS: u32 = 16;

/// The read half of a switch connection (plain TCP or TLS).
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// Listens on `cfg.listen` and serves switches until `cancel` fires.
pub async fn serve(
    cfg: ControllerConfig,
    shared: ControllerShared,
    cancel: CancellationToken,
) -> Result<(), OpenflowError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| OpenflowError::Listen { addr: cfg.listen, source })?;
    serve_listener(listener, cfg, shared, cancel).await
}

/// Serves switches on an already bound listener (tests bind port 0);
/// `cfg.listen` is ignored. Fails at once when the TLS files do not load.
pub async fn serve_listener(
    listener: TcpListener,
    cfg: ControllerConfig,
    shared: ControllerShared,
    cancel: CancellationToken,
) -> Result<(), OpenflowError> {
    let acceptor = cfg.tls.as_ref().map(tls::acceptor).transpose()?;
    let local = listener.local_addr().ok();
    let admission = Arc::new(Admission::new(&cfg));
    shared.board().set_admission(admission.clone(), acceptor.is_some(), local);
    info!(
        listen = ?local,
        tls = acceptor.is_some(),
        allowed_sources = cfg.allowed_sources.len(),
        allowed_dpids = cfg.allowed_dpids.len(),
        "OpenFlow controller listening"
    );
    if acceptor.is_none() && local.is_some_and(|a| !a.ip().is_loopback()) {
        warn!(
            listen = ?local,
            "OpenFlow without TLS on a non-loopback address: anyone who reaches it can act as a switch \
             and read the allow set; set [openflow.tls] (and allowed_dpids / allowed_sources)"
        );
    }
    let cfg = Arc::new(cfg);
    let next_id = AtomicU64::new(1);
    let mut tasks = JoinSet::new();
    let mut trim = tokio::time::interval(Duration::from_secs(2));
    let mut ended_since_trim = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => ended_since_trim = true,
            _ = trim.tick() => {
                if std::mem::take(&mut ended_since_trim) {
                    release_free_memory();
                }
            }
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    bump(&shared.board().connections);
                    let slot = match admission.admit(peer.ip()) {
                        Ok(s) => s,
                        Err(why) => {
                            // Closed before anything is read or sent.
                            admission.refuse(peer, why, None, "at accept");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    cap_send_buffer(&stream);
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("switch", %peer, dpid = tracing::field::Empty);
                    let (cfg, shared, cancel, acceptor) =
                        (cfg.clone(), shared.clone(), cancel.clone(), acceptor.clone());
                    tasks.spawn(
                        async move {
                            run_connection(id, stream, peer, acceptor, cfg, shared, cancel).await;
                            drop(slot);
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    while tasks.join_next().await.is_some() {}
    info!("OpenFlow controller stopped");
    Ok(())
}

/// Kernel send buffer per connection (Linux doubles it). Left alone,
/// Linux grows it up to `tcp_wmem`'s maximum (4 MiB) for a peer that stops
/// reading, so each stalled peer would cost that much kernel memory; 128 KiB
/// still streams a full resync at LAN speed (a 1 ms round trip allows
/// about 250 MB/s).
const SEND_BUFFER: libc::c_int = 128 * 1024;

fn cap_send_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size = SEND_BUFFER;
    // SAFETY: setsockopt on a socket this task owns, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(error = %std::io::Error::last_os_error(), "cannot cap the socket send buffer");
    }
}

/// Hands memory freed by closed connections back to the OS. glibc keeps
/// freed heap in its per-thread arenas; without this the daemon's RSS
/// stays at its peak after many peers came and went.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("peer closed the connection")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no message for {0:?}: dead peer")]
    Dead(Duration),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("datapath id {0:016x} is not in allowed_dpids")]
    DpidNotAllowed(u64),
    #[error("switch did not drain its send queue within {0:?}")]
    Stalled(Duration),
    #[error("writer gone")]
    Writer,
    #[error("shutdown")]
    Shutdown,
}

/// Splits a connection, after the TLS handshake when configured.
async fn open_stream(
    stream: TcpStream,
    acceptor: Option<TlsAcceptor>,
) -> Result<(Reader, Box<dyn AsyncWrite + Send + Unpin>, bool), SessionEnd> {
    match acceptor {
        None => {
            let (rd, wr) = stream.into_split();
            Ok((Box::new(rd), Box::new(wr), false))
        }
        Some(acc) => {
            let tls = acc.accept(stream).await.map_err(|e| SessionEnd::Tls(e.to_string()))?;
            let (rd, wr) = tokio::io::split(tls);
            Ok((Box::new(rd), Box::new(wr), true))
        }
    }
}

async fn run_connection(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    cfg: Arc<ControllerConfig>,
    shared: ControllerShared,
    cancel: CancellationToken,
) {
    let admission = shared.board().admission();
    let hs = cfg.handshake_timeout();
    let started = tokio::time::Instant::now();
    // TLS and the OpenFlow handshake share one deadline.
    let opened = tokio::select! {
        () = cancel.cancelled() => return,
        r = tokio::time::timeout(hs, open_stream(stream, acceptor)) => r,
    };
    let (rd, wr, tls) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            if let Some(a) = &admission {
                a.refuse(peer, Refusal::TlsFailed, None, &e.to_string());
            }
            return;
        }
        Err(_) => {
            if let Some(a) = &admission {
                a.refuse(peer, Refusal::HandshakeTimeout, None, "TLS handshake");
            }
            return;
        }
    };
    let live = Arc::new(SwitchLive::default());
    let queue = Arc::new(SendQueue::new(cfg.send_queue_bytes, cfg.drain_timeout(), live.queue_depth.clone()));
    let mut writer = {
        let q = queue.clone();
        tokio::spawn(async move { q.write_loop(wr).await }.in_current_span())
    };
    let conn = Arc::new(Conn {
        id,
        cfg: cfg.clone(),
        shared: shared.clone(),
        queue: queue.clone(),
        xid: AtomicU32::new(1),
        since_barrier: AtomicU32::new(0),
        dpid: AtomicU64::new(0),
        decisions: Arc::new(Semaphore::new(cfg.max_pending_decisions.max(1))),
        live: live.clone(),
        tls,
        set_gate: tokio::sync::RwLock::new(0),
        point: std::sync::OnceLock::new(),
    });
    let mut session = Session {
        conn: conn.clone(),
        rd,
        framer: Framer::default(),
        heard: Instant::now(),
        last_rx: Instant::now(),
        applied: Arc::new(AllowSet::new()),
        skipped: HashSet::new(),
        proactive_flows: 0,
        bucket: TokenBucket::new(cfg.max_packet_ins_per_sec),
        decode_errors: 0,
        extra: std::collections::HashMap::new(),
        learn_bucket: TokenBucket::new(cfg.max_packet_ins_per_sec),
        learned: shared.learning.as_ref().map(|l| l.subscribe()),
        barriers: std::collections::VecDeque::new(),
        learn_meter_seen: 0,
        hit_poll: session::HitPoll::default(),
        not_loaded: false,
        not_loaded_events: decide::SourceBudget::new(guard_common::DEFAULT_EVENTS_PER_SOURCE),
    };
    let end = session.run(peer, hs.saturating_sub(started.elapsed()), &cancel).await;
    match &end {
        SessionEnd::Shutdown => info!("switch session ended by shutdown"),
        SessionEnd::Protocol(_) => {
            bump(&shared.board().protocol_errors);
            warn!(reason = %end, "switch disconnected");
        }
        SessionEnd::HandshakeTimeout(_) | SessionEnd::DpidNotAllowed(_) => {
            let (why, dpid) = match end {
                SessionEnd::DpidNotAllowed(d) => (Refusal::DpidNotAllowed, Some(d)),
                _ => (Refusal::HandshakeTimeout, None),
            };
            if let Some(a) = &admission {
                a.refuse(peer, why, dpid, &end.to_string());
            }
        }
        SessionEnd::Stalled(_) => {
            bump(&shared.board().stalled);
            warn!(reason = %end, "switch disconnected; it is resynchronised when it connects again");
        }
        _ => info!(reason = %end, "switch disconnected"),
    }
    shared.board().remove_switch(id);
    shared.hits.forget(id);
    // Let the writer flush (e.g. a final ERROR), close; the session's
    // pending decisions ended with its loop.
    queue.close();
    drop(session);
    drop(conn);
    if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
        debug!("writer did not finish in time");
        writer.abort();
    }
}
