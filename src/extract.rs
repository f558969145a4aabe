//! Step 1 of the request path: find the Descope session token in a request.
//!
//! `Authorization: Bearer <jwt>` (scheme case-insensitive) wins over the session cookie, as in every
//! Descope SDK. An `Authorization` header with another scheme is not ours and is ignored (the cookie
//! may still carry the session). Nothing is allocated: the token is a slice of the header.

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

fn bearer(v: &[u8]) -> Option<&str> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start();
    (!token.is_empty()).then_some(token)
}

/// The value of cookie `name` in one `Cookie` header (`a=1; DS=...; b=2`).
fn cookie<'a>(v: &'a [u8], name: &str) -> Option<&'a str> {
    let v = std::str::from_utf8(v).ok()?;
    v.split(';').find_map(|pair| {
        let (k, val) = pair.split_once('=')?;
        (k.trim() == name)
            .then(|| val.trim().trim_matches('"'))
            .filter(|t| !t.is_empty())
    })
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
}
