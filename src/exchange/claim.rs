//! The `claim` connector: the external token is a claim of the session (by default
//! `externalToken`, where Descope puts the token its connector made at the end of the flow).

use serde::Deserialize;

use super::settings::Settings;
use super::{ExchangeError, ExternalToken};
use crate::config::ConfigError;
use crate::verify::{ClaimsKept, VerifiedSession};

/// `type: claim`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimConnectorConfig {
    #[serde(default = "d_claim")]
    pub(crate) claim: String,
}

fn d_claim() -> String {
    "externalToken".into()
}

impl Settings for ClaimConnectorConfig {
    fn worst_case(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.claim.is_empty() {
            return Err(ConfigError::key(
                format!("{path}.claim"),
                "must not be empty",
            ));
        }
        Ok(())
    }
}

pub(crate) struct ClaimConnector {
    claim: String,
}

impl ClaimConnector {
    pub(crate) fn new(c: &ClaimConnectorConfig) -> Self {
        ClaimConnector {
            claim: c.claim.clone(),
        }
    }

    pub(crate) fn claims_read(&self, kept: &mut ClaimsKept) {
        kept.read_name(&self.claim);
    }

    pub(crate) fn extract(
        &self,
        session: &VerifiedSession,
    ) -> Result<ExternalToken, ExchangeError> {
        let v = session
            .str_claim(&self.claim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ExchangeError::MissingClaim {
                claim: self.claim.clone(),
            })?;
        ExternalToken::new(v).ok_or_else(|| ExchangeError::InvalidClaim {
            claim: self.claim.clone(),
        })
    }
}
