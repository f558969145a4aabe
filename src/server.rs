//! Assembles the pingora server: the proxy service on `listen` and `tls.listen` (one service,
//! one app: the TLS handshake runs inside its client limits, see `crate::listener`), the admin listener on
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
    let listen = cfg.listen.map(|a| a.to_string());
    let tls_listen = cfg.tls.as_ref().map(|t| t.listen.to_string());
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.threads
    };
    let admin = cfg.admin_listen.map(|a| a.to_string());
    let (h2c, limits) = (cfg.h2c, cfg.limits.clone());
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
    let conns = Arc::new(listener::Conns::default());
    let mut http = pingora::proxy::http_proxy(
        &server.configuration,
        Proxy::new(
            state.clone(),
            drain.clone(),
            log.as_ref().map(LogLevel::access),
            conns.clone(),
        ),
    );
    http.server_options = Some(server_options(h2c));
    http.h2_options = Some(h2_options(&limits));
    let app = listener::ClientLimits::new(http, state.clone(), threads, conns);
    let mut proxy = Service::new("Pingora HTTP Proxy Service".to_string(), app);
    // Both are plain TCP endpoints: the app tells the TLS one by its port and handshakes itself.
    for addr in listen.iter().chain(tls_listen.iter()) {
        proxy.add_tcp(addr);
    }
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

/// `h2c` on the cleartext listener. (The TLS one offers HTTP/2 by ALPN.) pingora's own HTTP/2 idle
/// timer stays off: it drops the socket without a GOAWAY; `crate::listener` sends one.
fn server_options(h2c: bool) -> pingora::apps::HttpServerOptions {
    let mut o = pingora::apps::HttpServerOptions::default();
    o.h2c = h2c;
    o
}

/// HTTP/2 settings of client connections: the streams a connection may have open, and a decoded
/// header block no larger than `max_header_bytes` allows (`proxy::screen` answers 431 for a
/// request above it; the codec refuses what is far beyond). Read at start.
fn h2_options(
    limits: &crate::config::LimitsConfig,
) -> pingora::protocols::http::v2::server::H2Options {
    let mut o = pingora::protocols::http::v2::server::default_h2_options();
    o.max_concurrent_streams(limits.h2_max_concurrent_streams);
    let block = u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX);
    o.max_header_list_size(block.max(64 * 1024));
    o
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
            shutdown_signal: Box::new(Signals::new(
                &cfg,
                self.drain.clone(),
                log.clone(),
                self.state.clone(),
            )),
        });
        lifecycle::flush_traces(
            &self.state,
            std::time::Instant::now() + std::time::Duration::from_secs(2),
        );
        lifecycle::remove_pid_file(cfg.pid_file.as_deref());
        if let Some(l) = &log {
            l.flush();
        }
        Ok(())
    }
}
