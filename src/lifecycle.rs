//! Process lifecycle: reload on `SIGHUP`, graceful shutdown on `SIGTERM`, the pid file.
//!
//! * **Reload** re-reads the config file. A valid one becomes a new [`Gateway`] swapped into the
//!   shared `ArcSwap` (requests in flight hold an `Arc` of the old one and finish on it); keys,
//!   verified sessions and cached tokens carry over when their settings did not change
//!   ([`Gateway::rebuild`]). Changed `descope:` settings get a new key store, loaded *before* the
//!   swap so no request meets an empty one. Anything invalid keeps the running config, logs why and
//!   counts `extoken_config_reloads_total{result="error"}`.
//! * **SIGTERM** (or SIGQUIT): `/readyz` answers 503 at once; the listeners keep accepting for
//!   `shutdown_delay` (load balancers and Kubernetes endpoints deregister meanwhile), then close;
//!   requests in flight finish; the process exits 0 as soon as none is left, at the latest at
//!   `shutdown_grace` after the signal. SIGINT exits at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use tokio::sync::Notify;

use crate::config::{Config, ConfigError, EMBEDDED_DEFAULT};
use crate::drain::Drain;
use crate::gateway::Gateway;
use crate::metrics::metrics;
use crate::telemetry::LogLevel;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no pid_file in the config: set one, or pass --pid-file")]
    NoPidFile,
    #[error("pid file {0}: {1}")]
    PidFile(PathBuf, std::io::Error),
    #[error("pid file {0} does not hold a process id")]
    BadPid(PathBuf),
    #[error("cannot signal process {0}: {1}")]
    Signal(i32, std::io::Error),
}

/// pingora's share of the shutdown: after `shutdown_delay` the listeners close and pingora waits
/// `grace_period_seconds` before stopping its runtimes (which cancels what is still running) within
/// `graceful_shutdown_timeout_seconds`. Both fit in `shutdown_grace`; we exit earlier when idle.
pub(crate) fn pingora_grace(cfg: &Config) -> (u64, u64) {
    let rest = cfg.shutdown_grace.0.saturating_sub(cfg.shutdown_delay.0);
    (rest.as_secs().saturating_sub(1), 1)
}

/// Waits for SIGTERM/SIGQUIT (graceful) or SIGINT (fast) for pingora's main loop.
pub(crate) struct Signals {
    delay: Duration,
    grace: Duration,
    pid_file: Option<PathBuf>,
    drain: Drain,
    /// Flushed before the process exits early.
    log: Option<LogLevel>,
    /// The live gateway, whose queued trace spans are sent before the process exits.
    state: Arc<ArcSwap<Gateway>>,
}

impl Signals {
    pub(crate) fn new(
        cfg: &Config,
        drain: Drain,
        log: Option<LogLevel>,
        state: Arc<ArcSwap<Gateway>>,
    ) -> Signals {
        Signals {
            delay: cfg.shutdown_delay.0,
            grace: cfg.shutdown_grace.0,
            pid_file: cfg.pid_file.clone(),
            drain,
            log,
            state,
        }
    }

