//! The token cache on a [`ManualClock`], with a fake connector that counts its calls: every
//! freshness decision is checked by moving time, never by sleeping.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::{CacheConfig, Dur, Percent};
use crate::exchange::{Minted, RequestInfo};
use crate::verify::VerifiedSession;

/// A connector whose n-th call makes `tok-n`, good for `lifetime`; it fails while `fail` is set,
/// and while `gated` is set each call first waits for a permit of `gate`.
struct Fake {
    calls: AtomicUsize,
    lifetime: Duration,
    fail: AtomicBool,
    gated: AtomicBool,
    gate: Semaphore,
}

#[async_trait::async_trait]
impl Mint for Fake {
    fn inputs(&self, _: &VerifiedSession, _: RequestInfo<'_>) -> Result<Value, ExchangeError> {
        Ok(json!({}))
    }
    async fn mint(&self, _: &Value) -> Result<Minted, ExchangeError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.gated.load(Ordering::SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(ExchangeError::unavailable(
                "fake",
                format!("call {n} failed"),
            ));
        }
        Ok(Minted {
            token: ExternalToken::new(format!("tok-{n}")).unwrap(),
            lifetime: self.lifetime,
        })
    }
}

/// A cache (margin 10%, no floor, negative_ttl 1s, evict_min_interval 30s) on a manual clock, and
/// one key of a fake connector minting 100 s tokens: served for 90 s, refreshed ahead from 80 s.
/// (Also the rig of `evict_tests.rs`.)
pub(super) struct Rig {
    pub(super) clock: Arc<ManualClock>,
    pub(super) cache: TokenCache,
    fake: Arc<Fake>,
    pub(super) key: CacheKey,
}

impl Rig {
    pub(super) fn new() -> Rig {
        Self::with(|_| {})
    }

    /// The rig with `edit` applied to its cache settings.
    pub(super) fn with(edit: impl FnOnce(&mut CacheConfig)) -> Rig {
        let clock = ManualClock::new();
        let mut cfg = CacheConfig {
            margin: Percent(10.0),
            min_margin: Dur::secs(0),
            negative_ttl: Dur::secs(1),
            evict_min_interval: Dur::secs(30),
            ..CacheConfig::default()
        };
        edit(&mut cfg);
        let fake = Arc::new(Fake {
            calls: AtomicUsize::new(0),
            lifetime: Duration::from_secs(100),
            fail: AtomicBool::new(false),
            gated: AtomicBool::new(false),
            gate: Semaphore::new(0),
        });
        Rig {
            cache: TokenCache::new(&cfg, clock.clone()),
            clock,
            fake,
            key: CacheKey::new("fake".into(), &[0; 32], &json!({"uid": "U1"})),
        }
    }

    pub(super) async fn get(&self) -> (Result<String, ExchangeError>, Lookup) {
        let mint: Arc<dyn Mint> = self.fake.clone();
        let (r, how) = self
            .cache
            .get_or_mint(&self.key, &mint, &Arc::new(json!({})))
            .await;
        (r.map(|t| t.as_str().to_string()), how)
    }

    pub(super) fn ok(token: &str, how: Lookup) -> (Result<String, ExchangeError>, Lookup) {
        (Ok(token.to_string()), how)
    }

    pub(super) fn calls(&self) -> usize {
        self.fake.calls.load(Ordering::SeqCst)
    }

    pub(super) fn advance(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    /// `n` concurrent lookups, started while the fake is gated, released once all wait.
    async fn concurrent(
        self: &Arc<Self>,
        n: usize,
    ) -> Vec<(Result<String, ExchangeError>, Lookup)> {
        self.fake.gated.store(true, Ordering::SeqCst);
        let calls_before = self.calls();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let rig = self.clone();
                tokio::spawn(async move { rig.get().await })
            })
            .collect();
        while self.calls() == calls_before {
            tokio::task::yield_now().await;
        }
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        self.fake.gated.store(false, Ordering::SeqCst);
        self.fake.gate.add_permits(n);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

#[tokio::test]
async fn hit_after_one_miss() {
    let r = Rig::new();
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Hit));
    r.advance(79_999);
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Hit));
    assert_eq!(r.calls(), 1);
}

#[tokio::test]
async fn other_inputs_are_another_miss() {
    let r = Rig::new();
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    let other = CacheKey::new("fake".into(), &[0; 32], &json!({"uid": "U2"}));
    let mint: Arc<dyn Mint> = r.fake.clone();
    let (t, how) = r
        .cache
        .get_or_mint(&other, &mint, &Arc::new(json!({})))
        .await;
    assert_eq!((t.unwrap().as_str(), how), ("tok-2", Lookup::Miss));
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Hit));
}

#[tokio::test]
async fn concurrent_misses_make_one_call() {
    let r = Arc::new(Rig::new());
    let results = r.concurrent(8).await;
    assert_eq!(r.calls(), 1);
    assert!(results.iter().all(|(t, _)| t.as_deref() == Ok("tok-1")));
    let count = |l| results.iter().filter(|(_, how)| *how == l).count();
    assert_eq!((count(Lookup::Miss), count(Lookup::Coalesced)), (1, 7));
}

#[tokio::test]
async fn concurrent_misses_on_a_stale_entry_make_one_call() {
    let r = Arc::new(Rig::new());
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    r.advance(90_000);
    let results = r.concurrent(8).await;
    assert_eq!(r.calls(), 2);
    assert!(results.iter().all(|(t, _)| t.as_deref() == Ok("tok-2")));
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Hit));
}

