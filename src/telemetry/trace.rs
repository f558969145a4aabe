//! OpenTelemetry traces (`tracing:`): a SERVER span per request, children for the steps that
//! take time (verification, authorization, the external token, connector calls, JWKS fetches,
//! shared-cache operations, the upstream request), W3C `traceparent` in and out.
//!
//! Spans are made with the OpenTelemetry API directly (not through `tracing`'s subscriber): a
//! request that is not sampled costs two random numbers and a `traceparent` for the backend
//! (`propagation`), and with no `tracing:` block the proxy's only tracing work is a branch on an `Option`
//! (`Gateway::tracing`). Steps deep in the request find their parent in the OpenTelemetry
//! context the proxy attaches while a sampled request is admitted ([`Span::start`]); those
//! helpers first read one process-wide flag, set once a `tracing:` block was ever built.
//!
//! What a span may carry: the same words as the logs and metrics (route and connector names,
//! method, path without its query, statuses, outcome and reason words, error kinds). Never a
//! header value, cookie, token, secret or claim value.

mod export;
mod propagation;
mod span;

pub(crate) use span::{current_ids, note, send, Span};

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TracingConfig;

/// Set once a `tracing:` block was built: until then no helper looks for a current span.
static SPANS: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
#[error("tracing: {0}")]
pub struct TracingError(String);

/// The traces of one `tracing:` block: the tracer and its export queue. Kept across a reload
/// that does not change the block.
pub struct Tracing {
    config: TracingConfig,
    tracer: SdkTracer,
    queue: Arc<export::Queue>,
    // Last: the provider shuts down (without waiting) when the last gateway holding it goes.
    _provider: SdkTracerProvider,
}

/// The tracer, carried in the context of a sampled request so its steps can make children.
#[derive(Clone)]
struct TracerHandle(SdkTracer);

impl Tracing {
    /// Builds the exporter and starts its thread (call it outside pingora's runtimes or inside:
    /// it needs neither).
    pub fn build(config: &TracingConfig) -> Result<Tracing, TracingError> {
        let resource = Resource::builder()
            .with_service_name(config.service().to_string())
            .build();
        let queue = export::start(config, &resource).map_err(TracingError)?;
        let provider = SdkTracerProvider::builder()
            // The request's own sampling is decided before the SDK is asked (`request`): what
            // reaches it is a sampled trace, and its steps follow their parent.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_span_processor(export::Processor(queue.clone()))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("extoken");
        SPANS.store(true, Ordering::Relaxed);
        Ok(Tracing {
            config: config.clone(),
            tracer,
            queue,
            _provider: provider,
        })
    }

    /// The block it was built from (a reload with the same one keeps it).
    pub fn config(&self) -> &TracingConfig {
        &self.config
    }

    /// Sends what is queued, waiting at most `within`; `false` when it did not finish in time.
    pub fn flush(&self, within: Duration) -> bool {
        self.queue.flush(within)
    }

    /// Stops taking spans and sends what is queued, waiting at most `within`.
    pub fn shutdown(&self, within: Duration) -> bool {
        self.queue.stop(within)
    }

    /// The trace of a request whose head was just read: the child of its `traceparent` (if
    /// any: a sampled parent is followed, an unsampled one never), else a new trace, sampled at
    /// `sample_ratio`. A sampled request gets its SERVER span, named by the method until the
    /// route is known; an unsampled one only ids (see `propagation`).
    pub(crate) fn request(
        &self,
        req: &pingora::http::RequestHeader,
        client: Option<IpAddr>,
        tls: bool,
    ) -> RequestTrace {
        let parent = propagation::parent(&req.headers);
        let sampled = match &parent {
            Some(p) => p.is_sampled(),
            None => propagation::sample_root(self.config.sample_ratio),
        };
        if !sampled {
            let trace_id = parent.map_or_else(propagation::trace_id, |p| p.trace_id());
            return RequestTrace::Unsampled(trace_id.to_bytes(), propagation::span_id().to_bytes());
        }
        let parent = match parent {
            Some(p) => Context::new().with_remote_span_context(p),
            None => Context::new(),
        };
        let mut span = self
            .tracer
            .span_builder(method_name(&req.method))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method_name(&req.method)),
                KeyValue::new("url.path", req.uri.path().to_string()),
                KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
                KeyValue::new("network.protocol.version", protocol(req.version)),
            ])
            .start_with_context(&self.tracer, &parent);
        if let Some(ip) = client {
            span.set_attribute(KeyValue::new("client.address", ip.to_string()));
        }
        let cx = parent
            .with_span(span)
            .with_value(TracerHandle(self.tracer.clone()));
        RequestTrace::Sampled(Box::new(Sampled { cx, upstream: None }))
    }
}

