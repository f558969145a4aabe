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

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ExchangeError, ExternalToken, Mint, Minted};
use crate::config::CacheConfig;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub connector: Arc<str>,
    digest: [u8; 32],
}

impl CacheKey {
    /// `settings` fingerprints the connector's configuration, so a token minted under other
    /// settings (another secret, claims mapping, lifetime) is never served after a reload.
    pub fn new(connector: Arc<str>, settings: &[u8; 32], inputs: &serde_json::Value) -> CacheKey {
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

struct Entry {
    token: ExternalToken,
    refresh_at: Instant,
    stale_at: Instant,
    refreshing: AtomicBool,
}

struct UntilStale;
impl moka::Expiry<CacheKey, Arc<Entry>> for UntilStale {
    fn expire_after_create(&self, _: &CacheKey, e: &Arc<Entry>, now: Instant) -> Option<Duration> {
        Some(e.stale_at.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _: &CacheKey,
        e: &Arc<Entry>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.stale_at.saturating_duration_since(now))
    }
}

/// How a lookup was served (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    RefreshAhead,
    Miss,
    Coalesced,
    NegativeHit,
}

impl Lookup {
    pub fn label(self) -> &'static str {
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
pub struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    tokens: moka::future::Cache<CacheKey, Arc<Entry>>,
    failures: moka::sync::Cache<CacheKey, ExchangeError>,
    margin_share: f64,
    min_margin: Duration,
}

impl TokenCache {
    pub fn new(cfg: &CacheConfig) -> TokenCache {
        TokenCache {
            inner: Arc::new(Inner {
                tokens: moka::future::Cache::builder()
                    .max_capacity(cfg.max_entries)
                    .expire_after(UntilStale)
                    // Every removal (expiry, size, replacement, eviction) balances one insert.
                    .eviction_listener(|k: Arc<CacheKey>, _, _| entries_gauge(&k.connector).dec())
                    .build(),
                failures: moka::sync::Cache::builder()
                    .max_capacity(cfg.max_entries)
                    .time_to_live(cfg.negative_ttl.0.max(Duration::from_millis(1)))
                    .build(),
                margin_share: cfg.margin.0 / 100.0,
                min_margin: cfg.min_margin.0,
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
        let now = Instant::now();
        let margin = self.margin(m.lifetime);
        let stale_at = now + m.lifetime.saturating_sub(margin);
        Arc::new(Entry {
            token: m.token,
            refresh_at: stale_at.checked_sub(margin).unwrap_or(now),
            stale_at,
            refreshing: AtomicBool::new(false),
        })
    }

    /// The token for `key`, minting it with `mint(inputs)` when needed.
    pub async fn get_or_mint(
        &self,
        key: &CacheKey,
        mint: &Arc<dyn Mint>,
        inputs: &Arc<serde_json::Value>,
    ) -> (Result<ExternalToken, ExchangeError>, Lookup) {
        if let Some(e) = self.inner.tokens.get(key).await {
            let now = Instant::now();
            if now < e.stale_at {
                if now >= e.refresh_at && !e.refreshing.swap(true, Ordering::AcqRel) {
                    self.refresh_in_background(key.clone(), mint.clone(), inputs.clone());
                    return (Ok(e.token.clone()), Lookup::RefreshAhead);
                }
                return (Ok(e.token.clone()), Lookup::Hit);
            }
        }
        if let Some(err) = self.inner.failures.get(key) {
            return (Err(err), Lookup::NegativeHit);
        }
        let this = self.clone();
        let init = async {
            let m = mint.mint(inputs).await?;
            Ok::<_, ExchangeError>(this.entry(m))
        };
        match self
            .inner
            .tokens
            .entry(key.clone())
            .or_try_insert_with(init)
            .await
        {
            Ok(e) => {
                if e.is_fresh() {
                    entries_gauge(&key.connector).inc();
                }
                let how = if e.is_fresh() {
                    Lookup::Miss
                } else {
                    Lookup::Coalesced
                };
                (Ok(e.into_value().token.clone()), how)
            }
            Err(err) => {
                let err = (*err).clone();
                self.inner.failures.insert(key.clone(), err.clone());
                (Err(err), Lookup::Miss)
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
    pub async fn evict(&self, key: &CacheKey) {
        self.inner.tokens.invalidate(key).await;
    }

    /// Whether two handles are the same cache (a reload kept it).
    pub fn is_same(&self, other: &TokenCache) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.tokens.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheConfig, Dur, Percent};
    use serde_json::json;

    fn cache(margin: f64, min: u64) -> TokenCache {
        TokenCache::new(&CacheConfig {
            margin: Percent(margin),
            min_margin: Dur::secs(min),
            ..CacheConfig::default()
        })
    }

    #[test]
    fn margin_is_share_then_floor_then_third() {
        let c = cache(10.0, 30);
        assert_eq!(
            c.margin(Duration::from_secs(3600)),
            Duration::from_secs(360),
            "10% of 1h"
        );
        assert_eq!(
            c.margin(Duration::from_secs(600)),
            Duration::from_secs(60),
            "10% of 10m"
        );
        assert_eq!(
            c.margin(Duration::from_secs(120)),
            Duration::from_secs(30),
            "at least min_margin"
        );
        assert_eq!(
            c.margin(Duration::from_secs(60)),
            Duration::from_secs(20),
            "at most a third"
        );
    }

    #[test]
    fn entry_windows() {
        let c = cache(10.0, 30);
        let before = Instant::now();
        let e = c.entry(Minted {
            token: ExternalToken::new("t").unwrap(),
            lifetime: Duration::from_secs(3600),
        });
        let stale = e.stale_at.duration_since(before).as_secs();
        let refresh = e.refresh_at.duration_since(before).as_secs();
        assert!((3239..=3240).contains(&stale), "{stale}");
        assert!((2879..=2880).contains(&refresh), "{refresh}");
    }

    #[test]
    fn keys_depend_on_inputs_and_settings_only() {
        let name: Arc<str> = "c".into();
        let (s1, s2) = ([1u8; 32], [2u8; 32]);
        let a = CacheKey::new(name.clone(), &s1, &json!({"uid": "U1", "roles": ["a"]}));
        let same = CacheKey::new(name.clone(), &s1, &json!({"roles": ["a"], "uid": "U1"}));
        assert_eq!(a, same, "key order does not matter");
        assert_ne!(
            a,
            CacheKey::new(name.clone(), &s1, &json!({"uid": "U1", "roles": ["b"]}))
        );
        assert_ne!(
            a,
            CacheKey::new(name.clone(), &s2, &json!({"uid": "U1", "roles": ["a"]}))
        );
        assert_ne!(
            a,
            CacheKey::new("d".into(), &s1, &json!({"uid": "U1", "roles": ["a"]}))
        );
        assert!(!format!("{a:?}").contains("U1"), "keys print no identity");
    }
}
