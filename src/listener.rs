//! The proxy listener's client limits: `limits.max_connections`, and the deadlines pingora does
//! not have (`limits.client_header_timeout` for a whole request head) or sets per request
//! (`limits.keepalive_timeout`, `limits.client_body_timeout`).
//!
//! pingora's downstream read timeout is per read, so a client that sends one byte of its head
//! every few seconds holds a connection (and an fd) forever. [`ClientLimits`] is a `ServerApp`
//! around the proxy app: it refuses connections beyond `max_connections` at accept, and wraps every
//! accepted stream in a [`ClientStream`], an IO adapter that enforces the head deadline on its
//! reads. At the deadline it writes a `408` (when the client started a request), closes its write
//! side, and tells [`ClientLimits`], which drops the connection's task (and with it pingora's
//! half-read session), so no pingora error line is printed for it.
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
//! re-arms for what is left. A keep-alive connection therefore touches the timer wheel about once
//! per `client_header_timeout`, not twice per request; pingora's own keep-alive timer (a timer
//! registration per request) is off for connections under the adapter.
//!
//! The connection also keeps the last verified session ([`SessionMemo`]), which the proxy takes
//! for the length of a request ([`take_memo`], [`put_memo`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::prelude::fast_timeout::FastTimeout;
use pingora::prelude::ToTimeout;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::answer::Answer;
use crate::config::LimitsConfig;
use crate::gateway::Gateway;
use crate::verify::SessionMemo;

/// File descriptors kept out of the derived `max_connections` besides the upstream pool:
/// listeners, admin connections, the JWKS/connector/OAuth HTTP clients, log files, and each
/// runtime's epoll and wake-up fds.
const FD_RESERVE: u64 = 128;
/// pingora's idle upstream pool holds up to this many connections per worker thread
/// (`upstream_keepalive_pool_size`).
const UPSTREAM_POOL_PER_THREAD: u64 = 128;
/// The smallest derived `max_connections`, for absurdly low open-file limits.
const MIN_DERIVED: u64 = 16;
/// A soft open-file limit raised to the hard one is capped here (a hard limit of "unlimited"
/// must not turn into an unbounded connection count).
const NOFILE_CAP: u64 = 1 << 20;

/// The default `max_connections` for an open-file limit of `nofile` and `threads` workers:
/// `(nofile - 128 x threads - 128) / 2`, at least 16. Each client connection may hold an upstream
/// connection while its request is in flight (hence the half); the rest is pingora's idle
/// upstream pool (128 per thread) and [`FD_RESERVE`].
pub(crate) fn derived_max_connections(nofile: u64, threads: usize) -> usize {
    let pool = UPSTREAM_POOL_PER_THREAD.saturating_mul(threads.max(1) as u64);
    let spare = nofile.saturating_sub(pool).saturating_sub(FD_RESERVE) / 2;
    usize::try_from(spare.max(MIN_DERIVED)).unwrap_or(usize::MAX)
}

/// Raises the soft open-file limit to the hard one (at most [`NOFILE_CAP`]), as Go's runtime and
/// most servers do, and returns the soft limit in effect. The hard limit is the operator's word;
/// the soft one is often a 1024 inherited from a login shell.
pub(crate) fn raise_open_file_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct it is given a pointer to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    let target = r.rlim_max.min(NOFILE_CAP);
    if r.rlim_cur < target {
        let want = libc::rlimit {
            rlim_cur: target,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads the local struct; failing leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            r.rlim_cur = target;
        }
    }
    r.rlim_cur.min(NOFILE_CAP)
}

/// Connection metrics, registered in the process registry on first use.
struct ConnMetrics {
    open: IntGauge,
    max: IntGauge,
    refused: IntCounter,
    header_timeouts: IntCounter,
}

fn conn_metrics() -> &'static ConnMetrics {
    static M: OnceLock<ConnMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = &crate::metrics::metrics().registry;
        let m = ConnMetrics {
            open: IntGauge::new(
                "extoken_connections_open",
                "Client connections open on the proxy listener.",
            )
            .expect("static metric definition"),
            max: IntGauge::new(
                "extoken_connections_max",
                "The max_connections in effect (configured or derived from the open-file limit).",
            )
            .expect("static metric definition"),
            refused: IntCounter::new(
                "extoken_connections_refused_total",
                "Client connections closed at accept because max_connections were open.",
            )
            .expect("static metric definition"),
            header_timeouts: IntCounter::new(
                "extoken_client_header_timeouts_total",
                "Client connections closed because a request head took longer than client_header_timeout.",
            )
            .expect("static metric definition"),
        };
        for c in [
            Box::new(m.open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.max.clone()),
            Box::new(m.refused.clone()),
            Box::new(m.header_timeouts.clone()),
        ] {
            // Fresh names in a registry of our own: this only fails on a programming error.
            if let Err(e) = r.register(c) {
                tracing::error!(target: "extoken::listener", "metric not registered: {e}");
            }
        }
        m
    })
}

