//! The client connection adapter of the proxy listener ([`super::ClientLimits`] wraps every
//! accepted stream in one): the deadlines pingora does not have, enforced on the stream's reads,
//! and the connection's last verified session.
//!
//! The adapter knows where a request's head ends and the next one begins from the proxy phases:
//! [`head_complete`] (`early_request_filter`, right after pingora parsed the head) ends the
//! deadline and sets the keep-alive and body timeouts of the request; [`request_done`] (`logging`)
//! says the next byte read starts a new head. Between requests the adapter waits at most
//! `keepalive_timeout` for that byte, then ends the connection as pingora's keep-alive timer
//! would (an end of stream, closed quietly); from that byte on the head is due within
//! `client_header_timeout`. A reused connection's body is always complete by then: pingora
//! disables keep-alive when it answers before the body was read.
//!
//! Both deadlines share one timer per connection, armed lazily: a new deadline is only written
//! down, and the timer, armed no later than any deadline can fall, checks it when it fires and
//! re-arms for what is left. A keep-alive connection therefore touches the timer about once per
//! `client_header_timeout`, not twice per request; pingora's own keep-alive timer (a timer
//! registration per request) is off for connections under the adapter.
//!
//! The connection also keeps the last verified session ([`SessionMemo`]), which the proxy takes
//! for the length of a request ([`take_memo`], [`put_memo`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::fast_timeout::FastTimeout;
use pingora::prelude::ToTimeout;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
// The proxy's `Session` derefs to it: the HTTP apps of the proxy and decision listeners share
// these helpers.
use pingora::protocols::http::ServerSession as Session;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::conn_metrics;
use crate::answer::Answer;
use crate::config::LimitsConfig;
use crate::verify::SessionMemo;

const HEAD: u8 = 0;
const REQUEST: u8 = 1;
const IDLE: u8 = 2;

/// What the adapter and the proxy phases share about one connection.
#[derive(Default)]
pub(super) struct Conn {
    /// [`HEAD`] (reading a head, the deadline runs), [`REQUEST`] (head read: body and response,
    /// pingora's per-read body timeout applies), [`IDLE`] (between requests: the next byte read
    /// starts a head).
    phase: AtomicU8,
    /// Signalled once the head deadline passed.
    pub(super) expired: Notify,
    /// `keepalive_timeout` of the last request, in ms (0: none set; pingora closes the connection
    /// after the response anyway).
    idle_ms: AtomicU64,
    /// The last session verified on this connection.
    memo: Mutex<SessionMemo>,
}

impl Conn {
    fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// An accepted client stream with the head deadline enforced on its reads.
pub(crate) struct ClientStream {
    inner: Stream,
    conn: Arc<Conn>,
    header_timeout: Duration,
    /// The timer: armed no later than `due`, and no later than any deadline set from now on
    /// (see [`ClientStream::set_due`]). pingora's timer (10 ms resolution, one thread for the
    /// process) rather than tokio's: sleeping connections in tokio's wheel cost every park of the
    /// worker (~1k instructions per request, measured).
    timer: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    /// When `timer` fires.
    armed: Instant,
    /// When the current head is due (`HEAD`) or the idle connection ends (`IDLE`).
    due: Option<Instant>,
    /// `due` was set for the current idle period.
    idle_started: bool,
    /// Bytes of the current head arrived: only such a client is sent a 408 (a preconnected
    /// browser socket that never sent anything is closed silently).
    head_started: bool,
    expired: bool,
}

impl ClientStream {
    pub(super) fn new(inner: Stream, conn: Arc<Conn>, header_timeout: Duration) -> ClientStream {
        // The first request's head is due within the timeout from the accept.
        let due = Instant::now() + header_timeout;
        ClientStream {
            inner,
            conn,
            header_timeout,
            timer: FastTimeout::create(header_timeout).timeout(),
            armed: due,
            due: Some(due),
            idle_started: false,
            head_started: false,
            expired: false,
        }
    }

    /// A new deadline. Only written down when the timer fires before it anyway (the usual case:
    /// see [`ClientStream::due_passed`]); the timer is moved only for an earlier one.
    fn set_due(&mut self, due: Option<Instant>) {
        self.due = due;
        if let Some(d) = due {
            if d < self.armed {
                self.arm(d);
            }
        }
    }

