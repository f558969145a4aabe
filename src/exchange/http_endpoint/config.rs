//! `type: http`: the endpoint, how to authenticate to it, and what to read from its reply.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Dur};
use crate::exchange::settings::{check_url, positive, Settings};

/// How the HTTP connector authenticates to its endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum HttpAuth {
    Bearer(String),
    Basic {
        username: String,
        password: String,
    },
    ApiKey {
        header: String,
        value: String,
    },
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scopes: Vec<String>,
    },
}

/// `type: http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpConnectorConfig {
    pub(super) url: String,
    pub(super) auth: Option<HttpAuth>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) hmac_secret: Option<String>,
    #[serde(default = "d_token_field")]
    pub(super) token_field: String,
    #[serde(default = "d_timeout")]
    pub(super) timeout: Dur,
    #[serde(default = "d_retries")]
    pub(super) retries: u32,
    /// Lifetime when the reply has neither `expires_in` nor a JWT `exp`.
    pub(super) ttl: Option<Dur>,
}

fn d_token_field() -> String {
    "token".into()
}
fn d_timeout() -> Dur {
    Dur::secs(2)
}
fn d_retries() -> u32 {
    2
}

/// The pause before retry `attempt` (0-based): 100 ms, doubling, at most 6.4 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 << attempt.min(6))
}

impl Settings for HttpConnectorConfig {
    /// Every attempt times out (after an OAuth2 token fetch that times out too), with the
    /// backoff pauses between attempts.
    fn worst_case(&self) -> Duration {
        let per_attempt = match self.auth {
            Some(HttpAuth::Oauth2ClientCredentials { .. }) => self.timeout.0 * 2,
            _ => self.timeout.0,
        };
        let pauses: Duration = (0..self.retries).map(backoff).sum();
        per_attempt.saturating_mul(self.retries.saturating_add(1)) + pauses
    }
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check_url(format!("{path}.url"), &self.url)?;
        if self.token_field.is_empty() {
            return Err(ConfigError::key(
                format!("{path}.token_field"),
                "must not be empty",
            ));
        }
        positive(format!("{path}.timeout"), self.timeout)?;
        for name in self.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::key(
                    format!("{path}.headers.{name}"),
                    "not a header name",
                ));
            }
        }
        match &self.auth {
            Some(HttpAuth::ApiKey { header, .. })
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() =>
            {
                return Err(ConfigError::key(
                    format!("{path}.auth.api_key.header"),
                    "not a header name",
                ))
            }
            Some(HttpAuth::Oauth2ClientCredentials { token_url, .. }) => check_url(
                format!("{path}.auth.oauth2_client_credentials.token_url"),
                token_url,
            )?,
            _ => {}
        }
        if let Some(t) = self.ttl {
            positive(format!("{path}.ttl"), t)?;
        }
        Ok(())
    }
}
