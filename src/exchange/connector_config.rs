//! A `connectors.<name>` block, typed: which connector, with that connector's settings (each
//! defined, with its checks, in the connector's own module). The config keeps the blocks raw
//! ([`RawConnector`]); they are parsed here, once per build, with errors that name the key path
//! exactly as the config's own errors do (`connectors.fb.service_account_file: ...`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::claim::ClaimConnectorConfig;
use super::firebase::FirebaseConfig;
use super::http_endpoint::HttpConnectorConfig;
use super::jwt_template::JwtConnectorConfig;
use super::settings::Settings;
use super::shared::{SharedCacheConfig, Slowest};
use super::supabase::SupabaseConfig;
use super::token_exchange::{check_subjects, TokenExchangeConfig};
use crate::config::{Config, ConfigError, RawConnector};

/// Checks every connector block of `cfg`, and `cache.shared` against them, without reading files
/// or the network (what `extoken reload` checks before it signals). Building the connectors checks
/// the same and more.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let typed: Vec<(&str, ConnectorConfig)> = parse_all(cfg)?.into_iter().collect();
    shared_config(cfg, &typed).map(|_| ())
}

/// Every connector block of `cfg`, typed and checked, alone and together (the subjects of
/// `token_exchange` connectors name existing connectors, without a cycle).
pub(crate) fn parse_all(cfg: &Config) -> Result<BTreeMap<&str, ConnectorConfig>, ConfigError> {
    let mut typed = BTreeMap::new();
    for (name, raw) in &cfg.connectors {
        typed.insert(name.as_str(), ConnectorConfig::parse(name, raw)?);
    }
    let subjects = typed
        .iter()
        .map(|(&name, c)| (name, c.subject_connector()))
        .collect();
    check_subjects(&subjects)?;
    Ok(typed)
}

/// `cache.shared` checked against the connectors (`lock_ttl` must outlive the slowest), if set.
pub(super) fn shared_config(
    cfg: &Config,
    connectors: &[(&str, ConnectorConfig)],
) -> Result<Option<SharedCacheConfig>, ConfigError> {
    let Some(raw) = &cfg.cache.shared else {
        return Ok(None);
    };
    let slowest: Slowest = connectors
        .iter()
        .map(|(name, c)| (name.to_string(), c.worst_case()))
        .max_by_key(|(_, d)| *d);
    SharedCacheConfig::parse(raw, &slowest).map(Some)
}

/// A connector produces the external token for a verified session.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ConnectorConfig {
    /// The external token is a claim of the session JWT (Descope put it there at the end of the flow).
    Claim(ClaimConnectorConfig),
    /// A Supabase access token signed with the project's JWT secret or signing key.
    Supabase(SupabaseConfig),
    /// A Firebase custom token, or the ID token it is exchanged for.
    Firebase(FirebaseConfig),
    /// A token fetched from an HTTP endpoint (Descope's "Generic HTTP" connector contract).
    Http(HttpConnectorConfig),
    /// A JWT signed by the gateway's own key, for in-house formats.
    Jwt(JwtConnectorConfig),
    /// A token from an OAuth 2.0 authorization server, by Token Exchange (RFC 8693), for the
    /// session (or another connector's token).
    TokenExchange(TokenExchangeConfig),
}

impl ConnectorConfig {
    /// Connector `name`'s block, typed, its relative paths resolved, checked (no I/O).
    pub(crate) fn parse(name: &str, raw: &RawConnector) -> Result<ConnectorConfig, ConfigError> {
        let path = format!("connectors.{name}");
        let mut c: ConnectorConfig = serde_path_to_error::deserialize(raw.value().clone())
            .map_err(|e| {
                let key = match e.path().to_string().as_str() {
                    "." => path.clone(),
                    inner => format!("{path}.{inner}"),
                };
                ConfigError::key(key, e.into_inner().to_string())
            })?;
        if let Some(base) = raw.dir() {
            for p in c.settings_mut().paths_mut() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        c.settings().validate(&path)?;
        Ok(c)
    }

    fn settings(&self) -> &dyn Settings {
        match self {
            ConnectorConfig::Claim(c) => c,
            ConnectorConfig::Supabase(c) => c,
            ConnectorConfig::Firebase(c) => c,
            ConnectorConfig::Http(c) => c,
            ConnectorConfig::Jwt(c) => c,
            ConnectorConfig::TokenExchange(c) => c,
        }
    }

    /// The connector whose token this one exchanges, if any.
    pub(crate) fn subject_connector(&self) -> Option<&str> {
        match self {
            ConnectorConfig::TokenExchange(c) => c.subject_connector(),
            _ => None,
        }
    }

    /// [`Settings::worst_case`] of this connector.
    pub(crate) fn worst_case(&self) -> Duration {
        self.settings().worst_case()
    }

    fn settings_mut(&mut self) -> &mut dyn Settings {
        match self {
            ConnectorConfig::Claim(c) => c,
            ConnectorConfig::Supabase(c) => c,
            ConnectorConfig::Firebase(c) => c,
            ConnectorConfig::Http(c) => c,
            ConnectorConfig::Jwt(c) => c,
            ConnectorConfig::TokenExchange(c) => c,
        }
    }

    /// The settings as text for the connector cache's fingerprint, without the file paths: what a
    /// connector mints with is the files' contents (hashed separately, as loaded), not where they
    /// lie. Holds secrets: only ever hashed, never logged.
    pub(crate) fn settings_without_paths(&self) -> String {
        let mut c = self.clone();
        for p in c.settings_mut().paths_mut() {
            *p = PathBuf::new();
        }
        format!("{c:?}")
    }
}

#[cfg(test)]
mod tests;
