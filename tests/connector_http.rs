//! The generic `http` minting connector end to end: a real connector endpoint on loopback
//! (checks HMAC and auth, counts calls, can be slow, failing or malformed), the real gateway, a
//! recording backend. Covers what the endpoint is sent, where its token goes, the 503 answers
//! when it fails (retries, negative caching, timeouts), `connector_by_tenant`, and OAuth2 client
//! credentials towards the endpoint.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn http_connector_sends_documented_identity_and_forwards_its_token() {
    let r = rig(OK_10M).start().await;
    let token = r.session(
        "U2alice",
        &[
            ("email", json!("alice@example.com")),
            ("dct", json!("T1")),
            ("roles", json!(["admin"])),
            ("tenants", json!({"T1": {"roles": ["owner"]}})),
            ("plan", json!("gold")),
        ],
    );
    let reply =
        r.gw.send(
            r.gw.client
                .post(r.gw.url("/orders/7?x=1"))
                .bearer_auth(token)
                .body("payload"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(r.endpoint.bad_auth(), 0, "HMAC and bearer must verify");
    let seen = r.backend.only();
    assert_eq!(seen.header("authorization"), Some("Bearer ext-U2alice-1"));
    assert_eq!(seen.body, b"payload");

    let (body, headers) = r.endpoint.bodies()[0].clone();
    assert_eq!(body["user"]["id"], "U2alice");
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert_eq!(body["tenant"], "T1");
    assert_eq!(body["roles"], json!(["admin"]));
    assert_eq!(body["tenants"]["T1"]["roles"], json!(["owner"]));
    assert_eq!(
        body["claims"],
        json!({"plan": "gold"}),
        "custom claims only, no standard ones"
    );
    assert_eq!(
        body["request"],
        json!({"route": "api", "method": "POST", "path": "/orders/7"})
    );
    assert!(headers
        .iter()
        .any(|(k, v)| k == "x-static" && v == "static-value"));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/json"));
}

/// A session of `user` gets the connector's 503 naming it; nothing the endpoint answered, and no
/// secret of the connector, shows in the answer or the log; nothing reached the backend.
async fn assert_unavailable(r: &Rig, user: &str) {
    let reply = r.gw.get_bearer("/", &r.session(user, &[])).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.header("retry-after").is_some());
    assert!(
        reply.body.contains("legacy"),
        "names the connector: {}",
        reply.body
    );
    for leaked in [
        "leaked-if-forwarded",
        "token=zzz",
        "x-evil",
        ENDPOINT_BEARER,
        HMAC_SECRET,
    ] {
        assert!(
            !reply.body.contains(leaked) && !r.gw.log().contains(leaked),
            "{leaked} leaked"
        );
    }
    assert_eq!(
        r.backend.count(),
        0,
        "nothing is forwarded without an external token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connector_failures_are_503_and_never_forwarded() {
    for mode in [
        Mode::Status(400),
        Mode::NotJson,
        Mode::NoTokenField,
        Mode::NonAscii,
    ] {
        let r = rig(mode.clone()).start().await;
        assert_unavailable(&r, "U2erin").await;
        assert_eq!(r.endpoint.calls(), 1, "{mode:?}: not retried");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_field_may_be_a_dotted_path() {
    // Mode::NoTokenField answers {"data": {"access": "x"}, ...}: fine once token_field points at it.
    let r = rig(Mode::NoTokenField)
        .connector("token_field", "data.access")
        .start()
        .await;
    let reply = r.gw.get_bearer("/", &r.session("U2nest", &[])).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(r.backend.only().header("authorization"), Some("Bearer x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_then_remembered_briefly() {
    let r = rig(Mode::Status(502))
        .connector("retries", 2)
        .cache(json!({"negative_ttl": "2s"}))
        .start()
        .await;
    assert_unavailable(&r, "U2frank").await;
    assert_eq!(r.endpoint.calls(), 3, "1 call + 2 retries on 5xx");
    assert_unavailable(&r, "U2frank").await;
    assert_eq!(
        r.endpoint.calls(),
        3,
        "a failing connector is not hammered within negative_ttl"
    );
    r.endpoint.set_mode(OK_10M);
    assert!(
        eventually(Duration::from_secs(5), || async {
            r.gw.get_bearer("/", &r.session("U2frank", &[]))
                .await
                .status
                == 200
        })
        .await,
        "recovers after negative_ttl"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_unreachable_connectors_time_out_to_503() {
    let r = rig(Mode::Slow(Duration::from_secs(3)))
        .connector("timeout", "300ms")
        .start()
        .await;
    let start = std::time::Instant::now();
    assert_unavailable(&r, "U2gina").await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the timeout bounds the wait"
    );

    let project = Project::start().await;
    let backend = Backend::start().await;
    let unreachable = json!({
        "type": "http",
        "url": format!("http://127.0.0.1:{}/token", free_port()),
        "ttl": "1m",
        "retries": 1,
    });
    let config = project
        .config()
        .connector("legacy", unreachable)
        .route(RouteSpec::any_path(&backend.url()).connector("legacy"));
    let gw = project.gateway(&config, Launch::default()).await;
    let reply = gw.get_bearer("/", &project.session("U2hank", &[])).await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connector_by_tenant_picks_per_session_tenant() {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let endpoint = TokenEndpoint::start(OK_10M).await;
    let config = project
        .config()
        .connector("ext", json!({"type": "claim"}))
        .connector("legacy", endpoint.connector())
        .route(
            RouteSpec::any_path(&backend.url())
                .connector("ext")
                .set("connector_by_tenant", json!({"T-legacy": "legacy"})),
        );
    let gw = project.gateway(&config, Launch::default()).await;
    let session_of = |tenant: &str| {
        let claims = [
            ("dct", json!(tenant)),
            ("externalToken", json!("from-claim")),
        ];
        project.session("U2ivy", &claims)
    };
    assert_eq!(
        gw.get_bearer("/", &session_of("T-legacy")).await.status,
        200
    );
    assert_eq!(gw.get_bearer("/", &session_of("T-other")).await.status, 200);
    assert_eq!(
        backend.authorizations(),
        ["Bearer ext-U2ivy-1", "Bearer from-claim"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_client_credentials_token_is_fetched_once_and_used() {
    // The token endpoint and the connector endpoint are one server here: /oauth answers the
    // client-credentials grant, /token checks that the access token is presented.
    let project = Project::start().await;
    let backend = Backend::start().await;
    let grants = Arc::new(AtomicUsize::new(0));
    let g = grants.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let g = g.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body =
                String::from_utf8(req.into_body().collect().await.unwrap().to_bytes().to_vec())
                    .unwrap();
            Ok(match path.as_str() {
                "/oauth" => {
                    g.fetch_add(1, Ordering::SeqCst);
                    let basic = format!("Basic {}", STANDARD.encode("client-1:s3cret%21"));
                    if auth != basic
                        || !body.contains("grant_type=client_credentials")
                        || !body.contains("scope=tokens%3Amint")
                    {
                        response(401, "application/json", "{}")
                    } else {
                        response(
                            200,
                            "application/json",
                            r#"{"access_token":"at-123","token_type":"Bearer","expires_in":3600}"#,
                        )
                    }
                }
                _ if auth == "Bearer at-123" => {
                    let user = serde_json::from_str::<Value>(&body).unwrap()["user"]["id"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    response(
                        200,
                        "application/json",
                        json!({"token": format!("oauth-{user}"), "expires_in": 600}).to_string(),
                    )
                }
                _ => response(403, "application/json", "{}"),
            })
        })
    });
    let srv = HttpServer::serve(handler).await;
    let legacy = json!({
        "type": "http",
        "url": format!("http://{}/token", srv.addr),
        "auth": {"oauth2_client_credentials": {
            "token_url": format!("http://{}/oauth", srv.addr),
            "client_id": "client-1",
            "client_secret": "s3cret!",
            "scopes": ["tokens:mint"],
        }},
    });
    let config = project
        .config()
        .connector("legacy", legacy)
        .route(RouteSpec::any_path(&backend.url()).connector("legacy"));
    let gw = project.gateway(&config, Launch::default()).await;
    for user in ["U2jay", "U2kim"] {
        let reply = gw.get_bearer("/", &project.session(user, &[])).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(
        grants.load(Ordering::SeqCst),
        1,
        "the access token is cached"
    );
    assert_eq!(
        backend.authorizations(),
        ["Bearer oauth-U2jay", "Bearer oauth-U2kim"]
    );
}
