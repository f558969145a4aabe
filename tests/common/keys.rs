//! Keys and tokens: [`TestKey`] (RSA / EC P-256 / Ed25519 keys generated at test time, their
//! JWKs, and a signer that takes any header, so tests can forge `alg`, `kid`, signatures), the
//! key set of some keys ([`jwks`]), and Descope-shaped session claims ([`session_claims`],
//! [`with`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Map, Value};

use super::net::now;

/// The description of a valid session that lacks the `externalToken` claim.
pub const NO_EXTERNAL_TOKEN: &str = "session has no usable externalToken claim";
/// The description of a valid session whose `externalToken` may not go in a header.
pub const BAD_EXTERNAL_TOKEN: &str = "session's externalToken claim is not usable";

/// A signing key made at test time, with its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

/// base64url without padding, as JWTs and JWKs use it.
pub fn base64_url(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

impl TestKey {
    /// A fresh RSA-2048 key whose JWK says `alg` (an RS* or PS* algorithm).
    pub fn rsa(kid: &str, alg: Algorithm) -> TestKey {
        let pem = extoken::mint::generate_pem().unwrap();
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, alg).unwrap(),
        )
        .unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        TestKey {
            kid: kid.into(),
            alg,
            encoding,
            jwk,
        }
    }

    /// A fresh EC P-256 key (ES256).
    pub fn es256(kid: &str) -> TestKey {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = kp.public_key().as_ref(); // 0x04 || x || y
        assert_eq!(point.len(), 65);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": base64_url(&point[1..33]), "y": base64_url(&point[33..]),
        });
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        }
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> TestKey {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8v1(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.as_ref()).unwrap();
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
            "x": base64_url(kp.public_key().as_ref()),
        });
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk,
        }
    }

    /// A token signed with this key's own `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(
            &json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"}),
            self.alg,
            claims,
        )
    }

    /// A token with any header, signed with this key using `alg`.
    pub fn sign_with(&self, header: &Value, alg: Algorithm, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            base64_url(header.to_string().as_bytes()),
            base64_url(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, alg).unwrap();
        format!("{input}.{sig}")
    }

    /// A token the gateway answers 503 while it has no keys and 401 (bad signature) once it has
    /// this key: for [`GatewayProcess::wait_keys`](super::process::GatewayProcess::wait_keys).
    /// Never reaches a backend, never cached.
    pub fn probe_token(&self) -> String {
        let header = json!({"alg": alg_name(self.alg), "kid": self.kid});
        format!(
            "{}.{}.{}",
            base64_url(header.to_string().as_bytes()),
            base64_url(b"{}"),
            base64_url(b"not a signature")
        )
    }
}

/// The JOSE name of an algorithm.
pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        other => panic!("no name for {other:?}"),
    }
}

/// `{"keys":[...]}` for these keys.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Descope-shaped session claims: `iss` = project, 10 minutes of life, `drn` DS, and the
/// `externalToken` claim when `ext` is given.
pub fn session_claims(project: &str, ext: Option<&str>) -> Value {
    let now = now();
    let mut c = Map::new();
    c.insert("iss".into(), project.into());
    c.insert("sub".into(), "U2testUser".into());
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), (now + 600).into());
    c.insert("drn".into(), "DS".into());
    c.insert("amr".into(), json!(["email"]));
    if let Some(e) = ext {
        c.insert("externalToken".into(), e.into());
    }
    Value::Object(c)
}

/// `claims` with `key` set to `value` (or removed when `value` is null).
pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    let m = claims.as_object_mut().unwrap();
    if value.is_null() {
        m.remove(key);
    } else {
        m.insert(key.into(), value);
    }
    claims
}
