//! Step 4 of the request path: the headers the backend receives. Every change to the upstream
//! request's headers happens here, nowhere else; so does the one change to the response's
//! (`X-Request-Id`, [`stamp_request_id`]).
//!
//! * `Host` is the canonical host (or the upstream's own with `preserve_host: false`).
//! * The route's header gets the external token (`auth: required`).
//! * No Descope credential passes: the session and refresh cookies are removed on every route
//!   (with the same parser extraction uses), every `Authorization: Bearer` on `auth: required`
//!   routes, and a Bearer Descope session on `auth: none` routes.
//! * Header names with `_` are dropped (CGI/WSGI backends read `X_Token` as `X-Token`).
//! * Identity headers: a client's copies of any route's identity header names (and their `_`
//!   twins, even with `underscore_headers: allow`) are removed on every route, then the route's
//!   own values (computed by the gateway from the verified session) are set.
//! * `X-Forwarded-*`, `X-Real-IP` and `Forwarded` say what extoken saw, and the rest of the
//!   forwarding family (`X-Original-URL`, `X-Forwarded-Prefix`, ...) is removed, unless the peer
//!   is a trusted proxy (then they are kept and the peer is appended to the chain):
//!   [`forwarding`].
//! * `X-Request-Id` is the request's id (a client's own only from a trusted proxy: the proxy
//!   decides, `crate::telemetry` keeps it).

mod forwarding;

use std::net::IpAddr;

use http::header::{AUTHORIZATION, COOKIE, HOST};
use http::{HeaderName, HeaderValue};

use crate::config::Cidr;
use crate::exchange::ExternalToken;
use crate::extract::cookie_pairs;

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

/// Removes cookies named in `strip` from a `Cookie` header value, byte-wise. `None` means "drop
/// the header"; `Some(unchanged)` is returned as-is when nothing matched, to avoid reallocating.
pub(crate) fn strip_cookies(value: &HeaderValue, strip: &[String]) -> Option<HeaderValue> {
    let v = value.as_bytes();
    let stripped = |name: &[u8]| strip.iter().any(|c| c.as_bytes() == name);
    if !cookie_pairs(v).any(|p| stripped(p.name)) {
        return Some(value.clone());
    }
    let mut kept = Vec::with_capacity(v.len());
    for p in cookie_pairs(v).filter(|p| !stripped(p.name)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(p.raw);
    }
    // The pairs are slices of a valid value, so the join is valid too.
    (!kept.is_empty())
        .then(|| HeaderValue::from_bytes(&kept).ok())
        .flatten()
}

/// The external token a request carries upstream; computed by the gateway.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub header: HeaderName,
    pub value: HeaderValue,
    /// The token and the cache entry it came from, to evict (if still that token) when the
    /// upstream answers 401.
    pub cache_key: Option<crate::exchange::TokenRef>,
    /// The route's identity headers for this session (and their signed assertion).
    pub identity: Vec<(HeaderName, HeaderValue)>,
    /// The session's `exp` (Unix seconds): an upgraded connection it opened may end then.
    pub session_exp: u64,
    /// The session was refreshed: these `Set-Cookie` values go to the client with the response
    /// ([`refreshed_response`]).
    pub set_cookie: Vec<HeaderValue>,
}

/// Who sent the request, and where, as extoken saw it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: Option<IpAddr>,
    /// The peer is in `trusted_proxies`: its forwarding headers (and request id) are kept.
    pub trusted: bool,
    pub tls: bool,
    /// The local port of the listener the request came in on (`X-Forwarded-Port`).
    pub port: Option<u16>,
}

impl Peer {
    /// The peer at `addr` that reached the listener on `port`, trusted when `trusted_proxies`
    /// holds it. Decided once per request, for the request id and the forwarding headers alike.
    pub fn new(addr: Option<IpAddr>, port: Option<u16>, trusted_proxies: &[Cidr]) -> Peer {
        Peer {
            addr,
            trusted: addr.is_some_and(|ip| trusted_proxies.iter().any(|c| c.contains(ip))),
            tls: false,
            port,
        }
    }
}

