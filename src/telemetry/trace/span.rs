//! Spans of the steps inside a request, children of whatever span is current in the
//! OpenTelemetry context (the proxy attaches a sampled request's while it is admitted), and the
//! CLIENT span of a call out with its `traceparent`.

use std::future::Future;
use std::sync::atomic::Ordering;

use futures_util::future::Either;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};

use super::{traceparent, TracerHandle, SPANS};

/// A child span of whatever span is current (see the module doc), or nothing: no `tracing:`
/// block, no current span, or an unsampled one. Ends when dropped.
pub(crate) struct Span(Option<Context>);

impl Span {
    /// A step inside extoken (`verify`, `authorize`, `external_token`).
    #[inline]
    pub(crate) fn internal(name: &'static str) -> Span {
        Self::start(name, SpanKind::Internal)
    }

    /// A call out (a connector, a JWKS fetch, a Redis operation).
    #[inline]
    pub(crate) fn client(name: &'static str) -> Span {
        Self::start(name, SpanKind::Client)
    }

    #[inline]
    fn start(name: &'static str, kind: SpanKind) -> Span {
        if !SPANS.load(Ordering::Relaxed) {
            return Span(None);
        }
        Span(Self::child_of_current(name, kind))
    }

    #[inline(never)]
    fn child_of_current(name: &'static str, kind: SpanKind) -> Option<Context> {
        Context::map_current(|cx| {
            let handle = cx.get::<TracerHandle>()?;
            if !cx.span().span_context().is_sampled() {
                return None;
            }
            let span = handle
                .0
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(&handle.0, cx);
            Some(cx.with_span(span))
        })
    }

    pub(crate) fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Sets an attribute (pass `&'static str` or numbers: no work is done when not recording).
    #[inline]
    pub(crate) fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// The step failed: error status, and the reason word (as the metrics say it).
    pub(crate) fn fail(&self, reason: &'static str) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            span.set_attribute(KeyValue::new("extoken.reason", reason));
            span.set_status(Status::error(""));
        }
    }

    /// `f`, run with this span current, so the steps inside it are its children. Not an `async
    /// fn`: one would hold `f` twice (its argument, then the future it awaits), and the futures
    /// wrapped here are the request's largest; this is `f` itself when not recording.
    pub(crate) fn run<F: Future>(&self, f: F) -> Either<WithContext<F>, F> {
        match &self.0 {
            Some(cx) => Either::Left(f.with_context(cx.clone())),
            None => Either::Right(f),
        }
    }

    /// The `traceparent` an outgoing call carries (none when not recording).
    pub(crate) fn traceparent(&self) -> Option<http::HeaderValue> {
        self.0
            .as_ref()
            .map(|cx| traceparent(cx.span().span_context()))
    }

    /// A reqwest call carrying this span's `traceparent`, the span's `http.request.method`,
    /// `server.address` and `url.full` (without its query).
    pub(crate) fn outgoing(
        &self,
        req: reqwest::RequestBuilder,
        method: &'static str,
        url: &str,
    ) -> reqwest::RequestBuilder {
        let Some(tp) = self.traceparent() else {
            return req;
        };
        self.set("http.request.method", method);
        if let Ok(u) = url.parse::<http::Uri>() {
            if let Some(h) = u.host() {
                self.set("server.address", h.to_string());
            }
            self.set("url.path", u.path().to_string());
        }
        req.header("traceparent", tp)
    }

    /// The reply's status (an error status from 500 on).
    pub(crate) fn status(&self, status: u16) {
        self.set("http.response.status_code", i64::from(status));
        if status >= 500 {
            self.fail("status");
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// Sends `req` (a `method` call to `url`) inside a CLIENT span named `name`, carrying its
/// `traceparent`; the span ends when the reply's head is in.
pub(crate) async fn send(
    name: &'static str,
    method: &'static str,
    url: &str,
    req: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let span = Span::client(name);
    let reply = span.outgoing(req, method, url).send().await;
    match &reply {
        Ok(r) => span.status(r.status().as_u16()),
        Err(e) if e.is_timeout() => span.fail("timeout"),
        Err(_) => span.fail("request_failed"),
    }
    reply
}

/// Sets an attribute on the current span (a step reporting how it went: a cache hit, a first
/// sight). Nothing without a current sampled span.
#[inline]
pub(crate) fn note(key: &'static str, value: &'static str) {
    if SPANS.load(Ordering::Relaxed) {
        note_current(key, value);
    }
}

#[inline(never)]
fn note_current(key: &'static str, value: &'static str) {
    Context::map_current(|cx| {
        if cx.get::<TracerHandle>().is_some() {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    });
}

/// The current span's trace and span id for a log line: inside a sampled request's steps.
pub(crate) fn current_ids() -> Option<SpanContext> {
    if !SPANS.load(Ordering::Relaxed) {
        return None;
    }
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        (cx.get::<TracerHandle>().is_some() && sc.is_sampled()).then(|| sc.clone())
    })
}
