//! Operations, end to end with the real binary on loopback: admin probes, metrics (requests,
//! connectors, the token cache), request ids, SIGHUP reload (broken and valid files), SIGTERM
//! drain with a slow request in flight, and a grep of everything the gateway logged for the
//! secrets the test sent.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const PROJECT: &str = "P2OpsTestProject";

/// A fresh RS256 signing key.
fn new_key(kid: &str) -> TestKey {
    TestKey::rsa(kid, Algorithm::RS256)
}

/// A session for `sub`, living `ttl_secs` (negative: already expired), whose external token is
/// `EXTSECRET-<sub>`.
fn session_token(key: &TestKey, sub: &str, ttl_secs: i64) -> String {
    let ext = format!("EXTSECRET-{sub}");
    let exp = (now() as i64 + ttl_secs).max(0);
    let claims = with(session_claims(PROJECT, Some(&ext)), "sub", sub.into());
    key.sign(&with(claims, "exp", exp.into()))
}

/// Serves the key's JWKS on `port` (which may have been refused until now).
async fn serve_jwks(port: u16, key: &TestKey) -> JwksServer {
    JwksServer::start_on(port, &jwks(&[key])).await
}

/// The common config part: keys from `jwks_port`, the connector `ext`.
fn base(jwks_port: u16) -> ConfigBuilder {
    let url = format!("http://127.0.0.1:{jwks_port}/v2/keys/{PROJECT}");
    ConfigBuilder::new(PROJECT, &url).connector("ext", json!({"type": "claim"}))
}

/// The route `api` on `/api`.
fn api_route(upstream: &str) -> RouteSpec {
    RouteSpec::new("/api", upstream)
        .name("api")
        .connector("ext")
}

/// The gateway with an admin listener, a pid file and the config's own log level.
async fn start_gateway(config: &ConfigBuilder) -> GatewayProcess {
    let how = Launch {
        admin: true,
        pid_file: true,
        config_log_level: true,
        ..Launch::default()
    };
    GatewayProcess::launch(&config.to_yaml(), how).await
}

/// The `x-request-id` the backend's latest request carried.
fn last_request_id(up: &Backend) -> Option<String> {
    up.last().all("x-request-id").first().map(|v| v.to_string())
}

