//! What the backend is told about the way a request came, through the real binary: forwarding
//! headers say what extoken saw unless the peer is a trusted proxy, and a client's path and
//! method overrides never reach a backend.

mod common;

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
/// names forwarded (so `_` twins are in play).
async fn gateway(backend: &Backend, proxies: &str) -> GatewayProcess {
    let config = ConfigBuilder::new(PROJECT, "http://127.0.0.1:1/k")
        .ext_connector()
        .set("trusted_proxies", json!([proxies]))
        .set("limits", json!({"underscore_headers": "allow"}))
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
