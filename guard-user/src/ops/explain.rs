//! `rpz-guard explain ADDR`: everything about one destination on one
//! screen. Two parts, asked at once and each allowed to fail alone:
//!
//! * **the RPZ** (the primary, by signed queries of every owner that can
//!   cover the address: its host trigger and each `rpz-ip` prefix): which
//!   entry covers it, its class, learned or manual, first learned, last
//!   confirmed, from which answer, expiry, or a deny;
//! * **this router** (the daemon's status socket, `explain ADDR`): the
//!   allow set in force and its serial, the kernel maps or OpenFlow flows,
//!   the kernel and userspace verdict caches, blocked attempts toward it and
//!   from which hosts.
//!
//! Without a daemon the first part stands alone, and the output says which
//! parts are unavailable and why.

use std::{fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{Target, list::EntryView, when};
use crate::{
    daemon::{RouterView, query_explain},
    policy::{Classes, Prefix, Service, Verdict},
    rpz::{edit, meta::Source, transfer},
};

/// What the RPZ holds about the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpzView {
    /// The primary asked.
    pub server: std::net::SocketAddr,
    /// The zone.
    pub zone: String,
    /// Its serial when asked.
    pub serial: Option<u32>,
    /// Entries covering the destination: host first, then prefixes from the longest.
    pub entries: Vec<EntryView>,
}

impl RpzView {
    /// The deny covering the destination, if any (a deny beats any allow).
    pub fn deny(&self) -> Option<&EntryView> {
        self.entries.iter().find(|e| e.denied)
    }

    /// The classes the zone gives the destination: its host entry with the
    /// longest prefix entry (as BIND and the enforcement maps decide).
    pub fn classes(&self) -> Classes {
        if self.deny().is_some() {
            return Classes::NONE;
        }
        let host = self.entries.iter().find(|e| e.prefix.is_host()).map_or(Classes::NONE, |e| e.classes);
        let longest = self.entries.iter().find(|e| !e.prefix.is_host() && !e.classes.is_empty());
        host.union(longest.map_or(Classes::NONE, |e| e.classes))
    }
}

/// Everything about one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The destination.
    pub ip: IpAddr,
    /// When it was asked (Unix seconds).
    pub at: u64,
    /// The RPZ part (`None`: unavailable, see `rpz_error`).
    pub rpz: Option<RpzView>,
    /// Why the RPZ part is unavailable.
    pub rpz_error: Option<String>,
    /// This router's part (`None`: unavailable, see `router_error`).
    pub router: Option<RouterView>,
    /// Why this router's part is unavailable.
    pub router_error: Option<String>,
}

/// Asks the primary and the daemon about `ip`, both at once. The error is
/// the primary's, when its part failed (the caller's exit code when the
/// daemon's part failed too).
pub async fn explain(target: &Target, ip: IpAddr, now: u64) -> (Explanation, Option<super::OpsError>) {
    let ip = Prefix::host(ip).addr();
    let rpz = async {
        let key = target.key.as_ref();
        let server = target.server()?;
        let covering = edit::read_covering(server, &target.zone, key, ip).await?;
        let serial = transfer::soa_serial(server, &target.zone, key).await.ok();
        Ok::<_, super::OpsError>(RpzView {
            server,
            zone: target.zone.clone(),
            serial,
            entries: covering
                .iter()
                .map(|(p, r)| EntryView::from_records(*p, &target.zone, r).with_ageing(&target.lifetime))
                .collect(),
        })
    };
    let router = query_explain(&target.socket, ip);
    let (rpz, router) = tokio::join!(rpz, router);
    let (rpz, rpz_error, err) = match rpz {
        Ok(v) => (Some(v), None, None),
        Err(e) => (None, Some(e.to_string()), Some(e)),
    };
    let (router, router_error) = match router {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e.to_string())),
    };
    (Explanation { ip, at: now, rpz, rpz_error, router, router_error }, err)
}

/// The verdict for `service` toward a destination the zone gives `classes`.
fn verdict_text(service: Service, classes: Classes, denied: bool) -> String {
    if denied {
        return "BLOCKED (deny)".into();
    }
    match Verdict::decide(service, classes) {
        Verdict::Allow => "allowed".into(),
        Verdict::DenyNotRegistered => "BLOCKED (not_registered: in no entry)".into(),
        Verdict::DenyWrongClass => format!("BLOCKED (wrong_class: registered as {classes} only)"),
    }
}

