//! Programming a switch: the full resynchronisation after the handshake
//! and allow-set changes applied as diffs (module docs of `openflow`).

use std::sync::{Arc, atomic::Ordering};

use futures_util::StreamExt;
use tracing::info;

use super::{
    SessionEnd,
    conn::Conn,
    session::{Pending, Session},
};
use crate::{
    openflow::{
        bump,
        codec::{Body, MeterBand, MeterMod, SwitchConfig, flow_cmd, frag, meter_cmd, meter_flags},
        flows,
    },
    policy::{AllowSet, Classes, Prefix},
};

impl Session {
    /// Full resynchronisation: delete all our flows, reinstall everything.
    pub(super) async fn resync(&mut self) -> Result<(), SessionEnd> {
        let cfg = self.conn.cfg.clone();
        let c = &self.conn;
        c.send(Body::SetConfig(SwitchConfig { flags: frag::NX_MATCH, miss_send_len: 0xffff })).await?;
        c.send(Body::FlowMod(flows::delete_all_ours())).await?;
        if cfg.packet_in_rate > 0 {
            c.send(Body::MeterMod(MeterMod {
                command: meter_cmd::DELETE,
                flags: 0,
                meter_id: flows::PACKET_IN_METER,
                bands: Vec::new(),
            }))
            .await?;
            c.send(Body::MeterMod(MeterMod {
                command: meter_cmd::ADD,
                flags: meter_flags::PKTPS | meter_flags::BURST | meter_flags::STATS,
                meter_id: flows::PACKET_IN_METER,
                bands: vec![MeterBand::drop(cfg.packet_in_rate, cfg.packet_in_burst)],
            }))
            .await?;
        }
        for fm in flows::base_flows(&cfg) {
            c.send(Body::FlowMod(fm)).await?;
        }
        install_learning(c).await?;
        // Read before the set: a set that arrives after this still finds
        // the deny-protected flows in place, and `serve` removes them.
        self.not_loaded = !c.shared.is_loaded();
        if self.not_loaded {
            for fm in flows::not_loaded_flows(&cfg) {
                c.send(Body::FlowMod(fm)).await?;
            }
        }
        self.skipped.clear();
        self.extra.clear();
        self.learn_meter_seen = 0;
        self.proactive_flows = 0;
        self.applied = AllowSet::enforced_arc(&c.shared.allow.borrow().clone());
        let set = self.applied.clone();
        for (p, cl) in set.iter() {
            self.try_install(p, *cl).await?;
        }
        self.install_all_live().await?;
        self.conn.send(Body::BarrierRequest).await?;
        bump(&self.conn.shared.board().resyncs);
        self.conn.shared.board().count_resync(self.conn.dpid.load(Ordering::Relaxed));
        self.publish();
        Ok(())
    }

    pub(super) async fn try_install(&mut self, p: &Prefix, classes: Classes) -> Result<(), SessionEnd> {
        let cfg = self.conn.cfg.clone();
        let n = flows::allow_flow_count(&cfg, classes);
        if n == 0 {
            return Ok(());
        }
        // Denies are never skipped: a deny inside an allowed prefix would
        // otherwise be allowed by the prefix's flow.
        if self.proactive_flows + n > cfg.flow_budget && !classes.is_deny() {
            self.skipped.insert(*p);
            return Ok(());
        }
        for fm in flows::allow_flows(&cfg, p, classes, flow_cmd::ADD) {
            self.conn.send(Body::FlowMod(fm)).await?;
        }
        self.proactive_flows += n;
        Ok(())
    }

    /// Deletes the flows of `p` as installed from `self.applied` (the set
    /// before the change being applied).
    pub(super) async fn uninstall(&mut self, p: &Prefix) -> Result<(), SessionEnd> {
        let cfg = self.conn.cfg.clone();
        let old = self.applied.get(p).union(self.extra.remove(p).unwrap_or(Classes::NONE));
        if !self.skipped.remove(p) && flows::allow_flow_count(&cfg, old) > 0 {
            for fm in flows::allow_flows(&cfg, p, old, flow_cmd::DELETE_STRICT) {
                self.conn.send(Body::FlowMod(fm)).await?;
            }
            self.proactive_flows -= flows::allow_flow_count(&cfg, old);
        }
        self.conn.send(Body::FlowMod(flows::delete_verdicts_in(p))).await
    }

