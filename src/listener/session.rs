//! What the proxy phases tell the connection and ask of it, for HTTP/1.x sessions (through the
//! adapter under them) and HTTP/2 ones (through their connection's [`InFlight`] guard): the head
//! is complete ([`head_complete`]), the request is over ([`request_done`]), the connection's
//! session memo ([`take_memo`], [`put_memo`]) and client certificate ([`client_cert`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

// The proxy's `Session` derefs to it: the HTTP apps of the proxy and decision listeners share
// these helpers.
use pingora::protocols::http::ServerSession as Session;

use super::client_stream::ClientStream;
use super::conn::{Conn, IDLE, REQUEST, UPGRADED};
use super::h2::{Conns, InFlight};
use crate::config::LimitsConfig;
use crate::telemetry::ClientCert;
use crate::verify::SessionMemo;

/// The adapter under a proxy session (HTTP/1 on the proxy listener; `None` elsewhere).
fn client_stream(session: &Session) -> Option<&ClientStream> {
    let stream = session.stream()?;
    // `**`: the concrete type behind the box, not the box itself.
    (**stream).as_any().downcast_ref::<ClientStream>()
}

/// The request head was read (`early_request_filter`): the head deadline ends; the request's body
/// may pause at most `client_body_timeout` between reads, the client may take at most
/// `client_send_timeout` to take each write of the response; after the response the connection may
/// idle `keepalive_timeout` (unless it is closing anyway: `Connection: close`, HTTP/1.0, draining).
/// On an HTTP/2 connection: the request is counted in flight until the returned guard drops.
pub(crate) fn head_complete(
    session: &mut Session,
    limits: &LimitsConfig,
    conns: Option<&Conns>,
) -> Option<InFlight> {
    let adapter = client_stream(session).map(|s| {
        s.conn.phase.store(REQUEST, Ordering::Release);
        let ms = u64::try_from(limits.keepalive_timeout.0.as_millis()).unwrap_or(u64::MAX);
        s.conn.idle_ms.store(ms.max(1), Ordering::Relaxed);
    });
    session.set_read_timeout(Some(limits.client_body_timeout.0));
    session.set_write_timeout(Some(limits.client_send_timeout.0));
    if adapter.is_none() && session.is_http2() {
        return conns?.find(session).map(InFlight::new);
    }
    // pingora turns keep-alive on "forever" for an HTTP/1.1 request without a Connection header.
    // Under the adapter it stays so (the adapter ends the idle connection); elsewhere pingora's
    // own timer does.
    if session.get_keepalive().is_some() {
        let secs = if adapter.is_some() {
            0
        } else {
            limits.keepalive_timeout.0.as_secs().max(1)
        };
        session.set_keepalive(Some(secs));
    }
    None
}

/// The connection's state: the adapter's (HTTP/1.x) or, for an HTTP/2 request, its guard's.
fn conn_of<'a>(session: &'a Session, h2: Option<&'a InFlight>) -> Option<&'a Conn> {
    client_stream(session)
        .map(|s| &*s.conn)
        .or_else(|| h2.map(InFlight::conn))
}

/// The connection's last verified session (an empty memo off the proxy listener's connections).
pub(crate) fn take_memo(session: &Session, h2: Option<&InFlight>) -> SessionMemo {
    conn_of(session, h2)
        .and_then(|c| c.memo.lock().ok().map(|mut m| std::mem::take(&mut *m)))
        .unwrap_or_default()
}

/// Gives the memo back to the connection for its next request.
pub(crate) fn put_memo(session: &Session, h2: Option<&InFlight>, memo: SessionMemo) {
    if let Some(mut m) = conn_of(session, h2).and_then(|c| c.memo.lock().ok()) {
        *m = memo;
    }
}

/// The client certificate verified when the connection's TLS handshake ran.
pub(crate) fn client_cert(session: &Session, h2: Option<&InFlight>) -> Option<Arc<ClientCert>> {
    conn_of(session, h2).and_then(|c| c.client_cert.clone())
}

/// The request is over (`logging`): the next byte read on this connection starts a new head.
/// (An HTTP/2 request ends when its guard drops, with the request's context.)
pub(crate) fn request_done(session: &Session) {
    if let Some(s) = client_stream(session) {
        s.conn.phase.store(IDLE, Ordering::Release);
    }
}

/// The connection was upgraded (a `101` went to the client): the adapter stops treating its bytes
/// as requests, and, when `close_at` is set, ends the socket then (the opening session's expiry).
/// `false` where there is no adapter (the caller falls back to a plain close).
pub(crate) fn upgraded(session: &Session, close_at: Option<tokio::time::Instant>) -> bool {
    let Some(s) = client_stream(session) else {
        return false;
    };
    if let Some(at) = close_at {
        s.conn
            .close_at_ms
            .store(s.conn.ms_at(at), Ordering::Release);
    }
    s.conn.phase.store(UPGRADED, Ordering::Release);
    true
}

/// An upgrade request goes upstream (`upstream_peer`): its answer is due `within` from now (the
/// route's `read_timeout`; the peer itself gets the socket's idle bound).
pub(crate) fn response_due(session: &Session, within: std::time::Duration) {
    if let Some(s) = client_stream(session) {
        let at = s.conn.ms_at(tokio::time::Instant::now() + within);
        s.conn.response_late.store(false, Ordering::Release);
        s.conn.response_due_ms.store(at, Ordering::Release);
    }
}

/// The upstream's answer head arrived (`upstream_response_filter`): nothing is due any more.
pub(crate) fn response_arrived(session: &Session) {
    if let Some(s) = client_stream(session) {
        s.conn.response_due_ms.store(0, Ordering::Release);
    }
}

/// Whether the request failed because the upstream's answer to an upgrade request was late.
pub(crate) fn response_was_late(session: &Session) -> bool {
    client_stream(session).is_some_and(|s| s.conn.response_late.load(Ordering::Acquire))
}
