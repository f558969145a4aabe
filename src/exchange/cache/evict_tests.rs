//! Upstream 401s against the token cache, on a [`ManualClock`] (the rig of `tests.rs`: 100 s
//! tokens, `evict_min_interval` 30 s): only the token that was sent is evicted, a key at most once
//! per interval, and a session provoking 401s costs one mint per interval, not one per 401.

use super::tests::Rig;
use super::*;
use crate::config::Dur;

impl Rig {
    /// The upstream answered 401 to `token` (as a request sent it).
    async fn refused(&self, token: &str) -> Eviction {
        let sent = TokenRef {
            key: self.key.clone(),
            token: ExternalToken::new(token).unwrap(),
        };
        self.cache.evict(&sent).await
    }
}

#[tokio::test]
async fn an_evicted_token_is_minted_again() {
    let r = Rig::new();
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    assert_eq!(r.refused("tok-1").await, Eviction::Evicted);
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Miss));
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Hit));
    assert_eq!(r.calls(), 2);
}

#[tokio::test]
async fn a_stale_tokens_401_does_not_evict_the_fresh_one() {
    let r = Rig::new();
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    assert_eq!(r.refused("tok-1").await, Eviction::Evicted);
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Miss));
    // Long after the interval, a late 401 to tok-1 (a request that was still upstream).
    r.advance(60_000);
    assert_eq!(r.refused("tok-1").await, Eviction::Stale);
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Hit));
    // A token that merely shares a prefix is another token.
    assert_eq!(r.refused("tok-").await, Eviction::Stale);
    assert_eq!(r.refused("tok-22").await, Eviction::Stale);
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Hit));
    assert_eq!(r.calls(), 2);
}

#[tokio::test]
async fn nothing_cached_is_stale_and_does_not_start_the_interval() {
    let r = Rig::new();
    assert_eq!(r.refused("tok-1").await, Eviction::Stale);
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    assert_eq!(
        r.refused("tok-1").await,
        Eviction::Evicted,
        "no interval ran"
    );
    // Two 401s to one token (two requests in flight with it): one eviction, then nothing left.
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Miss));
    r.advance(30_000);
    assert_eq!(r.refused("tok-2").await, Eviction::Evicted);
    assert_eq!(r.refused("tok-2").await, Eviction::Stale);
    assert_eq!(r.calls(), 2);
}

#[tokio::test]
async fn a_key_is_evicted_at_most_once_per_interval() {
    let r = Rig::new();
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    assert_eq!(r.refused("tok-1").await, Eviction::Evicted);
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Miss));
    assert_eq!(r.refused("tok-2").await, Eviction::Suppressed);
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Hit), "still cached");
    r.advance(29_999);
    assert_eq!(r.refused("tok-2").await, Eviction::Suppressed);
    r.advance(1);
    assert_eq!(r.refused("tok-2").await, Eviction::Evicted, "30 s later");
    assert_eq!(r.get().await, Rig::ok("tok-3", Lookup::Miss));
    // The interval counts from the last eviction, not the first.
    r.advance(20_000);
    assert_eq!(r.refused("tok-3").await, Eviction::Suppressed);
    r.advance(10_000);
    assert_eq!(r.refused("tok-3").await, Eviction::Evicted);
    assert_eq!(r.calls(), 3);
}

#[tokio::test]
async fn provoked_401s_cost_one_mint_per_interval() {
    let r = Rig::new();
    let mut outcomes = Vec::new();
    // A minute and a half of a session alternating a 401 path and a 200 one, every 100 ms.
    for _ in 0..450 {
        let (token, _) = r.get().await;
        outcomes.push(r.refused(&token.unwrap()).await);
        r.advance(100);
        assert!(r.get().await.0.is_ok());
        r.advance(100);
    }
    let count = |o| outcomes.iter().filter(|x| **x == o).count();
    assert_eq!(count(Eviction::Evicted), 3, "at 0 s, 30 s, 60 s");
    assert_eq!(count(Eviction::Suppressed), 447);
    assert_eq!(r.calls(), 4, "the first token and one per eviction");
}

#[tokio::test]
async fn a_zero_interval_evicts_on_every_401_to_the_cached_token() {
    let r = Rig::with(|c| c.evict_min_interval = Dur::secs(0));
    for n in 1..=3 {
        assert_eq!(r.get().await, Rig::ok(&format!("tok-{n}"), Lookup::Miss));
        assert_eq!(r.refused(&format!("tok-{n}")).await, Eviction::Evicted);
    }
    assert_eq!(r.refused("tok-3").await, Eviction::Stale);
    assert_eq!(r.calls(), 3);
}

#[test]
fn outcomes_index_their_metric_handles() {
    // Connectors index their per-outcome counters by discriminant.
    for (i, e) in Eviction::ALL.iter().enumerate() {
        assert_eq!(*e as usize, i, "{}", e.label());
    }
    let labels: std::collections::BTreeSet<_> = Eviction::ALL.iter().map(|e| e.label()).collect();
    assert_eq!(labels.len(), Eviction::ALL.len());
}
