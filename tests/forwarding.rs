//! What the backend is told about the way a request came, through the real binary: forwarding
//! headers say what extoken saw unless the peer is a trusted proxy, a client's path and method
//! overrides never reach a backend, and a request id is the gateway's unless a trusted proxy gave
//! one (backend, response and access line agree on it).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const PROJECT: &str = "P2forwardingTestProject000";

/// The forwarding family beyond the five extoken sets: overrides some frameworks route on
/// (Symfony's `X-Original-URL`/`X-Rewrite-URL`, CVE-2018-14773), as a client would send them.
const OVERRIDES: [(&str, &str); 10] = [
    ("X-Forwarded-Port", "1"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "internal.example"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Uri", "/admin/users"),
    ("X-Forwarded-Method", "DELETE"),
    ("X-Original-URL", "/admin"),
    ("X-Original-URI", "/admin"),
    ("X-Original-Method", "DELETE"),
    ("X-Rewrite-URL", "/admin"),
];

/// A gateway whose one open route forwards to `backend`, trusting `proxies`, with underscore
/// names forwarded (so `_` twins are in play) and JSON log lines (so the access line is read).
async fn gateway(backend: &Backend, proxies: &str) -> GatewayProcess {
    let config = ConfigBuilder::new(PROJECT, "http://127.0.0.1:1/k")
        .ext_connector()
        .set("trusted_proxies", json!([proxies]))
        .set("limits", json!({"underscore_headers": "allow"}))
        .set("log", json!({"format": "json"}))
        .route(RouteSpec::new("/", &backend.url()).auth_none());
    GatewayProcess::start(&config.to_yaml()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_say_what_extoken_saw() {
    let spoofed = [
        ("X-Forwarded-For", "10.9.9.9"),
        ("X-Real-IP", "10.9.9.9"),
        ("X-Forwarded-Host", "admin.example.com"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=10.9.9.9"),
    ];
    for trusted in [false, true] {
        let backend = Backend::start().await;
        let proxies = if trusted { "127.0.0.1" } else { "10.0.0.0/8" };
        let gw = gateway(&backend, proxies).await;
        let mut req = gw.client.get(gw.url("/x"));
        for (k, v) in spoofed.iter().chain(&OVERRIDES) {
            req = req.header(*k, *v);
        }
        // The twin a CGI/WSGI backend reads as `X-Original-URL`.
        req = req.header("X_Original_URL", "/admin");
        assert_eq!(gw.send(req).await.status, 200);
        let seen = backend.only();
        let host = format!("127.0.0.1:{}", gw.addr.port());
        let port = gw.addr.port().to_string();
        if trusted {
            assert_eq!(seen.header("x-forwarded-for"), Some("10.9.9.9, 127.0.0.1"));
            assert_eq!(seen.header("x-real-ip"), Some("10.9.9.9"));
            assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
            assert_eq!(
                seen.header("forwarded"),
                Some("for=10.9.9.9, for=127.0.0.1")
            );
            // A trusted proxy's overrides are its to send, its own port included.
            for (k, v) in OVERRIDES {
                assert_eq!(seen.all(k), [v], "{k}");
            }
            assert_eq!(seen.all("x_original_url"), ["/admin"]);
            // Without one, the port it reached extoken on is added.
            backend.take();
            assert_eq!(gw.get("/y").await.status, 200);
            assert_eq!(backend.only().header("x-forwarded-port"), Some(&*port));
        } else {
            assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
            assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
            assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));
            assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
            assert_eq!(
                seen.header("forwarded"),
                Some(format!("for=127.0.0.1;host=\"{host}\";proto=http").as_str())
            );
            // The listener's port, as Traefik says it; no override of the client's passes.
            assert_eq!(seen.all("x-forwarded-port"), [port.as_str()]);
            for (k, _) in &OVERRIDES[1..] {
                assert!(seen.all(k).is_empty(), "{k}: {:?}", seen.headers);
            }
            assert!(seen.all("x_original_url").is_empty(), "{:?}", seen.headers);
        }
    }
}

/// The `request_id` of the access line for `path`, once the logging phase has written it.
async fn access_line_id(gw: &GatewayProcess, path: &str) -> String {
    let mut id = String::new();
    let found = eventually(Duration::from_secs(5), || {
        id = gw
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|j| j["target"] == "extoken::access" && j["path"] == path)
            .and_then(|j| j["request_id"].as_str().map(str::to_string))
            .unwrap_or_default();
        std::future::ready(!id.is_empty())
    })
    .await;
    assert!(found, "no access line for {path}:\n{}", gw.log());
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_is_believed_only_from_a_trusted_proxy() {
    for trusted in [false, true] {
        let backend = Backend::start().await;
        let proxies = if trusted { "127.0.0.1" } else { "10.0.0.0/8" };
        let gw = gateway(&backend, proxies).await;
        let r = gw
            .send(
                gw.client
                    .get(gw.url("/rid"))
                    .header("X-Request-Id", "attacker-id"),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let answered = r.header("x-request-id").unwrap_or_default().to_string();
        let forwarded = backend.only().header("x-request-id").map(str::to_string);
        let logged = access_line_id(&gw, "/rid").await;
        if trusted {
            assert_eq!(answered, "attacker-id");
        } else {
            assert_eq!(answered.len(), 32, "a new id: {answered}");
            assert!(
                answered.bytes().all(|b| b.is_ascii_hexdigit()),
                "{answered}"
            );
        }
        assert_eq!(forwarded.as_deref(), Some(answered.as_str()), "backend");
        assert_eq!(logged, answered, "access line");
    }
}
