//! The shared cache's parts that need no Redis: `cache.shared` parsing and its errors (each naming
//! its key), `lock_ttl` against the connectors, the sealing of values and the naming of keys.
//! Its behaviour against a real Redis is in `tests/interop/test_shared_cache.py`; its fallback
//! when Redis is unreachable in `tests/shared_cache.rs`.

use std::time::Duration;

use serde_json::json;

use super::config::{Servers, SharedCacheConfig, Slowest};
use super::crypto::{Keys, SharedToken};
use crate::config::{Config, RawSharedCache};
use crate::exchange::cached::CacheKey;
use crate::exchange::ExternalToken;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..32

fn raw(yaml: &str) -> RawSharedCache {
    RawSharedCache(serde_yaml::from_str(yaml).unwrap())
}

fn parse(yaml: &str) -> Result<SharedCacheConfig, String> {
    SharedCacheConfig::parse(&raw(yaml), &None).map_err(|e| e.to_string())
}

#[test]
fn defaults() {
    let c = parse(&format!(
        "{{url: 'redis://127.0.0.1:6379', encryption_key: '{KEY}'}}"
    ))
    .unwrap();
    assert!(matches!(c.servers, Servers::Single(_)));
    assert_eq!(c.key_prefix, "extoken:");
    assert_eq!(c.operation_timeout, Duration::from_millis(50));
    assert_eq!(
        c.lock_ttl,
        Duration::from_secs(1),
        "no connector calls out: 0 + 1 s"
    );
    let expected: Vec<u8> = (0..32).collect();
    assert_eq!(c.encryption_key.to_vec(), expected);
}

#[test]
fn cluster_sentinel_tls_and_key_alphabets() {
    let unpadded_urlsafe = KEY
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    let c = parse(&format!(
        "{{cluster: ['redis://127.0.0.1:7000', 'redis://127.0.0.1:7001'], encryption_key: '{unpadded_urlsafe}'}}"
    ))
    .unwrap();
    assert!(matches!(&c.servers, Servers::Cluster(n) if n.len() == 2));
    // `url` with a list of nodes is a Cluster too.
    let c = parse(&format!(
        "{{url: ['redis://127.0.0.1:7000', 'redis://127.0.0.1:7001'], encryption_key: '{KEY}'}}"
    ))
    .unwrap();
    assert!(matches!(&c.servers, Servers::Cluster(n) if n.len() == 2));
    let c = parse(&format!(
        "{{sentinel: {{master_name: m, nodes: ['rediss://s1:26379'], password: pw}}, \
         encryption_key: '{KEY}', key_prefix: 'app1:', operation_timeout: 20ms, lock_ttl: 30s}}"
    ))
    .unwrap();
    assert!(
        matches!(&c.servers, Servers::Sentinel { tls: true, master_name, .. } if master_name == "m")
    );
    assert_eq!(c.key_prefix, "app1:");
    assert_eq!(c.operation_timeout, Duration::from_millis(20));
    assert_eq!(c.lock_ttl, Duration::from_secs(30));
    assert!(parse(&format!(
        "{{url: 'rediss://r:6380/2', encryption_key: '{KEY}'}}"
    ))
    .is_ok());
}

