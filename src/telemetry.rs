//! Logs: the `tracing` subscriber (`log.format`, `log.level`, `EXTOKEN_LOG`), and the access line
//! and request metrics of every proxied request.
//!
//! What a log line may contain: route names, methods, paths *without* their query string, statuses,
//! outcome/reason words, durations, request ids and error kinds. Never a header value, cookie,
//! token, secret or query string. pingora's own error lines carry error contexts we do not control,
//! so the proxy suppresses them and logs the error kind here instead; the targets of our
//! dependencies are capped at `info` (their `debug`/`trace` lines can print request heads).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::WorkerGuard;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};
use crate::metrics::{metrics, RouteMetrics};

pub(crate) const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("EXTOKEN_LOG: {0}")]
    Filter(String),
    #[error("a log subscriber is already installed")]
    AlreadyInstalled,
}

/// The installed subscriber: its filter, for a reload to apply a new `log.level` to, and its
/// writer, to flush before the process exits.
#[derive(Clone)]
pub struct LogLevel {
    filter: reload::Handle<EnvFilter, Registry>,
    writer: Arc<Mutex<Option<WorkerGuard>>>,
}

impl LogLevel {
    pub fn set(&self, level: &str) -> Result<(), TelemetryError> {
        self.filter
            .reload(filter_for(level)?)
            .map_err(|e| TelemetryError::Filter(e.to_string()))
    }

    /// Writes out every line logged so far and stops the writer thread (call just before the
    /// process exits: later lines are dropped).
    pub fn flush(&self) {
        let guard = self.writer.lock().map(|mut g| g.take());
        drop(guard);
    }
}

/// Lines queued for the writer thread before new ones are dropped rather than block a proxy
/// thread (a gateway must not stall on a slow stderr).
const LOG_QUEUE_LINES: usize = 128 * 1024;

/// The filter for a level: ours at `level`, everybody else's at most `info` (pingora, hyper and
/// reqwest print request heads at `debug`/`trace`). `EXTOKEN_LOG` replaces the level; when it is a
/// full directive list (`extoken=debug,pingora_core=warn`) it is used as written.
fn filter_for(level: &str) -> Result<EnvFilter, TelemetryError> {
    let level = std::env::var("EXTOKEN_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| level.to_string());
    let level = level.trim().to_ascii_lowercase();
    let directives = if level.contains(['=', ',']) {
        level
    } else {
        let others = match level.as_str() {
            "debug" | "trace" => "info",
            l => l,
        };
        format!("{others},extoken={level}")
    };
    EnvFilter::try_new(&directives).map_err(|e| TelemetryError::Filter(e.to_string()))
}

/// Installs the process's subscriber. Call once, before the server starts.
///
/// Lines go to stderr through a writer thread that batches them: a proxy thread only queues its
/// access line, and the writer makes one `write` per batch (a 64 KiB buffer flushed whenever the
/// queue runs empty), not one per line.
pub fn init(cfg: &LogConfig) -> Result<LogLevel, TelemetryError> {
    let (filter, handle) = reload::Layer::new(filter_for(&cfg.level)?);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("extoken-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match cfg.format {
        LogFormat::Text => fmt.with_ansi(false).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(LogLevel {
        filter: handle,
        writer: Arc::new(Mutex::new(Some(guard))),
    })
}

/// A sane incoming request id: 1..=128 visible ASCII characters.
pub(crate) fn sane_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// 32 hex digits: a per-process random prefix, then a counter passed through a bijective mix
/// (splitmix64's finalizer with a random key). Unique within the process and across restarts,
/// not a readable sequence (clients see it), and one allocation instead of a CSPRNG call per
/// request: ids correlate log lines, they guard nothing.
pub fn new_request_id() -> String {
    use std::fmt::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (prefix, key) = *SEED.get_or_init(|| {
        use aws_lc_rs::rand::SecureRandom;
        let mut b = [0u8; 16];
        if aws_lc_rs::rand::SystemRandom::new().fill(&mut b).is_err() {
            // Not expected; the clock still separates processes.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            b = t.to_le_bytes();
        }
        let (p, k) = b.split_at(8);
        (
            u64::from_le_bytes(p.try_into().unwrap_or_default()),
            u64::from_le_bytes(k.try_into().unwrap_or_default()),
        )
    });
    let mut z = COUNTER.fetch_add(1, Ordering::Relaxed) ^ key;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut s = String::with_capacity(32);
    let _ = write!(s, "{prefix:016x}{z:016x}");
    s
}

/// What one request did, collected across the proxy phases for the access line and metrics.
pub(crate) struct RequestLog {
    pub(crate) start: Instant,
    pub(crate) request_id: String,
    /// The same as a header value, made once: it goes upstream and back to the client.
    pub(crate) request_id_value: Option<http::HeaderValue>,
    /// The route's metric handles (and name), once routed.
    pub(crate) route: Option<Arc<RouteMetrics>>,
    pub(crate) outcome: Option<&'static str>,
    pub(crate) reason: Option<&'static str>,
    upstream_start: Option<Instant>,
    upstream_status: Option<u16>,
    upstream_time: Option<Duration>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            start: Instant::now(),
            request_id: String::new(),
            request_id_value: None,
            route: None,
            outcome: None,
            reason: None,
            upstream_start: None,
            upstream_status: None,
            upstream_time: None,
        }
    }
}

