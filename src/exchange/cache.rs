//! The external-token cache: one mint per user and inputs, shared by every request that needs it.
//!
//! * Key = connector name + SHA-256 of exactly the inputs the connector mints from (the same value
//!   it is then handed), so a refreshed Descope session with the same claims reuses the token and a
//!   changed role or tenant gets a new one. Neither a token nor a secret is ever part of a key.
//! * An entry is served until `margin` before the token expires; during the `margin` before that it
//!   is still served and one background re-mint replaces it (refresh-ahead).
//! * Concurrent misses on one key make one connector call (moka's `or_try_insert_with`); the other
//!   callers wait for it. Failures are never cached as tokens, but remembered for `negative_ttl` so
//!   a failing connector is not hammered.
//! * Freshness (hit, refresh-ahead, stale, negative) is decided here with the injected clock;
//!   moka, whose clock is its own, only stores and bounds, and keeps an entry at least as long
//!   as it can be served.
//! * With `cache.shared`, a miss and a refresh-ahead go through the second level (Redis, shared by
//!   the replicas: `shared.rs`) instead of straight to the connector.
//! * An upstream 401 evicts only the token it was sent with, and a key at most once per
//!   `evict_min_interval` (`evict.rs`), so provoked 401s cannot become a mint each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;

pub(crate) use super::cached::{CacheKey, Fill, Margin};
use super::shared::{Listener, SharedCache};
use super::{ExchangeError, ExternalToken, Mint};
use crate::clock::SharedClock;
use crate::config::CacheConfig;
pub(crate) use evict::Eviction;
pub use evict::TokenRef;

/// Added to how long moka keeps what the clock says is still good, so moka (counting from its own
/// insert, on its own clock) never drops an entry before it stops being served.
const STORAGE_SLACK: Duration = Duration::from_secs(1);

/// A cached token and its windows, by the cache's clock.
struct Entry {
    token: ExternalToken,
    /// From here on, a hit starts one background re-mint.
    refresh_at: Instant,
    /// From here on, the token is not served (the last `margin` of its life).
    stale_at: Instant,
    /// How long moka keeps the entry after inserting it.
    keep_for: Duration,
    refreshing: AtomicBool,
    /// Unix seconds; a refresh looks for a shared token newer than this.
    expires_at: u64,
    /// Read from the shared cache.
    shared: bool,
}

struct KeepFor;
impl moka::Expiry<CacheKey, Arc<Entry>> for KeepFor {
    fn expire_after_create(&self, _: &CacheKey, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(e.keep_for)
    }
    fn expire_after_update(
        &self,
        _: &CacheKey,
        e: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.keep_for)
    }
}

/// A remembered connector failure, answered until `until` (by the cache's clock).
#[derive(Clone)]
struct Failure {
    error: ExchangeError,
    until: Instant,
}

/// How a lookup was served (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit,
    RefreshAhead,
    Miss,
    Coalesced,
    NegativeHit,
    /// A first-level miss answered by the shared cache (no connector call here).
    SharedHit,
}

impl Lookup {
    /// Every kind, in discriminant order (index of per-connector metric handles).
    pub(crate) const ALL: [Lookup; 6] = [
        Lookup::Hit,
        Lookup::RefreshAhead,
        Lookup::Miss,
        Lookup::Coalesced,
        Lookup::NegativeHit,
        Lookup::SharedHit,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::RefreshAhead => "refresh_ahead",
            Lookup::Miss => "miss",
            Lookup::Coalesced => "coalesced",
            Lookup::NegativeHit => "negative",
            Lookup::SharedHit => "shared_hit",
        }
    }
}

/// `extoken_cache_entries{connector}`.
fn entries_gauge(connector: &str) -> prometheus::IntGauge {
    crate::metrics::metrics()
        .cache_entries
        .with_label_values(&[connector])
}

