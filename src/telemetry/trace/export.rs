//! Getting finished spans to the collector, off the request path: a bounded queue that a proxy
//! thread only appends to (a full queue drops the span and counts it), and one thread per
//! `tracing:` block that posts batches by OTLP/HTTP on a small runtime of its own (pingora's
//! runtimes are its own, and an export must never wait on a proxy thread or make one wait).
//! A collector that is down or slow costs dropped spans, counted in
//! `extoken_trace_spans_dropped_total`, and one log line when it goes away and one when it is
//! back.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;

use crate::config::{TraceExport, TracingConfig};
use crate::metrics::metrics;

#[derive(Default)]
struct State {
    spans: Vec<SpanData>,
    /// Flushes asked for and done (a flush waits until `flushed` reaches its number).
    flush_asked: u64,
    flushed: u64,
    stop: bool,
    finished: bool,
}

/// The queue between the proxy threads and the export thread. Its bounds are `tracing:`'s
/// (`max_queue_spans`: a burst while the collector is slow must not grow the process without
/// bound; `max_batch_spans`, `batch_delay`, `export_timeout`).
pub(super) struct Queue {
    limits: TraceExport,
    state: Mutex<State>,
    /// Wakes the export thread (a full batch, a flush, a stop).
    work: Condvar,
    /// Wakes those waiting for a flush or the end.
    done: Condvar,
}

impl Queue {
    pub(super) fn new(limits: TraceExport) -> Queue {
        Queue {
            limits,
            state: Mutex::default(),
            work: Condvar::new(),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, span: SpanData) {
        let mut s = self.lock();
        if s.stop || s.spans.len() >= self.limits.max_queue_spans {
            drop(s);
            dropped("queue_full", 1);
            return;
        }
        s.spans.push(span);
        if s.spans.len() == self.limits.max_batch_spans {
            self.work.notify_one();
        }
    }

    /// Exports what is queued now, waiting at most `within`. `Ok` when it was exported (or
    /// dropped by a failing collector: the queue is empty either way).
    pub(super) fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut s = self.lock();
        s.flush_asked += 1;
        let mine = s.flush_asked;
        self.work.notify_one();
        self.wait_done(s, deadline, |s| s.flushed >= mine || s.finished)
    }

    /// Stops taking spans; the export thread sends what is queued and ends. Waits at most
    /// `within` for that (zero: not at all).
    pub(super) fn stop(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut s = self.lock();
        s.stop = true;
        self.work.notify_one();
        self.wait_done(s, deadline, |s| s.finished)
    }

    /// Waits for the export thread until `ready` holds (whether it did) or `deadline` passes.
    fn wait_done(
        &self,
        mut s: MutexGuard<'_, State>,
        deadline: Instant,
        ready: impl Fn(&State) -> bool,
    ) -> bool {
        while !ready(&s) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .done
                .wait_timeout(s, left)
                .map_or_else(|p| p.into_inner().0, |r| r.0);
        }
        true
    }

    /// The next batch, once there is a full one, a flush or stop is asked, or `batch_delay`
    /// passed; with the flush number it completes when it is the last. `None`: stopped and empty.
    fn next_batch(&self) -> Option<(Vec<SpanData>, u64)> {
        let mut s = self.lock();
        let until = Instant::now() + self.limits.batch_delay;
        while s.spans.len() < self.limits.max_batch_spans && !s.stop && s.flush_asked == s.flushed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self
                .work
                .wait_timeout(s, left)
                .map_or_else(|p| p.into_inner().0, |r| r.0);
        }
        if s.spans.is_empty() && s.stop {
            s.finished = true;
            s.flushed = s.flush_asked;
            self.done.notify_all();
            return None;
        }
        let take = s.spans.len().min(self.limits.max_batch_spans);
        let rest = s.spans.split_off(take);
        let batch = std::mem::replace(&mut s.spans, rest);
        Some((batch, s.flush_asked))
    }

    fn batch_sent(&self, flush: u64) {
        let mut s = self.lock();
        if s.spans.is_empty() && s.flushed < flush {
            s.flushed = flush;
            self.done.notify_all();
        }
    }
}

fn dropped(reason: &str, n: usize) {
    metrics()
        .trace_spans_dropped_total
        .with_label_values(&[reason])
        .inc_by(n as u64);
}

/// The SDK's side of the queue: a finished, sampled span is appended, nothing else.
#[derive(Debug)]
pub(super) struct Processor(pub(super) Arc<Queue>);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queue")
    }
}

impl SpanProcessor for Processor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let within = self.0.limits.timeout;
        match self.0.flush(within) {
            true => Ok(()),
            false => Err(OTelSdkError::Timeout(within)),
        }
    }

    /// Never waits: the provider shuts down when the last gateway holding it is dropped, maybe
    /// on a proxy thread. The process's shutdown waits through [`Queue::stop`] itself.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.0.stop(Duration::ZERO);
        Ok(())
    }
}

/// Builds the OTLP exporter and starts the export thread for it.
pub(super) fn start(cfg: &TracingConfig, resource: &Resource) -> Result<Arc<Queue>, String> {
    let limits = cfg.export();
    let client = reqwest::Client::builder()
        .user_agent(concat!("extoken/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(limits.timeout.min(Duration::from_secs(2)))
        .timeout(limits.timeout)
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
    let headers: HashMap<String, String> = cfg.headers.clone().into_iter().collect();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(cfg.traces_url())
        .with_timeout(limits.timeout)
        .with_headers(headers)
        .build()
        .map_err(|e| e.to_string())?;
    exporter.set_resource(resource);
    let queue = Arc::new(Queue::new(limits));
    let q = queue.clone();
    std::thread::Builder::new()
        .name("extoken-otlp".into())
        .spawn(move || run(&q, &exporter))
        .map_err(|e| format!("cannot start the export thread: {e}"))?;
    Ok(queue)
}

/// The export thread: batches until stopped, then what is left, then it ends.
fn run(queue: &Queue, exporter: &opentelemetry_otlp::SpanExporter) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: "extoken::trace", "cannot start the span exporter: {e}; no spans are sent");
            while let Some((batch, flush)) = queue.next_batch() {
                dropped("export_failed", batch.len());
                queue.batch_sent(flush);
            }
            return;
        }
    };
    let mut reachable = true;
    while let Some((batch, flush)) = queue.next_batch() {
        let n = batch.len();
        if n > 0 {
            match rt.block_on(exporter.export(batch)) {
                Ok(()) => {
                    metrics().trace_spans_exported_total.inc_by(n as u64);
                    if !reachable {
                        reachable = true;
                        tracing::info!(target: "extoken::trace", "trace collector answers again: spans are sent");
                    }
                }
                Err(e) => {
                    dropped("export_failed", n);
                    if reachable {
                        reachable = false;
                        tracing::warn!(target: "extoken::trace", "trace collector unavailable: {e}; spans are dropped until it answers");
                    }
                }
            }
        }
        queue.batch_sent(flush);
    }
}
