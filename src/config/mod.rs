//! `gateway.yaml`: the configuration types, loading and validation.
//!
//! These types mirror the file and nothing else; `crate::gateway` turns a validated [`Config`] into
//! the runtime objects the proxy uses. Every error names the key path it is about
//! (`routes[1].connector: no connector named "fb"`), because the person reading it has a YAML file
//! open, not our source.

mod connectors;
mod duration;
mod expand;
mod net;
mod ops;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use connectors::*;
pub use duration::{parse_duration, Dur};
pub use net::{parse_listen, Cidr, Upstream};
pub use ops::{LogConfig, LogFormat, LOG_LEVELS};

pub use crate::target::EscapedSlashes;

/// The config the demo and `extoken run` fall back to: the repo's own `gateway.yaml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../gateway.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    /// A problem with one key; displayed as `path: message`.
    #[error("{path}: {message}")]
    Key { path: String, message: String },
}

impl ConfigError {
    pub fn key(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen", deserialize_with = "net::de_listen")]
    pub listen: std::net::SocketAddr,
    /// Worker threads of the proxy service; 0 means one per CPU.
    #[serde(default)]
    pub threads: usize,
    pub descope: DescopeConfig,
    #[serde(default)]
    pub connectors: BTreeMap<String, RawConnector>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Peers whose `X-Forwarded-*`/`Forwarded` headers are believed (appended to); from any other
    /// peer they are replaced by what extoken saw.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`, JWKS); `off` disables it.
    #[serde(
        default = "ops::d_admin_listen",
        deserialize_with = "net::de_admin_listen"
    )]
    pub admin_listen: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub log: LogConfig,
    /// SIGTERM to exit, at most (Kubernetes gives 30 s by default).
    #[serde(default = "ops::d_shutdown_grace")]
    pub shutdown_grace: Dur,
    /// After SIGTERM: not ready at once, but still accepting for this long.
    #[serde(default = "ops::d_shutdown_delay")]
    pub shutdown_delay: Dur,
    /// `/readyz` fails when the Descope keys were last loaded longer ago than this.
    #[serde(default = "ops::d_keys_max_age")]
    pub keys_max_age: Dur,
    /// Where `extoken run` writes its pid (for `extoken reload`).
    pub pid_file: Option<PathBuf>,
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 8080))
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DescopeConfig {
    pub project_id: String,
    pub base_url: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub audience: Option<OneOrMany>,
    #[serde(default = "d_leeway")]
    pub leeway: Dur,
    #[serde(default = "d_refresh")]
    pub jwks_refresh: Dur,
    #[serde(default = "d_min_refetch")]
    pub jwks_min_refetch: Dur,
    /// Timeout of one JWKS fetch.
    #[serde(default = "d_jwks_timeout")]
    pub jwks_timeout: Dur,
    #[serde(default = "d_ds")]
    pub session_cookie: String,
    #[serde(default = "d_dsr")]
    pub refresh_cookie: String,
}

fn d_leeway() -> Dur {
    Dur::secs(5)
}
fn d_refresh() -> Dur {
    Dur::secs(300)
}
fn d_min_refetch() -> Dur {
    Dur::secs(30)
}
fn d_jwks_timeout() -> Dur {
    Dur::secs(5)
}
fn d_ds() -> String {
    "DS".into()
}
fn d_dsr() -> String {
    "DSR".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Where the Descope public keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    Url(String),
    File(PathBuf),
}

impl DescopeConfig {
    /// `jwks_file`, else `jwks_url`, else `{base}/v2/keys/{projectId}` with the regional host
    /// Descope uses for project ids of 32 characters or more.
    pub fn key_source(&self) -> KeySource {
        if let Some(f) = &self.jwks_file {
            return KeySource::File(f.clone());
        }
        if let Some(u) = &self.jwks_url {
            return KeySource::Url(u.clone());
        }
        let base = match &self.base_url {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => default_base_url(&self.project_id),
        };
        KeySource::Url(format!("{base}/v2/keys/{}", self.project_id))
    }
}

