//! Loopback plumbing shared by every other part of the harness: free ports, the clock, polling
//! with a bound ([`eventually`]), and a tiny hyper 1 server ([`HttpServer`]) that the JWKS
//! endpoint, the recording backend and the connector endpoints are built on.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A port nobody listens on right now, for a gateway to bind later. Taken below Linux's
/// ephemeral range (32768-60999), where every `bind(0)` of the tests' own servers lands: a port
/// released here and bound by the gateway a moment later can then never have been handed to a
/// backend in between (which once made a gateway's readiness probe reach another test's backend).
/// Each process walks the range from its own offset, one port per call.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + n) % COUNT) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999");
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Polls `cond` every 25 ms until it is true or `limit` passed; returns whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What an [`HttpServer`] does with each request; an `Err` drops the connection unanswered.
pub type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, String>> + Send>,
        > + Send
        + Sync,
>;

/// An HTTP/1 server on a loopback listener; stops accepting when dropped.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// `refuse` is asked for every accepted connection: `true` closes it without an answer.
    pub fn start(
        listener: TcpListener,
        handler: Handler,
        refuse: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> HttpServer {
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if refuse() {
                    drop(stream);
                    continue;
                }
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let h = handler.clone();
                        async move { h(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HttpServer { addr, task }
    }

    /// A server that answers every connection with `handler`.
    pub async fn serve(handler: Handler) -> HttpServer {
        Self::start(bind(0).await, handler, Arc::new(|| false))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback listener on `port` (0: any free one).
pub async fn bind(port: u16) -> TcpListener {
    TcpListener::bind(("127.0.0.1", port)).await.unwrap()
}

/// A whole answer with one content type.
pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

/// Reads one whole response with a `Content-Length` body: the status and the raw text.
#[allow(dead_code)] // not every test binary speaks raw HTTP
pub async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if body.len() >= len {
                return (status_of(&got), text);
            }
        }
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        .expect("the response did not arrive within 5 s")
        .expect("read");
        assert!(n > 0, "closed mid-response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[allow(dead_code)]
pub fn status_of(bytes: &[u8]) -> u16 {
    String::from_utf8_lossy(bytes)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Reads until the gateway closes the connection (EOF or reset), at most `limit`: what arrived,
/// and after how long (from `since`) it was closed; `None` if it was still open at `limit`.
#[allow(dead_code)] // not every test binary reads raw connections
pub async fn read_until_closed(
    s: &mut tokio::net::TcpStream,
    since: Instant,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, tokio::io::AsyncReadExt::read(s, &mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(since.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}
