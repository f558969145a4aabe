//! Prometheus metrics, all prefixed `extoken_`, registered once in a registry of our own and
//! served as text on the admin listener's `/metrics`.
//!
//! Labels are bounded sets: route and connector names from the config, fixed outcome/reason/result
//! words. Never a user id, token, path or anything else a client chooses.

mod per_route;

use std::sync::OnceLock;

pub(crate) use per_route::RouteMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets (seconds) for request and connector latencies: 1 ms .. 30 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub registry: Registry,
    /// `route`, `outcome` (forwarded, unauthorized, unavailable, no_route, upstream_error,
    /// refused, client_error).
    pub requests_total: IntCounterVec,
    /// `route`: from the request head to the end of the response.
    pub request_duration_seconds: HistogramVec,
    /// `reason`: the `AuthError::reason()` words (missing, expired, bad_signature, ...).
    pub auth_failures_total: IntCounterVec,
    /// `result`: ok, error.
    pub jwks_fetches_total: IntCounterVec,
    /// Keys in the set in use (set at scrape time).
    pub jwks_keys: IntGauge,
    /// Unix time of the last successful key load, 0 = never (set at scrape time).
    pub jwks_last_success_timestamp_seconds: IntGauge,
    /// Sessions in the verified-session cache (set at scrape time).
    pub verified_sessions: IntGauge,
    /// `connector`, `result` (ok, error, ...).
    pub connector_calls_total: IntCounterVec,
    /// `connector`.
    pub connector_duration_seconds: HistogramVec,
    /// `connector`, `result` (hit, miss, coalesced, refresh_ahead, negative, shared_hit).
    pub cache_lookups_total: IntCounterVec,
    /// `connector`.
    pub cache_entries: IntGaugeVec,
    /// `connector`, `result` (evicted, suppressed, stale): what an upstream 401 did to the cached
    /// token it was sent with.
    pub token_evictions_total: IntCounterVec,
    /// `op` (get, lock, set, unlock, delete, publish, subscribe), `result` (hit, miss, ok,
    /// acquired, held, undecryptable, error, timeout, skipped).
    pub shared_cache_operations_total: IntCounterVec,
    /// `op`: one Redis operation of the shared token cache.
    pub shared_cache_operation_duration_seconds: HistogramVec,
    /// `route`, `class` (1xx .. 5xx).
    pub upstream_responses_total: IntCounterVec,
    /// `result`: ok, error.
    pub config_reloads_total: IntCounterVec,
    /// `result`: ok, empty, error (lookups of upstream host names by the DNS refresher).
    pub dns_resolutions_total: IntCounterVec,
    /// `result`: what a request that needed a refreshed session got ([`REFRESH_RESULTS`]).
    pub session_refresh_total: IntCounterVec,
    /// One call to Descope's refresh endpoint.
    pub session_refresh_seconds: Histogram,
    /// `reason`: queue_full (the export queue was full), export_failed (the collector refused
    /// or did not answer the batch).
    pub trace_spans_dropped_total: IntCounterVec,
    /// Spans the collector accepted.
    pub trace_spans_exported_total: IntCounter,
    /// `version`; always 1.
    pub build_info: IntGaugeVec,
}

/// `session_refresh_total`'s results: `refreshed` (this request's call gave a session), `reused`
/// (another request's did), `refused` and `unavailable` (this request's call failed so),
/// `rate_limited` (another's call for the same refresh token failed: no call), `invalid` (the
/// refresh token did not verify locally: no call).
pub const REFRESH_RESULTS: [&str; 6] = [
    "refreshed",
    "reused",
    "refused",
    "unavailable",
    "rate_limited",
    "invalid",
];

/// The process's metrics (created and registered on first use).
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("extoken_{name}"), help), labels)
        .expect("static metric definition");
    register(r, Box::new(c.clone()));
    c
}

/// Buckets (seconds) for Redis operations: 100 µs .. 1 s (they are cut at `operation_timeout`).
const REDIS_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    histogram_with(r, name, help, labels, &LATENCY_BUCKETS)
}

fn histogram_with(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(format!("extoken_{name}"), help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("static metric definition");
    register(r, Box::new(h.clone()));
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(format!("extoken_{name}"), help).expect("static metric definition");
    register(r, Box::new(g.clone()));
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(format!("extoken_{name}"), help), labels)
        .expect("static metric definition");
    register(r, Box::new(g.clone()));
    g
}

fn register(r: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Names are unique and the registry is fresh: this only fails on a programming error.
    if let Err(e) = r.register(c) {
        tracing::error!(target: "extoken::metrics", "metric not registered: {e}");
    }
}