#[test]
fn errors_name_their_key_and_never_the_secret() {
    let k = format!("encryption_key: '{KEY}'");
    for (yaml, key) in [
        (format!("{{{k}}}"), "cache.shared.url:"),
        (
            format!("{{url: 'http://r:6379', {k}}}"),
            "cache.shared.url:",
        ),
        (
            format!("{{url: 'redis://pw@r:notaport', {k}}}"),
            "cache.shared.url:",
        ),
        (
            format!("{{url: 'redis://r', cluster: ['redis://r'], {k}}}"),
            "cache.shared:",
        ),
        (format!("{{cluster: [], {k}}}"), "cache.shared.cluster:"),
        (
            format!("{{cluster: ['redis://a', 'rediss://b'], {k}}}"),
            "cache.shared.cluster[1]:",
        ),
        (
            format!("{{cluster: ['redis://a', 'tcp://b'], {k}}}"),
            "cache.shared.cluster[1]:",
        ),
        (
            format!("{{url: ['redis://a', 'tcp://b'], {k}}}"),
            "cache.shared.url[1]:",
        ),
        (format!("{{url: {{host: a}}, {k}}}"), "cache.shared.url:"),
        (
            format!("{{sentinel: {{master_name: '', nodes: ['redis://s']}}, {k}}}"),
            "cache.shared.sentinel.master_name:",
        ),
        (
            format!("{{sentinel: {{master_name: m, nodes: []}}, {k}}}"),
            "cache.shared.sentinel.nodes:",
        ),
        (
            format!("{{sentinel: {{master_name: m}}, {k}}}"),
            "cache.shared.sentinel:",
        ),
        (
            format!("{{url: 'redis://r', {k}, key_prefix: ''}}"),
            "cache.shared.key_prefix:",
        ),
        (
            format!("{{url: 'redis://r', {k}, key_prefix: 'a b'}}"),
            "cache.shared.key_prefix:",
        ),
        (
            format!("{{url: 'redis://r', {k}, operation_timeout: 0s}}"),
            "cache.shared.operation_timeout:",
        ),
        (
            format!("{{url: 'redis://r', {k}, lock_ttl: 0s}}"),
            "cache.shared.lock_ttl:",
        ),
        (
            format!("{{url: 'redis://r', {k}, nope: 1}}"),
            "cache.shared.nope:",
        ),
        ("{url: 'redis://r'}".to_string(), "cache.shared:"),
        (
            "{url: 'redis://r', encryption_key: 'c2hvcnQtc2VjcmV0'}".to_string(),
            "cache.shared.encryption_key:",
        ),
        (
            "{url: 'redis://r', encryption_key: 'not base64 at all!'}".to_string(),
            "cache.shared.encryption_key:",
        ),
    ] {
        let e = parse(&yaml).expect_err(&yaml);
        assert!(e.starts_with(key), "{yaml}: {e}");
        assert!(!e.contains(KEY) && !e.contains("c2hvcnQtc2VjcmV0"), "{e}");
    }
    let e = parse("{url: 'redis://r', encryption_key: 'c2hvcnQtc2VjcmV0'}").unwrap_err();
    assert!(e.contains("32 bytes") && e.contains("12 bytes"), "{e}");
    let e = parse(&format!("{{url: 'http://user:hunter2@r', {k}}}")).unwrap_err();
    assert!(!e.contains("hunter2"), "a URL may carry a password: {e}");
}

#[test]
fn lock_ttl_outlives_the_slowest_connector() {
    let slow: Slowest = Some(("api".into(), Duration::from_millis(6300)));
    let yaml = |ttl: &str| {
        raw(&format!(
            "{{url: 'redis://r', encryption_key: '{KEY}'{ttl}}}"
        ))
    };
    let c = SharedCacheConfig::parse(&yaml(""), &slow).unwrap();
    assert_eq!(
        c.lock_ttl,
        Duration::from_millis(7300),
        "default: worst case + 1 s"
    );
    assert!(SharedCacheConfig::parse(&yaml(", lock_ttl: 6300ms"), &slow).is_ok());
    let e = SharedCacheConfig::parse(&yaml(", lock_ttl: 5s"), &slow)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cache.shared.lock_ttl: 5s is shorter"), "{e}");
    assert!(e.contains("connectors.api") && e.contains("6300ms"), "{e}");
}

