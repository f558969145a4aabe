//! A JSON Web Key Set turned into verification keys, once per fetch.
//!
//! Every key is parsed when the set arrives, never per request. Keys we cannot use (encryption keys,
//! HMAC, unknown types, duplicates of a `kid`) are skipped with a warning rather than failing the
//! whole set: one odd key from the provider must not take the gateway down.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The algorithms a key may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// The key's `alg`, or the only one its curve fits.
    Exactly(Algorithm),
    /// An RSA key that names no `alg`: any RS*/PS* algorithm.
    AnyRsa,
}

impl Allowed {
    pub(crate) fn permits(self, alg: Algorithm) -> bool {
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
    pub(crate) kid: Arc<str>,
    pub(crate) allowed: Allowed,
    pub decoding: DecodingKey,
    /// RFC 7638 SHA-256 thumbprint of the public key: what a verified session is bound to, so a
    /// key replaced under the same `kid` does not keep serving sessions verified with the old one.
    pub(crate) thumbprint: [u8; 32],
}

impl Key {
    /// A key that verifies nothing (an HMAC secret no token is signed with): for sessions made
    /// by unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(kid: &str) -> Key {
        Key {
            kid: kid.into(),
            allowed: Allowed::Exactly(Algorithm::HS256),
            decoding: DecodingKey::from_secret(b"unused"),
            thumbprint: [0; 32],
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("allowed", &self.allowed)
            .field("thumbprint", &URL_SAFE_NO_PAD.encode(self.thumbprint))
            .finish()
    }
}

/// One generation of keys. Swapped whole; readers hold an `Arc` to the one they started with.
#[derive(Debug, Default)]
pub struct KeySet {
    pub(crate) keys: HashMap<Arc<str>, Arc<Key>>,
    /// Bumped on every successful load; waiters use it to see that someone else refetched.
    pub(crate) generation: u64,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
    pub(crate) fn is_empty(&self) -> bool {
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
pub(crate) fn parse_jwks(body: &[u8], warn: &mut dyn FnMut(String)) -> Result<KeySet, KeySetError> {
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
        match key_from_jwk(&raw) {
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

fn key_from_jwk(raw: &serde_json::Value) -> Result<Key, String> {
    let jwk = <Jwk as serde::Deserialize>::deserialize(raw)
        .map_err(|e| format!("unreadable JWK: {e}"))?;
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
    let thumbprint = thumbprint(raw)?;
    Ok(Key {
        kid: kid.into(),
        allowed,
        decoding,
        thumbprint,
    })
}

/// The RFC 7638 thumbprint (SHA-256) of a public JWK: the hash of the JSON object of its required
/// members only (RSA `e, kty, n`; EC `crv, kty, x, y`; OKP `crv, kty, x`), in lexicographic order,
/// without whitespace, the values as the JWK states them.
fn thumbprint(raw: &serde_json::Value) -> Result<[u8; 32], String> {
    let kty = raw
        .get("kty")
        .and_then(serde_json::Value::as_str)
        .ok_or("no kty")?;
    let members: &[&str] = match kty {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "oct" => return Err("symmetric (HMAC) keys are never accepted".into()),
        _ => return Err("unsupported key type".into()),
    };
    let mut canonical = String::from("{");
    for (i, m) in members.iter().enumerate() {
        let v = raw
            .get(*m)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("no {m:?} member"))?;
        if i > 0 {
            canonical.push(',');
        }
        // serde_json writes a &str as a JSON string with only the escapes JSON requires.
        let quoted = serde_json::to_string(v).map_err(|e| e.to_string())?;
        canonical.push_str(&format!("\"{m}\":{quoted}"));
    }
    canonical.push('}');
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Ok(out)
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
pub(crate) fn header_alg(s: &str) -> Option<Algorithm> {
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

    /// RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
    #[test]
    fn rfc7638_thumbprint() {
        let rfc = r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#;
        let (set, w) = parse(rfc);
        assert!(w.is_empty(), "{w:?}");
        let set = set.unwrap();
        let k = set.get("2011-04-29").unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(k.thumbprint),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // Only the required members count: kid, alg, use and member order do not change it.
        let v: serde_json::Value = serde_json::from_str(rfc).unwrap();
        let mut other = serde_json::json!({"e": v["e"], "n": v["n"], "kty": "RSA", "kid": "x"});
        assert_eq!(thumbprint(&other).unwrap(), k.thumbprint);
        other["e"] = "AQAC".into();
        assert_ne!(thumbprint(&other).unwrap(), k.thumbprint);
    }

    #[test]
    fn thumbprints_of_ec_and_okp_keys_use_their_members() {
        let ec = serde_json::json!({"kty":"EC","crv":"P-256","x":"AA","y":"AQ","kid":"e"});
        let mut ec2 = ec.clone();
        ec2["y"] = "Ag".into();
        assert_ne!(thumbprint(&ec).unwrap(), thumbprint(&ec2).unwrap());
        let okp = serde_json::json!({"kty":"OKP","crv":"Ed25519","x":"AA"});
        assert!(thumbprint(&okp).is_ok());
        assert!(thumbprint(&serde_json::json!({"kty":"EC","crv":"P-256","x":"AA"})).is_err());
    }

    #[test]
    fn header_algs() {
        assert_eq!(header_alg("ES384"), Some(Algorithm::ES384));
        assert_eq!(header_alg("none"), None);
        assert_eq!(header_alg("HS256"), None);
    }
}