impl Metrics {
    /// Long on purpose: the table of every metric (name, help, labels), read top to bottom like
    /// the README's metrics reference, one entry per metric.
    fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            requests_total: counter(
                &r,
                "requests_total",
                "Requests by route and outcome.",
                &["route", "outcome"],
            ),
            request_duration_seconds: histogram(
                &r,
                "request_duration_seconds",
                "Time from the request head to the end of the response.",
                &["route"],
            ),
            auth_failures_total: counter(
                &r,
                "auth_failures_total",
                "Requests refused 401 or 403, by reason.",
                &["reason"],
            ),
            jwks_fetches_total: counter(
                &r,
                "jwks_fetches_total",
                "Descope key set loads, by result.",
                &["result"],
            ),
            jwks_keys: gauge(&r, "jwks_keys", "Descope keys in use."),
            jwks_last_success_timestamp_seconds: gauge(
                &r,
                "jwks_last_success_timestamp_seconds",
                "Unix time of the last successful Descope key load (0: never).",
            ),
            verified_sessions: gauge(
                &r,
                "verified_sessions",
                "Sessions in the verified-session cache (signature checked, not expired).",
            ),
            connector_calls_total: counter(
                &r,
                "connector_calls_total",
                "Calls to token-minting connectors, by result.",
                &["connector", "result"],
            ),
            connector_duration_seconds: histogram(
                &r,
                "connector_duration_seconds",
                "Duration of connector calls.",
                &["connector"],
            ),
            cache_lookups_total: counter(
                &r,
                "cache_lookups_total",
                "External-token cache lookups (hit, miss, coalesced, refresh_ahead, negative, shared_hit).",
                &["connector", "result"],
            ),
            cache_entries: gauge_vec(
                &r,
                "cache_entries",
                "External tokens cached, by connector.",
                &["connector"],
            ),
            token_evictions_total: counter(
                &r,
                "token_evictions_total",
                "Upstream 401s to a cached token: evicted, suppressed (within cache.evict_min_interval), stale (no longer the cached token).",
                &["connector", "result"],
            ),
            shared_cache_operations_total: counter(
                &r,
                "shared_cache_operations_total",
                "Redis operations of the shared token cache, by operation and result.",
                &["op", "result"],
            ),
            shared_cache_operation_duration_seconds: histogram_with(
                &r,
                "shared_cache_operation_duration_seconds",
                "Duration of the shared token cache's Redis operations.",
                &["op"],
                &REDIS_BUCKETS,
            ),
            upstream_responses_total: counter(
                &r,
                "upstream_responses_total",
                "Upstream responses by route and status class.",
                &["route", "class"],
            ),
            config_reloads_total: counter(
                &r,
                "config_reloads_total",
                "Config reloads (SIGHUP), by result.",
                &["result"],
            ),
            dns_resolutions_total: counter(
                &r,
                "dns_resolutions_total",
                "Upstream host name lookups by the DNS refresher, by result.",
                &["result"],
            ),
            session_refresh_total: counter(
                &r,
                "session_refresh_total",
                "Requests that needed an expired session refreshed, by result.",
                &["result"],
            ),
            trace_spans_dropped_total: counter(
                &r,
                "trace_spans_dropped_total",
                "Trace spans not exported, by reason (queue_full, export_failed).",
                &["reason"],
            ),
            trace_spans_exported_total: {
                let c = IntCounter::new(
                    "extoken_trace_spans_exported_total",
                    "Trace spans the collector accepted.",
                )
                .expect("static metric definition");
                register(&r, Box::new(c.clone()));
                c
            },
            session_refresh_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "extoken_session_refresh_seconds",
                        "Duration of calls to Descope's refresh endpoint.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("static metric definition");
                register(&r, Box::new(h.clone()));
                h
            },
            build_info: gauge_vec(
                &r,
                "build_info",
                "Always 1; the version label says which build runs.",
                &["version"],
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["ok", "error"] {
            m.config_reloads_total.with_label_values(&[result]);
            m.jwks_fetches_total.with_label_values(&[result]);
        }
        for result in ["ok", "empty", "error"] {
            m.dns_resolutions_total.with_label_values(&[result]);
        }
        for reason in ["queue_full", "export_failed"] {
            m.trace_spans_dropped_total.with_label_values(&[reason]);
        }
        for result in REFRESH_RESULTS {
            m.session_refresh_total.with_label_values(&[result]);
        }
        m
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(target: "extoken::metrics", "cannot encode metrics: {e}");
        }
        out
    }
}

/// `2xx` for 200..=299, etc.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported() {
        let m = metrics();
        m.requests_total
            .with_label_values(&["api", "forwarded"])
            .inc();
        m.request_duration_seconds
            .with_label_values(&["api"])
            .observe(0.01);
        m.auth_failures_total.with_label_values(&["expired"]).inc();
        m.connector_calls_total
            .with_label_values(&["c", "ok"])
            .inc();
        m.connector_duration_seconds
            .with_label_values(&["c"])
            .observe(0.1);
        m.cache_lookups_total.with_label_values(&["c", "hit"]).inc();
        m.cache_entries.with_label_values(&["c"]).set(1);
        m.token_evictions_total
            .with_label_values(&["c", "suppressed"])
            .inc();
        m.shared_cache_operations_total
            .with_label_values(&["get", "hit"])
            .inc();
        m.shared_cache_operation_duration_seconds
            .with_label_values(&["get"])
            .observe(0.0003);
        m.upstream_responses_total
            .with_label_values(&["api", "2xx"])
            .inc();
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "extoken_requests_total",
            "extoken_request_duration_seconds_bucket",
            "extoken_auth_failures_total",
            "extoken_jwks_fetches_total",
            "extoken_jwks_keys",
            "extoken_jwks_last_success_timestamp_seconds",
            "extoken_connector_calls_total",
            "extoken_connector_duration_seconds_bucket",
            "extoken_cache_lookups_total",
            "extoken_cache_entries",
            "extoken_token_evictions_total",
            "extoken_shared_cache_operations_total",
            "extoken_shared_cache_operation_duration_seconds_bucket",
            "extoken_upstream_responses_total",
            "extoken_config_reloads_total",
            "extoken_dns_resolutions_total",
            "extoken_session_refresh_total{result=\"rate_limited\"}",
            "extoken_session_refresh_seconds_bucket",
            "extoken_build_info",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn classes() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(404), "4xx");
    }
}
