//! Assembles the pingora server: the proxy service on `listen`, the admin listener on
//! `admin_listen`, and the background tasks that keep the Descope keys and the upstream addresses
//! fresh, then runs it with the reloader and the signal watcher of [`crate::lifecycle`].
//! `extoken run` and `extoken demo` both start from here. The handles those pieces share (the live
//! gateway, the [`Drain`], the keys-swapped notification) are made here and passed in.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use pingora::server::RunArgs;
use tokio::sync::Notify;

use crate::config::{Config, ConfigError};
use crate::drain::Drain;
use crate::gateway::Gateway;
use crate::lifecycle::{self, ConfigSource, LifecycleError, Reloader, Signals};
use crate::listener;
use crate::proxy::Proxy;
use crate::telemetry::LogLevel;
use crate::verify::KeyStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(transparent)]
    Decision(#[from] crate::decision::grpc::GrpcError),
}

/// A server ready to run, with a handle on the live gateway (for reloads and tests).
pub struct Built {
    pub server: Server,
    pub state: Arc<ArcSwap<Gateway>>,
    drain: Drain,
    keys_swapped: Arc<Notify>,
    log: Option<LogLevel>,
}

/// `log`: the installed subscriber, for access lines and `log.level` reloads (`None` in tests
/// that install none).
pub fn build(cfg: Config, log: Option<LogLevel>) -> Result<Built, StartError> {
    crate::gateway::install_crypto_provider();
    let client = Gateway::http_client()?;
    let keys = Arc::new(KeyStore::new(&cfg.descope, client, crate::clock::system()));
    let listen = cfg.listen.to_string();
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.threads
    };
    let admin = cfg.admin_listen.map(|a| a.to_string());
    let (grace_period, shutdown_timeout) = lifecycle::pingora_grace(&cfg);
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

    let drain = Drain::default();
    let keys_swapped = Arc::new(Notify::new());
    // The proxy app behind the client limits (connection cap, request-head deadline) of
    // `crate::listener`, which pingora does not have.
    let app = listener::ClientLimits::new(
        pingora::proxy::http_proxy(
            &server.configuration,
            Proxy::new(
                state.clone(),
                drain.clone(),
                log.as_ref().map(LogLevel::access),
            ),
        ),
        state.clone(),
        threads,
    );
    let mut proxy = Service::new("Pingora HTTP Proxy Service".to_string(), app);
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    crate::decision::add_services(&mut server, &state, &drain, threads)?;
    if let Some(addr) = admin {
        server.add_service(crate::admin::service(&addr, state.clone(), drain.clone()));
    }
    server.add_service(background_service(
        "descope keys",
        lifecycle::KeyRefresher::new(state.clone(), keys_swapped.clone()),
    ));
    server.add_service(background_service(
        "session sweeper",
        lifecycle::SessionSweeper::new(state.clone()),
    ));
    server.add_service(background_service(
        "upstream dns",
        crate::dns::DnsRefresher::new(state.clone(), Arc::new(crate::dns::SystemResolver)),
    ));
    Ok(Built {
        server,
        state,
        drain,
        keys_swapped,
        log,
    })
}

impl Built {
    /// Runs the server until it is shut down: SIGHUP reloads from `source` (applying `log.level`
    /// to the subscriber), SIGTERM drains. Writes (and at the end removes) the configured pid file.
    pub fn run(mut self, source: ConfigSource) -> Result<(), LifecycleError> {
        let log = self.log.take();
        // SIGHUP's default action ends the process: ignore it until the reloader listens.
        // SAFETY: installs the SIG_IGN disposition; no handler code runs.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        let cfg = self.state.load().config.clone();
        self.server.add_service(background_service(
            "config reload",
            Reloader {
                state: self.state.clone(),
                source,
                keys_swapped: self.keys_swapped.clone(),
                log: log.clone(),
            },
        ));
        if let Some(p) = &cfg.pid_file {
            lifecycle::write_pid_file(p)?;
        }
        self.server.run(RunArgs {
            shutdown_signal: Box::new(Signals::new(&cfg, self.drain.clone(), log.clone())),
        });
        lifecycle::remove_pid_file(cfg.pid_file.as_deref());
        if let Some(l) = &log {
            l.flush();
        }
        Ok(())
    }
}