/// `extoken reload --config <the gateway's config>`, run to completion.
fn extoken_reload(gw: &GatewayProcess) -> Output {
    Command::new(BIN)
        .args(["reload", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap()
}

/// The value of one sample line (`name{labels}` exactly as the text format prints it).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn probes_metrics_and_request_ids() {
    let key = new_key("ops-key");
    let up = Backend::start_with(Duration::ZERO, "upstream ok").await;
    let jwks_port = free_port(); // nobody listens yet
    let gw = start_gateway(&base(jwks_port).route(api_route(&up.url()))).await;

    assert_eq!(gw.admin_get("/healthz").await.unwrap().0, 200);
    let (status, body) = gw.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: ") && body.trim().lines().count() == 1,
        "{body}"
    );
    assert_eq!(gw.admin_get("/.well-known/jwks.json").await.unwrap().0, 404);
    assert_eq!(gw.admin_get("/nope").await.unwrap().0, 404);

    let _jwks = serve_jwks(jwks_port, &key).await;
    gw.wait_ready().await;

    let good = session_token(&key, "U2ops", 600);
    let expired = session_token(&key, "U2old", -600);

    // A client's own id (not a trusted proxy's: tests/forwarding.rs) is replaced by a generated
    // one, forwarded and returned; each request gets its own.
    let mut ids = Vec::new();
    for (path, sent) in [
        ("/api/a", "ops-test-42".to_string()),
        ("/api/b", "x".repeat(200)),
    ] {
        let r = gw
            .client
            .get(gw.url(path))
            .bearer_auth(&good)
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(rid.len(), 32, "{rid}");
        assert!(rid.bytes().all(|b| b.is_ascii_hexdigit()), "{rid}");
        assert_eq!(last_request_id(&up).as_deref(), Some(rid.as_str()));
        ids.push(rid);
    }
    assert_ne!(ids[0], ids[1]);

    // Refusals carry an id too.
    let r = gw.get_bearer("/api/c", &expired).await;
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(gw.get("/api/d").await.status, 401);
    assert_eq!(gw.get_bearer("/elsewhere", &good).await.status, 404);
    assert_eq!(up.count(), 2);

    // Requests are counted in pingora's logging phase, which may run just after the client has
    // its answer: wait until the last one (the 404) is in before reading the rest.
    let settled = eventually(Duration::from_secs(5), || async {
        sample(
            &gw.metrics().await,
            r#"extoken_requests_total{outcome="no_route",route="unmatched"}"#,
        )
        .is_some()
    })
    .await;
    assert!(settled, "the 404 was never counted");
    let m = gw.metrics().await;
    let v = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no {s} in\n{m}"));
    assert_eq!(
        v(r#"extoken_requests_total{outcome="forwarded",route="api"}"#),
        2.0
    );
    assert_eq!(
        v(r#"extoken_requests_total{outcome="unauthorized",route="api"}"#),
        2.0
    );
    assert_eq!(
        v(r#"extoken_requests_total{outcome="no_route",route="unmatched"}"#),
        1.0
    );
    assert_eq!(v(r#"extoken_auth_failures_total{reason="expired"}"#), 1.0);
    assert_eq!(v(r#"extoken_auth_failures_total{reason="missing"}"#), 1.0);
    assert_eq!(
        v(r#"extoken_upstream_responses_total{class="2xx",route="api"}"#),
        2.0
    );
    assert_eq!(
        v(r#"extoken_request_duration_seconds_count{route="api"}"#),
        4.0
    );
    assert!(v(r#"extoken_jwks_fetches_total{result="ok"}"#) >= 1.0);
    assert!(v(r#"extoken_jwks_fetches_total{result="error"}"#) >= 1.0);
    assert_eq!(v("extoken_jwks_keys"), 1.0);
    assert!(v("extoken_jwks_last_success_timestamp_seconds") > 1.7e9);
    assert_eq!(v(r#"extoken_config_reloads_total{result="error"}"#), 0.0);
    assert_eq!(
        v(&format!(
            r#"extoken_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}

/// `extoken_connector_*` and `extoken_cache_*` count calls and lookups as they happen.
#[tokio::test(flavor = "multi_thread")]
async fn connector_and_cache_metrics() {
    let r = rig(Mode::Slow(Duration::from_millis(400)))
        .admin()
        .start()
        .await;
    let token = r.session("U2metrics", &[]);
    assert_eq!(burst(&r.gw, &token, 20).await, vec![200; 20]);
    assert_eq!(r.gw.get_bearer("/m", &token).await.status, 200);
    r.endpoint.set_mode(Mode::Status(400));
    let other = r.session("U2metricsFail", &[]);
    assert_eq!(r.gw.get_bearer("/m", &other).await.status, 503);

    let text = r.gw.metrics().await;
    let value = |series: &str| sample(&text, series).unwrap_or(0.0);
    let lbl = |result: &str| {
        format!("extoken_cache_lookups_total{{connector=\"legacy\",result=\"{result}\"}}")
    };
    assert_eq!(value(&lbl("miss")), 2.0, "one mint per user:\n{text}");
    assert_eq!(
        value(&lbl("coalesced")) + value(&lbl("hit")),
        20.0,
        "{text}"
    );
    assert!(
        value(&lbl("coalesced")) >= 1.0,
        "concurrent misses waited on one call:\n{text}"
    );
    assert_eq!(
        value("extoken_connector_calls_total{connector=\"legacy\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("extoken_connector_calls_total{connector=\"legacy\",result=\"error\"}"),
        1.0
    );
    assert_eq!(
        value("extoken_connector_duration_seconds_count{connector=\"legacy\"}"),
        2.0
    );
    assert_eq!(
        value("extoken_cache_entries{connector=\"legacy\"}"),
        1.0,
        "{text}"
    );
    for secret in [ENDPOINT_BEARER, HMAC_SECRET, "U2metrics"] {
        assert!(!text.contains(secret), "{secret} in metrics");
    }
}

#[tokio::test]
async fn sigterm_drains_a_slow_request_and_exits_zero() {
    let key = new_key("ops-key");
    let slow = Backend::start_with(Duration::from_secs(2), "upstream ok").await;
    let fast = Backend::start_with(Duration::ZERO, "upstream ok").await;
    let jwks_port = free_port();
    let _jwks = serve_jwks(jwks_port, &key).await;
    let config = base(jwks_port)
        .set("shutdown_delay", "1s")
        .set("shutdown_grace", "10s")
        .route(api_route(&slow.url()))
        .route(
            RouteSpec::new("/fast", &fast.url())
                .name("fast")
                .connector("ext"),
        );
    let mut gw = start_gateway(&config).await;
    gw.wait_ready().await;
    let token = session_token(&key, "U2slow", 600);

    let (http, url, t) = (gw.client.clone(), gw.url("/api/slow"), token.clone());
    let in_flight = tokio::spawn(async move { http.get(url).bearer_auth(t).send().await });
    assert!(
        eventually(Duration::from_secs(5), || async { slow.count() == 1 }).await,
        "the slow request never reached the upstream"
    );

    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    let not_ready = eventually(Duration::from_millis(800), || async {
        matches!(gw.admin_get("/readyz").await, Some((503, b)) if b.contains("shutting down"))
    })
    .await;
    assert!(not_ready, "readiness did not flip to 503");
    // Still served during shutdown_delay, but asked to reconnect elsewhere.
    let r = gw.get_bearer("/fast/x", &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));

    let r = in_flight
        .await
        .unwrap()
        .expect("the in-flight request failed");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "upstream ok");

    let status = gw.wait_exit(Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", gw.log()));
    assert!(status.success(), "exit {status}:\n{}", gw.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(12),
        "exited after {:?}",
        signalled.elapsed()
    );
    assert!(!gw.pid_file().exists(), "pid file left behind");
    // Closed for good.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
    // The access lines are written by a batching thread: the last ones were flushed at exit.
    let log = gw.log();
    let lines = |route: &str| {
        log.lines()
            .filter(|l| l.contains("extoken::access") && l.contains(&format!("route=\"{route}\"")))
            .count()
    };
    assert_eq!((lines("api"), lines("fast")), (1, 1), "{log}");
}

#[tokio::test]
async fn sighup_reload_keeps_a_broken_file_out_and_applies_a_valid_one() {
    let key = new_key("ops-key");
    let up = Backend::start_with(Duration::ZERO, "upstream ok").await;
    let jwks_port = free_port();
    let _jwks = serve_jwks(jwks_port, &key).await;
    let mut gw = start_gateway(&base(jwks_port).route(api_route(&up.url()))).await;
    gw.wait_ready().await;
    let token = session_token(&key, "U2reload", 600);
    assert_eq!(gw.get_bearer("/api/x", &token).await.status, 200);
    assert_eq!(gw.get_bearer("/new/x", &token).await.status, 404);
    let pid = std::fs::read_to_string(gw.pid_file()).unwrap();
    assert_eq!(pid.trim(), gw.pid().to_string());

    // Broken: a route naming a connector that does not exist. `extoken reload` sends the SIGHUP.
    let broken = base(jwks_port).route(RouteSpec::new("/api", &up.url()).connector("nope"));
    gw.write_config(&broken.to_yaml());
    // `extoken reload` checks the file first and sends nothing; a bare SIGHUP reaches the gateway.
    let out = extoken_reload(&gw);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("routes[0].connector"),
        "{out:?}"
    );
    gw.signal(libc::SIGHUP);
    let counted = eventually(Duration::from_secs(5), || async {
        sample(
            &gw.metrics().await,
            r#"extoken_config_reloads_total{result="error"}"#,
        ) == Some(1.0)
    })
    .await;
    assert!(counted, "reload error not counted:\n{}", gw.log());
    assert!(gw.is_running());
    // The line goes through the batching log writer: it may land a moment after the count.
    let said = eventually(Duration::from_secs(5), || async {
        gw.log().contains("routes[0].connector")
    })
    .await;
    assert!(said, "the log does not say why:\n{}", gw.log());
    assert_eq!(gw.get_bearer("/api/x", &token).await.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.unwrap().0, 200);

    // Valid: a new route, and changed descope settings (a new key store, loaded before the swap).
    let valid = base(jwks_port)
        .descope("leeway", "7s")
        .route(api_route(&up.url()))
        .route(
            RouteSpec::new("/new", &up.url())
                .name("new")
                .connector("ext"),
        );
    gw.write_config(&valid.to_yaml());
    let out = extoken_reload(&gw);
    assert!(out.status.success(), "{out:?}");
    let applied = eventually(Duration::from_secs(10), || async {
        gw.get_bearer("/new/x", &token).await.status == 200
    })
    .await;
    assert!(applied, "the new route never answered:\n{}", gw.log());
    assert_eq!(gw.get_bearer("/api/x", &token).await.status, 200);
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"extoken_config_reloads_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(gw.admin_get("/readyz").await.unwrap().0, 200);
    assert!(gw.is_running());
}

#[tokio::test]
async fn logs_never_carry_tokens_cookies_or_query_strings() {
    let key = new_key("ops-key");
    let other = new_key("ops-other"); // signs tokens the gateway must refuse
    let up = Backend::start_with(Duration::ZERO, "upstream ok").await;
    let jwks_port = free_port();
    let _jwks = serve_jwks(jwks_port, &key).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = base(jwks_port)
        .set("shutdown_delay", "0s")
        .set("log", json!({"format": "json", "level": "debug"}))
        .route(api_route(&up.url()))
        .route(RouteSpec::new("/down", &dead).name("down").connector("ext"));
    let mut gw = start_gateway(&config).await;
    gw.wait_ready().await;

    let good = session_token(&key, "U2leak", 600);
    let expired = session_token(&key, "U2leakold", -600);
    let forged = session_token(&other, "U2forged", 600);
    let malformed = "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2ln-MALFORMEDSECRET";
    let secrets = [
        good.as_str(),
        expired.as_str(),
        forged.as_str(),
        malformed,
        "EXTSECRET-",
        "QUERYSECRET",
        "COOKIESECRET",
        "api_key",
    ];
    let sends: Vec<(&str, Option<&str>, Option<String>)> = vec![
        ("/api/ok?api_key=QUERYSECRET", Some(&good), None),
        (
            "/api/cookie?x=QUERYSECRET",
            None,
            Some(format!("DS={good}; theme=COOKIESECRET")),
        ),
        ("/api/expired?api_key=QUERYSECRET", Some(&expired), None),
        ("/api/forged?api_key=QUERYSECRET", Some(&forged), None),
        ("/api/malformed?api_key=QUERYSECRET", Some(malformed), None),
        (
            "/api/cookie-bad",
            None,
            Some(format!("DS={malformed}; s=COOKIESECRET")),
        ),
        (
            "/down/x?api_key=QUERYSECRET",
            Some(&good),
            Some("s=COOKIESECRET".into()),
        ),
        ("/nowhere?api_key=QUERYSECRET", Some(&good), None),
    ];
    let mut statuses = vec![];
    for (path, bearer, cookie) in &sends {
        let mut r = gw.client.get(gw.url(path));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        statuses.push(r.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 401, 401, 401, 401, 502, 404]);
    assert!(
        up.requests()[0].uri.contains("QUERYSECRET"),
        "query forwarded"
    );

    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(40)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    let log = gw.log();
    for s in secrets {
        assert!(!log.contains(s), "the log contains {s:?}:\n{log}");
    }
    let access: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
        })
        .filter(|j| j["target"] == "extoken::access")
        .collect();
    assert_eq!(
        access.len(),
        sends.len(),
        "one access line per request:\n{log}"
    );
    let outcomes: Vec<&str> = access
        .iter()
        .map(|j| j["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        outcomes,
        [
            "forwarded",
            "forwarded",
            "unauthorized",
            "unauthorized",
            "unauthorized",
            "unauthorized",
            "upstream_error",
            "no_route"
        ]
    );
    assert_eq!(access[0]["path"], "/api/ok");
    assert_eq!(access[2]["reason"], "expired");
    assert!(access[0]["request_id"]
        .as_str()
        .is_some_and(|r| r.len() == 32));
    assert_eq!(access[0]["upstream_status"], 200);
    assert_eq!(access[6]["status"], 502);
}

/// The access line follows the live log level: none at `warn`, one per request after a SIGHUP to
/// `info` (it is written by hand, not through `tracing`'s event path, so this is checked here).
#[tokio::test]
async fn access_lines_follow_the_reloaded_log_level() {
    let key = new_key("ops-key");
    let up = Backend::start_with(Duration::ZERO, "upstream ok").await;
    let jwks_port = free_port();
    let _jwks = serve_jwks(jwks_port, &key).await;
    let at = |level: &str| {
        base(jwks_port)
            .set("log", json!({"level": level}))
            .route(api_route(&up.url()))
    };
    let gw = start_gateway(&at("warn")).await;
    gw.wait_ready().await;
    let token = session_token(&key, "U2level", 600);
    let access = |gw: &GatewayProcess| {
        gw.log()
            .lines()
            .filter(|l| l.contains("extoken::access"))
            .count()
    };
    assert_eq!(gw.get_bearer("/api/quiet", &token).await.status, 200);

    gw.write_config(&at("info").to_yaml());
    gw.signal(libc::SIGHUP);
    let loud = eventually(Duration::from_secs(10), || async {
        gw.get_bearer("/api/loud", &token).await.status == 200 && access(&gw) > 0
    })
    .await;
    assert!(
        loud,
        "no access line after the reload to info:\n{}",
        gw.log()
    );
    let log = gw.log();
    assert!(!log.contains("/api/quiet"), "logged at warn:\n{log}");
    assert!(log.contains("path=/api/loud"), "{log}");
}
