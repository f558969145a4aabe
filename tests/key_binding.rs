//! Security issue #7, items 5 and 6, end to end with the real binary on loopback: a verified
//! session is bound to the key material that verified it (not to its `kid`), and time claims far
//! out of range are refused as malformed rather than overflowing anything.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const PROJECT: &str = "P2KeyBindingProject";

/// A gateway whose keys come from `jwks` (refreshed every second), one claim-connector route to
/// `backend`.
async fn gateway(jwks: &JwksServer, backend: &Backend) -> GatewayProcess {
    let config =
        ConfigBuilder::simple(PROJECT, &jwks.url(), &backend.url()).descope("jwks_refresh", "1s");
    GatewayProcess::start(&config.to_yaml()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_replaced_under_the_same_kid_stops_its_cached_sessions() {
    let a = TestKey::rsa("k1", Algorithm::RS256);
    let b = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&a]).await;
    let backend = Backend::start().await;
    let gw = gateway(&jwks, &backend).await;
    gw.wait_keys("/", &a.probe_token()).await;

    let token = a.sign(&session_claims(PROJECT, Some("ext-of-a")));
    for _ in 0..2 {
        let r = gw.get_bearer("/x", &token).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(backend.count(), 2);
    assert_eq!(
        backend.last().header("authorization"),
        Some("Bearer ext-of-a")
    );

    // Key B replaces A under the same kid. A B-signed but expired token tells when B is in force
    // (bad signature under A, expired under B) without anything reaching the backend.
    jwks.set_keys(&[&b]);
    let expired = b.sign(&with(
        session_claims(PROJECT, Some("ext-of-b")),
        "exp",
        json!(now() - 3600),
    ));
    let refreshed = eventually(Duration::from_secs(15), || async {
        gw.get_bearer("/x", &expired).await.description() == "token has expired"
    })
    .await;
    assert!(refreshed, "the gateway never loaded key B:\n{}", gw.log());

    // The session verified with A was cached, but A is gone: refused, nothing forwarded.
    let r = gw.get_bearer("/x", &token).await;
    r.assert_invalid_token("token signature is invalid");
    assert_eq!(backend.count(), 2, "{:#?}", backend.requests());

    // B's own sessions work.
    let fresh = b.sign(&session_claims(PROJECT, Some("ext-of-b")));
    let r = gw.get_bearer("/x", &fresh).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        backend.last().header("authorization"),
        Some("Bearer ext-of-b")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn time_claims_out_of_range_are_malformed_not_a_panic() {
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let gw = gateway(&jwks, &backend).await;
    gw.wait_keys("/", &key.probe_token()).await;

    let base = || session_claims(PROJECT, Some("ext"));
    let cases = [
        ("exp", json!(u64::MAX)),
        ("exp", json!(1e300)),
        ("exp", json!(-1)),
        ("nbf", json!(u64::MAX)),
        ("iat", json!(-1e300)),
        ("exp", json!(253_402_300_800u64)),
    ];
    for (claim, value) in cases {
        let token = key.sign(&with(base(), claim, value.clone()));
        // Twice: the second answer must not come from a cache either.
        for _ in 0..2 {
            let r = gw.get_bearer("/x", &token).await;
            r.assert_invalid_token("malformed token: time claim out of range");
            assert_eq!(r.status, 401, "{claim}={value}: {r:?}");
        }
    }
    assert_eq!(backend.count(), 0, "{:#?}", backend.requests());

    // The gateway is alive and still accepts a sound session.
    let r = gw.get_bearer("/x", &key.sign(&base())).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(backend.count(), 1);
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}
