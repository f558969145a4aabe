//! Session refresh at the edge, end to end: the real `extoken` binary, a JWKS endpoint, a
//! recording backend, and Descope's refresh endpoint on loopback (`common::refresh`, which insists
//! on the SDK's request). An expired `DS` with a valid `DSR` goes on with a new session (the
//! backend gets its external token, the browser the new cookie); twenty concurrent requests make
//! one call; forged sessions, refused and unreachable refreshes are 401s; metrics count each.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const PROJECT: &str = "P2refreshTests";

struct Rig {
    key: TestKey,
    _jwks: JwksServer,
    endpoint: RefreshEndpoint,
    backend: Backend,
    gw: GatewayProcess,
}

impl Rig {
    /// A gateway refreshing on its route `app` (and not on `/no-refresh`).
    async fn start(mode: RefreshMode) -> Rig {
        let key = TestKey::rsa("k1", Algorithm::RS256);
        let jwks = JwksServer::start(&[&key]).await;
        let endpoint = RefreshEndpoint::start(PROJECT, &key, mode).await;
        let backend = Backend::start().await;
        let refresh = json!({
            "enabled": true,
            "timeout": "500ms",
            "cookie": {"domain": "example.test", "same_site": "strict"},
        });
        let cfg = ConfigBuilder::new(PROJECT, &jwks.url())
            .descope("base_url", endpoint.url())
            .descope("refresh", refresh)
            .ext_connector()
            .route(
                RouteSpec::new("/no-refresh", &backend.url())
                    .connector("ext")
                    .set("refresh_session", false),
            )
            .route(
                RouteSpec::new("/", &backend.url())
                    .name("app")
                    .connector("ext"),
            );
        let gw = GatewayProcess::start_with_admin(&cfg.to_yaml()).await;
        gw.wait_keys("/", &key.probe_token()).await;
        Rig {
            key,
            _jwks: jwks,
            endpoint,
            backend,
            gw,
        }
    }

    fn expired_session(&self) -> String {
        let c = session_claims(PROJECT, Some("stale-ext"));
        self.key.sign(&with(c, "exp", (now() - 60).into()))
    }

    fn dsr(&self) -> String {
        refresh_token(&self.key, PROJECT, "U2browser", 3600)
    }

    async fn get(&self, path: &str, cookie: &str) -> Reply {
        self.gw
            .send(
                self.gw
                    .client
                    .get(self.gw.url(path))
                    .header("cookie", cookie),
            )
            .await
    }

    async fn refresh_metric(&self, result: &str) -> f64 {
        let m = self.gw.metrics().await;
        metric_sample(
            &m,
            &format!("extoken_session_refresh_total{{result=\"{result}\"}}"),
        )
    }
}

