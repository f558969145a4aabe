//! Step 3 of the request path: obtain the external token for a verified session.
//!
//! Two kinds of connector: `claim` reads the token Descope already put in the session (no cache,
//! nothing to mint); the minting connectors (`supabase`, `firebase`, `http`, `jwt`) implement
//! [`Mint`] and are called through the [`TokenCache`], which coalesces concurrent misses and
//! refreshes ahead of expiry. An [`ExternalToken`] can only be built from visible ASCII, so
//! whatever reaches a header is a valid, single-line header value.

mod cache;
mod claim;
mod firebase;
mod http;
mod identity;
mod jwt;
mod signing;
mod supabase;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use cache::{CacheKey, Lookup, TokenCache};
pub use claim::ClaimConnector;
pub use firebase::{Firebase, FIREBASE_AUDIENCE};
pub use http::HttpConnector;
pub use identity::{lookup, mapped};
pub use jwt::JwtConnector;
pub use signing::Signer;
pub use supabase::Supabase;

use crate::config::{Config, ConfigError, ConnectorConfig};
use crate::verify::VerifiedSession;

/// A token for the legacy backend. Never printed: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalToken(Arc<str>);

impl ExternalToken {
    /// Accepts only visible ASCII (0x21..=0x7E): no spaces, controls, CR/LF or non-ASCII.
    /// Takes `&str` or `String`: either way the bytes are copied once, into the shared `Arc`.
    pub fn new(s: impl AsRef<str>) -> Option<ExternalToken> {
        let s = s.as_ref();
        (!s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .then(|| ExternalToken(Arc::from(s)))
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

/// A freshly made token and how long it is good for.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: ExternalToken,
    pub lifetime: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The session lacks what the connector needs (a 401: the client must log in again).
    #[error("session has no usable {claim} claim")]
    MissingClaim { claim: String },
    /// The session's claim exists but cannot be used (not a header-safe token, too long, ...).
    #[error("session's {claim} claim is not usable")]
    InvalidClaim { claim: String },
    /// The connector refuses this session (a 403): what the session asks for breaks a rule of the
    /// connector's config. `rule` names what was refused (e.g. `role`), never the session's value.
    #[error("{rule} is not allowed by connector {connector}")]
    Forbidden { connector: String, rule: String },
    /// The connector could not produce a token now (a 503: retry later). `reason` is for logs.
    #[error("connector {connector} is unavailable: {reason}")]
    Unavailable { connector: String, reason: String },
}

impl ExchangeError {
    pub fn unavailable(connector: &str, reason: impl Into<String>) -> ExchangeError {
        ExchangeError::Unavailable {
            connector: connector.to_string(),
            reason: reason.into(),
        }
    }
}

/// What a connector knows about the request besides the session (the `http` connector sends it).
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
}

/// A connector that makes tokens. `inputs` extracts from the session exactly what the token will
/// depend on; `mint` works from those inputs only, so the cache key (a hash of them) is exact.
#[async_trait::async_trait]
pub trait Mint: Send + Sync {
    fn inputs(
        &self,
        session: &VerifiedSession,
        req: RequestInfo<'_>,
    ) -> Result<serde_json::Value, ExchangeError>;
    /// The part of the inputs that keys the cache (all of it unless a connector says otherwise).
    fn cache_inputs(&self, inputs: &serde_json::Value) -> serde_json::Value {
        inputs.clone()
    }
    async fn mint(&self, inputs: &serde_json::Value) -> Result<Minted, ExchangeError>;
    /// The public key of a connector that signs with its own key, to publish in a JWKS.
    fn public_jwk(&self) -> Option<jsonwebtoken::jwk::Jwk> {
        None
    }
}

enum Kind {
    Claim(ClaimConnector),
    Minting(Arc<dyn Mint>),
}

/// Counts and times every connector call (`extoken_connector_calls_total`,
/// `extoken_connector_duration_seconds`), wherever the cache makes it from.
struct Instrumented {
    name: String,
    inner: Arc<dyn Mint>,
}

#[async_trait::async_trait]
impl Mint for Instrumented {
    fn inputs(
        &self,
        s: &VerifiedSession,
        req: RequestInfo<'_>,
    ) -> Result<serde_json::Value, ExchangeError> {
        self.inner.inputs(s, req)
    }
    fn cache_inputs(&self, inputs: &serde_json::Value) -> serde_json::Value {
        self.inner.cache_inputs(inputs)
    }
    async fn mint(&self, inputs: &serde_json::Value) -> Result<Minted, ExchangeError> {
        let m = crate::metrics::metrics();
        let start = std::time::Instant::now();
        let result = self.inner.mint(inputs).await;
        m.connector_duration_seconds
            .with_label_values(&[self.name.as_str()])
            .observe(start.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        m.connector_calls_total
            .with_label_values(&[self.name.as_str(), outcome])
            .inc();
        result
    }
    fn public_jwk(&self) -> Option<jsonwebtoken::jwk::Jwk> {
        self.inner.public_jwk()
    }
}

struct Named {
    name: Arc<str>,
    kind: Kind,
    /// The connector's [`fingerprint`]: part of every cache key, so a token minted under other
    /// settings or another key is never served.
    settings: [u8; 32],
}

impl Named {
    fn new(name: &str, kind: Kind, cfg: &ConnectorConfig, loaded: &[u8]) -> Named {
        Named {
            name: name.into(),
            kind,
            settings: fingerprint(cfg, loaded),
        }
    }
}

/// SHA-256 of what a connector mints with: its settings (secrets included, so only ever hashed)
/// without file paths, and the bytes of the files it loaded (key files, service accounts), as the
/// builder read them. A key file replaced in place changes it; the same key at another path does
/// not.
fn fingerprint(cfg: &ConnectorConfig, loaded: &[u8]) -> [u8; 32] {
    let settings = cfg.settings_without_paths();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [settings.as_bytes(), loaded] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The token a request gets, and the cache key to forget it by if the upstream refuses it.
#[derive(Debug, Clone)]
pub struct Obtained {
    pub token: ExternalToken,
    pub cache_key: Option<CacheKey>,
}

/// The configured connectors, by name, with the token cache they share.
pub struct Connectors {
    by_name: BTreeMap<String, Named>,
    cache: TokenCache,
    jwks: Option<String>,
}

impl Connectors {
    /// Builds every connector, reading key files and service accounts: a bad one is an error here
    /// (at start, on reload, and in `extoken check`), naming its key.
    /// `cache`: the token cache to keep (a reload with unchanged `cache:` settings), else a new one.
    pub fn build(
        cfg: &Config,
        client: &reqwest::Client,
        cache: Option<TokenCache>,
    ) -> Result<Connectors, ConfigError> {
        let mut by_name = BTreeMap::new();
        let mut public = vec![];
        for (name, c) in &cfg.connectors {
            let path = format!("connectors.{name}");
            fn minting<T: Mint + 'static>((m, loaded): (T, Vec<u8>)) -> (Arc<dyn Mint>, Vec<u8>) {
                (Arc::new(m), loaded)
            }
            let (minting, loaded) = match c {
                ConnectorConfig::Claim(claim) => {
                    let kind = Kind::Claim(ClaimConnector::new(claim.claim.clone()));
                    by_name.insert(name.clone(), Named::new(name, kind, c, &[]));
                    continue;
                }
                ConnectorConfig::Supabase(c) => minting(Supabase::build(name, &path, c)?),
                ConnectorConfig::Firebase(c) => {
                    minting(Firebase::build(name, &path, c, client.clone())?)
                }
                ConnectorConfig::Http(c) => minting((
                    HttpConnector::build(name, &path, c, client.clone())?,
                    Vec::new(),
                )),
                ConnectorConfig::Jwt(c) => minting(JwtConnector::build(name, &path, c)?),
            };
            let kind = Kind::Minting(Arc::new(Instrumented {
                name: name.clone(),
                inner: minting,
            }));
            if let Kind::Minting(m) = &kind {
                public.extend(m.public_jwk());
            }
            let named = Named::new(name, kind, c, &loaded);
            by_name.insert(name.clone(), named);
        }
        let jwks = (!public.is_empty()).then(|| {
            serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: public }).unwrap_or_default()
        });
        Ok(Connectors {
            by_name,
            cache: cache.unwrap_or_else(|| TokenCache::new(&cfg.cache)),
            jwks,
        })
    }

