//! `type: token_exchange`: the token endpoint, how the gateway authenticates to it as an OAuth
//! client, the RFC 8693 parameters it sends, and what the subject token is. Checked without I/O
//! here; the one check that needs the other connectors (`subject.external_token` names an
//! existing connector, without a cycle) is [`check_subjects`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, Dur, OneOrMany};
use crate::exchange::settings::{check_url, positive, Settings};

/// RFC 8693 §3 token type of an OAuth 2.0 access token (the default `requested_token_type`).
pub(crate) const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 §3 token type of a JWT (the Descope session as subject token).
pub(crate) const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// How the gateway authenticates to the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ClientAuth {
    /// `Authorization: Basic` of the form-encoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic {
        client_id: String,
        client_secret: String,
    },
    /// `client_id` and `client_secret` in the request body.
    ClientSecretPost {
        client_id: String,
        client_secret: String,
    },
    /// A JWT client assertion signed with `key_file` (iss = sub = client_id, aud = token_url).
    PrivateKeyJwt {
        client_id: String,
        key_file: PathBuf,
        #[serde(default)]
        alg: AssertionAlg,
        kid: Option<String>,
    },
}

impl ClientAuth {
    pub(super) fn client_id(&self) -> &str {
        match self {
            ClientAuth::ClientSecretBasic { client_id, .. }
            | ClientAuth::ClientSecretPost { client_id, .. }
            | ClientAuth::PrivateKeyJwt { client_id, .. } => client_id,
        }
    }
}

/// The algorithm of a `private_key_jwt` client assertion.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub(crate) enum AssertionAlg {
    #[default]
    RS256,
    ES256,
    EdDSA,
}

/// What is exchanged.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Subject {
    /// The Descope session JWT the request came with.
    #[default]
    Session,
    /// The token another connector makes for this session.
    ExternalToken(String),
}

/// `type: token_exchange`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenExchangeConfig {
    pub(super) token_url: String,
    pub(super) client_auth: ClientAuth,
    pub(super) audience: Option<OneOrMany>,
    pub(super) resource: Option<OneOrMany>,
    pub(super) scope: Option<OneOrMany>,
    #[serde(default = "d_requested")]
    pub(super) requested_token_type: String,
    #[serde(default)]
    pub(super) subject: Subject,
    /// Defaults by subject: the session is a `jwt`, another connector's token an `access_token`.
    pub(super) subject_token_type: Option<String>,
    #[serde(default = "d_timeout")]
    pub(super) timeout: Dur,
    /// Lifetime of a token whose reply has no `expires_in` and that is not a JWT with `exp`.
    pub(super) default_lifetime: Option<Dur>,
    /// Opt-in per-user reuse: session claims (dotted paths) that, with the user id, key the cache
    /// instead of the subject token's digest. Absent: one exchange per subject token, so the
    /// provider decides for each session (RFC 8693 §2.1: it is the decision point).
    pub(super) cache_key: Option<Vec<String>>,
}

fn d_requested() -> String {
    ACCESS_TOKEN_TYPE.into()
}
fn d_timeout() -> Dur {
    Dur::secs(5)
}

impl TokenExchangeConfig {
    pub(super) fn subject_token_type(&self) -> &str {
        match (&self.subject_token_type, &self.subject) {
            (Some(t), _) => t,
            (None, Subject::Session) => JWT_TYPE,
            (None, Subject::ExternalToken(_)) => ACCESS_TOKEN_TYPE,
        }
    }

    /// The connector whose token is the subject, if not the session.
    pub(crate) fn subject_connector(&self) -> Option<&str> {
        match &self.subject {
            Subject::Session => None,
            Subject::ExternalToken(n) => Some(n),
        }
    }
}

impl Settings for TokenExchangeConfig {
    /// One call, no retries (a subject from another connector is obtained before this mint
    /// starts, so its time is not part of it).
    fn worst_case(&self) -> std::time::Duration {
        self.timeout.0
    }
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        check_url(format!("{path}.token_url"), &self.token_url)?;
        self.client_auth.validate(path)?;
        self.validate_parameters(path)?;
        positive(format!("{path}.timeout"), self.timeout)?;
        if let Some(d) = self.default_lifetime {
            positive(format!("{path}.default_lifetime"), d)?;
        }
        if let Some(claims) = &self.cache_key {
            check_cache_key(&format!("{path}.cache_key"), claims)?;
        }
        Ok(())
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        match &mut self.client_auth {
            ClientAuth::PrivateKeyJwt { key_file, .. } => vec![key_file],
            _ => Vec::new(),
        }
    }
}

