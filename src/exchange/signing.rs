//! Keys the gateway signs with (Supabase, Firebase, jwt connectors): loaded and test-signed at
//! start, so a wrong key is a config error, not a 503 on the first request.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

pub(crate) struct Signer {
    pub(crate) alg: Algorithm,
    key: EncodingKey,
    pub(crate) kid: Option<String>,
    /// The public half, for the JWKS the gateway publishes (asymmetric keys only).
    pub(crate) public: Option<Jwk>,
}

impl Signer {
    /// HS256 with a shared secret; no `kid` (PostgREST rejects a kid with a plain secret).
    pub(crate) fn hs256(secret: &str) -> Signer {
        Signer {
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret.as_bytes()),
            kid: None,
            public: None,
        }
    }

    /// An RS256 key from PEM text (a Firebase service account's `private_key`).
    pub(crate) fn rsa_pem(pem: &str, kid: Option<String>) -> Result<Signer, String> {
        let key = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| format!("not an RSA private key: {e}"))?;
        Self::finish(Algorithm::RS256, key, kid)
    }

    /// A private key file: PEM (PKCS#8, PKCS#1 or SEC1) or a private JWK (EC P-256). `want`
    /// lists the algorithms acceptable for this connector, in order of preference.
    /// Also returns the exact bytes the key was made from (read once), for the connector's cache
    /// fingerprint: a key file replaced in place then changes the fingerprint on reload.
    pub(crate) fn from_file(
        path: &Path,
        kid: Option<String>,
        want: &[Algorithm],
    ) -> Result<(Signer, Vec<u8>), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let signer = Self::from_text(&text, path, kid, want)?;
        Ok((signer, text.into_bytes()))
    }

    fn from_text(
        text: &str,
        path: &Path,
        kid: Option<String>,
        want: &[Algorithm],
    ) -> Result<Signer, String> {
        if text.trim_start().starts_with('{') {
            return Self::from_private_jwk(text, kid, want);
        }
        for &alg in want {
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(text.as_bytes()),
                Algorithm::ES256 => {
                    EncodingKey::from_ec_pem(text.as_bytes()).or_else(|e| sec1_p256(text).ok_or(e))
                }
                Algorithm::EdDSA => EncodingKey::from_ed_pem(text.as_bytes()),
                _ => continue,
            };
            if let Ok(key) = key {
                if let Ok(s) = Self::finish(alg, key, kid.clone()) {
                    return Ok(s);
                }
            }
        }
        Err(format!(
            "{} is not a PEM private key for {}",
            path.display(),
            names(want)
        ))
    }

    fn from_private_jwk(
        text: &str,
        kid: Option<String>,
        want: &[Algorithm],
    ) -> Result<Signer, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not a JWK: {e}"))?;
        let field = |k: &str| -> Result<Vec<u8>, String> {
            let s = v
                .get(k)
                .and_then(Value::as_str)
                .ok_or(format!("JWK has no {k:?}"))?;
            URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|_| format!("JWK {k:?} is not base64url"))
        };
        let (kty, crv) = (
            v.get("kty").and_then(Value::as_str),
            v.get("crv").and_then(Value::as_str),
        );
        let kid = kid.or_else(|| v.get("kid").and_then(Value::as_str).map(str::to_string));
        if kty == Some("RSA") && want.contains(&Algorithm::RS256) {
            let mut parts = Vec::with_capacity(8);
            for k in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
                parts.push(field(k)?);
            }
            let der = rsa_private_key_der(&parts);
            return Self::finish(Algorithm::RS256, EncodingKey::from_rsa_der(&der), kid);
        }
        if (kty, crv) != (Some("EC"), Some("P-256")) || !want.contains(&Algorithm::ES256) {
            return Err(format!(
                "private JWKs must be EC P-256 or RSA, for {}",
                names(want)
            ));
        }
        let (d, x, y) = (field("d")?, field("x")?, field("y")?);
        let mut public = vec![0x04];
        public.extend_from_slice(&x);
        public.extend_from_slice(&y);
        let kp = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &d,
            &public,
        )
        .map_err(|_| "the JWK's d, x and y are not one P-256 key pair".to_string())?;
        let der = kp
            .to_pkcs8v1()
            .map_err(|_| "cannot encode the JWK as PKCS#8".to_string())?;
        Self::finish(
            Algorithm::ES256,
            EncodingKey::from_ec_der(der.as_ref()),
            kid,
        )
    }

    fn finish(alg: Algorithm, key: EncodingKey, kid: Option<String>) -> Result<Signer, String> {
        let mut jwk =
            Jwk::from_encoding_key(&key, alg).map_err(|e| format!("unusable key: {e}"))?;
        let kid = match kid {
            Some(k) => k,
            None => jwk
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(|e| e.to_string())?,
        };
        jwk.common.key_id = Some(kid.clone());
        jwk.common.key_algorithm = KeyAlgorithm::from_str_opt(alg);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let s = Signer {
            alg,
            key,
            kid: Some(kid),
            public: Some(jwk),
        };
        s.sign(&Map::new())
            .map_err(|e| format!("the key cannot sign {alg:?}: {e}"))?;
        Ok(s)
    }

    /// Signs `claims` as connector `connector`'s token, good for `lifetime`.
    pub(crate) fn mint(
        &self,
        connector: &str,
        claims: &Map<String, Value>,
        lifetime: std::time::Duration,
    ) -> Result<super::Minted, super::ExchangeError> {
        let fail = |m: String| super::ExchangeError::unavailable(connector, m);
        let token = self.sign(claims).map_err(fail)?;
        Ok(super::Minted {
            token: super::ExternalToken::new(token)
                .ok_or_else(|| fail("signed token is not ASCII".into()))?,
            lifetime,
        })
    }

    /// Signs claims with header `{alg, typ: JWT, kid?}`.
    pub(crate) fn sign(&self, claims: &Map<String, Value>) -> Result<String, String> {
        self.sign_typed("JWT", claims)
    }

    /// Signs claims with header `{alg, typ, kid?}`: another `typ` keeps a token made for one
    /// purpose from passing as one made for another (RFC 8725 §3.11).
    pub(crate) fn sign_typed(
        &self,
        typ: &str,
        claims: &Map<String, Value>,
    ) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.to_string());
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| e.to_string())
    }
}