#[tokio::test]
async fn refresh_ahead_serves_the_old_token_while_one_re_mint_runs() {
    let r = Rig::new();
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    r.fake.gated.store(true, Ordering::SeqCst);
    r.advance(80_000);
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::RefreshAhead));
    while r.calls() < 2 {
        tokio::task::yield_now().await;
    }
    // The re-mint is running (held at the gate): the old token is still served, no other call.
    r.advance(9_999);
    for _ in 0..3 {
        assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Hit));
    }
    assert_eq!(r.calls(), 2);
    r.fake.gated.store(false, Ordering::SeqCst);
    r.fake.gate.add_permits(1);
    let mut served = r.get().await;
    for _ in 0..1000 {
        if served.0.as_deref() == Ok("tok-2") {
            break;
        }
        tokio::task::yield_now().await;
        served = r.get().await;
    }
    assert_eq!(served, Rig::ok("tok-2", Lookup::Hit));
    assert_eq!(r.calls(), 2);
    // The new token's windows start at its own mint (t = 80 s): served until 170 s.
    r.advance(79_999);
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Hit));
}

#[tokio::test]
async fn a_token_is_never_served_in_its_last_margin() {
    let r = Rig::new();
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    // The refresh ahead fails: the old token is served until it goes stale, never after.
    r.fake.fail.store(true, Ordering::SeqCst);
    r.advance(80_000);
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::RefreshAhead));
    while r.calls() < 2 {
        tokio::task::yield_now().await;
    }
    r.advance(9_999);
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Hit));
    assert_eq!(r.calls(), 2, "one refresh attempt per entry");
    r.advance(1);
    let (t, how) = r.get().await;
    assert_eq!(
        (t.is_err(), how),
        (true, Lookup::Miss),
        "stale at 90 s: minted again"
    );
    assert_eq!(r.calls(), 3);
    r.fake.fail.store(false, Ordering::SeqCst);
    r.advance(1_000);
    assert_eq!(r.get().await, Rig::ok("tok-4", Lookup::Miss));
}

#[tokio::test]
async fn stale_is_a_miss_that_mints_anew() {
    let r = Rig::new();
    assert_eq!(r.get().await, Rig::ok("tok-1", Lookup::Miss));
    r.advance(90_000);
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Miss));
    assert_eq!(r.get().await, Rig::ok("tok-2", Lookup::Hit));
}

#[tokio::test]
async fn failures_are_remembered_for_negative_ttl_then_retried() {
    let r = Rig::new();
    r.fake.fail.store(true, Ordering::SeqCst);
    let unavailable = |n: usize| ExchangeError::unavailable("fake", format!("call {n} failed"));
    assert_eq!(r.get().await, (Err(unavailable(1)), Lookup::Miss));
    assert_eq!(r.get().await, (Err(unavailable(1)), Lookup::NegativeHit));
    r.advance(999);
    assert_eq!(r.get().await, (Err(unavailable(1)), Lookup::NegativeHit));
    assert_eq!(r.calls(), 1);
    r.advance(1);
    assert_eq!(r.get().await, (Err(unavailable(2)), Lookup::Miss));
    r.fake.fail.store(false, Ordering::SeqCst);
    assert_eq!(r.get().await, (Err(unavailable(2)), Lookup::NegativeHit));
    r.advance(1_000);
    assert_eq!(r.get().await, Rig::ok("tok-3", Lookup::Miss));
    assert_eq!(r.get().await, Rig::ok("tok-3", Lookup::Hit));
}

fn cache(margin: f64, min: u64) -> TokenCache {
    TokenCache::new(
        &CacheConfig {
            margin: Percent(margin),
            min_margin: Dur::secs(min),
            ..CacheConfig::default()
        },
        crate::clock::system(),
    )
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
    let clock = ManualClock::new();
    let c = TokenCache::new(&CacheConfig::default(), clock.clone());
    let minted = Minted {
        token: ExternalToken::new("t").unwrap(),
        lifetime: Duration::from_secs(3600),
    };
    let f = Fill::minted(minted, clock.unix());
    assert_eq!(f.expires_at, clock.unix() + 3600);
    let e = c.entry(f.clone());
    let now = clock.now();
    assert_eq!(e.stale_at - now, Duration::from_secs(3240));
    assert_eq!(e.refresh_at - now, Duration::from_secs(2880));
    assert!(
        e.keep_for >= e.stale_at - now,
        "moka keeps it while it is served"
    );
    // The same token read from the shared cache 1000 s later: same margin (of its whole
    // lifetime), windows counted from what is left.
    let e = c.entry(Fill {
        remaining: Duration::from_secs(2600),
        shared: true,
        ..f
    });
    assert_eq!(e.stale_at - now, Duration::from_secs(2240));
    assert_eq!(e.refresh_at - now, Duration::from_secs(1880));
    assert!(e.shared);
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

#[test]
fn lookup_kinds_index_their_metric_handles() {
    // Connectors index their per-kind counters by discriminant.
    for (i, l) in Lookup::ALL.iter().enumerate() {
        assert_eq!(*l as usize, i, "{}", l.label());
    }
    let labels: std::collections::BTreeSet<_> = Lookup::ALL.iter().map(|l| l.label()).collect();
    assert_eq!(labels.len(), Lookup::ALL.len());
}