/// The whole config path: an `http` connector's worst case is its timeout × attempts plus the
/// backoff; `exchange::validate` (what `extoken reload` checks) refuses a shorter `lock_ttl`.
#[test]
fn validate_checks_lock_ttl_against_the_configured_connectors() {
    let cfg = |lock_ttl: &str| {
        let text = format!(
            "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors:\n  fast: {{type: supabase, jwt_secret: s}}\n  \
             api: {{type: http, url: 'http://127.0.0.1:1/t', timeout: 3s, retries: 2}}\n\
             routes: [{{upstream: 'http://127.0.0.1:1', connector: api}}]\n\
             cache: {{shared: {{url: 'redis://127.0.0.1:1', encryption_key: '${{K}}'{lock_ttl}}}}}\n"
        );
        Config::parse(&text, &|v| (v == "K").then(|| KEY.to_string())).unwrap()
    };
    // 3 attempts × 3 s + 100 ms + 200 ms of backoff.
    let e = crate::exchange::validate(&cfg(", lock_ttl: 9s"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("connectors.api (9300ms"), "{e}");
    crate::exchange::validate(&cfg(", lock_ttl: 9300ms")).unwrap();
    crate::exchange::validate(&cfg("")).unwrap();
    assert!(
        !format!("{:?}", cfg("")).contains(KEY),
        "Debug never shows the key"
    );
}

fn key(user: &str) -> CacheKey {
    CacheKey::new(
        "legacy".into(),
        &[7; 32],
        &json!({"uid": user, "claims": {}}),
    )
}

fn token(s: &str) -> SharedToken {
    SharedToken {
        token: ExternalToken::new(s).unwrap(),
        expires_at: 1_900_000_000,
        lifetime: Duration::from_millis(3_600_500),
    }
}

#[test]
fn sealed_values_round_trip_and_hide_the_token() {
    let keys = Keys::derive(&[1; 32]);
    let t = token("eyJhbGciOiJIUzI1NiJ9.secret-token-U2alice");
    let a = keys.seal("extoken:abc", &t).unwrap();
    let b = keys.seal("extoken:abc", &t).unwrap();
    assert_ne!(a, b, "a random nonce per value");
    assert_eq!(keys.open("extoken:abc", &a), Some(t.clone()));
    assert_eq!(keys.open("extoken:abc", &b), Some(t.clone()));
    let text = String::from_utf8_lossy(&a);
    assert!(
        !text.contains("secret-token") && !text.contains("U2alice"),
        "{text}"
    );
    // 1 version + 12 nonce + 16 header + token + 16 tag.
    assert_eq!(a.len(), 45 + t.token.as_str().len());
}

#[test]
fn a_value_that_does_not_open_is_a_miss() {
    let keys = Keys::derive(&[1; 32]);
    let sealed = keys.seal("extoken:abc", &token("tok")).unwrap();
    assert_eq!(
        Keys::derive(&[2; 32]).open("extoken:abc", &sealed),
        None,
        "other key"
    );
    assert_eq!(
        keys.open("extoken:other", &sealed),
        None,
        "moved to another name"
    );
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(keys.open("extoken:abc", &flipped), None, "altered");
    assert_eq!(keys.open("extoken:abc", &sealed[..20]), None, "truncated");
    assert_eq!(keys.open("extoken:abc", b""), None, "empty");
    let mut version = sealed;
    version[0] = 9;
    assert_eq!(keys.open("extoken:abc", &version), None, "unknown format");
}

#[test]
fn names_are_keyed_hmacs_without_the_user_id() {
    let keys = Keys::derive(&[1; 32]);
    let (alice, bob) = (keys.name(&key("U2alice")), keys.name(&key("U2bob")));
    assert_eq!(alice.len(), 64);
    assert!(alice.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!alice.contains("U2alice") && !alice.contains("legacy"));
    assert_ne!(alice, bob);
    assert_eq!(
        alice,
        Keys::derive(&[1; 32]).name(&key("U2alice")),
        "same on every replica"
    );
    assert_ne!(alice, Keys::derive(&[2; 32]).name(&key("U2alice")), "keyed");
    let other_settings = CacheKey::new(
        "legacy".into(),
        &[8; 32],
        &json!({"uid": "U2alice", "claims": {}}),
    );
    assert_ne!(
        alice,
        keys.name(&other_settings),
        "a changed connector never reads these entries"
    );
    let d = key("U2alice");
    assert_ne!(
        alice,
        crate::exchange::shared::crypto::hex(d.digest()),
        "not the plain digest"
    );
}
