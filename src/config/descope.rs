//! `descope:`: where sessions come from and how they are checked (the verifier's settings).

use std::path::PathBuf;

use serde::Deserialize;

use super::{is_token, ConfigError, Dur};

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
    /// A key-set reply (or file) larger than this is a failed fetch. It is read with this bound,
    /// so a runaway endpoint cannot make the gateway buffer it.
    #[serde(default = "d_jwks_max_bytes")]
    pub jwks_max_bytes: usize,
    #[serde(default = "d_ds")]
    pub session_cookie: String,
    #[serde(default = "d_dsr")]
    pub refresh_cookie: String,
    /// Refreshing expired sessions with the refresh cookie (`descope.refresh:`).
    #[serde(default)]
    pub refresh: super::RefreshConfig,
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
fn d_jwks_max_bytes() -> usize {
    1024 * 1024
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
    /// `base_url`, else the default (regional) one, without a trailing `/`.
    pub fn base_url(&self) -> String {
        match &self.base_url {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => default_base_url(&self.project_id),
        }
    }

    /// `jwks_file`, else `jwks_url`, else `{base}/v2/keys/{projectId}` with the regional host
    /// Descope uses for project ids of 32 characters or more.
    pub fn key_source(&self) -> KeySource {
        if let Some(f) = &self.jwks_file {
            return KeySource::File(f.clone());
        }
        if let Some(u) = &self.jwks_url {
            return KeySource::Url(u.clone());
        }
        KeySource::Url(format!("{}/v2/keys/{}", self.base_url(), self.project_id))
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

impl DescopeConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.project_id.trim().is_empty() {
            return Err(ConfigError::key("descope.project_id", "must not be empty"));
        }
        if self.jwks_url.is_some() && self.jwks_file.is_some() {
            return Err(ConfigError::key(
                "descope.jwks_file",
                "jwks_file and jwks_url are exclusive: set one",
            ));
        }
        for (key, url) in [
            ("descope.jwks_url", &self.jwks_url),
            ("descope.base_url", &self.base_url),
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
        if self.jwks_refresh.0.is_zero() {
            return Err(ConfigError::key(
                "descope.jwks_refresh",
                "must be more than 0",
            ));
        }
        if self.jwks_max_bytes == 0 {
            return Err(ConfigError::key(
                "descope.jwks_max_bytes",
                "must be more than 0",
            ));
        }
        for (key, name) in [
            ("descope.session_cookie", &self.session_cookie),
            ("descope.refresh_cookie", &self.refresh_cookie),
        ] {
            if !is_token(name) {
                return Err(ConfigError::key(
                    key,
                    format!("{name:?} is not a cookie name"),
                ));
            }
        }
        self.refresh.validate()
    }
}