trait FromAlg {
    fn from_str_opt(alg: Algorithm) -> Option<KeyAlgorithm>;
}
impl FromAlg for KeyAlgorithm {
    fn from_str_opt(alg: Algorithm) -> Option<KeyAlgorithm> {
        format!("{alg:?}").parse().ok()
    }
}

fn names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// An `EC PRIVATE KEY` (SEC1, what `openssl ecparam -genkey` writes) P-256 PEM as a PKCS#8 key.
fn sec1_p256(pem: &str) -> Option<EncodingKey> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN EC PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let kp = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
    )
    .ok()?;
    Some(EncodingKey::from_ec_der(kp.to_pkcs8v1().ok()?.as_ref()))
}

/// PKCS#1 `RSAPrivateKey` DER from the JWK members n, e, d, p, q, dp, dq, qi (RFC 8017 A.1.2).
fn rsa_private_key_der(parts: &[Vec<u8>]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn integer(out: &mut Vec<u8>, mag: &[u8]) {
        let mag: Vec<u8> = mag.iter().copied().skip_while(|b| *b == 0).collect();
        let pad = mag.first().is_none_or(|b| b & 0x80 != 0);
        out.push(0x02);
        len(out, mag.len() + pad as usize);
        if pad {
            out.push(0);
        }
        out.extend(mag);
    }
    let mut body = Vec::new();
    integer(&mut body, &[0]); // version
    for p in parts {
        integer(&mut body, p);
    }
    let mut out = vec![0x30];
    len(&mut out, body.len());
    out.extend(body);
    out
}