#[derive(Clone)]
pub(crate) struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    clock: SharedClock,
    tokens: moka::future::Cache<CacheKey, Arc<Entry>>,
    failures: moka::sync::Cache<CacheKey, Failure>,
    margin: Margin,
    negative_ttl: Duration,
    /// When each key was last evicted by an upstream 401 (by `clock`; moka only bounds it).
    evictions: moka::sync::Cache<CacheKey, Instant>,
    evict_min_interval: Duration,
    shared: Option<Arc<SharedCache>>,
}

impl TokenCache {
    #[cfg(test)]
    pub(crate) fn new(cfg: &CacheConfig, clock: SharedClock) -> TokenCache {
        Self::with_shared(cfg, clock, None)
    }

    /// The margin `cfg` gives tokens.
    pub(crate) fn margin_of(cfg: &CacheConfig) -> Margin {
        Margin::new(cfg.margin.0 / 100.0, cfg.min_margin.0)
    }

    /// A cache whose misses go through `shared` (Redis) when given.
    pub(crate) fn with_shared(
        cfg: &CacheConfig,
        clock: SharedClock,
        shared: Option<SharedCache>,
    ) -> TokenCache {
        let negative_ttl = cfg.negative_ttl.0.max(Duration::from_millis(1));
        TokenCache {
            inner: Arc::new(Inner {
                clock,
                tokens: moka::future::Cache::builder()
                    .max_capacity(cfg.max_entries)
                    .expire_after(KeepFor)
                    // Every removal (expiry, size, replacement, eviction) balances one insert.
                    .eviction_listener(|k: Arc<CacheKey>, _, _| entries_gauge(&k.connector).dec())
                    .build(),
                failures: moka::sync::Cache::builder()
                    .max_capacity(cfg.max_entries)
                    .time_to_live(negative_ttl + STORAGE_SLACK)
                    .build(),
                margin: Self::margin_of(cfg),
                negative_ttl,
                evictions: moka::sync::Cache::builder()
                    .max_capacity(cfg.max_entries)
                    .time_to_live(cfg.evict_min_interval.0 + STORAGE_SLACK)
                    .build(),
                evict_min_interval: cfg.evict_min_interval.0,
                shared: shared.map(Arc::new),
            }),
        }
    }

    /// The first-level entry for `f`: served until its margin before expiry, refreshed ahead
    /// during the margin before that.
    fn entry(&self, f: Fill) -> Arc<Entry> {
        let now = self.inner.clock.now();
        let margin = self.inner.margin.of(f.lifetime);
        let serve_for = f.remaining.saturating_sub(margin);
        Arc::new(Entry {
            token: f.token,
            refresh_at: now + serve_for.saturating_sub(margin),
            stale_at: now + serve_for,
            keep_for: serve_for + STORAGE_SLACK,
            refreshing: AtomicBool::new(false),
            expires_at: f.expires_at,
            shared: f.shared,
        })
    }

    /// A token from the second level when there is one, else from the connector.
    async fn fill(
        &self,
        key: &CacheKey,
        newer_than: Option<u64>,
        mint: &Arc<dyn Mint>,
        inputs: &serde_json::Value,
    ) -> Result<Fill, ExchangeError> {
        match &self.inner.shared {
            Some(shared) => {
                let me: Arc<dyn Listener> = self.inner.clone();
                shared.listen(Arc::downgrade(&me));
                // Boxed: the Redis steps would otherwise make every request future deeper.
                Box::pin(shared.obtain(key, newer_than, mint, inputs)).await
            }
            None => Ok(Fill::minted(
                mint.mint(inputs).await?,
                self.inner.clock.unix(),
            )),
        }
    }

    /// The token for `key`, minting it with `mint(inputs)` when needed.
    pub(crate) async fn get_or_mint(
        &self,
        key: &CacheKey,
        mint: &Arc<dyn Mint>,
        inputs: &Arc<serde_json::Value>,
    ) -> (Result<ExternalToken, ExchangeError>, Lookup) {
        if let Some(e) = self.inner.tokens.get(key).await {
            let now = self.inner.clock.now();
            if now < e.stale_at {
                if now >= e.refresh_at && !e.refreshing.swap(true, Ordering::AcqRel) {
                    self.refresh_in_background(
                        key.clone(),
                        e.expires_at,
                        mint.clone(),
                        inputs.clone(),
                    );
                    return (Ok(e.token.clone()), Lookup::RefreshAhead);
                }
                return (Ok(e.token.clone()), Lookup::Hit);
            }
            self.remove_if_same(key, &e).await;
        }
        if let Some(f) = self.inner.failures.get(key) {
            if self.inner.clock.now() < f.until {
                return (Err(f.error), Lookup::NegativeHit);
            }
        }
        self.mint_once(key, mint, inputs).await
    }

