//! Minting connectors end to end: a real connector endpoint on loopback (checks HMAC and auth,
//! counts calls, can be slow, failing or malformed), the real gateway, a recording backend.
//! Covers the token cache: coalescing, reuse across session refreshes, expiry, refresh-ahead,
//! negative caching, eviction on an upstream 401; and the 503 answers when a connector fails.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

const PROJECT: &str = "P2connectorTests";
const HMAC_SECRET: &str = "hmac-test-secret";
const ENDPOINT_BEARER: &str = "endpoint-bearer-secret";

#[derive(Clone, Debug, PartialEq)]
enum Mode {
    /// 200 {"token": "ext-<user>-<n>", "expires_in": secs}
    Ok {
        expires_in: Option<u64>,
    },
    Slow(Duration),
    Status(u16),
    NotJson,
    NoTokenField,
    NonAscii,
}

/// One call to the endpoint: the JSON body and the headers it came with.
type Call = (Value, Vec<(String, String)>);

/// The usual endpoint behaviour: a token good for 10 minutes.
const OK_10M: Mode = Mode::Ok {
    expires_in: Some(600),
};

/// A generic-HTTP token endpoint: verifies the bearer and the HMAC of the exact body, records
/// every body, numbers its tokens.
struct TokenEndpoint {
    server: HttpServer,
    calls: Arc<AtomicUsize>,
    bad_auth: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    bodies: Arc<Mutex<Vec<Call>>>,
}

