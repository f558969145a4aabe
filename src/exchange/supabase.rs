//! The `supabase` connector: an access token Supabase (PostgREST, RLS, Realtime) accepts as its own.
//!
//! Shape follows Supabase Auth's tokens: `sub`, `role`, `aud`, `iat`, `exp`, optional `iss`,
//! `email`/`phone`. By default `sub` is a UUIDv5 of the Descope user id, because `auth.uid()` casts
//! `sub` to `uuid` and a Descope id (`U2…`) would break every RLS policy; the original id is kept in
//! `descope_user_id`. HS256 tokens carry no `kid`: PostgREST rejects a kid with a plain secret.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Map, Value};

use super::identity::{mapped, merge, user_id};
use super::signing::Signer;
use super::{unix_now, ExchangeError, Mint, Minted, RequestInfo};
use crate::config::{ClaimMap, ConfigError, SubMode, SupabaseConfig};
use crate::verify::Session;

pub struct Supabase {
    name: String,
    signer: Signer,
    role: String,
    audience: String,
    expires_in: Duration,
    issuer: Option<String>,
    sub_mode: SubMode,
    namespace: uuid::Uuid,
    claims: ClaimMap,
}

impl Supabase {
    pub fn build(name: &str, path: &str, c: &SupabaseConfig) -> Result<Supabase, ConfigError> {
        let signer = match (&c.jwt_secret, &c.signing_key) {
            (Some(secret), _) => Signer::hs256(secret),
            (None, Some(file)) => {
                Signer::from_file(file, c.kid.clone(), &[Algorithm::ES256, Algorithm::RS256])
                    .map_err(|m| ConfigError::key(format!("{path}.signing_key"), m))?
            }
            (None, None) => return Err(ConfigError::key(format!("{path}.jwt_secret"), "missing")),
        };
        let namespace = uuid::Uuid::parse_str(&c.uuid_namespace)
            .map_err(|_| ConfigError::key(format!("{path}.uuid_namespace"), "not a UUID"))?;
        Ok(Supabase {
            name: name.to_string(),
            signer,
            role: c.role.clone(),
            audience: c.audience.clone(),
            expires_in: c.expires_in.0,
            issuer: c.issuer.clone(),
            sub_mode: c.sub_mode,
            namespace,
            claims: c.claims.clone(),
        })
    }

    /// The `sub` for a Descope user id.
    pub fn subject(&self, descope_id: &str) -> String {
        match self.sub_mode {
            SubMode::Uuid => uuid::Uuid::new_v5(&self.namespace, descope_id.as_bytes()).to_string(),
            SubMode::Descope => descope_id.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Mint for Supabase {
    fn inputs(&self, s: &Session, _req: RequestInfo<'_>) -> Result<Value, ExchangeError> {
        Ok(json!({
            "uid": user_id(s)?,
            "email": s.claims.get("email"),
            "phone": s.claims.get("phone"),
            "mapped": mapped(&s.claims, &self.claims),
        }))
    }

    async fn mint(&self, inputs: &Value) -> Result<Minted, ExchangeError> {
        let uid = inputs["uid"].as_str().unwrap_or_default();
        let now = unix_now();
        let mut c = Map::new();
        c.insert("sub".into(), self.subject(uid).into());
        if self.sub_mode == SubMode::Uuid {
            c.insert("descope_user_id".into(), uid.into());
        }
        c.insert("role".into(), self.role.clone().into());
        c.insert("aud".into(), self.audience.clone().into());
        c.insert("iat".into(), now.into());
        c.insert("exp".into(), (now + self.expires_in.as_secs()).into());
        if let Some(iss) = &self.issuer {
            c.insert("iss".into(), iss.clone().into());
        }
        for k in ["email", "phone"] {
            if let Some(v) = inputs[k].as_str() {
                c.insert(k.into(), v.into());
            }
        }
        if let Some(m) = inputs["mapped"].as_object() {
            merge(&mut c, m.clone());
        }
        self.signer.mint(&self.name, &c, self.expires_in)
    }
}
