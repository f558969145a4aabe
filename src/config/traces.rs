//! `tracing:`: OpenTelemetry traces exported by OTLP over HTTP (protobuf). Absent: no traces, and
//! no tracing work on the request path. A reload applies a changed block.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, Dur};

/// `tracing:` as written; [`TracingConfig::resolve`] fills it from the environment.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`http://otel-collector:4318`); spans go to
    /// `<base>/v1/traces`. `OTEL_EXPORTER_OTLP_ENDPOINT` when absent.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of the traces that start here which are recorded (0..=1). A request whose
    /// `traceparent` says sampled is always recorded; one that says not sampled never is.
    #[serde(default = "d_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of every span. `OTEL_SERVICE_NAME` when absent, else `extoken`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Headers sent with every export (an API key of a hosted backend).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Spans waiting for export; a span ended while the queue is full is dropped and counted
    /// (`OTEL_BSP_MAX_QUEUE_SIZE` when absent, else 8192).
    #[serde(default)]
    pub max_queue_spans: Option<usize>,
    /// Spans per OTLP request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, else 512).
    #[serde(default)]
    pub max_batch_spans: Option<usize>,
    /// The longest a span waits while fewer than a batch are queued (`OTEL_BSP_SCHEDULE_DELAY`
    /// in ms, else 1s).
    #[serde(default)]
    pub batch_delay: Option<Dur>,
    /// One export, connect to answer (`OTEL_EXPORTER_OTLP_TIMEOUT` in ms, else 5s).
    #[serde(default)]
    pub export_timeout: Option<Dur>,
}

fn d_ratio() -> f64 {
    1.0
}

/// How spans leave the process: the export queue's bounds and timings, resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceExport {
    pub max_queue_spans: usize,
    pub max_batch_spans: usize,
    pub batch_delay: std::time::Duration,
    pub timeout: std::time::Duration,
}

/// A count from the environment (OpenTelemetry's variables are plain integers).
fn env_count(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<usize>, ConfigError> {
    let Some(v) = env(var).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    v.trim()
        .parse()
        .map(Some)
        .map_err(|_| ConfigError::key(var, format!("{v:?} is not a whole number")))
}

/// Milliseconds from the environment, as OpenTelemetry's timing variables are written.
fn env_ms(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<Option<Dur>, ConfigError> {
    Ok(env_count(env, var)?.map(|ms| Dur(std::time::Duration::from_millis(ms as u64))))
}

/// Header values may be secrets: a config's `Debug` never prints them.
impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingConfig")
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("sample_ratio", &self.sample_ratio)
            .field("service_name", &self.service_name)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("export", &self.export())
            .finish()
    }
}

