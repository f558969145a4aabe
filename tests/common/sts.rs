//! A small but strict OAuth 2.0 Token Exchange server (RFC 8693) on loopback, the identity
//! provider of the `token_exchange` connector tests ([`Sts`]). Keycloak is not installable here,
//! so this plays its part and refuses what a real authorization server refuses:
//!
//! - a form POST only, each parameter once (RFC 6749 §3.2; `audience` and `resource` may repeat);
//! - client authentication (RFC 6749 §2.3, RFC 7523 §3) by the one method the client is
//!   registered with: `client_secret_basic`, `client_secret_post`, or `private_key_jwt` (signature
//!   checked with the client's public JWK, `iss` = `sub` = client id, `aud` = the token URL,
//!   `exp`, a `jti` never seen before); failures are `401 invalid_client` + `WWW-Authenticate`;
//! - `grant_type` token exchange, `subject_token` + `subject_token_type`: a `jwt` subject is
//!   verified against the Descope JWKS endpoint (fetched on every call, like a fresh key cache),
//!   an `access_token` subject must be one this server issued and still valid; a policy may refuse
//!   a `jwt` subject whose `amr` lacks a method (`required_amr`, decided per subject token);
//! - `audience`, `resource`, `scope` exactly as the server is set up to expect (absent when it
//!   expects none): `invalid_target` / `invalid_scope` otherwise;
//! - errors are RFC 6749 §5.2 bodies, successes RFC 8693 §2.2.1 bodies with `Cache-Control:
//!   no-store`. [`StsMode`] then makes a valid call slow, failing or oversized.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};

use super::net::{now, HttpServer};

pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How a registered client authenticates.
#[derive(Clone, Debug)]
pub enum ClientCred {
    Basic(String),
    Post(String),
    /// The client's public JWK.
    PrivateKeyJwt(Value),
}

/// What a valid call gets.
#[derive(Clone, Debug, PartialEq)]
pub enum StsMode {
    Issue,
    /// This 5xx with an RFC 6749 `server_error` body.
    ServerError(u16),
    /// Issues after this long.
    Slow(Duration),
    /// A 200 whose body is `n` bytes of JSON.
    Oversized(usize),
}

/// What the server expects and trusts.
#[derive(Clone, Debug, Default)]
pub struct StsSetup {
    pub clients: HashMap<String, ClientCred>,
    /// The Descope key set that `jwt` subject tokens must verify against.
    pub jwks_url: Option<String>,
    /// The Descope project the subject JWTs' `iss` must name.
    pub project: String,
    pub audience: Vec<String>,
    pub resource: Vec<String>,
    pub scope: Option<String>,
    /// Users (`sub`) whose subject tokens are refused with `invalid_grant`.
    pub refused_users: HashSet<String>,
    /// An authentication method a `jwt` subject's `amr` must list (e.g. `mfa`), else
    /// `invalid_grant`: a policy decided per subject token, not per user.
    pub required_amr: Option<String>,
    pub expires_in: u64,
}

/// One accepted or refused call: the form as decoded, the client auth method, the answer.
#[derive(Clone, Debug)]
pub struct StsCall {
    pub form: Vec<(String, String)>,
    pub client_auth: &'static str,
    pub status: u16,
    pub error: Option<&'static str>,
}

