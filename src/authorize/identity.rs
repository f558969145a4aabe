//! A route's `identity_headers`: which claims the backend is told, under which header names, and
//! the optional signed assertion of them (`identity_headers_signed_by`).
//!
//! Values are claim values made header-safe: strings as they are, numbers and booleans as JSON
//! writes them, lists joined with `,`; objects and `null` (and a missing claim) send no header.
//! Every byte outside visible ASCII, and `%` and `,` themselves, is percent-encoded (`%XX` of the
//! UTF-8 bytes), so a value is always one valid header line, a backend can split lists on `,` and
//! decode each element, and nothing is silently dropped. The names (and the assertion's) are
//! removed from every client request on every route by `crate::rewrite`, so a backend can trust
//! them.

use http::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use super::rules::{claim_path, lookup};
use crate::config::{ConfigError, RouteConfig, DEFAULT_IDENTITY_JWS_HEADER};
use crate::verify::{ClaimSource, ClaimsKept};

/// How long a signed identity assertion is good for: one request's worth, with clock skew.
pub(crate) const ASSERTION_LIFETIME_SECS: u64 = 60;

/// An assertion is reused for the same identity while at least this much of its life is left.
const ASSERTION_REUSE_SECS: u64 = ASSERTION_LIFETIME_SECS / 2;

/// Signed assertions by exactly what they assert (route and header values): a signature (RSA
/// above all) would be the costliest step of a request, so a user's requests share one for half
/// its lifetime. One per
/// gateway, so a reload (perhaps with another key) starts afresh.
pub(crate) struct Assertions {
    signed: moka::sync::Cache<Box<str>, (HeaderValue, u64)>,
}

impl Assertions {
    pub(crate) fn new(entries: u64) -> Assertions {
        Assertions {
            signed: moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_live(std::time::Duration::from_secs(ASSERTION_REUSE_SECS))
                .build(),
        }
    }

    /// The assertion of `values` for `signed`'s route at `now`: a remembered one with at least
    /// half its life left, else a fresh one from `sign` (given the claims to sign).
    pub(crate) fn get_or_sign(
        &self,
        signed: &SignedBy,
        values: &[(HeaderName, HeaderValue)],
        now: u64,
        sign: impl FnOnce(Map<String, Value>) -> Result<String, String>,
    ) -> Result<HeaderValue, String> {
        // Names and values are visible ASCII: `\n` cannot occur in them, so the key is exact.
        let mut key = String::with_capacity(64);
        key.push_str(&signed.connector);
        key.push('\n');
        key.push_str(&signed.audience);
        for (n, v) in values {
            key.push('\n');
            key.push_str(n.as_str());
            key.push(':');
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        if let Some((jws, iat)) = self.signed.get(key.as_str()) {
            if now < iat.saturating_add(ASSERTION_REUSE_SECS) && now >= iat {
                return Ok(jws);
            }
        }
        let jws = sign(IdentityHeaders::assertion_claims(signed, values, now))?;
        let jws = HeaderValue::from_maybe_shared(bytes::Bytes::from(jws))
            .map_err(|_| "the signed assertion is not a header value".to_string())?;
        self.signed.insert(key.into(), (jws.clone(), now));
        Ok(jws)
    }
}

/// Headers extoken itself owns or that change how a message is framed: never identity headers.
/// The forwarding family (`crate::rewrite`'s, which removes or sets all of it) is owned too: an
/// identity header of that name would be dropped from an untrusted peer's request.
const RESERVED: [&str; 30] = [
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-request-id",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-rewrite-url",
];

/// A dotted claim path, split.
type ClaimPath = Box<[Box<str>]>;

/// The compiled identity headers of one route.
#[derive(Debug)]
pub(crate) struct IdentityHeaders {
    headers: Box<[(HeaderName, ClaimPath)]>,
    signed: Option<SignedBy>,
}

/// `identity_headers_signed_by`: the `jwt` connector whose key signs, and where the JWS goes.
#[derive(Debug)]
pub(crate) struct SignedBy {
    pub(crate) connector: Box<str>,
    pub(crate) header: HeaderName,
    /// `aud` of the assertion: the route's name, so one route's assertion is not another's.
    audience: Box<str>,
}

impl IdentityHeaders {
    /// `None` when the route sends no identity headers. `path` is `routes[i]`, `route` the route's
    /// name (the assertion's audience). The connector's type was checked by the config.
    pub(crate) fn compile(
        r: &RouteConfig,
        route: &str,
        path: &str,
    ) -> Result<Option<IdentityHeaders>, ConfigError> {
        let Some(map) = &r.identity_headers else {
            return Ok(None);
        };
        let key = format!("{path}.identity_headers");
        if map.is_empty() {
            return Err(ConfigError::key(key, "no header given (leave it out)"));
        }
        let mut headers: Vec<(HeaderName, ClaimPath)> = Vec::with_capacity(map.len());
        for (name, claim) in map {
            let k = format!("{key}.{name}");
            let h = header_name(name, r, &headers).map_err(|m| ConfigError::key(&k, m))?;
            let p = claim_path(claim).map_err(|m| ConfigError::key(&k, m))?;
            headers.push((h, p));
        }
        let signed = match &r.identity_headers_signed_by {
            None => None,
            Some(connector) => {
                let k = format!("{path}.identity_jws_header");
                let name = r.identity_jws_header.as_deref();
                let name = name.unwrap_or(DEFAULT_IDENTITY_JWS_HEADER);
                let header = header_name(name, r, &headers).map_err(|m| ConfigError::key(k, m))?;
                Some(SignedBy {
                    connector: connector.as_str().into(),
                    header,
                    audience: route.into(),
                })
            }
        };
        Ok(Some(IdentityHeaders {
            headers: headers.into(),
            signed,
        }))
    }

