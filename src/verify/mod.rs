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
//!
//! In front of the cache, [`Verifier::verify_remembered`] keeps the last session of one client
//! connection ([`SessionMemo`]): a keep-alive client sends the same token with every request, and
//! comparing the bytes costs less than hashing them. A memo hit passes the same checks as a cache
//! hit.

mod claims;
mod jws;
mod keys;
mod keystore;
mod session;
#[cfg(test)]
mod tests;

use crate::telemetry::trace;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub(crate) use claims::issuer_matches;
#[cfg(test)]
pub(crate) use keys::parse_jwks;
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
    /// Distinguishes this verifier from the one before a reload in a connection's [`SessionMemo`].
    id: u64,
}

type SessionKey = [u8; 32];

/// The session last verified on one client connection, kept by the connection between its
/// requests (see [`Verifier::verify_remembered`]). Holds a copy of the token (at most
/// `limits.max_token_bytes`), so a hit needs the very bytes that were verified.
#[derive(Default)]
pub struct SessionMemo {
    verifier: u64,
    token: Vec<u8>,
    session: Option<Arc<VerifiedSession>>,
}

impl SessionMemo {
    /// The remembered session if `token` is the remembered token, byte for byte. Constant time
    /// for equal lengths: a front proxy may carry several users' requests on one connection.
    fn hit(&self, verifier: u64, token: &str) -> Option<&Arc<VerifiedSession>> {
        let s = self.session.as_ref()?;
        let same = self.verifier == verifier
            && self.token.len() == token.len()
            && aws_lc_rs::constant_time::verify_slices_are_equal(&self.token, token.as_bytes())
                .is_ok();
        same.then_some(s)
    }
}

/// Verifier ids: each verifier (a reload may build a new one) gets the next.
static NEXT_VERIFIER: AtomicU64 = AtomicU64::new(1);

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
            id: NEXT_VERIFIER.fetch_add(1, Ordering::Relaxed),
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
            trace::note("extoken.verify.source", "cache");
            return Ok(s);
        }
        trace::note("extoken.verify.source", "first_sight");
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

    /// Verifies a refresh token (`drn: DSR`) as a session is verified (size, key by `kid`,
    /// signature, `exp`, `iss`, `aud`), returning its `exp`. Never cached: the session cache is
    /// keyed by the token alone, and a refresh token must never be served as a session.
    pub async fn verify_refresh(&self, token: &str) -> Result<u64, VerifyError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLong.into());
        }
        let jws = CompactJws::parse(token)?;
        let key = self.pick_key(&jws, self.keys.current()).await?;
        let claims = check_signature(jws, key).await?;
        Ok(self.rules.check_refresh(&claims, self.clock.unix())?)
    }

    /// [`Verifier::verify`], first asking the connection's memo. A keep-alive client resends the
    /// same token, and comparing its bytes with the remembered ones skips the SHA-256 of the cache
    /// key (0.45 µs for a 724-byte token) and the lookup. The memo's session passes the same checks
    /// as a cached one: unexpired, its very key still published. A token that verifies becomes
    /// the memo.
    pub async fn verify_remembered(
        &self,
        token: &str,
        memo: &mut SessionMemo,
    ) -> Result<Arc<VerifiedSession>, VerifyError> {
        if let Some(s) = memo.hit(self.id, token) {
            if self.fresh(s, &self.keys.current()) {
                trace::note("extoken.verify.source", "memo");
                return Ok(s.clone());
            }
            memo.session = None;
        }
        let s = self.verify(token).await?;
        memo.verifier = self.id;
        memo.token.clear();
        memo.token.extend_from_slice(token.as_bytes());
        memo.session = Some(s.clone());
        Ok(s)
    }

    /// The remembered session for `token`, while unexpired and its very key is still in `keyset`;
    /// otherwise forgets it.
    fn cached(&self, key: &SessionKey, keyset: &KeySet) -> Option<Arc<VerifiedSession>> {
        let s = self.verified.get(key)?;
        if self.fresh(&s, keyset) {
            return Some(s);
        }
        self.verified.remove(key);
        None
    }

    /// Unexpired, and the very key that verified it is still published under its `kid`.
    fn fresh(&self, s: &VerifiedSession, keyset: &KeySet) -> bool {
        let same_key = keyset
            .get(&s.key.kid)
            .is_some_and(|k| k.thumbprint == s.key.thumbprint);
        same_key && self.rules.unexpired(s.exp, self.clock.unix())
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
