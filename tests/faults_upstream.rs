//! Upstream faults, end to end with the real binary on loopback: an upstream that never answers,
//! a full listen queue, a closed port, half a response then a reset, a slow one, one restarted
//! under load, and the retry rules (a failed connect is retried for idempotent requests only; a
//! request that reached an upstream is retried only when a pooled connection turned out dead
//! before any of the response arrived).
//!
//! Every case checks the status, the time to answer (upper bounds generous, lower bounds where
//! they prove which timeout fired), what reached the upstream, and that the gateway still serves a
//! normal request afterwards. The faulty upstreams are scripted on raw sockets ([`Scripted`]).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const PROJECT: &str = "P2FaultsUpstream";

// ---- a scripted upstream ---------------------------------------------------------------------

/// What the scripted upstream does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// `200`, body `ok`, keep-alive.
    Ok,
    /// Reads the request and never answers (the socket stays open).
    Hang,
    /// Reads the request and closes the connection without a byte (a keep-alive connection the
    /// upstream dropped as the request arrived).
    Close,
    /// Reads the request and resets the connection without a byte.
    Reset,
    /// The head (`content-length: 100`) and 10 bytes of body, then a reset.
    HalfThenReset,
    /// `200` with a 5-byte body sent one byte every 400 ms.
    Trickle,
}

/// The act for the n-th request (0-based, counted over all connections).
type Script = Arc<dyn Fn(usize) -> Act + Send + Sync>;