    /// Every header name this route sets (the assertion's too): clients may not send them.
    pub(crate) fn names(&self) -> impl Iterator<Item = &HeaderName> {
        let jws = self.signed.as_ref().map(|s| &s.header);
        self.headers.iter().map(|(h, _)| h).chain(jws)
    }

    /// Adds the session claims these headers read to `kept`.
    pub(crate) fn claims_read(&self, kept: &mut ClaimsKept) {
        for (_, path) in self.headers.iter() {
            if let Some(top) = path.first() {
                kept.read_name(top);
            }
        }
    }

    pub(crate) fn signed_by(&self) -> Option<&SignedBy> {
        self.signed.as_ref()
    }

    /// The headers for a session with these claims (those whose claim is missing are left out).
    pub(crate) fn values<C: ClaimSource + ?Sized>(
        &self,
        claims: &C,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.headers.len() + 1);
        for (name, path) in self.headers.iter() {
            let Some(v) = lookup(claims, path).and_then(render) else {
                continue;
            };
            // `render` writes visible ASCII only, which is always a valid value.
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)) {
                out.push((name.clone(), v));
            }
        }
        out
    }

    /// The claims of the signed assertion of `values` at `now` (its issuer is added by the
    /// signer): `aud` the route, `iat`/`exp`, and `hdr`, each header (lower-case name) with the
    /// exact value the backend receives, so it can compare them one by one.
    pub(crate) fn assertion_claims(
        signed: &SignedBy,
        values: &[(HeaderName, HeaderValue)],
        now: u64,
    ) -> Map<String, Value> {
        let hdr: Map<String, Value> = values
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_string(), Value::String(v))
            })
            .collect();
        let claims = json!({
            "aud": &*signed.audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
            "hdr": hdr,
        });
        match claims {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

/// A header name usable for identity: a valid name, lower-case unique, not one extoken owns or
/// one that frames the message, without `_` (backends read it as `-`, and it is dropped).
fn header_name(
    name: &str,
    r: &RouteConfig,
    taken: &[(HeaderName, ClaimPath)],
) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    if name.contains('_') {
        return Err(format!("{name:?}: use - rather than _ in header names"));
    }
    if RESERVED.contains(&h.as_str()) || h == r.header {
        return Err(format!(
            "{name:?} is a header extoken sets or must not change"
        ));
    }
    if taken.iter().any(|(t, _)| *t == h) {
        return Err(format!("{name:?} is given twice"));
    }
    Ok(h)
}

/// A claim value as header text: see the module comment. `None`: no header.
fn render(v: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match v {
        Value::Array(items) => {
            let mut first = true;
            for item in items {
                if !matches!(item, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                scalar(item, &mut out);
            }
        }
        Value::Null | Value::Object(_) => return None,
        v => scalar(v, &mut out),
    }
    Some(out)
}

fn scalar(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::String(s) => encode(s.as_bytes(), out),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        _ => {}
    }
}

/// Percent-encodes every byte outside visible ASCII, and `%` and `,`.
pub(crate) fn encode(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'%' && b != b',' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}
