//! The methods a request asks for besides its own: the method-override conventions many backends
//! honour. Rails (Rack::MethodOverride, in its default stack) and Express `method-override` read
//! `X-HTTP-Method-Override`; others read `X-HTTP-Method` or `X-Method-Override`; Symfony, Laravel
//! and `method-override` with a query getter read a `_method` query parameter. To such a backend a
//! `POST` carrying `X-HTTP-Method-Override: DELETE` is a `DELETE`, so `require.methods` judges
//! every one of these values like the request method. A `_method` inside a form body is out of a
//! gateway's reach (the body streams to the backend after the decision).
//!
//! Values are judged as the frameworks read them: trimmed, upper-cased, each item of a comma list
//! (a repeated header is folded into one). Header names are matched with their `_` twins too
//! (`X_HTTP_Method_Override` is the same header to CGI/WSGI backends when `underscore_headers`
//! lets it through).

use http::HeaderMap;

/// The override header names, lower-case as `HeaderName`s are.
const HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Calls `allowed` with every method the request asks for through an override, upper-cased;
/// `false` as soon as one is not allowed. Allocation-free unless a value needs upper-casing or
/// percent-decoding.
pub(crate) fn all_allowed(
    headers: &HeaderMap,
    query: &[u8],
    allowed: impl Fn(&str) -> bool,
) -> bool {
    let judged = |value: &[u8]| {
        value
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|v| !v.is_empty())
            .all(|v| match std::str::from_utf8(v) {
                Ok(s) if !s.bytes().any(|b| b.is_ascii_lowercase()) => allowed(s),
                Ok(s) => allowed(&s.to_ascii_uppercase()),
                // Not a method a framework would act on, and not one `methods` lists.
                Err(_) => false,
            })
    };
    let header_ok = headers
        .iter()
        .filter(|(name, _)| is_override_header(name.as_str()))
        .all(|(_, v)| judged(v.as_bytes()));
    header_ok && query_overrides(query).all(|v| judged(&v))
}

/// `name` is one of [`HEADERS`], or one with some `-` written as `_`.
fn is_override_header(name: &str) -> bool {
    name.starts_with("x")
        && name.contains("method")
        && HEADERS.iter().any(|h| {
            h.len() == name.len()
                && h.bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
        })
}

/// The decoded values of every `_method` parameter of a query (`&` and `;` separate pairs, as
/// some parsers still allow; names and values are percent- and `+`-decoded).
fn query_overrides(query: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    query
        .split(|&b| b == b'&' || b == b';')
        .filter(|pair| !pair.is_empty() && contains_method_name(pair))
        .filter_map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            (form_decode(name) == b"_method").then(|| form_decode(value))
        })
}

/// A cheap pre-filter: a pair that names `_method` holds `method` in some spelling, or escapes.
fn contains_method_name(pair: &[u8]) -> bool {
    pair.contains(&b'%') || pair.windows(6).any(|w| w.eq_ignore_ascii_case(b"method"))
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a malformed escape
/// is kept as written.
fn form_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                s.get(i + 1).and_then(|&b| hex(b)),
                s.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    // Two hex digits make one byte.
                    out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn allowed(m: &str) -> bool {
        matches!(m, "GET" | "POST")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn every_override_header_and_its_twins_are_judged() {
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
            "x_http_method_override",
            "X_Method-Override",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("DELETE"),
            );
            assert!(!all_allowed(&h, b"", allowed), "{name}");
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("get"),
            );
            assert!(all_allowed(&h, b"", allowed), "{name}");
        }
        // Not override headers.
        let h = headers(&[("x-http-methods", "DELETE"), ("x-method", "DELETE")]);
        assert!(all_allowed(&h, b"", allowed));
    }

    #[test]
    fn values_are_upper_cased_trimmed_and_split() {
        for v in ["delete", " Delete ", "GET, DELETE", "GET,,put"] {
            let h = headers(&[("x-http-method-override", v)]);
            assert!(!all_allowed(&h, b"", allowed), "{v:?}");
        }
        let h = headers(&[
            ("x-http-method-override", "GET"),
            ("x-http-method-override", "PUT"),
        ]);
        assert!(!all_allowed(&h, b"", allowed), "a second header line");
        let h = headers(&[("x-http-method-override", "post , get")]);
        assert!(all_allowed(&h, b"", allowed));
        let mut h = HeaderMap::new();
        h.insert(
            "x-http-method",
            HeaderValue::from_bytes(b"D\xc3\xa9LETE").unwrap(),
        );
        assert!(!all_allowed(&h, b"", allowed), "non-UTF-8 value");
    }

    #[test]
    fn the_method_query_parameter_in_every_spelling() {
        let empty = HeaderMap::new();
        for q in [
            &b"_method=DELETE"[..],
            b"a=1&_method=delete",
            b"a=1;_method=PUT",
            b"%5Fmethod=DELETE",
            b"_m%65thod=DELETE",
            b"_method=%44ELETE",
            b"_method=+DELETE+",
            b"x=1&_method=GET&_method=PATCH",
        ] {
            assert!(
                !all_allowed(&empty, q, allowed),
                "{}",
                String::from_utf8_lossy(q)
            );
        }
        for q in [
            &b""[..],
            b"_method=GET",
            b"method=DELETE",
            b"_methods=DELETE",
            b"x_method=DELETE",
            b"_method",
            b"q=%ZZ",
        ] {
            assert!(
                all_allowed(&empty, q, allowed),
                "{}",
                String::from_utf8_lossy(q)
            );
        }
    }
}
