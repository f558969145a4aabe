//! The `token_exchange` connector: OAuth 2.0 Token Exchange (RFC 8693) at an identity provider
//! the legacy backend trusts (Keycloak, Okta, Auth0, Azure AD, Ping, ...).
//!
//! The subject token is the Descope session JWT itself (`subject_token_type` `...:jwt`): sending
//! it to the provider is this connector's purpose, the one deliberate exception to "no Descope
//! credential leaves the gateway". Or it is the token another connector makes for the session
//! (`subject: {external_token: <name>}`), obtained first by [`super::Connectors`].
//!
//! The cache key (besides the connector's settings fingerprint, which covers every exchange
//! parameter) is the SHA-256 of the subject token: RFC 8693 makes the provider the decision point
//! for each subject token, and it may refuse one session of a user (no `mfa` in `amr`, a revoked
//! session) while accepting another, so one session must never be served the token exchanged for
//! another. A refreshed session is therefore a new exchange. An operator who accepts per-user
//! reuse opts in with `cache_key: [claims]`: the user id and those claims then key the token
//! instead, and the provider is asked again only when one of them changes.
//!
//! Errors follow RFC 6749 §5.2: `invalid_grant` means the provider refused the subject (401:
//! log in again); anything else, 5xx, a timeout or an oversized reply is the connector being
//! unavailable (503). Neither the subject token, the client secret, the minted token nor the
//! provider's `error_description` is ever put in an error message.

#[cfg(test)]
mod cache_key_tests;
mod config;
#[cfg(test)]
mod tests;

use crate::telemetry::trace;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};

pub(crate) use config::{check_subjects, TokenExchangeConfig};
use config::{list, AssertionAlg, ClientAuth};

use super::http_endpoint::{form_encode, jwt_lifetime};
use super::identity::{lookup, user_id};
use super::signing::Signer;
use super::{ExchangeError, ExternalToken, Mint, Minted, RequestInfo, MAX_REPLY_BYTES};
use crate::bounded::read_body;
use crate::clock::SharedClock;
use crate::config::ConfigError;
use crate::verify::{ClaimsKept, VerifiedSession};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// How long a `private_key_jwt` client assertion is valid: one request, with clock skew.
const ASSERTION_LIFETIME: u64 = 60;
/// RFC 6749 §5.2 and RFC 8693 §2.2.2 error codes: the only words of an error reply that reach a
/// log line (anything else is "other").
const ERROR_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
];

/// The client authentication, ready to use.
enum Auth {
    /// The whole `Authorization` header value.
    Basic(String),
    /// `client_id=..&client_secret=..`, form-encoded.
    Post(String),
    /// Boxed: a signer is large, and there is one `Auth` per connector.
    Jwt {
        client_id: String,
        signer: Box<Signer>,
    },
}

