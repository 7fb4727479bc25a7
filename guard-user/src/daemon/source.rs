//! Which allow-set source the configuration names, and how the miss path
//! asks it about one address.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::DaemonError;
use crate::{
    config::{Config, MissQuery},
    miss::{BoxFuture, LookupError, MissResolver, RpzSource, SetSource},
    policy::{AllowSet, Classes},
    rpz::lookup::{QueryStyle, RpzClient},
    sync::Source,
};

/// Adapter: the RPZ client as a miss-path source.
struct ClientSource(RpzClient);

impl RpzSource for ClientSource {
    fn classes(&self, ip: IpAddr) -> BoxFuture<'_, Result<Classes, LookupError>> {
        Box::pin(async move { self.0.classes(ip).await.map_err(|e| LookupError { ip, why: e.to_string() }) })
    }
}

/// The allow-set source the configuration names.
pub fn source_from(cfg: &Config) -> Result<Source, DaemonError> {
    Ok(Source::from_config(cfg)?)
}

/// The miss path over `source`: RPZ questions to the server (zone or paper
/// style), or answers from the in-memory set for a zone-file source.
pub(super) async fn miss_resolver(
    cfg: &Config,
    source: &Source,
    allow: &watch::Receiver<Arc<AllowSet>>,
) -> Result<Arc<MissResolver>, DaemonError> {
    let rpz_source: Arc<dyn RpzSource> = match (source, cfg.rpz.miss_query) {
        (Source::Server { addr, zone, .. }, style) => {
            let (server, style) = match style {
                MissQuery::Zone => (*addr, QueryStyle::Zone),
                MissQuery::Paper => (cfg.rpz.resolver.unwrap_or(*addr), QueryStyle::Paper),
            };
            let timeout = Duration::from_millis(cfg.rpz.query_timeout_ms);
            let client =
                RpzClient::new(server, zone, style, timeout).await.map_err(|source| DaemonError::Io {
                    what: "cannot open the RPZ query socket toward",
                    path: server.to_string(),
                    source,
                })?;
            Arc::new(ClientSource(client))
        }
        (Source::File { .. }, _) => Arc::new(SetSource(allow.clone())),
    };
    Ok(Arc::new(MissResolver::new(rpz_source, cfg.cache.ttl())))
}