impl Explanation {
    /// The screen `rpz-guard explain` prints.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let now = self.at;
        let _ = writeln!(o, "{}", self.ip);
        // The verdict: from the zone when it answered, else from the router.
        let verdict_from = match (&self.rpz, &self.router) {
            (Some(r), _) => Some((r.classes(), r.deny().is_some(), "the RPZ")),
            (None, Some(v)) => Some((v.classes, v.denied_by.is_some(), "this router's allow set")),
            (None, None) => None,
        };
        if let Some((classes, denied, from)) = verdict_from {
            for s in [Service::Smtp, Service::Dns] {
                let _ = writeln!(o, "  {:<10} {}", s.to_string(), verdict_text(s, classes, denied));
            }
            let _ = writeln!(o, "  {:<10} {from}", "by");
            if !denied && !Service::Smtp.allows(classes) {
                let _ = writeln!(
                    o,
                    "  {:<10} rpz-guard allow {} --class {}   (if it is a legitimate {})",
                    "to allow",
                    self.ip,
                    if classes.is_empty() { "smtp|dns" } else { "smtp" },
                    if classes.is_empty() { "mail or name server" } else { "mail server" }
                );
            }
        }
        self.render_rpz(&mut o, now);
        self.render_router(&mut o, now);
        o
    }

    fn render_rpz(&self, o: &mut String, now: u64) {
        let Some(r) = &self.rpz else {
            let _ = writeln!(o, "\nRPZ: UNAVAILABLE: {}", self.rpz_error.as_deref().unwrap_or("not asked"));
            return;
        };
        let serial = r.serial.map_or("?".to_owned(), |s| s.to_string());
        let _ = writeln!(o, "\nRPZ {} at {} (serial {serial})", r.zone, r.server);
        if r.entries.is_empty() {
            let _ = writeln!(o, "  not in the zone: no host or prefix trigger covers {}", self.ip);
            return;
        }
        for (i, e) in r.entries.iter().enumerate() {
            let kind = if e.prefix.is_host() { "host" } else { "prefix" };
            let shadowed =
                !e.denied && !e.prefix.is_host() && r.entries[..i].iter().any(|x| !x.prefix.is_host());
            let _ = writeln!(
                o,
                "  entry      {} ({kind} trigger {}){}",
                e.prefix,
                e.owner,
                if shadowed { "  [shadowed by a longer prefix]" } else { "" }
            );
            if e.denied {
                let _ = writeln!(
                    o,
                    "  DENIED     CNAME . (RPZ NXDOMAIN): beats any allow; the learner never learns it back"
                );
                let _ = writeln!(o, "             remove with `rpz-guard revoke {}`", e.prefix);
                continue;
            }
            let _ = writeln!(o, "  class      {}", e.classes);
            let _ = writeln!(o, "  source     {}", e.source());
            if let Some(err) = &e.meta_error {
                let _ = writeln!(o, "  LIFETIME   unreadable TXT: {err} (treated as learned, times unknown)");
            }
            let m = e.meta.clone().unwrap_or_default();
            match m.source {
                Source::Manual => {
                    if let Some(f) = m.first {
                        let _ = writeln!(o, "  created    {}", when::utc_relative(f, now));
                    }
                    let _ = writeln!(
                        o,
                        "  expires    {}",
                        m.expires
                            .map_or("never (manual, no expiry)".to_owned(), |e| when::utc_relative(e, now))
                    );
                }
                Source::Learned => {
                    let t = |v: Option<u64>| v.map_or("unknown".to_owned(), |t| when::utc_relative(t, now));
                    let _ = writeln!(o, "  first      {}", t(m.first));
                    let _ = writeln!(o, "  confirmed  {}", t(m.seen));
                    if let Some(ev) = &m.evidence {
                        let _ = writeln!(
                            o,
                            "  evidence   {} {} answered by {}{}",
                            ev.qname,
                            ev.qtype,
                            ev.server,
                            m.ttl.map_or(String::new(), |t| format!(", TTL {t}s"))
                        );
                    }
                    match e.ages_out {
                        Some(at) => {
                            let _ = writeln!(
                                o,
                                "  ages out   {} unless confirmed again or in use (max_age {})",
                                when::utc_relative(at, now),
                                when::span(at.saturating_sub(m.seen.unwrap_or(at)))
                            );
                        }
                        None if e.meta.is_none() => {
                            let _ = writeln!(
                                o,
                                "  ageing     no lifetime record yet (zone from an older version): the learning daemon adds one"
                            );
                        }
                        None => {
                            let _ = writeln!(
                                o,
                                "  ageing     clock not started (no last confirmation recorded yet)"
                            );
                        }
                    }
                }
            }
            if let Some(n) = &m.note {
                let _ = writeln!(o, "  note       {n:?}");
            }
            if e.foreign_txt > 0 {
                let _ = writeln!(o, "  other TXT  {} (not rpz-guard's, ignored)", e.foreign_txt);
            }
        }
    }

    fn render_router(&self, o: &mut String, now: u64) {
        let Some(v) = &self.router else {
            let _ = writeln!(
                o,
                "\nthis router: UNAVAILABLE ({}): allow set in force, kernel maps or flows, verdict caches and blocked attempts are unknown",
                self.router_error.as_deref().unwrap_or("not asked")
            );
            return;
        };
        let serial = v.serial.map_or("none yet".to_owned(), |s| s.to_string());
        let _ = writeln!(o, "\nthis router: {}", v.point);
        let _ = writeln!(o, "  serial     {serial} in force");
        if v.entries.is_empty() {
            let _ = writeln!(o, "  allow set  not in the set in force");
        } else {
            let list: Vec<String> = v
                .entries
                .iter()
                .map(|(p, c)| match v.meta.iter().find(|(mp, _)| mp == p) {
                    Some((_, m)) => format!("{p} ({c}, {})", m.source),
                    None => format!("{p} ({c})"),
                })
                .collect();
            let _ = writeln!(o, "  allow set  {}", list.join(", "));
        }
        if let Some(d) = v.denied_by {
            let _ = writeln!(o, "  deny       {d} (CNAME .) in force: dropped whatever allows it");
        }
        if let (Some(primary), Some(held)) = (self.rpz.as_ref().and_then(|r| r.serial), v.serial)
            && primary != held
        {
            let _ = writeln!(o, "  LAGGING    the router holds serial {held}, the primary {primary}");
        }
        if let Some(live) = v.live {
            let _ = writeln!(
                o,
                "  live       {}",
                if live.is_empty() {
                    "not learned live".to_owned()
                } else {
                    format!("learned live: {live} (not yet in the zone)")
                }
            );
        }
        if let Some(u) = &v.usage {
            let idle = when::span(u.idle_secs);
            let line = match u.last_hit_secs {
                Some(ago) => format!(
                    "{}: last allowed packet {} ({})",
                    if u.in_use() { "yes" } else { "no" },
                    when::utc_relative(now.saturating_sub(ago), now),
                    if u.in_use() {
                        format!("ageing keeps it while packets come within {idle}")
                    } else {
                        format!("none within {idle}: ageing may remove it")
                    }
                ),
                None => "no: no allowed packet since the daemon started".to_owned(),
            };
            let _ = writeln!(o, "  in use     {line}");
        }
        if let Some(k) = &v.kernel {
            let _ = writeln!(o, "  kernel     host map {}, prefix map {}", k.host, k.prefix);
            if k.host.is_deny() || k.prefix.is_deny() {
                let _ = writeln!(o, "             (the deny bit: the program drops it, reason denied)");
            }
            let cache = k.cache.map_or("none".to_owned(), |c| {
                let what = if c.pending {
                    "pending (asking the RPZ)".to_owned()
                } else if c.classes.is_empty() {
                    "negative (not registered)".to_owned()
                } else {
                    format!("positive ({})", c.classes)
                };
                format!("{what}, expires in {:.1}s", c.expires_in_ms as f64 / 1000.0)
            });
            let _ = writeln!(o, "  XDP cache  {cache}");
        }
        if let Some(e) = &v.kernel_error {
            let _ = writeln!(o, "  kernel     UNREADABLE: {e}");
        }
        if let Some(f) = &v.flows {
            let _ = writeln!(
                o,
                "  flows      {} switch(es) connected; {}{}",
                f.switches,
                if f.deny_flow {
                    "deny flow: yes (the controller drops it)"
                } else if f.allow_flow {
                    "proactive allow flow: yes"
                } else {
                    "proactive allow flow: no (packets go to the controller's miss path)"
                },
                if f.over_budget_switches > 0 {
                    format!(
                        " ({} switch(es) over flow budget: some entries not installed)",
                        f.over_budget_switches
                    )
                } else {
                    String::new()
                }
            );
        }
        let cache = v.miss_cache.map_or("none".to_owned(), |c| {
            format!(
                "{}, expires in {:.1}s",
                if c.classes.is_empty() {
                    "negative (not registered)".to_owned()
                } else {
                    format!("positive ({})", c.classes)
                },
                c.expires_in_ms as f64 / 1000.0
            )
        });
        let _ = writeln!(o, "  miss cache {cache}");
        match &v.blocked {
            None => {
                let _ = writeln!(o, "  blocked    no attempt since the daemon started");
            }
            Some(b) => {
                let _ = writeln!(
                    o,
                    "  blocked    {} attempt(s), last {}",
                    b.blocked,
                    when::utc_relative(b.last_ms / 1000, now)
                );
            }
        }
        if !v.recent.is_empty() {
            let _ = writeln!(o, "  recent blocked attempts (newest first):");
            for a in &v.recent {
                let _ = writeln!(
                    o,
                    "    {}  from {}{}  {}/{} {} {} at {}",
                    when::utc(a.time_ms / 1000),
                    a.src,
                    a.src_mac.map_or(String::new(), |m| format!(" ({m})")),
                    a.proto,
                    a.dport,
                    a.service,
                    a.reason.name(),
                    a.point
                );
            }
        }
    }
}
