//! Forgetting a token the upstream refused (a 401) without letting a client turn every 401 it can
//! provoke into a mint — an identity provider's quota is shared by every user, so one session
//! alternating a path whose backend answers 401 with a normal one must not cost a mint each.
//!
//! * **Compare and remove.** A request carries the token it sent ([`TokenRef`]); its 401 evicts
//!   the entry only if the entry still holds that very token (compared in constant time). A 401 to
//!   a token that was replaced meanwhile (refreshed, or evicted and minted anew by an earlier 401)
//!   evicts nothing: it is `stale`.
//! * **At most once per `cache.evict_min_interval` per key**, by the injected clock: a 401 to the
//!   cached token within the interval after the key's last eviction leaves it cached
//!   (`suppressed`). So provoked 401s cost one mint per interval, and a backend that really
//!   rotated its secret is answered by the first eviction.
//! * With `cache.shared`, only an eviction made here goes on to Redis and the other replicas
//!   (`SharedCache::evict`, which compares and spaces again, for the whole fleet); a suppressed
//!   or stale one costs Redis nothing.
//!
//! Every outcome is counted in `extoken_token_evictions_total{connector,result}` by the caller.

use std::future::ready;

use moka::ops::compute::Op;

use super::{CacheKey, TokenCache};
use crate::exchange::ExternalToken;

/// A token as a request sent it upstream, and the cache entry it came from: what that request's
/// 401 may evict. `Debug` shows the key and the token's length, never the token.
#[derive(Debug, Clone)]
pub struct TokenRef {
    pub(crate) key: CacheKey,
    pub(crate) token: ExternalToken,
}

/// What an upstream 401 did to the cache (the metric's `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// The token was still cached: it is gone, the next request gets a new one.
    Evicted,
    /// It is still cached and stays: its key was evicted less than `evict_min_interval` ago.
    Suppressed,
    /// It is no longer the cached token (replaced, expired or already evicted): nothing to do.
    Stale,
}

impl Eviction {
    /// Every outcome, in discriminant order (index of per-connector metric handles).
    pub(crate) const ALL: [Eviction; 3] =
        [Eviction::Evicted, Eviction::Suppressed, Eviction::Stale];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Eviction::Evicted => "evicted",
            Eviction::Suppressed => "suppressed",
            Eviction::Stale => "stale",
        }
    }
}

impl TokenCache {
    /// The upstream answered 401 to `sent`: forgets it if it is still the cached token and its
    /// key was not evicted within `evict_min_interval`; then, with a shared cache, in Redis and
    /// on every replica (in the background: the response does not wait for Redis).
    pub(crate) async fn evict(&self, sent: &TokenRef) -> Eviction {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut outcome = Eviction::Stale;
        // The decision and the removal are one step under moka's per-key lock, so of concurrent
        // 401s to one token exactly one evicts it; the others find it gone (stale).
        inner
            .tokens
            .entry(sent.key.clone())
            .and_compute_with(|cur| {
                let op = match cur {
                    Some(e) if e.value().token.same_as(&sent.token) => {
                        let last = inner.evictions.get(&sent.key);
                        if last.is_some_and(|at| {
                            now.saturating_duration_since(at) < inner.evict_min_interval
                        }) {
                            outcome = Eviction::Suppressed;
                            Op::Nop
                        } else {
                            if !inner.evict_min_interval.is_zero() {
                                inner.evictions.insert(sent.key.clone(), now);
                            }
                            outcome = Eviction::Evicted;
                            Op::Remove
                        }
                    }
                    _ => Op::Nop,
                };
                ready(op)
            })
            .await;
        if outcome == Eviction::Evicted {
            if let Some(shared) = &inner.shared {
                let (shared, sent) = (shared.clone(), sent.clone());
                let interval = inner.evict_min_interval;
                tokio::spawn(async move { shared.evict(&sent.key, &sent.token, interval).await });
            }
        }
        outcome
    }
}
