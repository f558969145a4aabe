//! Step 4 of the request path: rewrite the request headers before it goes upstream.
//!
//! The route's header gets the external token; the Descope cookies are removed from `Cookie`
//! (others kept, the header dropped when nothing is left); a Descope session that came as
//! `Authorization: Bearer` is removed when the external token goes to another header. The legacy
//! backend never sees a Descope credential.

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, HeaderValue};

use crate::exchange::ExternalToken;

/// The header value for an external token: `scheme + " " + token`, or the bare token when the
/// scheme is empty. `None` if it would not be a valid header value (never the case for a checked
/// [`ExternalToken`], kept as a second line of defence).
pub fn auth_value(scheme: &str, token: &ExternalToken) -> Option<HeaderValue> {
    let t = token.as_str();
    if scheme.is_empty() {
        return HeaderValue::from_str(t).ok();
    }
    let mut s = String::with_capacity(scheme.len() + 1 + t.len());
    s.push_str(scheme);
    s.push(' ');
    s.push_str(t);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
}

/// Removes cookies named in `strip` from a `Cookie` header value. `None` means "drop the header";
/// `Some(unchanged)` is returned as-is when nothing matched, to avoid reallocating.
pub fn strip_cookies(value: &HeaderValue, strip: &[String]) -> Option<HeaderValue> {
    let Ok(s) = value.to_str() else {
        // Not ASCII: cannot contain our (token-named) cookies in a form we can parse; keep it.
        return Some(value.clone());
    };
    let is_stripped = |pair: &str| {
        let name = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair).trim();
        strip.iter().any(|c| c == name)
    };
    if !s.split(';').any(is_stripped) {
        return Some(value.clone());
    }
    let kept: Vec<&str> = s
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !is_stripped(p))
        .collect();
    if kept.is_empty() {
        None
    } else {
        HeaderValue::from_str(&kept.join("; ")).ok()
    }
}

/// What to do to a request's headers; computed by the gateway, applied by the proxy.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub header: HeaderName,
    pub value: HeaderValue,
    /// The session arrived as `Authorization: Bearer` and `header` is another header.
    pub drop_bearer: bool,
    /// The cache entry the token came from, to evict if the upstream answers 401.
    pub evict: Option<crate::exchange::CacheKey>,
}

/// Applies a rewrite to a header set. Generic over the setter so it serves pingora's
/// `RequestHeader` and plain `http::HeaderMap` (tests, benches) alike.
pub fn apply<H: Headers>(req: &mut H, rw: &Rewrite, strip: &[String]) {
    if rw.drop_bearer {
        req.remove(&AUTHORIZATION);
    }
    req.set(rw.header.clone(), rw.value.clone());
    if !strip.is_empty() {
        strip_cookie_headers(req, strip);
    }
}

fn strip_cookie_headers<H: Headers>(req: &mut H, strip: &[String]) {
    let cookies = req.get_all(&COOKIE);
    if cookies.is_empty() {
        return;
    }
    let kept: Vec<HeaderValue> = cookies
        .iter()
        .filter_map(|v| strip_cookies(v, strip))
        .collect();
    if kept.len() == cookies.len() && kept.iter().zip(&cookies).all(|(a, b)| a == b) {
        return;
    }
    req.remove(&COOKIE);
    for v in kept {
        req.append(COOKIE, v);
    }
}

/// The few header operations the rewrite needs.
pub trait Headers {
    fn get_all(&self, name: &HeaderName) -> Vec<HeaderValue>;
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    fn append(&mut self, name: HeaderName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
}

impl Headers for http::HeaderMap {
    fn get_all(&self, name: &HeaderName) -> Vec<HeaderValue> {
        http::HeaderMap::get_all(self, name)
            .iter()
            .cloned()
            .collect()
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        http::HeaderMap::append(self, name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        http::HeaderMap::remove(self, name);
    }
}

impl Headers for pingora::http::RequestHeader {
    fn get_all(&self, name: &HeaderName) -> Vec<HeaderValue> {
        self.headers.get_all(name).iter().cloned().collect()
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        // Only fails for invalid names/values, which both types rule out.
        let _ = self.insert_header(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.append_header(name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn strip() -> Vec<String> {
        vec!["DS".into(), "DSR".into()]
    }

    #[test]
    fn strips_only_descope_cookies() {
        let v = HeaderValue::from_static("a=1; DS=x; b=2;DSR=y");
        assert_eq!(strip_cookies(&v, &strip()).unwrap(), "a=1; b=2");
        assert_eq!(
            strip_cookies(&HeaderValue::from_static("DS=x; DSR=y"), &strip()),
            None
        );
        let keep = HeaderValue::from_static("DSX=1; xDS=2");
        assert_eq!(strip_cookies(&keep, &strip()).unwrap(), keep);
    }

    #[test]
    fn apply_sets_header_and_cleans_cookies() {
        let mut m = HeaderMap::new();
        m.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer descope-jwt"),
        );
        m.append(COOKIE, HeaderValue::from_static("DS=x"));
        m.append(COOKIE, HeaderValue::from_static("theme=dark; DSR=y"));
        let tok = ExternalToken::new("legacy.token").unwrap();
        let rw = Rewrite {
            header: HeaderName::from_static("x-legacy"),
            value: auth_value("", &tok).unwrap(),
            drop_bearer: true,
            evict: None,
        };
        apply(&mut m, &rw, &strip());
        assert_eq!(m.get("x-legacy").unwrap(), "legacy.token");
        assert!(m.get(AUTHORIZATION).is_none());
        let cookies: Vec<_> = m.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, vec!["theme=dark"]);
    }

    #[test]
    fn auth_value_with_scheme() {
        let tok = ExternalToken::new("abc").unwrap();
        assert_eq!(auth_value("Bearer", &tok).unwrap(), "Bearer abc");
    }
}
