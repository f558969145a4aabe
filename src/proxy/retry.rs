//! When a failed upstream attempt is tried again: the policy behind pingora's two failure hooks
//! (`fail_to_connect`, `error_while_proxy`), as plain functions of the request and the error.

use pingora::http::RequestHeader;
use pingora::prelude::*;

/// A failed connect is retried on a fresh connection, for idempotent requests, up to the
/// route's `retries` (nothing of the request has gone out yet).
pub(super) fn after_connect_failure(req: &RequestHeader, attempts: u32, budget: u32) -> bool {
    req.method.is_idempotent() && attempts <= budget
}

/// Once a request is on a connection it is retried only when nothing of it can have been
/// acted on: a pooled connection that turned out dead before any of the response came back
/// (the upstream closed or reset it: the errors pingora marks `ReusedOnly`), for an
/// idempotent request without a body, while the client has been sent nothing. A timeout or
/// a failure after the response began is never retried: the upstream may be working on the
/// request (a second copy would reach it), and the client may already hold part of an
/// answer (a second one cannot follow). pingora's default would also retry requests with
/// bodies.
pub(super) fn after_sending(
    req: &RequestHeader,
    e: &Error,
    client_reused: bool,
    response_started: bool,
    attempts: u32,
    budget: u32,
) -> bool {
    let bodyless = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v == "0")
        && req.headers.get(http::header::TRANSFER_ENCODING).is_none();
    let dead_pooled = client_reused
        && *e.esource() == ErrorSource::Upstream
        && e.retry == pingora::RetryType::ReusedOnly;
    dead_pooled && !response_started && bodyless && req.method.is_idempotent() && attempts <= budget
}
