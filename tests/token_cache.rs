//! The token cache of the minting connectors, end to end (a real connector endpoint on loopback,
//! the real gateway, a recording backend): concurrent misses coalesce into one call, a refreshed
//! session reuses its token while changed claims mint anew, expiry and refresh-ahead, and
//! eviction on an upstream 401.

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

/// A legacy backend that refuses the first token it is shown (a rotated secret, say).
#[tokio::test(flavor = "multi_thread")]
async fn upstream_401_evicts_the_cached_token() {
    let project = Project::start().await;
    let endpoint = TokenEndpoint::start(OK_10M).await;
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
            s.lock().unwrap().push(auth.clone());
            Ok(if auth.ends_with("-1") {
                response(401, "text/plain", "stale")
            } else {
                response(200, "text/plain", "ok")
            })
        })
    });
    let legacy = HttpServer::serve(handler).await;
    let config = project
        .config()
        .connector("legacy", endpoint.connector())
        .route(
            RouteSpec::any_path(&format!("http://{}", legacy.addr))
                .name("api")
                .connector("legacy"),
        );
    let gw = project.gateway(&config, Launch::default()).await;
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
        *seen.lock().unwrap(),
        [
            "Bearer ext-U2dave-1",
            "Bearer ext-U2dave-2",
            "Bearer ext-U2dave-2"
        ]
    );
}
