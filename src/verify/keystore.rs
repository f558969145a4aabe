//! The Descope key set: loaded at start, refreshed in the background, refetched on an unseen `kid`.
//!
//! Readers get the current [`KeySet`] with one atomic load (`ArcSwap`); nothing on the request path
//! fetches or parses keys except the rare unknown-`kid` refetch, which is single-flight (one fetch
//! shared by every waiting request) and rate-limited by `jwks_min_refetch`, so a flood of forged
//! `kid`s costs at most one fetch per cooldown. A failed fetch never replaces the last good set.
//! A reply (or file) larger than `jwks_max_bytes` is a failed fetch, refused while it streams in
//! (see [`crate::bounded`]), so a runaway endpoint cannot make the gateway buffer it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::keys::{parse_jwks, KeySet, KeySetError};
use crate::bounded::{read_body, BodyError};
use crate::clock::SharedClock;
use crate::config::{DescopeConfig, KeySource};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("JWKS request failed: {0}")]
    Http(String),
    #[error("JWKS endpoint answered {0}")]
    Status(u16),
    #[error("JWKS reply is larger than descope.jwks_max_bytes ({0} bytes)")]
    TooLarge(usize),
    #[error("cannot read JWKS file {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error(transparent)]
    Parse(#[from] KeySetError),
}

/// The last good load, for readiness (`keys_max_age`) and `jwks_last_success_timestamp_seconds`.
#[derive(Debug, Default)]
pub(crate) struct FetchStats {
    /// Unix seconds of the last successful load; 0 = never.
    pub(crate) last_success: AtomicU64,
}

pub struct KeyStore {
    source: KeySource,
    client: reqwest::Client,
    timeout: Duration,
    max_bytes: usize,
    min_refetch: Duration,
    refresh: Duration,
    current: ArcSwap<KeySet>,
    generation: AtomicU64,
    /// Single flight for unknown-kid refetches; holds when the last one started.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    pub(crate) stats: FetchStats,
    clock: SharedClock,
}

impl KeyStore {
    pub fn new(cfg: &DescopeConfig, client: reqwest::Client, clock: SharedClock) -> KeyStore {
        KeyStore {
            source: cfg.key_source(),
            client,
            timeout: cfg.jwks_timeout.0,
            max_bytes: cfg.jwks_max_bytes,
            min_refetch: cfg.jwks_min_refetch.0,
            refresh: cfg.jwks_refresh.0,
            current: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            refetch: tokio::sync::Mutex::new(None),
            stats: FetchStats::default(),
            clock,
        }
    }

    /// The keys in force now (possibly empty before the first successful load).
    pub fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// The HTTP client (shared with a key store built on reload).
    pub(crate) fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// Time since the keys were last loaded successfully (by the clock), if ever.
    pub(crate) fn age(&self) -> Option<Duration> {
        let t = self.stats.last_success.load(Ordering::Relaxed);
        (t != 0).then(|| Duration::from_secs(self.clock.unix().saturating_sub(t)))
    }

    /// Fetches the set and swaps it in. On failure the previous set stays.
    pub async fn load(&self) -> Result<usize, FetchError> {
        let result = self.fetch().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        crate::metrics::metrics()
            .jwks_fetches_total
            .with_label_values(&[outcome])
            .inc();
        if result.is_ok() {
            let now = self.clock.unix();
            self.stats.last_success.store(now, Ordering::Relaxed);
        }
        Ok(self.install(result?))
    }

    /// Swaps `set` in as the next generation; returns how many keys it has.
    pub(crate) fn install(&self, mut set: KeySet) -> usize {
        let n = set.len();
        set.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(Arc::new(set));
        n
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let body = match &self.source {
            KeySource::File(p) => self.read_file(p).await?,
            KeySource::Url(u) => {
                let req = self.client.get(u).timeout(self.timeout);
                let resp = crate::telemetry::trace::send("jwks fetch", "GET", u, req)
                    .await
                    .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
                if !resp.status().is_success() {
                    return Err(FetchError::Status(resp.status().as_u16()));
                }
                read_body(resp, self.max_bytes).await.map_err(|e| match e {
                    BodyError::TooLarge { limit } => FetchError::TooLarge(limit),
                    BodyError::Read(m) => FetchError::Http(m),
                })?
            }
        };
        Ok(parse_jwks(
            &body,
            &mut |w| tracing::warn!(target: "extoken::jwks", "{w}"),
        )?)
    }

    /// The key file, read with the same bound as a reply (a mounted file can be wrong too).
    async fn read_file(&self, p: &Path) -> Result<Vec<u8>, FetchError> {
        use tokio::io::AsyncReadExt;
        let file = tokio::fs::File::open(p)
            .await
            .map_err(|e| FetchError::File(p.to_owned(), e))?;
        let mut body = Vec::new();
        // One byte more than allowed tells "exactly the limit" from "over it".
        let limit = self.max_bytes as u64 + 1;
        file.take(limit)
            .read_to_end(&mut body)
            .await
            .map_err(|e| FetchError::File(p.to_owned(), e))?;
        if body.len() > self.max_bytes {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        Ok(body)
    }

    /// Called when a token names a `kid` that `seen` does not have. Returns the key set to retry
    /// with: a newer one if anybody (this call or another) loaded one, else `seen` unchanged.
    pub(crate) async fn refetch_for_unknown_kid(&self, seen: &Arc<KeySet>) -> Arc<KeySet> {
        let mut last = self.refetch.lock().await;
        let now = self.current();
        if now.generation != seen.generation {
            return now; // someone loaded keys while we waited: no second fetch
        }
        let started = self.clock.now();
        if let Some(t) = *last {
            if started.saturating_duration_since(t) < self.min_refetch {
                return now;
            }
        }
        *last = Some(started);
        match self.load().await {
            Ok(n) => {
                tracing::info!(target: "extoken::jwks", keys = n, "refetched keys for an unknown kid")
            }
            Err(e) => tracing::warn!(target: "extoken::jwks", "unknown-kid refetch failed: {e}"),
        }
        self.current()
    }

    /// The background loop: retries with backoff (1 s doubling to 30 s) while a load fails, and
    /// reloads every `jwks_refresh` once one succeeded. Never ends: it stops when its future is
    /// dropped.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.load().await {
                Ok(n) => {
                    tracing::debug!(target: "extoken::jwks", keys = n, "keys loaded");
                    backoff = Duration::from_secs(1);
                    self.refresh
                }
                Err(e) => {
                    let have = self.current().len();
                    tracing::warn!(target: "extoken::jwks", keys_in_use = have, "key load failed: {e}; retrying in {backoff:?}");
                    let w = backoff.min(self.refresh.max(Duration::from_secs(1)));
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    w
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
