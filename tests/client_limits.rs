//! Client deadlines and limits, tried over raw loopback sockets against the real binary:
//! `limits.client_header_timeout` (slowloris, half heads, on keep-alive connections too),
//! `limits.keepalive_timeout`, `limits.client_body_timeout`, `limits.max_connections`, and
//! clients that vanish mid-response. Deadlines are configured short (1 s) so every test ends in
//! a few seconds; time bounds are generous, never tight.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROJECT: &str = "P2clientLimitsProject00000";

/// One gateway (admin listener on) with `limits`, routing every path to a recording backend.
struct Rig {
    gw: GatewayProcess,
    backend: Backend,
    _jwks: JwksServer,
}

async fn rig(limits: Value) -> Rig {
    rig_with(limits, Backend::start().await, |c| c).await
}

async fn rig_with(
    limits: Value,
    backend: Backend,
    routes: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> Rig {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let config = routes(ConfigBuilder::new(PROJECT, &jwks.url()))
        .route(RouteSpec::new("/", &backend.url()).name("root").auth_none())
        .set("limits", limits);
    let gw = GatewayProcess::start_with_admin(&config.to_yaml()).await;
    Rig {
        gw,
        backend,
        _jwks: jwks,
    }
}

/// The value of an unlabelled metric in `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metric_of(gw: &GatewayProcess, name: &str) -> f64 {
    let text = gw.metrics().await;
    metric(&text, name).unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

async fn healthz(gw: &GatewayProcess) {
    let r = tokio::time::timeout(Duration::from_secs(2), gw.admin_get("/healthz")).await;
    assert!(
        matches!(r, Ok(Some((200, _)))),
        "admin /healthz did not answer: {r:?}"
    );
}

/// A GET on a fresh client (no pooled connection of an earlier test step): status and latency.
async fn timed_get(addr: SocketAddr, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("the request failed");
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    (status, started.elapsed())
}

/// A slowloris client: connects, then sends a request head one byte every 50 ms, never
/// finishing it, until the gateway closes the connection. When it was closed (from the connect),
/// and what it was sent.
async fn dribble(addr: SocketAddr, connected: Arc<AtomicUsize>) -> (Option<Duration>, Vec<u8>) {
    const PREFIX: &[u8] = b"GET /slow HTTP/1.1\r\nHost: example.com\r\nX-Pad: ";
    let since = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    connected.fetch_add(1, Ordering::SeqCst);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    for i in 0.. {
        if since.elapsed() > Duration::from_secs(8) {
            return (None, got);
        }
        // Once the answer began, only read (a write now could reset the connection under it).
        if got.is_empty() {
            let b = PREFIX.get(i).copied().unwrap_or(b'a');
            let _ = s.write_all(&[b]).await;
        }
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return (Some(since.elapsed()), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    unreachable!()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_closed_at_the_header_deadline_and_real_requests_pass() {
    const SLOW: usize = 300;
    let r = rig(json!({"client_header_timeout": "1s"})).await;
    let addr = r.gw.addr;
    let connected = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(dribble(addr, connected.clone())))
        .collect();
    let all_in = eventually(Duration::from_secs(5), || async {
        connected.load(Ordering::SeqCst) == SLOW
    })
    .await;
    assert!(
        all_in,
        "only {} slow connections opened",
        connected.load(Ordering::SeqCst)
    );

    // While all of them dribble: a real request is answered, and promptly.
    let (status, took) = timed_get(addr, "/real").await;
    eprintln!("real request under {SLOW} slowloris connections: {status} in {took:?}");
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    healthz(&r.gw).await;

    let mut closed_at = Vec::new();
    for t in slow {
        let (closed, got) = t.await.unwrap();
        let closed = closed.expect("a slowloris connection was still open after 8 s");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
        assert!(text.contains("request_timeout"), "{text:?}");
        closed_at.push(closed);
    }
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[SLOW - 1]);
    eprintln!("slowloris connections closed between {first:?} and {last:?} after connecting");
    assert!(
        first >= Duration::from_millis(900),
        "closed early: {first:?}"
    );
    assert!(last < Duration::from_secs(4), "closed late: {last:?}");

    let recorded: Vec<_> = r.backend.requests().into_iter().map(|q| q.uri).collect();
    assert_eq!(recorded, ["/real"], "only the real request was forwarded");
    assert!(metric_of(&r.gw, "extoken_client_header_timeouts_total").await >= SLOW as f64);
    let drained = eventually(Duration::from_secs(3), || async {
        metric_of(&r.gw, "extoken_connections_open").await <= 1.0
    })
    .await;
    assert!(drained, "{}", r.gw.metrics().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_head_gets_408_at_the_deadline_on_new_and_kept_alive_connections() {
    let r = rig(json!({"client_header_timeout": "1s", "keepalive_timeout": "5s"})).await;
    let addr = r.gw.addr;

    // A new connection: half a head, then nothing.
    let since = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /half HTTP/1.1\r\nHost: example.com\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, since, Duration::from_secs(5)).await;
    let closed = closed.expect("still open 5 s after half a head");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed after {closed:?}"
    );
    let text = String::from_utf8_lossy(&got).into_owned();
    assert_eq!(status_of(&got), 408, "{text:?}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("connection: close"), "{head}");
    assert!(head.contains("x-request-id: "), "{head}");
    let j: Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["error"], "request_timeout", "{body}");

    // A connection that never sends a byte is closed at the deadline too, without an answer.
    let since = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, since, Duration::from_secs(5)).await;
    let closed = closed.expect("a silent connection was still open after 5 s");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // A kept-alive connection: the idle wait (longer than the head deadline) is fine; the next
    // head has its own deadline from its first byte.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let since = Instant::now();
    s.write_all(b"GET /second HTTP/1.1\r\nHost: exa")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, since, Duration::from_secs(5)).await;
    let closed = closed.expect("still open 5 s after half a second head");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed after {closed:?}"
    );
    assert_eq!(status_of(&got), 408, "{:?}", String::from_utf8_lossy(&got));

    let recorded: Vec<_> = r.backend.requests().into_iter().map(|q| q.uri).collect();
    assert_eq!(recorded, ["/first"]);
    healthz(&r.gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connections_are_closed_after_keepalive_timeout() {
    let r = rig(json!({"keepalive_timeout": "1s"})).await;
    let mut s = TcpStream::connect(r.gw.addr).await.unwrap();
    for path in ["/one", "/two"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (status, text) = read_response(&mut s).await;
        assert_eq!(status, 200, "{text}");
        // Shorter than the timeout: the connection is still there for the next request.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let since = Instant::now() - Duration::from_millis(300);
    let (got, closed) = read_until_closed(&mut s, since, Duration::from_secs(5)).await;
    let closed = closed.expect("an idle keep-alive connection was still open after 5 s");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed after {closed:?} idle"
    );
    assert!(got.is_empty(), "an idle close says nothing: {got:?}");
    assert_eq!(r.backend.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_ends_the_request_with_408_and_nothing_complete_reaches_the_backend() {
    let r = rig(json!({"client_body_timeout": "1s"})).await;
    for (name, head, part) in [
        (
            "content-length",
            "POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n",
            "0123456789",
        ),
        (
            "chunked",
            "POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n",
            "a\r\n0123456789\r\n",
        ),
    ] {
        let mut s = TcpStream::connect(r.gw.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(part.as_bytes()).await.unwrap();
        let since = Instant::now();
        let (got, closed) = read_until_closed(&mut s, since, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got);
        let closed = closed.unwrap_or_else(|| panic!("{name}: still open after 5 s: {text:?}"));
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
            "{name}: closed after {closed:?}"
        );
        assert_eq!(status_of(&got), 408, "{name}: {text:?}");
        assert!(text.contains("request_timeout"), "{name}: {text:?}");
    }
    // The backend saw each request start, never a complete one: it records only whole requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.backend.count(), 0, "{:#?}", r.backend.requests());

    // A body that arrives is forwarded whole.
    let mut s = TcpStream::connect(r.gw.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"0123456789").await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    assert_eq!(r.backend.only().body, b"0123456789");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_max_connections_are_closed_at_once_and_counted() {
    const MAX: usize = 20;
    let r = rig(json!({"max_connections": MAX, "client_header_timeout": "10s"})).await;
    let addr = r.gw.addr;
    let mut idle = Vec::new();
    for _ in 0..MAX {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let all_open = eventually(Duration::from_secs(3), || async {
        metric_of(&r.gw, "extoken_connections_open").await == MAX as f64
    })
    .await;
    assert!(all_open, "{}", r.gw.metrics().await);
    let refused_before = metric_of(&r.gw, "extoken_connections_refused_total").await;

    // One more: accepted by the kernel, closed by the gateway at once, nothing said.
    let since = Instant::now();
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut extra, since, Duration::from_secs(3)).await;
    let closed = closed.expect("the extra connection was not closed");
    assert!(closed < Duration::from_secs(1), "closed after {closed:?}");
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(
        metric_of(&r.gw, "extoken_connections_refused_total").await,
        refused_before + 1.0
    );
    assert_eq!(
        metric_of(&r.gw, "extoken_connections_max").await,
        MAX as f64
    );
    // The admin listener is apart from the limit.
    healthz(&r.gw).await;

    // The idle ones go; new connections are served again.
    drop(idle);
    let served = eventually(Duration::from_secs(3), || async {
        timed_get(addr, "/after").await.0 == 200
    })
    .await;
    assert!(served, "{}", r.gw.metrics().await);
    healthz(&r.gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_vanish_mid_response_leave_the_gateway_serving() {
    // 4 MiB: far more than the socket buffers hold, so the client leaves mid-body.
    let big: &'static str = Box::leak("x".repeat(4 << 20).into_boxed_str());
    let big_up = Backend::start_with(Duration::ZERO, big).await;
    let slow_up = Backend::start_with(Duration::from_millis(500), "slow").await;
    let mut r = rig_with(json!({}), Backend::start().await, |c| {
        c.route(
            RouteSpec::new("/big", &big_up.url())
                .name("big")
                .auth_none(),
        )
        .route(
            RouteSpec::new("/slow", &slow_up.url())
                .name("slow")
                .auth_none(),
        )
    })
    .await;
    let addr = r.gw.addr;
    for i in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("#{i}: no response"))
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 "), "#{i}");
        drop(s); // gone, with most of the body unread
    }
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .unwrap();
        drop(s); // gone before the upstream answers
    }
    let (status, took) = timed_get(addr, "/next").await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(r.gw.is_running());
    healthz(&r.gw).await;
    // Every abandoned connection was let go.
    let released = eventually(Duration::from_secs(5), || async {
        metric_of(&r.gw, "extoken_connections_open").await <= 1.0
    })
    .await;
    assert!(released, "{}", r.gw.metrics().await);
    assert_eq!(r.backend.only().uri, "/next");
}
