//! The bounded send queue toward one switch, in bytes, and the writer task
//! that drains it.
//!
//! Messages are encoded straight into one buffer (no allocation per
//! message); the writer swaps it out and writes it whole. A producer that
//! finds the queue at its limit waits for room, at most the drain timeout:
//! a switch that does not read for that long is disconnected (it is
//! resynchronised in full when it connects again). The writer too gives up
//! when one write makes no progress for the drain timeout. So a stalled
//! peer costs at most about twice the limit, an idle one nothing, and
//! nothing once it is gone.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::Notify,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::openflow::codec::Message;

/// Room beyond the limit for the message that crosses it (FLOW_MODs are a
/// few hundred bytes; a rare larger PACKET_OUT grows the buffer once).
const SLACK: usize = 4096;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueueError {
    /// The queue stayed full for the drain timeout.
    Stalled,
    /// The writer is gone (write error, stall, or the session ended).
    Closed,
}

struct State {
    buf: Vec<u8>,
    closed: bool,
}

/// Bytes queued toward one switch.
pub(super) struct SendQueue {
    state: Mutex<State>,
    /// Signalled by producers: data to write.
    data: Notify,
    /// Signalled by the writer: room again.
    room: Notify,
    limit: usize,
    drain: Duration,
    /// Bytes queued or being written (for status).
    depth: Arc<AtomicUsize>,
    /// The writer gave up on a switch that did not read.
    stalled: AtomicBool,
    /// Cancelled when the writer stops, so the session ends too.
    pub(super) writer_done: CancellationToken,
}

impl SendQueue {
    pub(super) fn new(limit: usize, drain: Duration, depth: Arc<AtomicUsize>) -> Self {
        SendQueue {
            state: Mutex::new(State { buf: Vec::new(), closed: false }),
            data: Notify::new(),
            room: Notify::new(),
            limit: limit.max(1024),
            drain,
            depth,
            stalled: AtomicBool::new(false),
            writer_done: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `m` if there is room (one message may pass the limit).
    fn try_put(&self, m: &Message) -> Result<bool, QueueError> {
        let mut st = self.lock();
        if st.closed {
            return Err(QueueError::Closed);
        }
        if st.buf.len() >= self.limit {
            return Ok(false);
        }
        if st.buf.capacity() == 0 {
            // Once, exactly: doubling growth would make the bound twice the limit.
            st.buf.reserve_exact(self.limit + SLACK);
        }
        let before = st.buf.len();
        m.encode_into(&mut st.buf);
        self.depth.fetch_add(st.buf.len() - before, Ordering::Relaxed);
        drop(st);
        self.data.notify_one();
        Ok(true)
    }

    /// Queues `m`, waiting at most the drain timeout for room.
    pub(super) async fn send(&self, m: &Message) -> Result<(), QueueError> {
        let deadline = tokio::time::Instant::now() + self.drain;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a wake-up in between is kept.
            room.as_mut().enable();
            if self.try_put(m)? {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(QueueError::Stalled);
            }
        }
    }

    /// Queues `m` only if there is room now; false when shed or closed.
    pub(super) fn try_send(&self, m: &Message) -> bool {
        matches!(self.try_put(m), Ok(true))
    }

    /// Whether the writer stopped because the switch did not read.
    pub(super) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// No more messages; the writer flushes what is queued and stops.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.data.notify_one();
        self.room.notify_waiters();
    }

    /// Writes until closed and drained, a write error, or a stall.
    pub(super) async fn write_loop(&self, mut wr: impl AsyncWrite + Unpin) {
        let mut out = Vec::new();
        loop {
            let data = self.data.notified();
            tokio::pin!(data);
            data.as_mut().enable();
            {
                let mut st = self.lock();
                if !st.buf.is_empty() {
                    std::mem::swap(&mut out, &mut st.buf);
                    // Keep one buffer's capacity for reuse, not a burst's.
                    if st.buf.capacity() > self.limit + SLACK {
                        st.buf = Vec::new();
                    }
                } else if st.closed {
                    break;
                } else {
                    // Idle: hand both buffers back, so a synchronised
                    // switch costs nothing here until the next change.
                    st.buf = Vec::new();
                    out = Vec::new();
                }
            }
            if out.is_empty() {
                data.await;
                continue;
            }
            self.room.notify_waiters();
            if let Err(why) = self.write_all(&mut wr, &out).await {
                debug!(error = %why, "writing to switch stopped");
                break;
            }
            out.clear();
            if out.capacity() > self.limit + SLACK {
                out = Vec::new();
            }
        }
        self.lock().closed = true;
        self.room.notify_waiters();
        self.writer_done.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    }

