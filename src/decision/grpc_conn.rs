//! The gRPC decision listener's client limits, the proxy listener's in tonic's terms: at most
//! `limits.max_connections` open connections (more are closed at accept, as `listener.rs` does;
//! the default is derived from the open-file limit the same way), HTTP/2 streams per connection
//! (`limits.h2_max_concurrent_streams`), header bytes (`limits.max_header_bytes`), a connection
//! cut when its HTTP/2 preface is not in within `limits.client_header_timeout` (or a peer could
//! hold a connection, and a place under the cap, by never starting), and dead peers found by
//! HTTP/2 pings every `limits.keepalive_timeout`. The limits are read once, when the
//! listener starts: a reload does not change them (as for the proxy listener's count).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::LimitsConfig;

/// How long an HTTP/2 ping may go unanswered before the connection is closed.
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed accept (out of file descriptors): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Length of the HTTP/2 connection preface (RFC 9113 §3.4), the first bytes a client sends.
const PREFACE_LEN: usize = 24;

/// A connection of the gRPC listener, counted against `max_connections` while it is open.
pub(super) struct Counted {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the preface is in: when the connection is cut, and how many of its bytes came.
    preface_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    preface_read: usize,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(deadline) = this.preface_deadline.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                this.preface_read += buf.filled().len() - before;
                if this.preface_read >= PREFACE_LEN {
                    this.preface_deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            // Waiting for the client: the deadline's timer wakes this read too.
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                tracing::debug!(target: "extoken::decision", "gRPC decision connection closed: no preface within client_header_timeout");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within client_header_timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;
    /// The TCP peer, which `decision.trusted_proxies` is checked against.
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// The connection cap in effect: `max_connections`, or the one derived for `threads`.
pub(super) fn max_connections(limits: &LimitsConfig, threads: usize) -> usize {
    limits.max_connections.unwrap_or_else(|| {
        let nofile = crate::listener::raise_open_file_limit();
        crate::listener::derived_max_connections(nofile, threads)
    })
}

/// The accepted connections of `listener`, at most `max` open at once: one beyond is closed
/// at once, and logged (at debug: a flood must not become a flood of lines).
pub(super) fn incoming(
    listener: TcpListener,
    max: usize,
    preface_timeout: Duration,
) -> impl Stream<Item = io::Result<Counted>> + Send {
    let open = Arc::new(Semaphore::new(max.max(1)));
    futures_util::stream::unfold((listener, open), move |(listener, open)| async move {
        loop {
            let io = match listener.accept().await {
                Ok((io, _)) => io,
                Err(e) => {
                    tracing::warn!(target: "extoken::decision", "gRPC decision accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::debug!(target: "extoken::decision", "gRPC decision connection closed: max_connections open");
                continue;
            };
            // Checks are small request/response pairs: no Nagle delay on the answer.
            let _ = io.set_nodelay(true);
            let conn = Counted {
                io,
                _permit: permit,
                preface_deadline: Some(Box::pin(tokio::time::sleep(preface_timeout))),
                preface_read: 0,
            };
            return Some((Ok(conn), (listener, open)));
        }
    })
}

/// tonic's server with the per-connection limits of `limits`.
pub(super) fn server(limits: &LimitsConfig) -> tonic::transport::Server {
    let header_bytes = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .http2_max_header_list_size(header_bytes)
        .http2_keepalive_interval(Some(limits.keepalive_timeout.0))
        .http2_keepalive_timeout(Some(PING_TIMEOUT))
}