    /// Removes `stale` (stale by the clock, still held by moka) unless another caller has
    /// replaced it meanwhile.
    async fn remove_if_same(&self, key: &CacheKey, stale: &Arc<Entry>) {
        let stale = stale.clone();
        self.inner
            .tokens
            .entry(key.clone())
            .and_compute_with(|cur| {
                std::future::ready(match cur {
                    Some(c) if Arc::ptr_eq(c.value(), &stale) => Op::Remove,
                    _ => Op::Nop,
                })
            })
            .await;
    }

    /// A miss: one connector call for all concurrent callers of `key`; a failure is remembered.
    async fn mint_once(
        &self,
        key: &CacheKey,
        mint: &Arc<dyn Mint>,
        inputs: &Arc<serde_json::Value>,
    ) -> (Result<ExternalToken, ExchangeError>, Lookup) {
        let init = async {
            let f = self.fill(key, None, mint, inputs).await?;
            Ok::<_, ExchangeError>(self.entry(f))
        };
        match self
            .inner
            .tokens
            .entry(key.clone())
            .or_try_insert_with(init)
            .await
        {
            Ok(e) => {
                let how = if e.is_fresh() {
                    entries_gauge(&key.connector).inc();
                    if e.value().shared {
                        Lookup::SharedHit
                    } else {
                        Lookup::Miss
                    }
                } else {
                    Lookup::Coalesced
                };
                (Ok(e.into_value().token.clone()), how)
            }
            Err(err) => {
                let error = (*err).clone();
                let until = self.inner.clock.now() + self.inner.negative_ttl;
                let failure = Failure {
                    error: error.clone(),
                    until,
                };
                self.inner.failures.insert(key.clone(), failure);
                (Err(error), Lookup::Miss)
            }
        }
    }

    /// Replaces the entry of `key` (expiring at `expires_at`) by a newer token: another
    /// replica's refresh if there is one, else a mint.
    fn refresh_in_background(
        &self,
        key: CacheKey,
        expires_at: u64,
        mint: Arc<dyn Mint>,
        inputs: Arc<serde_json::Value>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.fill(&key, Some(expires_at), &mint, &inputs).await {
                Ok(f) => {
                    entries_gauge(&key.connector).inc();
                    this.inner.tokens.insert(key, this.entry(f)).await
                }
                // The old entry stays until it goes stale; the next miss mints synchronously.
                Err(e) => {
                    tracing::warn!(target: "extoken::exchange", connector = %key.connector, "refresh-ahead failed: {e}")
                }
            }
        });
    }

    /// The shared cache's `lock_ttl`, if there is one (a reload keeps the cache only when the
    /// connectors still fit in it).
    pub(crate) fn lock_ttl(&self) -> Option<Duration> {
        self.inner.shared.as_ref().map(|s| s.lock_ttl())
    }

    #[cfg(test)]
    fn margin(&self, lifetime: Duration) -> Duration {
        self.inner.margin.of(lifetime)
    }

    /// Whether two handles are the same cache (a reload kept it).
    #[cfg(test)]
    pub(crate) fn is_same(&self, other: &TokenCache) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Evictions announced by other replicas (the shared cache's pub/sub channel).
#[async_trait::async_trait]
impl Listener for Inner {
    async fn evicted(&self, id: &str) {
        if let Some(key) = self.shared.as_ref().and_then(|s| s.local_key(id)) {
            self.tokens.invalidate(&key).await;
        }
    }
}

mod evict;
#[cfg(test)]
mod evict_tests;
#[cfg(test)]
mod tests;