/// A span name for a method, without an allocation for the standard ones (an unsampled
/// request's span is built and dropped: its name should cost nothing).
fn method_name(m: &http::Method) -> std::borrow::Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|s| **s == m.as_str()) {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(m.as_str().to_string()),
    }
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// One request's trace.
pub(crate) enum RequestTrace {
    /// Not recorded: its trace id and its own span id, for the backend's `traceparent` (flag
    /// `00`, so the backend follows the decision). Bytes, not `TraceId`: a `u128` would give
    /// the proxy's per-request context a 16-byte alignment.
    Unsampled([u8; 16], [u8; 8]),
    Sampled(Box<Sampled>),
}

/// A recorded request: its SERVER span (in the context its steps run in), and the CLIENT span
/// of the upstream attempt in flight.
pub(crate) struct Sampled {
    cx: Context,
    upstream: Option<Context>,
}

impl RequestTrace {
    fn sampled(&self) -> Option<&Sampled> {
        match self {
            RequestTrace::Sampled(s) => Some(s),
            RequestTrace::Unsampled(..) => None,
        }
    }

    /// The context its steps run in: a sampled request's (an unsampled one has no children).
    pub(crate) fn context(&self) -> Option<&Context> {
        self.sampled().map(|s| &s.cx)
    }

    /// The trace and span ids for log lines: a sampled request's.
    pub(crate) fn ids(&self) -> Option<SpanContext> {
        self.sampled().map(|s| s.cx.span().span_context().clone())
    }

    /// The route is known: the span is named `{method} {route}` (HTTP semantic conventions).
    pub(crate) fn routed(&self, method: &str, route: &str, prefix: &str) {
        let Some(s) = self.sampled() else {
            return;
        };
        let span = s.cx.span();
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new("http.route", prefix.to_string()));
        span.set_attribute(KeyValue::new("extoken.route", route.to_string()));
    }

    /// An upstream attempt begins: its CLIENT span (sampled requests only).
    pub(crate) fn upstream_started(
        &mut self,
        method: &http::Method,
        upstream: &crate::config::Upstream,
    ) {
        self.upstream_ended(None, None);
        let RequestTrace::Sampled(s) = self else {
            return;
        };
        let Some(handle) = s.cx.get::<TracerHandle>() else {
            return;
        };
        let span = handle
            .0
            .span_builder(method_name(method))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", method_name(method)),
                KeyValue::new("server.address", upstream.host.clone()),
                KeyValue::new("server.port", i64::from(upstream.port)),
            ])
            .start_with_context(&handle.0, &s.cx);
        s.upstream = Some(s.cx.with_span(span));
    }

    /// The `traceparent` the backend gets: the upstream attempt's CLIENT span, or an unsampled
    /// request's own span id.
    pub(crate) fn upstream_traceparent(&self) -> http::HeaderValue {
        match self {
            RequestTrace::Unsampled(t, s) => propagation::traceparent(
                TraceId::from_bytes(*t),
                SpanId::from_bytes(*s),
                TraceFlags::default(),
            ),
            RequestTrace::Sampled(s) => {
                traceparent(s.upstream.as_ref().unwrap_or(&s.cx).span().span_context())
            }
        }
    }

    /// The upstream attempt's end: its status, or the error kind that ended it.
    pub(crate) fn upstream_ended(&mut self, status: Option<u16>, error: Option<&'static str>) {
        let Some(cx) = (match self {
            RequestTrace::Sampled(s) => s.upstream.take(),
            RequestTrace::Unsampled(..) => None,
        }) else {
            return;
        };
        let span = cx.span();
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
            if s >= 500 {
                span.set_attribute(KeyValue::new("error.type", s.to_string()));
                span.set_status(Status::error(""));
            }
        }
        if let Some(e) = error {
            span.set_attribute(KeyValue::new("error.type", e));
            span.set_status(Status::error(""));
        }
        span.end();
    }

    /// The request is over: the status the client got, extoken's outcome and (for a refusal)
    /// its reason, the same words as the metrics'.
    pub(crate) fn end(
        mut self,
        status: u16,
        outcome: &'static str,
        reason: Option<&'static str>,
        error: Option<&'static str>,
    ) {
        self.upstream_ended(None, error);
        let Some(s) = self.sampled() else {
            return;
        };
        let span = s.cx.span();
        if status > 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        span.set_attribute(KeyValue::new("extoken.outcome", outcome));
        if let Some(r) = reason {
            span.set_attribute(KeyValue::new("extoken.reason", r));
        }
        if status >= 500 || (status == 0 && error.is_some()) {
            let kind = error.map_or_else(|| status.to_string(), str::to_string);
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// `traceparent` of a span context.
pub(crate) fn traceparent(sc: &SpanContext) -> http::HeaderValue {
    propagation::traceparent(sc.trace_id(), sc.span_id(), sc.trace_flags())
}

/// The W3C Trace Context specification's example span, sampled (for tests here and in `access`).
#[cfg(test)]
pub(crate) fn w3c_example() -> SpanContext {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
        SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_w3c() {
        let sc = w3c_example();
        assert_eq!(
            traceparent(&sc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn no_span_without_a_current_sampled_one() {
        let s = Span::internal("verify");
        assert!(!s.is_recording());
        assert!(current_ids().is_none());
    }
}
