//! `SIGHUP`: reload the configuration without detaching. The policy (ports,
//! exempt and internal lists) and the event settings change in place; the
//! events file is reopened (log rotation). Anything else (the interface,
//! the mode, the source, listeners) cannot change while running: such a
//! reload is refused as a whole, with the keys named, and the running
//! configuration stays.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Shared, lock};
use crate::{
    config::{Config, Mode},
    events::now_ms,
    xdp::Enforcer,
};

/// One reload asked for: the configuration re-read (file and flags), or
/// why it could not be read.
pub type ReloadRequest = Result<Config, String>;

/// Top-level config sections that may change while running.
const RELOADABLE: &[&str] = &["policy", "events"];

/// Reloads so far, and how the last one ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStats {
    /// Reloads applied.
    pub applied: u64,
    /// Reloads refused: a key that cannot change while running changed.
    pub refused: u64,
    /// Reloads that failed: the file was unreadable or invalid, or applying failed.
    pub failed: u64,
    /// When the last one ended (ms since the epoch).
    pub last_ms: Option<u64>,
    /// What the last one did, or why it was refused or failed.
    pub last_message: Option<String>,
}

/// Dotted keys (`enforce.iface`) whose values differ between two configs.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(toml::Value::Table(ta)), Some(toml::Value::Table(tb))) => {
                let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, ta.get(k), tb.get(k), out);
                }
            }
            (a, b) if a != b => out.push(prefix.to_owned()),
            _ => {}
        }
    }
    let (a, b) = (toml::Value::try_from(old).ok(), toml::Value::try_from(new).ok());
    let mut out = Vec::new();
    walk("", a.as_ref(), b.as_ref(), &mut out);
    out
}

/// The changed keys that cannot change while running (empty: reloadable).
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut fixed: Vec<String> = changed_keys(old, new)
        .into_iter()
        .filter(|k| !RELOADABLE.iter().any(|s| k.split('.').next() == Some(s)))
        .collect();
    // The switches' flows are built from the policy when they connect.
    if new.enforce.mode == Mode::Openflow && old.policy != new.policy {
        fixed.push("policy (in openflow mode)".into());
    }
    fixed
}

/// Handles reload requests until `cancel` fires. `current` is the
/// configuration in force; `enforcer` is the XDP program (none in OpenFlow mode).
pub(super) async fn serve(
    mut requests: mpsc::UnboundedReceiver<ReloadRequest>,
    mut current: Config,
    shared: Arc<Shared>,
    enforcer: Option<Arc<Mutex<Enforcer>>>,
    cancel: CancellationToken,
) {
    loop {
        let req = tokio::select! {
            () = cancel.cancelled() => return,
            r = requests.recv() => match r { Some(r) => r, None => return },
        };
        shared.notify.reloading();
        let outcome = tokio::task::block_in_place(|| {
            let outcome = apply(req, &mut current, &shared, enforcer.as_ref());
            // Log rotation relies on SIGHUP even when the new file is bad.
            if !matches!(outcome, Outcome::Applied(_))
                && let Err(e) = shared.events.reopen(&current.events.output())
            {
                tracing::error!(error = %e, output = %current.events.output, "reopening the event output failed");
            }
            outcome
        });
        let mut st = lock(&shared.reloads);
        st.last_ms = Some(now_ms());
        match outcome {
            Outcome::Applied(msg) => {
                tracing::info!(changes = %msg, "SIGHUP: configuration reloaded");
                st.applied += 1;
                st.last_message = Some(format!("applied: {msg}"));
            }
            Outcome::Refused(msg) => {
                tracing::error!("SIGHUP: reload refused, the running configuration stays: {msg}");
                st.refused += 1;
                st.last_message = Some(format!("refused: {msg}"));
            }
            Outcome::Failed(msg) => {
                tracing::error!("SIGHUP: reload failed, the running configuration stays: {msg}");
                st.failed += 1;
                st.last_message = Some(format!("failed: {msg}"));
            }
        }
        drop(st);
        shared.notify.ready("enforcing (reloaded)");
    }
}