impl RequestLog {
    /// Takes the client's `X-Request-Id` if sane, else makes one.
    pub(crate) fn begin(&mut self, req: &RequestHeader) {
        self.request_id = match req.headers.get(REQUEST_ID) {
            Some(v) if sane_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => new_request_id(),
        };
        self.request_id_value = http::HeaderValue::from_str(&self.request_id).ok();
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

    /// Sets `X-Request-Id` on a response head.
    pub(crate) fn stamp_response(&self, h: &mut ResponseHeader) -> Result<()> {
        if let Some(v) = &self.request_id_value {
            h.insert_header(REQUEST_ID, v.clone())?;
        }
        Ok(())
    }
}

/// The `logging` phase: one access line, and the request metrics, for a finished request.
pub(crate) fn log_request(session: &Session, e: Option<&Error>, log: &RequestLog) {
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
    let error = e.map(|e| e.etype().as_str());
    let unmatched;
    let rm = match &log.route {
        Some(r) => r,
        None => {
            unmatched = RouteMetrics::unmatched();
            &unmatched
        }
    };
    let route = rm.name();
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

    let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    tracing::info!(
        target: "extoken::access",
        request_id = %log.request_id,
        route,
        method = %req.method,
        path = %req.uri.path(),
        status,
        outcome,
        reason = log.reason,
        error,
        duration_ms = ms(duration),
        upstream_status = log.upstream_status,
        upstream_ms = log.upstream_time.map(ms),
        "request"
    );
}

/// Replaces pingora's retry warning (its error context is not ours to vouch for).
pub(crate) fn retry_warning(e: &Error, request_id: &str) {
    tracing::warn!(target: "extoken::proxy", request_id, error = e.etype().as_str(), source = e.esource().as_str(), "upstream attempt failed; retrying");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(sane_request_id(b"abc-123_X.y"));
        assert!(!sane_request_id(b""));
        assert!(!sane_request_id(b"has space"));
        assert!(!sane_request_id(&[b'a'; 129]));
        assert!(sane_request_id(&[b'a'; 128]));
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        let ids: std::collections::HashSet<String> =
            (0..100_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 100_000, "unique");
        let tails: Vec<u64> = (0..3)
            .map(|_| u64::from_str_radix(&new_request_id()[16..], 16).unwrap())
            .collect();
        assert!(
            tails[1] != tails[0] + 1 && tails[2] != tails[1] + 1,
            "not a readable sequence"
        );
    }

    #[test]
    fn dependencies_are_capped_at_info() {
        if std::env::var_os("EXTOKEN_LOG").is_some() {
            return;
        }
        let f = filter_for("trace").unwrap().to_string();
        assert!(f.contains("extoken=trace"), "{f}");
        assert!(f.split(',').any(|d| d == "info"), "{f}");
    }
}
