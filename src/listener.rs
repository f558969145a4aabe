//! The proxy listener's client limits: `limits.max_connections`, and the deadlines pingora does
//! not have (`limits.client_header_timeout` for a whole request head) or sets per request
//! (`limits.keepalive_timeout`, `limits.client_body_timeout`).
//!
//! pingora's downstream read timeout is per read, so a client that sends one byte of its head
//! every few seconds holds a connection (and an fd) forever. [`ClientLimits`] is a `ServerApp`
//! around the proxy app: it refuses connections beyond `max_connections` at accept, and wraps every
//! accepted stream in a [`ClientStream`] (`listener/client_stream.rs`), the IO adapter that
//! enforces the deadlines on its reads and keeps the connection's last verified session. At a
//! head deadline the adapter writes a `408` (when the client started a request), closes its write
//! side, and tells [`ClientLimits`], which drops the connection's task (and with it pingora's
//! half-read session), so no pingora error line is printed for it.
//!
//! The TLS listener (`tls.listen`) is a second TCP endpoint of the same service and app: a
//! connection that arrived on its port takes its slot first, then runs the TLS handshake under
//! `limits.tls_handshake_timeout` ([`crate::tls::ServerTls::accept`]), and only the TLS stream is
//! wrapped in the adapter. pingora's own TLS listener would handshake before the app sees the
//! connection: outside `max_connections`, for up to 60 s, with an ERROR line per failure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use crate::gateway::Gateway;

mod client_stream;
mod conn;
mod h2;
mod session;
mod ws_frames;

use client_stream::ClientStream;
use conn::Conn;
pub(crate) use h2::{Conns, InFlight};
pub(crate) use session::{
    client_cert, head_complete, put_memo, request_done, response_arrived, response_due,
    response_was_late, take_memo, upgraded,
};

/// What an HTTP/2 client sends first (RFC 9113 §3.4): `h2.rs` sniffs for it, `client_stream.rs`
/// replays it; here, so neither names the other for it.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
    upgraded_session_expired: IntCounter,
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
            upgraded_session_expired: IntCounter::new(
                "extoken_upgraded_session_expired_total",
                "Upgraded connections closed because the session that opened them expired.",
            )
            .expect("static metric definition"),
        };
        for c in [
            Box::new(m.open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.max.clone()),
            Box::new(m.refused.clone()),
            Box::new(m.header_timeouts.clone()),
            Box::new(m.upgraded_session_expired.clone()),
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
    /// The TLS listener's address (fixed at start, as listeners are).
    tls_listen: Option<SocketAddr>,
    /// `h2c`: HTTP/2 with prior knowledge on the cleartext listener (fixed at start).
    h2c: bool,
    /// The HTTP/2 connections, for their sessions.
    conns: Arc<Conns>,
}

impl<A: ServerApp + Send + Sync + 'static> ClientLimits<A> {
    /// An HTTP/2 connection: registered for its sessions (`listener/h2.rs`), with a shutdown
    /// watch of its own that also fires when it idles.
    async fn serve_h2(
        self: &Arc<Self>,
        stream: ClientStream,
        conn: Arc<Conn>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let registered = self.conns.register(&stream, conn.clone());
        let (tx, rx) = tokio::sync::watch::channel(*shutdown.borrow());
        let goaway = async {
            if registered.is_some() {
                h2::goaway_when(shutdown.clone(), tx, &conn, &self.state).await;
            } else {
                // Without its sessions' count the connection cannot tell idle from busy: only
                // the server's shutdown reaches it.
                let mut shutdown = shutdown.clone();
                let _ = shutdown.changed().await;
                let _ = tx.send(true);
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            _ = conn.expired.notified() => {}
            _ = self.inner.process_new(Box::new(stream), &rx) => {}
            _ = goaway => {}
        }
        drop(registered);
        None
    }
}

/// A connection ready for HTTP: see [`ClientLimits::start`].
struct Started {
    stream: Stream,
    client_cert: Option<Arc<crate::telemetry::ClientCert>>,
    h2: bool,
    /// Its first bytes were read to tell HTTP/2 from HTTP/1.1 (`h2c`).
    sniffed: bool,
    /// When its first head's deadline starts.
    at: Instant,
}

impl Started {
    fn plain(stream: Stream, at: Instant) -> Started {
        Started {
            stream,
            client_cert: None,
            h2: false,
            sniffed: false,
            at,
        }
    }
}