enum Outcome {
    Applied(String),
    Refused(String),
    Failed(String),
}

fn apply(
    req: ReloadRequest,
    current: &mut Config,
    shared: &Shared,
    enforcer: Option<&Arc<Mutex<Enforcer>>>,
) -> Outcome {
    let new = match req {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    let fixed = fixed_changes(current, &new);
    if !fixed.is_empty() {
        return Outcome::Refused(format!(
            "{} cannot change while running; restart the service for that (reloadable: {})",
            fixed.join(", "),
            RELOADABLE.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ")
        ));
    }
    let changed = changed_keys(current, &new);
    // The program first: if writing its maps fails, nothing has changed yet
    // but what the failed write touched, and the old settings are rewritten.
    if let Some(e) = enforcer
        && (new.policy != current.policy || new.events != current.events)
    {
        let mut e = lock(e);
        // What the daemon set after the start stays: loaded or
        // deny-protected, and the miss transport.
        let live = match e.update_settings(|_| {}) {
            Ok(s) => s,
            Err(err) => return Outcome::Failed(format!("reading the program's settings: {err}")),
        };
        let with_live = |cfg: &Config| {
            let mut pc = super::xdp::program_config(cfg);
            pc.settings.state = live.state;
            pc.settings.miss_transport = live.miss_transport;
            pc.settings.release_ifindex = live.release_ifindex;
            pc
        };
        if let Err(err) = e.configure(&with_live(&new)) {
            let restore = e.configure(&with_live(current));
            return Outcome::Failed(format!(
                "writing the program's settings: {err}{}",
                restore
                    .err()
                    .map(|r| format!("; restoring the old ones also failed: {r}"))
                    .unwrap_or_default()
            ));
        }
        // Exempt hosts added by the reload get their neighbour entries too.
        crate::antispoof::ExemptOrigin::plan(&new).keep_neighbours_resolved(&new);
    }
    // Reopened even when unchanged: after log rotation, the file by its name is a new one.
    if let Err(err) = shared.events.reopen(&new.events.output()) {
        let mut kept = new.clone();
        kept.events = current.events.clone();
        *current = kept;
        return Outcome::Failed(format!(
            "cannot open event output {}: {err} (the policy was applied; events keep going to {})",
            new.events.output, current.events.output
        ));
    }
    shared.events.configure(new.event_settings());
    if new.policy != current.policy {
        shared.set_anti_spoofing(&new);
    }
    *current = new;
    Outcome::Applied(if changed.is_empty() {
        "no changes; event output reopened".to_owned()
    } else {
        format!("{}; event output reopened", changed.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        Config::parse(
            &format!("[enforce]\niface = \"in0\"\n[rpz]\nzone_file = \"/z\"\n{extra}"),
            "t.toml".as_ref(),
        )
        .expect("valid")
    }

    #[test]
    fn policy_and_events_reload_the_rest_is_refused() {
        let old = cfg("");
        let new = cfg("[policy]\nexempt_sources = [\"10.0.0.53\"]\n[events]\nformat = \"ecs\"\n");
        assert_eq!(changed_keys(&old, &new), ["events.format", "policy.exempt_sources"]);
        assert!(fixed_changes(&old, &new).is_empty());

        let mut moved = cfg("");
        moved.enforce.iface = Some("eth9".into());
        moved.enforce.mode = Mode::Openflow;
        assert_eq!(fixed_changes(&old, &moved), ["enforce.iface", "enforce.mode"]);

        let mut of = cfg("");
        of.enforce.mode = Mode::Openflow;
        let mut of2 = of.clone();
        of2.policy.smtp_ports = vec![25];
        assert_eq!(fixed_changes(&of, &of2), ["policy (in openflow mode)"]);
    }
}
