//! The `http` connector: Descope's "Generic HTTP token connector" contract, run by the gateway.
//!
//! POSTs a JSON description of the session's identity to `url` and expects `200 {"token": ...}`.
//! Endpoint auth (bearer, basic, API key, OAuth2 client credentials), static headers and the
//! optional `x-descope-webhook-s256` HMAC of the exact body bytes. Retries, with backoff, only what
//! cannot have been processed or was a server fault: connect errors and 5xx. Nothing from the reply
//! or the secrets is put in an error message.

mod config;

use crate::telemetry::trace;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use config::HttpAuth;
pub(crate) use config::HttpConnectorConfig;

use super::identity::{lookup, user_id};
use super::{ExchangeError, ExternalToken, Mint, Minted, RequestInfo, MAX_REPLY_BYTES};
use crate::bounded::read_body;
use crate::clock::SharedClock;
use crate::config::ConfigError;
use crate::verify::{ClaimsKept, VerifiedSession};

/// Claims that are Descope's own, not "custom claims" of the flow or template.
const STANDARD_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "dsub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "drn",
    "amr",
    "dct",
    "tenants",
    "roles",
    "permissions",
    "nsec",
    "externalToken",
    "rexp",
    "cnf",
    "email",
    "phone",
    "name",
    "loginIds",
];

pub(crate) struct HttpConnector {
    name: String,
    clock: SharedClock,
    url: String,
    auth: Option<HttpAuth>,
    headers: HeaderMap,
    hmac: Option<aws_lc_rs::hmac::Key>,
    token_field: String,
    timeout: Duration,
    retries: u32,
    ttl: Option<Duration>,
    client: reqwest::Client,
    /// The endpoint's OAuth2 access token and until when (by `clock`) it is used.
    oauth: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl HttpConnector {
    pub(crate) fn build(
        name: &str,
        path: &str,
        c: &HttpConnectorConfig,
        client: reqwest::Client,
        clock: SharedClock,
    ) -> Result<HttpConnector, ConfigError> {
        let mut headers = HeaderMap::new();
        for (k, v) in &c.headers {
            let key = format!("{path}.headers.{k}");
            let n = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| ConfigError::key(key.clone(), "not a header name"))?;
            let v = HeaderValue::from_str(v)
                .map_err(|_| ConfigError::key(key, "not a valid header value"))?;
            headers.insert(n, v);
        }
        if let Some(HttpAuth::ApiKey { value, .. } | HttpAuth::Bearer(value)) = &c.auth {
            HeaderValue::from_str(value).map_err(|_| {
                ConfigError::key(format!("{path}.auth"), "not a valid header value")
            })?;
        }
        Ok(HttpConnector {
            name: name.to_string(),
            clock,
            url: c.url.clone(),
            auth: c.auth.clone(),
            headers,
            hmac: c
                .hmac_secret
                .as_ref()
                .map(|s| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, s.as_bytes())),
            token_field: c.token_field.clone(),
            timeout: c.timeout.0,
            retries: c.retries,
            ttl: c.ttl.map(|d| d.0),
            client,
            oauth: tokio::sync::Mutex::new(None),
        })
    }

    fn fail(&self, reason: impl Into<String>) -> ExchangeError {
        ExchangeError::unavailable(&self.name, reason)
    }

    /// The OAuth2 access token for the endpoint, fetched once and reused until shortly before it
    /// expires. The mutex makes concurrent first calls share one fetch.
    async fn oauth_token(
        &self,
        token_url: &str,
        id: &str,
        secret: &str,
        scopes: &[String],
    ) -> Result<String, ExchangeError> {
        let mut cached = self.oauth.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if self.clock.now() < *until {
                return Ok(t.clone());
            }
        }
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let req = self
            .client
            .post(token_url)
            .timeout(self.timeout)
            .basic_auth(form_encode(id), Some(form_encode(secret)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        let resp = trace::send("connector oauth2 token", "POST", token_url, req)
            .await
            .map_err(|e| self.fail(format!("oauth2 token request failed: {}", e.without_url())))?;
        if !resp.status().is_success() {
            return Err(self.fail(format!("oauth2 token endpoint answered {}", resp.status())));
        }
        let body = read_body(resp, MAX_REPLY_BYTES)
            .await
            .map_err(|e| self.fail(format!("oauth2 token {e}")))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| self.fail("oauth2 token reply is not JSON"))?;
        let t = v["access_token"]
            .as_str()
            .ok_or_else(|| self.fail("oauth2 reply has no access_token"))?
            .to_string();
        let life = v["expires_in"].as_u64().unwrap_or(300);
        *cached = Some((
            t.clone(),
            self.clock.now() + Duration::from_secs(life.saturating_sub(30).max(1)),
        ));
        Ok(t)
    }

    async fn send_once(
        &self,
        body: &bytes::Bytes,
        oauth: Option<&str>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .headers(self.headers.clone())
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(k) = &self.hmac {
            let tag = aws_lc_rs::hmac::sign(k, body);
            req = req.header("x-descope-webhook-s256", STANDARD.encode(tag.as_ref()));
        }
        req = match (&self.auth, oauth) {
            (_, Some(t)) => req.bearer_auth(t),
            (None | Some(HttpAuth::Oauth2ClientCredentials { .. }), None) => req,
            (Some(HttpAuth::Bearer(t)), None) => req.bearer_auth(t),
            (Some(HttpAuth::Basic { username, password }), None) => {
                req.basic_auth(username, Some(password))
            }
            (Some(HttpAuth::ApiKey { header, value }), None) => {
                req.header(header.as_str(), value.as_str())
            }
        };
        trace::send("connector http", "POST", &self.url, req).await
    }

    async fn call(&self, body: bytes::Bytes) -> Result<reqwest::Response, ExchangeError> {
        let mut attempt = 0;
        loop {
            let oauth = match &self.auth {
                Some(HttpAuth::Oauth2ClientCredentials {
                    token_url,
                    client_id,
                    client_secret,
                    scopes,
                }) => Some(
                    self.oauth_token(token_url, client_id, client_secret, scopes)
                        .await?,
                ),
                _ => None,
            };
            let result = self.send_once(&body, oauth.as_deref()).await;
            if oauth.is_some() && matches!(&result, Ok(resp) if resp.status() == 401) {
                // The access token may have been revoked early: fetch a new one next time.
                *self.oauth.lock().await = None;
            }
            let retryable = match &result {
                Ok(resp) => resp.status().is_server_error(),
                Err(e) => e.is_connect(),
            };
            if !retryable || attempt >= self.retries {
                return result.map_err(|e| {
                    let kind = if e.is_timeout() {
                        "timed out"
                    } else {
                        "request failed"
                    };
                    self.fail(format!("{kind}: {}", e.without_url()))
                });
            }
            tokio::time::sleep(config::backoff(attempt)).await;
            attempt += 1;
        }
    }
}