/// The value of the `name` cookie a reply sets, and the whole `Set-Cookie` line.
fn set_cookie(r: &Reply, name: &str) -> Option<(String, String)> {
    r.headers.get_all("set-cookie").iter().find_map(|v| {
        let line = v.to_str().ok()?;
        let value = line.split(';').next()?.strip_prefix(&format!("{name}="))?;
        Some((value.to_string(), line.to_string()))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_is_refreshed_and_the_browser_gets_the_new_one() {
    let rig = Rig::start(REFRESH_OK).await;
    let dsr = rig.dsr();
    let cookie = format!("theme=dark; DS={}; DSR={dsr}", rig.expired_session());
    let r = rig.get("/page", &cookie).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", rig.gw.log());
    assert_eq!(rig.endpoint.calls(), 1);
    // The backend got the new session's external token, and neither Descope cookie.
    let seen = rig.backend.only();
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer refreshed-U2browser-1")
    );
    assert_eq!(seen.cookies(), ["theme=dark"]);
    // The browser gets the new session, with the config's attributes and Descope's lifetime.
    let (ds, line) = set_cookie(&r, "DS").expect("a DS cookie");
    assert_eq!(jwt_claims(&ds)["externalToken"], "refreshed-U2browser-1");
    let max_age = line
        .split("; ")
        .find_map(|a| a.strip_prefix("Max-Age="))
        .and_then(|a| a.parse::<u64>().ok())
        .expect("Max-Age");
    assert!(
        (COOKIE_MAX_AGE - 5..=COOKIE_MAX_AGE).contains(&max_age),
        "{line}"
    );
    for attr in ["Path=/", "Domain=example.test", "Secure", "SameSite=Strict"] {
        assert!(line.split("; ").any(|a| a == attr), "{attr} in {line}");
    }
    assert!(set_cookie(&r, "DSR").is_none(), "not rotated: not set");
    assert_eq!(r.header("cache-control"), Some("private"));
    // The next request carries the new session: no refresh, no cookie.
    let next = rig.get("/next", &format!("DS={ds}; DSR={dsr}")).await;
    assert_eq!(next.status, 200);
    assert!(next.headers.get("set-cookie").is_none());
    assert_eq!(rig.endpoint.calls(), 1);
    // The access line says so; no token is in the log.
    let log = rig.gw.log_with("path=/next").await;
    assert!(
        log.contains("path=/page") && log.contains("session_refreshed=true"),
        "{log}"
    );
    assert_eq!(log.matches("session_refreshed=true").count(), 1, "{log}");
    assert!(
        !log.contains(&dsr) && !log.contains(&ds),
        "a token in the log"
    );
    assert_eq!(rig.refresh_metric("refreshed").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_session_cookie_the_refresh_cookie_is_enough_and_a_rotation_is_set() {
    let rig = Rig::start(RefreshMode::Ok {
        delay: Duration::ZERO,
        rotate: true,
    })
    .await;
    let r = rig.get("/", &format!("DSR={}", rig.dsr())).await;
    assert_eq!(r.status, 200, "{r:?}");
    let (dsr, line) = set_cookie(&r, "DSR").expect("the rotated DSR");
    assert_eq!(jwt_claims(&dsr)["drn"], "DSR");
    assert!(line.split("; ").any(|a| a == "HttpOnly"), "{line}");
    assert!(set_cookie(&r, "DS").is_some());
    // Only a refreshing route refreshes.
    let r = rig
        .get("/no-refresh/x", &format!("DSR={}", rig.dsr()))
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some(REALM_CHALLENGE));
    assert_eq!(rig.endpoint.calls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_requests_make_one_refresh_call() {
    let rig = Rig::start(RefreshMode::Ok {
        delay: Duration::from_millis(300),
        rotate: false,
    })
    .await;
    let cookie = format!("DS={}; DSR={}", rig.expired_session(), rig.dsr());
    let started = Instant::now();
    let replies = futures_join(
        (0..20)
            .map(|i| {
                let req = rig
                    .gw
                    .client
                    .get(rig.gw.url(&format!("/asset/{i}")))
                    .header("cookie", cookie.clone());
                async move { Reply::from(req.send().await.unwrap()).await }
            })
            .collect(),
    )
    .await;
    let took = started.elapsed();
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    assert_eq!(rig.endpoint.calls(), 1);
    let sessions: Vec<String> = replies
        .iter()
        .map(|r| set_cookie(r, "DS").expect("every response sets it").0)
        .collect();
    assert!(sessions.iter().all(|s| s == &sessions[0]));
    let auths = rig.backend.authorizations();
    assert_eq!(auths.len(), 20);
    assert!(auths.iter().all(|a| a == "Bearer refreshed-U2browser-1"));
    assert_eq!(rig.refresh_metric("refreshed").await, 1.0);
    assert_eq!(rig.refresh_metric("reused").await, 19.0);
    println!("20 concurrent refreshed requests: {took:?} (the endpoint takes 300 ms)");
}

/// Runs the requests concurrently (tokio tasks), answers in order.
async fn futures_join<F>(futs: Vec<F>) -> Vec<Reply>
where
    F: std::future::Future<Output = Reply> + Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_or_foreign_session_is_never_refreshed() {
    let rig = Rig::start(REFRESH_OK).await;
    let dsr = rig.dsr();
    let forger = TestKey::rsa("k1", Algorithm::RS256);
    let expired = with(
        session_claims(PROJECT, Some("x")),
        "exp",
        (now() - 60).into(),
    );
    let forged = forger.sign(&expired);
    let r = rig.get("/", &format!("DS={forged}; DSR={dsr}")).await;
    r.assert_invalid_token("token signature is invalid");
    let foreign = rig.key.sign(&with(expired, "iss", "P2someoneElse".into()));
    let r = rig.get("/", &format!("DS={foreign}; DSR={dsr}")).await;
    assert_eq!(r.status, 401, "{r:?}");
    // A Bearer client refreshes itself.
    let r = rig
        .gw
        .send(
            rig.gw
                .client
                .get(rig.gw.url("/"))
                .bearer_auth(rig.expired_session())
                .header("cookie", format!("DSR={dsr}")),
        )
        .await;
    r.assert_invalid_token("token has expired");
    // A refresh token that does not verify is not sent to Descope either.
    let bad_dsr = refresh_token(&forger, PROJECT, "U2x", 3600);
    let r = rig
        .get("/", &format!("DS={}; DSR={bad_dsr}", rig.expired_session()))
        .await;
    r.assert_invalid_token("token has expired");
    assert_eq!(rig.endpoint.calls(), 0);
    assert_eq!(rig.backend.count(), 0);
    assert!(r.headers.get("set-cookie").is_none());
    assert_eq!(rig.refresh_metric("invalid").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_refresh_is_the_usual_401_and_remembered() {
    let rig = Rig::start(RefreshMode::Status(401)).await;
    let cookie = format!("DS={}; DSR={}", rig.expired_session(), rig.dsr());
    for _ in 0..3 {
        let r = rig.get("/", &cookie).await;
        r.assert_invalid_token("token has expired");
        assert!(r.headers.get("set-cookie").is_none());
    }
    assert_eq!(
        rig.endpoint.calls(),
        1,
        "a refused token is not asked again at once"
    );
    assert_eq!(rig.backend.count(), 0);
    assert_eq!(rig.refresh_metric("refused").await, 1.0);
    assert_eq!(rig.refresh_metric("rate_limited").await, 2.0);
    let m = rig.gw.metrics().await;
    assert_eq!(
        metric_sample(
            &m,
            "extoken_auth_failures_total{reason=\"refresh_refused\"}"
        ),
        3.0
    );
}

/// A revoked refresh token: the endpoint's 401 with Descope's error body, not a session.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_refresh_token_is_refused() {
    let rig = Rig::start(REFRESH_OK).await;
    let revoked = refresh_token(&rig.key, PROJECT, &format!("{REVOKED_PREFIX}1"), 3600);
    let r = rig.get("/", &format!("DSR={revoked}")).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some(REALM_CHALLENGE));
    assert_eq!(rig.endpoint.calls(), 1);
    assert_eq!(rig.backend.count(), 0);
    assert_eq!(rig.refresh_metric("refused").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn descope_hanging_is_a_401_that_says_so_within_the_timeout() {
    let rig = Rig::start(RefreshMode::Hang).await;
    let cookie = format!("DS={}; DSR={}", rig.expired_session(), rig.dsr());
    let started = Instant::now();
    let r = rig.get("/", &cookie).await;
    let took = started.elapsed();
    r.assert_invalid_token("the session expired and could not be refreshed");
    assert!(r.header("retry-after").is_none());
    assert!(took < Duration::from_secs(2), "{took:?} (timeout 500ms)");
    assert_eq!(rig.backend.count(), 0);
    assert_eq!(rig.refresh_metric("unavailable").await, 1.0);
    let m = rig.gw.metrics().await;
    assert!(metric_sample(&m, "extoken_session_refresh_seconds_count") >= 1.0);
    // Once it answers again (after the outage is no longer remembered), the session refreshes.
    rig.endpoint.set_mode(REFRESH_OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = rig.get("/", &cookie).await;
    assert_eq!(r.status, 200, "{r:?}");
    println!("refresh endpoint hung: answered 401 after {took:?}");
}

/// Not a test: the refresh endpoint above as a process of its own, for the interop suite
/// (`tests/interop/test_session_refresh.py` runs this test binary with `--ignored --exact`), so the
/// Descope Python SDK is a client of this very endpoint. Signs with the `extoken mint` dev key at
/// `INTEROP_REFRESH_KEY` (its JWKS beside it), writes its URL to `INTEROP_REFRESH_URL_FILE`, and
/// serves until killed (at most 30 minutes). Without those variables it returns at once.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a server for tests/interop, started by it"]
async fn interop_refresh_endpoint() {
    let (Ok(key), Ok(project), Ok(url_file)) = (
        std::env::var("INTEROP_REFRESH_KEY"),
        std::env::var("INTEROP_REFRESH_PROJECT"),
        std::env::var("INTEROP_REFRESH_URL_FILE"),
    ) else {
        return;
    };
    let pem = std::fs::read(&key).unwrap();
    let jwks_path = std::path::Path::new(&key).with_extension("jwks.json");
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(jwks_path).unwrap()).unwrap();
    let jwk = jwks["keys"][0].clone();
    let key = TestKey {
        kid: jwk["kid"].as_str().unwrap().to_string(),
        alg: Algorithm::RS256,
        encoding: jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        jwk,
    };
    let endpoint = RefreshEndpoint::start(&project, &key, REFRESH_OK).await;
    std::fs::write(&url_file, endpoint.url()).unwrap();
    tokio::time::sleep(Duration::from_secs(1800)).await;
}