    /// pingora sleeps its whole grace period; a watcher thread exits the process as soon as
    /// nothing is in flight (or lets pingora finish at the deadline).
    fn exit_when_drained(&self, deadline: Instant) {
        let (drain, pid_file, log) = (self.drain.clone(), self.pid_file.clone(), self.log.clone());
        let state = self.state.clone();
        let spawned = std::thread::Builder::new()
            .name("extoken-drain".into())
            .spawn(move || {
                // Let the listeners see the shutdown broadcast first.
                std::thread::sleep(Duration::from_millis(200));
                while Instant::now() < deadline {
                    if drain.in_flight() == 0 {
                        tracing::info!(target: "extoken::lifecycle", "no request in flight: exiting");
                        flush_traces(&state, deadline);
                        remove_pid_file(pid_file.as_deref());
                        if let Some(l) = &log {
                            l.flush();
                        }
                        std::process::exit(0);
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                // `shutdown_grace` is over: what is still open (a WebSocket never "finishes")
                // is closed by the exit, counted and logged once.
                let upgraded = crate::websocket::metrics().open.get().max(0);
                crate::websocket::metrics()
                    .closed_at_shutdown
                    .inc_by(upgraded as u64);
                tracing::info!(target: "extoken::lifecycle", in_flight = drain.in_flight(), upgraded, "shutdown_grace is over: closing what is still open and exiting");
                // The grace is spent: the spans get a moment, not another grace.
                flush_traces(&state, Instant::now() + Duration::from_millis(500));
                remove_pid_file(pid_file.as_deref());
                if let Some(l) = &log {
                    l.flush();
                }
                std::process::exit(0);
            });
        if let Err(e) = spawned {
            tracing::warn!(target: "extoken::lifecycle", "cannot watch the drain: {e}");
        }
    }
}

/// Sends the trace spans still queued, until `deadline` at the latest.
pub(crate) fn flush_traces(state: &ArcSwap<Gateway>, deadline: Instant) {
    if let Some(t) = &state.load().tracing {
        let within = deadline.saturating_duration_since(Instant::now());
        if !t.shutdown(within) {
            tracing::warn!(target: "extoken::lifecycle", "trace spans still queued at exit were not sent in time");
        }
    }
}

async fn recv_or_pending(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn listen(kind: SignalKind, name: &str) -> Option<tokio::signal::unix::Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(target: "extoken::lifecycle", "cannot handle {name}: {e}");
            None
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        tokio::select! {
            _ = recv_or_pending(&mut term) => {}
            _ = recv_or_pending(&mut quit) => {}
            _ = recv_or_pending(&mut int) => {
                tracing::info!(target: "extoken::lifecycle", "SIGINT: exiting now");
                return ShutdownSignal::FastShutdown;
            }
        }
        let signalled = Instant::now();
        self.drain.begin();
        tracing::info!(
            target: "extoken::lifecycle",
            in_flight = self.drain.in_flight(),
            "shutting down: not ready; still accepting for {:?}, exiting within {:?}",
            self.delay,
            self.grace
        );
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            _ = recv_or_pending(&mut int) => {
                tracing::info!(target: "extoken::lifecycle", "SIGINT: exiting now");
                return ShutdownSignal::FastShutdown;
            }
        }
        tracing::info!(
            target: "extoken::lifecycle",
            in_flight = self.drain.in_flight(),
            "closing the listeners; waiting for requests in flight"
        );
        self.exit_when_drained(signalled + self.grace);
        ShutdownSignal::GracefulTerminate
    }
}

/// Keeps the current gateway's Descope keys fresh, following reloads that replace the key store
/// (the reloader notifies `keys_swapped`).
pub(crate) struct KeyRefresher {
    state: Arc<ArcSwap<Gateway>>,
    keys_swapped: Arc<Notify>,
}

impl KeyRefresher {
    pub(crate) fn new(state: Arc<ArcSwap<Gateway>>, keys_swapped: Arc<Notify>) -> KeyRefresher {
        KeyRefresher {
            state,
            keys_swapped,
        }
    }
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let keys = self.state.load().verifier.keys.clone();
            // `run` never ends; it stops when this select drops it.
            tokio::select! {
                _ = keys.run() => return,
                _ = shutdown.changed() => return,
                _ = self.keys_swapped.notified() => continue,
            }
        }
    }
}

/// Frees verified sessions that expired or lost their key, every [`crate::verify::SWEEP_EVERY`]
/// (a scan of the whole cache, on the blocking pool), from whichever verifier is live.
pub(crate) struct SessionSweeper {
    state: Arc<ArcSwap<Gateway>>,
}

impl SessionSweeper {
    pub(crate) fn new(state: Arc<ArcSwap<Gateway>>) -> SessionSweeper {
        SessionSweeper { state }
    }
}

#[async_trait]
impl BackgroundService for SessionSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(crate::verify::SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => return,
            }
            let verifier = self.state.load().verifier.clone();
            let swept = tokio::task::spawn_blocking(move || verifier.sweep()).await;
            if let Ok(n @ 1..) = swept {
                tracing::debug!(target: "extoken::verify", sessions = n, "expired sessions swept");
            }
        }
    }
}