pub(super) fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Seconds from `now` (Unix seconds) until a JWT's `exp`, read without verifying (the token is the
/// endpoint's, not ours to check; we only need to know how long to keep it).
pub(super) fn jwt_lifetime(token: &str, now: u64) -> Option<Duration> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let exp = v.get("exp")?.as_u64()?;
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

#[async_trait::async_trait]
impl Mint for HttpConnector {
    fn inputs(&self, s: &VerifiedSession, req: RequestInfo<'_>) -> Result<Value, ExchangeError> {
        let c = &s.claims;
        let custom: serde_json::Map<String, Value> = c
            .iter()
            .filter(|(k, _)| !STANDARD_CLAIMS.contains(k))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Ok(json!({
            "user": {
                "id": user_id(s)?,
                "login_ids": c.get("loginIds").cloned().unwrap_or(json!([])),
                "email": c.get("email"),
                "phone": c.get("phone"),
                "name": c.get("name"),
            },
            "tenant": c.get("dct"),
            "tenants": c.get("tenants").cloned().unwrap_or(json!({})),
            "roles": c.get("roles").cloned().unwrap_or(json!([])),
            "permissions": c.get("permissions").cloned().unwrap_or(json!([])),
            "claims": custom,
            "request": { "route": req.route, "method": req.method, "path": req.path },
        }))
    }

    /// Every custom claim (it sends them all), and of the standard ones those it names.
    fn claims_read(&self, kept: &mut ClaimsKept) {
        const NAMED: &[&str] = &[
            "sub",
            "dsub",
            "loginIds",
            "email",
            "phone",
            "name",
            "dct",
            "tenants",
            "roles",
            "permissions",
        ];
        let skipped: Vec<&str> = STANDARD_CLAIMS
            .iter()
            .copied()
            .filter(|c| !NAMED.contains(c))
            .collect();
        kept.read_all_but(&skipped);
    }

    /// The token is per user and route: the method and path are sent for context but do not split
    /// the cache (one mint per path would defeat it).
    fn cache_inputs(&self, inputs: &Value) -> Value {
        let mut v = inputs.clone();
        if let Some(r) = v.get_mut("request").and_then(Value::as_object_mut) {
            r.remove("method");
            r.remove("path");
        }
        v
    }

    async fn mint(&self, inputs: &Value) -> Result<Minted, ExchangeError> {
        let body =
            bytes::Bytes::from(serde_json::to_vec(inputs).map_err(|e| self.fail(e.to_string()))?);
        let resp = self.call(body).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.fail(format!("endpoint answered {status}")));
        }
        let body = read_body(resp, MAX_REPLY_BYTES)
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        let reply: Value =
            serde_json::from_slice(&body).map_err(|_| self.fail("reply is not JSON"))?;
        // `token_field` may be a dotted path (`data.access_token`) for endpoints that nest it.
        let raw = reply
            .as_object()
            .and_then(|o| lookup(o, &self.token_field))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                self.fail(format!("reply has no string {:?} field", self.token_field))
            })?;
        let token =
            ExternalToken::new(raw).ok_or_else(|| self.fail("reply token is not visible ASCII"))?;
        let lifetime = match &reply["expires_in"] {
            Value::Number(n) => n.as_u64().map(Duration::from_secs),
            Value::String(s) => s.parse().ok().map(Duration::from_secs),
            _ => None,
        }
        .or_else(|| jwt_lifetime(raw, self.clock.unix()))
        .or(self.ttl)
        .ok_or_else(|| self.fail("reply has no expires_in and the token no exp: set ttl"))?;
        if lifetime.is_zero() {
            return Err(self.fail("reply token is already expired"));
        }
        Ok(Minted { token, lifetime })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn lifetime_from_jwt_exp() {
        let now = 1_700_000_000;
        let payload = URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{}}}", now + 120));
        let token = format!("e30.{payload}.sig");
        assert_eq!(jwt_lifetime(&token, now), Some(Duration::from_secs(120)));
        assert_eq!(jwt_lifetime(&token, now + 200), Some(Duration::ZERO));
        assert!(jwt_lifetime("opaque-token", now).is_none());
    }
}
