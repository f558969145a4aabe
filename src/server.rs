//! Assembles the pingora server: the proxy service on `listen`, and the background task that keeps
//! the Descope keys fresh. `extoken run` and `extoken demo` both start from here.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

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
    let gateway = Gateway::build(cfg, keys.clone())?;
    let state = Arc::new(ArcSwap::from_pointee(gateway));

    let conf = ServerConf {
        threads,
        // pingora's defaults wait minutes on SIGTERM; a sidecar has 30 s in all.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(25),
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
    server.add_service(background_service("descope keys", KeyRefresher(keys)));
    Ok(Built { server, state })
}

struct KeyRefresher(Arc<KeyStore>);

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.clone().run(shutdown).await;
    }
}
