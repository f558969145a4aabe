//! The `jwt` connector: a JWT the gateway signs itself, for in-house token formats that need no
//! HTTP service. Its public keys are published (admin listener `/.well-known/jwks.json`) so the
//! legacy backend can verify them like any other issuer's.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};

use super::identity::{mapped, merge, user_id};
use super::signing::Signer;
use super::{unix_now, ExchangeError, Mint, Minted, RequestInfo};
use crate::config::{ClaimMap, ConfigError, JwtAlgorithm, JwtConnectorConfig};
use crate::verify::VerifiedSession;

pub struct JwtConnector {
    name: String,
    pub signer: Signer,
    issuer: String,
    audience: Option<Value>,
    expires_in: Duration,
    claims: ClaimMap,
}

impl JwtConnector {
    /// The connector, and the bytes of its key file (for the cache fingerprint).
    pub fn build(
        name: &str,
        path: &str,
        c: &JwtConnectorConfig,
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
            signer,
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

    async fn mint(&self, inputs: &Value) -> Result<Minted, ExchangeError> {
        let now = unix_now();
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
}
