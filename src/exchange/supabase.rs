//! The `supabase` connector: an access token Supabase (PostgREST, RLS, Realtime) accepts as its own.
//!
//! Shape follows Supabase Auth's tokens: `sub`, `role`, `aud`, `iat`, `exp`, optional `iss`,
//! `email`/`phone`. By default `sub` is a UUIDv5 of the Descope user id, because `auth.uid()` casts
//! `sub` to `uuid` and a Descope id (`U2…`) would break every RLS policy; the original id is kept in
//! `descope_user_id`. HS256 tokens carry no `kid`: PostgREST rejects a kid with a plain secret.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::identity::{check_claim_map, mapped, merge, user_id, ClaimMap, JWT_RESERVED};
use super::settings::{exactly_one, positive, Settings};
use super::signing::Signer;
use super::{ExchangeError, Mint, Minted, RequestInfo};
use crate::clock::SharedClock;
use crate::config::{ConfigError, Dur};
use crate::verify::{ClaimsKept, VerifiedSession};

/// The default `uuid_namespace`: uuid5(NAMESPACE_URL, "https://github.com/extoken/extoken#descope-user-id").
const DEFAULT_UUID_NAMESPACE: &str = "dbd8928c-bb64-505a-830f-43f6b6e8fabd";

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SubMode {
    /// `sub` = UUIDv5(namespace, Descope user id): what `auth.uid()` can cast.
    #[default]
    Uuid,
    /// `sub` = the Descope user id itself.
    Descope,
}

/// `type: supabase`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SupabaseConfig {
    jwt_secret: Option<String>,
    signing_key: Option<PathBuf>,
    kid: Option<String>,
    #[serde(default = "d_authenticated")]
    pub(crate) role: String,
    /// The roles a token may carry: the static `role`, and any role a `claims:` mapping takes
    /// from the session (a session naming another role is refused, 403).
    #[serde(default = "d_allowed_roles")]
    pub(crate) allowed_roles: Vec<String>,
    #[serde(default = "d_authenticated")]
    audience: String,
    #[serde(default = "d_hour")]
    expires_in: Dur,
    issuer: Option<String>,
    #[serde(default)]
    sub_mode: SubMode,
    #[serde(default = "d_namespace")]
    uuid_namespace: String,
    #[serde(default)]
    claims: ClaimMap,
}

fn d_authenticated() -> String {
    "authenticated".into()
}
fn d_allowed_roles() -> Vec<String> {
    vec!["authenticated".into(), "anon".into()]
}
fn d_hour() -> Dur {
    Dur::secs(3600)
}
fn d_namespace() -> String {
    DEFAULT_UUID_NAMESPACE.into()
}

impl Settings for SupabaseConfig {
    /// Signed locally: no call to wait for.
    fn worst_case(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        exactly_one(
            path,
            ("jwt_secret", self.jwt_secret.is_some()),
            ("signing_key", self.signing_key.is_some()),
            " (HS256 secret, or an ES256/RS256 key file)",
        )?;
        if self.jwt_secret.as_deref() == Some("") {
            return Err(ConfigError::key(
                format!("{path}.jwt_secret"),
                "must not be empty",
            ));
        }
        if !self.allowed_roles.contains(&self.role) {
            return Err(ConfigError::key(
                format!("{path}.role"),
                format!(
                    "{:?} is not in allowed_roles {:?}",
                    self.role, self.allowed_roles
                ),
            ));
        }
        if uuid::Uuid::parse_str(&self.uuid_namespace).is_err() {
            return Err(ConfigError::key(
                format!("{path}.uuid_namespace"),
                "not a UUID",
            ));
        }
        positive(format!("{path}.expires_in"), self.expires_in)?;
        check_claim_map(path, &self.claims, JWT_RESERVED)
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        self.signing_key.iter_mut().collect()
    }
}

pub(crate) struct Supabase {
    name: String,
    clock: SharedClock,
    signer: Signer,
    role: String,
    allowed_roles: Vec<String>,
    audience: String,
    expires_in: Duration,
    issuer: Option<String>,
    sub_mode: SubMode,
    namespace: uuid::Uuid,
    claims: ClaimMap,
}

