//! The one place extoken writes a response of its own: an [`Answer`] as JSON, or in gRPC's
//! Trailers-Only shape for a gRPC call; and the status a proxy failure maps to.

use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::answer::Answer;
use crate::rewrite;
use crate::telemetry::RequestLog;

/// Writes an [`Answer`] to the client: the one place extoken writes a response of its own.
/// `close` ends the connection after it (`Connection: close`), as after any proxy failure.
/// A gRPC call (`grpc`) gets the answer's gRPC shape instead (see `answer::grpc`).
pub(super) async fn send_answer(
    session: &mut Session,
    a: &Answer,
    log: &RequestLog,
    grpc: bool,
    close: bool,
) -> Result<()> {
    if close {
        session.set_keepalive(None);
    }
    if grpc {
        return send_grpc_answer(session, a, log).await;
    }
    let mut h = ResponseHeader::build(a.status, Some(7))?;
    rewrite::stamp_request_id(&mut h, log.request_id_value.as_ref());
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", a.body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    if let Some(w) = &a.www_authenticate {
        h.insert_header("www-authenticate", w.as_str())?;
    }
    if let Some(r) = a.retry_after {
        h.insert_header("retry-after", r.to_string())?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(a.body.clone()), true)
        .await?;
    Ok(())
}

/// A gRPC Trailers-Only answer: HTTP 200, `grpc-status` and `grpc-message` in the one header
/// block, which ends the stream. `WWW-Authenticate` and `Retry-After` are kept, as Envoy keeps
/// them.
async fn send_grpc_answer(session: &mut Session, a: &Answer, log: &RequestLog) -> Result<()> {
    let mut h = ResponseHeader::build(200, Some(7))?;
    rewrite::stamp_request_id(&mut h, log.request_id_value.as_ref());
    h.insert_header("content-type", "application/grpc")?;
    h.insert_header("grpc-status", a.grpc_status().to_string())?;
    h.insert_header("grpc-message", a.grpc_message())?;
    // On h2 the header block ends the stream; HTTP/1.1 needs the length to end the message.
    if !session.is_http2() {
        h.insert_header("content-length", "0")?;
    }
    if let Some(w) = &a.www_authenticate {
        h.insert_header("www-authenticate", w.as_str())?;
    }
    if let Some(r) = a.retry_after {
        h.insert_header("retry-after", r.to_string())?;
    }
    // pingora's `write_response_header` sends an HTTP/2 header block without END_STREAM and an
    // empty DATA frame to end the stream, which gRPC clients read as a broken call ("Stream
    // removed"): a Trailers-Only answer must end the stream on its one HEADERS frame.
    if let pingora::protocols::http::ServerSession::H2(h2) = session.as_downstream_mut() {
        return h2.write_response_header(Box::new(h), true);
    }
    session.write_response_header(Box::new(h), true).await?;
    Ok(())
}

/// The status for a failure: 504 when the upstream timed out (connect, read, write), 502 for
/// any other upstream failure, 408 when the client's body stalled, 400 for a bad request, 0 when
/// the client is gone (nothing to write), 500 for our own.
pub(super) fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if *e.esource() == ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                // The body paused longer than `limits.client_body_timeout`.
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}
