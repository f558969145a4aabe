//! HTTP/2 connections under the client limits.
//!
//! pingora serves an HTTP/2 connection with one task per stream and no stream of ours to hook:
//! `Session::stream()` is `None`, so the adapter's per-request hooks never fire. What the limits
//! need instead:
//!
//! * **The preface and first SETTINGS within `client_header_timeout`.** On the cleartext listener
//!   (`h2c: true`) [`sniff`] reads the first bytes under the head deadline (pingora's own peek has
//!   none) and decides HTTP/2 or HTTP/1.1; the bytes are put back. The adapter then counts the
//!   preface and the SETTINGS frame through its reads (`client_stream.rs`), and closes the
//!   connection silently if they are late: no HTTP/1.1 byte is ever written into HTTP/2.
//! * **Idle connections closed with GOAWAY at `keepalive_timeout`.** Each HTTP/2 connection gets a
//!   shutdown watch of its own ([`goaway_when`]): it follows the server's, and also fires once
//!   the connection has had no request in flight for `keepalive_timeout`; pingora answers either
//!   with a graceful GOAWAY and closes when the streams are done.
//! * **The connection's state for its requests** (requests in flight, the session memo, the client
//!   certificate): [`Conns`] finds a connection's [`Conn`] from a session by its socket digest,
//!   which pingora shares between the connection and every stream's session.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::protocols::http::ServerSession as Session;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::conn::Conn;
use super::PREFACE;
use crate::gateway::Gateway;

/// Why [`sniff`] gave no stream.
pub(super) enum NotSniffed {
    /// The client closed, or the stream was not one of the TCP listener's.
    Gone,
    /// Not decided within the head deadline.
    Late,
}

/// Reads the first bytes of a cleartext connection until they are the HTTP/2 preface or differ
/// from it, within `limit`, and puts them back: the stream and whether it speaks HTTP/2. (Either
/// way the client is closed without an answer: too slow or gone.)
pub(super) async fn sniff(stream: Stream, limit: Duration) -> Result<(Stream, bool), NotSniffed> {
    // The TCP listener hands out plain L4 streams, which can take bytes back (`rewind`).
    let mut l4 = stream
        .into_any()
        .downcast::<L4Stream>()
        .map_err(|_| NotSniffed::Gone)?;
    let mut got = Vec::with_capacity(PREFACE.len());
    let read = async {
        let mut buf = [0u8; 24];
        while got.len() < PREFACE.len() && PREFACE.starts_with(&got) {
            let n = l4.read(&mut buf[..PREFACE.len() - got.len()]).await;
            match n {
                Ok(0) | Err(_) => return Err(NotSniffed::Gone),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        Ok(())
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| NotSniffed::Late)??;
    let h2 = got.as_slice() == PREFACE;
    l4.rewind(&got);
    Ok((l4, h2))
}

/// Shares the server's shutdown with one HTTP/2 connection (`tx`), and shuts the connection down
/// (a graceful GOAWAY, by pingora) once it has idled `keepalive_timeout` with no request in
/// flight. Returns when the connection should be dropped: still open, with no request in flight,
/// a `keepalive_timeout` after that.
pub(super) async fn goaway_when(
    mut shutdown: ShutdownWatch,
    tx: watch::Sender<bool>,
    conn: &Conn,
    state: &ArcSwap<Gateway>,
) {
    let idle = async {
        loop {
            // Read at each turn: a reload applies to connections already open.
            let keepalive = state.load().config.limits.keepalive_timeout.0;
            match conn.h2_idle_left(keepalive) {
                Some(left) if left.is_zero() => return,
                Some(left) => tokio::time::sleep(left).await,
                None => tokio::time::sleep(keepalive).await,
            }
        }
    };
    tokio::select! {
        _ = shutdown.changed() => {}
        _ = idle => {
            tracing::debug!(target: "extoken::listener", "HTTP/2 connection idle for keepalive_timeout: GOAWAY");
        }
    }
    let _ = tx.send(true);
    // pingora's graceful close waits for the client's answer to a PING and for the streams in
    // flight; a client that never answers would hold the connection (and its slot) forever. It
    // is dropped once a keepalive_timeout after the GOAWAY finds no request in flight.
    loop {
        let keepalive = state.load().config.limits.keepalive_timeout.0;
        tokio::time::sleep(keepalive).await;
        if conn.h2_active.load(Ordering::Acquire) == 0 {
            return;
        }
    }
}

/// The HTTP/2 connections open on the proxy listener, by the address of their socket digest.
#[derive(Default)]
pub(crate) struct Conns {
    map: Mutex<HashMap<usize, Arc<Conn>>>,
}

/// Keeps a connection in [`Conns`] while it is open.
pub(super) struct Registered<'a> {
    conns: &'a Conns,
    key: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.conns.map.lock() {
            m.remove(&self.key);
        }
    }
}

impl Conns {
    /// Registers `conn` under `stream`'s socket digest; `None` if the stream has none (then its
    /// sessions find no connection state).
    pub(super) fn register(
        &self,
        stream: &impl GetSocketDigest,
        conn: Arc<Conn>,
    ) -> Option<Registered<'_>> {
        let key = Arc::as_ptr(&stream.get_socket_digest()?) as usize;
        self.map.lock().ok()?.insert(key, conn);
        Some(Registered { conns: self, key })
    }

    /// The connection of an HTTP/2 session.
    pub(super) fn find(&self, session: &Session) -> Option<Arc<Conn>> {
        let digest = session.digest()?.socket_digest.as_ref()?;
        let key = Arc::as_ptr(digest) as usize;
        self.map.lock().ok()?.get(&key).cloned()
    }
}

/// One request in flight on an HTTP/2 connection, until dropped (it lives in the request's
/// context, so a request that ends in any way ends it).
pub(crate) struct InFlight(Arc<Conn>);

impl InFlight {
    pub(super) fn new(conn: Arc<Conn>) -> InFlight {
        conn.h2_active.fetch_add(1, Ordering::AcqRel);
        InFlight(conn)
    }

    pub(super) fn conn(&self) -> &Conn {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.h2_request_ended();
    }
}
