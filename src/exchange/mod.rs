//! Step 3 of the request path: obtain the external token for a verified session.
//!
//! A [`Connector`] turns a [`Session`] into an [`ExternalToken`]. The `claim` connector reads the
//! token Descope already put in the session; minting connectors (later) call out or sign, behind a
//! cache. An [`ExternalToken`] can only be built from visible ASCII, so whatever reaches a header
//! is a valid, single-line header value.

mod claim;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use claim::ClaimConnector;

use crate::config::{Config, ConnectorConfig};
use crate::verify::Session;

/// A token for the legacy backend. Never printed: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalToken(Arc<str>);

impl ExternalToken {
    /// Accepts only visible ASCII (0x21..=0x7E): no spaces, controls, CR/LF or non-ASCII.
    pub fn new(s: String) -> Option<ExternalToken> {
        (!s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b))).then(|| ExternalToken(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ExternalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExternalToken(<{} bytes>)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The session lacks what the connector needs (a 401: the client must log in again).
    #[error("session has no usable {claim} claim")]
    MissingClaim { claim: String },
    /// The session's claim exists but is not a token that may go in a header.
    #[error("session's {claim} claim is not a valid token")]
    InvalidClaim { claim: String },
    /// The connector could not produce a token now (a 503: retry later).
    #[error("connector {connector} is unavailable: {reason}")]
    Unavailable { connector: String, reason: String },
}

/// What a connector knows about the request besides the session (minting connectors send it).
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
}

#[async_trait::async_trait]
pub trait Connector: Send + Sync {
    async fn token(&self, session: &Session, req: RequestInfo<'_>) -> Result<ExternalToken, ExchangeError>;
}

/// The configured connectors, by name.
pub struct Connectors {
    by_name: BTreeMap<String, Arc<dyn Connector>>,
}

impl Connectors {
    pub fn build(cfg: &Config) -> Result<Connectors, crate::config::ConfigError> {
        let mut by_name: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
        for (name, c) in &cfg.connectors {
            let conn: Arc<dyn Connector> = match c {
                ConnectorConfig::Claim(c) => Arc::new(ClaimConnector::new(c.claim.clone())),
            };
            by_name.insert(name.clone(), conn);
        }
        Ok(Connectors { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.by_name.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_ascii() {
        assert!(ExternalToken::new("eyJ.abc-_~+/=".into()).is_some());
        for bad in ["", "a b", "a\r\nX-Evil: 1", "tab\t", "é", "nul\0"] {
            assert!(ExternalToken::new(bad.into()).is_none(), "{bad:?}");
        }
        let t = ExternalToken::new("secret".into()).unwrap();
        assert!(!format!("{t:?}").contains("secret"));
    }
}
