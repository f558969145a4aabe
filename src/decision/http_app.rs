//! The HTTP decision listener (`decision.listen`): a pingora `ServeHttp` app behind the proxy
//! listener's client limits ([`crate::listener::ClientLimits`]), on the live gateway.
//!
//! The answer is what nginx, Traefik and Envoy read: an allow is exactly `200` with the headers
//! to forward (and, for Envoy, `x-envoy-auth-headers-to-remove`); a deny is the proxy's
//! [`Answer`] as the proxy writes it (status, `WWW-Authenticate`, `Retry-After`, JSON body).

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::{original, Decision, Report};
use crate::answer::Answer;
use crate::drain::Drain;
use crate::gateway::Gateway;
use crate::listener;
use crate::rewrite::decision::Forward;
use crate::telemetry;

/// Envoy `ext_authz` HTTP removes the headers this lists (comma-separated) from the request.
const ENVOY_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(crate) struct DecisionHttp {
    state: Arc<ArcSwap<Gateway>>,
    drain: Drain,
}

impl DecisionHttp {
    pub(crate) fn new(state: Arc<ArcSwap<Gateway>>, drain: Drain) -> DecisionHttp {
        DecisionHttp { state, drain }
    }
}

#[async_trait]
impl ServeHttp for DecisionHttp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        // A graceful shutdown waits for the decision, as for a proxied request.
        let _in_flight = self.drain.enter();
        let gw = self.state.load_full();
        // No HTTP/2 connection registry: this listener speaks HTTP/1.1 only (`plain_http1`), so
        // every request has its connection's adapter (deadlines, memo) and none is an h2 stream.
        listener::head_complete(s, &gw.config.limits, None);
        let peer = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let trust = super::trusted(&gw, peer);
        // A caller's own request id only from a trusted proxy, as on the proxy listener.
        let offered = s.req_header().headers.get(&X_REQUEST_ID);
        let request_id = request_id(offered.filter(|_| trust.is_ok()));
        let prefix = gw
            .config
            .decision
            .as_ref()
            .map_or("/envoy", |d| d.envoy_path_prefix.as_str());
        let req = s.req_header();
        let protocol = original::protocol_of(req.raw_path(), &req.headers, prefix);
        let mut method = req.method.clone();
        let asked = trust
            .and_then(|()| original::from_http(&req.method, req.raw_path(), &req.headers, prefix));
        let decision = match asked {
            Ok((_, original)) => {
                method = original.method.clone();
                let mut memo = listener::take_memo(s, None);
                let d = super::decide(&gw, original, &mut memo).await;
                listener::put_memo(s, None, memo);
                d
            }
            Err(answer) => Decision::refused(answer),
        };
        let report = Report {
            protocol,
            request_id: request_id.to_str().unwrap_or(""),
            method: method.as_str(),
            started,
        };
        super::report(&report, &decision);
        listener::request_done(s);
        match decision.verdict {
            Ok(forward) => allow(&forward, request_id),
            Err(answer) => deny(&answer, request_id),
        }
    }
}

/// The client's `X-Request-Id` if sane, else a new one (as the proxy does).
pub(crate) fn request_id(v: Option<&HeaderValue>) -> HeaderValue {
    match v {
        Some(v) if telemetry::sane_request_id(v.as_bytes()) => v.clone(),
        _ => telemetry::new_request_id_value(),
    }
}

/// `200`, the headers to set, and Envoy's removal list.
pub(crate) fn allow(f: &Forward, request_id: HeaderValue) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    let h = r.headers_mut();
    for (name, value) in &f.set {
        h.insert(name.clone(), value.clone());
    }
    if !f.remove.is_empty() {
        let list = f
            .remove
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(",");
        // Header names joined by commas are a valid value.
        if let Ok(v) = HeaderValue::from_str(&list) {
            h.insert(ENVOY_REMOVE, v);
        }
    }
    common(h, request_id, 0);
    r
}

/// The proxy's answer: same status, challenge, `Retry-After` and body.
pub(crate) fn deny(a: &Answer, request_id: HeaderValue) -> Response<Vec<u8>> {
    let mut r = Response::new(a.body.to_vec());
    *r.status_mut() =
        http::StatusCode::from_u16(a.status).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = a
        .www_authenticate
        .as_deref()
        .and_then(|w| HeaderValue::from_str(w).ok())
    {
        h.insert(http::header::WWW_AUTHENTICATE, v);
    }
    if let Some(s) = a.retry_after {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    common(h, request_id, a.body.len());
    r
}

fn common(h: &mut http::HeaderMap, request_id: HeaderValue, len: usize) {
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(X_REQUEST_ID, request_id);
}
