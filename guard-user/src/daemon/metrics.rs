//! Prometheus text for `/metrics` and the status socket's `metrics` request.

use std::sync::Arc;

use tokio::{io::AsyncWriteExt, net::TcpListener};
use tokio_util::sync::CancellationToken;

use super::{
    Shared,
    status::{accept_failed, read_request},
};
use crate::{
    events::now_ms,
    metrics::{Gauge, render_histogram, render_prometheus},
};

impl Shared {
    /// Prometheus text: names and types by the Prometheus conventions
    /// (`_total` counters, units in names, labels instead of one metric per
    /// class or result).
    pub fn metrics(&self) -> String {
        let r = self.report();
        let sync = &r.sync;
        let stats = self.stats();
        let secs = |ms: Option<u64>| ms.map_or(0.0, |ms| ms as f64 / 1000.0);
        let flag = |b: bool| f64::from(u8::from(b));
        let mut g = vec![
            gauge("entries", "Allow entries by class.", Some(("class", "any")), r.entries.0 as f64),
            gauge("entries", "Allow entries by class.", Some(("class", "dns")), r.entries.1 as f64),
            gauge("entries", "Allow entries by class.", Some(("class", "smtp")), r.entries.2 as f64),
            gauge(
                "zone_serial",
                "Serial of the policy zone in force.",
                None,
                f64::from(sync.serial.unwrap_or(0)),
            ),
            gauge(
                "sync_healthy",
                "1 when the last sync succeeded and the maps hold the set.",
                None,
                flag(sync.last_error.is_none() && sync.mirror_error.is_none()),
            ),
            gauge(
                "deny_protected",
                "1 while no allow set is in force (start-up, primary down, no snapshot).",
                None,
                f64::from(u8::from(sync.deny_protected)),
            ),
            gauge(
                "waiting_for_primary",
                "1 from start until the primary first answers (the snapshot, pinned set or deny-protected mode is in force meanwhile).",
                None,
                flag(sync.waiting_since_ms.is_some()),
            ),
            gauge(
                "sync_failing_seconds",
                "Seconds the source has been failing (0 when healthy); the last set stays in force.",
                None,
                sync.failing_since_ms.map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0),
            ),
            gauge(
                "zone_expired",
                "1 while the source fails and the set in force is past the zone's SOA expire (it stays in force).",
                None,
                flag(sync.expired_since(now_ms()).is_some()),
            ),
            gauge(
                "snapshot_serial",
                "Serial of the last zone snapshot written (0: none).",
                None,
                f64::from(sync.snapshot_serial.unwrap_or(0)),
            ),
            gauge(
                "source_up",
                "1 while the allow-set source (the RPZ primary) answers.",
                None,
                flag(sync.last_error.is_none()),
            ),
            gauge(
                "map_update_failing",
                "1 while writing the allow set into the enforcement maps fails (retried).",
                None,
                flag(sync.mirror_error.is_some()),
            ),
            gauge(
                "running_on_pinned_set",
                "1 while enforcing the pinned set because the source failed at start.",
                None,
                flag(sync.stale_start),
            ),
            gauge(
                "last_sync_timestamp_seconds",
                "When the last transfer or SOA check succeeded, seconds since the epoch (0: never).",
                None,
                secs(sync.last_sync_ms),
            ),
            gauge(
                "last_change_timestamp_seconds",
                "When the allow set last changed, seconds since the epoch (0: never).",
                None,
                secs(sync.last_change_ms),
            ),
            gauge("sync_full_loads_total", "Full transfers or file reads.", None, sync.full_loads as f64),
            gauge(
                "sync_incremental_total",
                "Incremental transfers that changed the set.",
                None,
                sync.incremental as f64,
            ),
            gauge("sync_notifies_total", "NOTIFY messages received.", None, sync.notifies as f64),
            gauge("miss_lookups_total", "RPZ questions asked by the miss path.", None, r.miss.lookups as f64),
            gauge(
                "miss_coalesced_total",
                "Misses that waited on another question.",
                None,
                r.miss.coalesced as f64,
            ),
            gauge("miss_errors_total", "Failed RPZ questions (denied).", None, r.miss.errors as f64),
            gauge(
                "miss_cache_entries",
                "Verdicts in the miss path's userspace cache.",
                None,
                r.miss.cached as f64,
            ),
            gauge("events_total", "Detection events recorded.", None, r.events_total as f64),
            gauge(
                "events_write_errors_total",
                "Detection events not written (output failed or the writer fell behind).",
                None,
                r.events_write_errors as f64,
            ),
        ];
        for (result, n) in
            [("applied", r.reloads.applied), ("refused", r.reloads.refused), ("failed", r.reloads.failed)]
        {
            g.push(Gauge {
                name: "reloads_total",
                help: "SIGHUP reloads by result.",
                label: Some(("result", result.to_owned())),
                value: n as f64,
            });
        }
        if let Some(a) = &r.ageing {
            let n = |v: u64| v as f64;
            g.extend([
                gauge("ageing_passes_total", "Ageing: passes run.", None, n(a.passes)),
                gauge(
                    "ageing_due",
                    "Ageing: learned entries past their max age (last pass).",
                    None,
                    a.due as f64,
                ),
                gauge(
                    "ageing_kept_used",
                    "Ageing: due entries kept because traffic used them within idle (last pass).",
                    None,
                    a.kept_used as f64,
                ),
                gauge("ageing_removed_total", "Ageing: entries removed from the RPZ.", None, n(a.removed)),
                gauge(
                    "ageing_stamped_total",
                    "Ageing: entries without lifetime state given seen = now.",
                    None,
                    n(a.stamped),
                ),
                gauge(
                    "ageing_conflicts_total",
                    "Ageing: removals refused because the entry was confirmed meanwhile.",
                    None,
                    n(a.conflicts),
                ),
                gauge("ageing_updates_total", "Ageing: UPDATEs sent.", None, n(a.updates)),
                gauge(
                    "ageing_update_errors_total",
                    "Ageing: UPDATEs that failed (nothing removed).",
                    None,
                    n(a.update_errors),
                ),
                gauge("ageing_dry_run", "Ageing: 1 in dry-run mode.", None, f64::from(u8::from(a.dry_run))),
            ]);
        }
        if let Some(l) = &r.live {
            let n = |v: u64| v as f64;
            g.extend([
                gauge(
                    "live_refreshed_total",
                    "Live learning: entries whose seen time was refreshed in the RPZ.",
                    None,
                    n(l.refreshed),
                ),
                gauge("live_responses_total", "Live learning: DNS responses seen.", None, n(l.responses)),
                gauge(
                    "live_matched_total",
                    "Live learning: responses matched to a resolver's query.",
                    None,
                    n(l.matched),
                ),
                gauge(
                    "live_unmatched_total",
                    "Live learning: responses without a query (forged, late).",
                    None,
                    n(l.unmatched),
                ),
                gauge(
                    "live_learned_total",
                    "Live learning: entries learned that the zone lacked.",
                    None,
                    n(l.learned),
                ),
                gauge(
                    "live_unconfirmed",
                    "Live learning: entries not yet in the zone.",
                    None,
                    l.unconfirmed as f64,
                ),
                gauge("live_queued", "Live learning: entries waiting to be pushed.", None, l.queued as f64),
                gauge(
                    "live_pushed_total",
                    "Live learning: records accepted by the primary.",
                    None,
                    n(l.pushed),
                ),
                gauge("live_push_errors_total", "Live learning: failed UPDATEs.", None, n(l.push_errors)),
                gauge(
                    "live_overflow_total",
                    "Live learning: entries not taken (queue full).",
                    None,
                    n(l.overflow),
                ),
                gauge(
                    "live_learn_denied_total",
                    "Live learning: answers not learned because a deny covers the address.",
                    None,
                    n(l.learn_denied),
                ),
                gauge(
                    "live_raced_misses_total",
                    "Live learning: misses for entries learned live.",
                    None,
                    n(l.raced_misses),
                ),
            ]);
            for (name, lag) in [
                ("live_lag_enforced_seconds", &l.lag_enforced),
                ("live_lag_pushed_seconds", &l.lag_pushed),
                ("live_lag_flows_seconds", &l.lag_flows),
            ] {
                if let Some(lag) = lag {
                    for (q, v) in [("0.5", lag.p50_us), ("0.99", lag.p99_us)] {
                        g.push(Gauge {
                            name,
                            help: "Live learning: answer to entry enforced / accepted by the primary / \
                                   its OpenFlow flows confirmed by the switch.",
                            label: Some(("quantile", q.to_owned())),
                            value: v / 1e6,
                        });
                    }
                }
            }
        }
        g.extend(sync.gauges());
        for (ip, h) in r.top_sources.iter().take(10) {
            g.push(Gauge {
                name: "top_source_blocked",
                help: "Blocked attempts of the most active sources.",
                label: Some(("source", ip.to_string())),
                value: h.blocked as f64,
            });
        }
        if let Ok(of) = serde_json::from_value::<crate::openflow::ControllerStatus>(r.extra.clone()) {
            g.extend(of.gauges());
        }
        let mut text = render_prometheus(&stats, &g);
        if !r.miss_transport.active.is_empty() {
            text.push_str(
                "# HELP rpz_guard_afxdp_active 1 when misses are held on AF_XDP, 0 on the ring-buffer fallback.\n",
            );
            text.push_str("# TYPE rpz_guard_afxdp_active gauge\n");
            text.push_str(&format!(
                "rpz_guard_afxdp_active {}\n",
                u8::from(r.miss_transport.active == "afxdp")
            ));
            text.push_str(&r.miss_transport.hold.prometheus());
        }
        render_histogram(
            &mut text,
            "rpz_guard_miss_lookup_duration_seconds",
            "Time to answer one RPZ question of the miss path.",
            &self.resolver.latency(),
        );
        text
    }
}

fn gauge(name: &'static str, help: &'static str, label: Option<(&'static str, &str)>, value: f64) -> Gauge {
    Gauge { name, help, label: label.map(|(k, v)| (k, v.to_owned())), value }
}

/// A minimal HTTP/1.0 responder for `GET /metrics` (and `/status`).
pub(super) async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let mut conn = tokio::select! {
            () = cancel.cancelled() => return,
            c = listener.accept() => match c { Ok(c) => c.0, Err(e) => { accept_failed("metrics", &e).await; continue; } },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let req = read_request::<1024>(&mut conn).await;
            let (code, body) = match req.split_whitespace().nth(1).unwrap_or("") {
                "/metrics" => ("200 OK", shared.metrics()),
                "/status" => ("200 OK", serde_json::to_string(&shared.report()).unwrap_or_default()),
                _ => ("404 Not Found", "try /metrics or /status\n".to_owned()),
            };
            let head = format!(
                "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
