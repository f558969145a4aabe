//! The `firebase` connector: a custom token identical in shape to
//! `firebase_admin.auth.create_custom_token(uid, claims)`, optionally exchanged for the ID token a
//! Firebase-backed API verifies (`accounts:signInWithCustomToken`).
//!
//! The web API key rides in the exchange URL's query string, so errors are reported with
//! `without_url()` and never with the URL.

use crate::telemetry::trace;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::identity::{check_claim_map, mapped, user_id, ClaimMap};
use super::settings::{check_url, exactly_one, Settings};
use super::signing::Signer;
use super::{ExchangeError, ExternalToken, Mint, Minted, RequestInfo, MAX_REPLY_BYTES};
use crate::bounded::read_body;
use crate::clock::SharedClock;
use crate::config::{ConfigError, Dur};
use crate::verify::{ClaimsKept, VerifiedSession};

pub const FIREBASE_AUDIENCE: &str =
    "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit";
/// Custom tokens live one hour at most (Firebase's limit).
const CUSTOM_TOKEN_TTL: u64 = 3600;

/// Names Firebase forbids inside a custom token's `claims`.
const FIREBASE_RESERVED: &[&str] = &[
    "acr",
    "amr",
    "at_hash",
    "aud",
    "auth_time",
    "azp",
    "cnf",
    "c_hash",
    "exp",
    "firebase",
    "iat",
    "iss",
    "jti",
    "nbf",
    "nonce",
    "sub",
];

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FirebaseMode {
    #[default]
    CustomToken,
    IdToken,
}

/// `type: firebase`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FirebaseConfig {
    service_account_file: Option<PathBuf>,
    service_account_json: Option<String>,
    #[serde(default)]
    mode: FirebaseMode,
    api_key: Option<String>,
    #[serde(default = "d_toolkit")]
    identity_toolkit_url: String,
    tenant_id: Option<String>,
    #[serde(default)]
    claims: ClaimMap,
    #[serde(default = "d_timeout")]
    timeout: Dur,
}

fn d_toolkit() -> String {
    "https://identitytoolkit.googleapis.com".into()
}
fn d_timeout() -> Dur {
    Dur::secs(2)
}

impl Settings for FirebaseConfig {
    /// A custom token is signed locally; `id_token` adds one exchange call (not retried).
    fn worst_case(&self) -> Duration {
        match self.mode {
            FirebaseMode::CustomToken => Duration::ZERO,
            FirebaseMode::IdToken => self.timeout.0,
        }
    }
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        exactly_one(
            path,
            ("service_account_file", self.service_account_file.is_some()),
            ("service_account_json", self.service_account_json.is_some()),
            "",
        )?;
        if self.mode == FirebaseMode::IdToken && self.api_key.as_deref().unwrap_or("").is_empty() {
            return Err(ConfigError::key(
                format!("{path}.api_key"),
                "required when mode is id_token",
            ));
        }
        check_url(
            format!("{path}.identity_toolkit_url"),
            &self.identity_toolkit_url,
        )?;
        check_claim_map(path, &self.claims, FIREBASE_RESERVED)
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        self.service_account_file.iter_mut().collect()
    }
}

#[derive(serde::Deserialize)]
struct ServiceAccount {
    private_key_id: String,
    private_key: String,
    client_email: String,
}

pub(crate) struct Firebase {
    name: String,
    clock: SharedClock,
    signer: Signer,
    client_email: String,
    mode: FirebaseMode,
    exchange_url: String,
    tenant_id: Option<String>,
    claims: ClaimMap,
    client: reqwest::Client,
    timeout: Duration,
}

