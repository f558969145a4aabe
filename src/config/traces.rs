//! `tracing:`: OpenTelemetry traces exported by OTLP over HTTP (protobuf). Absent: no traces, and
//! no tracing work on the request path. A reload applies a changed block.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

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
}

fn d_ratio() -> f64 {
    1.0
}

/// Header values may be secrets: a config's `Debug` never prints them.
impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingConfig")
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("sample_ratio", &self.sample_ratio)
            .field("service_name", &self.service_name)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TracingConfig {
    /// Fills absent keys from `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME` (the keys of
    /// the file win: they are the more specific).
    pub(super) fn resolve(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        if self.otlp_endpoint.is_none() {
            self.otlp_endpoint = set(env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        }
        if self.service_name.is_none() {
            self.service_name = set(env("OTEL_SERVICE_NAME"));
        }
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
        Ok(())
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
        ] {
            let e = parse(extra, &[]).unwrap_err();
            assert!(e.starts_with(key), "{extra}: {e}");
        }
    }
}
