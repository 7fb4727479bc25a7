//! TLS for the OpenFlow channel, as Open vSwitch's `ssl:` controller
//! targets expect: the controller presents a certificate signed by the CA
//! the switch trusts (`ovs-vsctl set-ssl KEY CERT CACERT`), and every switch
//! must present a certificate signed by the CA given here. A peer without
//! one, or with one from another CA, fails the handshake and is counted as
//! refused (`tls_failed`).
//!
//! rustls (with the `ring` provider, so the build needs no cmake or nasm):
//! memory-safe, maintained, TLS 1.2 and 1.3 only, and client-certificate
//! verification through webpki is built in. The files are what `ovs-pki`
//! writes:
//!
//! ```sh
//! ovs-pki init                                # controllerca/ and switchca/
//! ovs-pki req+sign ctl controller             # ctl-cert.pem, ctl-privkey.pem
//! ovs-pki req+sign sw switch                  # sw-cert.pem, sw-privkey.pem (for the switch)
//! # rpz-guard: cert = ctl-cert.pem, key = ctl-privkey.pem,
//! #            client_ca = <pki>/switchca/cacert.pem
//! # switch:    ovs-vsctl set-ssl sw-privkey.pem sw-cert.pem <pki>/controllerca/cacert.pem
//! ```

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

use super::OpenflowError;

/// `[openflow.tls]`: certificate files, all PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The controller's certificate (chain), e.g. `ovs-pki`'s `ctl-cert.pem`.
    pub cert: PathBuf,
    /// Its private key, e.g. `ctl-privkey.pem`.
    pub key: PathBuf,
    /// CA certificate(s) that signed the switches' certificates, e.g.
    /// `<pki>/switchca/cacert.pem`. Switches without such a certificate are refused.
    pub client_ca: PathBuf,
}

fn err(key: &'static str, path: &Path, why: impl ToString) -> OpenflowError {
    OpenflowError::Tls { key, path: path.to_owned(), why: why.to_string() }
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, OpenflowError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, path, e))?;
    if certs.is_empty() {
        return Err(err(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Reads the files and builds the acceptor; errors name the config key
/// and the file.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, OpenflowError> {
    #[expect(
        deprecated,
        reason = "rustls 0.23.48 deprecates ring for lacking post-quantum key exchange; Open vSwitch's \
                  OpenSSL 3.0 offers none either, and aws-lc-rs would need a C/cmake build"
    )]
    let provider = Arc::new(ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs("openflow.tls.client_ca", &cfg.client_ca)? {
        roots.add(c).map_err(|e| err("openflow.tls.client_ca", &cfg.client_ca, e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err("openflow.tls.client_ca", &cfg.client_ca, e))?;
    let chain = certs("openflow.tls.cert", &cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| err("openflow.tls.key", &cfg.key, e))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("openflow.tls.cert", &cfg.cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| err("openflow.tls.key", &cfg.key, format!("does not match the certificate: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
