//! Decision mode end to end: the real binary with its HTTP and gRPC decision listeners, asked the
//! way nginx `auth_request`, Traefik ForwardAuth and Envoy `ext_authz` (HTTP and gRPC) ask, and
//! compared with what its own proxy listener does with the same request: one decision.

mod common;
#[path = "decision/harness.rs"]
mod harness;

use common::*;
use harness::*;
use serde_json::{json, Value};

/// Method, path, the client's headers.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

#[tokio::test(flavor = "multi_thread")]
async fn every_ingress_gets_the_proxys_decision() {
    let d = decider("127.0.0.0/8").await;
    let alice = d.alice();
    let boss = d.project.session(
        "U2boss",
        &[
            ("externalToken", json!("ext-boss")),
            ("roles", json!(["admin"])),
        ],
    );
    let bearer_alice = format!("Bearer {alice}");
    let bearer_boss = format!("Bearer {boss}");
    let cookie_alice = format!("DS={alice}; theme=dark");
    let cases: Vec<Case> = vec![
        ("GET", "/api/x", vec![]),
        (
            "GET",
            "/api/x?q=1",
            vec![("authorization", bearer_alice.as_str())],
        ),
        ("GET", "/api/x", vec![("cookie", cookie_alice.as_str())]),
        (
            "POST",
            "/api/x",
            vec![("authorization", bearer_alice.as_str())],
        ),
        ("GET", "/api/x", vec![("authorization", "Bearer not.a.jwt")]),
        (
            "GET",
            "/admin/x",
            vec![("authorization", bearer_alice.as_str())],
        ),
        (
            "GET",
            "/admin/x",
            vec![("authorization", bearer_boss.as_str())],
        ),
        // Canonicalized before routing: this is /admin/x, not a public path.
        ("GET", "/public/%2e%2e/admin/x", vec![]),
        ("GET", "/public/x", vec![]),
        ("GET", "/api%2Fx", vec![]),
        ("GET", "/elsewhere", vec![]),
        // limits.path_parameters: routed as /admin/x.
        ("GET", "/admin;x=1/x", vec![]),
        // A connector that fails: 503, fail closed.
        (
            "GET",
            "/down/x",
            vec![("authorization", bearer_alice.as_str())],
        ),
        // A method override judged by require.methods, as on the proxy.
        (
            "GET",
            "/api/x",
            vec![
                ("authorization", bearer_alice.as_str()),
                ("x-http-method-override", "DELETE"),
            ],
        ),
    ];
    let mut statuses = std::collections::BTreeSet::new();
    for (method, path, headers) in &cases {
        let mut req = d.gw.client.request(method.parse().unwrap(), d.gw.url(path));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let proxied = d.gw.send(req).await;
        statuses.insert(proxied.status);
        for how in ALL {
            let asked = d.ask(how, method, path, headers).await;
            let what = format!("{how:?} {method} {path} {headers:?}");
            assert_eq!(
                asked.status, proxied.status,
                "{what}: {asked:?} vs {proxied:?}"
            );
            if proxied.status == 200 {
                assert!(asked.body.is_empty(), "{what}: an allow has no body");
                continue;
            }
            assert_eq!(asked.body, proxied.body, "{what}");
            for h in ["www-authenticate", "retry-after", "content-type"] {
                assert_eq!(
                    asked.headers.get(h).map(String::as_str),
                    proxied.header(h),
                    "{what}: {h}"
                );
            }
        }
    }
    // The cases cover every kind of answer.
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        [200, 400, 401, 403, 404, 503]
    );
    // Nothing but the proxied requests reached the backend.
    let allowed = d.backend.count();
    assert_eq!(allowed, 4, "proxied allows only");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_says_what_to_set_and_what_to_remove() {
    let d = decider("127.0.0.1/32").await;
    let alice = d.alice();
    let cookie = format!("theme=dark; DS={alice}; DSR=refresh");
    let headers = [
        ("cookie", cookie.as_str()),
        ("x-user-id", "U2mallory"),
        ("x_user_id", "U2mallory"),
    ];
    for how in ALL {
        let a = d.ask(how, "GET", "/api/x", &headers).await;
        assert_eq!(a.status, 200, "{how:?}: {a:?}");
        let h = |n: &str| a.headers.get(n).map(String::as_str);
        assert_eq!(h("authorization"), Some("Bearer ext-alice"), "{how:?}");
        assert_eq!(h("x-user-id"), Some("U2alice"), "{how:?}");
        assert_eq!(h("cookie"), Some("theme=dark"), "{how:?}");
        if !matches!(how, Ingress::EnvoyGrpc) {
            // Envoy's map cannot hold `x_user_id`'s twin beside it (names are joined): over HTTP
            // the client's underscore copy is seen and removed.
            assert!(
                a.remove.contains(&"x_user_id".to_string()),
                "{how:?}: {a:?}"
            );
        }
        assert!(
            !a.remove.contains(&"x-user-id".to_string()),
            "{how:?}: a set name is never removed"
        );
        assert!(!a.remove.contains(&"cookie".to_string()), "{how:?}");
    }
    // An `auth: none` route: allowed, with the Descope cookies gone (nothing else left: removed).
    let only_ds = format!("DS={alice}");
    for how in ALL {
        let a = d
            .ask(how, "GET", "/public/x", &[("cookie", only_ds.as_str())])
            .await;
        assert_eq!(a.status, 200, "{how:?}: {a:?}");
        assert_eq!(a.headers.get("cookie"), None, "{how:?}");
        assert!(a.remove.contains(&"cookie".to_string()), "{how:?}: {a:?}");
        assert!(
            a.remove.contains(&"x-user-id".to_string()),
            "{how:?}: {a:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_trusted_proxies_are_believed_and_ambiguity_is_refused() {
    let d = decider("10.0.0.0/8").await;
    let alice = d.alice();
    let bearer = format!("Bearer {alice}");
    for how in ALL {
        let a = d
            .ask(
                how,
                "GET",
                "/public/x",
                &[("authorization", bearer.as_str())],
            )
            .await;
        assert_eq!(a.status, 403, "{how:?}: {a:?}");
        let body: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(body["error"], "forbidden", "{how:?}");
    }
    let m = d.gw.metrics().await;
    for p in [
        "nginx",
        "ingress_nginx",
        "traefik",
        "envoy_http",
        "envoy_grpc",
    ] {
        let series =
            format!("extoken_decisions_total{{protocol=\"{p}\",result=\"refused\",route=\"-\"}}");
        assert!(metric_sample(&m, &series) >= 1.0, "{series} in\n{m}");
    }

    let d = decider("127.0.0.0/8").await;
    // nginx passes the client's own X-Forwarded-Uri beside the X-Original-URI it set.
    let spoofed = [
        ("x-forwarded-uri", "/public/x"),
        ("authorization", bearer.as_str()),
    ];
    for how in ALL {
        let a = d.ask(how, "GET", "/admin/x", &spoofed).await;
        assert_eq!(a.status, 400, "{how:?}: {a:?}");
        let a = d
            .ask(how, "GET", "/admin/x", &[("x-original-method", "POST")])
            .await;
        assert_eq!(a.status, 400, "{how:?}: {a:?}");
    }
    let (status, body) = d.gw.admin_get("/readyz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let m = d.gw.metrics().await;
    let series = "extoken_decisions_total{protocol=\"nginx\",result=\"bad_request\",route=\"-\"}";
    assert!(metric_sample(&m, series) >= 2.0, "{series} in\n{m}");
    assert!(
        d.gw.log().contains("decision"),
        "an access line per decision"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_applies_to_both_listeners() {
    let d = decider("127.0.0.0/8").await;
    let alice = d.alice();
    let bearer = format!("Bearer {alice}");
    let headers = [("authorization", bearer.as_str())];
    for how in ALL {
        assert_eq!(
            d.ask(how, "GET", "/api/x", &headers).await.status,
            200,
            "{how:?}"
        );
    }
    // Same listeners (bound at start), trusted_proxies changed: nobody here is trusted any more.
    let cfg = d.config.clone().set(
        "decision",
        decision_block(port_of(&d.http), port_of(&d.grpc), "10.0.0.0/8"),
    );
    d.gw.write_config(&cfg.to_yaml());
    d.gw.signal(libc::SIGHUP);
    let applied = eventually(std::time::Duration::from_secs(10), || async {
        metric_sample(
            &d.gw.metrics().await,
            "extoken_config_reloads_total{result=\"ok\"}",
        ) >= 1.0
    })
    .await;
    assert!(applied, "reload not applied:\n{}", d.gw.log());
    for how in ALL {
        let a = d.ask(how, "GET", "/api/x", &headers).await;
        assert_eq!(a.status, 403, "{how:?}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_decision_listener_has_the_client_limits() {
    let d = decider("127.0.0.0/8").await;
    // A head that never ends is cut at client_header_timeout (read from the live config at each
    // accept), with the 408 the proxy listener gives.
    let cfg = d
        .config
        .clone()
        .set("limits", json!({"client_header_timeout": "1s"}));
    d.gw.write_config(&cfg.to_yaml());
    d.gw.signal(libc::SIGHUP);
    let applied = eventually(std::time::Duration::from_secs(10), || async {
        metric_sample(
            &d.gw.metrics().await,
            "extoken_config_reloads_total{result=\"ok\"}",
        ) >= 1.0
    })
    .await;
    assert!(applied, "reload not applied:\n{}", d.gw.log());
    let mut s = tokio::net::TcpStream::connect(d.http.trim_start_matches("http://"))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, _) =
        tokio::time::timeout(std::time::Duration::from_secs(5), read_response(&mut s))
            .await
            .expect("the decision listener never cut the slow head");
    assert_eq!(status, 408);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_listener_caps_its_connections() {
    let d = decider_with("127.0.0.0/8", |c| {
        c.set("limits", json!({"max_connections": 2}))
    })
    .await;
    let addr = d.grpc.trim_start_matches("http://").to_string();
    let ok = d.ask(Ingress::EnvoyGrpc, "GET", "/public/x", &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    // Peers that never speak hold connections until one is closed at accept, as the proxy
    // listener does. The check's own connection may still be counted for a moment, so the
    // connections are opened one by one until the cap shows (not a fixed two, which raced it).
    use tokio::io::AsyncReadExt;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut held = Vec::new();
    let refused = loop {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(500), c.read(&mut buf)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            break true;
        }
        held.push(c);
        if std::time::Instant::now() > deadline {
            break false;
        }
    };
    assert!(refused, "{} connections open, none refused", held.len());
    assert!(
        held.len() <= 2,
        "{} held beyond max_connections 2",
        held.len()
    );
    // Once they go (the server sees their end at once), checks are served again.
    drop(held);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let again = d.ask(Ingress::EnvoyGrpc, "GET", "/public/x", &[]).await;
    assert_eq!(again.status, 200, "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_listener_cuts_a_connection_that_never_starts() {
    let d = decider_with("127.0.0.0/8", |c| {
        c.set("limits", json!({"client_header_timeout": "1s"}))
    })
    .await;
    let addr = d.grpc.trim_start_matches("http://").to_string();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Silent, and stalled halfway through the preface: both are cut at client_header_timeout.
    for sent in [&b""[..], &b"PRI * HTTP/2.0\r\n"[..]] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // the server's SETTINGS
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{sent:?}: the connection was never cut");
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(800)
                && took < std::time::Duration::from_secs(3),
            "{sent:?}: cut after {took:?}"
        );
    }
    // A client that speaks is served past the deadline.
    let ok = d.ask(Ingress::EnvoyGrpc, "GET", "/public/x", &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
}