/// An HTTP/1.1 upstream on a raw loopback socket that does what its [`Script`] says, counting
/// connections and requests (`"METHOD /path"`, in arrival order).
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Scripted {
    async fn start(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Scripted {
        let listener = bind(0).await;
        let addr = listener.local_addr().unwrap();
        let script: Script = Arc::new(script);
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, r, t) = (connections.clone(), requests.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let conn = tokio::spawn(serve_scripted(stream, script.clone(), r.clone()));
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Scripted {
            addr,
            connections,
            requests,
            tasks,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Reads one request head (and a `content-length` body); `None` at the end of the connection.
async fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => have += n,
        }
    }
    let line = head.lines().next().unwrap_or_default();
    Some(line.rsplit_once(' ').map_or(line, |(l, _)| l).to_string())
}

async fn serve_scripted(mut s: TcpStream, script: Script, seen: Arc<Mutex<Vec<String>>>) {
    while let Some(req) = read_request(&mut s).await {
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(req);
            seen.len() - 1
        };
        match script(n) {
            Act::Ok => {
                let ok =
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                if s.write_all(ok).await.is_err() {
                    return;
                }
            }
            Act::Hang => std::future::pending::<()>().await,
            Act::Close => return,
            Act::Reset => {
                let _ = s.set_zero_linger();
                return;
            }
            Act::HalfThenReset => {
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncontent-type: text/plain\r\n\r\n0123456789";
                let _ = s.write_all(head).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = s.set_zero_linger();
                return;
            }
            Act::Trickle => {
                let head =
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                for b in b"slow!" {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    if s.write_all(&[*b]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A listener with a backlog of 1 that never accepts, its queue filled first: connects to it
/// hang (the kernel drops the SYNs) until the connector gives up. Holds the filling connections.
struct FullQueue {
    addr: SocketAddr,
    _listener: TcpListener,
    _fill: Vec<std::net::TcpStream>,
}

impl FullQueue {
    async fn start() -> FullQueue {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let fill = tokio::task::spawn_blocking(move || {
            let mut fill = Vec::new();
            for _ in 0..16 {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Ok(s) => fill.push(s),
                    Err(_) => return fill,
                }
            }
            panic!("the listen queue of {addr} never filled");
        })
        .await
        .unwrap();
        FullQueue {
            addr,
            _listener: listener,
            _fill: fill,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// ---- the gateway -----------------------------------------------------------------------------

/// A route `name` on `/<name>` to `upstream`, no session needed, with these timeouts etc.
fn route(name: &str, upstream: &str, settings: &[(&str, Value)]) -> RouteSpec {
    let mut r = RouteSpec::new(&format!("/{name}"), upstream)
        .name(name)
        .auth_none();
    for (k, v) in settings {
        r = r.set(k, v.clone());
    }
    r
}

/// The gateway with an admin listener, the `ok` route to a healthy backend, and `routes`.
async fn gateway(ok: &Backend, routes: Vec<RouteSpec>) -> GatewayProcess {
    let key = TestKey::es256("faults-upstream");
    let keys = jwks(&[&key]);
    let mut config = ConfigBuilder::from_jwks_file(PROJECT, "jwks.json")
        .ext_connector()
        .set("threads", 2)
        .route(route("ok", &ok.url(), &[]));
    for r in routes {
        config = config.route(r);
    }
    let files = [("jwks.json", keys.as_str())];
    let how = Launch {
        files: &files,
        admin: true,
        ..Launch::default()
    };
    GatewayProcess::launch(&config.to_yaml(), how).await
}

/// Sends `req`, reads the answer whole; the reply and how long it took.
async fn timed(gw: &GatewayProcess, req: reqwest::RequestBuilder) -> (Reply, Duration) {
    let start = Instant::now();
    let r = gw.send(req).await;
    (r, start.elapsed())
}

async fn get(gw: &GatewayProcess, path: &str) -> (Reply, Duration) {
    timed(gw, gw.client.get(gw.url(path))).await
}

async fn post(gw: &GatewayProcess, path: &str) -> (Reply, Duration) {
    timed(gw, gw.client.post(gw.url(path)).body("{\"a\":1}")).await
}

/// A normal request still gets through, and reached the healthy backend.
async fn assert_alive(gw: &GatewayProcess, ok: &Backend) {
    let before = ok.count();
    let (r, took) = get(gw, "/ok/alive").await;
    assert_eq!((r.status, r.body.as_str()), (200, "backend ok"), "{r:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(ok.count(), before + 1);
}

/// The JSON refusal of an upstream failure: `status`, the error word, the route named, the
/// upstream's address never.
fn assert_failure(r: &Reply, status: u16, route: &str, upstream: SocketAddr) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    assert!(r.header("x-request-id").is_some(), "{r:?}");
    let j = r.json();
    let error = if status == 504 {
        "gateway_timeout"
    } else {
        "bad_gateway"
    };
    assert_eq!(j["error"], error, "{r:?}");
    let d = j["error_description"].as_str().unwrap();
    assert!(d.contains(&format!("route {route}")), "{d}");
    for leak in [upstream.to_string(), upstream.port().to_string()] {
        assert!(
            !r.body.contains(&leak),
            "the body names the upstream: {r:?}"
        );
    }
    assert!(!r.body.contains("127.0.0.1"), "{r:?}");
}

fn requests_total(route: &str, outcome: &str) -> String {
    format!("extoken_requests_total{{outcome=\"{outcome}\",route=\"{route}\"}}")
}

/// Waits (bounded) until `/metrics` counts `want` requests of `route` with `outcome` (requests
/// are counted in the logging phase, just after the client has its answer), then asserts it.
async fn assert_counted(gw: &GatewayProcess, route: &str, outcome: &str, want: f64) {
    let series = requests_total(route, outcome);
    eventually(Duration::from_secs(5), || async {
        metric_sample(&gw.metrics().await, &series) >= want
    })
    .await;
    let text = gw.metrics().await;
    assert_eq!(metric_sample(&text, &series), want, "{series} in\n{text}");
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ---- the cases -------------------------------------------------------------------------------

/// Accepts, reads the request, never answers: `504` once `read_timeout` passed (not before, not
/// pingora's 60 s), counted as `upstream_timeout`; a read timeout is never retried.
#[tokio::test(flavor = "multi_thread")]
async fn silent_upstream_is_504_after_read_timeout() {
    let ok = Backend::start().await;
    let up = Scripted::start(|_| Act::Hang).await;
    let gw = gateway(
        &ok,
        vec![route("silent", &up.url(), &[("read_timeout", "1s".into())])],
    )
    .await;

    let (r, took) = get(&gw, "/silent/a").await;
    assert_failure(&r, 504, "silent", up.addr);
    assert!(took >= secs(0.95) && took < secs(3.0), "took {took:?}");
    let (r, took) = post(&gw, "/silent/b").await;
    assert_failure(&r, 504, "silent", up.addr);
    assert!(took >= secs(0.95) && took < secs(3.0), "took {took:?}");

    assert_eq!(up.requests(), ["GET /silent/a", "POST /silent/b"]);
    assert_counted(&gw, "silent", "upstream_timeout", 2.0).await;
    assert_eq!(
        metric_sample(
            &gw.metrics().await,
            &requests_total("silent", "upstream_error")
        ),
        0.0
    );
    assert_alive(&gw, &ok).await;
}

/// The same on a pooled connection: the first request is answered, the second hangs. A read
/// timeout on a reused connection is not a dead connection: `504`, and the request is not sent
/// again (the upstream may be working on it).
#[tokio::test(flavor = "multi_thread")]
async fn read_timeout_on_a_pooled_connection_is_not_retried() {
    let ok = Backend::start().await;
    let up = Scripted::start(|n| if n == 0 { Act::Ok } else { Act::Hang }).await;
    let gw = gateway(
        &ok,
        vec![route(
            "pooled",
            &up.url(),
            &[("read_timeout", "1s".into()), ("retries", 2.into())],
        )],
    )
    .await;

    let (r, _) = get(&gw, "/pooled/first").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let (r, took) = get(&gw, "/pooled/second").await;
    assert_failure(&r, 504, "pooled", up.addr);
    assert!(took >= secs(0.95) && took < secs(3.0), "took {took:?}");
    assert_eq!(up.requests(), ["GET /pooled/first", "GET /pooled/second"]);
    assert_eq!(
        up.connections(),
        1,
        "the second request was not on the pooled connection"
    );
    assert_counted(&gw, "pooled", "upstream_timeout", 1.0).await;
    assert_alive(&gw, &ok).await;
}

/// A full listen queue: the connect hangs until `connect_timeout`, then `504`. With `retries: 2` a
/// GET makes three attempts (three connect timeouts before the answer: the lower bound proves the
/// retries), a POST one; `retries: 0` makes one. Nothing is ever accepted.
#[tokio::test(flavor = "multi_thread")]
async fn full_listen_queue_is_504_after_connect_timeout_retried_for_get_only() {
    let ok = Backend::start().await;
    let full = FullQueue::start().await;
    let ct = ("connect_timeout", Value::from("1s"));
    let gw = gateway(
        &ok,
        vec![
            route("queue", &full.url(), &[ct.clone(), ("retries", 2.into())]),
            route("once", &full.url(), &[ct, ("retries", 0.into())]),
        ],
    )
    .await;

    let (r, took) = get(&gw, "/queue/a").await;
    assert_failure(&r, 504, "queue", full.addr);
    assert!(
        took >= secs(2.9) && took < secs(5.0),
        "3 attempts, took {took:?}"
    );

    let (r, took) = post(&gw, "/queue/b").await;
    assert_failure(&r, 504, "queue", full.addr);
    assert!(
        took >= secs(0.95) && took < secs(1.9),
        "1 attempt, took {took:?}"
    );

    let (r, took) = timed(&gw, gw.client.delete(gw.url("/queue/c"))).await;
    assert_failure(&r, 504, "queue", full.addr);
    assert!(
        took >= secs(2.9) && took < secs(5.0),
        "DELETE is idempotent, took {took:?}"
    );

    let (r, took) = get(&gw, "/once/d").await;
    assert_failure(&r, 504, "once", full.addr);
    assert!(
        took >= secs(0.95) && took < secs(1.9),
        "retries: 0, took {took:?}"
    );

    assert_counted(&gw, "queue", "upstream_timeout", 3.0).await;
    assert_counted(&gw, "once", "upstream_timeout", 1.0).await;
    assert_alive(&gw, &ok).await;
}

/// A closed port: `502` at once (the retry of a refused connect is immediate too), counted as
/// `upstream_error`, not as a timeout.
#[tokio::test(flavor = "multi_thread")]
async fn refused_connect_is_502_at_once() {
    let ok = Backend::start().await;
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = gateway(&ok, vec![route("closed", &format!("http://{closed}"), &[])]).await;

    for (r, took) in [get(&gw, "/closed/a").await, post(&gw, "/closed/b").await] {
        assert_failure(&r, 502, "closed", closed);
        assert!(took < secs(1.0), "took {took:?}");
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    }
    assert_counted(&gw, "closed", "upstream_error", 2.0).await;
    assert_eq!(
        metric_sample(
            &gw.metrics().await,
            &requests_total("closed", "upstream_timeout")
        ),
        0.0
    );
    assert_alive(&gw, &ok).await;
}

/// What a raw HTTP/1.1 client saw: the bytes it got, and whether the connection ended (EOF or
/// reset) within the wait, and when.
struct RawAnswer {
    bytes: Vec<u8>,
    ended_after: Option<Duration>,
}

impl RawAnswer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Sends `GET path` on a new connection to the gateway and reads until the connection ends or
/// `wait` passed.
async fn raw_get(gw: &GatewayProcess, path: &str, wait: Duration) -> RawAnswer {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: faults.test\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = wait.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => {
                return RawAnswer {
                    bytes,
                    ended_after: None,
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return RawAnswer {
                    bytes,
                    ended_after: Some(start.elapsed()),
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The upstream sends the head and 10 of 100 bytes, then resets. The client already has the
/// `200` head: its connection is closed at once (not left waiting for `read_timeout`), the request
/// is not sent again (on a fresh or a pooled connection), and the next request works.
#[tokio::test(flavor = "multi_thread")]
async fn half_a_response_then_reset_closes_the_client_connection() {
    let ok = Backend::start().await;
    // Request 0 is cut on a fresh connection; 1 opens another one, pooled; 2 is cut on it.
    let up = Scripted::start(|n| match n {
        0 | 2 => Act::HalfThenReset,
        _ => Act::Ok,
    })
    .await;
    let gw = gateway(
        &ok,
        vec![route(
            "cut",
            &up.url(),
            &[("read_timeout", "10s".into()), ("retries", 2.into())],
        )],
    )
    .await;

    let a = raw_get(&gw, "/cut/0", secs(5.0)).await;
    let (r, _) = get(&gw, "/cut/1").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let b = raw_get(&gw, "/cut/2", secs(5.0)).await;
    assert_eq!(
        up.connections(),
        2,
        "request 2 was not on the pooled connection"
    );

    for (what, x) in [("fresh", &a), ("pooled", &b)] {
        let text = x.text();
        assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text:?}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(
            body.len() < 100,
            "{what}: a complete body out of a cut response: {text:?}"
        );
        let ended = x
            .ended_after
            .unwrap_or_else(|| panic!("{what}: the client connection was left open: {text:?}"));
        assert!(ended < secs(2.0), "{what}: closed after {ended:?}");
    }
    assert_eq!(
        up.requests(),
        ["GET /cut/0", "GET /cut/1", "GET /cut/2"],
        "a cut response was retried"
    );
    assert_eq!(
        up.connections(),
        2,
        "request 2 was not on the pooled connection"
    );
    let (r, _) = get(&gw, "/cut/3").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");
    assert_alive(&gw, &ok).await;
}

/// A reset before any byte of the response, on a fresh connection: `502`, not retried (the
/// upstream had the request and may have acted on it), whatever the method.
#[tokio::test(flavor = "multi_thread")]
async fn reset_on_a_fresh_connection_is_502_not_retried() {
    let ok = Backend::start().await;
    let up = Scripted::start(|_| Act::Reset).await;
    let gw = gateway(
        &ok,
        vec![route("reset", &up.url(), &[("retries", 2.into())])],
    )
    .await;

    let (r, took) = get(&gw, "/reset/a").await;
    assert_failure(&r, 502, "reset", up.addr);
    assert!(took < secs(1.0), "took {took:?}");
    assert_eq!(up.requests(), ["GET /reset/a"]);
    assert_eq!(up.connections(), 1);
    assert_counted(&gw, "reset", "upstream_error", 1.0).await;
    assert_alive(&gw, &ok).await;
}

/// A pooled connection the upstream closed as the next request arrived (its keep-alive ran out):
/// the request never got a byte back, so a GET is sent again on a fresh connection and answered
/// `200`; a POST with a body is not (`502`).
#[tokio::test(flavor = "multi_thread")]
async fn dead_pooled_connection_is_retried_for_bodyless_get_only() {
    let ok = Backend::start().await;
    // 0: ok (pooled). 1: GET on the pooled connection, closed -> retried as 2 on a new one.
    // 3: ok (pooled again). 4: POST on the pooled connection, closed -> not retried.
    let up = Scripted::start(|n| match n {
        1 | 4 => Act::Close,
        _ => Act::Ok,
    })
    .await;
    let gw = gateway(&ok, vec![route("stale", &up.url(), &[])]).await;

    let (r, _) = get(&gw, "/stale/0").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let (r, took) = get(&gw, "/stale/1").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");
    assert!(took < secs(1.0), "took {took:?}");
    assert_eq!(up.connections(), 2);
    let (r, _) = get(&gw, "/stale/3").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let (r, _) = post(&gw, "/stale/4").await;
    assert_failure(&r, 502, "stale", up.addr);
    assert_eq!(
        up.requests(),
        [
            "GET /stale/0",
            "GET /stale/1",
            "GET /stale/1",
            "GET /stale/3",
            "POST /stale/4"
        ]
    );
    assert_alive(&gw, &ok).await;
}

/// Slow but within limits: a backend that thinks 1.5 s (under a 3 s `read_timeout`), and one that
/// sends its body a byte every 400 ms for 2 s (longer than the 1 s `read_timeout`, which is
/// between reads, not for the whole response): both `200`, complete, sent once.
#[tokio::test(flavor = "multi_thread")]
async fn slow_within_limits_is_200() {
    let ok = Backend::start().await;
    let slow = Backend::start_with(secs(1.5), "slow ok").await;
    let trickle = Scripted::start(|_| Act::Trickle).await;
    let gw = gateway(
        &ok,
        vec![
            route("slow", &slow.url(), &[("read_timeout", "3s".into())]),
            route("trickle", &trickle.url(), &[("read_timeout", "1s".into())]),
        ],
    )
    .await;

    let (r, took) = get(&gw, "/slow/a").await;
    assert_eq!((r.status, r.body.as_str()), (200, "slow ok"), "{r:?}");
    assert!(took >= secs(1.5) && took < secs(3.5), "took {took:?}");
    assert_eq!(slow.count(), 1);

    let (r, took) = get(&gw, "/trickle/b").await;
    assert_eq!((r.status, r.body.as_str()), (200, "slow!"), "{r:?}");
    assert!(took >= secs(1.9) && took < secs(4.0), "took {took:?}");
    assert_eq!(trickle.requests(), ["GET /trickle/b"]);
    assert_alive(&gw, &ok).await;
}

// ---- restarted under load --------------------------------------------------------------------

/// A plain HTTP/1.1 upstream (`200 up`) that can be stopped (listener and every connection
/// closed, like a killed process) and started again on the same port.
struct Restartable {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Restartable {
    async fn start() -> Restartable {
        let listener = bind(0).await;
        let mut r = Restartable {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            connections: Arc::default(),
            tasks: Arc::default(),
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let (reqs, conns, tasks) = (
            self.requests.clone(),
            self.connections.clone(),
            self.tasks.clone(),
        );
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                let conn = tokio::spawn(async move {
                    while read_request(&mut s).await.is_some() {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nup";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes the listener and every connection.
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restart(&mut self) {
        // The aborted tasks drop their sockets when they are next polled; the port frees then.
        let start = Instant::now();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if start.elapsed() < secs(5.0) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request of the load: when it started and ended, and its status (0: no answer).
#[derive(Debug, Clone, Copy)]
struct Sample {
    start: Instant,
    end: Instant,
    status: u16,
}

/// `clients` keep-alive clients sending GETs to `path` until `stop` is set.
fn load(
    gw: &GatewayProcess,
    path: &str,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<JoinHandle<Vec<Sample>>> {
    (0..clients)
        .map(|_| {
            let (http, url, stop) = (client(), gw.url(path), stop.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let status = match http.get(&url).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            match r.bytes().await {
                                Ok(_) => s,
                                Err(_) => 0,
                            }
                        }
                        Err(_) => 0,
                    };
                    out.push(Sample {
                        start,
                        end: Instant::now(),
                        status,
                    });
                }
                out
            })
        })
        .collect()
}

/// The upstream is stopped (every pooled connection to it dies) and started again on the same
/// port while 4 clients keep sending. Only requests that overlap the restart window may fail (and
/// then with a `502`, never a hang or a dropped client connection); every request that starts
/// after the restart succeeds, whether pingora's pool still held a dead connection or not. Then,
/// idle: stop, start, and the next requests all succeed (a dead pooled connection is retried).
#[tokio::test(flavor = "multi_thread")]
async fn upstream_restarted_under_load() {
    let ok = Backend::start().await;
    let mut up = Restartable::start().await;
    let gw = gateway(
        &ok,
        vec![route("restart", &format!("http://{}", up.addr), &[])],
    )
    .await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(&gw, "/restart/x", 4, stop.clone());
    tokio::time::sleep(secs(1.0)).await;
    let before = up.requests.load(Ordering::SeqCst);
    assert!(before > 10, "the load did not run: {before}");
    let down = Instant::now();
    up.stop();
    tokio::time::sleep(secs(0.5)).await;
    up.restart().await;
    let back = Instant::now();
    let conns_at_restart = up.connections.load(Ordering::SeqCst);
    tokio::time::sleep(secs(1.5)).await;
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.unwrap());
    }

    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.start > back).collect();
    assert!(after.len() > 10, "too few requests after the restart");
    for s in &failed {
        assert_eq!(s.status, 502, "{s:?}");
        assert!(
            s.end >= down && s.start <= back,
            "failed outside the restart window: started {:?} after the restart",
            s.start.saturating_duration_since(back)
        );
    }
    assert!(
        after.iter().all(|s| s.status == 200),
        "a request after the restart failed"
    );
    assert!(
        up.connections.load(Ordering::SeqCst) > conns_at_restart,
        "no fresh connection after the restart"
    );
    eprintln!(
        "restart under load: {} requests, {} failed inside the window ({:?} down)",
        samples.len(),
        failed.len(),
        back - down
    );

    // Idle: the pool holds connections the restart kills.
    for i in 0..4 {
        let (r, _) = get(&gw, &format!("/restart/warm{i}")).await;
        assert_eq!(r.status, 200);
    }
    up.stop();
    up.restart().await;
    for i in 0..8 {
        let (r, took) = get(&gw, &format!("/restart/again{i}")).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "up"),
            "request {i}: {r:?}"
        );
        assert!(took < secs(1.0), "took {took:?}");
    }
    assert_alive(&gw, &ok).await;
}
