//! One call to Descope's refresh endpoint, exactly as the Descope Python SDK 2.16.1 makes it
//! (`Auth.refresh_session`): `POST {base_url}/v1/auth/refresh`, body `{}`,
//! `Authorization: Bearer <project_id>:<refresh_jwt>`, `x-descope-project-id`,
//! `Content-Type: application/json`. The answer's `sessionJwt` is the new session; `refreshJwt`
//! (or a `DSR` Set-Cookie, which the SDK also reads) a rotated refresh token; `cookieExpiration`
//! and `cookieMaxAge` the cookies' lifetime. Nothing of a token or of the reply is ever logged.

use std::sync::Arc;
use std::time::Instant;

use http::header::{AUTHORIZATION, CONTENT_TYPE, SET_COOKIE};
use serde_json::Value;

use super::{Outcome, Refreshed, Refresher};
use crate::metrics::metrics;
use crate::verify::Verifier;

/// The cookie Descope sets a rotated refresh token in (the SDK's `REFRESH_SESSION_COOKIE_NAME`).
const DESCOPE_REFRESH_COOKIE: &str = "DSR";

/// Why a call gave no new session (only the kind is logged).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("refused with status {0}")]
    Refused(u16),
    #[error("answered status {0}")]
    Failed(u16),
    #[error("cannot reach the refresh endpoint: {0}")]
    Transport(String),
    #[error("{0}")]
    Reply(&'static str),
}

impl Refresher {
    /// Calls Descope (bounded by `timeout`, the whole reply included) and checks what it gave.
    pub(super) async fn call(&self, dsr: &str, verifier: &Verifier) -> Outcome {
        let started = Instant::now();
        let got = tokio::time::timeout(self.timeout, self.post(dsr)).await;
        metrics()
            .session_refresh_seconds
            .observe(started.elapsed().as_secs_f64());
        let result = match got {
            Err(_) => Err(CallError::Transport("timed out".into())),
            Ok(r) => r,
        };
        let result = match result {
            Ok((body, cookie_dsr)) => self.accept(&body, cookie_dsr, dsr, verifier).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(r) => Outcome::Refreshed(Arc::new(r)),
            Err(CallError::Refused(status)) => {
                tracing::info!(target: "extoken::refresh", status, "Descope refused a refresh token");
                Outcome::Refused
            }
            Err(e) => {
                tracing::warn!(target: "extoken::refresh", "session not refreshed: {e}");
                Outcome::Unavailable
            }
        }
    }

    /// The request; `Ok` is the reply's body and a `DSR` it set, if any.
    async fn post(&self, dsr: &str) -> Result<(Vec<u8>, Option<String>), CallError> {
        let req = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, format!("Bearer {}:{dsr}", self.project_id))
            .header("x-descope-project-id", &self.project_id)
            .header(CONTENT_TYPE, "application/json")
            .body("{}")
            .timeout(self.timeout);
        let resp = crate::telemetry::trace::send("session refresh", "POST", &self.url, req)
            .await
            // `without_url`: the message must not carry the URL (nor anything else of ours).
            .map_err(|e| CallError::Transport(e.without_url().to_string()))?;
        let status = resp.status();
        // A 4xx is Descope's word on the token; a 5xx or 429 is Descope in trouble.
        if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(CallError::Failed(status.as_u16()));
        }
        if !status.is_success() {
            return Err(CallError::Refused(status.as_u16()));
        }
        let cookie = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .find_map(|v| set_cookie_value(v.as_bytes(), DESCOPE_REFRESH_COOKIE));
        let body = crate::bounded::read_body(resp, self.max_bytes)
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        Ok((body, cookie))
    }

    /// Checks a 2xx reply: its `sessionJwt` must verify as a session of this project, a rotated
    /// refresh token as a refresh token (one that does not is not passed on).
    async fn accept(
        &self,
        body: &[u8],
        cookie_dsr: Option<String>,
        dsr: &str,
        verifier: &Verifier,
    ) -> Result<Refreshed, CallError> {
        let reply: serde_json::Map<String, Value> =
            serde_json::from_slice(body).map_err(|_| CallError::Reply("the reply is not JSON"))?;
        let text = |k: &str| {
            reply
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let number = |k: &str| reply.get(k).and_then(Value::as_u64).filter(|n| *n > 0);
        let session_jwt = text("sessionJwt").ok_or(CallError::Reply("no sessionJwt"))?;
        let session = verifier
            .verify(session_jwt)
            .await
            .map_err(|_| CallError::Reply("the sessionJwt is not a valid session"))?;
        let rotated = text("refreshJwt")
            .map(str::to_owned)
            .or(cookie_dsr)
            .filter(|t| t != dsr);
        let refresh_jwt = match rotated {
            Some(t) => match verifier.verify_refresh(&t).await {
                Ok(exp) => Some((t, exp)),
                Err(_) => {
                    tracing::warn!(target: "extoken::refresh", "the rotated refresh token is not valid; not set");
                    None
                }
            },
            None => None,
        };
        let now = self.clock.unix();
        let cookie_until = number("cookieExpiration")
            .or_else(|| number("cookieMaxAge").map(|a| now.saturating_add(a)));
        Ok(Refreshed {
            session_jwt: session_jwt.to_owned(),
            session_exp: session.exp,
            refresh_jwt,
            cookie_until,
        })
    }
}

/// The value of a `Set-Cookie: name=value; ...` for cookie `name`.
fn set_cookie_value(v: &[u8], name: &str) -> Option<String> {
    let pair = v.split(|&b| b == b';').next()?;
    let s = std::str::from_utf8(pair).ok()?;
    let (n, value) = s.split_once('=')?;
    (n.trim() == name)
        .then(|| value.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}
