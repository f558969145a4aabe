//! Rigs for the minting-connector tests: a Descope [`Project`] (a signing key, its JWKS endpoint,
//! sessions for any user), a generic-HTTP connector endpoint ([`TokenEndpoint`]: checks the HMAC
//! and the bearer, counts calls, can be slow, failing or malformed per [`Mode`]), and [`Rig`], the
//! whole arrangement with a gateway whose one route uses the `http` connector `legacy`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};

use super::backend::Backend;
use super::config::{ConfigBuilder, RouteSpec};
use super::jwks::JwksServer;
use super::keys::{session_claims, with, TestKey};
use super::net::{response, Handler, HttpServer};
use super::process::{GatewayProcess, Launch};

/// The project id of the connector tests' sessions.
pub const CONNECTOR_PROJECT: &str = "P2connectorTests";
/// The HMAC secret the gateway signs connector calls with.
pub const HMAC_SECRET: &str = "hmac-test-secret";
/// The bearer the gateway authenticates to the connector endpoint with.
pub const ENDPOINT_BEARER: &str = "endpoint-bearer-secret";

// ---------------------------------------------------------------------------------------------
// The Descope project

/// A Descope project: one RS256 key `k1`, served by a JWKS endpoint.
pub struct Project {
    pub key: TestKey,
    pub jwks: JwksServer,
}

impl Project {
    pub async fn start() -> Project {
        let key = TestKey::rsa("k1", Algorithm::RS256);
        let jwks = JwksServer::start(&[&key]).await;
        Project { key, jwks }
    }

    /// A config with this project's `descope:` block, to add connectors and routes to.
    pub fn config(&self) -> ConfigBuilder {
        ConfigBuilder::new(CONNECTOR_PROJECT, &self.jwks.url())
    }

    /// Starts the gateway as `how` says and waits until it has the keys.
    pub async fn gateway(&self, config: &ConfigBuilder, how: Launch<'_>) -> GatewayProcess {
        let gw = GatewayProcess::launch(&config.to_yaml(), how).await;
        gw.wait_keys("/", &self.key.probe_token()).await;
        gw
    }

    /// A session token for `user`, with extra claims.
    pub fn session(&self, user: &str, extra: &[(&str, Value)]) -> String {
        self.key.sign(&session(user, extra))
    }
}

/// Session claims of the connector tests' project for `user`, with extra claims.
pub fn session(user: &str, extra: &[(&str, Value)]) -> Value {
    let mut c = with(session_claims(CONNECTOR_PROJECT, None), "sub", user.into());
    for (k, v) in extra {
        c = with(c, k, v.clone());
    }
    c
}

// ---------------------------------------------------------------------------------------------
// The connector endpoint

/// How the [`TokenEndpoint`] answers a call that passed its checks.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// 200 {"token": "ext-<user>-<n>", "expires_in": secs}
    Ok {
        expires_in: Option<u64>,
    },
    /// 200 with a 10-minute token, after this long.
    Slow(Duration),
    /// This status, with a token in the body that must never be used.
    Status(u16),
    NotJson,
    NoTokenField,
    NonAscii,
}

/// The usual endpoint behaviour: a token good for 10 minutes.
pub const OK_10M: Mode = Mode::Ok {
    expires_in: Some(600),
};

/// One call to the endpoint: the JSON body and the headers it came with.
pub type Call = (Value, Vec<(String, String)>);

/// A generic-HTTP token endpoint: verifies the bearer and the HMAC of the exact body, records
/// every body, numbers its tokens.
pub struct TokenEndpoint {
    server: HttpServer,
    calls: Arc<AtomicUsize>,
    bad_auth: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    bodies: Arc<Mutex<Vec<Call>>>,
}

impl TokenEndpoint {
    pub async fn start(mode: Mode) -> TokenEndpoint {
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
        let server = HttpServer::serve(handler).await;
        TokenEndpoint {
            server,
            calls,
            bad_auth,
            mode,
            bodies,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/token", self.server.addr)
    }

    /// Calls received so far, answered or refused.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls refused for a wrong HMAC or bearer.
    pub fn bad_auth(&self) -> usize {
        self.bad_auth.load(Ordering::SeqCst)
    }

    /// The accepted calls so far, in order.
    pub fn bodies(&self) -> Vec<Call> {
        self.bodies.lock().unwrap().clone()
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    /// An `http` connector calling this endpoint with its bearer and HMAC secret.
    pub fn connector(&self) -> Value {
        json!({
            "type": "http",
            "url": self.url(),
            "auth": {"bearer": ENDPOINT_BEARER},
            "hmac_secret": HMAC_SECRET,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The whole rig

/// Project + backend + endpoint + gateway with an `http` connector named `legacy` on route `api`
/// (`/`); built by [`rig`].
pub struct Rig {
    pub project: Project,
    pub backend: Backend,
    pub endpoint: TokenEndpoint,
    pub gw: GatewayProcess,
}

/// How a [`Rig`] is set up, beyond the endpoint's mode.
pub struct RigSpec {
    mode: Mode,
    connector: Map<String, Value>,
    cache: Option<Value>,
    admin: bool,
}

/// A [`Rig`] whose endpoint starts in `mode`; [`RigSpec::start`] starts it.
pub fn rig(mode: Mode) -> RigSpec {
    RigSpec {
        mode,
        connector: Map::new(),
        cache: None,
        admin: false,
    }
}

impl RigSpec {
    /// Another key of the `legacy` connector (`retries`, `timeout`, `token_field`, ...).
    pub fn connector(mut self, key: &str, value: impl Into<Value>) -> RigSpec {
        self.connector.insert(key.into(), value.into());
        self
    }

    /// The top-level `cache:` block.
    pub fn cache(mut self, cache: Value) -> RigSpec {
        self.cache = Some(cache);
        self
    }

    /// With an admin listener ([`GatewayProcess::metrics`]).
    pub fn admin(mut self) -> RigSpec {
        self.admin = true;
        self
    }

    pub async fn start(self) -> Rig {
        let project = Project::start().await;
        let backend = Backend::start().await;
        let endpoint = TokenEndpoint::start(self.mode).await;
        let mut legacy = endpoint.connector();
        legacy["headers"] = json!({"X-Static": "static-value"});
        legacy["ttl"] = "10m".into();
        for (k, v) in self.connector {
            legacy[k] = v;
        }
        let mut config = project.config().connector("legacy", legacy).route(
            RouteSpec::new("/", &backend.url())
                .name("api")
                .connector("legacy"),
        );
        if let Some(cache) = self.cache {
            config = config.set("cache", cache);
        }
        let how = Launch {
            admin: self.admin,
            ..Launch::default()
        };
        let gw = project.gateway(&config, how).await;
        Rig {
            project,
            backend,
            endpoint,
            gw,
        }
    }
}

impl Rig {
    /// A session token for `user`, with extra claims.
    pub fn session(&self, user: &str, extra: &[(&str, Value)]) -> String {
        self.project.session(user, extra)
    }
}

/// `n` concurrent GETs with one session token; their statuses.
pub async fn burst(gw: &GatewayProcess, token: &str, n: usize) -> Vec<u16> {
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
