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

/// One access line's fields, in the order they are written.
struct Line<'a> {
    request_id: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    outcome: &'a str,
    reason: Option<&'a str>,
    error: Option<&'a str>,
    duration: Duration,
    upstream_status: Option<u16>,
    upstream_time: Option<Duration>,
    client_cert: Option<&'a super::ClientCert>,
    upgraded: Option<(u64, u64)>,
    session_refreshed: bool,
    /// A sampled request's SERVER span.
    trace: Option<&'a opentelemetry::trace::SpanContext>,
}

impl Line<'_> {
    /// `tracing-subscriber`'s full text format: `Display` fields bare, `&str` fields quoted.
    fn text(&self, b: &mut Vec<u8>, now: Duration) {
        timestamp(b, now);
        b.extend_from_slice(b"  INFO extoken::access: request request_id=");
        text_bare(b, self.request_id);
        b.extend_from_slice(b" route=");
        quoted(b, self.route);
        b.extend_from_slice(b" method=");
        text_bare(b, self.method);
        b.extend_from_slice(b" path=");
        text_bare(b, self.path);
        b.extend_from_slice(b" status=");
        digits(b, u64::from(self.status), 1);
        b.extend_from_slice(b" outcome=");
        quoted(b, self.outcome);
        if let Some(r) = self.reason {
            b.extend_from_slice(b" reason=");
            quoted(b, r);
        }
        if let Some(e) = self.error {
            b.extend_from_slice(b" error=");
            quoted(b, e);
        }
        b.extend_from_slice(b" duration_ms=");
        millis(b, self.duration);
        if let Some(s) = self.upstream_status {
            b.extend_from_slice(b" upstream_status=");
            digits(b, u64::from(s), 1);
        }
        if let Some(t) = self.upstream_time {
            b.extend_from_slice(b" upstream_ms=");
            millis(b, t);
        }
        if let Some(c) = self.client_cert {
            b.extend_from_slice(b" client_cert_subject=");
            quoted(b, &c.subject);
            b.extend_from_slice(b" client_cert_sha256=");
            quoted(b, &c.sha256);
        }
        if let Some((from_client, to_client)) = self.upgraded {
            b.extend_from_slice(b" upgraded=true bytes_from_client=");
            digits(b, from_client, 1);
            b.extend_from_slice(b" bytes_to_client=");
            digits(b, to_client, 1);
        }
        if self.session_refreshed {
            b.extend_from_slice(b" session_refreshed=true");
        }
        if let Some(t) = self.trace {
            let _ = write!(b, " trace_id={} span_id={}", t.trace_id(), t.span_id());
        }
        b.push(b'\n');
    }

    /// `tracing-subscriber`'s JSON format with `flatten_event`: timestamp, level, message, the
    /// fields, target.
    fn json(&self, b: &mut Vec<u8>, now: Duration) {
        b.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(b, now);
        b.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
        quoted(b, self.request_id);
        b.extend_from_slice(b",\"route\":");
        quoted(b, self.route);
        b.extend_from_slice(b",\"method\":");
        quoted(b, self.method);
        b.extend_from_slice(b",\"path\":");
        quoted(b, self.path);
        b.extend_from_slice(b",\"status\":");
        digits(b, u64::from(self.status), 1);
        b.extend_from_slice(b",\"outcome\":");
        quoted(b, self.outcome);
        if let Some(r) = self.reason {
            b.extend_from_slice(b",\"reason\":");
            quoted(b, r);
        }
        if let Some(e) = self.error {
            b.extend_from_slice(b",\"error\":");
            quoted(b, e);
        }
        b.extend_from_slice(b",\"duration_ms\":");
        millis(b, self.duration);
        if let Some(s) = self.upstream_status {
            b.extend_from_slice(b",\"upstream_status\":");
            digits(b, u64::from(s), 1);
        }
        if let Some(t) = self.upstream_time {
            b.extend_from_slice(b",\"upstream_ms\":");
            millis(b, t);
        }
        if let Some(c) = self.client_cert {
            b.extend_from_slice(b",\"client_cert_subject\":");
            quoted(b, &c.subject);
            b.extend_from_slice(b",\"client_cert_sha256\":");
            quoted(b, &c.sha256);
        }
        if let Some((from_client, to_client)) = self.upgraded {
            b.extend_from_slice(b",\"upgraded\":true,\"bytes_from_client\":");
            digits(b, from_client, 1);
            b.extend_from_slice(b",\"bytes_to_client\":");
            digits(b, to_client, 1);
        }
        if self.session_refreshed {
            b.extend_from_slice(b",\"session_refreshed\":true");
        }
        if let Some(t) = self.trace {
            let _ = write!(
                b,
                ",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                t.trace_id(),
                t.span_id()
            );
        }
        b.extend_from_slice(b",\"target\":\"extoken::access\"}\n");
    }
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(b: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    digits(b, us / 1000, 1);
    b.push(b'.');
    digits(b, us % 1000, 3);
}

/// `n` in decimal, zero-padded to `width` digits: the formatting machinery of `write!` costs ~1k
/// instructions per number, and an access line has four.
fn digits(b: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    while n > 0 || tmp.len() - i < width {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    b.extend_from_slice(&tmp[i..]);
}

/// A bare text value: as it is when it is visible ASCII (every path extoken forwards is), else
/// quoted and escaped, so a line can never be split or spoofed by what a client sent.
fn text_bare(b: &mut Vec<u8>, s: &str) {
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_graphic() && c != b'"') {
        b.extend_from_slice(s.as_bytes());
    } else {
        quoted(b, s);
    }
}

/// A quoted value, JSON-escaped (in the text format too: a line stays one line).
fn quoted(b: &mut Vec<u8>, s: &str) {
    b.push(b'"');
    escape(b, s);
    b.push(b'"');
}

/// JSON string escaping (also valid inside the text format's quotes): `"`, `\\` and control
/// characters; other UTF-8 as is.
fn escape(b: &mut Vec<u8>, s: &str) {
    for &c in s.as_bytes() {
        match c {
            b'"' => b.extend_from_slice(b"\\\""),
            b'\\' => b.extend_from_slice(b"\\\\"),
            b'\n' => b.extend_from_slice(b"\\n"),
            b'\r' => b.extend_from_slice(b"\\r"),
            b'\t' => b.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                let _ = write!(b, "\\u{:04x}", c);
            }
            _ => b.push(c),
        }
    }
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber`'s default timer prints it:
/// `2026-11-27T18:25:41.123456Z`. The date part is computed once per second per thread.
fn timestamp(b: &mut Vec<u8>, since_epoch: Duration) {
    thread_local! {
        static LAST: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let secs = since_epoch.as_secs();
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        if l.0 != secs {
            *l = (secs, civil(secs));
        }
        b.extend_from_slice(&l.1);
    });
    b.push(b'.');
    digits(b, u64::from(since_epoch.subsec_micros()), 6);
    b.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (Howard Hinnant's civil-from-days).
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 19];
    let mut w = &mut out[..];
    let _ = write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        year.clamp(0, 9999),
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    out
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
