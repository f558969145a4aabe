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

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;

use super::{ExchangeError, ExternalToken, Mint, Minted};
use crate::clock::SharedClock;
use crate::config::CacheConfig;

/// Added to how long moka keeps what the clock says is still good, so moka (counting from its own
/// insert, on its own clock) never drops an entry before it stops being served.
const STORAGE_SLACK: Duration = Duration::from_secs(1);

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub(crate) connector: Arc<str>,
    digest: [u8; 32],
}

impl CacheKey {
    /// `settings` fingerprints the connector's configuration, so a token minted under other
    /// settings (another secret, claims mapping, lifetime) is never served after a reload.
    pub(crate) fn new(
        connector: Arc<str>,
        settings: &[u8; 32],
        inputs: &serde_json::Value,
    ) -> CacheKey {
        // serde_json's Map is ordered (BTreeMap), so equal inputs serialize to equal bytes.
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(settings);
        ctx.update(&serde_json::to_vec(inputs).unwrap_or_default());
        let d = ctx.finish();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.as_ref());
        CacheKey { connector, digest }
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{:02x}{:02x}{:02x}{:02x}",
            self.connector, self.digest[0], self.digest[1], self.digest[2], self.digest[3]
        )
    }
}

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
}

impl Lookup {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::RefreshAhead => "refresh_ahead",
            Lookup::Miss => "miss",
            Lookup::Coalesced => "coalesced",
            Lookup::NegativeHit => "negative",
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
    margin_share: f64,
    min_margin: Duration,
    negative_ttl: Duration,
}

impl TokenCache {
    pub(crate) fn new(cfg: &CacheConfig, clock: SharedClock) -> TokenCache {
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
                margin_share: cfg.margin.0 / 100.0,
                min_margin: cfg.min_margin.0,
                negative_ttl,
            }),
        }
    }

    /// The margin for a token living `lifetime`: `margin` of it, at least `min_margin`, at most a
    /// third (so a short-lived token is still served for a while before it is refreshed).
    fn margin(&self, lifetime: Duration) -> Duration {
        lifetime
            .mul_f64(self.inner.margin_share)
            .max(self.inner.min_margin)
            .min(lifetime / 3)
    }

    fn entry(&self, m: Minted) -> Arc<Entry> {
        let now = self.inner.clock.now();
        let margin = self.margin(m.lifetime);
        let serve_for = m.lifetime.saturating_sub(margin);
        Arc::new(Entry {
            token: m.token,
            refresh_at: now + serve_for.saturating_sub(margin),
            stale_at: now + serve_for,
            keep_for: serve_for + STORAGE_SLACK,
            refreshing: AtomicBool::new(false),
        })
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
                    self.refresh_in_background(key.clone(), mint.clone(), inputs.clone());
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
            let m = mint.mint(inputs).await?;
            Ok::<_, ExchangeError>(self.entry(m))
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
                    Lookup::Miss
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

    fn refresh_in_background(
        &self,
        key: CacheKey,
        mint: Arc<dyn Mint>,
        inputs: Arc<serde_json::Value>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            match mint.mint(&inputs).await {
                Ok(m) => {
                    entries_gauge(&key.connector).inc();
                    this.inner.tokens.insert(key, this.entry(m)).await
                }
                // The old entry stays until it goes stale; the next miss mints synchronously.
                Err(e) => {
                    tracing::warn!(target: "extoken::exchange", connector = %key.connector, "refresh-ahead failed: {e}")
                }
            }
        });
    }

    /// Forgets a token (the upstream answered 401 to it).
    pub(crate) async fn evict(&self, key: &CacheKey) {
        self.inner.tokens.invalidate(key).await;
    }

    /// Whether two handles are the same cache (a reload kept it).
    #[cfg(test)]
    pub(crate) fn is_same(&self, other: &TokenCache) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

#[cfg(test)]
mod tests;
