//! The access line and request metrics of every proxied request, and what feeds them.
//!
//! The access line is formatted here, not through `tracing`'s field visitors and fmt layer: a
//! fixed field order written into a reused buffer and handed to the same batching writer thread
//! as every other line (one `write` call per line, one syscall per batch). Through `tracing` it
//! cost ~16k instructions per request, 12% of a whole proxied request (docs/performance.md).
//! The line has the shape `tracing-subscriber` gives every other line (text or JSON, the same
//! timestamp), so a log pipeline sees one format. Whether it is written still follows the live
//! `tracing` filter (`log.level`, `EXTOKEN_LOG`, SIGHUP).
//!
//! What it may contain: route, method, path *without* the query, status, outcome and reason
//! words, error kind, durations, request id. Never a header value, cookie, token or query string.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use tracing_appender::non_blocking::NonBlocking;

use super::{new_request_id_value, sane_request_id, REQUEST_ID};
use crate::config::LogFormat;
use crate::metrics::{metrics, RouteMetrics};

mod line;

use line::Line;

/// Where access lines go: the process's batching log writer, in the configured format.
#[derive(Clone)]
pub(crate) struct AccessLog {
    writer: NonBlocking,
    json: bool,
}

impl AccessLog {
    pub(super) fn new(writer: NonBlocking, format: LogFormat) -> AccessLog {
        AccessLog {
            writer,
            json: matches!(format, LogFormat::Json),
        }
    }

    /// Writes one line, if `extoken::access` is enabled at `info` by the live filter.
    fn write(&self, line: &Line<'_>) {
        if !tracing::enabled!(target: "extoken::access", tracing::Level::INFO) {
            return;
        }
        thread_local! {
            static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            if self.json {
                line.json(&mut b, now);
            } else {
                line.text(&mut b, now);
            }
            // One message to the writer thread (a clone is two counter bumps). It drops the line
            // (and counts it) when its queue is full: a proxy thread never blocks on the log.
            let _ = self.writer.clone().write_all(&b);
        });
    }
}

/// What one request did, collected across the proxy phases for the access line and metrics.
pub(crate) struct RequestLog {
    pub(crate) start: Instant,
    /// The request id as a header value, made once: it goes upstream and back to the client.
    /// (The client's own is shared with its request head, not copied.)
    pub(crate) request_id_value: Option<http::HeaderValue>,
    /// The route's metric handles (and name), once routed.
    pub(crate) route: Option<Arc<RouteMetrics>>,
    pub(crate) outcome: Option<&'static str>,
    pub(crate) reason: Option<&'static str>,
    /// The request went on with a session extoken refreshed for it (`session_refreshed=true`).
    pub(crate) session_refreshed: bool,
    upstream_start: Option<Instant>,
    upstream_status: Option<u16>,
    upstream_time: Option<Duration>,
    /// The client certificate verified in the connection's TLS handshake.
    pub(crate) client_cert: Option<Arc<super::ClientCert>>,
    /// An upgraded connection (WebSocket after a `101`): bytes from the client, bytes to it.
    pub(crate) upgraded: Option<(u64, u64)>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            start: Instant::now(),
            request_id_value: None,
            route: None,
            outcome: None,
            reason: None,
            session_refreshed: false,
            upstream_start: None,
            upstream_status: None,
            upstream_time: None,
            client_cert: None,
            upgraded: None,
        }
    }
}

impl RequestLog {
    /// Takes the `X-Request-Id` a trusted proxy sent (`peer_trusted`) if sane, else makes one:
    /// a client's own is never the id (Envoy's `preserve_external_request_id: false`), or any
    /// client could make its requests' lines pass for another's.
    pub(crate) fn begin(&mut self, req: &RequestHeader, peer_trusted: bool) {
        self.request_id_value = Some(match req.headers.get(REQUEST_ID) {
            Some(v) if peer_trusted && sane_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id_value(),
        });
    }

    /// The request id (empty before the head was read).
    pub(crate) fn request_id(&self) -> &str {
        // A sane id is visible ASCII, so `to_str` holds.
        self.request_id_value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub(crate) fn route(&mut self, route: &Arc<RouteMetrics>) {
        self.route = Some(route.clone());
    }

    /// An answer extoken gave itself (a refusal).
    pub(crate) fn answered(&mut self, outcome: &'static str, reason: &'static str) {
        self.outcome = Some(outcome);
        self.reason = Some(reason);
    }

    pub(crate) fn upstream_started(&mut self) {
        self.upstream_start.get_or_insert_with(Instant::now);
    }

    pub(crate) fn upstream_answered(&mut self, status: u16) {
        self.upstream_status = Some(status);
        self.upstream_time = self.upstream_start.map(|t| t.elapsed());
    }
}

/// The `logging` phase: one access line, and the request metrics, for a finished request; the
/// end of its trace's SERVER span, whose ids the line carries.
pub(crate) fn log_request(
    session: &Session,
    e: Option<&Error>,
    log: &RequestLog,
    access: Option<&AccessLog>,
    trace: Option<super::trace::RequestTrace>,
) {
    let req = session.req_header();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let outcome = log.outcome.unwrap_or(match (log.upstream_status, e) {
        (Some(_), None) => "forwarded",
        (Some(_), Some(e)) if *e.esource() == ErrorSource::Downstream => "client_error",
        (Some(_), Some(_)) => "upstream_error",
        (None, Some(e)) if *e.esource() == ErrorSource::Downstream => "client_error",
        (None, _) => "upstream_error",
    });
    let unmatched;
    let rm = match &log.route {
        Some(r) => r,
        None => {
            unmatched = RouteMetrics::unmatched();
            &unmatched
        }
    };
    let duration = log.start.elapsed();

    rm.count(outcome);
    rm.observe(duration.as_secs_f64());
    if outcome == "unauthorized" || outcome == "forbidden" {
        metrics()
            .auth_failures_total
            .with_label_values(&[log.reason.unwrap_or("other")])
            .inc();
    }
    if let Some(s) = log.upstream_status {
        rm.upstream(s);
    }
    let ids = trace.and_then(|t| {
        let ids = t.ids();
        t.end(status, outcome, log.reason, e.map(|e| e.etype().as_str()));
        ids
    });

    if let Some(access) = access {
        access.write(&Line {
            request_id: log.request_id(),
            route: rm.name(),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            outcome,
            reason: log.reason,
            error: e.map(|e| e.etype().as_str()),
            duration,
            upstream_status: log.upstream_status,
            upstream_time: log.upstream_time,
            client_cert: log.client_cert.as_deref(),
            upgraded: log.upgraded,
            session_refreshed: log.session_refreshed,
            trace: ids.as_ref(),
        });
    }
}

/// Replaces pingora's retry warning (its error context is not ours to vouch for).
pub(crate) fn retry_warning(e: &Error, request_id: &str) {
    tracing::warn!(target: "extoken::proxy", request_id, error = e.etype().as_str(), source = e.esource().as_str(), "upstream attempt failed; retrying");
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
