//! Step 1 of the request path: find the Descope session token in a request.
//!
//! `Authorization: Bearer <jwt>` (scheme case-insensitive) wins over the session cookie, as in every
//! Descope SDK. An `Authorization` header with another scheme is not ours and is ignored (the cookie
//! may still carry the session). Nothing is allocated: the token is a slice of the header.
//!
//! [`cookie_pairs`] is the one `Cookie` parser: the rewrite step strips with it, so what is found
//! here and what is removed there can never disagree (a non-UTF-8 byte in another cookie once
//! made them).

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;

/// Where the session token was found; the rewrite step needs to know what to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Bearer,
    Cookie,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    pub token: &'a str,
    pub source: Source,
}

/// The session token of a request, if it carries one.
pub fn session_token<'a>(headers: &'a HeaderMap, session_cookie: &str) -> Option<Found<'a>> {
    if let Some(token) = headers
        .get(AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
    {
        return Some(Found {
            token,
            source: Source::Bearer,
        });
    }
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|v| cookie(v.as_bytes(), session_cookie))
        .map(|token| Found {
            token,
            source: Source::Cookie,
        })
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive; spaces or tabs
/// around the token, as backends that split on any whitespace read it).
pub fn bearer(v: &[u8]) -> Option<&str> {
    let rest = bearer_credentials(v)?;
    let start = rest.iter().position(|&b| !is_space(b))?;
    let end = rest.iter().rposition(|&b| !is_space(b))?;
    std::str::from_utf8(&rest[start..=end]).ok()
}

/// Whitespace as backends split a credential on it (Python's `bytes.split()` in Django REST
/// framework takes vertical tab and form feed too); CR and LF cannot be in a header value.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\x0b' | b'\x0c')
}

/// Whether an `Authorization` value uses the Bearer scheme, whatever follows: such a credential is
/// never forwarded on an `auth: required` route. Looks at the scheme only (the token's bytes are
/// read once, by [`session_token`]).
pub(crate) fn has_bearer_scheme(v: &[u8]) -> bool {
    bearer_credentials(v).is_some()
}

/// The one Bearer parser: what follows the `Bearer` scheme (any case, after optional leading
/// whitespace, then at least one space, tab, vertical tab or form feed, or nothing), untrimmed. [`bearer`] and
/// [`has_bearer_scheme`] both read through it, so the value that is checked on one route is the
/// value that is found on another (`Bearer<TAB><session>` once passed `auth: none` routes).
fn bearer_credentials(v: &[u8]) -> Option<&[u8]> {
    let start = v.iter().position(|&b| !is_space(b)).unwrap_or(v.len());
    let (scheme, rest) = v[start..].split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    rest.first().is_none_or(|&b| is_space(b)).then_some(rest)
}

/// Whether a JWT's (unverified) payload has an `iss` for which `is_ours` holds: enough to know a
/// Bearer is a Descope session that must not reach a backend, never enough to trust it.
pub(crate) fn unverified_issuer_is(token: &str, is_ours: impl Fn(&str) -> bool) -> bool {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Iss<'a> {
        #[serde(borrow)]
        iss: Option<std::borrow::Cow<'a, str>>,
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| {
            serde_json::from_slice::<Iss>(&b)
                .ok()
                .and_then(|i| i.iss.map(|s| is_ours(&s)))
        })
        .unwrap_or(false)
}

/// Whether a JWT's (unverified) payload has the string claim `name` equal to `value`; like
/// [`unverified_issuer_is`], for a token whose signature was checked, or to decide nothing.
pub(crate) fn unverified_claim_is(token: &str, name: &str, value: &str) -> bool {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b).ok())
        .is_some_and(|c| c.get(name).and_then(|v| v.as_str()) == Some(value))
}

/// The value of cookie `name` in the request's `Cookie` headers (the first non-empty one).
pub(crate) fn named_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|v| cookie(v.as_bytes(), name))
}

/// The value of cookie `name` in one `Cookie` header (`a=1; DS=...; b=2`): the first non-empty
/// one, quotes removed; `None` unless it is ASCII.
fn cookie<'a>(v: &'a [u8], name: &str) -> Option<&'a str> {
    cookie_pairs(v).find_map(|p| {
        if p.name != name.as_bytes() {
            return None;
        }
        let val = p.value.strip_prefix(b"\"").unwrap_or(p.value);
        let val = val.strip_suffix(b"\"").unwrap_or(val);
        std::str::from_utf8(val).ok().filter(|t| !t.is_empty())
    })
}