    /// pingora's timer rounds up to its 10 ms tick, so it never fires before `at`. At least 1 ms:
    /// its arithmetic does not expect a zero wait.
    fn arm(&mut self, at: Instant) {
        self.armed = at;
        let wait = at.saturating_duration_since(Instant::now());
        self.timer = FastTimeout::create(wait.max(Duration::from_millis(1))).timeout();
    }

    /// Whether `due` has passed. When the timer fires early (it was armed for an earlier
    /// deadline, since moved), it is re-armed for `due`, or sooner: for the shortest timeout
    /// from now, which no deadline set later can precede. So a later [`ClientStream::set_due`]
    /// need not move it.
    fn due_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(due) = self.due else {
            return false;
        };
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            if now >= due {
                return true;
            }
            let shortest = self
                .conn
                .idle_timeout()
                .map_or(self.header_timeout, |t| t.min(self.header_timeout));
            self.arm(due.min(now + shortest));
        }
    }

    /// The head deadline passed: a 408 if the client started a request (one attempt: a client
    /// that does not read gets nothing), the write side closed, and [`ClientLimits`] told to end
    /// the connection. Stays pending: the task is dropped, pingora never sees a read error.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired {
            return Poll::Pending;
        }
        self.expired = true;
        conn_metrics().header_timeouts.inc();
        tracing::debug!(target: "extoken::listener", started = self.head_started, "request head not complete within client_header_timeout; closing");
        if self.head_started {
            // What the client sent and we did not read would turn our close into a reset,
            // which can destroy the 408 before the client reads it.
            let mut scratch = [0u8; 4096];
            for _ in 0..16 {
                let mut rb = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if !rb.filled().is_empty() => {}
                    _ => break,
                }
            }
            let reply = timeout_reply(self.header_timeout);
            let mut inner = Pin::new(&mut self.inner);
            if let Poll::Ready(Ok(_)) = inner.as_mut().poll_write(cx, &reply) {
                let _ = inner.as_mut().poll_flush(cx);
            }
        }
        let _ = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.conn.expired.notify_one();
        Poll::Pending
    }
}

/// The raw `408` written when a head is late. Written by the adapter, not through pingora:
/// pingora's session is still inside its read of that head.
fn timeout_reply(header_timeout: Duration) -> Vec<u8> {
    let a = Answer::request_timeout(&format!(
        "the request head did not arrive within {}",
        crate::config::Dur(header_timeout)
    ));
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
        a.body.len(),
        crate::telemetry::new_request_id()
    )
    .into_bytes();
    out.extend_from_slice(&a.body);
    out
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("inner", &self.inner)
            .field("phase", &self.conn.phase.load(Ordering::Relaxed))
            .finish()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match this.conn.phase.load(Ordering::Acquire) {
            REQUEST => Pin::new(&mut this.inner).poll_read(cx, buf),
            IDLE => {
                if !this.idle_started {
                    // The first read after a response: the connection idles from now.
                    this.idle_started = true;
                    let idle = this.conn.idle_timeout();
                    this.set_due(idle.map(|t| Instant::now() + t));
                }
                if this.due_passed(cx) {
                    // `keepalive_timeout` without a byte: the end of the stream, which pingora
                    // takes as a client that went away between requests (no error, no log).
                    return Poll::Ready(Ok(()));
                }
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                    // The next request's first byte: its head is due from now.
                    this.conn.phase.store(HEAD, Ordering::Release);
                    this.head_started = true;
                    this.idle_started = false;
                    this.set_due(Some(Instant::now() + this.header_timeout));
                }
                r
            }
            _ => {
                if this.expired || this.due_passed(cx) {
                    return this.expire(cx);
                }
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                if buf.filled().len() > before {
                    this.head_started = true;
                }
                r
            }
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The adapter under a proxy session (HTTP/1 on the proxy listener; `None` elsewhere).
fn client_stream(session: &Session) -> Option<&ClientStream> {
    let stream = session.stream()?;
    // `**`: the concrete type behind the box, not the box itself.
    (**stream).as_any().downcast_ref::<ClientStream>()
}