impl Auth {
    /// The client authentication of `c`, and the bytes of its key file if it has one.
    fn build(path: &str, c: &ClientAuth) -> Result<(Auth, Vec<u8>), ConfigError> {
        let mut loaded = Vec::new();
        let auth = match c {
            ClientAuth::ClientSecretBasic {
                client_id,
                client_secret,
            } => {
                // RFC 6749 §2.3.1: each part form-encoded before base64.
                let pair = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
                Auth::Basic(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            ClientAuth::ClientSecretPost {
                client_id,
                client_secret,
            } => Auth::Post(form(&[
                ("client_id", client_id),
                ("client_secret", client_secret),
            ])),
            ClientAuth::PrivateKeyJwt {
                client_id,
                key_file,
                alg,
                kid,
            } => {
                let alg = match alg {
                    AssertionAlg::RS256 => Algorithm::RS256,
                    AssertionAlg::ES256 => Algorithm::ES256,
                    AssertionAlg::EdDSA => Algorithm::EdDSA,
                };
                let (signer, bytes) =
                    Signer::from_file(key_file, kid.clone(), &[alg]).map_err(|m| {
                        ConfigError::key(format!("{path}.client_auth.private_key_jwt.key_file"), m)
                    })?;
                loaded = bytes;
                Auth::Jwt {
                    client_id: client_id.clone(),
                    signer: Box::new(signer),
                }
            }
        };
        Ok((auth, loaded))
    }
}

pub(crate) struct TokenExchange {
    name: String,
    clock: SharedClock,
    client: reqwest::Client,
    token_url: String,
    auth: Auth,
    /// `grant_type`, `requested_token_type`, `audience`, `resource`, `scope` and
    /// `subject_token_type`, form-encoded: the same on every call.
    fixed_params: String,
    /// The connector whose token is the subject; `None`: the session JWT is.
    subject_from: Option<String>,
    timeout: Duration,
    default_lifetime: Option<Duration>,
    /// `cache_key`: the claims that, with the user, key the cache instead of the subject token.
    cache_claims: Option<Vec<String>>,
}

impl TokenExchange {
    /// The connector, and the bytes of its client key file if it has one (cache fingerprint).
    pub(crate) fn build(
        name: &str,
        path: &str,
        c: &TokenExchangeConfig,
        client: reqwest::Client,
        clock: SharedClock,
    ) -> Result<(TokenExchange, Vec<u8>), ConfigError> {
        let (auth, loaded) = Auth::build(path, &c.client_auth)?;
        let mut fixed: Vec<(&str, String)> = vec![
            ("grant_type", GRANT_TYPE.into()),
            ("requested_token_type", c.requested_token_type.clone()),
        ];
        fixed.extend(list(&c.audience).into_iter().map(|a| ("audience", a)));
        fixed.extend(list(&c.resource).into_iter().map(|r| ("resource", r)));
        let scope = list(&c.scope);
        if !scope.is_empty() {
            fixed.push(("scope", scope.join(" ")));
        }
        fixed.push(("subject_token_type", c.subject_token_type().into()));
        let fixed: Vec<(&str, &str)> = fixed.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let connector = TokenExchange {
            name: name.to_string(),
            clock,
            client,
            token_url: c.token_url.clone(),
            auth,
            fixed_params: form(&fixed),
            subject_from: c.subject_connector().map(str::to_string),
            timeout: c.timeout.0,
            default_lifetime: c.default_lifetime.map(|d| d.0),
            cache_claims: c.cache_key.clone(),
        };
        Ok((connector, loaded))
    }

    fn fail(&self, reason: impl Into<String>) -> ExchangeError {
        ExchangeError::unavailable(&self.name, reason)
    }

    /// The form body for `subject`: the fixed parameters, the subject token, and the client's
    /// credentials when they travel in the body.
    fn body(&self, subject: &str) -> Result<String, ExchangeError> {
        let mut body = format!(
            "{}&{}",
            self.fixed_params,
            form(&[("subject_token", subject)])
        );
        match &self.auth {
            Auth::Basic(_) => {}
            Auth::Post(creds) => {
                body.push('&');
                body.push_str(creds);
            }
            Auth::Jwt { client_id, signer } => {
                let assertion = self.client_assertion(client_id, signer)?;
                body.push('&');
                body.push_str(&form(&[
                    ("client_id", client_id),
                    ("client_assertion_type", JWT_BEARER_ASSERTION),
                    ("client_assertion", &assertion),
                ]));
            }
        }
        Ok(body)
    }

    /// An RFC 7523 §3 client assertion, new for each request (its own `jti`).
    fn client_assertion(&self, client_id: &str, signer: &Signer) -> Result<String, ExchangeError> {
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| self.fail("no randomness for a jti"))?;
        let now = self.clock.unix();
        let mut c = Map::new();
        c.insert("iss".into(), client_id.into());
        c.insert("sub".into(), client_id.into());
        c.insert("aud".into(), self.token_url.clone().into());
        c.insert("jti".into(), URL_SAFE_NO_PAD.encode(jti).into());
        c.insert("iat".into(), now.into());
        c.insert("exp".into(), (now + ASSERTION_LIFETIME).into());
        signer
            .sign(&c)
            .map_err(|e| self.fail(format!("cannot sign the client assertion: {e}")))
    }

    /// What a non-2xx reply means: `invalid_grant` refuses the session, the rest is unavailability.
    fn error_reply(&self, status: reqwest::StatusCode, body: &[u8]) -> ExchangeError {
        let code = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string));
        let code = code
            .as_deref()
            .and_then(|c| ERROR_CODES.iter().find(|k| **k == c).copied());
        if status.is_client_error() && code == Some("invalid_grant") {
            return ExchangeError::Refused {
                connector: self.name.clone(),
            };
        }
        self.fail(format!(
            "token endpoint answered {status} ({})",
            code.unwrap_or("no RFC 6749 error code")
        ))
    }

    /// The token and its lifetime from an RFC 8693 §2.2.1 success reply.
    fn success_reply(&self, body: &[u8]) -> Result<Minted, ExchangeError> {
        let reply: Value =
            serde_json::from_slice(body).map_err(|_| self.fail("reply is not JSON"))?;
        let raw = reply
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| self.fail("reply has no string access_token"))?;
        if reply.get("issued_token_type").and_then(Value::as_str) == Some(REFRESH_TOKEN_TYPE) {
            return Err(self.fail("the provider issued a refresh token: not for a backend"));
        }
        let token = ExternalToken::new(raw)
            .ok_or_else(|| self.fail("access_token is not visible ASCII"))?;
        let lifetime = match reply.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
            Some(Value::String(s)) => s.parse().ok().map(Duration::from_secs),
            _ => None,
        }
        .or_else(|| jwt_lifetime(raw, self.clock.unix()))
        .or(self.default_lifetime)
        .ok_or_else(|| {
            self.fail("reply has no expires_in and the token no exp: set default_lifetime")
        })?;
        if lifetime.is_zero() {
            return Err(self.fail("the issued token is already expired"));
        }
        Ok(Minted { token, lifetime })
    }
}