    /// The external token from connector `name` for this session.
    pub async fn obtain(
        &self,
        name: &str,
        session: &VerifiedSession,
        req: RequestInfo<'_>,
    ) -> Result<Obtained, ExchangeError> {
        let c = self
            .by_name
            .get(name)
            .ok_or_else(|| ExchangeError::unavailable(name, "no such connector"))?;
        match &c.kind {
            Kind::Claim(cc) => Ok(Obtained {
                token: cc.extract(session)?,
                cache_key: None,
            }),
            Kind::Minting(m) => {
                let inputs = Arc::new(m.inputs(session, req)?);
                let key = CacheKey::new(c.name.clone(), &c.settings, &m.cache_inputs(&inputs));
                let (result, how) = self.cache.get_or_mint(&key, m, &inputs).await;
                crate::metrics::metrics()
                    .cache_lookups_total
                    .with_label_values(&[&*c.name, how.label()])
                    .inc();
                Ok(Obtained {
                    token: result?,
                    cache_key: Some(key),
                })
            }
        }
    }

    /// Forgets a cached token (the upstream answered 401 to it).
    pub async fn evict(&self, key: &CacheKey) {
        self.cache.evict(key).await;
    }

    /// `{"keys":[...]}` of the `jwt` connectors' public keys, if any are configured.
    pub fn jwks(&self) -> Option<&str> {
        self.jwks.as_deref()
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_ascii() {
        assert!(ExternalToken::new("eyJ.abc-_~+/=").is_some());
        for bad in ["", "a b", "a\r\nX-Evil: 1", "tab\t", "é", "nul\0"] {
            assert!(ExternalToken::new(bad).is_none(), "{bad:?}");
        }
        let t = ExternalToken::new("secret").unwrap();
        assert!(!format!("{t:?}").contains("secret"));
    }

    /// The cache fingerprint of connector `c`, a `jwt` connector whose key is the file `key`.
    fn jwt_fingerprint(key: &std::path::Path) -> [u8; 32] {
        let yaml = format!(
            "descope: {{project_id: P2t, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors:\n  c: {{type: jwt, key_file: '{}', kid: k, issuer: 'https://gw'}}\n\
             routes: [{{upstream: 'http://127.0.0.1:3000', connector: c}}]\n",
            key.display()
        );
        let cfg = Config::parse(&yaml, &|_| None).unwrap();
        let built = Connectors::build(&cfg, &reqwest::Client::new(), None).unwrap();
        built.by_name["c"].settings
    }

    #[test]
    fn fingerprint_covers_key_contents_not_paths() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (
            crate::mint::generate_pem().unwrap(),
            crate::mint::generate_pem().unwrap(),
        );
        let (a, b, c) = (
            dir.path().join("a.pem"),
            dir.path().join("b.pem"),
            dir.path().join("c.pem"),
        );
        std::fs::write(&a, &k1).unwrap();
        std::fs::write(&b, &k1).unwrap();
        std::fs::write(&c, &k2).unwrap();
        let fa = jwt_fingerprint(&a);
        assert_eq!(fa, jwt_fingerprint(&b), "same key at another path");
        assert_ne!(fa, jwt_fingerprint(&c), "another key");
        // Replaced in place: same path, same settings, other contents.
        std::fs::write(&a, &k2).unwrap();
        assert_ne!(fa, jwt_fingerprint(&a));
        assert_eq!(jwt_fingerprint(&a), jwt_fingerprint(&c));
    }

    #[test]
    fn fingerprint_covers_settings_and_loaded_bytes_unambiguously() {
        let cfg: ConnectorConfig =
            serde_yaml::from_str("{type: supabase, jwt_secret: s1}").unwrap();
        let other: ConnectorConfig =
            serde_yaml::from_str("{type: supabase, jwt_secret: s2}").unwrap();
        assert_ne!(fingerprint(&cfg, b""), fingerprint(&other, b""));
        assert_ne!(fingerprint(&cfg, b""), fingerprint(&cfg, b"x"));
        assert_eq!(fingerprint(&cfg, b"x"), fingerprint(&cfg, b"x"));
    }
}
