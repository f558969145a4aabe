//! Step 2 of the request path: is this a valid Descope session?
//!
//! Rules (token-formats.md §1): the key is chosen by `kid` (required); the header `alg` must be
//! the key's; `exp` is required and `exp`/`nbf`/`iat` are checked with the leeway; `iss` is the
//! project id or a URL whose last or second-to-last path segment is it; a refresh token (`drn`
//! `DSR`) is not a session; `aud` must match the configured audience, or when none is configured
//! be absent or contain the project id.
//!
//! A verified token is remembered until it expires (keyed by the token itself), so a session's
//! signature is checked once, not on every request. A cache hit still re-checks the expiry and
//! that the very key material that verified it is still published under its `kid` (its RFC 7638
//! thumbprint), so a key withdrawn from the JWKS, or replaced under the same `kid`, stops its
//! tokens.
//!
//! Time claims (`exp`, `nbf`, `iat`) are whole seconds from 0 to the end of year 9999; anything
//! else (negative, beyond, not a number) is a malformed token. All arithmetic on them saturates,
//! so no token can make the gateway panic on an overflow.

mod keys;
mod keystore;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

pub use keys::{header_alg, parse_jwks, thumbprint, Allowed, Key, KeySet, KeySetError};
pub use keystore::{FetchError, KeyStore};

use crate::config::DescopeConfig;

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
    pub fn reason(&self) -> &'static str {
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

/// A verified Descope session: its claims, read-only and shared.
#[derive(Debug)]
pub struct VerifiedSession {
    pub claims: Map<String, Value>,
    pub exp: u64,
    kid: Arc<str>,
    /// The RFC 7638 thumbprint of the key that verified it.
    thumbprint: [u8; 32],
}

impl VerifiedSession {
    /// A session with these claims, as if verified (unit tests of the connectors).
    #[cfg(test)]
    pub(crate) fn for_test(claims: Map<String, Value>) -> VerifiedSession {
        VerifiedSession {
            claims,
            exp: u64::MAX,
            kid: "test".into(),
            thumbprint: [0; 32],
        }
    }

    /// The Descope user id: `dsub` when a JWT template overrode `sub`, else `sub`.
    pub fn user_id(&self) -> Option<&str> {
        self.str_claim("dsub").or_else(|| self.str_claim("sub"))
    }
    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

#[derive(serde::Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Option<&'a str>,
    #[serde(borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    crit: Option<Value>,
}

pub struct Verifier {
    project_id: String,
    audience: Option<Vec<String>>,
    leeway: u64,
    max_token_bytes: usize,
    pub keys: Arc<KeyStore>,
    verified: moka::sync::Cache<Arc<str>, Arc<VerifiedSession>>,
}

struct UntilExp;
impl moka::Expiry<Arc<str>, Arc<VerifiedSession>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        s: &Arc<VerifiedSession>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(s.exp.saturating_sub(now())))
    }
}