/// The `ServerApp` of the proxy listener: `inner` (pingora's HTTP proxy app) behind the
/// connection limit and the head deadline. Limits are read from the live config at each accept,
/// so a reload applies them to new connections.
pub(crate) struct ClientLimits<A> {
    inner: Arc<A>,
    state: Arc<ArcSwap<Gateway>>,
    /// `max_connections` when the config leaves it out.
    derived_max: usize,
    open: AtomicUsize,
}

impl<A> ClientLimits<A> {
    /// `threads`: the proxy's worker threads (each has its own upstream pool). Raises the soft
    /// open-file limit first (see [`raise_open_file_limit`]).
    pub(crate) fn new(inner: A, state: Arc<ArcSwap<Gateway>>, threads: usize) -> Self {
        let nofile = raise_open_file_limit();
        let derived_max = derived_max_connections(nofile, threads);
        let configured = state.load().config.limits.max_connections;
        let max = configured.unwrap_or(derived_max);
        conn_metrics().max.set(gauge_value(max));
        tracing::info!(target: "extoken::listener", max_connections = max, open_file_limit = nofile, derived = configured.is_none(), "client connection limit");
        ClientLimits {
            inner: Arc::new(inner),
            state,
            derived_max,
            open: AtomicUsize::new(0),
        }
    }

    /// Takes a connection slot, unless `max` are taken.
    fn admit(&self, max: usize) -> Option<Slot<'_>> {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    conn_metrics().open.inc();
                    return Some(Slot(&self.open));
                }
                Err(now) => n = now,
            }
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One open client connection, counted until dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        conn_metrics().open.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ClientLimits<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (max, header_timeout) = {
            let gw = self.state.load();
            let l = &gw.config.limits;
            (
                l.max_connections.unwrap_or(self.derived_max),
                l.client_header_timeout.0,
            )
        };
        conn_metrics().max.set(gauge_value(max));
        let Some(_slot) = self.admit(max) else {
            // Closed before a byte is read: the fd is back at once, and the admin listener and
            // the connections already open keep theirs.
            conn_metrics().refused.inc();
            tracing::debug!(target: "extoken::listener", max, "connection refused: max_connections open");
            return None;
        };
        let conn = Arc::new(Conn::default());
        let stream: Stream = Box::new(ClientStream::new(stream, conn.clone(), header_timeout));
        // pingora's HTTP app runs the connection's whole keep-alive loop in this call; a head
        // deadline ends it from outside (the adapter has written the 408 already).
        tokio::select! {
            biased;
            _ = conn.expired.notified() => {}
            _ = self.inner.process_new(stream, shutdown) => {}
        }
        // The HTTP app hands no stream back (it loops over keep-alive requests itself), and one
        // given back here would be counted and wrapped a second time.
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

const HEAD: u8 = 0;
const REQUEST: u8 = 1;
const IDLE: u8 = 2;

/// What the adapter and the proxy phases share about one connection.
#[derive(Default)]
struct Conn {
    /// [`HEAD`] (reading a head, the deadline runs), [`REQUEST`] (head read: body and response,
    /// pingora's per-read body timeout applies), [`IDLE`] (between requests: the next byte read
    /// starts a head).
    phase: AtomicU8,
    /// Signalled once the head deadline passed.
    expired: Notify,
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
    fn new(inner: Stream, conn: Arc<Conn>, header_timeout: Duration) -> ClientStream {
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

    fn arm(&mut self, at: Instant) {
        self.armed = at;
        self.timer = FastTimeout::create(at.saturating_duration_since(Instant::now())).timeout();
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
    let stream = session.as_downstream().stream()?;
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
    fn derived_limit_leaves_room_for_upstreams_and_the_rest() {
        // 1024 soft limit, 2 threads: (1024 - 256 - 128) / 2.
        assert_eq!(derived_max_connections(1024, 2), 320);
        assert_eq!(derived_max_connections(65536, 4), (65536 - 512 - 128) / 2);
        assert_eq!(derived_max_connections(100, 8), 16);
        assert_eq!(derived_max_connections(0, 0), 16);
    }

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