impl Firebase {
    /// The connector, and the bytes of its `service_account_file` if it has one (for the cache
    /// fingerprint; a `service_account_json` is in the settings already).
    pub(crate) fn build(
        name: &str,
        path: &str,
        c: &FirebaseConfig,
        client: reqwest::Client,
        clock: SharedClock,
    ) -> Result<(Firebase, Vec<u8>), ConfigError> {
        let (key, text, from_file) = match (&c.service_account_file, &c.service_account_json) {
            (Some(f), _) => (
                format!("{path}.service_account_file"),
                std::fs::read_to_string(f).map_err(|e| {
                    ConfigError::key(
                        format!("{path}.service_account_file"),
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?,
                true,
            ),
            (None, Some(j)) => (format!("{path}.service_account_json"), j.clone(), false),
            (None, None) => {
                return Err(ConfigError::key(
                    format!("{path}.service_account_file"),
                    "missing",
                ))
            }
        };
        let sa: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| ConfigError::key(key.clone(), format!("not a service account JSON (need private_key_id, private_key, client_email): {}", e.classify_msg())))?;
        let signer = Signer::rsa_pem(&sa.private_key, Some(sa.private_key_id.clone()))
            .map_err(|m| ConfigError::key(key, format!("private_key: {m}")))?;
        let base = c.identity_toolkit_url.trim_end_matches('/');
        let api_key = c.api_key.clone().unwrap_or_default();
        let connector = Firebase {
            name: name.to_string(),
            clock,
            signer,
            client_email: sa.client_email,
            mode: c.mode,
            exchange_url: format!("{base}/v1/accounts:signInWithCustomToken?key={api_key}"),
            tenant_id: c.tenant_id.clone(),
            claims: c.claims.clone(),
            client,
            timeout: c.timeout.0,
        };
        Ok((
            connector,
            if from_file {
                text.into_bytes()
            } else {
                Vec::new()
            },
        ))
    }

    /// The custom token for `uid` with developer `claims` (omitted when empty, as firebase-admin does).
    fn custom_token(
        &self,
        uid: &str,
        claims: &Map<String, Value>,
    ) -> Result<String, ExchangeError> {
        let iat = self.clock.unix();
        let mut c = Map::new();
        c.insert("iss".into(), self.client_email.clone().into());
        c.insert("sub".into(), self.client_email.clone().into());
        c.insert("aud".into(), FIREBASE_AUDIENCE.into());
        c.insert("uid".into(), uid.into());
        c.insert("iat".into(), iat.into());
        c.insert("exp".into(), (iat + CUSTOM_TOKEN_TTL).into());
        if !claims.is_empty() {
            c.insert("claims".into(), Value::Object(claims.clone()));
        }
        if let Some(t) = &self.tenant_id {
            c.insert("tenant_id".into(), t.clone().into());
        }
        self.signer
            .sign(&c)
            .map_err(|e| ExchangeError::unavailable(&self.name, e))
    }

    async fn exchange(&self, custom: &str) -> Result<Minted, ExchangeError> {
        let mut body = json!({ "token": custom, "returnSecureToken": true });
        if let Some(t) = &self.tenant_id {
            body["tenantId"] = t.clone().into();
        }
        let fail = |m: String| ExchangeError::unavailable(&self.name, m);
        let req = self
            .client
            .post(&self.exchange_url)
            .timeout(self.timeout)
            .json(&body);
        let resp = trace::send("connector firebase", "POST", &self.exchange_url, req)
            .await
            .map_err(|e| fail(format!("signInWithCustomToken: {}", e.without_url())))?;
        let status = resp.status();
        // Bounded, and read before the status check: an error reply carries its message.
        let body = read_body(resp, MAX_REPLY_BYTES)
            .await
            .map_err(|e| fail(format!("signInWithCustomToken {e}")))?;
        let reply = serde_json::from_slice::<Value>(&body).ok();
        if !status.is_success() {
            // Google's error JSON names the cause (INVALID_CUSTOM_TOKEN, ...); a proxy's HTML does not.
            let msg = reply
                .as_ref()
                .and_then(|r| r["error"]["message"].as_str())
                .unwrap_or("no message");
            return Err(fail(format!(
                "signInWithCustomToken answered {status}: {msg}"
            )));
        }
        let reply = reply.ok_or_else(|| fail("signInWithCustomToken reply is not JSON".into()))?;
        let id_token = reply["idToken"]
            .as_str()
            .ok_or_else(|| fail("reply has no idToken".into()))?;
        let expires_in = match &reply["expiresIn"] {
            Value::String(s) => s.parse::<u64>().ok(),
            v => v.as_u64(),
        }
        .unwrap_or(CUSTOM_TOKEN_TTL);
        Ok(Minted {
            token: ExternalToken::new(id_token)
                .ok_or_else(|| fail("idToken is not visible ASCII".into()))?,
            lifetime: Duration::from_secs(expires_in),
        })
    }
}

#[async_trait::async_trait]
impl Mint for Firebase {
    fn inputs(&self, s: &VerifiedSession, _req: RequestInfo<'_>) -> Result<Value, ExchangeError> {
        let uid = user_id(s)?;
        if uid.chars().count() > 128 {
            return Err(ExchangeError::InvalidClaim {
                claim: "sub".into(),
            });
        }
        Ok(json!({ "uid": uid, "claims": mapped(&s.claims, &self.claims) }))
    }
    fn claims_read(&self, kept: &mut ClaimsKept) {
        super::identity::claims_read(kept, &self.claims);
    }

    async fn mint(&self, inputs: &Value) -> Result<Minted, ExchangeError> {
        let uid = inputs["uid"].as_str().unwrap_or_default();
        let empty = Map::new();
        let claims = inputs["claims"].as_object().unwrap_or(&empty);
        let custom = self.custom_token(uid, claims)?;
        match self.mode {
            FirebaseMode::CustomToken => Ok(Minted {
                token: ExternalToken::new(custom)
                    .ok_or_else(|| ExchangeError::unavailable(&self.name, "not ASCII"))?,
                lifetime: Duration::from_secs(CUSTOM_TOKEN_TTL),
            }),
            FirebaseMode::IdToken => self.exchange(&custom).await,
        }
    }
}

trait ClassifyMsg {
    fn classify_msg(&self) -> String;
}
impl ClassifyMsg for serde_json::Error {
    /// serde_json's message without the offending text (it could be part of a private key).
    fn classify_msg(&self) -> String {
        let msg = self.to_string();
        if msg.starts_with("missing field") {
            return msg;
        }
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}
