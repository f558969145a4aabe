//! Assembles the pingora server: the proxy service on `listen`, the admin listener on
//! `admin_listen`, and the background task that keeps the Descope keys fresh. `extoken run` and
//! `extoken demo` both start from here; [`crate::lifecycle`] runs it (reload, shutdown).

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::config::{Config, ConfigError};
use crate::gateway::Gateway;
use crate::proxy::Proxy;
use crate::verify::KeyStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A server ready to `run_forever`, with a handle on the live gateway (for reloads and tests).
pub struct Built {
    pub server: Server,
    pub state: Arc<ArcSwap<Gateway>>,
}

/// rustls is linked with two crypto providers (pingora's and ours); name the process default once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn build(cfg: Config) -> Result<Built, StartError> {
    install_crypto_provider();
    let client = Gateway::http_client()?;
    let keys = Arc::new(KeyStore::new(&cfg.descope, client));
    let listen = cfg.listen.clone();
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.threads
    };
    let admin = cfg.admin_addr().map(str::to_string);
    let (grace_period, shutdown_timeout) = crate::lifecycle::pingora_grace(&cfg);
    let gateway = Gateway::build(cfg, keys)?;
    let state = Arc::new(ArcSwap::from_pointee(gateway));

    let conf = ServerConf {
        threads,
        // After `shutdown_delay` the listeners close; in-flight requests get the rest of
        // `shutdown_grace` (we exit as soon as none is left: see `lifecycle`).
        grace_period_seconds: Some(grace_period),
        graceful_shutdown_timeout_seconds: Some(shutdown_timeout),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Proxy {
            state: state.clone(),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    if let Some(addr) = admin {
        server.add_service(crate::admin::service(&addr, state.clone()));
    }
    server.add_service(background_service(
        "descope keys",
        crate::lifecycle::KeyRefresher::new(state.clone()),
    ));
    Ok(Built { server, state })
}
