//! The token cache of the minting connectors, end to end (a real connector endpoint on loopback,
//! the real gateway, a recording backend): concurrent misses coalesce into one call, a refreshed
//! session reuses its token while changed claims mint anew, expiry and refresh-ahead, and
//! eviction on an upstream 401: only of the token that was sent, at most once per
//! `cache.evict_min_interval`, so provoked 401s cost a handful of mints, not one each.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hyper::body::Incoming;
use hyper::Request;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_concurrent_first_requests_make_one_call() {
    let r = rig(Mode::Slow(Duration::from_millis(400))).start().await;
    let token = r.session("U2crowd", &[]);
    assert_eq!(burst(&r.gw, &token, 500).await, vec![200; 500]);
    assert_eq!(
        r.endpoint.calls(),
        1,
        "concurrent misses must coalesce into one connector call"
    );
    let auths: std::collections::HashSet<String> = r.backend.authorizations().into_iter().collect();
    assert_eq!(auths, ["Bearer ext-U2crowd-1".to_string()].into());
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshed_session_reuses_token_changed_claims_mint_anew() {
    let r = rig(OK_10M).start().await;
    let first = r.session("U2bob", &[("roles", json!(["viewer"]))]);
    // A refreshed session: same user and claims, another iat/exp, so another JWT.
    let refreshed = r.session(
        "U2bob",
        &[("roles", json!(["viewer"])), ("exp", (now() + 900).into())],
    );
    assert_ne!(first, refreshed);
    assert_eq!(r.gw.get_bearer("/", &first).await.status, 200);
    assert_eq!(r.gw.get_bearer("/other/path", &refreshed).await.status, 200);
    assert_eq!(
        r.endpoint.calls(),
        1,
        "same identity: the cached token is reused"
    );
    let promoted = r.session("U2bob", &[("roles", json!(["admin"]))]);
    assert_eq!(r.gw.get_bearer("/", &promoted).await.status, 200);
    assert_eq!(r.endpoint.calls(), 2, "a changed role gets a new token");
    assert_eq!(
        r.backend.authorizations(),
        [
            "Bearer ext-U2bob-1",
            "Bearer ext-U2bob-1",
            "Bearer ext-U2bob-2"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_and_refresh_ahead() {
    // A 3 s token with a 1 s margin: served alone for 1 s, then served while one background re-mint
    // replaces it, and never served in its last second.
    let r = rig(Mode::Ok {
        expires_in: Some(3),
    })
    .cache(json!({"min_margin": "1s"}))
    .start()
    .await;
    let t = r.session("U2carol", &[]);
    let auth = |r: &Rig| {
        r.backend
            .requests()
            .last()
            .and_then(|q| q.header("authorization").map(str::to_string))
    };
    assert_eq!(r.gw.get_bearer("/", &t).await.status, 200);
    assert_eq!(auth(&r).as_deref(), Some("Bearer ext-U2carol-1"));
    assert_eq!(r.gw.get_bearer("/", &t).await.status, 200);
    assert_eq!(r.endpoint.calls(), 1, "fresh entry: a hit");

    tokio::time::sleep(Duration::from_millis(1300)).await; // inside the refresh-ahead window
    assert_eq!(r.gw.get_bearer("/", &t).await.status, 200);
    assert_eq!(
        auth(&r).as_deref(),
        Some("Bearer ext-U2carol-1"),
        "served from cache while refreshing"
    );
    // The call is counted when it starts; the new token is cached when it returns.
    let replaced = eventually(Duration::from_secs(3), || async {
        r.gw.get_bearer("/", &t).await.status == 200
            && auth(&r).as_deref() == Some("Bearer ext-U2carol-2")
    })
    .await;
    assert!(replaced, "the refreshed token replaced it");
    assert_eq!(r.endpoint.calls(), 2, "refresh-ahead runs once");

    tokio::time::sleep(Duration::from_millis(2300)).await; // token 2 is now in its last second
    assert_eq!(r.gw.get_bearer("/", &t).await.status, 200);
    assert_eq!(
        auth(&r).as_deref(),
        Some("Bearer ext-U2carol-3"),
        "an expiring token is never served"
    );
}

/// A legacy backend on loopback whose answer is 401 when `refuses(path, authorization)`, else 200,
/// after `delay(path)`; it records the `Authorization` of every request.
struct Legacy {
    server: HttpServer,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Legacy {
    async fn start(refuses: fn(&str, &str) -> bool, delay: fn(&str) -> Duration) -> Legacy {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = seen.clone();
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let s = s.clone();
            Box::pin(async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let path = req.uri().path().to_string();
                s.lock().unwrap().push(auth.clone());
                tokio::time::sleep(delay(&path)).await;
                Ok(if refuses(&path, &auth) {
                    response(401, "text/plain", "refused")
                } else {
                    response(200, "text/plain", "ok")
                })
            })
        });
        Legacy {
            server: HttpServer::serve(handler).await,
            seen,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn no_delay(_: &str) -> Duration {
    Duration::ZERO
}

/// A gateway whose route `api` sends the `http` connector `legacy`'s tokens to `legacy`, with
/// the `cache:` block `cache` and an admin listener.
async fn legacy_gateway(
    project: &Project,
    endpoint: &TokenEndpoint,
    legacy: &Legacy,
    cache: serde_json::Value,
) -> GatewayProcess {
    let config = project
        .config()
        .connector("legacy", endpoint.connector())
        .set("cache", cache)
        .route(
            RouteSpec::any_path(&format!("http://{}", legacy.server.addr))
                .name("api")
                .connector("legacy"),
        );
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    project.gateway(&config, how).await
}

fn evictions(metrics: &str, result: &str) -> f64 {
    metric_sample(
        metrics,
        &format!("extoken_token_evictions_total{{connector=\"legacy\",result=\"{result}\"}}"),
    )
}

/// A backend that refuses the first token it is shown (a rotated secret, say).
#[tokio::test(flavor = "multi_thread")]
async fn upstream_401_evicts_the_cached_token() {
    let project = Project::start().await;
    let endpoint = TokenEndpoint::start(OK_10M).await;
    let legacy = Legacy::start(|_, auth| auth.ends_with("-1"), no_delay).await;
    let gw = legacy_gateway(&project, &endpoint, &legacy, json!({})).await;
    let t = project.session("U2dave", &[]);
    assert_eq!(
        gw.get_bearer("/", &t).await.status,
        401,
        "the upstream's 401 is passed through"
    );
    assert_eq!(
        gw.get_bearer("/", &t).await.status,
        200,
        "the next request re-mints"
    );
    assert_eq!(gw.get_bearer("/", &t).await.status, 200);
    assert_eq!(endpoint.calls(), 2);
    assert_eq!(
        legacy.seen(),
        [
            "Bearer ext-U2dave-1",
            "Bearer ext-U2dave-2",
            "Bearer ext-U2dave-2"
        ]
    );
    assert_eq!(evictions(&gw.metrics().await, "evicted"), 1.0);
}

/// A session that alternates a path whose backend answers 401 with one that answers 200 cannot
/// turn each 401 into a mint: after one eviction, the next ones within
/// `cache.evict_min_interval` (default 30 s) are suppressed and counted.
#[tokio::test(flavor = "multi_thread")]
async fn alternating_401s_cost_a_handful_of_mints_not_one_each() {
    let project = Project::start().await;
    let endpoint = TokenEndpoint::start(OK_10M).await;
    let legacy = Legacy::start(|path, _| path.starts_with("/bad"), no_delay).await;
    let gw = legacy_gateway(&project, &endpoint, &legacy, json!({})).await;
    let t = project.session("U2eve", &[]);
    for i in 0..20 {
        assert_eq!(gw.get_bearer("/bad", &t).await.status, 401, "round {i}");
        assert_eq!(gw.get_bearer("/ok", &t).await.status, 200, "round {i}");
    }
    let mints = endpoint.calls();
    eprintln!("40 alternating requests (20 upstream 401s): {mints} connector calls");
    assert!(mints <= 3, "{mints} connector calls for 20 provoked 401s");
    let m = gw.metrics().await;
    assert_eq!(evictions(&m, "evicted"), 1.0, "{m}");
    assert_eq!(evictions(&m, "suppressed"), 19.0, "{m}");
    assert_eq!(
        legacy.seen().last().map(String::as_str),
        Some("Bearer ext-U2eve-2"),
        "the token minted after the one eviction is still served"
    );
}

/// Once `evict_min_interval` has passed, a 401 evicts again; and a 401 to a token that is no
/// longer the cached one (it was replaced while the request was upstream) evicts nothing.
#[tokio::test(flavor = "multi_thread")]
async fn evictions_are_spaced_and_only_of_the_token_that_was_sent() {
    let project = Project::start().await;
    let endpoint = TokenEndpoint::start(OK_10M).await;
    let legacy = Legacy::start(
        |path, _| path.starts_with("/bad") || path.starts_with("/slow-bad"),
        |path| {
            if path.starts_with("/slow") {
                Duration::from_millis(1500)
            } else {
                Duration::ZERO
            }
        },
    )
    .await;
    let gw = legacy_gateway(
        &project,
        &endpoint,
        &legacy,
        json!({"evict_min_interval": "1s"}),
    )
    .await;
    let t = project.session("U2fay", &[]);
    assert_eq!(gw.get_bearer("/ok", &t).await.status, 200); // mints ext-1
                                                            // A request with ext-1 that the backend holds for 1.5 s before its 401 ...
    let slow = {
        let req = gw.client.get(gw.url("/slow-bad")).bearer_auth(&t);
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... meanwhile ext-1 is refused and evicted, and ext-2 minted.
    assert_eq!(gw.get_bearer("/bad", &t).await.status, 401);
    assert_eq!(gw.get_bearer("/ok", &t).await.status, 200);
    assert_eq!(endpoint.calls(), 2);
    // The slow 401 to ext-1 arrives after the interval: ext-2 is not evicted for it.
    assert_eq!(slow.await.unwrap().unwrap(), 401);
    assert_eq!(gw.get_bearer("/ok", &t).await.status, 200);
    assert_eq!(
        endpoint.calls(),
        2,
        "a stale token's 401 evicted the fresh one"
    );
    let m = gw.metrics().await;
    assert_eq!(evictions(&m, "stale"), 1.0, "{m}");
    // A 401 to ext-2 evicts it (the stale 401 did not count as an eviction) ...
    assert_eq!(gw.get_bearer("/bad", &t).await.status, 401);
    assert_eq!(gw.get_bearer("/ok", &t).await.status, 200);
    assert_eq!(endpoint.calls(), 3);
    // ... a 401 to ext-3 right after is suppressed ...
    assert_eq!(gw.get_bearer("/bad", &t).await.status, 401);
    assert_eq!(gw.get_bearer("/ok", &t).await.status, 200);
    assert_eq!(
        endpoint.calls(),
        3,
        "evicted twice within evict_min_interval"
    );
    // ... and once the interval has passed, evicted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.get_bearer("/bad", &t).await.status, 401);
    assert_eq!(gw.get_bearer("/ok", &t).await.status, 200);
    assert_eq!(endpoint.calls(), 4, "the interval has passed: evicted");
    let m = gw.metrics().await;
    let counted = ["evicted", "suppressed", "stale"].map(|r| evictions(&m, r));
    assert_eq!(counted, [3.0, 1.0, 1.0], "{m}");
    assert_eq!(
        legacy.seen().last().map(String::as_str),
        Some("Bearer ext-U2fay-4")
    );
}