impl TokenEndpoint {
    async fn start(mode: Mode) -> TokenEndpoint {
        let calls = Arc::new(AtomicUsize::new(0));
        let bad_auth = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(mode));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (c, b, m, bo) = (
            calls.clone(),
            bad_auth.clone(),
            mode.clone(),
            bodies.clone(),
        );
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let (calls, bad_auth, mode, bodies) = (c.clone(), b.clone(), m.clone(), bo.clone());
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let header = |k: &str| {
                    parts
                        .headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let key =
                    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HMAC_SECRET.as_bytes());
                let want_sig = STANDARD.encode(aws_lc_rs::hmac::sign(&key, &body).as_ref());
                if header("x-descope-webhook-s256") != want_sig
                    || header("authorization") != format!("Bearer {ENDPOINT_BEARER}")
                {
                    bad_auth.fetch_add(1, Ordering::SeqCst);
                    return Ok(response(401, "application/json", "{}"));
                }
                let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let user = parsed["user"]["id"].as_str().unwrap_or("?").to_string();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                bodies.lock().unwrap().push((parsed, headers));
                let mode = mode.lock().unwrap().clone();
                Ok(match mode {
                    Mode::Ok { expires_in } => {
                        let mut r = json!({ "token": format!("ext-{user}-{n}") });
                        if let Some(e) = expires_in {
                            r["expires_in"] = e.into();
                        }
                        response(200, "application/json", r.to_string())
                    }
                    Mode::Slow(d) => {
                        tokio::time::sleep(d).await;
                        response(
                            200,
                            "application/json",
                            json!({ "token": format!("ext-{user}-{n}"), "expires_in": 600 })
                                .to_string(),
                        )
                    }
                    Mode::Status(s) => {
                        response(s, "application/json", r#"{"token":"leaked-if-forwarded"}"#)
                    }
                    Mode::NotJson => response(200, "text/html", "<html>token=zzz</html>"),
                    Mode::NoTokenField => response(
                        200,
                        "application/json",
                        r#"{"data":{"access":"x"},"expires_in":60}"#,
                    ),
                    Mode::NonAscii => response(
                        200,
                        "application/json",
                        r#"{"token":"bad token\r\nx-evil: 1","expires_in":60}"#,
                    ),
                })
            })
        });
        let server = HttpServer::start(bind(0).await, handler, Arc::new(|| false));
        TokenEndpoint {
            server,
            calls,
            bad_auth,
            mode,
            bodies,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/token", self.server.addr)
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

/// JWKS + backend + endpoint + gateway with an `http` connector named `legacy` on route `/`.
struct Rig {
    key: TestKey,
    _jwks: JwksServer,
    backend: Backend,
    endpoint: TokenEndpoint,
    gw: GatewayProcess,
}

async fn rig(mode: Mode, connector_extra: &str, cache: &str) -> Rig {
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let endpoint = TokenEndpoint::start(mode).await;
    let yaml = format!(
        "{descope}{cache}connectors:\n  legacy:\n    type: http\n    url: \"{url}\"\n    auth: {{bearer: \"{ENDPOINT_BEARER}\"}}\n    hmac_secret: \"{HMAC_SECRET}\"\n    headers: {{X-Static: static-value}}\n    ttl: 10m\n{connector_extra}\
         routes:\n  - name: api\n    path_prefix: /\n    upstream: \"{up}\"\n    connector: legacy\n",
        descope = descope_block(PROJECT, &jwks.url(), &[]),
        url = endpoint.url(),
        up = backend.url(),
    );
    let gw = GatewayProcess::start(&yaml).await;
    gw.wait_keys("/", &key.probe_token()).await;
    Rig {
        key,
        _jwks: jwks,
        backend,
        endpoint,
        gw,
    }
}

/// `n` concurrent GETs with one session token; their statuses.
async fn burst(gw: &GatewayProcess, token: &str, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let req = gw.client.get(gw.url("/burst")).bearer_auth(token);
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for t in tasks {
        statuses.push(t.await.unwrap_or(0));
    }
    statuses
}

fn session(user: &str, extra: &[(&str, Value)]) -> Value {
    let mut c = with(session_claims(PROJECT, None), "sub", user.into());
    for (k, v) in extra {
        c = with(c, k, v.clone());
    }
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn http_connector_sends_documented_identity_and_forwards_its_token() {
    let r = rig(OK_10M, "", "").await;
    let claims = session(
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
                .bearer_auth(r.key.sign(&claims))
                .body("payload"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        r.endpoint.bad_auth.load(Ordering::SeqCst),
        0,
        "HMAC and bearer must verify"
    );
    let seen = r.backend.only();
    assert_eq!(seen.header("authorization"), Some("Bearer ext-U2alice-1"));
    assert_eq!(seen.body, b"payload");

    let (body, headers) = r.endpoint.bodies.lock().unwrap()[0].clone();
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

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_concurrent_first_requests_make_one_call() {
    let r = rig(Mode::Slow(Duration::from_millis(400)), "", "").await;
    let token = r.key.sign(&session("U2crowd", &[]));
    assert_eq!(burst(&r.gw, &token, 500).await, vec![200; 500]);
    assert_eq!(
        r.endpoint.calls(),
        1,
        "concurrent misses must coalesce into one connector call"
    );
    let auths: std::collections::HashSet<String> = r
        .backend
        .requests()
        .iter()
        .map(|q| q.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(auths, ["Bearer ext-U2crowd-1".to_string()].into());
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshed_session_reuses_token_changed_claims_mint_anew() {
    let r = rig(OK_10M, "", "").await;
    let first = r
        .key
        .sign(&session("U2bob", &[("roles", json!(["viewer"]))]));
    // A refreshed session: same user and claims, another iat/exp, so another JWT.
    let refreshed = r.key.sign(&with(
        session("U2bob", &[("roles", json!(["viewer"]))]),
        "exp",
        (now() + 900).into(),
    ));
    assert_ne!(first, refreshed);
    assert_eq!(r.gw.get_bearer("/", &first).await.status, 200);
    assert_eq!(r.gw.get_bearer("/other/path", &refreshed).await.status, 200);
    assert_eq!(
        r.endpoint.calls(),
        1,
        "same identity: the cached token is reused"
    );
    let promoted = r
        .key
        .sign(&session("U2bob", &[("roles", json!(["admin"]))]));
    assert_eq!(r.gw.get_bearer("/", &promoted).await.status, 200);
    assert_eq!(r.endpoint.calls(), 2, "a changed role gets a new token");
    let tokens: Vec<_> = r
        .backend
        .requests()
        .iter()
        .map(|q| q.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(
        tokens,
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
    let r = rig(
        Mode::Ok {
            expires_in: Some(3),
        },
        "",
        "cache:\n  min_margin: 1s\n",
    )
    .await;
    let t = r.key.sign(&session("U2carol", &[]));
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
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
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
    let legacy = HttpServer::start(bind(0).await, handler, Arc::new(|| false));
    let yaml = format!(
        "{}connectors:\n  legacy:\n    type: http\n    url: \"{}\"\n    auth: {{bearer: \"{ENDPOINT_BEARER}\"}}\n    hmac_secret: \"{HMAC_SECRET}\"\n\
         routes:\n  - name: api\n    upstream: \"http://{}\"\n    connector: legacy\n",
        descope_block(PROJECT, &jwks.url(), &[]),
        endpoint.url(),
        legacy.addr
    );
    let gw = GatewayProcess::start(&yaml).await;
    gw.wait_keys("/", &key.probe_token()).await;
    let t = key.sign(&session("U2dave", &[]));
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

async fn assert_unavailable(r: &Rig, user: &str) {
    let reply = r.gw.get_bearer("/", &r.key.sign(&session(user, &[]))).await;
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
        let r = rig(mode.clone(), "", "").await;
        assert_unavailable(&r, "U2erin").await;
        assert_eq!(r.endpoint.calls(), 1, "{mode:?}: not retried");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_field_may_be_a_dotted_path() {
    // Mode::NoTokenField answers {"data": {"access": "x"}, ...}: fine once token_field points at it.
    let r = rig(Mode::NoTokenField, "    token_field: data.access\n", "").await;
    let reply =
        r.gw.get_bearer("/", &r.key.sign(&session("U2nest", &[])))
            .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(r.backend.only().header("authorization"), Some("Bearer x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_then_remembered_briefly() {
    let r = rig(
        Mode::Status(502),
        "    retries: 2\n",
        "cache:\n  negative_ttl: 2s\n",
    )
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
            r.gw.get_bearer("/", &r.key.sign(&session("U2frank", &[])))
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
    let r = rig(
        Mode::Slow(Duration::from_secs(3)),
        "    timeout: 300ms\n",
        "",
    )
    .await;
    let start = std::time::Instant::now();
    assert_unavailable(&r, "U2gina").await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the timeout bounds the wait"
    );

    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let yaml = format!(
        "{}connectors:\n  legacy:\n    type: http\n    url: \"http://127.0.0.1:{}/token\"\n    ttl: 1m\n    retries: 1\n\
         routes:\n  - upstream: \"{}\"\n    connector: legacy\n",
        descope_block(PROJECT, &jwks.url(), &[]),
        free_port(),
        backend.url()
    );
    let gw = GatewayProcess::start(&yaml).await;
    gw.wait_keys("/", &key.probe_token()).await;
    let reply = gw.get_bearer("/", &key.sign(&session("U2hank", &[]))).await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connector_by_tenant_picks_per_session_tenant() {
    let extra = "  ext:\n    type: claim\n";
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let endpoint = TokenEndpoint::start(OK_10M).await;
    let yaml = format!(
        "{}connectors:\n{extra}  legacy:\n    type: http\n    url: \"{}\"\n    auth: {{bearer: \"{ENDPOINT_BEARER}\"}}\n    hmac_secret: \"{HMAC_SECRET}\"\n\
         routes:\n  - upstream: \"{}\"\n    connector: ext\n    connector_by_tenant: {{T-legacy: legacy}}\n",
        descope_block(PROJECT, &jwks.url(), &[]),
        endpoint.url(),
        backend.url()
    );
    let gw = GatewayProcess::start(&yaml).await;
    gw.wait_keys("/", &key.probe_token()).await;
    let legacy_tenant = key.sign(&with(
        session("U2ivy", &[("dct", json!("T-legacy"))]),
        "externalToken",
        "from-claim".into(),
    ));
    let other_tenant = key.sign(&with(
        session("U2ivy", &[("dct", json!("T-other"))]),
        "externalToken",
        "from-claim".into(),
    ));
    assert_eq!(gw.get_bearer("/", &legacy_tenant).await.status, 200);
    assert_eq!(gw.get_bearer("/", &other_tenant).await.status, 200);
    let auths: Vec<_> = backend
        .requests()
        .iter()
        .map(|q| q.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(auths, ["Bearer ext-U2ivy-1", "Bearer from-claim"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_client_credentials_token_is_fetched_once_and_used() {
    // The token endpoint and the connector endpoint are one server here: /oauth answers the
    // client-credentials grant, /token checks that the access token is presented.
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
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
    let srv = HttpServer::start(bind(0).await, handler, Arc::new(|| false));
    let yaml = format!(
        "{}connectors:\n  legacy:\n    type: http\n    url: \"http://{a}/token\"\n    auth:\n      oauth2_client_credentials:\n        token_url: \"http://{a}/oauth\"\n        client_id: client-1\n        client_secret: \"s3cret!\"\n        scopes: [\"tokens:mint\"]\n\
         routes:\n  - upstream: \"{}\"\n    connector: legacy\n",
        descope_block(PROJECT, &jwks.url(), &[]),
        backend.url(),
        a = srv.addr
    );
    let gw = GatewayProcess::start(&yaml).await;
    gw.wait_keys("/", &key.probe_token()).await;
    for user in ["U2jay", "U2kim"] {
        let reply = gw.get_bearer("/", &key.sign(&session(user, &[]))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(
        grants.load(Ordering::SeqCst),
        1,
        "the access token is cached"
    );
    let auths: Vec<_> = backend
        .requests()
        .iter()
        .map(|q| q.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(auths, ["Bearer oauth-U2jay", "Bearer oauth-U2kim"]);
}

// --- signing connectors, verified independently of the gateway's own code ----------------------

async fn one_forwarded_token(
    connectors: &str,
    files: &[(&str, &str)],
    claims: Value,
) -> (String, GatewayProcess) {
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let yaml = format!(
        "{}connectors:\n{connectors}routes:\n  - upstream: \"{}\"\n    connector: c\n",
        descope_block(PROJECT, &jwks.url(), &[]),
        backend.url()
    );
    let gw = GatewayProcess::start_with_files(&yaml, files).await;
    gw.wait_keys("/", &key.probe_token()).await;
    let reply = gw.get_bearer("/", &key.sign(&claims)).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, gw.log());
    let auth = backend.only().header("authorization").unwrap().to_string();
    (auth.strip_prefix("Bearer ").unwrap().to_string(), gw)
}

fn header_of(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn supabase_hs256_token_has_supabase_shape() {
    let connectors = "  c:\n    type: supabase\n    jwt_secret: \"super-secret-jwt-token-with-at-least-32-characters\"\n    expires_in: 30m\n    issuer: \"https://ref.supabase.co/auth/v1\"\n    claims:\n      tenant: dct\n      app_metadata.roles: roles\n";
    let claims = session(
        "U2supa",
        &[
            ("email", json!("s@example.com")),
            ("dct", json!("T9")),
            ("roles", json!(["editor"])),
        ],
    );
    let (token, _gw) = one_forwarded_token(connectors, &[], claims).await;
    assert!(
        header_of(&token).get("kid").is_none(),
        "HS256 tokens carry no kid (PostgREST)"
    );
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["authenticated"]);
    v.set_issuer(&["https://ref.supabase.co/auth/v1"]);
    let c = jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(b"super-secret-jwt-token-with-at-least-32-characters"),
        &v,
    )
    .unwrap()
    .claims;
    let ns = uuid::Uuid::parse_str("dbd8928c-bb64-505a-830f-43f6b6e8fabd").unwrap();
    assert_eq!(c["sub"], uuid::Uuid::new_v5(&ns, b"U2supa").to_string());
    assert_eq!(c["descope_user_id"], "U2supa");
    assert_eq!(c["role"], "authenticated");
    assert_eq!(c["email"], "s@example.com");
    assert_eq!(c["tenant"], "T9");
    assert_eq!(c["app_metadata"]["roles"], json!(["editor"]));
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        1800
    );
    // The wrong secret must fail: the check above is not vacuous.
    assert!(jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(b"another-secret"),
        &v
    )
    .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn firebase_custom_token_matches_firebase_admin_shape() {
    let pem = extoken::mint::generate_pem().unwrap();
    let sa = json!({
        "type": "service_account", "project_id": "demo-extoken", "private_key_id": "pkid-123",
        "private_key": pem, "client_email": "svc@demo-extoken.iam.gserviceaccount.com",
    });
    let connectors = "  c:\n    type: firebase\n    service_account_file: sa.json\n    tenant_id: tenant-a\n    claims:\n      roles: roles\n";
    let claims = session("U2fire", &[("roles", json!(["admin"]))]);
    let (token, _gw) =
        one_forwarded_token(connectors, &[("sa.json", &sa.to_string())], claims).await;
    let h = header_of(&token);
    assert_eq!(
        (h["alg"].as_str(), h["kid"].as_str(), h["typ"].as_str()),
        (Some("RS256"), Some("pkid-123"), Some("JWT"))
    );
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[extoken::exchange::FIREBASE_AUDIENCE]);
    let c = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
        .unwrap()
        .claims;
    assert_eq!(c["iss"], "svc@demo-extoken.iam.gserviceaccount.com");
    assert_eq!(c["sub"], c["iss"]);
    assert_eq!(c["uid"], "U2fire");
    assert_eq!(c["claims"], json!({"roles": ["admin"]}));
    assert_eq!(c["tenant_id"], "tenant-a");
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        3600
    );
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "aud",
            "claims",
            "exp",
            "iat",
            "iss",
            "sub",
            "tenant_id",
            "uid"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_connector_signs_with_its_own_key() {
    let pem = extoken::mint::generate_pem().unwrap();
    let connectors = "  c:\n    type: jwt\n    algorithm: RS256\n    key_file: inhouse.pem\n    kid: inhouse-1\n    issuer: \"https://gw.example\"\n    audience: legacy-api\n    expires_in: 5m\n    claims: {tenant: dct}\n";
    let claims = session("U2jwt", &[("dct", json!("T3"))]);
    let (token, _gw) = one_forwarded_token(connectors, &[("inhouse.pem", &pem)], claims).await;
    assert_eq!(header_of(&token)["kid"], "inhouse-1");
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&["legacy-api"]);
    v.set_issuer(&["https://gw.example"]);
    let c = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
        .unwrap()
        .claims;
    assert_eq!(
        (c["sub"].as_str(), c["tenant"].as_str()),
        (Some("U2jwt"), Some("T3"))
    );
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
}

#[test]
fn check_names_broken_connector_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bad-sa.json"), r#"{"client_email":"x@y"}"#).unwrap();
    let cases = [
        ("c:\n    type: supabase\n", "connectors.c.jwt_secret"),
        (
            "c:\n    type: supabase\n    jwt_secret: s\n    signing_key: k.pem\n",
            "connectors.c.signing_key: jwt_secret and signing_key are exclusive",
        ),
        (
            "c:\n    type: firebase\n",
            "connectors.c.service_account_file: set service_account_file or service_account_json",
        ),
        (
            "c:\n    type: supabase\n    signing_key: missing.json\n",
            "connectors.c.signing_key: cannot read",
        ),
        (
            "c:\n    type: jwt\n    key_file: bad.pem\n    issuer: x\n",
            "connectors.c.key_file",
        ),
        (
            "c:\n    type: firebase\n    service_account_file: bad-sa.json\n",
            "connectors.c.service_account_file: not a service account JSON",
        ),
        (
            "c:\n    type: firebase\n    service_account_file: bad-sa.json\n    mode: id_token\n",
            "connectors.c.api_key: required when mode is id_token",
        ),
        ("c:\n    type: http\n    url: ftp://x\n", "connectors.c.url"),
        (
            "c:\n    type: supabase\n    jwt_secret: s\n    claims: {sub: dct}\n",
            "connectors.c.claims.sub",
        ),
        (
            "c:\n    type: firebase\n    service_account_json: '{}'\n    claims: {firebase: dct}\n",
            "connectors.c.claims.firebase",
        ),
    ];
    for (connector, want) in cases {
        let cfg = dir.path().join("gateway.yaml");
        std::fs::write(
            &cfg,
            format!("descope: {{project_id: P, jwks_url: 'http://127.0.0.1:1/k'}}\nconnectors:\n  {connector}routes:\n  - {{upstream: 'http://127.0.0.1:1', connector: c}}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{connector}: {err}");
        assert!(
            err.contains(want),
            "{connector}: expected {want:?} in {err}"
        );
        assert!(!err.contains("AAAA"), "no key material in errors");
    }
}

/// Hosted backends (Supabase, a Firebase-backed API behind a CDN) route on `Host`.
#[tokio::test(flavor = "multi_thread")]
async fn preserve_host_false_sends_the_upstreams_host() {
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let yaml = format!(
        "{}connectors:\n  ext:\n    type: claim\nroutes:\n  - {{path_prefix: /kept, upstream: \"{u}\", connector: ext}}\n  - {{path_prefix: /hosted, upstream: \"{u}\", connector: ext, preserve_host: false}}\n",
        descope_block(PROJECT, &jwks.url(), &[]),
        u = backend.url()
    );
    let gw = GatewayProcess::start(&yaml).await;
    gw.wait_keys("/kept", &key.probe_token()).await;
    let t = key.sign(&with(session("U2host", &[]), "externalToken", "x".into()));
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
    let upstream_host = backend.url().trim_start_matches("http://").to_string();
    assert_eq!(hosts, ["public.example".to_string(), upstream_host]);
}

/// `extoken_connector_*` and `extoken_cache_*` count calls and lookups as they happen.
#[tokio::test(flavor = "multi_thread")]
async fn connector_and_cache_metrics() {
    let admin = free_port();
    let admin_line = format!("admin_listen: \"127.0.0.1:{admin}\"\n");
    let r = rig(Mode::Slow(Duration::from_millis(400)), "", &admin_line).await;
    let token = r.key.sign(&session("U2metrics", &[]));
    assert_eq!(burst(&r.gw, &token, 20).await, vec![200; 20]);
    assert_eq!(r.gw.get_bearer("/m", &token).await.status, 200);
    r.endpoint.set_mode(Mode::Status(400));
    let other = r.key.sign(&session("U2metricsFail", &[]));
    assert_eq!(r.gw.get_bearer("/m", &other).await.status, 503);

    let text =
        r.gw.client
            .get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
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
