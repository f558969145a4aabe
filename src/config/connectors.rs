//! Connector settings: how each connector type is configured, and the checks that need no I/O.
//! (Reading key files and service accounts happens when the connectors are built, in
//! `crate::exchange`, with errors that name the same key paths.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, Dur, OneOrMany};

/// A connector produces the external token for a verified session.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConnectorConfig {
    /// The external token is a claim of the session JWT (Descope put it there at the end of the flow).
    Claim(ClaimConnectorConfig),
    /// A Supabase access token signed with the project's JWT secret or signing key.
    Supabase(SupabaseConfig),
    /// A Firebase custom token, or the ID token it is exchanged for.
    Firebase(FirebaseConfig),
    /// A token fetched from an HTTP endpoint (Descope's "Generic HTTP" connector contract).
    Http(HttpConnectorConfig),
    /// A JWT signed by the gateway's own key, for in-house formats.
    Jwt(JwtConnectorConfig),
}

impl ConnectorConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            ConnectorConfig::Claim(_) => "claim",
            ConnectorConfig::Supabase(_) => "supabase",
            ConnectorConfig::Firebase(_) => "firebase",
            ConnectorConfig::Http(_) => "http",
            ConnectorConfig::Jwt(_) => "jwt",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimConnectorConfig {
    #[serde(default = "d_claim")]
    pub claim: String,
}

fn d_claim() -> String {
    "externalToken".into()
}

/// Target claim (dotted path) → session claim (dotted path).
pub type ClaimMap = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubMode {
    /// `sub` = UUIDv5(namespace, Descope user id): what `auth.uid()` can cast.
    #[default]
    Uuid,
    /// `sub` = the Descope user id itself.
    Descope,
}

/// The default `uuid_namespace`: uuid5(NAMESPACE_URL, "https://github.com/extoken/extoken#descope-user-id").
pub const DEFAULT_UUID_NAMESPACE: &str = "dbd8928c-bb64-505a-830f-43f6b6e8fabd";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupabaseConfig {
    pub jwt_secret: Option<String>,
    pub signing_key: Option<PathBuf>,
    pub kid: Option<String>,
    #[serde(default = "d_authenticated")]
    pub role: String,
    /// The roles a token may carry: the static `role`, and any role a `claims:` mapping takes
    /// from the session (a session naming another role is refused, 403).
    #[serde(default = "d_allowed_roles")]
    pub allowed_roles: Vec<String>,
    #[serde(default = "d_authenticated")]
    pub audience: String,
    #[serde(default = "d_hour")]
    pub expires_in: Dur,
    pub issuer: Option<String>,
    #[serde(default)]
    pub sub_mode: SubMode,
    #[serde(default = "d_namespace")]
    pub uuid_namespace: String,
    #[serde(default)]
    pub claims: ClaimMap,
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

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FirebaseMode {
    #[default]
    CustomToken,
    IdToken,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirebaseConfig {
    pub service_account_file: Option<PathBuf>,
    pub service_account_json: Option<String>,
    #[serde(default)]
    pub mode: FirebaseMode,
    pub api_key: Option<String>,
    #[serde(default = "d_toolkit")]
    pub identity_toolkit_url: String,
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub claims: ClaimMap,
    #[serde(default = "d_connector_timeout")]
    pub timeout: Dur,
}

fn d_toolkit() -> String {
    "https://identitytoolkit.googleapis.com".into()
}
fn d_connector_timeout() -> Dur {
    Dur::secs(2)
}

/// How the HTTP connector authenticates to its endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectorConfig {
    pub url: String,
    pub auth: Option<HttpAuth>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub hmac_secret: Option<String>,
    #[serde(default = "d_token_field")]
    pub token_field: String,
    #[serde(default = "d_connector_timeout")]
    pub timeout: Dur,
    #[serde(default = "d_retries")]
    pub retries: u32,
    /// Lifetime when the reply has neither `expires_in` nor a JWT `exp`.
    pub ttl: Option<Dur>,
}

fn d_token_field() -> String {
    "token".into()
}
fn d_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum JwtAlgorithm {
    #[default]
    RS256,
    ES256,
    EdDSA,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConnectorConfig {
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    pub key_file: PathBuf,
    pub kid: Option<String>,
    pub issuer: String,
    pub audience: Option<OneOrMany>,
    #[serde(default = "d_quarter")]
    pub expires_in: Dur,
    #[serde(default)]
    pub claims: ClaimMap,
}

fn d_quarter() -> Dur {
    Dur::secs(900)
}

/// Claims a mapping may not set: the connector owns them.
const JWT_RESERVED: &[&str] = &["sub", "exp", "iat", "nbf", "iss", "aud"];
/// Names Firebase forbids inside a custom token's `claims`.
pub const FIREBASE_RESERVED: &[&str] = &[
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

fn check_claim_map(path: &str, m: &ClaimMap, reserved: &[&str]) -> Result<(), ConfigError> {
    for (target, source) in m {
        let key = format!("{path}.claims.{target}");
        let top = target.split('.').next().unwrap_or_default();
        if target.is_empty() || target.split('.').any(str::is_empty) {
            return Err(ConfigError::key(key, "invalid claim path"));
        }
        if reserved.contains(&top) {
            return Err(ConfigError::key(
                key,
                format!("{top:?} is set by the connector and cannot be mapped"),
            ));
        }
        if source.is_empty() || source.split('.').any(str::is_empty) {
            return Err(ConfigError::key(key, "invalid session claim path"));
        }
    }
    Ok(())
}

fn check_url(key: String, u: &str) -> Result<(), ConfigError> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::key(
            key,
            format!("{u:?} is not an http(s) URL"),
        ))
    }
}

