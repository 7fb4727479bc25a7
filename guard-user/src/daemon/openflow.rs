//! The OpenFlow enforcement point: the controller serving the same allow
//! set, miss path, events, counters and live learning as XDP mode.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{DaemonError, Shared, lock};
use crate::config::Config;

/// Serves switches until `cancel` fires. While `loaded` is false the
/// switches hold the deny-protected flows (no allow set yet).
pub(super) async fn run(
    cfg: &Config,
    shared: Arc<Shared>,
    learning: Option<Arc<crate::openflow::Learning>>,
    loaded: tokio::sync::watch::Receiver<bool>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    use crate::openflow::{ControllerConfig, ControllerShared};
    let of = &cfg.openflow;
    let ccfg = ControllerConfig::from_config(cfg);
    let cshared = ControllerShared::new(
        shared.allow.clone(),
        shared.resolver.clone(),
        shared.events.clone(),
        shared.counters.clone(),
    )
    .with_loaded(loaded);
    let cshared = match learning {
        Some(l) => cshared.with_learning(l),
        None => cshared,
    };
    *lock(&shared.flow_hits) = Some(cshared.hits.clone());
    let view = cshared.clone();
    *lock(&shared.extra) = Some(Box::new(move || serde_json::to_value(view.status()).unwrap_or_default()));
    *lock(&shared.point) = format!("openflow:{}", of.listen);
    tracing::info!(listen = %of.listen, "OpenFlow controller mode");
    crate::openflow::serve(ccfg, cshared, cancel).await.map_err(|e| DaemonError::Openflow(e.to_string()))
}
