//! The gRPC decision listener's client limits, the proxy listener's in tonic's terms: at most
//! `limits.max_connections` open connections (more are closed at accept, as `listener.rs` does;
//! the default is derived from the open-file limit the same way), HTTP/2 streams per connection
//! (`limits.h2_max_concurrent_streams`), header bytes (`limits.max_header_bytes`), and dead peers
//! found by HTTP/2 pings every `limits.keepalive_timeout`. The limits are read once, when the
//! listener starts: a reload does not change them (as for the proxy listener's count).

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

/// A connection of the gRPC listener, counted against `max_connections` while it is open.
pub(super) struct Counted {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
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
) -> impl Stream<Item = io::Result<Counted>> + Send {
    let open = Arc::new(Semaphore::new(max.max(1)));
    futures_util::stream::unfold((listener, open), |(listener, open)| async move {
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