/// Two keys of which exactly one must be set; the error names the key to act on.
fn exactly_one(
    path: &str,
    (a, a_set): (&str, bool),
    (b, b_set): (&str, bool),
    hint: &str,
) -> Result<(), ConfigError> {
    match (a_set, b_set) {
        (false, false) => Err(ConfigError::key(
            format!("{path}.{a}"),
            format!("set {a} or {b}{hint}"),
        )),
        (true, true) => Err(ConfigError::key(
            format!("{path}.{b}"),
            format!("{a} and {b} are exclusive: set one"),
        )),
        _ => Ok(()),
    }
}

fn positive(key: String, d: Dur) -> Result<(), ConfigError> {
    if d.0.is_zero() {
        Err(ConfigError::key(key, "must be more than 0"))
    } else {
        Ok(())
    }
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

impl ConnectorConfig {
    /// Checks that need no file or network access.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        match self {
            ConnectorConfig::Claim(c) => {
                if c.claim.is_empty() {
                    return Err(ConfigError::key(
                        format!("{path}.claim"),
                        "must not be empty",
                    ));
                }
            }
            ConnectorConfig::Supabase(c) => {
                exactly_one(
                    path,
                    ("jwt_secret", c.jwt_secret.is_some()),
                    ("signing_key", c.signing_key.is_some()),
                    " (HS256 secret, or an ES256/RS256 key file)",
                )?;
                if c.jwt_secret.as_deref() == Some("") {
                    return Err(ConfigError::key(
                        format!("{path}.jwt_secret"),
                        "must not be empty",
                    ));
                }
                if !c.allowed_roles.contains(&c.role) {
                    return Err(ConfigError::key(
                        format!("{path}.role"),
                        format!("{:?} is not in allowed_roles {:?}", c.role, c.allowed_roles),
                    ));
                }
                if uuid::Uuid::parse_str(&c.uuid_namespace).is_err() {
                    return Err(ConfigError::key(
                        format!("{path}.uuid_namespace"),
                        "not a UUID",
                    ));
                }
                positive(format!("{path}.expires_in"), c.expires_in)?;
                check_claim_map(path, &c.claims, JWT_RESERVED)?;
            }
            ConnectorConfig::Firebase(c) => {
                exactly_one(
                    path,
                    ("service_account_file", c.service_account_file.is_some()),
                    ("service_account_json", c.service_account_json.is_some()),
                    "",
                )?;
                if c.mode == FirebaseMode::IdToken && c.api_key.as_deref().unwrap_or("").is_empty()
                {
                    return Err(ConfigError::key(
                        format!("{path}.api_key"),
                        "required when mode is id_token",
                    ));
                }
                check_url(
                    format!("{path}.identity_toolkit_url"),
                    &c.identity_toolkit_url,
                )?;
                check_claim_map(path, &c.claims, FIREBASE_RESERVED)?;
            }
            ConnectorConfig::Http(c) => {
                check_url(format!("{path}.url"), &c.url)?;
                if c.token_field.is_empty() {
                    return Err(ConfigError::key(
                        format!("{path}.token_field"),
                        "must not be empty",
                    ));
                }
                positive(format!("{path}.timeout"), c.timeout)?;
                for name in c.headers.keys() {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(ConfigError::key(
                            format!("{path}.headers.{name}"),
                            "not a header name",
                        ));
                    }
                }
                match &c.auth {
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
                if let Some(t) = c.ttl {
                    positive(format!("{path}.ttl"), t)?;
                }
            }
            ConnectorConfig::Jwt(c) => {
                positive(format!("{path}.expires_in"), c.expires_in)?;
                if c.issuer.is_empty() {
                    return Err(ConfigError::key(
                        format!("{path}.issuer"),
                        "must not be empty",
                    ));
                }
                check_claim_map(path, &c.claims, JWT_RESERVED)?;
            }
        }
        Ok(())
    }

    /// The settings as text for the connector cache's fingerprint, without the file paths: what a
    /// connector mints with is the files' contents (hashed separately, as loaded), not where they
    /// lie. Holds secrets: only ever hashed, never logged.
    pub fn settings_without_paths(&self) -> String {
        let mut c = self.clone();
        match &mut c {
            ConnectorConfig::Supabase(s) => {
                if let Some(p) = &mut s.signing_key {
                    *p = PathBuf::new();
                }
            }
            ConnectorConfig::Firebase(f) => {
                if let Some(p) = &mut f.service_account_file {
                    *p = PathBuf::new();
                }
            }
            ConnectorConfig::Jwt(j) => j.key_file = PathBuf::new(),
            ConnectorConfig::Claim(_) | ConnectorConfig::Http(_) => {}
        }
        format!("{c:?}")
    }

    /// Key files are relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        match self {
            ConnectorConfig::Supabase(c) => {
                if let Some(p) = &mut c.signing_key {
                    resolve(base, p)
                }
            }
            ConnectorConfig::Firebase(c) => {
                if let Some(p) = &mut c.service_account_file {
                    resolve(base, p)
                }
            }
            ConnectorConfig::Jwt(c) => resolve(base, &mut c.key_file),
            ConnectorConfig::Claim(_) | ConnectorConfig::Http(_) => {}
        }
    }
}