/// One `name=value` of a `Cookie` header; `raw` is the whole pair, trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CookiePair<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) name: &'a [u8],
    pub(crate) value: &'a [u8],
}

/// The pairs of one `Cookie` header value, byte by byte (any byte but `;` may be in a value);
/// empty pieces are skipped. A piece without `=` is a name with an empty value.
pub(crate) fn cookie_pairs(v: &[u8]) -> impl Iterator<Item = CookiePair<'_>> {
    v.split(|&b| b == b';').filter_map(|piece| {
        let raw = trim(piece);
        if raw.is_empty() {
            return None;
        }
        let (name, value) = match raw.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&raw[..i]), trim(&raw[i + 1..])),
            None => (raw, &raw[raw.len()..]),
        };
        Some(CookiePair { raw, name, value })
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &b[..0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn the_bearer_scheme_is_recognised_whatever_follows() {
        for v in [
            "Bearer abc",
            "bearer",
            "  BEARER\tx",
            "Bearer  ",
            "bEaReR a.b.c",
        ] {
            assert!(has_bearer_scheme(v.as_bytes()), "{v:?}");
        }
        for v in ["Basic abc", "Bearerx abc", "Bear", "", "Token bearer"] {
            assert!(!has_bearer_scheme(v.as_bytes()), "{v:?}");
        }
        // Every value `bearer` reads a token from is dropped by the scheme check too.
        for v in [
            "Bearer abc",
            "bEaReR  abc",
            " Bearer x ",
            "Bearer\tabc",
            "Bearer \t abc\t",
            "Bearer\x0cabc",
        ] {
            assert!(bearer(v.as_bytes()).is_some() && has_bearer_scheme(v.as_bytes()));
        }
        assert_eq!(bearer(b"Bearer\tabc"), Some("abc"));
        assert_eq!(bearer(b"Bearer \t abc\t"), Some("abc"));
    }

    #[test]
    fn bearer_any_case_wins_over_cookie() {
        let m = h(&[
            ("authorization", "bEaReR  abc"),
            ("cookie", "DS=fromcookie"),
        ]);
        assert_eq!(
            session_token(&m, "DS"),
            Some(Found {
                token: "abc",
                source: Source::Bearer
            })
        );
    }

    #[test]
    fn cookie_among_others_and_across_headers() {
        let m = h(&[("cookie", "a=1; b=2"), ("cookie", "x=y; DS=tok; DSR=r")]);
        assert_eq!(
            session_token(&m, "DS"),
            Some(Found {
                token: "tok",
                source: Source::Cookie
            })
        );
        assert_eq!(session_token(&m, "Other"), None);
    }

    #[test]
    fn other_schemes_and_empty_values_are_not_tokens() {
        assert_eq!(
            session_token(&h(&[("authorization", "Basic dXNlcg==")]), "DS"),
            None
        );
        assert_eq!(
            session_token(&h(&[("authorization", "Bearer ")]), "DS"),
            None
        );
        assert_eq!(session_token(&h(&[("cookie", "DS=")]), "DS"), None);
        assert_eq!(session_token(&h(&[("cookie", "XDS=1")]), "DS"), None);
        let m = h(&[("authorization", "Basic x"), ("cookie", "DS=c")]);
        assert_eq!(session_token(&m, "DS").map(|f| f.token), Some("c"));
    }

    #[test]
    fn cookies_next_to_non_ascii_bytes() {
        let mut m = HeaderMap::new();
        m.append(
            "cookie",
            HeaderValue::from_bytes(b"name=caf\xc3\xa9; DS=tok; x=\xff").unwrap(),
        );
        assert_eq!(session_token(&m, "DS").map(|f| f.token), Some("tok"));
        let pairs: Vec<_> = cookie_pairs(b" a=1 ;;\tb = \"2\" ; c; =d").collect();
        let names: Vec<&[u8]> = pairs.iter().map(|p| p.name).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"c", b""]);
        assert_eq!(pairs[1].value, b"\"2\"");
        assert_eq!(pairs[1].raw, b"b = \"2\"");
    }
}
