//! Session validation and the rewrite, end to end: a real JWKS endpoint, a recording backend and
//! the `extoken` binary on loopback. Every refusal also asserts that the backend received nothing.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const PROJECT: &str = "P2authTestProject000000000";

/// One gateway in front of one backend, keys served by a JWKS endpoint.
struct Setup {
    gw: GatewayProcess,
    backend: Backend,
    _jwks: JwksServer,
    key: TestKey,
    /// The other keys of the served set, in the order given.
    others: Vec<TestKey>,
}

async fn setup_with(keys: Vec<TestKey>, extra_descope: &[&str], routes: &str) -> Setup {
    let backend = Backend::start().await;
    let refs: Vec<&TestKey> = keys.iter().collect();
    let jwks = JwksServer::start(&refs).await;
    let routes = routes.replace("{UP}", &backend.url());
    let yaml = format!(
        "{}{CONNECTORS}routes:\n{routes}",
        descope_block(PROJECT, &jwks.url(), extra_descope)
    );
    let gw = GatewayProcess::start(&yaml).await;
    let mut keys = keys.into_iter();
    let key = keys.next().unwrap();
    gw.wait_keys("/", &key.probe_token()).await;
    Setup {
        gw,
        backend,
        _jwks: jwks,
        key,
        others: keys.collect(),
    }
}

const ROOT_ROUTE: &str = "  - {name: api, path_prefix: /, upstream: '{UP}', connector: ext}\n";

async fn setup() -> Setup {
    setup_with(
        vec![TestKey::rsa("rsa-1", Algorithm::RS256)],
        &[],
        ROOT_ROUTE,
    )
    .await
}

impl Setup {
    fn token(&self, ext: &str) -> String {
        self.key.sign(&session_claims(PROJECT, Some(ext)))
    }

    /// Sends `token` as Bearer, expects the invalid_token 401 with `description`, and checks the
    /// backend saw nothing.
    async fn refused(&self, token: &str, description: &str) {
        let r = self.gw.get_bearer("/refused", token).await;
        r.assert_invalid_token(description);
        assert_eq!(
            self.backend.count(),
            0,
            "a refused request reached the backend"
        );
    }

