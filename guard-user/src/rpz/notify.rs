//! A NOTIFY listener (RFC 1996) so a secondary learns of zone changes at once.
//!
//! A NOTIFY for our zone is answered (same id, QR set, opcode NOTIFY) and
//! becomes a [`NotifyEvent`]; the caller then runs IXFR against its
//! configured primary. The event is only a hint: its content is never
//! trusted, so a forged NOTIFY costs at most one extra IXFR. NOTIFYs for
//! other zones are answered REFUSED and counted; anything else is counted
//! and dropped.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, RecordType},
};
use tokio::{net::UdpSocket, sync::mpsc, task::JoinHandle};

use super::wire;

/// One NOTIFY for our zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyEvent {
    /// Who sent it.
    pub from: SocketAddr,
    /// The serial from the SOA in the answer section, when present.
    pub serial: Option<u32>,
}

/// Counters of the listener.
#[derive(Debug, Default)]
pub struct NotifyStats {
    /// NOTIFYs for our zone (answered and passed on).
    pub accepted: AtomicU64,
    /// NOTIFYs for other zones (answered REFUSED).
    pub other_zone: AtomicU64,
    /// Datagrams that are not NOTIFY queries, or undecodable.
    pub dropped: AtomicU64,
    /// Events lost because the receiver was full (an IXFR covers them anyway).
    pub coalesced: AtomicU64,
}

/// A running listener; stops when dropped.
#[derive(Debug)]
pub struct NotifyListener {
    /// Events for our zone.
    pub events: mpsc::Receiver<NotifyEvent>,
    /// Counters.
    pub stats: Arc<NotifyStats>,
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl NotifyListener {
    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener that could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The UDP socket cannot be bound.
    #[error("NOTIFY listener for zone {zone}: cannot bind {bind}: {source}")]
    Bind {
        /// The address.
        bind: SocketAddr,
        /// The zone.
        zone: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The zone name is not a DNS name.
    #[error("NOTIFY listener: {why}")]
    Zone {
        /// What is wrong.
        why: String,
    },
}

/// Starts answering NOTIFY for `zone` on UDP `bind`.
pub async fn listen_notify(bind: SocketAddr, zone: &str) -> Result<NotifyListener, NotifyError> {
    let zone_name = wire::zone_name(zone).map_err(|why| NotifyError::Zone { why })?;
    let socket = UdpSocket::bind(bind).await.map_err(|source| NotifyError::Bind {
        bind,
        zone: zone.to_owned(),
        source,
    })?;
    let local =
        socket.local_addr().map_err(|source| NotifyError::Bind { bind, zone: zone.to_owned(), source })?;
    // Small queue: a burst of NOTIFYs needs one IXFR, not many.
    let (tx, events) = mpsc::channel(16);
    let stats = Arc::new(NotifyStats::default());
    let task = tokio::spawn(serve(socket, zone_name, tx, Arc::clone(&stats)));
    Ok(NotifyListener { events, stats, local, task })
}

async fn serve(socket: UdpSocket, zone: Name, tx: mpsc::Sender<NotifyEvent>, stats: Arc<NotifyStats>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY socket receive failed");
                // Do not spin if the error persists.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some((reply, event)) = handle(&buf[..n], from, &zone) else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Err(e) = socket.send_to(&reply, from).await {
            tracing::warn!(%from, error = %e, "cannot answer NOTIFY");
        }
        match event {
            Some(ev) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, serial = ?ev.serial, "NOTIFY");
                match tx.try_send(ev) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            None => {
                stats.other_zone.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The reply to a datagram and the event it carries; `None` = drop it.
fn handle(datagram: &[u8], from: SocketAddr, zone: &Name) -> Option<(Vec<u8>, Option<NotifyEvent>)> {
    let msg = Message::from_vec(datagram).ok()?;
    if msg.message_type() != MessageType::Query || msg.op_code() != OpCode::Notify {
        return None;
    }
    let q = msg.queries().first()?;
    let ours = msg.queries().len() == 1 && q.query_type() == RecordType::SOA && q.name() == zone;
    let mut reply = Message::new();
    reply
        .set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Notify)
        .set_authoritative(ours)
        .set_response_code(if ours { ResponseCode::NoError } else { ResponseCode::Refused });
    reply.add_query(q.clone());
    let bytes = reply.to_vec().ok()?;
    let event = ours.then(|| NotifyEvent {
        from,
        serial: msg.answers().iter().find_map(|r| match r.data() {
            RData::SOA(s) if r.name() == zone => Some(s.serial()),
            _ => None,
        }),
    });
    Some((bytes, event))
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::Query,
        rr::{Record, rdata::SOA},
    };

    use super::*;

    fn notify(zone: &str, serial: Option<u32>) -> Vec<u8> {
        let n = Name::from_ascii(zone).expect("name");
        let mut m = Message::new();
        m.set_id(4242).set_op_code(OpCode::Notify).set_authoritative(true);
        m.add_query(Query::query(n.clone(), RecordType::SOA));
        if let Some(s) = serial {
            m.add_answer(Record::from_rdata(
                n.clone(),
                60,
                RData::SOA(SOA::new(n.clone(), n, s, 1, 1, 1, 1)),
            ));
        }
        m.to_vec().expect("encode")
    }

    #[test]
    fn answers_our_zone_and_refuses_others() {
        let zone = Name::from_ascii("rpz.example.com.").expect("zone");
        let from: SocketAddr = "127.0.0.1:5353".parse().expect("addr");
        let (reply, ev) = handle(&notify("RPZ.example.com.", Some(9)), from, &zone).expect("handled");
        assert_eq!(ev, Some(NotifyEvent { from, serial: Some(9) }));
        let r = Message::from_vec(&reply).expect("reply");
        assert_eq!((r.id(), r.message_type(), r.op_code()), (4242, MessageType::Response, OpCode::Notify));
        assert_eq!(r.response_code(), ResponseCode::NoError);
        let (reply, ev) = handle(&notify("other.test.", None), from, &zone).expect("handled");
        assert_eq!(ev, None);
        assert_eq!(Message::from_vec(&reply).expect("reply").response_code(), ResponseCode::Refused);
        let (_, ev) = handle(&notify("rpz.example.com.", None), from, &zone).expect("handled");
        assert_eq!(ev.and_then(|e| e.serial), None);
        assert!(handle(b"\x00\x01garbage", from, &zone).is_none());
        for seed in 0..2000 {
            let mut d = notify("rpz.example.com.", Some(1));
            let j = crate::rpz::tests::junk(seed, d.len());
            // Flip some bytes of a valid NOTIFY, and truncate.
            for (i, b) in j.iter().enumerate().filter(|(i, _)| i % 7 == (seed as usize) % 7) {
                d[i] ^= b;
            }
            d.truncate(d.len() - (seed as usize % d.len()));
            let _ = handle(&d, from, &zone);
        }
    }
}
