//! The send side of one switch connection: the bounded queue toward the
//! switch and the writer task that drains it.

use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use tokio::{
    io::AsyncWriteExt,
    net::tcp::OwnedWriteHalf,
    sync::{Semaphore, mpsc},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::SessionEnd;
use crate::openflow::{
    ControllerConfig, ControllerShared, bump,
    codec::{Body, Message, flow_cmd},
};

pub(super) async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(m) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&m);
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(m) => batch.extend_from_slice(&m),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&batch).await {
            debug!(error = %e, "write to switch failed");
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// State shared by a session and its decision tasks.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) cfg: Arc<ControllerConfig>,
    pub(super) shared: ControllerShared,
    pub(super) tx: mpsc::Sender<Vec<u8>>,
    pub(super) xid: AtomicU32,
    pub(super) dpid: AtomicU64,
    pub(super) decisions: Arc<Semaphore>,
    pub(super) stop: CancellationToken,
    pub(super) packet_ins: AtomicU64,
}

impl Conn {
    pub(super) fn next_xid(&self) -> u32 {
        self.xid.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a message, waiting while the queue is full (control traffic).
    pub(super) async fn send(&self, body: Body) -> Result<(), SessionEnd> {
        self.count(&body);
        let m = Message::new(self.next_xid(), body).encode();
        self.tx.send_timeout(m, self.cfg.dead_peer()).await.map_err(|_| SessionEnd::Writer)
    }

    /// Queues a reply to `xid` without waiting; false when shed.
    pub(super) fn try_send_reply(&self, xid: u32, body: Body) -> bool {
        self.count(&body);
        self.tx.try_send(Message::new(xid, body).encode()).is_ok()
    }

    /// Queues a packet-in answer. A full queue pushes back on the reader
    /// of this switch (we stop reading what we cannot answer); a switch that
    /// does not drain it within the dead-peer time loses the answer.
    pub(super) async fn push(&self, body: Body) -> bool {
        self.count(&body);
        let m = Message::new(self.next_xid(), body).encode();
        let ok = self.tx.send_timeout(m, self.cfg.dead_peer()).await.is_ok();
        if !ok {
            bump(&self.shared.board().packet_ins_dropped);
        }
        ok
    }

    pub(super) fn count(&self, body: &Body) {
        let b = self.shared.board();
        match body {
            Body::FlowMod(f) if f.command == flow_cmd::ADD => bump(&b.flows_installed),
            Body::FlowMod(_) => bump(&b.flows_deleted),
            Body::PacketOut(_) => bump(&b.packet_outs),
            _ => {}
        }
    }
}