/// Everything decided about one upstream request.
#[derive(Debug)]
pub struct Plan<'a> {
    pub host: &'a HeaderValue,
    pub token: Option<&'a Rewrite>,
    /// Remove `Authorization` (it is a Bearer the backend must not see).
    pub drop_authorization: bool,
    pub strip_cookies: &'a [String],
    /// Every route's identity header names: a client's copies (and their `_` twins) never pass.
    pub strip_headers: &'a [HeaderName],
    pub drop_underscore_headers: bool,
    pub peer: Peer,
    pub request_id: Option<&'a HeaderValue>,
    /// With `tracing:`, the upstream request's W3C `traceparent` (its CLIENT span): it replaces
    /// a client's, so the backend joins extoken's trace. `None` (no `tracing:`): what the
    /// client sent passes unchanged.
    pub traceparent: Option<HeaderValue>,
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Applies a plan to a header set. Generic over the setter so it serves pingora's
/// `RequestHeader` and plain `http::HeaderMap` (tests, benches) alike.
pub fn apply<H: Headers>(req: &mut H, plan: &Plan<'_>) {
    if plan.drop_underscore_headers {
        req.remove_where(&|n: &HeaderName| n.as_str().contains('_'));
    }
    strip_identity_headers(req, plan);
    req.set(HOST, plan.host.clone());
    if plan.drop_authorization {
        req.remove(&AUTHORIZATION);
    }
    if let Some(rw) = plan.token {
        req.set(rw.header.clone(), rw.value.clone());
        for (name, value) in &rw.identity {
            req.set(name.clone(), value.clone());
        }
    }
    if !plan.strip_cookies.is_empty() {
        strip_cookie_headers(req, plan.strip_cookies);
    }
    forwarding::forwarding(req, plan);
    if let Some(id) = plan.request_id {
        req.set(X_REQUEST_ID, id.clone());
    }
    if let Some(tp) = &plan.traceparent {
        req.set(TRACEPARENT, tp.clone());
    }
}

/// Removes what a client sent under an identity header's name, or a name a CGI/WSGI backend would
/// read as one (`x_user_id` for `X-User-Id`), when underscore names are not dropped anyway.
fn strip_identity_headers<H: Headers>(req: &mut H, plan: &Plan<'_>) {
    if plan.strip_headers.is_empty() {
        return;
    }
    for name in plan.strip_headers {
        req.remove(name);
    }
    if !plan.drop_underscore_headers {
        req.remove_where(&|n: &HeaderName| {
            n.as_str().contains('_') && plan.strip_headers.iter().any(|s| underscore_twin(n, s))
        });
    }
}

/// `n` is `name` with some `-` written as `_` (both lower-case, as `HeaderName`s are).
fn underscore_twin(n: &HeaderName, name: &HeaderName) -> bool {
    let (a, b) = (n.as_str().as_bytes(), name.as_str().as_bytes());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
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
    fn contains(&self, name: &HeaderName) -> bool;
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    fn append(&mut self, name: HeaderName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
    /// Removes every header whose name satisfies `pred`.
    fn remove_where(&mut self, pred: &dyn Fn(&HeaderName) -> bool);
}

/// [`apply`] to the request pingora sends upstream, on its plain `http::HeaderMap`.
///
/// pingora's `RequestHeader` keeps, for the HTTP/1 parser's sake, each name as the client spelled
/// it in a second map, and its `insert_header` turns the name into a copied `CaseHeaderName` and
/// parses it back into a `HeaderName` on every call, case map or not: ~1.5k instructions per
/// header set, 40% of what extoken added per request (docs/performance.md). The header set is
/// taken out as `http::request::Parts` (a move), edited there (an insert is one hash, no copy),
/// and put back without the case map, so names go upstream lower-cased (pingora writes standard
/// ones in their usual spelling): HTTP field names are case-insensitive (RFC 9110 §5.1), and
/// Envoy lower-cases every name too. Only for an origin-form target, which the URI reproduces byte
/// for byte (extoken forwards no other form; a verbatim target goes through pingora's API so it
/// is never lost).
pub fn apply_to_request(req: &mut pingora::http::RequestHeader, plan: &Plan<'_>) {
    if req.uri.path_and_query().map(|p| p.as_str().as_bytes()) != Some(req.raw_path()) {
        apply(req, plan);
        return;
    }
    let end_stream = req.send_end_stream();
    let placeholder = pingora::http::RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, placeholder).into();
    // Room for what `apply` may add, so the map grows (allocates and rehashes) once at most:
    // the token, the six forwarding headers, the request id, the identity headers, `traceparent`.
    let identity = plan.token.map_or(0, |t| t.identity.len());
    let traceparent = usize::from(plan.traceparent.is_some());
    let _ = parts.headers.try_reserve(8 + identity + traceparent);
    apply(&mut parts.headers, plan);
    *req = pingora::http::RequestHeader::from(parts);
    if let Some(e) = end_stream {
        req.set_send_end_stream(e);
    }
}