/// `k=v&k=v`, form-encoded (application/x-www-form-urlencoded).
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[async_trait::async_trait]
impl Mint for TokenExchange {
    /// The subject token (the session, unless another connector's token is bound later) and,
    /// with `cache_key`, the user and the listed claims (absent ones as `null`).
    fn inputs(&self, s: &VerifiedSession, req: RequestInfo<'_>) -> Result<Value, ExchangeError> {
        let mut v = Map::new();
        if let Some(paths) = &self.cache_claims {
            let claims: Map<String, Value> = paths
                .iter()
                .map(|p| {
                    (
                        p.clone(),
                        lookup(&s.claims, p).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect();
            v.insert("user".into(), user_id(s)?.into());
            v.insert("claims".into(), claims.into());
        }
        if self.subject_from.is_none() {
            v.insert("subject_token".into(), req.session_token.into());
        }
        Ok(Value::Object(v))
    }

    /// By default only a session's own JWT reads its cached token; with `cache_key`, the user's
    /// listed claims.
    fn claims_read(&self, kept: &mut ClaimsKept) {
        if let Some(paths) = &self.cache_claims {
            kept.read("sub");
            kept.read("dsub");
            for p in paths {
                kept.read(p);
            }
        }
    }

    /// The subject token's SHA-256 (the key hashes its inputs again, but the token itself is not
    /// even part of what is hashed); with `cache_key`, the user and the listed claims, without the
    /// subject.
    fn cache_inputs(&self, inputs: &Value) -> Value {
        match &self.cache_claims {
            Some(_) => {
                let mut v = inputs.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("subject_token");
                }
                v
            }
            None => {
                let subject = inputs["subject_token"].as_str().unwrap_or_default();
                let digest =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, subject.as_bytes());
                json!({"subject_sha256": URL_SAFE_NO_PAD.encode(digest.as_ref())})
            }
        }
    }

    fn subject_connector(&self) -> Option<&str> {
        self.subject_from.as_deref()
    }

    fn bind_subject(&self, inputs: &mut Value, subject: &ExternalToken) {
        inputs["subject_token"] = subject.as_str().into();
    }

    async fn mint(&self, inputs: &Value) -> Result<Minted, ExchangeError> {
        let subject = inputs["subject_token"]
            .as_str()
            .ok_or_else(|| self.fail("no subject token"))?;
        let mut req = self
            .client
            .post(&self.token_url)
            .timeout(self.timeout)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(self.body(subject)?);
        if let Auth::Basic(h) = &self.auth {
            req = req.header("authorization", h.as_str());
        }
        let sent = trace::send("connector token_exchange", "POST", &self.token_url, req).await;
        let resp = sent.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            };
            self.fail(format!("{kind}: {}", e.without_url()))
        })?;
        let status = resp.status();
        let body = read_body(resp, MAX_REPLY_BYTES)
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        if !status.is_success() {
            return Err(self.error_reply(status, &body));
        }
        self.success_reply(&body)
    }
}