impl StsCall {
    /// The values of a form parameter, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

struct State {
    setup: StsSetup,
    mode: StsMode,
    token_url: String,
    /// Tokens this server issued: token → (sub, exp).
    issued: HashMap<String, (String, u64)>,
    seen_jti: HashSet<String>,
    calls: Vec<StsCall>,
}

/// The token endpoint `POST /oauth2/token`.
pub struct Sts {
    server: HttpServer,
    state: Arc<Mutex<State>>,
}

/// An RFC 6749 §5.2 refusal: status, error code.
type Refusal = (u16, &'static str);

impl Sts {
    pub async fn start(setup: StsSetup) -> Sts {
        let state = Arc::new(Mutex::new(State {
            setup,
            mode: StsMode::Issue,
            token_url: String::new(),
            issued: HashMap::new(),
            seen_jti: HashSet::new(),
            calls: Vec::new(),
        }));
        let st = state.clone();
        let handler: super::net::Handler = Arc::new(move |req: Request<Incoming>| {
            let st = st.clone();
            Box::pin(async move { Ok(handle(&st, req).await) })
        });
        let server = HttpServer::serve(handler).await;
        state.lock().unwrap().token_url = format!("http://{}/oauth2/token", server.addr);
        Sts { server, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/oauth2/token", self.server.addr)
    }

    pub fn set_mode(&self, mode: StsMode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn setup(&self, edit: impl FnOnce(&mut StsSetup)) {
        edit(&mut self.state.lock().unwrap().setup);
    }

    /// Registers `token` as issued by this server to `sub` (a subject token from elsewhere).
    pub fn add_issued(&self, token: &str, sub: &str) {
        let mut s = self.state.lock().unwrap();
        s.issued.insert(token.into(), (sub.into(), now() + 3600));
    }

    pub fn calls(&self) -> Vec<StsCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Calls answered 200.
    pub fn issued_count(&self) -> usize {
        self.calls().iter().filter(|c| c.status == 200).count()
    }
}

async fn handle(
    st: &Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |k: &str| {
        parts
            .headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let form = parse_form(&body).unwrap_or_default();
    let mut call = StsCall {
        form: form.clone(),
        client_auth: "none",
        status: 200,
        error: None,
    };
    let outcome = async {
        let form_ok = parts.method == hyper::Method::POST
            && header("content-type")
                .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
            && parse_form(&body).is_some();
        if !form_ok {
            return Err((400, "invalid_request"));
        }
        once_each(&form)?;
        let (auth, client) = authenticate(st, header("authorization").as_deref(), &form)?;
        call.client_auth = auth;
        exchange(st, &form, &client).await
    }
    .await;
    let mode = st.lock().unwrap().mode.clone();
    let reply = match (outcome, mode) {
        (Err((status, code)), _) => {
            call.status = status;
            call.error = Some(code);
            error_reply(status, code)
        }
        (Ok(_), StsMode::ServerError(s)) => {
            call.status = s;
            call.error = Some("server_error");
            error_reply(s, "server_error")
        }
        (Ok(_), StsMode::Oversized(n)) => {
            let filler = "x".repeat(n);
            reply(200, json!({"access_token": "big", "padding": filler}))
        }
        (Ok(ok), mode) => {
            if let StsMode::Slow(d) = mode {
                tokio::time::sleep(d).await;
            }
            reply(200, ok)
        }
    };
    st.lock().unwrap().calls.push(call);
    reply
}

fn reply(status: u16, body: Value) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("pragma", "no-cache")
        .body(http_body_util::Full::new(body.to_string().into()))
        .unwrap()
}

fn error_reply(status: u16, code: &str) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let mut r = reply(
        status,
        json!({"error": code, "error_description": format!("refused: {code}")}),
    );
    if status == 401 {
        r.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static(r#"Basic realm="sts""#),
        );
    }
    r
}

/// Each parameter at most once, except the ones RFC 8693 lets repeat.
fn once_each(form: &[(String, String)]) -> Result<(), Refusal> {
    let mut seen = HashSet::new();
    for (k, _) in form {
        if !matches!(k.as_str(), "audience" | "resource") && !seen.insert(k.as_str()) {
            return Err((400, "invalid_request"));
        }
    }
    Ok(())
}

fn param<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The client, by the one method it is registered with; the method's name.
fn authenticate(
    st: &Arc<Mutex<State>>,
    authorization: Option<&str>,
    form: &[(String, String)],
) -> Result<(&'static str, String), Refusal> {
    const BAD: Refusal = (401, "invalid_client");
    let s = st.lock().unwrap();
    let basic = authorization.and_then(|a| a.strip_prefix("Basic "));
    let post = param(form, "client_secret");
    let assertion = param(form, "client_assertion");
    let used = [basic.is_some(), post.is_some(), assertion.is_some()];
    if used.iter().filter(|u| **u).count() > 1 {
        return Err((400, "invalid_request"));
    }
    if let Some(b) = basic {
        let pair = String::from_utf8(STANDARD.decode(b).map_err(|_| BAD)?).map_err(|_| BAD)?;
        let (id, secret) = pair.split_once(':').ok_or(BAD)?;
        let (id, secret) = (decode(id).ok_or(BAD)?, decode(secret).ok_or(BAD)?);
        return match s.setup.clients.get(&id) {
            Some(ClientCred::Basic(want)) if *want == secret => Ok(("client_secret_basic", id)),
            _ => Err(BAD),
        };
    }
    if let Some(secret) = post {
        let id = param(form, "client_id").ok_or(BAD)?;
        return match s.setup.clients.get(id) {
            Some(ClientCred::Post(want)) if want == secret => Ok(("client_secret_post", id.into())),
            _ => Err(BAD),
        };
    }
    let Some(assertion) = assertion else {
        return Err(BAD);
    };
    if param(form, "client_assertion_type") != Some(JWT_BEARER_ASSERTION) {
        return Err((400, "invalid_request"));
    }
    let (id, jti) = verify_assertion(&s, assertion, param(form, "client_id"))?;
    drop(s);
    if !st.lock().unwrap().seen_jti.insert(jti) {
        return Err(BAD); // a replayed assertion
    }
    Ok(("private_key_jwt", id))
}

/// An RFC 7523 client assertion of a `private_key_jwt` client: (client id, jti).
fn verify_assertion(
    s: &State,
    assertion: &str,
    client_id: Option<&str>,
) -> Result<(String, String), Refusal> {
    const BAD: Refusal = (401, "invalid_client");
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| BAD)?;
    let unverified: Value = assertion
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(BAD)?;
    let id = unverified["iss"].as_str().ok_or(BAD)?.to_string();
    if client_id.is_some_and(|c| c != id) {
        return Err(BAD);
    }
    let Some(ClientCred::PrivateKeyJwt(jwk)) = s.setup.clients.get(&id) else {
        return Err(BAD);
    };
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).map_err(|_| BAD)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|_| BAD)?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&[s.token_url.as_str()]);
    v.set_issuer(&[id.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &v)
        .map_err(|_| BAD)?
        .claims;
    if claims["sub"] != id.as_str() {
        return Err(BAD);
    }
    let jti = claims["jti"].as_str().ok_or(BAD)?.to_string();
    Ok((id, jti))
}