impl Verifier {
    pub fn new(
        cfg: &DescopeConfig,
        keys: Arc<KeyStore>,
        max_token_bytes: usize,
        cache_entries: u64,
    ) -> Verifier {
        Verifier {
            project_id: cfg.project_id.clone(),
            audience: cfg.audience.as_ref().map(|a| a.to_vec()),
            leeway: cfg.leeway.0.as_secs(),
            max_token_bytes,
            keys,
            verified: moka::sync::Cache::builder()
                .max_capacity(cache_entries)
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// Verifies a session token. Cheap for a token seen before; otherwise the signature check runs
    /// on the blocking pool so a slow curve (ES384 is ~10x RS256) never stalls other requests.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedSession>, VerifyError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLong.into());
        }
        let mut keyset = self.keys.current();
        if let Some(s) = self.verified.get(token) {
            let same_key = keyset
                .get(&s.kid)
                .is_some_and(|k| k.thumbprint == s.thumbprint);
            if s.exp.saturating_add(self.leeway) > now() && same_key {
                return Ok(s);
            }
            self.verified.invalidate(token);
        }
        let (signing_input, sig) = token
            .rsplit_once('.')
            .ok_or(AuthError::Malformed("not a JWT"))?;
        let (h64, c64) = signing_input
            .split_once('.')
            .ok_or(AuthError::Malformed("not a JWT"))?;
        if c64.contains('.') {
            return Err(AuthError::Malformed("not a JWT").into());
        }
        let hbytes = URL_SAFE_NO_PAD
            .decode(h64)
            .map_err(|_| AuthError::Malformed("bad header encoding"))?;
        let header: Header =
            serde_json::from_slice(&hbytes).map_err(|_| AuthError::Malformed("bad header"))?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed("unsupported crit header").into());
        }
        let alg = header
            .alg
            .and_then(header_alg)
            .ok_or(AuthError::BadAlgorithm)?;
        let kid = header.kid.ok_or(AuthError::Malformed("no kid"))?;

        if keyset.is_empty() {
            return Err(VerifyError::KeysUnavailable);
        }
        let key = match keyset.get(&kid) {
            Some(k) => k.clone(),
            None => {
                keyset = self.keys.refetch_for_unknown_kid(&keyset).await;
                keyset.get(&kid).cloned().ok_or(AuthError::UnknownKey)?
            }
        };
        if !key.allowed.permits(alg) {
            return Err(AuthError::BadAlgorithm.into());
        }

        let mut session = {
            let token: Arc<str> = token.into();
            let key = key.clone();
            let (input_len, c_start) = (signing_input.len(), h64.len() + 1);
            let verify = move || -> Result<VerifiedSession, AuthError> {
                let input = &token[..input_len];
                let sig = &token[input_len + 1..];
                match jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key.decoding, alg) {
                    Ok(true) => {}
                    _ => return Err(AuthError::BadSignature),
                }
                let cbytes = URL_SAFE_NO_PAD
                    .decode(&token[c_start..input_len])
                    .map_err(|_| AuthError::Malformed("bad claims encoding"))?;
                let claims: Map<String, Value> = serde_json::from_slice(&cbytes)
                    .map_err(|_| AuthError::Malformed("bad claims"))?;
                Ok(VerifiedSession {
                    claims,
                    exp: 0, // set from the checked claim below
                    kid: key.kid.clone(),
                    thumbprint: key.thumbprint,
                })
            };
            let _ = sig;
            match tokio::task::spawn_blocking(verify).await {
                Ok(r) => r?,
                Err(_) => return Err(AuthError::BadSignature.into()),
            }
        };
        session.exp = self.check_claims(&session.claims, now())?;
        let session = Arc::new(session);
        self.verified.insert(token.into(), session.clone());
        Ok(session)
    }

    /// Checks the claims of a token whose signature is valid, at time `now` (Unix seconds).
    /// Returns its `exp`. Pure: no clock, no I/O.
    fn check_claims(&self, c: &Map<String, Value>, now: u64) -> Result<u64, AuthError> {
        // Every time claim is read (and refused when out of range) before any is compared.
        let nbf = c.get("nbf").map(time_claim).transpose()?;
        let exp = c.get("exp").map(time_claim).transpose()?;
        let iat = c.get("iat").map(time_claim).transpose()?;
        let horizon = now.saturating_add(self.leeway);
        if nbf.is_some_and(|nbf| nbf > horizon) {
            return Err(AuthError::NotYetValid);
        }
        let exp = exp.ok_or(AuthError::MissingExp)?;
        if exp.saturating_add(self.leeway) <= now {
            return Err(AuthError::Expired);
        }
        if iat.is_some_and(|iat| iat > horizon) {
            return Err(AuthError::NotYetValid);
        }
        match c.get("iss").and_then(Value::as_str) {
            Some(iss) if issuer_matches(iss, &self.project_id) => {}
            _ => return Err(AuthError::WrongIssuer),
        }
        if c.get("drn").and_then(Value::as_str) == Some("DSR") {
            return Err(AuthError::RefreshToken);
        }
        let aud: Vec<&str> = match c.get("aud") {
            None => vec![],
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(AuthError::WrongAudience),
        };
        let ok = match &self.audience {
            Some(want) => aud.iter().any(|a| want.iter().any(|w| w == a)),
            None => c.get("aud").is_none() || aud.contains(&self.project_id.as_str()),
        };
        if !ok {
            return Err(AuthError::WrongAudience);
        }
        Ok(exp)
    }

    /// Verified sessions currently remembered (for metrics).
    pub fn cached_sessions(&self) -> u64 {
        self.verified.entry_count()
    }
}