impl<A> ClientLimits<A> {
    /// Before any HTTP: the TLS handshake (on the TLS listener), or the first bytes (with
    /// `h2c`). The stream, its verified client certificate, whether it speaks HTTP/2, and when
    /// its first head's deadline starts; `None` when the connection is to be closed.
    async fn start(
        &self,
        stream: Stream,
        tls: Option<Arc<crate::tls::ServerTls>>,
        (header_timeout, handshake_timeout): (Duration, Duration),
        accepted: Instant,
    ) -> Option<Started> {
        if self.arrived_on_tls(&stream) {
            // The config of the accept: a reload during the handshake applies to the next one.
            let Some(tls) = tls else {
                tracing::debug!(target: "extoken::listener", "TLS connection closed: the config in force has no tls block");
                return None;
            };
            let (stream, cert) = tls.accept(stream, handshake_timeout).await?;
            let h2 = stream.selected_alpn_proto() == Some(ALPN::H2);
            return Some(Started {
                stream,
                client_cert: cert,
                h2,
                sniffed: false,
                at: Instant::now(),
            });
        }
        if !self.h2c {
            return Some(Started::plain(stream, accepted));
        }
        match h2::sniff(stream, header_timeout).await {
            Ok((stream, h2)) => Some(Started {
                h2,
                sniffed: true,
                ..Started::plain(stream, accepted)
            }),
            Err(h2::NotSniffed::Late) => {
                conn_metrics().header_timeouts.inc();
                tracing::debug!(target: "extoken::listener", "first bytes not in within client_header_timeout; closing");
                None
            }
            Err(h2::NotSniffed::Gone) => None,
        }
    }

    /// `threads`: the proxy's worker threads (each has its own upstream pool). Raises the soft
    /// open-file limit first (see [`raise_open_file_limit`]).
    pub(crate) fn new(
        inner: A,
        state: Arc<ArcSwap<Gateway>>,
        threads: usize,
        conns: Arc<Conns>,
    ) -> Self {
        let nofile = raise_open_file_limit();
        let derived_max = derived_max_connections(nofile, threads);
        let configured = state.load().config.limits.max_connections;
        let tls_listen = state.load().config.tls.as_ref().map(|t| t.listen);
        let h2c = state.load().config.h2c;
        let max = configured.unwrap_or(derived_max);
        conn_metrics().max.set(gauge_value(max));
        tracing::info!(target: "extoken::listener", max_connections = max, open_file_limit = nofile, derived = configured.is_none(), "client connection limit");
        ClientLimits {
            inner: Arc::new(inner),
            state,
            derived_max,
            open: AtomicUsize::new(0),
            tls_listen,
            h2c,
            conns,
        }
    }

    /// The same limits for a listener that speaks only cleartext HTTP/1.1 (the decision
    /// listener): no TLS handshake, no h2c sniffing, whatever the proxy listener does.
    pub(crate) fn plain_http1(mut self) -> Self {
        self.tls_listen = None;
        self.h2c = false;
        self
    }

    /// Whether `stream` arrived on the TLS listener (the config keeps its port apart from
    /// `listen`'s).
    fn arrived_on_tls(&self, stream: &Stream) -> bool {
        let Some(tls) = self.tls_listen else {
            return false;
        };
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        local.is_some_and(|l| l.port() == tls.port())
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
        let accepted = Instant::now();
        let gw = self.state.load_full();
        let l = &gw.config.limits;
        let (max, header_timeout) = (
            l.max_connections.unwrap_or(self.derived_max),
            l.client_header_timeout.0,
        );
        conn_metrics().max.set(gauge_value(max));
        let Some(_slot) = self.admit(max) else {
            // Closed before a byte is read: the fd is back at once, and the admin listener and
            // the connections already open keep theirs.
            conn_metrics().refused.inc();
            tracing::debug!(target: "extoken::listener", max, "connection refused: max_connections open");
            return None;
        };
        let limits = (header_timeout, l.tls_handshake_timeout.0);
        let tls = gw.tls.clone();
        // Not held for the connection's life: a reload's old gateway is freed when its requests end.
        drop(gw);
        let s = self.start(stream, tls, limits, accepted).await?;
        let conn = Arc::new(Conn::new(s.client_cert, s.h2));
        let mut stream = ClientStream::new(s.stream, conn.clone(), header_timeout, s.at);
        if s.sniffed {
            stream.sniffed(s.h2);
        }
        if s.h2 {
            return self.serve_h2(stream, conn, shutdown).await;
        }
        // pingora's HTTP app runs the connection's whole keep-alive loop in this call; a head
        // deadline ends it from outside (the adapter has written the 408 already).
        tokio::select! {
            biased;
            _ = conn.expired.notified() => {}
            _ = self.inner.process_new(Box::new(stream), shutdown) => {}
        }
        // The HTTP app hands no stream back (it loops over keep-alive requests itself), and one
        // given back here would be counted and wrapped a second time.
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_limit_leaves_room_for_upstreams_and_the_rest() {
        // 1024 soft limit, 2 threads: (1024 - 256 - 128) / 2.
        assert_eq!(derived_max_connections(1024, 2), 320);
        assert_eq!(derived_max_connections(65536, 4), (65536 - 512 - 128) / 2);
        assert_eq!(derived_max_connections(100, 8), 16);
        assert_eq!(derived_max_connections(0, 0), 16);
    }
}