impl TracingConfig {
    /// Fills absent keys from OpenTelemetry's variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_SERVICE_NAME`, the batch processor's `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_TIMEOUT`);
    /// the keys of the file win: they are the more specific.
    pub(super) fn resolve(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        if self.otlp_endpoint.is_none() {
            self.otlp_endpoint = set(env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        }
        if self.service_name.is_none() {
            self.service_name = set(env("OTEL_SERVICE_NAME"));
        }
        if self.max_queue_spans.is_none() {
            self.max_queue_spans = env_count(env, "OTEL_BSP_MAX_QUEUE_SIZE")?;
        }
        if self.max_batch_spans.is_none() {
            self.max_batch_spans = env_count(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?;
        }
        if self.batch_delay.is_none() {
            self.batch_delay = env_ms(env, "OTEL_BSP_SCHEDULE_DELAY")?;
        }
        if self.export_timeout.is_none() {
            self.export_timeout = env_ms(env, "OTEL_EXPORTER_OTLP_TIMEOUT")?;
        }
        Ok(())
    }

    /// The export queue's settings, defaults filled in.
    pub fn export(&self) -> TraceExport {
        TraceExport {
            max_queue_spans: self.max_queue_spans.unwrap_or(8192),
            max_batch_spans: self.max_batch_spans.unwrap_or(512),
            batch_delay: self
                .batch_delay
                .map_or(std::time::Duration::from_secs(1), |d| d.0),
            timeout: self
                .export_timeout
                .map_or(std::time::Duration::from_secs(5), |d| d.0),
        }
    }

    fn validate_export(&self) -> Result<(), ConfigError> {
        let e = self.export();
        if !(1..=1_000_000).contains(&e.max_queue_spans) {
            return Err(ConfigError::key(
                "tracing.max_queue_spans",
                "must be between 1 and 1000000",
            ));
        }
        if e.max_batch_spans == 0 || e.max_batch_spans > e.max_queue_spans {
            return Err(ConfigError::key(
                "tracing.max_batch_spans",
                format!(
                    "must be between 1 and max_queue_spans ({})",
                    e.max_queue_spans
                ),
            ));
        }
        let ms = std::time::Duration::from_millis;
        if !(ms(1)..=ms(3_600_000)).contains(&e.batch_delay) {
            return Err(ConfigError::key(
                "tracing.batch_delay",
                "must be between 1ms and 1h",
            ));
        }
        if !(ms(1)..=ms(60_000)).contains(&e.timeout) {
            return Err(ConfigError::key(
                "tracing.export_timeout",
                "must be between 1ms and 60s",
            ));
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let endpoint = self.otlp_endpoint.as_deref().ok_or_else(|| {
            ConfigError::key(
                "tracing.otlp_endpoint",
                "required (or set OTEL_EXPORTER_OTLP_ENDPOINT)",
            )
        })?;
        let uri: http::Uri = endpoint.parse().map_err(|_| {
            ConfigError::key(
                "tracing.otlp_endpoint",
                format!("{endpoint:?} is not a URL"),
            )
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ConfigError::key(
                "tracing.otlp_endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL with a host"),
            ));
        }
        if uri.query().is_some() {
            return Err(ConfigError::key(
                "tracing.otlp_endpoint",
                "must not have a query string",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::key(
                "tracing.sample_ratio",
                format!("{} is not between 0 and 1", self.sample_ratio),
            ));
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(ConfigError::key(
                "tracing.service_name",
                "must not be empty",
            ));
        }
        for (name, value) in &self.headers {
            let path = format!("tracing.headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::key(path, "not a valid header name"));
            }
            // The value is not quoted back: it may be a secret.
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::key(path, "not a valid header value"));
            }
        }
        self.validate_export()
    }

    /// Where spans are posted: `<otlp_endpoint>/v1/traces` (as `OTEL_EXPORTER_OTLP_ENDPOINT` is
    /// read by every OpenTelemetry SDK), or the URL as written when it already ends so.
    pub fn traces_url(&self) -> String {
        let base = self.otlp_endpoint.as_deref().unwrap_or("");
        if base.ends_with("/v1/traces") {
            return base.to_string();
        }
        format!("{}/v1/traces", base.trim_end_matches('/'))
    }

    pub fn service(&self) -> &str {
        self.service_name.as_deref().unwrap_or("extoken")
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn parse(extra: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let text = format!(
            "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors: {{ext: {{type: claim}}}}\n\
             routes: [{{upstream: 'http://127.0.0.1:1', connector: ext}}]\n{extra}"
        );
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(&text, &|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_is_off() {
        let c = parse("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).unwrap();
        assert!(
            c.tracing.is_none(),
            "the environment alone does not turn traces on"
        );
    }

    #[test]
    fn values_defaults_and_environment() {
        let c = parse(
            "tracing: {otlp_endpoint: 'http://c:4318/', sample_ratio: 0.01, headers: {x-api-key: k}}",
            &[("OTEL_SERVICE_NAME", "edge")],
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.traces_url(), "http://c:4318/v1/traces");
        assert_eq!(t.sample_ratio, 0.01);
        assert_eq!(t.service(), "edge");
        assert!(
            !format!("{t:?}").contains("\"k\""),
            "header values are not printed"
        );
        let c = parse(
            "tracing: {service_name: gw}",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://h/v1/traces")],
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.traces_url(), "https://h/v1/traces");
        assert_eq!((t.service(), t.sample_ratio), ("gw", 1.0));
    }

    #[test]
    fn errors_name_their_key() {
        for (extra, key) in [
            ("tracing: {}", "tracing.otlp_endpoint:"),
            (
                "tracing: {otlp_endpoint: 'c:4318'}",
                "tracing.otlp_endpoint:",
            ),
            (
                "tracing: {otlp_endpoint: 'ftp://c'}",
                "tracing.otlp_endpoint:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c?x=1'}",
                "tracing.otlp_endpoint:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', sample_ratio: 1.5}",
                "tracing.sample_ratio:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', sample_ratio: -0.1}",
                "tracing.sample_ratio:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', sample_ratio: often}",
                "tracing.sample_ratio:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', service_name: ' '}",
                "tracing.service_name:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', headers: {'a b': x}}",
                "tracing.headers.a b:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', headers: {k: \"a\\nb\"}}",
                "tracing.headers.k:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', port: 1}",
                "tracing.port:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', max_queue_spans: 0}",
                "tracing.max_queue_spans:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', max_queue_spans: 10, max_batch_spans: 11}",
                "tracing.max_batch_spans:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', max_batch_spans: 0}",
                "tracing.max_batch_spans:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', batch_delay: 0s}",
                "tracing.batch_delay:",
            ),
            (
                "tracing: {otlp_endpoint: 'http://c', export_timeout: 2m}",
                "tracing.export_timeout:",
            ),
        ] {
            let e = parse(extra, &[]).unwrap_err();
            assert!(e.starts_with(key), "{extra}: {e}");
        }
        let e = parse(
            "tracing: {otlp_endpoint: 'http://c'}",
            &[("OTEL_BSP_MAX_QUEUE_SIZE", "lots")],
        )
        .unwrap_err();
        assert!(e.starts_with("OTEL_BSP_MAX_QUEUE_SIZE:"), "{e}");
    }

    #[test]
    fn export_settings_from_the_file_the_environment_or_defaults() {
        use super::TraceExport;
        use std::time::Duration;
        let export = |extra: &str, env: &[(&str, &str)]| {
            let yaml = format!("tracing: {{otlp_endpoint: 'http://c'{extra}}}");
            parse(&yaml, env).unwrap().tracing.unwrap().export()
        };
        let want = |max_queue_spans, max_batch_spans, batch_delay, timeout| TraceExport {
            max_queue_spans,
            max_batch_spans,
            batch_delay,
            timeout,
        };
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        assert_eq!(export("", &[]), want(8192, 512, s(1), s(5)));
        let env = [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ];
        assert_eq!(
            export(", max_batch_spans: 20", &env),
            want(100, 20, ms(250), s(2)),
            "the file's key wins over the environment"
        );
    }
}
