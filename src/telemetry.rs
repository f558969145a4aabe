//! Logs: the `tracing` subscriber (`log.format`, `log.level`, `EXTOKEN_LOG`), and the access line
//! and request metrics of every proxied request.
//!
//! What a log line may contain: route names, methods, paths *without* their query string, statuses,
//! outcome/reason words, durations, request ids and error kinds. Never a header value, cookie,
//! token, secret or query string. pingora's own error lines carry error contexts we do not control,
//! so the proxy suppresses them and logs the error kind here instead; the targets of our
//! dependencies are capped at `info` (their `debug`/`trace` lines can print request heads).

mod access;
pub mod trace;

use std::sync::{Arc, Mutex};

use tracing_appender::non_blocking::WorkerGuard;

pub(crate) use access::{log_request, retry_warning, AccessLog, RequestLog};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// The verified client certificate of a connection, as the access line shows it (made by
/// `crate::tls` after the handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCert {
    /// The subject's distinguished name (`CN=alice, O=Example`).
    pub(crate) subject: String,
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub(crate) sha256: String,
}

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
    access: AccessLog,
}

impl LogLevel {
    pub fn set(&self, level: &str) -> Result<(), TelemetryError> {
        self.filter
            .reload(filter_for(level)?)
            .map_err(|e| TelemetryError::Filter(e.to_string()))
    }

    /// The access line's writer (the same batching thread as every other line).
    pub(crate) fn access(&self) -> AccessLog {
        self.access.clone()
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
    let access = AccessLog::new(writer.clone(), cfg.format);
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match cfg.format {
        LogFormat::Text => fmt
            .with_ansi(false)
            .map_event_format(|f| WithTraceIds {
                inner: f,
                json: false,
            })
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .map_event_format(|f| WithTraceIds {
                inner: f,
                json: true,
            })
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
        access,
    })
}

/// A line's format, plus `trace_id` and `span_id` when it is written inside a sampled request's
/// span (see `trace::current_ids`): the line as the inner format writes it, the two fields last.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(ids) = trace::current_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let line = line.trim_end_matches('\n');
        let (trace_id, span_id) = (ids.trace_id(), ids.span_id());
        match line.strip_suffix('}').filter(|_| self.json) {
            Some(open) => writeln!(
                writer,
                "{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            None => writeln!(writer, "{line} trace_id={trace_id} span_id={span_id}"),
        }
    }
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
    String::from_utf8_lossy(&request_id_bytes()).into_owned()
}

/// [`new_request_id`] as a header value in one shared allocation: it goes upstream and back to
/// the client, and a clone is a counter bump.
pub(crate) fn new_request_id_value() -> http::HeaderValue {
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(request_id_bytes()))
        .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
}

fn request_id_bytes() -> [u8; 32] {
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
    // Hex by hand: `format!`'s machinery was ~1k instructions of every request.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 32];
    for (half, v) in [prefix, z].into_iter().enumerate() {
        for (i, out) in b[half * 16..half * 16 + 16].iter_mut().enumerate() {
            *out = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    b
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
    fn request_ids_are_two_canonical_hex_words_with_a_fixed_prefix() {
        let ids: Vec<String> = (0..1000).map(|_| new_request_id()).collect();
        for id in &ids {
            let (p, z) = id.split_at(16);
            let (p, z) = (
                u64::from_str_radix(p, 16).unwrap(),
                u64::from_str_radix(z, 16).unwrap(),
            );
            assert_eq!(&format!("{p:016x}{z:016x}"), id, "lower-case, zero-padded");
        }
        assert!(
            ids.iter().all(|i| i[..16] == ids[0][..16]),
            "one prefix per process"
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
