//! What is refused before routing, as plain functions on the request head: its size, an
//! ambiguous target or host, two `Authorization` headers, underscore names; a declared body over
//! the route's limit; and the `Host` to forward. Decision mode screens the original request it
//! rebuilds with the same [`screen`].

use http::header::AUTHORIZATION;
use http::HeaderValue;
use pingora::http::RequestHeader;

use crate::answer::Answer;
use crate::config::{LimitsConfig, UnderscoreHeaders};
use crate::route::Route;
use crate::target::{self, BadTarget, Decided};

/// Bytes of a request head as it would go upstream: request line plus `name: value\r\n` lines.
pub fn request_head_bytes(req: &RequestHeader) -> usize {
    let target = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

pub(super) fn bad_target(e: BadTarget) -> Answer {
    Answer::bad_request(&e.to_string(), e.reason())
}

/// What is refused before routing: oversized heads, an ambiguous target or host, two
/// `Authorization` headers, underscore header names when `reject`. `Ok` is the canonical target
/// and host. Decision mode screens the original request it rebuilds with it too.
pub(crate) fn screen(
    req: &RequestHeader,
    limits: &LimitsConfig,
) -> std::result::Result<Decided, Answer> {
    // pingora itself reads heads up to 1 MB, which backends commonly refuse or choke on.
    if request_head_bytes(req) > limits.max_header_bytes {
        return Err(Answer::headers_too_large());
    }
    let decided =
        target::decide(req, limits.escaped_slashes, limits.path_parameters).map_err(bad_target)?;
    if req.version == http::Version::HTTP_2 && !host_agrees_with_authority(req) {
        return Err(Answer::bad_request(
            "Host differs from :authority",
            "host_authority_mismatch",
        ));
    }
    if req.headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return Err(Answer::bad_request(
            "more than one Authorization header",
            "duplicate_authorization",
        ));
    }
    if limits.underscore_headers == UnderscoreHeaders::Reject
        && req.headers.keys().any(|n| n.as_str().contains('_'))
    {
        return Err(Answer::bad_request(
            "header names with underscores are not accepted",
            "underscore_header",
        ));
    }
    Ok(decided)
}

/// A `Content-Length` over the route's `max_body_bytes` is refused before anything is
/// forwarded (a chunked body is counted as it streams, in `request_body_filter`).
pub(super) fn check_declared_body(
    req: &RequestHeader,
    route: &Route,
) -> std::result::Result<(), Answer> {
    let Some(limit) = route.max_body_bytes else {
        return Ok(());
    };
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(Answer::body_too_large(&route.name)),
        _ => Ok(()),
    }
}

/// HTTP/2: a `Host` beside `:authority` must name the same host (RFC 9113 §8.3.1), compared in
/// canonical form; `target::decide` then takes either.
fn host_agrees_with_authority(req: &RequestHeader) -> bool {
    let (Some(authority), Some(host)) = (req.uri.authority(), req.headers.get(http::header::HOST))
    else {
        return true;
    };
    match (
        target::canonical_host(authority.as_str().as_bytes()),
        target::canonical_host(host.as_bytes()),
    ) {
        (Ok(a), Ok(h)) => a == h,
        _ => false,
    }
}

/// The `Host` to forward: the upstream's (`preserve_host: false`), else the canonical one, else
/// (HTTP/1.0 without a host) the upstream's.
pub(super) fn forwarded_host(route: &Route, host: Option<target::Host>) -> Option<HeaderValue> {
    route
        .host_override
        .clone()
        .or_else(|| host.and_then(target::Host::into_header_value))
        .or_else(|| route.upstream.host_header())
}
