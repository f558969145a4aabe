//! The key set's life: not loaded yet (503), loaded late, rotated, flooded with forged kids, and
//! lost (the endpoint goes down, the last good keys stay in use).

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const PROJECT: &str = "P2jwksTestProject00000000";
const UNKNOWN_KEY: &str = "token is signed with an unknown key";

fn token(key: &TestKey, ext: &str) -> String {
    key.sign(&session_claims(PROJECT, Some(ext)))
}

/// The usual config ([`ConfigBuilder::simple`]) with these `descope:` settings.
fn config(jwks_url: &str, upstream: &str, descope: &[(&str, &str)]) -> String {
    let mut config = ConfigBuilder::simple(PROJECT, jwks_url, upstream);
    for (key, value) in descope {
        config = config.descope(key, *value);
    }
    config.to_yaml()
}

/// A backend, a JWKS endpoint publishing `key`, and a gateway (with these `descope:` settings)
/// that has loaded it.
async fn started(key: &TestKey, descope: &[(&str, &str)]) -> (Backend, JwksServer, GatewayProcess) {
    let backend = Backend::start().await;
    let jwks = JwksServer::start(&[key]).await;
    let gw = GatewayProcess::start(&config(&jwks.url(), &backend.url(), descope)).await;
    gw.wait_keys("/", &key.probe_token()).await;
    (backend, jwks, gw)
}

/// Publishes `keys` and waits (bounded) until the gateway accepts a token signed by `newcomer`
/// (one of them, external token `ext`): its unknown `kid` makes the gateway refetch, so it then
/// knows the new set.
async fn publish_and_wait(
    jwks: &JwksServer,
    gw: &GatewayProcess,
    keys: &[&TestKey],
    newcomer: &TestKey,
    ext: &str,
) {
    jwks.set_keys(keys);
    let t = token(newcomer, ext);
    let ok = eventually(Duration::from_secs(5), || async {
        gw.get_bearer("/", &t).await.status == 200
    })
    .await;
    assert!(
        ok,
        "a kid published after start was never accepted:\n{}",
        gw.log()
    );
}

/// Asserts the 503 a request gets while the gateway has no keys.
fn assert_unavailable(r: &Reply) {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("5"), "{r:?}");
    assert_eq!(r.header("www-authenticate"), None, "{r:?}");
    let j = r.json();
    assert_eq!(j["error"], "temporarily_unavailable");
    assert_eq!(j["error_description"], "Descope keys are not available yet");
}

