//! Live learning in a switch session: the learning flows' packet-ins go to
//! [`crate::openflow::Learning`]; the entries they teach become proactive
//! allow flows (the allow set's own flows, [`flows::allow_flows`]), and a
//! held answer is released only behind them and a barrier (module docs of
//! [`crate::openflow::learn`]).

use std::net::IpAddr;

use guard_common::Stat;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, warn};

use super::{
    SessionEnd,
    session::{Pending, Session},
};
use crate::{
    frame,
    learn::live::monotonic_ns,
    openflow::{
        bump,
        codec::{
            Body, MeterStats, MultipartRequest, MultipartRequestBody, OFPP_CONTROLLER, PacketIn, flow_cmd,
        },
        flows::{self, COOKIE_LEARN_HELD},
    },
    policy::{Classes, Prefix},
};

/// Barriers remembered for the lag figure (older ones are forgotten).
const MAX_BARRIERS: usize = 1024;

impl Session {
    /// One packet-in of a learning flow: a copy of a resolver's query or of
    /// an answer toward it, or a held answer. A held answer is released
    /// (PACKET_OUT) only after the FLOW_MODs of the entries it taught and a
    /// BARRIER_REQUEST; one shed by the limit is never released (the
    /// resolver asks again).
    pub(super) async fn learn_packet_in(
        &mut self,
        pi: PacketIn,
        pending: &mut Pending,
    ) -> Result<(), SessionEnd> {
        let conn = self.conn.clone();
        let board = conn.shared.board();
        let counters = &conn.shared.counters;
        bump(&board.learn_packet_ins);
        bump(&conn.live.packet_ins);
        let held = pi.cookie == COOKIE_LEARN_HELD;
        let Some(learning) = conn.shared.learning.clone() else {
            // A learning flow left by an earlier run (the resync removes
            // them): pass a held answer on as the base flows would.
            return if held { self.release(pi, pending).await } else { Ok(()) };
        };
        if !self.learn_bucket.take() {
            bump(&board.learn_shed);
            counters.inc(Stat::DnsCopyLost);
            return Ok(());
        }
        counters.inc(Stat::DnsCopied);
        if pi.data.len() < usize::from(pi.total_len) {
            counters.inc(Stat::DnsCopyCut);
        }
        let (ts, taught) = learning.packet(&pi.data);
        let installed = !taught.is_empty();
        for (ip, c) in taught {
            self.install_live(ip, c).await?;
        }
        if held {
            if installed {
                let xid = conn.send_barrier().await?;
                if self.barriers.len() == MAX_BARRIERS {
                    self.barriers.pop_front();
                }
                self.barriers.push_back((xid, ts));
            }
            self.release(pi, pending).await?;
        }
        Ok(())
    }

    /// Sends a held answer where the switch would have without the
    /// learning flow: `NORMAL`, unless it is protected traffic that the
    /// base flows check (then the packet-in decision path decides it, so
    /// nothing passes that the policy drops).
    async fn release(&mut self, pi: PacketIn, pending: &mut Pending) -> Result<(), SessionEnd> {
        let conn = self.conn.clone();
        let cfg = &conn.cfg;
        let checked = frame::parse(&pi.data).ok().and_then(|info| {
            let (_, dport) = info.ports?;
            cfg.protected_port(info.proto, dport)?;
            let exempt = cfg.exempt_sources.iter().any(|p| p.contains(info.src));
            let internal = cfg.internal_networks.iter().any(|p| p.contains(info.dst));
            (!exempt && !internal).then_some(())
        });
        if checked.is_some() {
            return if self.packet_in(pi, pending).await {
                Ok(())
            } else {
                Err(SessionEnd::Stalled(cfg.drain_timeout()))
            };
        }
        let in_port = pi.r#match.in_port().unwrap_or(OFPP_CONTROLLER);
        if conn.forward(in_port, &pi).await {
            bump(&conn.shared.board().learn_released);
            Ok(())
        } else {
            Err(SessionEnd::Stalled(cfg.drain_timeout()))
        }
    }

