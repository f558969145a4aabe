//! Credentials and the rewrite, end to end: a real JWKS endpoint, a recording backend and the
//! `extoken` binary on loopback. Where the session is found (Bearer, `DS` cookie, several
//! `Cookie` headers), what the backend gets instead (the external token in the configured
//! header and scheme, Descope cookies stripped, everything else as sent), and the challenge when
//! there is no token. Token validation itself is in `token_validation.rs`.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const PROJECT: &str = "P2authTestProject000000000";

async fn setup() -> Setup {
    Setup::root(PROJECT, vec![TestKey::rsa("rsa-1", Algorithm::RS256)]).await
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
    // The client's request id is not (it is no trusted proxy): the gateway's, as answered.
    let rid = r.header("x-request-id").unwrap_or_default();
    assert_eq!(rid.len(), 32, "{rid}");
    assert_eq!(seen.header("x-request-id"), Some(rid));
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
    let keys = vec![TestKey::rsa("rsa-1", Algorithm::RS256)];
    let s = Setup::start(PROJECT, keys, |config, up| {
        let route =
            |prefix: &str, name: &str| RouteSpec::new(prefix, up).name(name).connector("ext");
        config
            .route(
                route("/legacy", "legacy")
                    .set("header", "X-Legacy-Token")
                    .set("scheme", ""),
            )
            .route(route("/token", "tokscheme").set("scheme", "Token"))
            .route(route("/bare", "bare").set("scheme", ""))
            .route(route("/strip", "strip").set("strip_cookies", json!(["legacy_sid"])))
            .route(root_route(up))
    })
    .await;
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

    // A route's strip_cookies adds to DS and DSR, never replaces them: the refresh token reaches
    // no backend whatever the route says. The other pairs pass byte for byte, in order.
    let r =
        s.gw.send(
            s.gw.client
                .get(s.gw.url("/strip"))
                .bearer_auth(&token)
                .header(
                    "Cookie",
                    r#"theme=dark; DS=x; legacy_sid=s;DSR=r; pref="a=b c"; keep=k"#,
                ),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.backend.take().remove(0);
    assert_eq!(seen.all("cookie"), [r#"theme=dark; pref="a=b c"; keep=k"#]);
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