/// `https://api.descope.com`, or `https://api.<region>.descope.com` for 32+ character project ids
/// (the region is characters 1..5 of the id, as the Descope SDKs derive it).
pub fn default_base_url(project_id: &str) -> String {
    if project_id.len() >= 32 && project_id.is_char_boundary(1) && project_id.is_char_boundary(5) {
        format!(
            "https://api.{}.descope.com",
            &project_id[1..5].to_ascii_lowercase()
        )
    } else {
        "https://api.descope.com".into()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Required,
    None,
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Bound of the verified-session cache (tokens already verified, kept until they expire).
    #[serde(default = "d_verified_entries")]
    pub verified_sessions: u64,
    /// Bound of the external-token cache (all minting connectors together).
    #[serde(default = "d_verified_entries")]
    pub max_entries: u64,
    /// Refresh-ahead window as a share of the token's lifetime (`10%`).
    #[serde(default = "d_margin")]
    pub margin: Percent,
    /// ... but at least this long.
    #[serde(default = "d_min_margin")]
    pub min_margin: Dur,
    /// How long a connector failure is remembered per key (no call during it).
    #[serde(default = "d_negative_ttl")]
    pub negative_ttl: Dur,
}

fn d_verified_entries() -> u64 {
    100_000
}
fn d_margin() -> Percent {
    Percent(10.0)
}
fn d_min_margin() -> Dur {
    Dur::secs(30)
}
fn d_negative_ttl() -> Dur {
    Dur::secs(1)
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            verified_sessions: d_verified_entries(),
            max_entries: d_verified_entries(),
            margin: d_margin(),
            min_margin: d_min_margin(),
            negative_ttl: d_negative_ttl(),
        }
    }
}

/// A percentage written `10%` (or a bare number).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => s
                .trim()
                .trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .map_err(|_| {
                    serde::de::Error::custom(format!("{s:?} is not a percentage like 10%"))
                })?,
        };
        if !(0.0..=50.0).contains(&v) {
            return Err(serde::de::Error::custom(
                "a margin must be between 0% and 50%",
            ));
        }
        Ok(Percent(v))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest session token accepted; longer ones are refused before any parsing.
    #[serde(default = "d_max_token")]
    pub max_token_bytes: usize,
    /// Largest request head (request line + headers) forwarded; larger ones get a 431.
    #[serde(default = "d_max_header")]
    pub max_header_bytes: usize,
    /// `%2F`/`%5C` in a path: refused (`reject`), or kept encoded as ordinary characters (`keep`).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Header names with `_` (which CGI/WSGI backends read as `-`): `drop`, `reject` (400), `allow`.
    #[serde(default)]
    pub underscore_headers: UnderscoreHeaders,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Removed before forwarding (nginx's `underscores_in_headers off`).
    #[default]
    Drop,
    /// The request is refused with `400`.
    Reject,
    /// Forwarded as received.
    Allow,
}

fn d_max_token() -> usize {
    16 * 1024
}
fn d_max_header() -> usize {
    64 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_token_bytes: d_max_token(),
            max_header_bytes: d_max_header(),
            escaped_slashes: EscapedSlashes::default(),
            underscore_headers: UnderscoreHeaders::default(),
        }
    }
}