    /// `write_all` that fails when one write makes no progress for the drain timeout.
    async fn write_all(&self, wr: &mut (impl AsyncWrite + Unpin), mut b: &[u8]) -> Result<(), String> {
        while !b.is_empty() {
            match tokio::time::timeout(self.drain, wr.write(b)).await {
                Err(_) => {
                    self.stalled.store(true, Ordering::Relaxed);
                    return Err(format!("switch did not read for {:?}", self.drain));
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(0)) => return Err("connection closed".into()),
                Ok(Ok(n)) => {
                    self.depth.fetch_sub(n, Ordering::Relaxed);
                    b = &b[n..];
                }
            }
        }
        // TLS keeps records until flushed.
        match tokio::time::timeout(self.drain, wr.flush()).await {
            Err(_) => {
                self.stalled.store(true, Ordering::Relaxed);
                Err(format!("switch did not read for {:?}", self.drain))
            }
            Ok(r) => r.map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::openflow::codec::{Body, message_len};

    fn echo(i: u32) -> Message {
        Message::new(i, Body::EchoRequest(vec![7; 100]))
    }

    #[tokio::test]
    async fn a_reading_switch_gets_every_message_in_order() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let depth = Arc::new(AtomicUsize::new(0));
        let q = Arc::new(SendQueue::new(16 * 1024, Duration::from_secs(5), depth.clone()));
        let w = tokio::spawn({
            let q = q.clone();
            async move { q.write_loop(ours).await }
        });
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.map(|_| all)
        });
        for i in 0..5000 {
            q.send(&echo(i)).await.expect("queued");
        }
        q.close();
        w.await.expect("writer");
        let all = reader.await.expect("reader").expect("read");
        let mut rest = &all[..];
        let mut xids = Vec::new();
        while let Some(n) = message_len(rest) {
            xids.push(Message::decode(&rest[..n]).expect("valid").xid);
            rest = &rest[n..];
        }
        assert_eq!(xids, (0..5000).collect::<Vec<_>>());
        assert_eq!(depth.load(Ordering::Relaxed), 0);
        assert!(!q.stalled());
    }

    #[tokio::test]
    async fn a_stalled_switch_is_bounded_and_given_up() {
        let (ours, _theirs) = tokio::io::duplex(4096);
        let depth = Arc::new(AtomicUsize::new(0));
        let limit = 16 * 1024;
        let q = Arc::new(SendQueue::new(limit, Duration::from_millis(300), depth.clone()));
        let w = tokio::spawn({
            let q = q.clone();
            async move { q.write_loop(ours).await }
        });
        let t = std::time::Instant::now();
        let mut sent = 0u32;
        let err = loop {
            match q.send(&echo(sent)).await {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(
                depth.load(Ordering::Relaxed) <= 2 * limit + 4096 + 200,
                "queued bytes above the bound: {}",
                depth.load(Ordering::Relaxed)
            );
        };
        assert!(matches!(err, QueueError::Stalled | QueueError::Closed), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(3), "gave up after {:?}", t.elapsed());
        assert!(sent > 100, "the queue took {sent} messages first");
        tokio::time::timeout(Duration::from_secs(2), w).await.expect("writer stops").expect("writer");
        assert!(q.writer_done.is_cancelled());
        assert!(q.stalled(), "the writer saw the stall");
        assert!(!q.try_send(&echo(0)), "nothing is queued after the writer stopped");
    }
}
