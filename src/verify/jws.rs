//! A compact JWS (`header.claims.signature`), split once: the header read, the claims segment,
//! the signing input and the signature kept as ranges of the one token.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::keys::{header_alg, Key};
use super::AuthError;

const NOT_A_JWT: AuthError = AuthError::Malformed("not a JWT");

/// The protected header members extoken reads.
#[derive(serde::Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Option<&'a str>,
    #[serde(borrow)]
    kid: Option<Cow<'a, str>>,
    crit: Option<Value>,
}

/// A token with exactly three segments and a header naming an accepted `alg` and a `kid`.
/// Owned, so the signature check can move it to the blocking pool.
#[derive(Debug)]
pub(crate) struct CompactJws {
    token: Box<str>,
    /// Start of the claims segment (after the first `.`).
    claims_start: usize,
    /// End of the signing input (the last `.`); the signature follows it.
    input_end: usize,
    pub(crate) alg: Algorithm,
    pub(crate) kid: String,
}

impl CompactJws {
    /// Splits the token and reads its header. Refuses, in this order: not three segments, a header
    /// that is not base64url JSON, a `crit` header, an `alg` extoken does not accept, no `kid`.
    pub(crate) fn parse(token: &str) -> Result<CompactJws, AuthError> {
        let input_end = token.rfind('.').ok_or(NOT_A_JWT)?;
        let header_end = token[..input_end].find('.').ok_or(NOT_A_JWT)?;
        if token[header_end + 1..input_end].contains('.') {
            return Err(NOT_A_JWT);
        }
        let (alg, kid) = read_header(&token[..header_end])?;
        Ok(CompactJws {
            token: token.into(),
            claims_start: header_end + 1,
            input_end,
            alg,
            kid,
        })
    }

    fn signing_input(&self) -> &str {
        &self.token[..self.input_end]
    }

    fn signature(&self) -> &str {
        &self.token[self.input_end + 1..]
    }

    fn claims_segment(&self) -> &str {
        &self.token[self.claims_start..self.input_end]
    }

    /// Checks the signature with `key`, then decodes the claims (CPU work: run it on the blocking
    /// pool). The caller has checked that `key` permits [`Self::alg`].
    pub(crate) fn verified_claims(&self, key: &Key) -> Result<Map<String, Value>, AuthError> {
        let input = self.signing_input().as_bytes();
        match jsonwebtoken::crypto::verify(self.signature(), input, &key.decoding, self.alg) {
            Ok(true) => {}
            _ => return Err(AuthError::BadSignature),
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(self.claims_segment())
            .map_err(|_| AuthError::Malformed("bad claims encoding"))?;
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed("bad claims"))
    }
}

/// The header's accepted `alg` and its `kid`.
fn read_header(h64: &str) -> Result<(Algorithm, String), AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(h64)
        .map_err(|_| AuthError::Malformed("bad header encoding"))?;
    let header: Header =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed("bad header"))?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed("unsupported crit header"));
    }
    let alg = header
        .alg
        .and_then(header_alg)
        .ok_or(AuthError::BadAlgorithm)?;
    let kid = header.kid.ok_or(AuthError::Malformed("no kid"))?;
    Ok((alg, kid.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(r#"{"sub":"u"}"#))
    }

    #[test]
    fn splits_once_into_ranges() {
        let t = token(r#"{"alg":"ES256","kid":"k1"}"#);
        let jws = CompactJws::parse(&t).unwrap();
        assert_eq!((jws.alg, jws.kid.as_str()), (Algorithm::ES256, "k1"));
        let (input, sig) = t.rsplit_once('.').unwrap();
        assert_eq!(jws.signing_input(), input);
        assert_eq!(jws.signature(), sig);
        assert_eq!(jws.claims_segment(), b64(r#"{"sub":"u"}"#));
        assert_eq!(&*jws.token, t);
    }

    #[test]
    fn refuses_in_order() {
        let parse = |t: &str| CompactJws::parse(t).map(|_| ());
        for t in ["", "a", "a.b", "a.b.c.d", "..."] {
            assert_eq!(parse(t), Err(NOT_A_JWT), "{t:?}");
        }
        assert_eq!(
            parse("!.e30.x"),
            Err(AuthError::Malformed("bad header encoding"))
        );
        assert_eq!(
            parse(&format!("{}.e30.x", b64("[1]"))),
            Err(AuthError::Malformed("bad header"))
        );
        let crit = token(r#"{"alg":"HS256","crit":["exp"]}"#);
        assert_eq!(
            parse(&crit),
            Err(AuthError::Malformed("unsupported crit header"))
        );
        for alg in [r#""none""#, r#""HS256""#, "null", r#""es256""#] {
            let t = token(&format!(r#"{{"alg":{alg},"kid":"k1"}}"#));
            assert_eq!(parse(&t), Err(AuthError::BadAlgorithm), "{alg}");
        }
        assert_eq!(
            parse(&token(r#"{"alg":"ES256"}"#)),
            Err(AuthError::Malformed("no kid"))
        );
    }
}
