//! `extoken mint`: Descope-shaped session tokens from a local development key.
//!
//! For demos, tests and load tests only: the key is an RSA-2048 key in a PEM file (created on first
//! use, mode 0600), and its public JWKS sits beside it (`<key>.jwks.json`) so a gateway can be
//! pointed at it with `jwks_file` or have it served. Tokens mirror Descope's: RS256, `kid`, `iss` =
//! project id, `sub`, `iat`, `exp`, `drn`, `amr`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot read or write {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is not an RSA private key in PEM: {1}")]
    BadKey(PathBuf, String),
    #[error("key generation failed")]
    KeyGen,
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("invalid --claim {0:?}: expected key=JSON, e.g. tenant=\"t1\" or roles=[\"admin\"]")]
    BadClaim(String),
}

/// A development signing key and its public key set.
pub struct DevKey {
    encoding: EncodingKey,
    pub kid: String,
    /// `{"keys":[...]}`, as a Descope `/v2/keys/<project>` endpoint returns it.
    pub jwks: String,
}

/// The JWKS file that sits beside a key file: `dev-key.pem` → `dev-key.jwks.json`.
pub fn jwks_path(key: &Path) -> PathBuf {
    key.with_extension("jwks.json")
}

impl DevKey {
    /// Loads the key at `path`, creating it (and its JWKS beside it) when absent.
    pub fn load_or_create(path: &Path) -> Result<DevKey, MintError> {
        let io = |e| MintError::Io(path.to_owned(), e);
        let pem = match std::fs::read(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pem = generate_pem()?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, pem.as_bytes()).map_err(io)?;
                pem.into_bytes()
            }
            Err(e) => return Err(io(e)),
        };
        let key = Self::from_pem(&pem).map_err(|e| MintError::BadKey(path.to_owned(), e))?;
        let jp = jwks_path(path);
        if std::fs::read_to_string(&jp).ok().as_deref() != Some(key.jwks.as_str()) {
            std::fs::write(&jp, &key.jwks).map_err(|e| MintError::Io(jp.clone(), e))?;
        }
        Ok(key)
    }

    pub fn from_pem(pem: &[u8]) -> Result<DevKey, String> {
        let encoding = EncodingKey::from_rsa_pem(pem).map_err(|e| e.to_string())?;
        let mut jwk =
            Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(|e| e.to_string())?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks =
            serde_json::to_string_pretty(&JwkSet { keys: vec![jwk] }).map_err(|e| e.to_string())?;
        Ok(DevKey {
            encoding,
            kid,
            jwks,
        })
    }

    /// Signs one token.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, MintError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| MintError::Sign(e.to_string()))
    }
}

/// A fresh RSA-2048 private key as PKCS#8 PEM.
pub fn generate_pem() -> Result<String, MintError> {
    use aws_lc_rs::encoding::AsDer;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| MintError::KeyGen)?;
    let der = kp.as_der().map_err(|_| MintError::KeyGen)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(bytes)
}

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct MintOptions {
    pub project_id: String,
    /// Defaults to the project id (Descope's default `iss`).
    pub issuer: Option<String>,
    pub sub: String,
    /// Negative values mint already-expired tokens (for demos of a refusal).
    pub ttl_secs: i64,
    pub claims: Vec<(String, Value)>,
    /// `{sub}` in it is replaced by the token's subject.
    pub external_token: Option<String>,
    pub refresh: bool,
}

impl MintOptions {
    pub fn claims_for(&self, sub: &str, now: u64) -> Map<String, Value> {
        let mut c = Map::new();
        let exp = (now as i64 + self.ttl_secs).max(0);
        c.insert(
            "iss".into(),
            self.issuer
                .clone()
                .unwrap_or_else(|| self.project_id.clone())
                .into(),
        );
        c.insert("sub".into(), sub.into());
        c.insert("iat".into(), now.into());
        c.insert("exp".into(), exp.into());
        c.insert("drn".into(), if self.refresh { "DSR" } else { "DS" }.into());
        c.insert("amr".into(), serde_json::json!(["email"]));
        if let Some(t) = &self.external_token {
            c.insert("externalToken".into(), t.replace("{sub}", sub).into());
        }
        for (k, v) in &self.claims {
            c.insert(k.clone(), v.clone());
        }
        c
    }

    /// `count` tokens with distinct subjects (`sub` itself when `count` is 1).
    pub fn mint(&self, key: &DevKey, count: usize) -> Result<Vec<String>, MintError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        (0..count)
            .map(|i| {
                let sub = if count == 1 {
                    self.sub.clone()
                } else {
                    format!("{}{:06}", self.sub, i + 1)
                };
                key.sign(&self.claims_for(&sub, now))
            })
            .collect()
    }
}

/// Parses `--claim key=JSON`; a value that is not JSON is taken as a string.
pub fn parse_claim(s: &str) -> Result<(String, Value), MintError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| MintError::BadClaim(s.into()))?;
    if k.is_empty() {
        return Err(MintError::BadClaim(s.into()));
    }
    let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into()));
    Ok((k.to_string(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_shape() {
        let o = MintOptions {
            project_id: "P2x".into(),
            issuer: None,
            sub: "U2a".into(),
            ttl_secs: 600,
            claims: vec![
                parse_claim("dct=\"t1\"").unwrap(),
                parse_claim("plain=word").unwrap(),
            ],
            external_token: Some("legacy-{sub}".into()),
            refresh: false,
        };
        let c = o.claims_for("U2a", 1000);
        assert_eq!(c["iss"], "P2x");
        assert_eq!(c["exp"], 1600);
        assert_eq!(c["drn"], "DS");
        assert_eq!(c["externalToken"], "legacy-U2a");
        assert_eq!(c["dct"], "t1");
        assert_eq!(c["plain"], "word");
        assert!(parse_claim("novalue").is_err());
    }
}
