//! Step 2 of the request path: is this a valid Descope session?
//!
//! Rules (token-formats.md §1): the key is chosen by `kid` (required); the header `alg` must be
//! the key's; then the claim rules of [`claims`] (`exp` required, times with the leeway, `iss`,
//! `aud`, no refresh token).
//!
//! [`Verifier::verify`] runs, in order: the size limit; the session cache; [`jws`] (split the
//! compact JWS once, read its header); the key by `kid` (one refetch for an unknown `kid`); the
//! signature and claims decoding on the blocking pool; the claim rules at the injected clock's
//! time.
//!
//! A verified token is remembered until it expires (keyed by the token's SHA-256), so a session's
//! signature is checked once, not on every request. A cache hit still re-checks the expiry (with
//! the clock) and that the very key material that verified it is still published under its `kid`
//! (its RFC 7638 thumbprint), so a key withdrawn from the JWKS, or replaced under the same `kid`,
//! stops its tokens. The cache only stores and bounds (`cache.verified_sessions` entries);
//! [`Verifier::sweep`], run every 30 s, frees what expired or lost its key.

mod claims;
mod jws;
mod keys;
mod keystore;
mod session;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub(crate) use claims::issuer_matches;
pub use keys::{Key, KeySet, KeySetError};
pub use keystore::{FetchError, KeyStore};
pub(crate) use session::{ClaimSource, Claims};
pub use session::{ClaimsKept, VerifiedSession};

use crate::clock::SharedClock;
use crate::config::DescopeConfig;
use claims::ClaimRules;
use jws::CompactJws;

/// Why a token was refused. `reason()` is the metric label, `Display` the description sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no session token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token is too long")]
    TooLong,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token is signed with an unknown key")]
    UnknownKey,
    #[error("token algorithm is not accepted for its key")]
    BadAlgorithm,
    #[error("token issuer is not this project")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("a refresh token is not a session token")]
    RefreshToken,
}

impl AuthError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) | AuthError::TooLong => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingExp => "missing_exp",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::RefreshToken => "refresh_token",
        }
    }
}

/// A verification outcome other than "valid".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Invalid(#[from] AuthError),
    /// No keys could be loaded yet: the answer is 503, not 401.
    #[error("Descope keys are not available")]
    KeysUnavailable,
}

/// How often expired sessions are swept out of the verified-session cache.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct Verifier {
    rules: ClaimRules,
    max_token_bytes: usize,
    pub keys: Arc<KeyStore>,
    clock: SharedClock,
    /// Keyed by the token's SHA-256: 32 bytes instead of the ~700-byte token per session, and a
    /// collision-resistant digest, so no other token can ever be served this session.
    /// `quick_cache` (S3-FIFO) rather than moka: ~40 bytes of bookkeeping per entry against ~360
    /// (measured: 100,000 entries), and this cache is sized in the hundred thousands. Freshness is
    /// decided on every read anyway; [`Verifier::sweep`] frees what expired or lost its key.
    verified: quick_cache::sync::Cache<SessionKey, Arc<VerifiedSession>>,
    /// The claims a session keeps (what the config reads).
    kept: ClaimsKept,
}

type SessionKey = [u8; 32];

fn session_key(token: &str) -> SessionKey {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

impl Verifier {
    pub fn new(
        cfg: &DescopeConfig,
        keys: Arc<KeyStore>,
        max_token_bytes: usize,
        cache_entries: u64,
        clock: SharedClock,
    ) -> Verifier {
        let rules = ClaimRules::new(cfg);
        Verifier {
            rules,
            max_token_bytes,
            keys,
            clock,
            verified: quick_cache::sync::Cache::new(
                usize::try_from(cache_entries).unwrap_or(usize::MAX).max(1),
            ),
            kept: ClaimsKept::All,
        }
    }

    /// Keeps only these claims of each session (default: all).
    pub fn keeping(mut self, kept: ClaimsKept) -> Verifier {
        self.kept = kept;
        self
    }

    /// The claims sessions keep.
    pub(crate) fn kept(&self) -> &ClaimsKept {
        &self.kept
    }

    /// Verifies a session token. Cheap for a token seen before; otherwise the signature check runs
    /// on the blocking pool so a slow curve (ES384 is ~10x RS256) never stalls other requests.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedSession>, VerifyError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLong.into());
        }
        let keyset = self.keys.current();
        let cache_key = session_key(token);
        if let Some(s) = self.cached(&cache_key, &keyset) {
            return Ok(s);
        }
        let jws = CompactJws::parse(token)?;
        let key = self.pick_key(&jws, keyset).await?;
        let claims = check_signature(jws, key.clone()).await?;
        let exp = self.rules.check(&claims, self.clock.unix())?;
        let session = Arc::new(VerifiedSession {
            claims: Claims::new(claims, &self.kept),
            exp,
            key,
        });
        self.verified.insert(cache_key, session.clone());
        Ok(session)
    }

    /// The remembered session for `token`, while unexpired and its very key is still in `keyset`;
    /// otherwise forgets it.
    fn cached(&self, key: &SessionKey, keyset: &KeySet) -> Option<Arc<VerifiedSession>> {
        let s = self.verified.get(key)?;
        let same_key = keyset
            .get(&s.key.kid)
            .is_some_and(|k| k.thumbprint == s.key.thumbprint);
        if same_key && self.rules.unexpired(s.exp, self.clock.unix()) {
            return Some(s);
        }
        self.verified.remove(key);
        None
    }

    /// Forgets every session that expired or whose key is no longer published (a cache sized for
    /// the busiest hour would otherwise hold them until evicted). Returns how many were dropped.
    /// A scan of the whole cache: called every [`SWEEP_EVERY`] from a background task.
    pub(crate) fn sweep(&self) -> usize {
        let keyset = self.keys.current();
        let now = self.clock.unix();
        let before = self.verified.len();
        self.verified.retain(|_, s| {
            self.rules.unexpired(s.exp, now)
                && keyset
                    .get(&s.key.kid)
                    .is_some_and(|k| k.thumbprint == s.key.thumbprint)
        });
        before.saturating_sub(self.verified.len())
    }

    /// Sessions held now.
    pub(crate) fn cached_sessions(&self) -> usize {
        self.verified.len()
    }

    /// The key named by the token's `kid` (after one refetch when `keyset` lacks it), if it
    /// permits the token's `alg`.
    async fn pick_key(
        &self,
        jws: &CompactJws,
        keyset: Arc<KeySet>,
    ) -> Result<Arc<Key>, VerifyError> {
        if keyset.is_empty() {
            return Err(VerifyError::KeysUnavailable);
        }
        let key = match keyset.get(&jws.kid) {
            Some(k) => k.clone(),
            None => {
                let fresh = self.keys.refetch_for_unknown_kid(&keyset).await;
                fresh.get(&jws.kid).cloned().ok_or(AuthError::UnknownKey)?
            }
        };
        if !key.allowed.permits(jws.alg) {
            return Err(AuthError::BadAlgorithm.into());
        }
        Ok(key)
    }
}

/// The signature check and claims decoding, on the blocking pool.
async fn check_signature(jws: CompactJws, key: Arc<Key>) -> Result<Map<String, Value>, AuthError> {
    tokio::task::spawn_blocking(move || jws.verified_claims(&key))
        .await
        .unwrap_or(Err(AuthError::BadSignature))
}