/// `X-Request-Id` on a response to the client (the backend's, or one of extoken's own answers).
pub(crate) fn stamp_request_id(resp: &mut pingora::http::ResponseHeader, id: Option<&HeaderValue>) {
    if let Some(v) = id {
        set_response_header(resp, X_REQUEST_ID, v.clone());
    }
}

/// The response to a request whose session extoken refreshed: the new cookies, and
/// `Cache-Control: private` (no shared cache may store a `Set-Cookie` with a session): a backend's
/// `public` and `s-maxage` are removed, its other directives kept.
pub(crate) fn refreshed_response(
    resp: &mut pingora::http::ResponseHeader,
    set_cookie: &[HeaderValue],
) {
    edit_response(resp, |h| refreshed_headers(h, set_cookie));
}

/// [`refreshed_response`] on a plain header map.
pub fn refreshed_headers(h: &mut http::HeaderMap, set_cookie: &[HeaderValue]) {
    use http::header::{CACHE_CONTROL, SET_COOKIE};
    for c in set_cookie {
        h.append(SET_COOKIE, c.clone());
    }
    let mut kept: Vec<String> = Vec::new();
    for v in h.get_all(CACHE_CONTROL) {
        for d in String::from_utf8_lossy(v.as_bytes()).split(',') {
            let d = d.trim();
            let name = d
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !d.is_empty() && name != "public" && name != "s-maxage" && name != "private" {
                kept.push(d.to_string());
            }
        }
    }
    kept.insert(0, "private".into());
    // Directives come from a valid header value, joined with ", ": still one.
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        h.insert(CACHE_CONTROL, v);
    } else {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

/// Sets one header on the response pingora sends to the client, on its plain `http::HeaderMap`
/// for the reason [`apply_to_request`] gives (−2.9k instructions per request against
/// `insert_header`). The backend's reason phrase is kept; names the backend sent go to the client
/// lower-cased, standard ones in their usual spelling, as for the upstream request.
fn set_response_header(
    resp: &mut pingora::http::ResponseHeader,
    name: HeaderName,
    value: HeaderValue,
) {
    edit_response(resp, |h| {
        h.insert(name, value);
    });
}

/// Edits the headers of the response pingora sends to the client (see [`set_response_header`]).
fn edit_response(
    resp: &mut pingora::http::ResponseHeader,
    edit: impl FnOnce(&mut http::HeaderMap),
) {
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = pingora::http::ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, placeholder).into();
    edit(&mut parts.headers);
    *resp = pingora::http::ResponseHeader::from(parts);
    if let Some(r) = reason {
        // Only fails for phrases pingora itself would refuse; it accepts any today.
        let _ = resp.set_reason_phrase(Some(&r));
    }
}

impl Headers for http::HeaderMap {
    fn get_all(&self, name: &HeaderName) -> Vec<HeaderValue> {
        http::HeaderMap::get_all(self, name)
            .iter()
            .cloned()
            .collect()
    }
    fn contains(&self, name: &HeaderName) -> bool {
        self.contains_key(name)
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
    fn remove_where(&mut self, pred: &dyn Fn(&HeaderName) -> bool) {
        let doomed: Vec<HeaderName> = self.keys().filter(|n| pred(n)).cloned().collect();
        for n in doomed {
            http::HeaderMap::remove(self, &n);
        }
    }
}

impl Headers for pingora::http::RequestHeader {
    fn get_all(&self, name: &HeaderName) -> Vec<HeaderValue> {
        self.headers.get_all(name).iter().cloned().collect()
    }
    fn contains(&self, name: &HeaderName) -> bool {
        self.headers.contains_key(name)
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
    fn remove_where(&mut self, pred: &dyn Fn(&HeaderName) -> bool) {
        let doomed: Vec<HeaderName> = self.headers.keys().filter(|n| pred(n)).cloned().collect();
        for n in doomed {
            self.remove_header(&n);
        }
    }
}

pub(crate) mod decision;

#[cfg(test)]
mod tests;