impl ClientAuth {
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let auth = match self {
            ClientAuth::ClientSecretBasic { .. } => "client_secret_basic",
            ClientAuth::ClientSecretPost { .. } => "client_secret_post",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
        };
        if self.client_id().is_empty() {
            return Err(ConfigError::key(
                format!("{path}.client_auth.{auth}.client_id"),
                "must not be empty",
            ));
        }
        if let ClientAuth::ClientSecretBasic { client_secret, .. }
        | ClientAuth::ClientSecretPost { client_secret, .. } = self
        {
            if client_secret.is_empty() {
                return Err(ConfigError::key(
                    format!("{path}.client_auth.{auth}.client_secret"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

impl TokenExchangeConfig {
    /// `audience`, `resource`, `scope` and the token types, as RFC 8693 and RFC 6749 allow them.
    fn validate_parameters(&self, path: &str) -> Result<(), ConfigError> {
        for (i, a) in list(&self.audience).iter().enumerate() {
            if a.is_empty() {
                return Err(ConfigError::key(
                    format!("{path}.audience[{i}]"),
                    "must not be empty",
                ));
            }
        }
        for (i, r) in list(&self.resource).iter().enumerate() {
            if !absolute_uri(r) {
                return Err(ConfigError::key(
                    format!("{path}.resource[{i}]"),
                    format!("{r:?} is not an absolute URI without a fragment (RFC 8693 2.1)"),
                ));
            }
        }
        for (i, s) in list(&self.scope).iter().enumerate() {
            // RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            let ok = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
            if s.is_empty() || !s.bytes().all(ok) {
                return Err(ConfigError::key(
                    format!("{path}.scope[{i}]"),
                    format!(
                        "{s:?} is not an RFC 6749 scope token (no spaces, quotes or backslashes)"
                    ),
                ));
            }
        }
        for (key, t) in [
            ("requested_token_type", Some(&self.requested_token_type)),
            ("subject_token_type", self.subject_token_type.as_ref()),
        ] {
            if t.is_some_and(|t| !absolute_uri(t)) {
                return Err(ConfigError::key(
                    format!("{path}.{key}"),
                    "must be a token type URI (e.g. urn:ietf:params:oauth:token-type:access_token)",
                ));
            }
        }
        Ok(())
    }
}

/// `cache_key`: at least one claim, each a dotted path outside `nsec` (claims the client sets
/// itself: never a reason to hand one session another's token).
fn check_cache_key(key: &str, claims: &[String]) -> Result<(), ConfigError> {
    if claims.is_empty() {
        return Err(ConfigError::key(
            key,
            "name at least one session claim, or leave cache_key out (one exchange per session)",
        ));
    }
    for (i, c) in claims.iter().enumerate() {
        let k = format!("{key}[{i}]");
        if c.split('.').any(str::is_empty) {
            return Err(ConfigError::key(
                k,
                format!("{c:?} is not a dotted claim path"),
            ));
        }
        if c.split('.').next() == Some("nsec") {
            return Err(ConfigError::key(
                k,
                "nsec holds claims set by the client: never a basis for reusing a token",
            ));
        }
    }
    Ok(())
}

pub(super) fn list(v: &Option<OneOrMany>) -> Vec<String> {
    v.as_ref().map(OneOrMany::to_vec).unwrap_or_default()
}

/// `scheme:rest` with an RFC 3986 scheme, no fragment, no whitespace.
fn absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut sb = scheme.bytes();
    sb.next().is_some_and(|b| b.is_ascii_alphabetic())
        && sb.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && !s.contains('#')
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Every `subject: {external_token: <name>}` names another, existing connector, and following
/// them never comes back to where it started. The error names the key of the connector that
/// starts the broken chain.
/// `subjects` maps each connector's name to the connector whose token it exchanges, if any.
pub(crate) fn check_subjects(subjects: &BTreeMap<&str, Option<&str>>) -> Result<(), ConfigError> {
    let next = |name: &str| subjects.get(name).copied().flatten();
    for (&name, &subject) in subjects {
        let Some(first) = subject else {
            continue;
        };
        let key = format!("connectors.{name}.subject.external_token");
        if first == name {
            return Err(ConfigError::key(
                key,
                "a connector cannot exchange its own token",
            ));
        }
        if !subjects.contains_key(first) {
            return Err(ConfigError::key(
                key,
                format!("no connector named {first:?}"),
            ));
        }
        let mut seen = vec![name];
        let mut cur = first;
        while let Some(n) = next(cur) {
            seen.push(cur);
            if seen.contains(&n) {
                seen.push(n);
                return Err(ConfigError::key(
                    key,
                    format!("subjects form a cycle: {}", seen.join(" -> ")),
                ));
            }
            cur = n;
        }
    }
    Ok(())
}