impl Config {
    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text, &|k| std::env::var(k).ok())?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses and validates config text; `env` resolves `${VAR}`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut tree: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        expand::expand_tree(&mut tree, &mut String::new(), env)
            .map_err(|(path, msg)| ConfigError::key(path, msg))?;
        let cfg: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.into_inner().to_string();
            if path == "." {
                ConfigError::Syntax(msg)
            } else {
                ConfigError::key(path, msg)
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Relative file paths in the config are relative to the config file, not the working dir.
    fn resolve_paths(&mut self, base: &Path) {
        if let Some(f) = &self.descope.jwks_file {
            if f.is_relative() {
                self.descope.jwks_file = Some(base.join(f));
            }
        }
        for c in self.connectors.values_mut() {
            c.resolve_paths(base);
        }
        if let Some(p) = &self.pid_file {
            if p.is_relative() {
                self.pid_file = Some(base.join(p));
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_ops()?;
        let d = &self.descope;
        if d.project_id.trim().is_empty() {
            return Err(ConfigError::key("descope.project_id", "must not be empty"));
        }
        if d.jwks_url.is_some() && d.jwks_file.is_some() {
            return Err(ConfigError::key(
                "descope.jwks_file",
                "jwks_file and jwks_url are exclusive: set one",
            ));
        }
        for (key, url) in [
            ("descope.jwks_url", &d.jwks_url),
            ("descope.base_url", &d.base_url),
        ] {
            if let Some(u) = url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(ConfigError::key(
                        key,
                        format!("{u:?} is not an http(s) URL"),
                    ));
                }
            }
        }
        if d.jwks_refresh.0.is_zero() {
            return Err(ConfigError::key(
                "descope.jwks_refresh",
                "must be more than 0",
            ));
        }
        for (key, name) in [
            ("descope.session_cookie", &d.session_cookie),
            ("descope.refresh_cookie", &d.refresh_cookie),
        ] {
            if !is_token(name) {
                return Err(ConfigError::key(
                    key,
                    format!("{name:?} is not a cookie name"),
                ));
            }
        }
        if self.routes.is_empty() {
            return Err(ConfigError::key("routes", "at least one route is needed"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if !r.path_prefix.starts_with('/') {
                return Err(ConfigError::key(
                    format!("{path}.path_prefix"),
                    format!("{:?} must start with /", r.path_prefix),
                ));
            }
            // Requests are matched in canonical form, so a prefix must be canonical to match.
            match crate::target::canonical_path(
                r.path_prefix.as_bytes(),
                self.limits.escaped_slashes,
            ) {
                Ok(c) if c == r.path_prefix.as_bytes() => {}
                Ok(c) => {
                    return Err(ConfigError::key(
                        format!("{path}.path_prefix"),
                        format!(
                            "{:?} is not in canonical form; write {:?}",
                            r.path_prefix,
                            String::from_utf8_lossy(&c)
                        ),
                    ))
                }
                Err(e) => {
                    return Err(ConfigError::key(
                        format!("{path}.path_prefix"),
                        e.to_string(),
                    ))
                }
            }
            if let Some(h) = &r.host {
                match crate::target::canonical_host(h.as_bytes()) {
                    Ok(c) if !c.has_port() => {}
                    _ => {
                        return Err(ConfigError::key(
                            format!("{path}.host"),
                            format!("{h:?} is not a host name (no port, no scheme)"),
                        ))
                    }
                }
            }
            if !r.scheme.is_empty() && !is_token(&r.scheme) {
                return Err(ConfigError::key(
                    format!("{path}.scheme"),
                    format!("{:?} is not an auth scheme", r.scheme),
                ));
            }
            for (j, c) in r.strip_cookies.iter().flatten().enumerate() {
                if !is_token(c) {
                    return Err(ConfigError::key(
                        format!("{path}.strip_cookies[{j}]"),
                        format!("{c:?} is not a cookie name"),
                    ));
                }
            }
            match (r.auth, &r.connector) {
                (AuthMode::Required, None) => {
                    return Err(ConfigError::key(
                        format!("{path}.connector"),
                        "required when auth is required",
                    ))
                }
                (_, Some(c)) if !self.connectors.contains_key(c) => {
                    return Err(ConfigError::key(
                        format!("{path}.connector"),
                        format!("no connector named {c:?}"),
                    ))
                }
                _ => {}
            }
            for (tenant, c) in &r.connector_by_tenant {
                if !self.connectors.contains_key(c) {
                    return Err(ConfigError::key(
                        format!("{path}.connector_by_tenant.{tenant}"),
                        format!("no connector named {c:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The short description `extoken check` prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let d = &self.descope;
        let _ = writeln!(s, "listen:   {}", self.listen);
        let _ = writeln!(s, "project:  {}", d.project_id);
        let keys = match d.key_source() {
            KeySource::Url(u) => format!(
                "{u} (refresh {}, unknown-kid cooldown {})",
                d.jwks_refresh, d.jwks_min_refetch
            ),
            KeySource::File(f) => {
                format!("file {} (re-read every {})", f.display(), d.jwks_refresh)
            }
        };
        let _ = writeln!(s, "keys:     {keys}");
        if let Some(a) = &d.audience {
            let _ = writeln!(s, "audience: {}", a.to_vec().join(", "));
        }
        let _ = writeln!(s, "connectors:");
        for (name, c) in &self.connectors {
            let _ = writeln!(s, "  {name}: {}", c.type_name());
        }
        let _ = writeln!(s, "routes:");
        for (i, r) in self.routes.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("#{i}"));
            let host = r
                .host
                .as_deref()
                .map(|h| format!(" host {h}"))
                .unwrap_or_default();
            let auth = match (r.auth, &r.connector) {
                (AuthMode::None, _) => "auth none".to_string(),
                (AuthMode::Required, c) => format!(
                    "connector {} -> {}{}",
                    c.as_deref().unwrap_or("?"),
                    r.header,
                    if r.scheme.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.scheme)
                    }
                ),
            };
            let _ = writeln!(
                s,
                "  {name}: {}{host} -> {}  [{auth}]",
                r.path_prefix, r.upstream
            );
        }
        s
    }
}

/// An RFC 7230 token (header names, cookie names, auth schemes).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
