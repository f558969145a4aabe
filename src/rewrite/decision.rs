//! The same upstream-header decision as [`super::apply`], given to an ingress instead of made on a
//! request: in decision mode the ingress forwards the request, so an allow says which headers it
//! must set and which it must remove (see `crate::decision`).
//!
//! Host, forwarding headers and the request id stay the ingress's own: only the credentials
//! (token, identity headers, cookies, `Authorization`) are decided here, with the same helpers
//! the proxy uses, so the two modes cannot disagree on what a backend receives.

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{strip_cookie_headers, strip_identity_headers, Headers, Plan};

/// What an ingress must do to the request it forwards after an allow.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Forward {
    /// Set (replacing the client's): the external token, identity headers, the `Cookie` left
    /// after the Descope cookies are removed, a kept `Authorization`.
    pub(crate) set: Vec<(HeaderName, HeaderValue)>,
    /// Removed: every route's identity header names and their `_` twins, a dropped
    /// `Authorization`, a `Cookie` with nothing left; never a name in `set`.
    pub(crate) remove: Vec<HeaderName>,
}

/// The credentials part of `plan` applied to `original` (the client's headers as the ingress
/// passed them), as a [`Forward`]. `plan.host`, `plan.peer` and `plan.request_id` are not read.
pub(crate) fn forward(original: &HeaderMap, plan: &Plan<'_>) -> Forward {
    let mut after = original.clone();
    if plan.drop_underscore_headers {
        after.remove_where(&|n: &HeaderName| n.as_str().contains('_'));
    }
    strip_identity_headers(&mut after, plan);
    if plan.drop_authorization {
        Headers::remove(&mut after, &AUTHORIZATION);
    }
    if !plan.strip_cookies.is_empty() {
        strip_cookie_headers(&mut after, plan.strip_cookies);
    }
    let mut set = Vec::new();
    if let Some(rw) = plan.token {
        set.push((rw.header.clone(), rw.value.clone()));
        set.extend(rw.identity.iter().cloned());
    }
    // Ingresses replace the client's `Cookie` with the allow's (nginx `proxy_set_header`, Traefik
    // `authResponseHeaders`), so the cookies that may pass are always sent back, changed or not.
    if let Some(c) = joined_cookies(&after) {
        set.push((COOKIE, c));
    }
    // Likewise a client `Authorization` the proxy would keep (not a Bearer on an `auth: required`
    // route, not a Descope session on an `auth: none` one).
    if let Some(a) = after.get(AUTHORIZATION) {
        if !set.iter().any(|(n, _)| n == AUTHORIZATION) {
            set.push((AUTHORIZATION, a.clone()));
        }
    }
    let mut remove: Vec<HeaderName> = original
        .keys()
        .filter(|n| !after.contains_key(*n))
        .cloned()
        .collect();
    // Also the names the ingress did not pass to us (Envoy passes only `allowed_headers`): the
    // request it forwards may still carry them.
    let always = plan.strip_headers.iter().chain([&COOKIE, &AUTHORIZATION]);
    for n in always {
        if !remove.contains(n) {
            remove.push(n.clone());
        }
    }
    remove.retain(|n| !set.iter().any(|(s, _)| s == n));
    Forward { set, remove }
}

/// Every `Cookie` line joined with `; ` (RFC 6265 §5.4: one header on HTTP/1.1), or `None`.
fn joined_cookies(h: &HeaderMap) -> Option<HeaderValue> {
    let mut out: Vec<u8> = Vec::new();
    for v in h.get_all(COOKIE) {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    // Joined valid values are a valid value.
    (!out.is_empty())
        .then(|| HeaderValue::from_bytes(&out).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::{Peer, Rewrite};

    fn plan<'a>(
        token: Option<&'a Rewrite>,
        drop_authorization: bool,
        cookies: &'a [String],
        names: &'a [HeaderName],
        host: &'a HeaderValue,
    ) -> Plan<'a> {
        Plan {
            host,
            token,
            drop_authorization,
            strip_cookies: cookies,
            strip_headers: names,
            drop_underscore_headers: false,
            peer: Peer::new(None, None, &[]),
            request_id: None,
            traceparent: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(v: &[HeaderName]) -> Vec<&str> {
        v.iter().map(HeaderName::as_str).collect()
    }

    #[test]
    fn an_allow_sets_token_identity_and_cookies_and_removes_the_rest() {
        let rw = Rewrite {
            header: AUTHORIZATION,
            value: HeaderValue::from_static("Bearer ext"),
            cache_key: None,
            identity: vec![(
                HeaderName::from_static("x-user-id"),
                HeaderValue::from_static("U1"),
            )],
            session_exp: u64::MAX,
            set_cookie: vec![],
        };
        let cookies = ["DS".to_string(), "DSR".to_string()];
        let ids = [
            HeaderName::from_static("x-user-id"),
            HeaderName::from_static("x-tenant"),
        ];
        let host = HeaderValue::from_static("h");
        let original = headers(&[
            ("authorization", "Bearer session"),
            ("cookie", "DS=s; a=1"),
            ("cookie", "DSR=r; b=2"),
            ("x-user-id", "spoofed"),
            ("x_user_id", "spoofed"),
            ("x-other", "kept"),
        ]);
        let f = forward(&original, &plan(Some(&rw), true, &cookies, &ids, &host));
        let set: Vec<(&str, &str)> = f
            .set
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            set,
            [
                ("authorization", "Bearer ext"),
                ("x-user-id", "U1"),
                ("cookie", "a=1; b=2")
            ]
        );
        assert_eq!(names(&f.remove), ["x_user_id", "x-tenant"]);
    }

    #[test]
    fn nothing_left_to_forward_is_removed() {
        let cookies = ["DS".to_string()];
        let host = HeaderValue::from_static("h");
        let original = headers(&[("cookie", "DS=s"), ("authorization", "Basic abc")]);
        let f = forward(&original, &plan(None, false, &cookies, &[], &host));
        assert_eq!(
            f.set,
            [(AUTHORIZATION, HeaderValue::from_static("Basic abc"))]
        );
        assert_eq!(names(&f.remove), ["cookie"]);
        let f = forward(&original, &plan(None, true, &cookies, &[], &host));
        assert!(f.set.is_empty());
        assert_eq!(names(&f.remove), ["cookie", "authorization"]);
    }
}
