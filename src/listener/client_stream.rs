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
//! for the length of a request (`listener/session.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::fast_timeout::FastTimeout;
use pingora::prelude::ToTimeout;
use pingora::protocols::{Peek, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::conn_metrics;
use super::PREFACE;
use crate::answer::Answer;

use super::conn::{Conn, H2, HEAD, IDLE, REQUEST, UPGRADED};

/// An accepted client stream with the head deadline enforced on its reads.
pub(crate) struct ClientStream {
    inner: Stream,
    pub(super) conn: Arc<Conn>,
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
    /// HTTP/2: the preface and the first frame's header as read so far, and how many bytes end
    /// the first SETTINGS frame (known once its header is in).
    h2_hello: Vec<u8>,
    h2_hello_end: usize,
    h2_seen: usize,
    /// With `h2c`, the listener read the first bytes and decided: HTTP/2 or not.
    sniffed: Option<bool>,
    /// Upgraded: the server's frames as written, so a close frame goes between two of them;
    /// and whether the socket's deadline was taken from `close_at_ms`.
    frames: super::ws_frames::FrameTracker,
    upgraded_due: bool,
}

/// The preface and a frame header: the first SETTINGS frame's length is then known.
const H2_HELLO_HEAD: usize = 24 + 9;

impl ClientStream {
    /// `started`: when the first head's deadline starts (the accept, or the end of the TLS
    /// handshake).
    pub(super) fn new(
        inner: Stream,
        conn: Arc<Conn>,
        header_timeout: Duration,
        started: Instant,
    ) -> ClientStream {
        let due = started + header_timeout;
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
            h2_hello: Vec::new(),
            h2_hello_end: H2_HELLO_HEAD,
            h2_seen: 0,
            sniffed: None,
            frames: super::ws_frames::FrameTracker::default(),
            upgraded_due: false,
        }
    }

    /// The listener already told HTTP/2 from HTTP/1.1 by the first bytes (`listener/h2.rs`).
    pub(super) fn sniffed(&mut self, h2: bool) {
        self.sniffed = Some(h2);
    }

    /// Counts HTTP/2 bytes read until the first SETTINGS frame is complete, then ends the
    /// deadline. (A first frame that is not SETTINGS ends the count at its header: the HTTP/2
    /// codec refuses it and closes.)
    fn h2_hello_read(&mut self, bytes: &[u8]) {
        let had = self.h2_hello.len();
        let take = bytes.len().min(H2_HELLO_HEAD - had);
        self.h2_hello.extend_from_slice(&bytes[..take]);
        self.h2_seen += bytes.len();
        if self.h2_hello.len() < H2_HELLO_HEAD {
            return;
        }
        if had < H2_HELLO_HEAD {
            let h = &self.h2_hello[24..];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            self.h2_hello_end = if h[3] == 0x4 { H2_HELLO_HEAD + len } else { 0 };
        }
        if self.h2_seen >= self.h2_hello_end {
            self.due = None;
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
        tracing::debug!(target: "extoken::listener", started = self.head_started, h2 = self.conn.is_h2(), "request head (or HTTP/2 preface and SETTINGS) not complete within client_header_timeout; closing");
        // Never an HTTP/1.1 answer inside an HTTP/2 connection: a late preface or SETTINGS is
        // closed silently.
        if self.head_started && !self.conn.is_h2() {
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

impl ClientStream {
    /// An upgraded socket's read: at the opening session's expiry (if one was set) the socket is
    /// ended: a 1008 close frame if no server frame is half written, the write side closed, and
    /// an error, so pingora ends both sides of the tunnel at once.
    fn poll_read_upgraded(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.upgraded_due {
            self.upgraded_due = true;
            let at = self.conn.close_at_ms.load(Ordering::Acquire);
            self.set_due((at > 0).then(|| self.conn.born + Duration::from_millis(at)));
        }
        if self.expired || self.due_passed(cx) {
            if !self.expired {
                self.expired = true;
                conn_metrics().upgraded_session_expired.inc();
                tracing::debug!(target: "extoken::listener", "the session that opened this WebSocket expired; closing it");
                if self.frames.at_boundary() {
                    let frame = super::ws_frames::close_frame();
                    let mut inner = Pin::new(&mut self.inner);
                    if let Poll::Ready(Ok(_)) = inner.as_mut().poll_write(cx, &frame) {
                        let _ = inner.as_mut().poll_flush(cx);
                    }
                }
                let _ = Pin::new(&mut self.inner).poll_shutdown(cx);
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the session that opened the upgraded connection expired",
            )));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    /// A read while a request is in flight. An upgrade request's answer is due within the
    /// route's `read_timeout` (its upstream peer has the socket's idle bound, which must hold
    /// after the `101`, so pingora would wait that long): past it the read fails, pingora ends the
    /// request, and `response_late` tells the proxy the upstream was late (a 504).
    fn poll_read_request(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let at = self.conn.response_due_ms.load(Ordering::Acquire);
        if at > 0 {
            let due = self.conn.born + Duration::from_millis(at);
            if self.due != Some(due) {
                self.set_due(Some(due));
            }
            if self.due_passed(cx) {
                self.conn.response_due_ms.store(0, Ordering::Release);
                self.conn.response_late.store(true, Ordering::Release);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no upstream answer to the upgrade request within read_timeout",
                )));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    fn upgraded(&self) -> bool {
        self.conn.phase.load(Ordering::Relaxed) == UPGRADED
    }

    /// Ends the connection without a word, and without pingora seeing an error (it would log
    /// one): the write side closed, [`ClientLimits`] told to drop the task. Stays pending.
    fn close_quietly(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.expired {
            self.expired = true;
            let _ = Pin::new(&mut self.inner).poll_shutdown(cx);
            self.conn.expired.notify_one();
        }
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
            REQUEST => this.poll_read_request(cx, buf),
            UPGRADED => this.poll_read_upgraded(cx, buf),
            H2 if this.due.is_none() => Pin::new(&mut this.inner).poll_read(cx, buf),
            H2 => {
                if this.expired || this.due_passed(cx) {
                    return this.expire(cx);
                }
                let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                this.h2_hello_read(&buf.filled()[before..]);
                if !PREFACE.starts_with(&this.h2_hello[..this.h2_hello.len().min(PREFACE.len())]) {
                    // pingora logs an ERROR for every HTTP/2 handshake that fails; a client that
                    // negotiated h2 and sends something else is closed here instead.
                    tracing::debug!(target: "extoken::listener", "no HTTP/2 preface after ALPN h2; closing");
                    return this.close_quietly(cx);
                }
                r
            }
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
                let ended = match &r {
                    Poll::Ready(Ok(())) => buf.filled().len() == before,
                    Poll::Ready(Err(_)) => true,
                    Poll::Pending => false,
                };
                if ended && this.head_started {
                    // The client went away in the middle of a head. pingora would log an ERROR
                    // for it (one per scanner connection): it is closed here, quietly.
                    tracing::debug!(target: "extoken::listener", "client closed in the middle of a request head");
                    return this.close_quietly(cx);
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
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if this.upgraded() {
                this.frames.feed(&buf[..n]);
            }
        }
        r
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
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = r {
            if this.upgraded() {
                for b in bufs {
                    let take = n.min(b.len());
                    this.frames.feed(&b[..take]);
                    n -= take;
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Peek for ClientStream {
    /// pingora peeks for the HTTP/2 preface when `h2c` is on, reading until it has 24 bytes with
    /// no deadline (an HTTP/1.0 request may be shorter: it would wait forever). The listener has
    /// decided already, under the head deadline; pingora only compares what it peeked with the
    /// preface, so it is given the preface or bytes that are not.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        match self.sniffed {
            Some(true) if buf.len() == PREFACE.len() => buf.copy_from_slice(PREFACE),
            Some(_) => buf.fill(0),
            None => return self.inner.try_peek(buf).await,
        }
        Ok(true)
    }
}

// pingora's stream traits, passed through to the inner stream.
#[path = "client_stream_delegate.rs"]
mod delegate;

#[cfg(test)]
#[path = "client_stream_tests.rs"]
mod tests;