impl Supabase {
    /// The connector, and the bytes of its `signing_key` file if it has one (for the cache
    /// fingerprint; a `jwt_secret` is in the settings already).
    pub(crate) fn build(
        name: &str,
        path: &str,
        c: &SupabaseConfig,
        clock: SharedClock,
    ) -> Result<(Supabase, Vec<u8>), ConfigError> {
        let (signer, loaded) = match (&c.jwt_secret, &c.signing_key) {
            (Some(secret), _) => (Signer::hs256(secret), Vec::new()),
            (None, Some(file)) => {
                Signer::from_file(file, c.kid.clone(), &[Algorithm::ES256, Algorithm::RS256])
                    .map_err(|m| ConfigError::key(format!("{path}.signing_key"), m))?
            }
            (None, None) => return Err(ConfigError::key(format!("{path}.jwt_secret"), "missing")),
        };
        let namespace = uuid::Uuid::parse_str(&c.uuid_namespace)
            .map_err(|_| ConfigError::key(format!("{path}.uuid_namespace"), "not a UUID"))?;
        let connector = Supabase {
            name: name.to_string(),
            clock,
            signer,
            role: c.role.clone(),
            allowed_roles: c.allowed_roles.clone(),
            audience: c.audience.clone(),
            expires_in: c.expires_in.0,
            issuer: c.issuer.clone(),
            sub_mode: c.sub_mode,
            namespace,
            claims: c.claims.clone(),
        };
        Ok((connector, loaded))
    }

    /// The `sub` for a Descope user id.
    fn subject(&self, descope_id: &str) -> String {
        match self.sub_mode {
            SubMode::Uuid => uuid::Uuid::new_v5(&self.namespace, descope_id.as_bytes()).to_string(),
            SubMode::Descope => descope_id.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Mint for Supabase {
    /// Refuses (403) a session whose mapped `role` is not one of `allowed_roles`: a session must
    /// not be able to name `service_role` or `supabase_admin` and get an admin token. Refused
    /// here, before the cache: nothing is minted or remembered for it.
    fn inputs(&self, s: &VerifiedSession, _req: RequestInfo<'_>) -> Result<Value, ExchangeError> {
        let uid = user_id(s)?;
        let mapped = mapped(&s.claims, &self.claims);
        if let Some(role) = mapped.get("role") {
            let allowed = role
                .as_str()
                .is_some_and(|r| self.allowed_roles.iter().any(|a| a == r));
            if !allowed {
                return Err(ExchangeError::Forbidden {
                    connector: self.name.clone(),
                    rule: "role".into(),
                });
            }
        }
        Ok(json!({
            "uid": uid,
            "email": s.claims.get("email"),
            "phone": s.claims.get("phone"),
            "mapped": mapped,
        }))
    }
    fn claims_read(&self, kept: &mut ClaimsKept) {
        super::identity::claims_read(kept, &self.claims);
        kept.read("email");
        kept.read("phone");
    }

    async fn mint(&self, inputs: &Value) -> Result<Minted, ExchangeError> {
        let uid = inputs["uid"].as_str().unwrap_or_default();
        let now = self.clock.unix();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(extra: &str) -> Supabase {
        let cfg: SupabaseConfig = serde_yaml::from_str(&format!(
            "{{jwt_secret: s, claims: {{role: app_role}}{extra}}}"
        ))
        .unwrap();
        Supabase::build("sb", "connectors.sb", &cfg, crate::clock::system())
            .unwrap()
            .0
    }

    fn inputs(c: &Supabase, app_role: Option<Value>) -> Result<Value, ExchangeError> {
        let mut claims = Map::new();
        claims.insert("sub".into(), "U2x".into());
        if let Some(r) = app_role {
            claims.insert("app_role".into(), r);
        }
        let s = VerifiedSession::for_test(claims);
        let req = RequestInfo {
            session_token: "",
            route: "r",
            method: "GET",
            path: "/",
            query: b"",
        };
        c.inputs(&s, req)
    }

    #[test]
    fn mapped_role_must_be_allowed() {
        let c = connector("");
        let forbidden = ExchangeError::Forbidden {
            connector: "sb".into(),
            rule: "role".into(),
        };
        let refused = Err(forbidden.clone());
        for bad in [
            json!("service_role"),
            json!("supabase_admin"),
            json!(["authenticated"]),
            json!({"x": "authenticated"}),
            json!(null),
            json!("Authenticated"),
        ] {
            assert_eq!(inputs(&c, Some(bad.clone())), refused, "{bad}");
        }
        for good in ["authenticated", "anon"] {
            let i = inputs(&c, Some(json!(good))).unwrap();
            assert_eq!(i["mapped"]["role"], good);
        }
        // No such claim in the session: the static role applies.
        assert!(inputs(&c, None).unwrap()["mapped"].get("role").is_none());
        // A configured list replaces the default.
        let c = connector(", role: staff, allowed_roles: [staff, auditor]");
        assert!(inputs(&c, Some(json!("auditor"))).is_ok());
        assert_eq!(inputs(&c, Some(json!("authenticated"))), refused);
        assert_eq!(forbidden.to_string(), "role is not allowed by connector sb");
    }
}
