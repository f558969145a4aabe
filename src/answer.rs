//! The answers extoken gives instead of forwarding: what status, which headers, what body.
//!
//! Kept apart from pingora so every answer is a plain value a unit test can look at. Bodies are
//! small JSON documents; descriptions come from our own error texts, never from the token, the
//! connector's reply or a secret.

use bytes::Bytes;

use crate::authorize::Denied;
use crate::exchange::ExchangeError;
use crate::refresh::RefreshError;
use crate::verify::{AuthError, VerifyError};

mod grpc;
pub(crate) use grpc::is_grpc;

/// A response extoken writes itself. `outcome`/`reason` feed logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub retry_after: Option<u32>,
    pub body: Bytes,
    pub outcome: &'static str,
    pub reason: &'static str,
}

/// Seconds a client is told to wait when a dependency is down.
pub(crate) const RETRY_AFTER_SECS: u32 = 5;

impl Answer {
    pub(crate) fn unauthorized(e: &AuthError) -> Answer {
        match e {
            AuthError::Missing => Answer {
                status: 401,
                www_authenticate: Some(r#"Bearer realm="extoken""#.into()),
                retry_after: None,
                body: json_body("unauthorized", "no session token: send Authorization: Bearer <session JWT> or the session cookie"),
                outcome: "unauthorized",
                reason: e.reason(),
            },
            _ => Self::invalid_token(&e.to_string(), e.reason()),
        }
    }

    fn invalid_token(description: &str, reason: &'static str) -> Answer {
        Answer {
            status: 401,
            www_authenticate: Some(format!(
                r#"Bearer error="invalid_token", error_description="{}""#,
                quoted_safe(description)
            )),
            retry_after: None,
            body: json_body("invalid_token", description),
            outcome: "unauthorized",
            reason,
        }
    }

    pub(crate) fn from_verify(e: &VerifyError) -> Answer {
        match e {
            VerifyError::Invalid(a) => Self::unauthorized(a),
            VerifyError::KeysUnavailable => {
                Self::unavailable("Descope keys are not available yet", "jwks_unavailable")
            }
        }
    }

    pub(crate) fn from_exchange(e: &ExchangeError) -> Answer {
        match e {
            ExchangeError::MissingClaim { .. } => {
                Self::invalid_token(&e.to_string(), "missing_external_token")
            }
            ExchangeError::InvalidClaim { .. } => {
                Self::invalid_token(&e.to_string(), "invalid_external_token")
            }
            ExchangeError::Refused { .. } => Self::invalid_token(&e.to_string(), "session_refused"),
            ExchangeError::Unavailable { connector, .. } => Self::unavailable(
                &format!("connector {connector} is unavailable"),
                "connector_unavailable",
            ),
            ExchangeError::Forbidden { rule, .. } => Self::forbidden(&e.to_string(), rule),
        }
    }

    /// A request whose session could not be refreshed: `original` is why its own session was
    /// refused. A refresh token that does not verify, or that Descope refused, gets the usual
    /// answer to `original` (the stale session stays refused); Descope unreachable gets a 401
    /// saying so (a 5xx would be retried by load balancers, and the client can sign in again).
    pub(crate) fn refresh_failed(e: &RefreshError, original: &VerifyError) -> Answer {
        match e {
            RefreshError::Invalid(VerifyError::KeysUnavailable) => {
                Self::from_verify(&VerifyError::KeysUnavailable)
            }
            RefreshError::Invalid(_) => Self::from_verify(original),
            RefreshError::Refused => Answer {
                reason: "refresh_refused",
                ..Self::from_verify(original)
            },
            RefreshError::Unavailable => Self::invalid_token(&e.to_string(), "refresh_unavailable"),
        }
    }

    pub(crate) fn unavailable(description: &str, reason: &'static str) -> Answer {
        Answer {
            status: 503,
            www_authenticate: None,
            retry_after: Some(RETRY_AFTER_SECS),
            body: json_body("temporarily_unavailable", description),
            outcome: "unavailable",
            reason,
        }
    }

    /// 431: the request head is larger than the gateway accepts (never forwarded).
    pub(crate) fn headers_too_large() -> Answer {
        Answer {
            status: 431,
            www_authenticate: None,
            retry_after: None,
            body: json_body(
                "request_header_fields_too_large",
                "request headers are too large",
            ),
            outcome: "refused",
            reason: "headers_too_large",
        }
    }

    /// 400: the request target, host or headers are ambiguous or malformed; never forwarded.
    /// `description` is ours (which rule), never the client's bytes.
    pub(crate) fn bad_request(description: &str, reason: &'static str) -> Answer {
        Answer {
            status: 400,
            www_authenticate: None,
            retry_after: None,
            body: json_body("bad_request", description),
            outcome: "bad_request",
            reason,
        }
    }

    /// 403: a valid session that a rule does not admit (RFC 6750 `insufficient_scope`).
    /// `description` and `rule` name the rule (`roles`, `claims.plan`, a connector's `role`),
    /// never the user's claims; the body carries `rule` for clients and support.
    pub(crate) fn forbidden(description: &str, rule: &str) -> Answer {
        let body = serde_json::json!({
            "error": "insufficient_scope",
            "error_description": description,
            "rule": rule,
        });
        Answer {
            status: 403,
            www_authenticate: Some(format!(
                r#"Bearer error="insufficient_scope", error_description="{}""#,
                quoted_safe(description)
            )),
            retry_after: None,
            body: Bytes::from(body.to_string()),
            outcome: "forbidden",
            reason: "forbidden",
        }
    }

    /// 403 for a route's `require:` rule that the session does not meet.
    pub(crate) fn denied(d: Denied<'_>) -> Answer {
        Self::forbidden(
            &format!("the session does not meet require.{} of this route", d.0),
            d.0,
        )
    }

    /// What pingora could not do (handed to `fail_to_proxy`): `status` is 504 for an upstream
    /// timeout, 502 for another upstream failure, 4xx for a bad request, 500 otherwise;
    /// `outcome` the metric word. The body names the route, never the upstream's address.
    pub(crate) fn proxy_failure(status: u16, outcome: &'static str, route: Option<&str>) -> Answer {
        let route = route.unwrap_or("-");
        let (error, description) = match status {
            504 => (
                "gateway_timeout",
                format!("the upstream of route {route} did not answer in time"),
            ),
            502 => (
                "bad_gateway",
                format!("the upstream of route {route} could not be reached or failed"),
            ),
            408 => (
                "request_timeout",
                "the request body stalled longer than client_body_timeout".into(),
            ),
            413 => (
                "payload_too_large",
                format!("the request body is larger than route {route} accepts"),
            ),
            400..=499 => ("bad_request", "the request could not be processed".into()),
            _ => (
                "internal_error",
                "the gateway failed to process the request".into(),
            ),
        };
        Answer {
            status,
            www_authenticate: None,
            retry_after: None,
            body: json_body(error, &description),
            outcome,
            reason: error,
        }
    }

    /// 408: the client took too long to send its request (`description` says which part).
    pub(crate) fn request_timeout(description: &str) -> Answer {
        Answer {
            status: 408,
            www_authenticate: None,
            retry_after: None,
            body: json_body("request_timeout", description),
            outcome: "client_error",
            reason: "request_timeout",
        }
    }

    /// 413: a declared body (`Content-Length`) over the route's `max_body_bytes`, refused before
    /// anything is forwarded.
    pub(crate) fn body_too_large(route: &str) -> Answer {
        Answer {
            outcome: "bad_request",
            reason: "body_too_large",
            ..Self::proxy_failure(413, "bad_request", Some(route))
        }
    }

    /// 403 on a decision listener: the peer is not in `decision.trusted_proxies`, so its word on
    /// the original request is not taken (no challenge: no credential would help).
    pub(crate) fn untrusted_peer() -> Answer {
        Answer {
            status: 403,
            www_authenticate: None,
            retry_after: None,
            body: json_body("forbidden", "this peer is not in decision.trusted_proxies"),
            outcome: "refused",
            reason: "untrusted_peer",
        }
    }

    pub(crate) fn no_route() -> Answer {
        Answer {
            status: 404,
            www_authenticate: None,
            retry_after: None,
            body: json_body("not_found", "no route for this request"),
            outcome: "no_route",
            reason: "no_route",
        }
    }
}

fn json_body(error: &str, description: &str) -> Bytes {
    let v = serde_json::json!({ "error": error, "error_description": description });
    Bytes::from(v.to_string())
}

/// RFC 6750 descriptions are quoted-strings limited to visible ASCII minus `"` and `\`.
fn quoted_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '\''
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_challenge_has_realm_only() {
        let a = Answer::unauthorized(&AuthError::Missing);
        assert_eq!(a.status, 401);
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some(r#"Bearer realm="extoken""#)
        );
    }

