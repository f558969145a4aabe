//! Descope's session refresh endpoint on loopback ([`RefreshEndpoint`]), speaking the contract of
//! the Descope Python SDK 2.16.1 (`Auth.refresh_session`): `POST /v1/auth/refresh`, body `{}`,
//! `Authorization: Bearer <project_id>:<refresh_jwt>`, `x-descope-project-id`. A request that is
//! not exactly that gets a 400 (so a test expecting a session fails). The refresh token must be
//! signed by the project's key, unexpired and `drn: DSR`, else 401 as Descope answers a revoked
//! or expired one (and so are the tokens of users whose id starts with [`REVOKED_PREFIX`]). The answer: `sessionJwt` (a new session of the token's `sub`, with
//! `externalToken` `refreshed-<sub>-<n>`), `refreshJwt` when rotating, `cookieMaxAge`,
//! `cookieExpiration`, `cookieDomain`, `cookiePath`, `user`, `firstSeen`. It also serves the
//! project's keys at `GET /v2/keys/<project_id>`, where the SDK fetches them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{json, Value};

use super::keys::{session_claims, with, TestKey};
use super::net::{now, response, Handler, HttpServer};

/// How the endpoint answers a request that follows the contract.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RefreshMode {
    /// A new session after `delay`; a rotated refresh token too when `rotate`.
    Ok { delay: Duration, rotate: bool },
    /// This status, with Descope's error body (`errorCode`, `errorDescription`, `errorMessage`).
    Status(u16),
    /// Never answers.
    Hang,
}

/// The usual mode: a new session at once, the refresh token not rotated.
pub const REFRESH_OK: RefreshMode = RefreshMode::Ok {
    delay: Duration::ZERO,
    rotate: false,
};

/// Refresh tokens of users whose id starts with this are revoked (a 401, as Descope answers).
pub const REVOKED_PREFIX: &str = "U2revoked";

/// Seconds Descope says the cookies live (`cookieMaxAge`).
pub const COOKIE_MAX_AGE: u64 = 2_419_200;

pub struct RefreshEndpoint {
    server: HttpServer,
    calls: Arc<AtomicUsize>,
    mode: Arc<Mutex<RefreshMode>>,
}

/// A refresh token of `project` for `sub`, signed with `key`, living `ttl` seconds (negative:
/// expired).
pub fn refresh_token(key: &TestKey, project: &str, sub: &str, ttl: i64) -> String {
    let exp = now().saturating_add_signed(ttl);
    let c = with(session_claims(project, None), "drn", "DSR".into());
    let c = with(with(c, "sub", sub.into()), "exp", exp.into());
    key.sign(&with(c, "iat", (now() - 10).into()))
}

impl RefreshEndpoint {
    /// The endpoint of `project`, whose sessions and refresh tokens `key` signs (and checks).
    pub async fn start(project: &str, key: &TestKey, mode: RefreshMode) -> RefreshEndpoint {
        let calls = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(mode));
        let (c, m) = (calls.clone(), mode.clone());
        let project = project.to_string();
        let signer = TestKey {
            kid: key.kid.clone(),
            alg: key.alg,
            encoding: key.encoding.clone(),
            jwk: key.jwk.clone(),
        };
        let signer = Arc::new(signer);
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let (c, m, project, signer) = (c.clone(), m.clone(), project.clone(), signer.clone());
            Box::pin(async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                let mode = *m.lock().unwrap();
                Ok(answer(req, mode, &project, &signer, n).await)
            })
        });
        RefreshEndpoint {
            server: HttpServer::serve(handler).await,
            calls,
            mode,
        }
    }

    /// The `base_url` to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: RefreshMode) {
        *self.mode.lock().unwrap() = mode;
    }
}

async fn answer(
    req: Request<Incoming>,
    mode: RefreshMode,
    project: &str,
    key: &TestKey,
    n: usize,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let error = |status: u16, code: &str, text: &str| {
        let b = json!({"errorCode": code, "errorDescription": text, "errorMessage": text});
        response(status, "application/json", b.to_string())
    };
    let (parts, body) = req.into_parts();
    // The SDK checks a refresh token locally first, with the keys from here.
    if parts.method == "GET" && parts.uri.path() == format!("/v2/keys/{project}") {
        return response(200, "application/json", super::keys::jwks(&[key]));
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |k: &str| parts.headers.get(k).and_then(|v| v.to_str().ok());
    let dsr = header("authorization")
        .and_then(|a| a.strip_prefix(&format!("Bearer {project}:")))
        .unwrap_or("");
    let contract = parts.method == "POST"
        && parts.uri.path() == "/v1/auth/refresh"
        && header("x-descope-project-id") == Some(project)
        && header("content-type").is_some_and(|c| c.starts_with("application/json"))
        && serde_json::from_slice::<Value>(&body).ok() == Some(json!({}));
    if !contract || dsr.is_empty() {
        return error(
            400,
            "E011001",
            "request does not follow the refresh contract",
        );
    }
    let Some(claims) = valid_refresh(dsr, key, project) else {
        return error(401, "E061005", "refresh token is invalid or expired");
    };
    // The endpoint's revocation list: every refresh token of a user whose id says so.
    if claims["sub"]
        .as_str()
        .is_some_and(|s| s.starts_with(REVOKED_PREFIX))
    {
        return error(401, "E061004", "refresh token revoked");
    }
    match mode {
        RefreshMode::Status(s) => error(s, "E061005", "refresh token revoked"),
        RefreshMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            error(500, "E000000", "never")
        }
        RefreshMode::Ok { delay, rotate } => {
            tokio::time::sleep(delay).await;
            let sub = claims["sub"].as_str().unwrap_or("?").to_string();
            let session = session_claims(project, Some(&format!("refreshed-{sub}-{n}")));
            let mut b = json!({
                "sessionJwt": key.sign(&with(session, "sub", sub.clone().into())),
                "cookieDomain": "",
                "cookiePath": "/",
                "cookieMaxAge": COOKIE_MAX_AGE,
                "cookieExpiration": now() + COOKIE_MAX_AGE,
                "user": {"userId": sub, "loginIds": [format!("{sub}@example.test")]},
                "firstSeen": false,
            });
            if rotate {
                b["refreshJwt"] = refresh_token(key, project, &sub, 86_400).into();
            }
            response(200, "application/json", b.to_string())
        }
    }
}

/// The claims of `dsr` if it is the project's unexpired refresh token.
fn valid_refresh(dsr: &str, key: &TestKey, project: &str) -> Option<Value> {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).ok()?;
    let dk = DecodingKey::from_jwk(&jwk).ok()?;
    let mut v = Validation::new(key.alg);
    v.set_issuer(&[project]);
    v.validate_aud = false;
    v.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(dsr, &dk, &v).ok()?;
    (data.claims["drn"] == "DSR").then_some(data.claims)
}

/// The claims of a JWT, unverified (to read what a test was given).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or("");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
        .unwrap_or(Value::Null)
}
