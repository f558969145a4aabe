//! The `claim` connector: the external token is a claim of the session (by default
//! `externalToken`, where Descope puts the token its connector made at the end of the flow).

use super::{ExchangeError, ExternalToken};
use crate::verify::VerifiedSession;

pub struct ClaimConnector {
    claim: String,
}

impl ClaimConnector {
    pub fn new(claim: String) -> Self {
        ClaimConnector { claim }
    }

    pub fn extract(&self, session: &VerifiedSession) -> Result<ExternalToken, ExchangeError> {
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
