//! TLS on the proxy listener (rustls, through pingora's acceptor) and to `https://` upstreams.
//!
//! [`ServerTls`] is built from `tls:` with each config (start, `extoken check`, every reload): the
//! certificate files are read, each key matched with its certificate, the client CAs loaded. It
//! lives in the `Gateway`, so a reload swaps certificates and client CAs together for new
//! handshakes (the client-CA verifier is fixed inside a rustls config, so the whole acceptor is
//! rebuilt); a connection keeps the session it negotiated. A file that does not load fails the
//! build, and a reload that fails keeps the running gateway.
//!
//! The handshake runs inside the listener's client limits (`crate::listener`): after the
//! connection took its `max_connections` slot, under `limits.tls_handshake_timeout`
//! ([`ServerTls::accept`]), counted by result in `extoken_tls_handshakes_total` and logged at
//! debug: a port scan costs no ERROR line.

mod handshake;
mod pem;
mod sni;
pub(crate) mod upstream;

use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::config::{ClientAuth, Config, ConfigError, TlsConfig, TlsVersion};

/// The TLS side of the proxy listener, for one config.
pub struct ServerTls {
    acceptor: Acceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// The crypto of every TLS config extoken builds: aws-lc-rs with Mozilla's "intermediate" cipher
/// suites, named one by one so a new rustls default cannot widen them. (rustls has no CBC, RSA
/// key exchange or DHE suites; TLS 1.0/1.1 it does not implement.)
fn provider() -> Arc<CryptoProvider> {
    use aws_lc_rs::cipher_suite as cs;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    })
}

impl ServerTls {
    /// Reads and checks every file of `tls:`; errors name their key.
    pub fn build(cfg: &TlsConfig) -> Result<ServerTls, ConfigError> {
        let provider = provider();
        let resolver = Arc::new(certificates(cfg, &provider)?);
        let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| ConfigError::key("tls.min_version", e.to_string()))?;
        let builder = match (&cfg.client_ca_file, cfg.client_auth) {
            (Some(file), ClientAuth::Optional | ClientAuth::Required) => {
                const KEY: &str = "tls.client_ca_file";
                let roots = Arc::new(pem::roots(KEY, file)?);
                let v = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let v = if cfg.client_auth == ClientAuth::Optional {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                let v = v
                    .build()
                    .map_err(|e| ConfigError::key(KEY, e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(ServerTls {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
        })
    }
}

/// Each `tls.certificates[i]`: its chain, its key, and that they belong together.
fn certificates(
    cfg: &TlsConfig,
    provider: &CryptoProvider,
) -> Result<sni::SniResolver, ConfigError> {
    let mut entries = Vec::with_capacity(cfg.certificates.len());
    for (i, c) in cfg.certificates.iter().enumerate() {
        let at = |k: &str| format!("tls.certificates[{i}].{k}");
        let chain = pem::certificates(&at("cert_file"), &c.cert_file)?;
        let key = pem::private_key(&at("key_file"), &c.key_file)?;
        let names = pem::names(&chain[0]);
        let certified =
            rustls::sign::CertifiedKey::from_der(chain, key, provider).map_err(|e| {
                let m = format!("{}: does not fit cert_file ({e})", c.key_file.display());
                ConfigError::key(at("key_file"), m)
            })?;
        entries.push(sni::Entry {
            names,
            key: Arc::new(certified),
        });
    }
    sni::SniResolver::new(entries)
        .ok_or_else(|| ConfigError::key("tls.certificates", "at least one certificate is needed"))
}

/// `extoken check`: builds every TLS piece of `cfg` (the listener's, each route's upstream's), as
/// the gateway would.
pub fn check(cfg: &Config) -> Result<(), ConfigError> {
    if let Some(t) = &cfg.tls {
        ServerTls::build(t)?;
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        if let Some(t) = &r.upstream_tls {
            upstream::UpstreamTls::build(&format!("routes[{i}].upstream_tls"), t)?;
        }
    }
    Ok(())
}
