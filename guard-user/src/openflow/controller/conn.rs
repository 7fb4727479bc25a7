//! The send side of one switch connection, shared by its session and its
//! pending decisions: message ids, the bounded [`SendQueue`], counters.

use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use tokio::sync::Semaphore;

use super::{
    SessionEnd,
    queue::{QueueError, SendQueue},
};
use crate::openflow::{
    ControllerConfig, ControllerShared, SwitchLive, bump,
    codec::{Body, Message, flow_cmd},
};

/// Flow changes between two progress barriers in a bulk change.
pub(super) const PROGRESS_BARRIER_EVERY: u32 = 1024;

/// State shared by a session and its pending decisions.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) cfg: Arc<ControllerConfig>,
    pub(super) shared: ControllerShared,
    pub(super) queue: Arc<SendQueue>,
    pub(super) xid: AtomicU32,
    /// Flow changes queued by [`Conn::send`] since its last barrier.
    pub(super) since_barrier: AtomicU32,
    pub(super) dpid: AtomicU64,
    pub(super) decisions: Arc<Semaphore>,
    /// Counters the status reads live.
    pub(super) live: Arc<SwitchLive>,
    /// The connection is TLS.
    pub(super) tls: bool,
    /// The events' `point` (`openflow:<dpid>`), set once the datapath id
    /// is known, so an event does not format it again.
    pub(super) point: std::sync::OnceLock<String>,
    /// Generation of the allow set this switch has. A set change holds it
    /// for writing while it sends its flow deletions; a decision holds it
    /// for reading while it installs its verdict, so that no verdict taken
    /// on an older set lands after the deletions that revoked it.
    pub(super) set_gate: tokio::sync::RwLock<u64>,
}

impl Conn {
    pub(super) fn next_xid(&self) -> u32 {
        self.xid.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a message, waiting while the queue is full (control
    /// traffic); a switch that does not drain it in time ends the session.
    /// A bulk change (a resync, a large diff) carries a barrier every
    /// [`PROGRESS_BARRIER_EVERY`] flow changes: a switch working through it
    /// answers each one, and so is heard from while it is busy.
    pub(super) async fn send(&self, body: Body) -> Result<(), SessionEnd> {
        self.count(&body);
        let progress = match body {
            Body::FlowMod(_) => {
                self.since_barrier.fetch_add(1, Ordering::Relaxed) + 1 >= PROGRESS_BARRIER_EVERY
            }
            Body::BarrierRequest => {
                self.since_barrier.store(0, Ordering::Relaxed);
                false
            }
            _ => false,
        };
        let m = Message::new(self.next_xid(), body);
        self.queue.send(&m).await.map_err(|e| self.send_error(e))?;
        if progress {
            self.since_barrier.store(0, Ordering::Relaxed);
            let b = Message::new(self.next_xid(), Body::BarrierRequest);
            self.queue.send(&b).await.map_err(|e| self.send_error(e))?;
        }
        Ok(())
    }

    fn send_error(&self, e: QueueError) -> SessionEnd {
        match e {
            QueueError::Closed if !self.queue.stalled() => SessionEnd::Writer,
            _ => SessionEnd::Stalled(self.cfg.drain_timeout()),
        }
    }

    /// Queues a BARRIER_REQUEST (as [`Conn::send`]); returns its xid.
    pub(super) async fn send_barrier(&self) -> Result<u32, SessionEnd> {
        let xid = self.next_xid();
        self.since_barrier.store(0, Ordering::Relaxed);
        self.queue.send(&Message::new(xid, Body::BarrierRequest)).await.map_err(|e| self.send_error(e))?;
        Ok(xid)
    }

    /// Queues a reply to `xid` without waiting; false when shed.
    pub(super) fn try_send_reply(&self, xid: u32, body: Body) -> bool {
        self.count(&body);
        self.queue.try_send(&Message::new(xid, body))
    }

    /// Queues a packet-in answer. A full queue pushes back on the reader
    /// of this switch (we stop reading what we cannot answer); a switch that
    /// does not drain it within the drain timeout loses the answer.
    pub(super) async fn push(&self, body: Body) -> bool {
        self.count(&body);
        let m = Message::new(self.next_xid(), body);
        let ok = self.queue.send(&m).await.is_ok();
        if !ok {
            bump(&self.shared.board().packet_ins_dropped);
        }
        ok
    }

    pub(super) fn count(&self, body: &Body) {
        let b = self.shared.board();
        match body {
            Body::FlowMod(f) if f.command == flow_cmd::ADD => {
                bump(&b.flows_installed);
                bump(&self.live.flow_adds);
            }
            Body::FlowMod(_) => bump(&b.flows_deleted),
            Body::PacketOut(_) => bump(&b.packet_outs),
            _ => {}
        }
    }
}
