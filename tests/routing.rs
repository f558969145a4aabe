//! Routes and the answers that are not about the token: `auth: none`, no route, upstream down,
//! oversized headers, the `Host` an upstream gets.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const PROJECT: &str = "P2routingTestProject00000";

fn token(key: &TestKey, ext: &str) -> String {
    key.sign(&session_claims(PROJECT, Some(ext)))
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_none_routes_forward_everything_but_descope_credentials() {
    let backend = Backend::start().await;
    // No keys can be loaded at all: `auth: none` must not care.
    let dead_jwks = format!("http://127.0.0.1:{}/keys", free_port());
    let up = backend.url();
    let config = ConfigBuilder::new(PROJECT, &dead_jwks)
        .ext_connector()
        .route(RouteSpec::new("/public", &up).name("public").auth_none())
        .route(RouteSpec::new("/", &up).name("api").connector("ext"));
    let gw = GatewayProcess::start(&config.to_yaml()).await;
    let r = gw
        .send(
            gw.client
                .put(gw.url("/public/files/a.txt?version=3&x"))
                .header("Authorization", "Bearer not-even-a-jwt")
                .header("Cookie", "DS=session-cookie; DSR=refresh-cookie; other=1")
                .header("X-Trace", "abc")
                .body("file content"),
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "backend ok"), "{r:?}");
    let seen = backend.only();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.uri, "/public/files/a.txt?version=3&x");
    // Not a Descope session: the public backend's own business.
    assert_eq!(seen.header("authorization"), Some("Bearer not-even-a-jwt"));
    // The session and refresh cookies never reach any backend, `auth: none` included.
    assert_eq!(seen.header("cookie"), Some("other=1"));
    assert_eq!(seen.header("x-trace"), Some("abc"));
    assert_eq!(seen.body, b"file content");
    backend.take();

    // A Descope session as Bearer (even one that could not be verified) is removed too.
    let key = TestKey::rsa("k", Algorithm::RS256);
    let r = gw.get_bearer("/public/x", &token(&key, "x")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(backend.only().header("authorization"), None);
    backend.take();

    // The `auth: required` route of the same gateway still guards: no keys, 503.
    let r = gw.get_bearer("/private", &token(&key, "x")).await;
    assert_eq!(
        (r.status, r.header("retry-after")),
        (503, Some("5")),
        "{r:?}"
    );
    // `/publicity` is not under `/public`.
    assert_eq!(gw.get("/publicity").await.status, 401);
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_longest_prefix_and_host_else_404() {
    let (b1, b2, b3) = (
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    );
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .ext_connector()
        .route(
            RouteSpec::new("/api", &b1.url())
                .name("api")
                .connector("ext"),
        )
        .route(RouteSpec::new("/api/v2", &b2.url()).name("v2").auth_none())
        .route(
            RouteSpec::new("/", &b3.url())
                .name("admin")
                .host("admin.example.com")
                .auth_none(),
        );
    let gw = GatewayProcess::start(&config.to_yaml()).await;
    gw.wait_keys("/api", &key.probe_token()).await;

    assert_eq!(
        gw.get_bearer("/api/items", &token(&key, "t1")).await.status,
        200
    );
    assert_eq!(b1.only().uri, "/api/items");
    assert_eq!(
        gw.get("/api/v2/users").await.status,
        200,
        "the longer prefix wins, and it is auth: none"
    );
    assert_eq!(b2.only().uri, "/api/v2/users");
    let r = gw
        .send(
            gw.client
                .get(gw.url("/dashboard"))
                .header("Host", "ADMIN.example.com:8443"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b3.only().uri, "/dashboard");
    let (b1n, b2n, b3n) = (b1.count(), b2.count(), b3.count());

    // No route: 404 before any auth, whether a token is sent or not.
    for path in ["/", "/apix", "/other/api", "/dashboard"] {
        for r in [
            gw.get(path).await,
            gw.get_bearer(path, &token(&key, "t")).await,
        ] {
            assert_eq!(r.status, 404, "{path}: {r:?}");
            assert_eq!(r.header("www-authenticate"), None);
            let j = r.json();
            assert_eq!(j["error"], "not_found", "{path}");
        }
    }
    let r = gw
        .send(
            gw.client
                .get(gw.url("/dashboard"))
                .header("Host", "other.example.com"),
        )
        .await;
    assert_eq!(r.status, 404, "the host does not match: {r:?}");
    assert_eq!(
        (b1.count(), b2.count(), b3.count()),
        (b1n, b2n, b3n),
        "a 404 reached a backend"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_502_and_the_gateway_carries_on() {
    let backend = Backend::start().await;
    let key = TestKey::es256("k");
    let jwks = JwksServer::start(&[&key]).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .ext_connector()
        .route(
            RouteSpec::new("/down", &closed)
                .name("down")
                .connector("ext"),
        )
        .route(
            RouteSpec::new("/open-down", &closed)
                .name("down-open")
                .auth_none(),
        )
        .route(
            RouteSpec::new("/", &backend.url())
                .name("up")
                .connector("ext"),
        );
    let mut gw = GatewayProcess::start(&config.to_yaml()).await;
    gw.wait_keys("/", &key.probe_token()).await;
    let t = token(&key, "ext");

    assert_eq!(gw.get_bearer("/down/x", &t).await.status, 502);
    assert_eq!(gw.get("/open-down").await.status, 502);
    // Auth still comes first on the dead route.
    let r = gw.get("/down/x").await;
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some(REALM_CHALLENGE))
    );
    gw.get_bearer("/down/x", "garbage")
        .await
        .assert_invalid_token("malformed token: not a JWT");

    assert!(gw.is_running(), "the gateway died:\n{}", gw.log());
    assert_eq!(gw.get_bearer("/fine", &t).await.status, 200);
    assert_eq!(backend.only().uri, "/fine");
}

/// Writes one raw HTTP/1.1 request and reads the answer's status (None if the connection was
/// closed or reset without one).
fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The gateway may answer (and close) before it read everything: a write error is fine.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_are_refused_and_the_gateway_keeps_serving() {
    let backend = Backend::start().await;
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let up = backend.url();
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .ext_connector()
        .route(RouteSpec::new("/open", &up).name("open").auth_none())
        .route(RouteSpec::new("/", &up).name("api").connector("ext"));
    let mut gw = GatewayProcess::start(&config.to_yaml()).await;
    gw.wait_keys("/", &key.probe_token()).await;
    let t = token(&key, "ext");

    let big = "b".repeat(200 * 1024);
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (
            "a 200 KB header, valid session",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nX-Big: {big}\r\n\r\n"
            ),
        ),
        (
            "a 200 KB header, auth: none",
            format!("GET /open HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
        ),
        (
            "a 200 KB cookie",
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nCookie: a={big}\r\n\r\n"
            ),
        ),
        (
            "300 headers",
            format!("GET /open HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
        ),
        (
            "a 2 MB header",
            format!(
                "GET /open HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "c".repeat(2 << 20)
            ),
        ),
    ];
    for (what, req) in &cases {
        let addr = gw.addr;
        let req = req.clone().into_bytes();
        let status = tokio::task::spawn_blocking(move || raw_status(addr, &req))
            .await
            .unwrap();
        assert!(
            matches!(status, Some(431) | Some(400)),
            "{what}: expected 431 or 400, got {status:?}"
        );
        assert!(gw.is_running(), "{what}: the gateway died:\n{}", gw.log());
        assert_eq!(backend.count(), 0, "{what}: reached the backend");
        // ...and the next request is served.
        assert_eq!(gw.get_bearer("/next", &t).await.status, 200, "after {what}");
        assert_eq!(backend.take().len(), 1);
    }
    // Ordinary large-ish headers (8 KB) still pass.
    let r = gw
        .send(
            gw.client
                .get(gw.url("/open/ok"))
                .header("X-Medium", "m".repeat(8 * 1024)),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        backend.only().header("x-medium").map(str::len),
        Some(8 * 1024)
    );
}

/// Hosted backends (Supabase, a Firebase-backed API behind a CDN) route on `Host`.
#[tokio::test(flavor = "multi_thread")]
async fn preserve_host_false_sends_the_upstreams_host() {
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let up = backend.url();
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .connector("ext", json!({"type": "claim"}))
        .route(RouteSpec::new("/kept", &up).connector("ext"))
        .route(
            RouteSpec::new("/hosted", &up)
                .connector("ext")
                .set("preserve_host", false),
        );
    let gw = GatewayProcess::start(&config.to_yaml()).await;
    gw.wait_keys("/kept", &key.probe_token()).await;
    let t = key.sign(&with(
        session_claims(PROJECT, Some("x")),
        "sub",
        "U2host".into(),
    ));
    for path in ["/kept", "/hosted"] {
        let r = gw
            .send(
                gw.client
                    .get(gw.url(path))
                    .bearer_auth(&t)
                    .header("host", "public.example"),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let hosts: Vec<_> = backend
        .requests()
        .iter()
        .map(|q| q.header("host").unwrap().to_string())
        .collect();
    let upstream_host = up.trim_start_matches("http://").to_string();
    assert_eq!(hosts, ["public.example".to_string(), upstream_host]);
}