    /// Installs the proactive allow flows of a live-learned entry so that
    /// `classes` pass toward `ip` (nothing when they already do). Over the
    /// flow budget nothing is installed: the packet-in path allows it from
    /// the live entry.
    pub(super) async fn install_live(&mut self, ip: IpAddr, classes: Classes) -> Result<(), SessionEnd> {
        if self.applied.is_denied(ip) {
            // A deny beats learning (the learner skips such answers; this
            // covers one learned just before the deny arrived).
            return Ok(());
        }
        let p = Prefix::host(ip);
        let zone = self.applied.get(&p);
        let installed = !self.skipped.contains(&p);
        let extra = self.extra.get(&p).copied().unwrap_or(Classes::NONE);
        let have = if installed { zone.union(extra) } else { Classes::NONE };
        if have.contains(classes) {
            return Ok(());
        }
        let want = zone.union(extra).union(classes);
        let cfg = self.conn.cfg.clone();
        let (old, new) = (flows::allow_flow_count(&cfg, have), flows::allow_flow_count(&cfg, want));
        // A drop verdict (a bot asked first) must not outlive the entry.
        self.conn.send(Body::FlowMod(flows::delete_verdicts_in(&p))).await?;
        let total = (self.proactive_flows + new).saturating_sub(old);
        if total > cfg.flow_budget {
            debug!(%ip, "live entry over the flow budget: decided by packet-in");
            return Ok(());
        }
        // ADD over an existing flow of the same match replaces it.
        for fm in flows::allow_flows(&cfg, &p, want, flow_cmd::ADD) {
            self.conn.send(Body::FlowMod(fm)).await?;
        }
        self.proactive_flows = total;
        self.skipped.remove(&p);
        self.extra.insert(p, want.without(zone));
        Ok(())
    }

    /// Installs every entry learned live (after a resync, or when this
    /// session fell behind the broadcast).
    pub(super) async fn install_all_live(&mut self) -> Result<(), SessionEnd> {
        let Some(learning) = self.conn.shared.learning.clone() else { return Ok(()) };
        for (ip, c) in learning.live().entries() {
            self.install_live(ip, c).await?;
        }
        Ok(())
    }

    /// An entry another session (or this one) learned.
    pub(super) async fn learned_elsewhere(
        &mut self,
        r: Result<(IpAddr, Classes), RecvError>,
    ) -> Result<(), SessionEnd> {
        match r {
            Ok((ip, c)) => self.install_live(ip, c).await,
            Err(RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "live-learned entries came faster than this switch took them; installing all"
                );
                self.install_all_live().await
            }
            Err(RecvError::Closed) => Ok(()),
        }
    }

    /// A BARRIER_REPLY: the flows queued before that barrier are in.
    pub(super) fn barrier_reply(&mut self, xid: u32) {
        let Some(i) = self.barriers.iter().position(|(x, _)| *x == xid) else { return };
        let ts = self.barriers[i].1;
        self.barriers.drain(..=i);
        if let Some(l) = &self.conn.shared.learning {
            l.live().flows_confirmed_after(monotonic_ns().saturating_sub(ts));
        }
    }

    /// Asks for the learning meter's statistics (each stats tick): what
    /// its drop band dropped are held answers lost at the switch.
    pub(super) fn poll_learn_meter(&self) {
        let cfg = &self.conn.cfg;
        if cfg.learn_resolvers.is_empty() || !cfg.learn_hold_answers || cfg.learn_packet_in_rate == 0 {
            return;
        }
        let req = MultipartRequest { flags: 0, body: MultipartRequestBody::Meter(flows::LEARN_METER) };
        let _ = self.conn.try_send_reply(self.conn.next_xid(), Body::MultipartRequest(req));
    }

    /// The learning meter's statistics: new drops since the last reply are
    /// counted as lost copies (the meter starts from zero at each resync).
    pub(super) fn learn_meter_stats(&mut self, stats: &[MeterStats]) {
        let Some(m) = stats.iter().find(|m| m.meter_id == flows::LEARN_METER) else { return };
        let dropped: u64 = m.bands.iter().map(|b| b.0).sum();
        // Below the last reading: the meter was re-added (resync) and counts from zero.
        let base = if dropped < self.learn_meter_seen { 0 } else { self.learn_meter_seen };
        let new = dropped - base;
        self.learn_meter_seen = dropped;
        if new > 0 {
            let board = self.conn.shared.board();
            board.learn_meter_drops.fetch_add(new, std::sync::atomic::Ordering::Relaxed);
            self.conn.shared.counters.add(Stat::DnsCopyLost, new);
            warn!(dropped = new, "the learning meter dropped held answers (they were not released)");
        }
    }

    /// The live classes of `ip` for the packet-in path, counted as a raced
    /// miss when there are some (the packet came before the flows).
    pub(super) fn live_classes(&self, ip: IpAddr) -> Classes {
        self.conn.shared.learning.as_ref().map_or(Classes::NONE, |l| l.live().note_miss(ip))
    }
}