/// `iss` is the project id, or an http(s) URL whose last or second-to-last path segment is the
/// project id (node-sdk's rule). The host is not a path segment.
pub fn issuer_matches(iss: &str, project_id: &str) -> bool {
    if iss == project_id {
        return true;
    }
    let Some(rest) = iss
        .strip_prefix("https://")
        .or_else(|| iss.strip_prefix("http://"))
    else {
        return false;
    };
    let path = match rest.find('/') {
        Some(i) => &rest[i..],
        None => return false,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segs.len();
    (n >= 1 && segs[n - 1] == project_id) || (n >= 2 && segs[n - 2] == project_id)
}

/// The latest time claim accepted: 9999-12-31T23:59:59Z.
pub const MAX_TIME_CLAIM: u64 = 253_402_300_799;

/// A NumericDate claim as whole seconds: integers 0..=[`MAX_TIME_CLAIM`], or a non-negative float
/// in that range (floored). Negative, larger, or not a number: malformed.
fn time_claim(v: &Value) -> Result<u64, AuthError> {
    const OUT_OF_RANGE: AuthError = AuthError::Malformed("time claim out of range");
    let Value::Number(n) = v else {
        return Err(AuthError::Malformed("time claim is not a number"));
    };
    if let Some(u) = n.as_u64() {
        return if u <= MAX_TIME_CLAIM {
            Ok(u)
        } else {
            Err(OUT_OF_RANGE)
        };
    }
    if n.is_i64() {
        return Err(OUT_OF_RANGE); // a negative integer
    }
    match n.as_f64() {
        // The range check on the float comes first, so the cast below cannot saturate or wrap.
        Some(f) if f.is_finite() && (0.0..=MAX_TIME_CLAIM as f64).contains(&f) => {
            Ok(f.floor() as u64)
        }
        _ => Err(OUT_OF_RANGE),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn verifier(leeway: u64) -> Verifier {
        let cfg = crate::config::Config::parse(
            "descope: {project_id: P2t, jwks_url: 'http://127.0.0.1:1/k'}\n\
             connectors: {ext: {type: claim}}\n\
             routes: [{upstream: 'http://127.0.0.1:3000', connector: ext}]\n",
            &|_| None,
        )
        .unwrap();
        let keys = Arc::new(KeyStore::new(&cfg.descope, reqwest::Client::new()));
        let mut v = Verifier::new(&cfg.descope, keys, 4096, 10);
        v.leeway = leeway;
        v
    }

    fn claims(times: &[(&str, Value)]) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("iss".into(), "P2t".into());
        c.insert("exp".into(), (NOW + 60).into());
        for (k, v) in times {
            c.insert(k.to_string(), v.clone());
        }
        c
    }

    const OUT_OF_RANGE: AuthError = AuthError::Malformed("time claim out of range");

    #[test]
    fn time_claims_in_and_out_of_range() {
        let v = verifier(5);
        let check = |k: &str, val: Value| v.check_claims(&claims(&[(k, val)]), NOW);
        for k in ["exp", "nbf", "iat"] {
            for bad in [
                json!(-1),
                json!(i64::MIN),
                json!(u64::MAX),
                json!(MAX_TIME_CLAIM + 1),
                json!(1e300),
                json!(-0.5),
                json!(f64::MAX),
            ] {
                assert_eq!(check(k, bad.clone()), Err(OUT_OF_RANGE), "{k}: {bad}");
            }
            assert_eq!(
                check(k, json!("soon")),
                Err(AuthError::Malformed("time claim is not a number"))
            );
        }
        // Floats within range are floored.
        assert_eq!(check("exp", json!((NOW + 60) as f64 + 0.9)), Ok(NOW + 60));
        assert_eq!(check("nbf", json!(NOW as f64 + 5.99)), Ok(NOW + 60));
        assert_eq!(
            check("nbf", json!(NOW as f64 + 6.0)),
            Err(AuthError::NotYetValid)
        );
        // The last second of year 9999 is a valid exp; the leeway cannot overflow with it.
        let far = verifier(u64::MAX);
        let c = claims(&[
            ("exp", json!(MAX_TIME_CLAIM)),
            ("nbf", json!(MAX_TIME_CLAIM)),
        ]);
        assert_eq!(far.check_claims(&c, MAX_TIME_CLAIM), Ok(MAX_TIME_CLAIM));
        assert_eq!(far.check_claims(&c, u64::MAX), Err(AuthError::Expired));
        // Expiry with the leeway, at the edges.
        let c = claims(&[("exp", json!(NOW - 5))]);
        assert_eq!(v.check_claims(&c, NOW), Err(AuthError::Expired));
        let c = claims(&[("exp", json!(NOW - 4))]);
        assert_eq!(v.check_claims(&c, NOW), Ok(NOW - 4));
        // An out-of-range claim is malformed even when another claim would fail first.
        let c = claims(&[("exp", json!(0)), ("iat", json!(-1))]);
        assert_eq!(v.check_claims(&c, NOW), Err(OUT_OF_RANGE));
    }

    /// Any JSON number: integers of every width, floats of every magnitude.
    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (0..=MAX_TIME_CLAIM + 10).prop_map(Value::from),
            any::<f64>().prop_map(Value::from), // NaN and infinities become null
            (-1e20f64..1e20).prop_map(Value::from),
            (0.0..=(MAX_TIME_CLAIM as f64) * 1.01).prop_map(Value::from),
        ]
    }

    fn in_range(v: &Value) -> bool {
        match v {
            Value::Number(n) => match (n.as_u64(), n.as_f64()) {
                (Some(u), _) => u <= MAX_TIME_CLAIM,
                (None, Some(f)) => !n.is_i64() && (0.0..=MAX_TIME_CLAIM as f64).contains(&f),
                _ => false,
            },
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn check_claims_never_panics(
            exp in proptest::option::of(number()),
            nbf in proptest::option::of(number()),
            iat in proptest::option::of(number()),
            leeway in any::<u64>(),
            now in prop_oneof![Just(NOW), any::<u64>()],
        ) {
            let v = verifier(leeway);
            let mut c = claims(&[]);
            c.remove("exp");
            for (k, val) in [("exp", &exp), ("nbf", &nbf), ("iat", &iat)] {
                if let Some(val) = val {
                    c.insert(k.into(), val.clone());
                }
            }
            let r = v.check_claims(&c, now);
            let present: Vec<&Value> = [&exp, &nbf, &iat].into_iter().flatten().collect();
            if present.iter().any(|v| !in_range(v)) {
                prop_assert!(
                    matches!(r, Err(AuthError::Malformed(_))),
                    "{c:?} gave {r:?}"
                );
            } else if let Ok(e) = r {
                prop_assert!(e <= MAX_TIME_CLAIM);
                prop_assert!(exp.is_some());
            }
        }
    }

    #[test]
    fn issuer_rule() {
        let p = "P2abc";
        assert!(issuer_matches("P2abc", p));
        assert!(issuer_matches("https://api.descope.com/P2abc", p));
        assert!(issuer_matches(
            "https://auth.example.com/v1/apps/agentic/P2abc/srv1",
            p
        ));
        assert!(issuer_matches("https://api.descope.com/P2abc/", p));
        assert!(
            !issuer_matches("https://P2abc/x", p),
            "the host is not a segment"
        );
        assert!(!issuer_matches("https://P2abc", p));
        assert!(!issuer_matches("https://x.com/P2abc/a/b", p));
        assert!(!issuer_matches("P2abcd", p));
        assert!(!issuer_matches("https://x.com/P2abcd", p));
    }
}