    /// Applies an allow-set change as a diff against what this switch has.
    pub(super) async fn apply(
        &mut self,
        new: Arc<AllowSet>,
        pending: &mut Pending,
    ) -> Result<(), SessionEnd> {
        let new = AllowSet::enforced_arc(&new);
        let mut diff = self.applied.diff(&new);
        if diff.is_empty() {
            self.applied = new;
            return Ok(());
        }
        if let Some(l) = &self.conn.shared.learning {
            // Never take away what was learned live and is not confirmed
            // yet, unless a deny covers it now.
            l.live().drop_denied(|ip| new.is_denied(ip), &mut diff);
            l.live().merge_into_diff(&mut diff);
        }
        // Decisions in flight wait until this change is on the switch, and
        // re-decide if they were taken on the older set. Those holding the
        // gate finish first: they are polled here while we wait for it.
        let conn = self.conn.clone();
        let mut generation = {
            let write = conn.set_gate.write();
            tokio::pin!(write);
            loop {
                tokio::select! {
                    g = &mut write => break g,
                    Some(()) = pending.next(), if !pending.is_empty() => {}
                }
            }
        };
        *generation += 1;
        let resolver = &self.conn.shared.resolver;
        let touched = diff.remove.iter().chain(diff.upsert.iter().map(|(p, _)| p));
        if touched.clone().all(Prefix::is_host) {
            resolver.invalidate(touched.map(Prefix::addr));
        } else {
            resolver.clear();
        }
        let had_over = !self.skipped.is_empty();
        for p in &diff.remove {
            self.uninstall(p).await?;
        }
        for (p, c) in &diff.upsert {
            let installed = self.applied.get(p).union(self.extra.get(p).copied().unwrap_or(Classes::NONE));
            if installed == *c && !self.skipped.contains(p) {
                // Only the zone caught up with a live entry: its flows stay.
                continue;
            }
            if installed == Classes::NONE {
                // New entry: earlier drop verdicts inside it must go now.
                self.conn.send(Body::FlowMod(flows::delete_verdicts_in(p))).await?;
            } else {
                self.uninstall(p).await?;
            }
            self.try_install(p, *c).await?;
        }
        self.applied = new;
        for (p, c) in &diff.upsert {
            let beyond = c.without(self.applied.get(p));
            if beyond == Classes::NONE || self.skipped.contains(p) {
                self.extra.remove(p);
            } else {
                self.extra.insert(*p, beyond);
            }
        }
        if had_over && !diff.remove.is_empty() {
            // Room may have opened: retry the skipped entries in set order.
            let retry = std::mem::take(&mut self.skipped);
            let set = self.applied.clone();
            for (p, c) in set.iter() {
                if retry.contains(p) {
                    self.try_install(p, *c).await?;
                }
            }
        }
        self.conn.send(Body::BarrierRequest).await?;
        info!(
            upserts = diff.upsert.len(),
            removals = diff.remove.len(),
            flows = self.proactive_flows,
            "allow set applied"
        );
        self.publish();
        Ok(())
    }

    /// The first allow set is loaded: with its proactive flows in place
    /// (`apply` ran first), the deny-protected flows go.
    pub(super) async fn leave_not_loaded(&mut self, pending: &mut Pending) -> Result<(), SessionEnd> {
        if !self.not_loaded {
            return Ok(());
        }
        let set = self.conn.shared.allow.borrow().clone();
        if !Arc::ptr_eq(&set, &self.applied) {
            self.apply(set, pending).await?;
        }
        self.conn.send(Body::FlowMod(flows::delete_not_loaded())).await?;
        self.conn.send(Body::BarrierRequest).await?;
        self.not_loaded = false;
        info!(entries = self.applied.len(), "first allow set in place; deny-protected flows removed");
        Ok(())
    }

    pub(super) fn publish(&self) {
        let mut sw = self.conn.shared.board().switches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sw.get_mut(&self.conn.id) {
            s.proactive_flows = self.proactive_flows;
            s.over_budget_entries = self.skipped.len();
            s.resyncs = self.conn.shared.board().resyncs_of(s.dpid);
        }
    }
}

/// Live learning's meter and flows (none without learning).
async fn install_learning(c: &Conn) -> Result<(), SessionEnd> {
    let cfg = c.cfg.clone();
    if cfg.learn_resolvers.is_empty() {
        return Ok(());
    }
    if cfg.learn_hold_answers && cfg.learn_packet_in_rate > 0 {
        c.send(Body::MeterMod(MeterMod {
            command: meter_cmd::DELETE,
            flags: 0,
            meter_id: flows::LEARN_METER,
            bands: Vec::new(),
        }))
        .await?;
        let burst = (cfg.learn_packet_in_rate / 10).max(1);
        c.send(Body::MeterMod(MeterMod {
            command: meter_cmd::ADD,
            flags: meter_flags::PKTPS | meter_flags::BURST | meter_flags::STATS,
            meter_id: flows::LEARN_METER,
            bands: vec![MeterBand::drop(cfg.learn_packet_in_rate, burst)],
        }))
        .await?;
    }
    for fm in flows::learn_flows(&cfg) {
        c.send(Body::FlowMod(fm)).await?;
    }
    Ok(())
}
