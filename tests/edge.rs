//! The request edge, tried as an attacker would over raw sockets against the real binary: one
//! canonical target and host decide the route and are what the backend gets; no Descope
//! credential reaches a backend. (Forwarding headers and request ids: tests/forwarding.rs.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const PROJECT: &str = "P2edgeTestProject000000000";

/// Sends raw request bytes on a fresh connection; the status and body of the answer.
fn raw(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

fn get(target: &str, host: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

struct Edge {
    gw: GatewayProcess,
    public: Backend,
    api: Backend,
    root: Backend,
    admin: Backend,
    key: TestKey,
    _jwks: JwksServer,
}

/// `/public` (none), `/api` (required), `admin.example.com` (required) and a catch-all `/` (none),
/// each with its own backend so the test knows which route was taken.
async fn edge() -> Edge {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let (public, api, root, admin) = (
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    );
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .ext_connector()
        .route(
            RouteSpec::new("/public", &public.url())
                .name("public")
                .auth_none(),
        )
        .route(
            RouteSpec::new("/api", &api.url())
                .name("api")
                .connector("ext"),
        )
        .route(RouteSpec::new("/", &root.url()).name("root").auth_none())
        .route(
            RouteSpec::new("/", &admin.url())
                .name("admin")
                .host("admin.example.com")
                .connector("ext"),
        );
    let gw = GatewayProcess::start_with_admin(&config.to_yaml()).await;
    Edge {
        gw,
        public,
        api,
        root,
        admin,
        key,
        _jwks: jwks,
    }
}

impl Edge {
    fn session(&self) -> String {
        self.key.sign(&session_claims(PROJECT, Some("ext-token")))
    }
    fn protected_untouched(&self) -> bool {
        self.api.count() == 0 && self.admin.count() == 0
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_are_routed_and_forwarded_in_canonical_form() {
    let e = edge().await;
    let host = "app.example.com";
    // Without credentials: whatever encodes `/api`, the answer is the `/api` route's 401.
    for target in [
        "/public/../api/x",
        "/public/%2e%2e/api/x",
        "/public/.%2E/api/x",
        "/public/%2E./api/x",
        "//api/x",
        "/./api/x",
        "/%61pi/x",
        "/%61%70%69",
        "/api/",
        "/public/a/../../api",
    ] {
        let (status, body) = raw(e.gw.addr, &get(target, host));
        assert_eq!(status, 401, "{target}: {body}");
    }
    // Ambiguous targets: refused, whatever the route.
    for target in [
        "/public/..%2fapi/x",
        "/api%2fx",
        "/api%2Fx",
        "/public/..%5capi/x",
        "/public/..\\api/x",
        "/public/a%00b",
        "/public/%zz",
        "/..",
        "/public/../../api",
        "/public/..;/api/x",
        "*",
    ] {
        let (status, body) = raw(e.gw.addr, &get(target, host));
        assert_eq!(status, 400, "{target}: {body}");
    }
    let (status, _) = raw(
        e.gw.addr,
        "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "OPTIONS *");
    assert!(e.protected_untouched());
    assert_eq!(e.public.count() + e.root.count(), 0, "nothing forwarded");

    // What is forwarded is the canonical target, query untouched.
    for (target, route, forwarded) in [
        (
            "/public/./a/../b?q=%2e%2e/../&x",
            &e.public,
            "/public/b?q=%2e%2e/../&x",
        ),
        ("/public//caf%c3%a9", &e.public, "/public/caf%C3%A9"),
        ("/%70ublic/%7e", &e.public, "/public/~"),
        ("/publicity", &e.root, "/publicity"),
        ("/other/..", &e.root, "/"),
    ] {
        let (status, body) = raw(e.gw.addr, &get(target, host));
        assert_eq!(status, 200, "{target}: {body}");
        let seen = route.take();
        assert_eq!(seen.len(), 1, "{target}");
        assert_eq!(seen[0].uri, forwarded, "{target}");
    }
    // With a session the protected route gets the canonical target too.
    let (status, _) = raw(
        e.gw.addr,
        &format!(
            "GET /public/%2e%2e/%61pi/x?y=1 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            e.session()
        ),
    );
    assert_eq!(status, 200);
    assert_eq!(e.api.only().uri, "/api/x?y=1");
    // Every refusal above is counted as a bad request (in the logging phase: poll for it).
    let counted = eventually(Duration::from_secs(5), || async {
        e.gw.metrics().await.lines().any(|l| {
            l.starts_with("extoken_requests_total")
                && l.contains(r#"outcome="bad_request""#)
                && l.ends_with(" 12")
        })
    })
    .await;
    assert!(counted, "{}", e.gw.metrics().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_are_canonical_and_absolute_form_uses_the_authority() {
    let e = edge().await;
    // All of these name the admin vhost: its route (401 without a session), never the open one.
    for req in [
        get("/x", "admin.example.com."),
        get("/x", "ADMIN.Example.com"),
        get("/x", "admin.example.com:8080"),
        get("http://admin.example.com/x", "admin.example.com"),
        "GET HTTP://admin.example.com/x HTTP/1.0\r\n\r\n".to_string(),
        "GET http://admin.example.com/x HTTP/1.0\r\nConnection: close\r\n\r\n".to_string(),
    ] {
        let (status, body) = raw(e.gw.addr, &req);
        assert_eq!(status, 401, "{req:?}: {body}");
    }
    for req in [
        get("/x", "admin.example.com:8x"),
        get("/x", "admin.example.com:0"),
        get("/x", "admin..example.com"),
        get("/x", "user@admin.example.com"),
        // HTTP/1.1 needs exactly one Host, whatever the form.
        "GET http://admin.example.com/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        "GET /x HTTP/1.1\r\nHost: a.example.com\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n"
            .to_string(),
        get("ftp://admin.example.com/x", "admin.example.com"),
    ] {
        let (status, body) = raw(e.gw.addr, &req);
        assert_eq!(status, 400, "{req:?}: {body}");
    }
    // pingora refuses a Host that differs from the absolute-form authority.
    let (status, _) = raw(e.gw.addr, &get("http://admin.example.com/x", "other.com"));
    assert_eq!(status, 400);
    assert!(e.protected_untouched());

    // The forwarded Host is the canonical one.
    let (status, _) = raw(e.gw.addr, &get("/x", "WWW.Example.com.:8080"));
    assert_eq!(status, 200);
    assert_eq!(e.root.only().header("host"), Some("www.example.com:8080"));
    e.root.take();
    let (status, _) = raw(
        e.gw.addr,
        &get("http://www.example.com/y?z", "www.example.com"),
    );
    assert_eq!(status, 200);
    let seen = e.root.only();
    assert_eq!(
        (seen.uri.as_str(), seen.header("host")),
        ("/y?z", Some("www.example.com"))
    );
    e.root.take();
    // HTTP/1.0 without any host: the upstream's own.
    let (status, _) = raw(e.gw.addr, "GET /z HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    let up = e.root.url();
    assert_eq!(e.root.only().header("host"), up.strip_prefix("http://"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_descope_credential_reaches_a_backend() {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let (open, api) = (Backend::start().await, Backend::start().await);
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .ext_connector()
        .route(
            RouteSpec::new("/open", &open.url())
                .name("open")
                .auth_none(),
        )
        .route(
            RouteSpec::new("/api", &api.url())
                .name("api")
                .connector("ext")
                .set("header", "X-External-Token")
                .set("scheme", ""),
        );
    let gw = GatewayProcess::start(&config.to_yaml()).await;
    let session = key.sign(&session_claims(PROJECT, Some("ext-token")));
    let other = key.sign(&with(
        session_claims(PROJECT, Some("other")),
        "sub",
        "U2other".into(),
    ));

    // A non-ASCII byte in another cookie does not stop the strip (nor the session being found).
    let cookie = format!("name=caf\u{e9}; DS={session}; DSR=refresh");
    for path in ["/api/x", "/open/x"] {
        let r = gw
            .send(
                gw.client
                    .get(gw.url(path))
                    .header("Cookie", cookie.as_bytes()),
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    for b in [&api, &open] {
        let seen = b.only();
        let raw: Vec<&str> = seen.all("cookie");
        assert_eq!(raw.len(), 1);
        assert!(!raw[0].contains("DS"), "{raw:?}");
        assert!(raw[0].starts_with("name=caf"), "{raw:?}");
        b.take();
    }
    assert!(api.count() == 0);

    // Two Authorization headers: 400, nothing forwarded.
    let r = gw
        .send(
            gw.client
                .get(gw.url("/api/x"))
                .header("Authorization", "Basic dXNlcjpwdw==")
                .header("Authorization", format!("Bearer {other}")),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "bad_request");

    // The session as Bearer on a route whose token goes elsewhere: the Bearer is removed; a
    // forged underscore twin of the token header is dropped.
    let r = gw
        .send(
            gw.client
                .get(gw.url("/api/x"))
                .header("Authorization", format!("Bearer {session}"))
                .header("X_External_Token", "forged"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = api.only();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.all("x-external-token"), ["ext-token"]);
    assert!(seen.all("x_external_token").is_empty());
    api.take();

    // On the open route a Descope session as Bearer is removed, any other Bearer kept.
    for (auth, kept) in [
        (format!("Bearer {other}"), false),
        ("Bearer app-own-token".into(), true),
    ] {
        let r = gw
            .send(
                gw.client
                    .get(gw.url("/open/y"))
                    .header("Authorization", &auth),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            open.only().header("authorization").is_some(),
            kept,
            "{auth}"
        );
        open.take();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn underscore_headers_can_be_refused() {
    let backend = Backend::start().await;
    let config = ConfigBuilder::new(PROJECT, "http://127.0.0.1:1/k")
        .ext_connector()
        .set("limits", json!({"underscore_headers": "reject"}))
        .route(RouteSpec::new("/", &backend.url()).auth_none());
    let gw = GatewayProcess::start(&config.to_yaml()).await;
    let r = gw
        .send(gw.client.get(gw.url("/x")).header("X_Token", "v"))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(backend.count(), 0);
    assert_eq!(gw.get("/x").await.status, 200);
}