/// Where a reload reads the config from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    /// The embedded default (with the environment).
    Embedded,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(p) => Config::load(p),
            ConfigSource::Embedded => Config::parse(EMBEDDED_DEFAULT, &|k| std::env::var(k).ok()),
        }
    }
}

/// Re-reads the config on SIGHUP.
pub(crate) struct Reloader {
    pub(crate) state: Arc<ArcSwap<Gateway>>,
    pub(crate) source: ConfigSource,
    pub(crate) keys_swapped: Arc<Notify>,
    /// The log filter to apply `log.level` to (none when the process has no subscriber of ours).
    pub(crate) log: Option<LogLevel>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut hup) = listen(SignalKind::hangup(), "SIGHUP") else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let _ = self.reload().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Reloader {
    /// One reload: `Ok(())` when the new config is in force; else the running one stays.
    pub(crate) async fn reload(&self) -> Result<(), ConfigError> {
        let result = self.try_reload().await;
        let m = &metrics().config_reloads_total;
        match &result {
            Ok(()) => m.with_label_values(&["ok"]).inc(),
            Err(e) => {
                m.with_label_values(&["error"]).inc();
                tracing::error!(target: "extoken::lifecycle", "config reload failed, keeping the running config: {e}");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<(), ConfigError> {
        let cfg = self.source.load()?;
        let old = self.state.load_full();
        let restart = old.config.restart_only_changes(&cfg);
        let (gw, keys_kept) = old.rebuild(cfg)?;
        if !keys_kept {
            load_new_keys(&gw).await?;
        }
        if let Some(log) = &self.log {
            if let Err(e) = log.set(&gw.config.log.level) {
                tracing::warn!(target: "extoken::lifecycle", "log.level not applied: {e}");
            }
        }
        let routes = gw.config.routes.len();
        self.state.store(Arc::new(gw));
        if !keys_kept {
            self.keys_swapped.notify_one();
        }
        if !restart.is_empty() {
            tracing::warn!(target: "extoken::lifecycle", "changed settings that apply only after a restart: {}", restart.join(", "));
        }
        tracing::info!(target: "extoken::lifecycle", routes, keys_kept, "config reloaded");
        Ok(())
    }
}

/// Changed `descope:` settings: their keys are loaded before the swap, so no request meets an
/// empty key store.
async fn load_new_keys(gw: &Gateway) -> Result<(), ConfigError> {
    let limit = Duration::from_secs(10);
    match tokio::time::timeout(limit, gw.verifier.keys.load()).await {
        Ok(Ok(n)) => {
            tracing::info!(target: "extoken::lifecycle", keys = n, "loaded the keys of the new descope settings");
            Ok(())
        }
        Ok(Err(e)) => Err(ConfigError::key(
            "descope",
            format!("the keys of the new settings could not be loaded: {e}"),
        )),
        Err(_) => Err(ConfigError::key(
            "descope",
            format!("the keys of the new settings did not load within {limit:?}"),
        )),
    }
}

/// Writes this process's id to `path`.
pub(crate) fn write_pid_file(path: &Path) -> Result<(), LifecycleError> {
    std::fs::write(path, format!("{}\n", std::process::id()))
        .map_err(|e| LifecycleError::PidFile(path.to_owned(), e))
}

pub(crate) fn remove_pid_file(path: Option<&Path>) {
    if let Some(p) = path {
        // Only our own: another instance may have taken the file over.
        let ours = std::fs::read_to_string(p)
            .map(|s| s.trim() == std::process::id().to_string())
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `extoken reload`: SIGHUP to the process named in the pid file.
pub fn signal_reload(pid_file: &Path) -> Result<i32, LifecycleError> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| LifecycleError::PidFile(pid_file.to_owned(), e))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| LifecycleError::BadPid(pid_file.to_owned()))?;
    // SAFETY: kill(2) has no memory effects; pid is a positive process id.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    if rc != 0 {
        return Err(LifecycleError::Signal(pid, std::io::Error::last_os_error()));
    }
    Ok(pid)
}
