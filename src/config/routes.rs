//! `routes[]`: which requests go where, and how each route's upstream is reached.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{is_token, net, Config, ConfigError, Dur, RequireConfig, Upstream, UpstreamTlsConfig};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Required,
    None,
}

/// `upstream_protocol`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2,
}

/// `routes[].websocket`: what bounds a connection after a `101`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// The only idle bound after the `101`, both ways (replaces `client_body_timeout` and the
    /// route's `read_timeout`/`write_timeout`).
    #[serde(default = "d_ws_idle")]
    pub idle_timeout: Dur,
    /// Close the socket when the session that opened it expires (plus `descope.leeway`).
    #[serde(default)]
    pub close_at_session_expiry: bool,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            idle_timeout: d_ws_idle(),
            close_at_session_expiry: false,
        }
    }
}

/// Envoy's stream idle timeout is 1 h by default; nginx's 60 s `proxy_read_timeout` cuts quiet
/// chat and dashboard sockets, which is what this default exists to avoid.
fn d_ws_idle() -> Dur {
    Dur::secs(3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Option<String>,
    #[serde(default = "d_prefix")]
    pub path_prefix: String,
    pub host: Option<String>,
    pub upstream: Upstream,
    #[serde(default)]
    pub auth: AuthMode,
    pub connector: Option<String>,
    #[serde(default = "d_header", deserialize_with = "net::de_header_name")]
    pub header: http::HeaderName,
    #[serde(default = "d_scheme")]
    pub scheme: String,
    /// Defaults to the session and refresh cookie names of `descope:`.
    pub strip_cookies: Option<Vec<String>>,
    /// Per-tenant connector, keyed by the session's `dct`; falls back to `connector`.
    #[serde(default)]
    pub connector_by_tenant: BTreeMap<String, String>,
    /// Forward the client's `Host` (default); `false` sends the upstream's own host, as an
    /// `https://` API behind a CDN or a hosted Supabase/Firebase endpoint requires.
    #[serde(default = "d_true")]
    pub preserve_host: bool,
    /// TCP (and TLS) connect to the upstream, at most.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: Dur,
    /// Between two reads of the upstream's response.
    #[serde(default = "d_io_timeout")]
    pub read_timeout: Dur,
    /// Between two writes of the request to the upstream.
    #[serde(default = "d_io_timeout")]
    pub write_timeout: Dur,
    /// A pooled keep-alive connection to the upstream idle longer than this is closed.
    #[serde(default = "d_io_timeout")]
    pub idle_timeout: Dur,
    /// Extra attempts after a failed connect (idempotent requests only; never once any of the
    /// request went out).
    #[serde(default = "d_retries")]
    pub retries: u32,
    /// How the upstream is spoken to: HTTP/1.1 (default), or HTTP/2 (ALPN `h2` over `https://`,
    /// prior knowledge over `http://`), which gRPC needs.
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
    /// Largest request body forwarded on this route (overrides `limits.max_body_bytes`).
    pub max_body_bytes: Option<u64>,
    /// Upgraded connections (WebSocket after a `101`).
    #[serde(default)]
    pub websocket: WebSocketConfig,
    /// Who may pass (checked after the session is verified, before any connector is called).
    pub require: Option<RequireConfig>,
    /// Header name → dotted claim path, sent to the backend (client copies removed everywhere).
    pub identity_headers: Option<BTreeMap<String, String>>,
    /// A `jwt` connector whose key signs an assertion of the identity headers.
    pub identity_headers_signed_by: Option<String>,
    /// The header the signed assertion travels in (default `X-Extoken-Identity`).
    pub identity_jws_header: Option<String>,
    /// How an `https://` upstream is verified (private CA, name) and the client certificate
    /// shown to it.
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// Refresh an expired session with the refresh cookie (default: `descope.refresh.enabled`).
    pub refresh_session: Option<bool>,
}

fn d_connect_timeout() -> Dur {
    Dur::secs(5)
}
fn d_io_timeout() -> Dur {
    Dur::secs(60)
}
fn d_retries() -> u32 {
    1
}

fn d_true() -> bool {
    true
}
fn d_prefix() -> String {
    "/".into()
}
fn d_header() -> http::HeaderName {
    http::header::AUTHORIZATION
}
fn d_scheme() -> String {
    "Bearer".into()
}

impl RouteConfig {
    /// `path` is `routes[i]`; `cfg` the whole config (connector names, `limits.escaped_slashes`).
    pub(super) fn validate(&self, path: &str, cfg: &Config) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| ConfigError::key(format!("{path}.{key}"), msg);
        self.validate_prefix(cfg)
            .map_err(|m| err("path_prefix", m))?;
        if let Some(h) = &self.host {
            match crate::target::canonical_host(h.as_bytes()) {
                Ok(c) if !c.has_port() => {}
                _ => {
                    let m = format!("{h:?} is not a host name (no port, no scheme)");
                    return Err(err("host", m));
                }
            }
        }
        if let Some(t) = &self.upstream_tls {
            t.validate(&format!("{path}.upstream_tls"), self.upstream.tls)?;
        }
        if !self.scheme.is_empty() && !is_token(&self.scheme) {
            return Err(err(
                "scheme",
                format!("{:?} is not an auth scheme", self.scheme),
            ));
        }
        for (j, c) in self.strip_cookies.iter().flatten().enumerate() {
            if !is_token(c) {
                let m = format!("{c:?} is not a cookie name");
                return Err(err(&format!("strip_cookies[{j}]"), m));
            }
        }
        match (self.auth, &self.connector) {
            (AuthMode::Required, None) => {
                return Err(err("connector", "required when auth is required".into()))
            }
            (_, Some(c)) if !cfg.connectors.contains_key(c) => {
                return Err(err("connector", format!("no connector named {c:?}")))
            }
            _ => {}
        }
        for (tenant, c) in &self.connector_by_tenant {
            if !cfg.connectors.contains_key(c) {
                let m = format!("no connector named {c:?}");
                return Err(err(&format!("connector_by_tenant.{tenant}"), m));
            }
        }
        self.validate_identity_keys(cfg).map_err(|(k, m)| err(k, m))
    }

    /// What `require` and the identity headers may be used with; their contents are checked by
    /// `crate::authorize`, which compiles them.
    fn validate_identity_keys(&self, cfg: &Config) -> Result<(), (&'static str, String)> {
        let no_session = |what: &str| format!("{what} needs a session: not on an auth: none route");
        if self.auth == AuthMode::None {
            for (key, set) in [
                ("require", self.require.is_some()),
                ("identity_headers", self.identity_headers.is_some()),
                (
                    "identity_headers_signed_by",
                    self.identity_headers_signed_by.is_some(),
                ),
                ("identity_jws_header", self.identity_jws_header.is_some()),
                ("refresh_session", self.refresh_session == Some(true)),
            ] {
                if set {
                    return Err((key, no_session(key)));
                }
            }
        }
        if self.identity_jws_header.is_some() && self.identity_headers_signed_by.is_none() {
            let m = "only with identity_headers_signed_by".to_string();
            return Err(("identity_jws_header", m));
        }
        if let Some(name) = &self.identity_headers_signed_by {
            const KEY: &str = "identity_headers_signed_by";
            if self.identity_headers.as_ref().is_none_or(|h| h.is_empty()) {
                return Err((KEY, "there are no identity_headers to sign".into()));
            }
            match cfg.connectors.get(name).map(|c| c.type_name()) {
                None => return Err((KEY, format!("no connector named {name:?}"))),
                Some("jwt") => {}
                Some(t) => {
                    let m =
                        format!("{name:?} is a {t} connector; only a jwt connector's key signs");
                    return Err((KEY, m));
                }
            }
        }
        Ok(())
    }

    /// Requests are matched in canonical form, so a prefix must be canonical to ever match.
    fn validate_prefix(&self, cfg: &Config) -> Result<(), String> {
        let p = &self.path_prefix;
        if !p.starts_with('/') {
            return Err(format!("{p:?} must start with /"));
        }
        // Requests are routed without `;params` (as servlet containers map them), so a prefix
        // holding one could never match.
        if p.contains(';') {
            return Err(format!(
                "{p:?} contains ';': routes match paths without ;parameters; write {:?}",
                crate::target::without_parameters(p.as_bytes())
            ));
        }
        match crate::target::canonical_path(p.as_bytes(), cfg.limits.escaped_slashes) {
            Ok(c) if c == p.as_bytes() => Ok(()),
            Ok(c) => Err(format!(
                "{p:?} is not in canonical form; write {:?}",
                String::from_utf8_lossy(&c)
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}
