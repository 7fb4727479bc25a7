//! The OpenFlow 1.3 controller: one tokio task per switch connection (with
//! a tracing span carrying peer and datapath id), a writer task per
//! connection, and one short task per packet-in that needs the RPZ.
//!
//! Connection life: HELLO (version bitmap, 1.3 only) → FEATURES → resync
//! (SET_CONFIG, delete every flow with our cookie tag, meter, base flows,
//! proactive flows, BARRIER) → serve packet-ins, ECHO keepalive, allow-set
//! diffs. A peer that speaks another version, sends a length below the
//! header, garbage, or stays silent past the dead-peer timeout is
//! disconnected; other switches are unaffected.
//!
//! Files: this one accepts connections and runs each one's life;
//! [`session`] reads and frames messages, does the handshake and the main
//! loop; [`program`] programs the switch's flows (resync, allow-set diffs);
//! [`decide`] answers packet-ins (local set, then the RPZ); [`conn`] is the
//! send side shared by the session and its decision tasks.

mod conn;
mod decide;
mod program;
mod session;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use self::{
    conn::{Conn, write_loop},
    decide::TokenBucket,
    session::{Framer, Session},
};
use super::{ControllerConfig, ControllerShared, OpenflowError, bump};
use crate::policy::AllowSet;

/// Messages queued toward one switch before packet-in replies are shed.
const OUT_QUEUE: usize = 4096;
/// Decode errors tolerated on one connection before it is closed.
const MAX_DECODE_ERRORS: u32 = 16;

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
/// `cfg.listen` is ignored.
pub async fn serve_listener(
    listener: TcpListener,
    cfg: ControllerConfig,
    shared: ControllerShared,
    cancel: CancellationToken,
) -> Result<(), OpenflowError> {
    let local = listener.local_addr().ok();
    *shared.board().listen.lock().unwrap_or_else(|e| e.into_inner()) = local;
    info!(listen = ?local, "OpenFlow controller listening");
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.max_switches.max(1)));
    let next_id = AtomicU64::new(1);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    bump(&shared.board().connections);
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        warn!(%peer, max = cfg.max_switches, "too many switches; refusing connection");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("switch", %peer, dpid = tracing::field::Empty);
                    let (cfg, shared, cancel) = (cfg.clone(), shared.clone(), cancel.clone());
                    tasks.spawn(
                        async move {
                            run_connection(id, stream, peer, cfg, shared, cancel).await;
                            drop(permit);
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
    #[error("writer gone or stalled")]
    Writer,
    #[error("shutdown")]
    Shutdown,
}

async fn run_connection(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<ControllerConfig>,
    shared: ControllerShared,
    cancel: CancellationToken,
) {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let writer = tokio::spawn(write_loop(wr, rx).in_current_span());
    let tasks_stop = CancellationToken::new();
    let conn = Arc::new(Conn {
        id,
        cfg: cfg.clone(),
        shared: shared.clone(),
        tx,
        xid: AtomicU32::new(1),
        dpid: AtomicU64::new(0),
        decisions: Arc::new(Semaphore::new(cfg.max_pending_decisions.max(1))),
        stop: tasks_stop.clone(),
        packet_ins: AtomicU64::new(0),
    });
    let mut session = Session {
        conn: conn.clone(),
        rd,
        framer: Framer::default(),
        last_rx: Instant::now(),
        applied: Arc::new(AllowSet::new()),
        installed: HashMap::new(),
        proactive_flows: 0,
        over_budget: 0,
        bucket: TokenBucket::new(cfg.max_packet_ins_per_sec),
        decode_errors: 0,
    };
    let end = session.run(peer, &cancel).await;
    match &end {
        SessionEnd::Shutdown => info!("switch session ended by shutdown"),
        SessionEnd::Protocol(_) => {
            bump(&shared.board().protocol_errors);
            warn!(reason = %end, "switch disconnected");
        }
        _ => info!(reason = %end, "switch disconnected"),
    }
    shared.board().switches.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    // Stop decision tasks, let the writer flush (e.g. a final ERROR), close.
    tasks_stop.cancel();
    drop(session);
    drop(conn);
    if tokio::time::timeout(Duration::from_secs(2), writer).await.is_err() {
        debug!("writer did not finish in time");
    }
}
