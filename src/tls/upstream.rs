//! `routes[].upstream_tls`: the pieces of pingora's `HttpPeer` that decide how an `https://`
//! upstream is verified (`ca`, `sni`) and which client certificate it is shown
//! (`client_cert_key`), read once per config.
//!
//! pingora verifies the upstream's certificate against the SNI name, and turns verification off
//! entirely for an empty one; the config refuses an empty `server_name` and the upstream's host
//! is never empty, so verification is never off. pingora's pool key for upstream connections
//! does not include the CA: [`UpstreamTls::apply`] puts a fingerprint of the files' contents in
//! the peer's `group_key`, so a connection verified under other settings (another route, or the
//! config before a reload) is never reused for this one.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};

use super::pem;
use crate::config::{ConfigError, UpstreamTlsConfig};

/// One route's upstream TLS settings, loaded.
#[derive(Clone)]
pub struct UpstreamTls {
    ca: Option<Arc<[WrappedX509]>>,
    server_name: Option<String>,
    client: Option<Arc<CertKey>>,
    fingerprint: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("private_ca", &self.ca.is_some())
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl UpstreamTls {
    /// Reads the files of `cfg` (given at `path`, `routes[i].upstream_tls`); errors name the key.
    pub fn build(path: &str, cfg: &UpstreamTlsConfig) -> Result<UpstreamTls, ConfigError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let ca = match &cfg.ca_file {
            Some(f) => {
                let key = format!("{path}.ca_file");
                // Loaded into a store first: a CA rustls cannot use is an error now, not at the
                // first request.
                pem::roots(&key, f)?;
                let certs = pem::certificates(&key, f)?;
                let wrapped: Vec<WrappedX509> = certs
                    .iter()
                    .map(|c| {
                        c.as_ref().hash(&mut h);
                        WrappedX509::new(c.as_ref().to_vec(), pingora::utils::tls::parse_x509)
                    })
                    .collect();
                Some(Arc::from(wrapped))
            }
            None => None,
        };
        let client = match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(c), Some(k)) => Some(Arc::new(client_cert(path, c, k, &mut h)?)),
            _ => None,
        };
        cfg.server_name.hash(&mut h);
        Ok(UpstreamTls {
            ca,
            server_name: cfg.server_name.clone(),
            client,
            fingerprint: h.finish(),
        })
    }

    /// Sets the peer's CA, SNI (the name verified), client certificate and pool group.
    pub fn apply(&self, peer: &mut HttpPeer) {
        if let Some(name) = &self.server_name {
            peer.sni = name.clone();
        }
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(ca.clone());
        }
        if let Some(c) = &self.client {
            peer.client_cert_key = Some(c.clone());
        }
        peer.group_key = self.fingerprint;
    }
}

/// The client certificate chain and key, checked to belong together.
fn client_cert(
    path: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    h: &mut impl Hasher,
) -> Result<CertKey, ConfigError> {
    let key_path = format!("{path}.client_key_file");
    let chain = pem::certificates(&format!("{path}.client_cert_file"), cert)?;
    let private = pem::private_key(&key_path, key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), private.clone_key(), &provider).map_err(
        |e| {
            let m = format!("{}: does not fit client_cert_file ({e})", key.display());
            ConfigError::key(&key_path, m)
        },
    )?;
    // pingora reads the key back with `PrivateKeyDer::try_from` and unwraps: it must parse so.
    if rustls::pki_types::PrivateKeyDer::try_from(private.secret_der().to_vec()).is_err() {
        let m = format!("{}: key encoding not recognised", key.display());
        return Err(ConfigError::key(&key_path, m));
    }
    for c in &chain {
        c.as_ref().hash(h);
    }
    let der: Vec<Vec<u8>> = chain.iter().map(|c| c.as_ref().to_vec()).collect();
    Ok(CertKey::new(der, private.secret_der().to_vec()))
}