    /// Sends `token` as Bearer and expects it forwarded with `Authorization: Bearer <ext>`.
    async fn accepted(&self, token: &str, ext: &str) {
        let r = self.gw.get_bearer("/accepted", token).await;
        assert_eq!((r.status, r.body.as_str()), (200, "backend ok"), "{r:?}");
        let seen = self.backend.take();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert_eq!(
            seen[0].header("authorization"),
            Some(format!("Bearer {ext}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_session_is_rewritten_and_the_rest_forwarded_as_sent() {
    let s = setup().await;
    let token = s.token("legacy-abc.123");
    let r =
        s.gw.send(
            s.gw.client
                .patch(s.gw.url("/v1/items/7?x=1&y=two%20words"))
                .header("Authorization", format!("Bearer {token}"))
                .header(
                    "Cookie",
                    "theme=dark; DS=leftover-session; lang=en; DSR=refresh-token",
                )
                .header("X-Custom", "custom value")
                .header("X-Request-Id", "req-42")
                .header("Content-Type", "application/json")
                .body(r#"{"name":"x"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "backend ok");
    assert_eq!(
        r.header("x-backend"),
        Some("yes"),
        "the backend's answer is relayed"
    );

    let seen = s.backend.only();
    assert_eq!(seen.method, "PATCH");
    assert_eq!(seen.uri, "/v1/items/7?x=1&y=two%20words");
    assert_eq!(seen.header("authorization"), Some("Bearer legacy-abc.123"));
    assert_eq!(
        seen.cookies(),
        vec!["theme=dark", "lang=en"],
        "DS and DSR removed, others kept in order"
    );
    assert_eq!(seen.header("x-custom"), Some("custom value"));
    assert_eq!(seen.header("x-request-id"), Some("req-42"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.body, br#"{"name":"x"}"#);
    assert!(
        seen.headers.iter().all(|(_, v)| !v.contains(&token)),
        "the Descope session reached the backend: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cookie_session_is_accepted_and_the_empty_cookie_header_dropped() {
    let s = setup().await;
    let token = s.token("from-cookie");
    let r =
        s.gw.send(
            s.gw.client
                .post(s.gw.url("/submit"))
                .header("Cookie", format!("DS={token}; DSR=refresh"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("hello=world&n=1"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.backend.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/submit");
    assert_eq!(seen.header("authorization"), Some("Bearer from-cookie"));
    assert_eq!(
        seen.all("cookie"),
        Vec::<&str>::new(),
        "only Descope cookies: the header is dropped"
    );
    assert_eq!(seen.body, b"hello=world&n=1");
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    s.backend.take();

    // The session cookie among others, and a `Basic` Authorization that is not ours: replaced.
    let r =
        s.gw.send(
            s.gw.client
                .delete(s.gw.url("/things/1"))
                .header("Authorization", "Basic dXNlcjpwYXNz")
                .header("Cookie", format!("a=1; DS={token}; b=2")),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.backend.only();
    assert_eq!(seen.method, "DELETE");
    assert_eq!(seen.header("authorization"), Some("Bearer from-cookie"));
    assert_eq!(seen.cookies(), vec!["a=1", "b=2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cookies_split_over_several_headers_are_all_cleaned() {
    let s = setup().await;
    let token = s.token("multi");
    let req =
        s.gw.client
            .get(s.gw.url("/m"))
            .header("Cookie", "a=1; DSR=r")
            .header("Cookie", format!("DS={token}"))
            .header("Cookie", "c=3");
    let r = s.gw.send(req).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.backend.only();
    assert_eq!(seen.header("authorization"), Some("Bearer multi"));
    assert_eq!(seen.cookies(), vec!["a=1", "c=3"]);
    assert!(
        seen.all("cookie").iter().all(|v| !v.trim().is_empty()),
        "no empty Cookie header: {seen:?}"
    );
    assert!(seen.headers.iter().all(|(_, v)| !v.contains(&token)));
}

#[tokio::test(flavor = "multi_thread")]
async fn header_wins_over_cookie() {
    let s = setup().await;
    let from_header = s.token("from-header");
    let from_cookie = s.token("from-cookie");
    let r =
        s.gw.send(
            s.gw.client
                .get(s.gw.url("/both"))
                .header("Authorization", format!("bearer {from_header}")) // scheme in any case
                .header("Cookie", format!("DS={from_cookie}")),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.backend.only().header("authorization"),
        Some("Bearer from-header")
    );
    s.backend.take();

    // A bad Bearer is not rescued by a good cookie: the header is the credential.
    let r =
        s.gw.send(
            s.gw.client
                .get(s.gw.url("/both"))
                .header("Authorization", "Bearer not-a-jwt")
                .header("Cookie", format!("DS={from_cookie}")),
        )
        .await;
    r.assert_invalid_token("malformed token: not a JWT");
    assert_eq!(s.backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_header_scheme_and_strip_cookie_routes() {
    let routes = "  - {name: legacy, path_prefix: /legacy, upstream: '{UP}', connector: ext, header: X-Legacy-Token, scheme: ''}\n\
                  \x20 - {name: tokscheme, path_prefix: /token, upstream: '{UP}', connector: ext, scheme: Token}\n\
                  \x20 - {name: bare, path_prefix: /bare, upstream: '{UP}', connector: ext, scheme: ''}\n\
                  \x20 - {name: strip, path_prefix: /strip, upstream: '{UP}', connector: ext, strip_cookies: [DS, tracking]}\n\
                  \x20 - {name: api, path_prefix: /, upstream: '{UP}', connector: ext}\n";
    let s = setup_with(vec![TestKey::rsa("rsa-1", Algorithm::RS256)], &[], routes).await;
    let token = s.token("ext-tok");

    // Another header, no scheme: the Bearer session is removed, the external token goes there.
    assert_eq!(s.gw.get_bearer("/legacy/x", &token).await.status, 200);
    let seen = s.backend.take().remove(0);
    assert_eq!(seen.header("x-legacy-token"), Some("ext-tok"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the Descope Bearer must not reach the backend"
    );

    // Session from the cookie: an unrelated Authorization is left alone.
    let r =
        s.gw.send(
            s.gw.client
                .get(s.gw.url("/legacy/y"))
                .header("Authorization", "Basic dXNlcjpwYXNz")
                .header("Cookie", format!("DS={token}; keep=1")),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.backend.take().remove(0);
    assert_eq!(seen.header("x-legacy-token"), Some("ext-tok"));
    assert_eq!(seen.header("authorization"), Some("Basic dXNlcjpwYXNz"));
    assert_eq!(seen.cookies(), vec!["keep=1"]);

    assert_eq!(s.gw.get_bearer("/token", &token).await.status, 200);
    assert_eq!(
        s.backend.take()[0].header("authorization"),
        Some("Token ext-tok")
    );

    assert_eq!(s.gw.get_bearer("/bare/z", &token).await.status, 200);
    assert_eq!(s.backend.take()[0].header("authorization"), Some("ext-tok"));

    // strip_cookies replaces the default list: DSR is kept here, `tracking` is removed.
    let r =
        s.gw.send(
            s.gw.client
                .get(s.gw.url("/strip"))
                .bearer_auth(&token)
                .header("Cookie", "DS=x; DSR=r; tracking=t; keep=k"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.backend.take().remove(0);
    assert_eq!(seen.cookies(), vec!["DSR=r", "keep=k"]);
    assert_eq!(seen.header("authorization"), Some("Bearer ext-tok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_token_gets_the_realm_challenge() {
    let s = setup().await;
    let basic =
        s.gw.client
            .get(s.gw.url("/x"))
            .header("Authorization", "Basic dXNlcg==");
    let empty_bearer =
        s.gw.client
            .get(s.gw.url("/x"))
            .header("Authorization", "Bearer ");
    let other_cookies =
        s.gw.client
            .get(s.gw.url("/x"))
            .header("Cookie", "XDS=1; DSR=refresh; DS=");
    for req in [
        s.gw.client.get(s.gw.url("/x")),
        basic,
        empty_bearer,
        other_cookies,
    ] {
        let r = s.gw.send(req).await;
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.header("www-authenticate"), Some(REALM_CHALLENGE), "{r:?}");
        assert_eq!(r.json()["error"], "unauthorized");
    }
    assert_eq!(s.backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_their_reason() {
    let s = setup().await;
    let k = &s.key;
    let base = || session_claims(PROJECT, Some("ext"));
    let now = now() as i64;

    s.refused(
        &k.sign(&with(base(), "exp", json!(now - 3600))),
        "token has expired",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "nbf", json!(now + 3600))),
        "token is not yet valid",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "iat", json!(now + 3600))),
        "token is not yet valid",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "exp", Value::Null)),
        "token has no exp claim",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "exp", json!("tomorrow"))),
        "malformed token: time claim is not a number",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "drn", json!("DSR"))),
        "a refresh token is not a session token",
    )
    .await;

    // Signature: another key under our kid; a payload changed after signing.
    let other = TestKey::rsa("rsa-1", Algorithm::RS256);
    s.refused(&other.sign(&base()), "token signature is invalid")
        .await;
    let good = s.token("ext");
    let parts: Vec<&str> = good.split('.').collect();
    let evil = with(base(), "externalToken", json!("admin-token"));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64_url(evil.to_string().as_bytes()),
        parts[2]
    );
    s.refused(&tampered, "token signature is invalid").await;
    let mut sig = parts[2].as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(sig).unwrap()
    );
    s.refused(&flipped, "token signature is invalid").await;
    s.refused(
        &format!("{}.{}.", parts[0], parts[1]),
        "token signature is invalid",
    )
    .await;

    // Keys and algorithms.
    let unknown = TestKey::rsa("rsa-unknown", Algorithm::RS256);
    s.refused(
        &unknown.sign(&base()),
        "token is signed with an unknown key",
    )
    .await;
    let bad_alg = "token algorithm is not accepted for its key";
    for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
        let h = json!({"alg": alg_name(alg), "kid": "rsa-1"});
        s.refused(&k.sign_with(&h, alg, &base()), bad_alg).await;
    }
    let ec = TestKey::es256("ec");
    s.refused(
        &ec.sign_with(
            &json!({"alg": "ES256", "kid": "rsa-1"}),
            Algorithm::ES256,
            &base(),
        ),
        bad_alg,
    )
    .await;
    let none = format!(
        "{}.{}.",
        base64_url(
            json!({"alg": "none", "kid": "rsa-1"})
                .to_string()
                .as_bytes()
        ),
        base64_url(base().to_string().as_bytes())
    );
    s.refused(&none, bad_alg).await;
    let hmac = TestKey {
        kid: "rsa-1".into(),
        alg: Algorithm::HS256,
        encoding: EncodingKey::from_secret(b"shared secret"),
        jwk: Value::Null,
    };
    s.refused(&hmac.sign(&base()), bad_alg).await;
    let no_alg = k.sign_with(&json!({"kid": "rsa-1"}), Algorithm::RS256, &base());
    s.refused(&no_alg, bad_alg).await;
    let no_kid = k.sign_with(&json!({"alg": "RS256"}), Algorithm::RS256, &base());
    s.refused(&no_kid, "malformed token: no kid").await;
    let crit = k.sign_with(
        &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
        Algorithm::RS256,
        &base(),
    );
    s.refused(&crit, "malformed token: unsupported crit header")
        .await;

    // Issuers: the project id, or a URL whose last or second-to-last path segment is it.
    let wrong_iss = "token issuer is not this project";
    for iss in [
        json!("P2someOtherProject"),
        json!(format!("https://{PROJECT}/x")),
        json!(format!("https://{PROJECT}")),
        json!(format!("https://api.descope.com/{PROJECT}/a/b")),
        json!(format!("{PROJECT}x")),
        json!(42),
        Value::Null,
    ] {
        s.refused(&k.sign(&with(base(), "iss", iss)), wrong_iss)
            .await;
    }
    // An aud that does not name the project, when no audience is configured.
    s.refused(
        &k.sign(&with(base(), "aud", json!(["someone-else"]))),
        "token audience is not accepted",
    )
    .await;

    // The external token must be a header-safe string.
    for bad in [
        json!("two words"),
        json!("x\r\nX-Evil: 1"),
        json!("caf\u{e9}"),
    ] {
        s.refused(
            &k.sign(&with(base(), "externalToken", bad)),
            BAD_EXTERNAL_TOKEN,
        )
        .await;
    }
    for missing in [Value::Null, json!(""), json!(123)] {
        s.refused(
            &k.sign(&with(base(), "externalToken", missing)),
            NO_EXTERNAL_TOKEN,
        )
        .await;
    }

    // Not JWTs at all.
    s.refused("not-a-jwt", "malformed token: not a JWT").await;
    s.refused("a.b.c.d", "malformed token: not a JWT").await;
    s.refused("!!!.e30.sig", "malformed token: bad header encoding")
        .await;
    s.refused(
        &format!("{}.e30.sig", base64_url(b"[1,2]")),
        "malformed token: bad header",
    )
    .await;
    s.refused(&"x".repeat(17 * 1024), "token is too long").await;

    // ...and after all that, the same gateway still forwards a good session.
    assert_eq!(s.backend.count(), 0);
    s.accepted(&good, "ext").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_issuers_and_audiences() {
    let s = setup().await;
    let k = &s.key;
    for (i, iss) in [
        PROJECT.to_string(),
        format!("https://api.descope.com/{PROJECT}"),
        format!("https://api.descope.com/{PROJECT}/"),
        format!("https://auth.example.com/v1/apps/agentic/{PROJECT}/server-1"),
    ]
    .into_iter()
    .enumerate()
    {
        let ext = format!("iss-{i}");
        let t = k.sign(&with(
            session_claims(PROJECT, Some(&ext)),
            "iss",
            json!(iss),
        ));
        s.accepted(&t, &ext).await;
    }
    // Without a configured audience, an aud naming the project is fine.
    let t = k.sign(&with(
        session_claims(PROJECT, Some("aud-proj")),
        "aud",
        json!([PROJECT]),
    ));
    s.accepted(&t, "aud-proj").await;
    let t = k.sign(&with(
        session_claims(PROJECT, Some("aud-str")),
        "aud",
        json!(PROJECT),
    ));
    s.accepted(&t, "aud-str").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_audience_must_match() {
    let s = setup_with(
        vec![TestKey::rsa("rsa-1", Algorithm::RS256)],
        &["audience: [aud-a, aud-b]"],
        ROOT_ROUTE,
    )
    .await;
    let k = &s.key;
    let claims = |ext: &str, aud: Value| with(session_claims(PROJECT, Some(ext)), "aud", aud);
    s.accepted(&k.sign(&claims("one", json!("aud-b"))), "one")
        .await;
    s.accepted(&k.sign(&claims("two", json!(["x", "aud-a"]))), "two")
        .await;
    let wrong = "token audience is not accepted";
    s.refused(&k.sign(&claims("e", json!(["x", "y"]))), wrong)
        .await;
    s.refused(&k.sign(&claims("e", Value::Null)), wrong).await;
    s.refused(&k.sign(&claims("e", json!([PROJECT]))), wrong)
        .await;
    s.refused(&k.sign(&claims("e", json!({"aud": "aud-a"}))), wrong)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_accepted_algorithm_family() {
    let keys = vec![
        TestKey::es256("ec-p256"),
        TestKey::rsa("rsa-rs256", Algorithm::RS256),
        TestKey::rsa("rsa-rs512", Algorithm::RS512),
        TestKey::rsa("rsa-ps256", Algorithm::PS256),
        TestKey::ed25519("ed-1"),
    ];
    let s = setup_with(keys, &[], ROOT_ROUTE).await;
    s.accepted(&s.token("es256"), "es256").await;
    for k in &s.others {
        let ext = format!("via-{}", k.kid);
        s.accepted(&k.sign(&session_claims(PROJECT, Some(&ext))), &ext)
            .await;
    }
    // An RSA key whose JWK names RS512 refuses RS256, an EC P-256 key refuses ES384-style claims
    // of another curve, and an Ed25519 key refuses anything but EdDSA.
    let bad_alg = "token algorithm is not accepted for its key";
    let rs512 = &s.others[1];
    let h = json!({"alg": "RS256", "kid": rs512.kid});
    s.refused(
        &rs512.sign_with(&h, Algorithm::RS256, &session_claims(PROJECT, Some("x"))),
        bad_alg,
    )
    .await;
    let ps = &s.others[2];
    let h = json!({"alg": "RS256", "kid": ps.kid});
    s.refused(
        &ps.sign_with(&h, Algorithm::RS256, &session_claims(PROJECT, Some("x"))),
        bad_alg,
    )
    .await;
    let h = json!({"alg": "ES384", "kid": "ec-p256"});
    s.refused(
        &s.key
            .sign_with(&h, Algorithm::ES256, &session_claims(PROJECT, Some("x"))),
        bad_alg,
    )
    .await;
    let h = json!({"alg": "ES256", "kid": "ed-1"});
    s.refused(
        &s.key
            .sign_with(&h, Algorithm::ES256, &session_claims(PROJECT, Some("x"))),
        bad_alg,
    )
    .await;
}

/// base64url without padding.
fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
