//! The `jwt` connector: a JWT the gateway signs itself, for in-house token formats that need no
//! HTTP service. Its public keys are published (admin listener `/.well-known/jwks.json`) so the
//! legacy backend can verify them like any other issuer's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::identity::{check_claim_map, mapped, merge, user_id, ClaimMap, JWT_RESERVED};
use super::settings::{positive, Settings};
use super::signing::Signer;
use super::{ExchangeError, Mint, Minted, RequestInfo};
use crate::clock::SharedClock;
use crate::config::{ConfigError, Dur, OneOrMany};
use crate::verify::{ClaimsKept, VerifiedSession};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub(crate) enum JwtAlgorithm {
    #[default]
    RS256,
    ES256,
    EdDSA,
}

/// `type: jwt`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtConnectorConfig {
    #[serde(default)]
    algorithm: JwtAlgorithm,
    key_file: PathBuf,
    kid: Option<String>,
    issuer: String,
    audience: Option<OneOrMany>,
    #[serde(default = "d_quarter")]
    expires_in: Dur,
    #[serde(default)]
    claims: ClaimMap,
}

fn d_quarter() -> Dur {
    Dur::secs(900)
}

impl Settings for JwtConnectorConfig {
    /// Signed locally: no call to wait for.
    fn worst_case(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        positive(format!("{path}.expires_in"), self.expires_in)?;
        if self.issuer.is_empty() {
            return Err(ConfigError::key(
                format!("{path}.issuer"),
                "must not be empty",
            ));
        }
        check_claim_map(path, &self.claims, JWT_RESERVED)
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        vec![&mut self.key_file]
    }
}

pub(crate) struct JwtConnector {
    name: String,
    clock: SharedClock,
    signer: Arc<Signer>,
    issuer: String,
    audience: Option<Value>,
    expires_in: Duration,
    claims: ClaimMap,
}

impl JwtConnector {
    /// The connector, and the bytes of its key file (for the cache fingerprint).
    pub(crate) fn build(
        name: &str,
        path: &str,
        c: &JwtConnectorConfig,
        clock: SharedClock,
    ) -> Result<(JwtConnector, Vec<u8>), ConfigError> {
        let alg = match c.algorithm {
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        };
        let (signer, loaded) = Signer::from_file(&c.key_file, c.kid.clone(), &[alg])
            .map_err(|m| ConfigError::key(format!("{path}.key_file"), m))?;
        let audience = c.audience.as_ref().map(|a| match a.to_vec().as_slice() {
            [one] => Value::String(one.clone()),
            many => json!(many),
        });
        let connector = JwtConnector {
            name: name.to_string(),
            clock,
            signer: Arc::new(signer),
            issuer: c.issuer.clone(),
            audience,
            expires_in: c.expires_in.0,
            claims: c.claims.clone(),
        };
        Ok((connector, loaded))
    }
}

#[async_trait::async_trait]
impl Mint for JwtConnector {
    fn inputs(&self, s: &VerifiedSession, _req: RequestInfo<'_>) -> Result<Value, ExchangeError> {
        Ok(json!({ "uid": user_id(s)?, "mapped": mapped(&s.claims, &self.claims) }))
    }
    fn claims_read(&self, kept: &mut ClaimsKept) {
        super::identity::claims_read(kept, &self.claims);
    }

    async fn mint(&self, inputs: &Value) -> Result<Minted, ExchangeError> {
        let now = self.clock.unix();
        let mut c = Map::new();
        c.insert("iss".into(), self.issuer.clone().into());
        c.insert("sub".into(), inputs["uid"].clone());
        if let Some(aud) = &self.audience {
            c.insert("aud".into(), aud.clone());
        }
        c.insert("iat".into(), now.into());
        c.insert("exp".into(), (now + self.expires_in.as_secs()).into());
        if let Some(m) = inputs["mapped"].as_object() {
            merge(&mut c, m.clone());
        }
        self.signer.mint(&self.name, &c, self.expires_in)
    }

    fn public_jwk(&self) -> Option<jsonwebtoken::jwk::Jwk> {
        self.signer.public.clone()
    }

    fn identity_signer(&self) -> Option<IdentitySigner> {
        Some(IdentitySigner {
            signer: self.signer.clone(),
            issuer: self.issuer.clone(),
        })
    }
}

/// A `jwt` connector's key and issuer, lent to routes whose `identity_headers_signed_by` names
/// it: their identity assertions verify against the same published JWKS as its tokens.
#[derive(Clone)]
pub(crate) struct IdentitySigner {
    signer: Arc<Signer>,
    issuer: String,
}

/// The `typ` of an identity assertion: it is not an access token and must not pass as one.
pub(crate) const IDENTITY_TYP: &str = "extoken-identity+jwt";

impl IdentitySigner {
    /// Signs an identity assertion: `claims` plus this connector's `iss`.
    pub(crate) fn sign(&self, mut claims: Map<String, Value>) -> Result<String, String> {
        claims.insert("iss".into(), self.issuer.clone().into());
        self.signer.sign_typed(IDENTITY_TYP, &claims)
    }
}