/// Waits (bounded) until the endpoint has been asked at least `n` times in all.
async fn wait_hits(jwks: &JwksServer, n: usize) {
    let ok = eventually(Duration::from_secs(10), || async { jwks.hits() >= n }).await;
    assert!(
        ok,
        "the JWKS endpoint got {} requests, expected {n}",
        jwks.hits()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_keys_means_503_until_the_endpoint_comes_up() {
    let backend = Backend::start().await;
    let key = TestKey::rsa("k1", Algorithm::RS256);
    // Nothing listens on this port yet: every fetch is refused.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/v2/keys/{PROJECT}");
    let gw = GatewayProcess::start(&config(&url, &backend.url(), &[])).await;

    let good = token(&key, "late");
    assert_unavailable(&gw.get_bearer("/a", &good).await);
    // Any token that needs a key waits for keys, forged kid or not.
    let forged = TestKey::rsa("forged", Algorithm::RS256);
    assert_unavailable(&gw.get_bearer("/a", &token(&forged, "x")).await);
    // No token at all needs no key: still the plain 401.
    let r = gw.get("/a").await;
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some(REALM_CHALLENGE))
    );
    assert_eq!(backend.count(), 0);

    // The endpoint comes up: the retry (1 s, then growing) picks the keys up.
    let jwks = JwksServer::start_on(port, &common::jwks(&[&key])).await;
    let ok = eventually(Duration::from_secs(10), || async {
        gw.get_bearer("/a", &good).await.status == 200
    })
    .await;
    assert!(ok, "keys were never loaded after the endpoint came up");
    assert!(jwks.hits() >= 1);
    let seen = backend.only();
    assert_eq!(seen.header("authorization"), Some("Bearer late"));
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_or_garbage_endpoint_means_503_then_recovers() {
    let backend = Backend::start().await;
    let key = TestKey::es256("ec1");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_mode(JwksMode::Status(500));
    let gw = GatewayProcess::start(&config(&jwks.url(), &backend.url(), &[])).await;
    let good = token(&key, "ok");
    wait_hits(&jwks, 1).await;
    assert_unavailable(&gw.get_bearer("/", &good).await);

    // 200 but not a key set, then a key set with no usable key: still no keys.
    jwks.set_body("<html>maintenance</html>");
    jwks.set_mode(JwksMode::Up);
    wait_hits(&jwks, 2).await;
    assert_unavailable(&gw.get_bearer("/", &good).await);
    jwks.set_body(r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#);
    wait_hits(&jwks, 3).await;
    assert_unavailable(&gw.get_bearer("/", &good).await);
    assert_eq!(backend.count(), 0);

    jwks.set_keys(&[&key]);
    let ok = eventually(Duration::from_secs(15), || async {
        gw.get_bearer("/", &good).await.status == 200
    })
    .await;
    assert!(ok, "keys were never loaded");
    assert_eq!(backend.only().header("authorization"), Some("Bearer ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_keys_are_picked_up_and_withdrawn_ones_stop_working() {
    let a = TestKey::rsa("key-a", Algorithm::RS256);
    let b = TestKey::es256("key-b");
    let c = TestKey::ed25519("key-c");
    let (backend, jwks, gw) = started(&a, &[("jwks_min_refetch", "200ms")]).await;

    let ta = token(&a, "from-a");
    assert_eq!(gw.get_bearer("/", &ta).await.status, 200);
    // B is not published yet: unknown.
    let tb = token(&b, "from-b");
    gw.get_bearer("/", &tb)
        .await
        .assert_invalid_token(UNKNOWN_KEY);

    // B is published after start: its tokens are accepted (an unknown kid triggers a refetch).
    publish_and_wait(&jwks, &gw, &[&a, &b], &b, "from-b").await;
    assert_eq!(gw.get_bearer("/", &tb).await.status, 200);
    assert_eq!(
        gw.get_bearer("/", &ta).await.status,
        200,
        "A still published"
    );

    // A is withdrawn. Once a refetch happened (C's unknown kid, after the cooldown), A's tokens
    // — even the one verified and cached before — stop working.
    publish_and_wait(&jwks, &gw, &[&b, &c], &c, "from-c").await;
    let before = backend.count();
    gw.get_bearer("/", &ta)
        .await
        .assert_invalid_token(UNKNOWN_KEY);
    gw.get_bearer("/", &token(&a, "fresh-a"))
        .await
        .assert_invalid_token(UNKNOWN_KEY);
    assert_eq!(
        backend.count(),
        before,
        "a withdrawn key's token reached the backend"
    );
    assert_eq!(gw.get_bearer("/", &tb).await.status, 200);

    let auths = backend.authorizations();
    assert!(
        auths.contains(&"Bearer from-b".to_string())
            && auths.contains(&"Bearer from-c".to_string())
    );
    assert!(!auths.contains(&"Bearer fresh-a".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kid_flood_costs_at_most_one_fetch() {
    let a = TestKey::rsa("real-key", Algorithm::RS256);
    // Default cooldown (30 s) and refresh (5 m): nothing else fetches during the test.
    let (backend, jwks, gw) = started(&a, &[]).await;
    let initial = jwks.hits();
    assert_eq!(initial, 1, "one fetch at start");

    let claims = session_claims(PROJECT, Some("x"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let kid = format!("forged-{i}-{}", now());
        let t = a.sign_with(
            &json!({"alg": "RS256", "kid": kid}),
            Algorithm::RS256,
            &claims,
        );
        let (client, url) = (gw.client.clone(), gw.url("/flood"));
        tasks.spawn(async move {
            Reply::from(client.get(url).bearer_auth(t).send().await.unwrap()).await
        });
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap().assert_invalid_token(UNKNOWN_KEY);
        n += 1;
    }
    assert_eq!(n, 200);
    let after = jwks.hits();
    assert!(
        after <= initial + 1,
        "{} JWKS fetches for 200 forged kids",
        after - initial
    );

    // A second wave within the cooldown fetches nothing.
    for i in 0..20 {
        let t = a.sign_with(
            &json!({"alg": "RS256", "kid": format!("again-{i}")}),
            Algorithm::RS256,
            &claims,
        );
        gw.get_bearer("/flood", &t)
            .await
            .assert_invalid_token(UNKNOWN_KEY);
    }
    assert_eq!(jwks.hits(), after);
    assert_eq!(backend.count(), 0);
    // The real key still works.
    assert_eq!(gw.get_bearer("/ok", &token(&a, "real")).await.status, 200);
    assert_eq!(backend.only().header("authorization"), Some("Bearer real"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kid_refetch_is_single_flight_and_blocks_nobody_else() {
    let a = TestKey::rsa("key-a", Algorithm::RS256);
    let b = TestKey::es256("key-b");
    let (backend, jwks, gw) = started(&a, &[("jwks_timeout", "30s")]).await;
    assert_eq!(jwks.hits(), 1);

    // B is published, but the endpoint now takes its time answering.
    jwks.set_keys(&[&a, &b]);
    jwks.set_mode(JwksMode::Hang);
    let mut waiting = tokio::task::JoinSet::new();
    for i in 0..20 {
        let t = token(&b, &format!("b-{i}"));
        let (client, url) = (gw.client.clone(), gw.url("/b"));
        waiting.spawn(async move {
            Reply::from(client.get(url).bearer_auth(t).send().await.unwrap()).await
        });
    }
    wait_hits(&jwks, 2).await;

    // While that refetch hangs, sessions with a known key are served.
    for i in 0..5 {
        let r = gw.get_bearer("/a", &token(&a, &format!("a-{i}"))).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(backend.count(), 5);
    assert!(
        waiting.try_join_next().is_none(),
        "the B requests should still wait for the refetch"
    );

    // The endpoint answers: every waiting request is served from that one fetch.
    jwks.set_mode(JwksMode::Up);
    let mut n = 0;
    while let Some(r) = waiting.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        n += 1;
    }
    assert_eq!(n, 20);
    assert_eq!(
        jwks.hits(),
        2,
        "one fetch shared by all the requests that needed it"
    );
    assert_eq!(backend.count(), 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_down_after_start_keeps_the_last_good_keys() {
    let a = TestKey::rsa("key-a", Algorithm::PS256);
    let (backend, jwks, gw) = started(
        &a,
        &[
            ("jwks_refresh", "200ms"),
            ("jwks_min_refetch", "100ms"),
            ("jwks_timeout", "1s"),
        ],
    )
    .await;
    let cached = token(&a, "cached");
    assert_eq!(gw.get_bearer("/", &cached).await.status, 200);
    // The background refresh runs.
    let h = jwks.hits();
    wait_hits(&jwks, h + 1).await;

    type Breakage = Box<dyn Fn(&JwksServer)>;
    let failures: [(&str, Breakage); 4] = [
        (
            "connection closed",
            Box::new(|j: &JwksServer| j.set_mode(JwksMode::Drop)),
        ),
        (
            "HTTP 503",
            Box::new(|j: &JwksServer| j.set_mode(JwksMode::Status(503))),
        ),
        (
            "not JSON",
            Box::new(|j: &JwksServer| {
                j.set_body("<html>oops</html>");
                j.set_mode(JwksMode::Up)
            }),
        ),
        (
            "no usable key",
            Box::new(|j: &JwksServer| j.set_body(r#"{"keys":[]}"#)),
        ),
    ];
    for (i, (what, fail)) in failures.iter().enumerate() {
        fail(&jwks);
        // At least one failed fetch before we look.
        let h = jwks.hits();
        wait_hits(&jwks, h + 1).await;
        assert_eq!(
            gw.get_bearer("/", &cached).await.status,
            200,
            "{what}: cached session"
        );
        let fresh = token(&a, &format!("fresh-{i}"));
        let r = gw.get_bearer("/", &fresh).await;
        assert_eq!(
            r.status, 200,
            "{what}: a new session verified with the last good keys: {r:?}"
        );
        // An unknown kid's refetch fails too; the keys stay.
        let forged = TestKey::rsa("other", Algorithm::RS256);
        tokio::time::sleep(Duration::from_millis(120)).await; // past the refetch cooldown
        gw.get_bearer("/", &token(&forged, "x"))
            .await
            .assert_invalid_token(UNKNOWN_KEY);
        assert_eq!(
            gw.get_bearer("/", &token(&a, "after-refetch")).await.status,
            200,
            "{what}"
        );
    }
    let seen = backend.requests();
    assert!(seen
        .iter()
        .all(|r| r.header("authorization") != Some("Bearer x")));
    assert_eq!(seen.len(), 1 + 4 * 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_keys_in_the_set_are_skipped() {
    let backend = Backend::start().await;
    let good = TestKey::rsa("good", Algorithm::RS256);
    let enc = TestKey::rsa("enc", Algorithm::RS256);
    let mut enc_jwk = enc.jwk.clone();
    enc_jwk["use"] = "enc".into();
    let secret = b"the-hmac-secret";
    let hmac_jwk = json!({"kty": "oct", "kid": "hmac", "alg": "HS256", "k": base64_url(secret)});
    let body = json!({"keys": [hmac_jwk, enc_jwk, good.jwk.clone()]}).to_string();
    let jwks = JwksServer::start_raw(&body).await;
    let gw = GatewayProcess::start(&config(&jwks.url(), &backend.url(), &[])).await;
    gw.wait_keys("/", &good.probe_token()).await;

    // The classic confusion: an HS256 token "signed" with a published oct key.
    let hmac = TestKey {
        kid: "hmac".into(),
        alg: Algorithm::HS256,
        encoding: EncodingKey::from_secret(secret),
        jwk: Value::Null,
    };
    let r = gw
        .get_bearer("/", &hmac.sign(&session_claims(PROJECT, Some("x"))))
        .await;
    r.assert_invalid_token("token algorithm is not accepted for its key");
    // Declared RS256, kid of the oct key: that kid is not a verification key at all.
    let r = gw
        .get_bearer(
            "/",
            &good.sign_with(
                &json!({"alg": "RS256", "kid": "hmac"}),
                Algorithm::RS256,
                &session_claims(PROJECT, Some("x")),
            ),
        )
        .await;
    r.assert_invalid_token(UNKNOWN_KEY);
    // An encryption key does not verify sessions.
    gw.get_bearer("/", &token(&enc, "x"))
        .await
        .assert_invalid_token(UNKNOWN_KEY);
    assert_eq!(backend.count(), 0);

    assert_eq!(gw.get_bearer("/", &token(&good, "fine")).await.status, 200);
    assert_eq!(backend.only().header("authorization"), Some("Bearer fine"));
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_file_source() {
    let backend = Backend::start().await;
    let key = TestKey::ed25519("file-key");
    let yaml = ConfigBuilder::from_jwks_file(PROJECT, "keys/set.json")
        .ext_connector()
        .route(RouteSpec::any_path(&backend.url()).connector("ext"))
        .to_yaml();
    // The file is missing at start: 503, like an unreachable endpoint.
    let gw = GatewayProcess::start(&yaml).await;
    let t = token(&key, "from-file");
    assert_unavailable(&gw.get_bearer("/", &t).await);
    // It appears (relative to the config file): loaded on the next retry.
    std::fs::create_dir_all(gw.dir.path().join("keys")).unwrap();
    std::fs::write(gw.dir.path().join("keys/set.json"), common::jwks(&[&key])).unwrap();
    let ok = eventually(Duration::from_secs(10), || async {
        gw.get_bearer("/", &t).await.status == 200
    })
    .await;
    assert!(ok, "the key file was never loaded:\n{}", gw.log());
    assert_eq!(
        backend.only().header("authorization"),
        Some("Bearer from-file")
    );
}

/// A keep-alive connection remembers its last session (no SHA-256 of a token it sent before); the
/// memo must not outlive the key. Same connection throughout: accepted twice, then refused once
/// the key that verified it is withdrawn.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_loses_its_remembered_session_with_the_key() {
    use tokio::io::AsyncWriteExt;

    let a = TestKey::rsa("key-a", Algorithm::RS256);
    let c = TestKey::es256("key-c");
    let (backend, jwks, gw) = started(&a, &[("jwks_min_refetch", "200ms")]).await;

    let ta = token(&a, "from-a");
    let request =
        format!("GET /kept HTTP/1.1\r\nHost: example.com\r\nAuthorization: Bearer {ta}\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(request.as_bytes()).await.unwrap();
        let (status, text) = read_response(&mut s).await;
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(backend.count(), 2);

    // A withdrawn: a refetch (C's unknown kid) makes the gateway see it.
    publish_and_wait(&jwks, &gw, &[&c], &c, "from-c").await;
    let before = backend.count();
    s.write_all(request.as_bytes()).await.unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains(UNKNOWN_KEY), "{text}");
    assert_eq!(
        backend.count(),
        before,
        "the remembered session reached the backend"
    );
}