/// The request head was read (`early_request_filter`): the head deadline ends; the request's body
/// may pause at most `client_body_timeout` between reads; after the response the connection may
/// idle `keepalive_timeout` (unless it is closing anyway: `Connection: close`, HTTP/1.0, draining).
pub(crate) fn head_complete(session: &mut Session, limits: &LimitsConfig) {
    let adapter = client_stream(session).map(|s| {
        s.conn.phase.store(REQUEST, Ordering::Release);
        let ms = u64::try_from(limits.keepalive_timeout.0.as_millis()).unwrap_or(u64::MAX);
        s.conn.idle_ms.store(ms.max(1), Ordering::Relaxed);
    });
    session.set_read_timeout(Some(limits.client_body_timeout.0));
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
}

/// The connection's last verified session (an empty memo off the proxy listener's adapter).
pub(crate) fn take_memo(session: &Session) -> SessionMemo {
    client_stream(session)
        .and_then(|s| s.conn.memo.lock().ok().map(|mut m| std::mem::take(&mut *m)))
        .unwrap_or_default()
}

/// Gives the memo back to the connection for its next request.
pub(crate) fn put_memo(session: &Session, memo: SessionMemo) {
    if let Some(mut m) = client_stream(session).and_then(|s| s.conn.memo.lock().ok()) {
        *m = memo;
    }
}

/// The request is over (`logging`): the next byte read on this connection starts a new head.
pub(crate) fn request_done(session: &Session) {
    if let Some(s) = client_stream(session) {
        s.conn.phase.store(IDLE, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_reply_is_a_complete_408() {
        let r = String::from_utf8(timeout_reply(Duration::from_secs(10))).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let j: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(j["error"], "request_timeout");
        assert!(j["error_description"].as_str().unwrap().contains("10s"));
    }

    /// A client stream over an in-memory pipe: the adapter, the peer's end, the shared state.
    fn pipe(timeout: Duration) -> (ClientStream, tokio::io::DuplexStream, Arc<Conn>) {
        let (ours, theirs) = tokio::io::duplex(4096);
        let conn = Arc::new(Conn::default());
        let s = ClientStream::new(Box::new(ours), conn.clone(), timeout);
        (s, theirs, conn)
    }

    /// Reads until the adapter says the deadline passed (the read itself must stay pending);
    /// false if that did not happen within 5 s.
    async fn until_expired(s: &mut ClientStream, conn: &Conn) -> bool {
        let mut buf = [0u8; 64];
        tokio::select! {
            _ = conn.expired.notified() => true,
            r = s.read(&mut buf) => panic!("the read returned {r:?}"),
            _ = tokio::time::sleep(Duration::from_secs(5)) => false,
        }
    }

    const SHORT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_late_head_gets_408_and_a_silent_client_nothing() {
        let (mut s, mut peer, conn) = pipe(SHORT);
        peer.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 8);
        assert!(until_expired(&mut s, &conn).await);
        let mut out = Vec::new();
        peer.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 408 "), "{out:?}");

        let (mut s, mut peer, conn) = pipe(SHORT);
        assert!(until_expired(&mut s, &conn).await);
        let mut out = Vec::new();
        peer.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty(), "nothing was asked, nothing is answered");
    }

    #[tokio::test]
    async fn bodies_and_idle_waits_have_no_head_deadline() {
        let (mut s, mut peer, conn) = pipe(SHORT);
        conn.phase.store(REQUEST, Ordering::Release);
        tokio::time::sleep(SHORT * 2).await;
        peer.write_all(b"body").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);

        // Between requests: no deadline until the first byte, then one from that byte.
        conn.phase.store(IDLE, Ordering::Release);
        let (n, _) = tokio::join!(s.read(&mut buf), async {
            tokio::time::sleep(SHORT * 2).await;
            peer.write_all(b"G").await.unwrap();
        });
        assert_eq!(n.unwrap(), 1);
        assert_eq!(conn.phase.load(Ordering::Acquire), HEAD);
        let started = Instant::now();
        assert!(until_expired(&mut s, &conn).await);
        assert!(started.elapsed() >= SHORT / 2, "{:?}", started.elapsed());
        let mut out = [0u8; 13];
        peer.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"HTTP/1.1 408 ");
    }
}
