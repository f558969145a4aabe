//! `gateway.yaml`: the configuration types, loading and validation.
//!
//! These types mirror the file and nothing else; `crate::gateway` turns a validated [`Config`] into
//! the runtime objects the proxy uses. Every error names the key path it is about
//! (`routes[1].connector: no connector named "fb"`), because the person reading it has a YAML file
//! open, not our source.

mod connectors;
mod decision;
mod descope;
mod duration;
mod expand;
mod limits;
mod net;
mod ops;
mod refresh;
mod require;
mod routes;
mod tls;
mod traces;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use connectors::*;
pub use decision::DecisionConfig;
pub use descope::*;
pub use duration::{parse_duration, Dur};
pub use limits::*;
pub use net::{parse_listen, Cidr, Upstream};
pub use ops::{LogConfig, LogFormat, LOG_LEVELS};
pub use refresh::{CookieConfig, RefreshConfig, SameSite};
pub use require::*;
pub use routes::*;
pub use tls::*;
pub use traces::{TraceExport, TracingConfig};

pub use crate::target::{EscapedSlashes, PathParameters};

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
    /// The cleartext listener; `off` (`None`) serves TLS only.
    #[serde(default = "default_listen", deserialize_with = "net::de_listen_or_off")]
    pub listen: Option<std::net::SocketAddr>,
    /// The TLS listener (absent: none).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// HTTP/2 with prior knowledge on the cleartext listener, beside HTTP/1.1.
    #[serde(default)]
    pub h2c: bool,
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
    /// How often upstream host names are resolved again (the addresses of Kubernetes headless
    /// services and cloud load balancers change while the gateway runs).
    #[serde(default = "d_dns_refresh")]
    pub dns_refresh: Dur,
    /// Decision mode: extoken answers an ingress's auth subrequests (see `decision.rs`). Its
    /// listeners are bound at start; a reload applies the rest of the block.
    #[serde(default)]
    pub decision: Option<DecisionConfig>,
    /// OpenTelemetry traces (absent: none). A reload applies a changed block.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
}

fn d_dns_refresh() -> Dur {
    Dur::secs(30)
}

fn default_listen() -> Option<std::net::SocketAddr> {
    Some(std::net::SocketAddr::from(([0, 0, 0, 0], 8080)))
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
        let mut cfg: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.into_inner().to_string();
            if path == "." {
                ConfigError::Syntax(msg)
            } else {
                ConfigError::key(path, msg)
            }
        })?;
        if let Some(t) = &mut cfg.tracing {
            t.resolve(env)?;
        }
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
        if let Some(t) = &mut self.tls {
            t.resolve_paths(base);
        }
        for r in &mut self.routes {
            if let Some(u) = &mut r.upstream_tls {
                u.resolve_paths(base);
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_ops()?;
        self.validate_listeners()?;
        self.descope.validate()?;
        // More often than each second is a steady load on the resolver for no benefit.
        if self.dns_refresh.0 < std::time::Duration::from_secs(1) {
            return Err(ConfigError::key("dns_refresh", "must be at least 1s"));
        }
        if self.routes.is_empty() {
            return Err(ConfigError::key("routes", "at least one route is needed"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.validate(&format!("routes[{i}]"), self)?;
        }
        if let Some(d) = &self.decision {
            d.validate()?;
        }
        if let Some(t) = &self.tracing {
            t.validate()?;
        }
        Ok(())
    }

    /// The short description `extoken check` prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let d = &self.descope;
        match self.listen {
            Some(a) => {
                let _ = writeln!(s, "listen:   {a}");
            }
            None => {
                let _ = writeln!(s, "listen:   off");
            }
        }
        if let Some(t) = &self.tls {
            let _ = writeln!(
                s,
                "tls:      {} ({} certificate(s), client certificates {}, ALPN {})",
                t.listen,
                t.certificates.len(),
                format!("{:?}", t.client_auth).to_lowercase(),
                t.alpn.join(", ")
            );
        }
        if let Some(dc) = &self.decision {
            let at =
                |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
            let _ = writeln!(
                s,
                "decision: http {}, grpc {}, {} trusted proxy block(s)",
                at(dc.listen),
                at(dc.grpc_listen),
                dc.trusted_proxies.len()
            );
        }
        if let Some(t) = &self.tracing {
            let e = t.export();
            let _ = writeln!(
                s,
                "traces:   {} as {:?}, {} of new traces sampled; queue {} spans, batches of {} \
                 at least every {}, export timeout {}",
                t.traces_url(),
                t.service(),
                t.sample_ratio,
                e.max_queue_spans,
                e.max_batch_spans,
                Dur(e.batch_delay),
                Dur(e.timeout)
            );
        }
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
        if self.cache.shared.is_some() {
            let _ = writeln!(s, "tokens:   cached here and in Redis (cache.shared)");
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
                "  {name}: {}{host} -> {}  [{auth}]{}",
                r.path_prefix,
                r.upstream,
                r.who_may_pass()
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
