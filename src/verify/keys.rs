//! A JSON Web Key Set turned into verification keys, once per fetch.
//!
//! Every key is parsed when the set arrives, never per request. Keys we cannot use (encryption keys,
//! HMAC, unknown types, duplicates of a `kid`) are skipped with a warning rather than failing the
//! whole set: one odd key from the provider must not take the gateway down.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The algorithms a key may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// The key's `alg`, or the only one its curve fits.
    Exactly(Algorithm),
    /// An RSA key that names no `alg`: any RS*/PS* algorithm.
    AnyRsa,
}

impl Allowed {
    pub fn permits(self, alg: Algorithm) -> bool {
        match self {
            Allowed::Exactly(a) => a == alg,
            Allowed::AnyRsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
        }
    }
}

pub struct Key {
    pub kid: Arc<str>,
    pub allowed: Allowed,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("allowed", &self.allowed)
            .finish()
    }
}

/// One generation of keys. Swapped whole; readers hold an `Arc` to the one they started with.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: HashMap<Arc<str>, Arc<Key>>,
    /// Bumped on every successful load; waiters use it to see that someone else refetched.
    pub generation: u64,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("not a JSON Web Key Set: {0}")]
    NotJson(String),
    #[error("the key set has no usable signing key")]
    NoUsableKey,
}

/// Parses a JWKS document (`{"keys":[...]}`) into usable keys. `warn` receives one line per
/// skipped key (no key material in it).
pub fn parse_jwks(body: &[u8], warn: &mut dyn FnMut(String)) -> Result<KeySet, KeySetError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| KeySetError::NotJson(e.to_string()))?;
    let mut keys = HashMap::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        let kid_hint = raw
            .get("kid")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        match key_from_jwk(raw) {
            Ok(k) => {
                if keys.contains_key(&k.kid) {
                    warn(format!(
                        "JWKS key #{i} (kid {kid_hint:?}) skipped: duplicate kid"
                    ));
                } else {
                    keys.insert(k.kid.clone(), Arc::new(k));
                }
            }
            Err(why) => warn(format!("JWKS key #{i} (kid {kid_hint:?}) skipped: {why}")),
        }
    }
    if keys.is_empty() {
        return Err(KeySetError::NoUsableKey);
    }
    Ok(KeySet {
        keys,
        generation: 0,
    })
}

fn key_from_jwk(raw: serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("unreadable JWK: {e}"))?;
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|k| !k.is_empty())
        .ok_or("no kid")?;
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return Err("not a signing key (use != sig)".into());
        }
    }
    let allowed = allowed_for(&jwk)?;
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    Ok(Key {
        kid: kid.into(),
        allowed,
        decoding,
    })
}

fn allowed_for(jwk: &Jwk) -> Result<Allowed, String> {
    let curve_alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => None,
        AlgorithmParameters::EllipticCurve(p) => Some(match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref c => return Err(format!("unsupported curve {c:?}")),
        }),
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
            ref c => return Err(format!("unsupported curve {c:?}")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (HMAC) keys are never accepted".into())
        }
        _ => return Err("unsupported key type".into()),
    };
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signing_alg(a).ok_or_else(|| format!("alg {a:?} is not accepted"))?),
    };
    match (named, curve_alg) {
        (None, None) => Ok(Allowed::AnyRsa),
        (None, Some(c)) => Ok(Allowed::Exactly(c)),
        (Some(n), Some(c)) if n != c => Err(format!("alg {n:?} does not fit the key's curve")),
        (Some(n), None) if !Allowed::AnyRsa.permits(n) => {
            Err(format!("alg {n:?} does not fit an RSA key"))
        }
        (Some(n), _) => Ok(Allowed::Exactly(n)),
    }
}

/// The asymmetric signing algorithms extoken accepts (never HS* or none).
fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A header `alg` string as an accepted algorithm (`none`, HS*, unknown → `None`).
pub fn header_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = r#"{"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;

    fn parse(keys: &str) -> (Result<KeySet, KeySetError>, Vec<String>) {
        let mut warnings = vec![];
        let r = parse_jwks(format!(r#"{{"keys":[{keys}]}}"#).as_bytes(), &mut |w| {
            warnings.push(w)
        });
        (r, warnings)
    }

    #[test]
    fn rsa_key_with_alg() {
        let (set, w) = parse(RSA);
        let set = set.unwrap();
        assert!(w.is_empty());
        let k = set.get("r1").unwrap();
        assert_eq!(k.allowed, Allowed::Exactly(Algorithm::RS256));
        assert!(!k.allowed.permits(Algorithm::RS384));
    }

    #[test]
    fn rsa_key_without_alg_allows_rsa_family_only() {
        let (set, _) = parse(&RSA.replace(r#""alg":"RS256","#, ""));
        let k = set.unwrap().get("r1").unwrap().clone();
        assert!(k.allowed.permits(Algorithm::PS512));
        assert!(!k.allowed.permits(Algorithm::ES256));
    }

    #[test]
    fn skips_hmac_enc_duplicates_and_kidless() {
        let hmac = r#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#;
        let enc = RSA
            .replace(r#""kid":"r1""#, r#""kid":"e1""#)
            .replace(r#""use":"sig""#, r#""use":"enc""#);
        let nokid = RSA.replace(r#""kid":"r1","#, "");
        let (set, w) = parse(&format!("{RSA},{hmac},{enc},{nokid},{RSA}"));
        assert_eq!(set.unwrap().len(), 1);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(
            w.iter().all(|l| !l.contains("sXchDaQ")),
            "no key material in warnings"
        );
    }

    #[test]
    fn empty_or_garbage_sets_fail() {
        assert!(matches!(parse("").0, Err(KeySetError::NoUsableKey)));
        let mut w = |_| {};
        assert!(matches!(
            parse_jwks(b"<html>", &mut w),
            Err(KeySetError::NotJson(_))
        ));
    }

    #[test]
    fn header_algs() {
        assert_eq!(header_alg("ES384"), Some(Algorithm::ES384));
        assert_eq!(header_alg("none"), None);
        assert_eq!(header_alg("HS256"), None);
    }
}
