//! The token cache's arithmetic: margins, windows (on a manual clock), keys.

use serde_json::json;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::{CacheConfig, Dur, Percent};

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
    let e = c.entry(Minted {
        token: ExternalToken::new("t").unwrap(),
        lifetime: Duration::from_secs(3600),
    });
    let now = clock.now();
    assert_eq!(e.stale_at - now, Duration::from_secs(3240));
    assert_eq!(e.refresh_at - now, Duration::from_secs(2880));
    assert!(
        e.keep_for >= e.stale_at - now,
        "moka keeps it while it is served"
    );
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