/// The grant itself, for an authenticated client: the success body or the refusal.
async fn exchange(
    st: &Arc<Mutex<State>>,
    form: &[(String, String)],
    _client: &str,
) -> Result<Value, Refusal> {
    if param(form, "grant_type") != Some(TOKEN_EXCHANGE_GRANT) {
        return Err((400, "unsupported_grant_type"));
    }
    if param(form, "actor_token").is_some() {
        return Err((400, "invalid_request")); // delegation is not offered
    }
    let (Some(subject), Some(kind)) = (
        param(form, "subject_token"),
        param(form, "subject_token_type"),
    ) else {
        return Err((400, "invalid_request"));
    };
    let requested = param(form, "requested_token_type").unwrap_or(ACCESS_TOKEN_TYPE);
    if requested != ACCESS_TOKEN_TYPE && requested != JWT_TOKEN_TYPE {
        return Err((400, "invalid_request"));
    }
    let setup = st.lock().unwrap().setup.clone();
    let sub = match kind {
        JWT_TOKEN_TYPE => {
            let (sub, amr) = verify_session(&setup, subject).await?;
            if setup
                .required_amr
                .as_ref()
                .is_some_and(|m| !amr.contains(m))
            {
                return Err((400, "invalid_grant"));
            }
            sub
        }
        ACCESS_TOKEN_TYPE => {
            let s = st.lock().unwrap();
            match s.issued.get(subject) {
                Some((sub, exp)) if *exp > now() => sub.clone(),
                _ => return Err((400, "invalid_grant")),
            }
        }
        _ => return Err((400, "invalid_request")),
    };
    if setup.refused_users.contains(&sub) {
        return Err((400, "invalid_grant"));
    }
    let values = |k: &str| {
        form.iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    if values("audience") != setup.audience || values("resource") != setup.resource {
        return Err((400, "invalid_target"));
    }
    if param(form, "scope").map(str::to_string) != setup.scope {
        return Err((400, "invalid_scope"));
    }
    let mut s = st.lock().unwrap();
    let token = format!("sts-{sub}-{}", s.issued.len() + 1);
    s.issued
        .insert(token.clone(), (sub, now() + setup.expires_in));
    let token_type = if requested == ACCESS_TOKEN_TYPE {
        "Bearer"
    } else {
        "N_A"
    };
    Ok(json!({
        "access_token": token,
        "issued_token_type": requested,
        "token_type": token_type,
        "expires_in": setup.expires_in,
    }))
}

/// A Descope session JWT verified against the project's JWKS endpoint: its `sub` and `amr`.
async fn verify_session(setup: &StsSetup, token: &str) -> Result<(String, Vec<String>), Refusal> {
    const BAD: Refusal = (400, "invalid_grant");
    let url = setup.jwks_url.as_deref().ok_or(BAD)?;
    let set: jsonwebtoken::jwk::JwkSet = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|_| (503, "temporarily_unavailable"))?
        .get(url)
        .send()
        .await
        .map_err(|_| (503, "temporarily_unavailable"))?
        .json()
        .await
        .map_err(|_| (503, "temporarily_unavailable"))?;
    let header = jsonwebtoken::decode_header(token).map_err(|_| BAD)?;
    let jwk = set.find(header.kid.as_deref().ok_or(BAD)?).ok_or(BAD)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| BAD)?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "sub", "iss"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
        .map_err(|_| BAD)?
        .claims;
    let iss = claims["iss"].as_str().unwrap_or("");
    if iss != setup.project && !iss.ends_with(&format!("/{}", setup.project)) {
        return Err(BAD);
    }
    let amr = claims["amr"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let sub = claims["sub"].as_str().map(str::to_string).ok_or(BAD)?;
    Ok((sub, amr))
}

/// application/x-www-form-urlencoded pairs; `None` if malformed.
pub fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent- and `+`-decoding of one form component.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}