    #[test]
    fn bad_token_challenge_and_body_agree() {
        let a = Answer::unauthorized(&AuthError::Expired);
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some(r#"Bearer error="invalid_token", error_description="token has expired""#)
        );
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "token has expired");
        assert_eq!(a.reason, "expired");
    }

    #[test]
    fn missing_claim_mentions_claim() {
        let a = Answer::from_exchange(&ExchangeError::MissingClaim {
            claim: "externalToken".into(),
        });
        assert_eq!(a.status, 401);
        assert!(a.www_authenticate.unwrap().contains("externalToken"));
    }

    #[test]
    fn a_refused_session_is_invalid_token() {
        let a = Answer::from_exchange(&ExchangeError::Refused {
            connector: "idp".into(),
        });
        assert_eq!(
            (a.status, a.reason, a.retry_after),
            (401, "session_refused", None)
        );
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some(
                r#"Bearer error="invalid_token", error_description="the identity provider of connector idp refused the session""#
            )
        );
    }

    #[test]
    fn unavailable_has_retry_after() {
        let a = Answer::from_verify(&VerifyError::KeysUnavailable);
        assert_eq!((a.status, a.retry_after), (503, Some(RETRY_AFTER_SECS)));
    }

    #[test]
    fn forbidden_is_insufficient_scope() {
        let a = Answer::forbidden("role \"x\" is not allowed", "role");
        assert_eq!(
            (a.status, a.outcome, a.reason),
            (403, "forbidden", "forbidden")
        );
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some(
                r#"Bearer error="insufficient_scope", error_description="role 'x' is not allowed""#
            )
        );
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["error"], "insufficient_scope");
        assert_eq!(body["rule"], "role");
    }

    #[test]
    fn a_denial_names_the_rule_only() {
        let a = Answer::denied(Denied("claims.plan"));
        assert_eq!((a.status, a.reason), (403, "forbidden"));
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["rule"], "claims.plan");
        assert_eq!(
            body["error_description"],
            "the session does not meet require.claims.plan of this route"
        );
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some(
                r#"Bearer error="insufficient_scope", error_description="the session does not meet require.claims.plan of this route""#
            )
        );
    }

    #[test]
    fn refresh_failures_keep_the_usual_401_unless_descope_is_down() {
        let expired = VerifyError::Invalid(AuthError::Expired);
        let usual = Answer::from_verify(&expired);
        let invalid = RefreshError::Invalid(AuthError::BadSignature.into());
        assert_eq!(Answer::refresh_failed(&invalid, &expired), usual);
        let refused = Answer::refresh_failed(&RefreshError::Refused, &expired);
        assert_eq!((refused.status, refused.reason), (401, "refresh_refused"));
        assert_eq!(refused.www_authenticate, usual.www_authenticate);
        let down = Answer::refresh_failed(&RefreshError::Unavailable, &expired);
        assert_eq!((down.status, down.retry_after), (401, None));
        assert_eq!(
            down.www_authenticate.as_deref(),
            Some(
                r#"Bearer error="invalid_token", error_description="the session expired and could not be refreshed""#
            )
        );
        let keys = RefreshError::Invalid(VerifyError::KeysUnavailable);
        assert_eq!(Answer::refresh_failed(&keys, &expired).status, 503);
    }

    #[test]
    fn descriptions_are_header_safe() {
        assert_eq!(quoted_safe("a\"b\\c\nd"), "a'b'c'd");
    }
}
