//! Step 3 of the request path: obtain the external token for a verified session.
//!
//! Two kinds of connector: `claim` reads the token Descope already put in the session (no cache,
//! nothing to mint); the minting connectors (`supabase`, `firebase`, `http`, `jwt`,
//! `token_exchange`) implement [`Mint`] and are called through the [`TokenCache`], which
//! coalesces concurrent misses and refreshes ahead of expiry. An [`ExternalToken`] can only be
//! built from visible ASCII, so whatever reaches a header is a valid, single-line header value.
//!
//! Each connector's module holds all of it: its settings (the typed `connectors.<name>` block,
//! with validation), how it is built, and how it mints. [`connector_config`] parses a config's
//! raw blocks into those settings; [`Connectors`] builds them and serves requests. Time (token
//! freshness, `iat`/`exp`) comes from an injected [`crate::clock::Clock`]. With `cache.shared`,
//! the cache has a second level in Redis shared by the replicas ([`shared`]).

mod cache;
mod cached;
mod claim;
mod connector_config;
mod connectors;
mod firebase;
mod http_endpoint;
mod identity;
mod jwt_template;
mod settings;
mod shared;
mod signing;
mod supabase;
mod token_exchange;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use cache::TokenCache;
pub use cache::TokenRef;
pub use cached::CacheKey;
pub use connector_config::validate;
pub use connectors::Connectors;
pub use firebase::FIREBASE_AUDIENCE;
pub(crate) use jwt_template::IdentitySigner;

use crate::verify::{ClaimsKept, VerifiedSession};

/// Largest connector or OAuth token reply read (a token reply is a few KiB at most); a larger one
/// is a connector failure, refused while it streams in, never buffered whole.
pub(crate) const MAX_REPLY_BYTES: usize = 256 * 1024;

/// A token for the legacy backend. Never printed: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalToken(Arc<str>);

impl ExternalToken {
    /// Accepts only visible ASCII (0x21..=0x7E): no spaces, controls, CR/LF or non-ASCII.
    /// Takes `&str` or `String`: either way the bytes are copied once, into the shared `Arc`.
    pub(crate) fn new(s: impl AsRef<str>) -> Option<ExternalToken> {
        let s = s.as_ref();
        (!s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .then(|| ExternalToken(Arc::from(s)))
    }
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether `other` is this very token, compared in constant time (what a request sent against
    /// what is cached: neither may leak through timing).
    pub(crate) fn same_as(&self, other: &ExternalToken) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.0.as_bytes(), other.0.as_bytes())
            .is_ok()
    }
}

impl fmt::Debug for ExternalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExternalToken(<{} bytes>)", self.0.len())
    }
}

/// A freshly made token and how long it is good for.
#[derive(Debug, Clone)]
pub(crate) struct Minted {
    pub(crate) token: ExternalToken,
    pub(crate) lifetime: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExchangeError {
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
    /// The identity provider refused the session itself (a `token_exchange` connector's
    /// `invalid_grant`): a 401, the client must log in again. Never the provider's description.
    #[error("the identity provider of connector {connector} refused the session")]
    Refused { connector: String },
    /// The connector could not produce a token now (a 503: retry later). `reason` is for logs.
    #[error("connector {connector} is unavailable: {reason}")]
    Unavailable { connector: String, reason: String },
}

impl ExchangeError {
    pub(crate) fn unavailable(connector: &str, reason: impl Into<String>) -> ExchangeError {
        ExchangeError::Unavailable {
            connector: connector.to_string(),
            reason: reason.into(),
        }
    }
}

/// What a connector knows about the request besides the session (the `http` connector sends it).
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The session JWT as the client sent it. Leaves the gateway only as a `token_exchange`
    /// connector's subject token; never logged, never cached (the session cache holds its hash).
    pub session_token: &'a str,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The query, as received: read by `require.methods` for a `_method` override; never sent
    /// to a connector (a query may carry secrets) and never part of a cache key.
    pub query: &'a [u8],
}

/// A connector that makes tokens. `inputs` extracts from the session exactly what the token will
/// depend on; `mint` works from those inputs only, so the cache key (a hash of them) is exact.
#[async_trait::async_trait]
pub(crate) trait Mint: Send + Sync {
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
    /// Adds the session claims `inputs` reads to `kept` (the verified-session cache keeps no
    /// others). The default keeps them all: right for a connector that cannot name them.
    fn claims_read(&self, kept: &mut ClaimsKept) {
        kept.read_all();
    }
    /// The connector whose token this one exchanges (`token_exchange` with
    /// `subject: {external_token: <name>}`): [`Connectors`] obtains that token first and hands it
    /// to [`Mint::bind_subject`] before the cache key is made.
    fn subject_connector(&self) -> Option<&str> {
        None
    }
    /// Adds the subject token obtained from [`Mint::subject_connector`] to `inputs`.
    fn bind_subject(&self, _inputs: &mut serde_json::Value, _subject: &ExternalToken) {}
    /// The public key of a connector that signs with its own key, to publish in a JWKS.
    fn public_jwk(&self) -> Option<jsonwebtoken::jwk::Jwk> {
        None
    }
    /// The key that signs identity assertions, for a connector whose key may (`jwt`).
    fn identity_signer(&self) -> Option<IdentitySigner> {
        None
    }
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

    #[test]
    fn same_as_compares_the_whole_token() {
        let t = |s: &str| ExternalToken::new(s).unwrap();
        assert!(t("tok-1").same_as(&t("tok-1")));
        for other in ["tok-2", "tok-", "tok-10", "TOK-1"] {
            assert!(!t("tok-1").same_as(&t(other)), "{other}");
        }
    }
}
