//! Long-lived and streaming traffic through the real binary: server-sent events flow as the
//! upstream writes them, a response that keeps sending outlives `read_timeout`, request bodies
//! are bounded by `max_body_bytes`, an `upstream_protocol: h2` route speaks HTTP/2 to its
//! upstream, and a gRPC call refused by extoken gets a gRPC-shaped answer.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROJECT: &str = "P2streamsTestProject000000";

type Chunks = http_body_util::channel::Channel<Bytes, Infallible>;

/// An upstream whose every answer is a body the test writes chunk by chunk.
struct StreamingUpstream {
    addr: std::net::SocketAddr,
    bodies: tokio::sync::mpsc::UnboundedReceiver<http_body_util::channel::Sender<Bytes>>,
    _task: tokio::task::JoinHandle<()>,
}

impl StreamingUpstream {
    async fn start(content_type: &'static str) -> StreamingUpstream {
        let listener = bind(0).await;
        let addr = listener.local_addr().unwrap();
        let (tx, bodies) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let (sender, body): (_, Chunks) = Chunks::new(4);
                        let _ = tx.send(sender);
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", content_type)
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        StreamingUpstream {
            addr,
            bodies,
            _task: task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn next_body(&mut self) -> http_body_util::channel::Sender<Bytes> {
        tokio::time::timeout(Duration::from_secs(10), self.bodies.recv())
            .await
            .expect("the request reached the upstream")
            .expect("upstream running")
    }
}

async fn open_gateway(up: &str, read_timeout: &str) -> GatewayProcess {
    let jwks = format!("http://127.0.0.1:{}/keys", free_port());
    let config = ConfigBuilder::new(PROJECT, &jwks).ext_connector().route(
        RouteSpec::new("/", up)
            .name("open")
            .auth_none()
            .set("read_timeout", read_timeout),
    );
    GatewayProcess::start(&config.to_yaml()).await
}

/// The next chunk of a response body, within a bound that a buffering proxy would miss.
async fn next_chunk(r: &mut reqwest::Response) -> Option<Bytes> {
    tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("a chunk within 10 s: the gateway holds back what the upstream wrote")
        .expect("read")
}

#[tokio::test(flavor = "multi_thread")]
async fn server_sent_events_reach_the_client_as_they_are_written() {
    let mut up = StreamingUpstream::start("text/event-stream").await;
    let gw = open_gateway(&up.url(), "60s").await;
    let pending = tokio::spawn({
        let client = gw.client.clone();
        let url = gw.url("/events");
        async move { client.get(url).send().await.expect("response head") }
    });
    let mut sender = up.next_body().await;
    let first = "id: 0\ndata: event 0\n\n";
    let sent = Instant::now();
    sender.send_data(Bytes::from(first)).await.unwrap();
    let mut r = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the response head within 10 s")
        .expect("request task");
    assert_eq!(r.status(), 200);
    let mut delays = Vec::new();
    for i in 0..5 {
        let event = format!("id: {i}\ndata: event {i}\n\n");
        let sent = if i == 0 {
            sent
        } else {
            let t = Instant::now();
            sender.send_data(Bytes::from(event.clone())).await.unwrap();
            t
        };
        // The upstream writes nothing more until this event came out the other side: a gateway
        // that buffers never delivers it, and `next_chunk`'s bound fails the test.
        let mut got = Vec::new();
        while got.len() < event.len() {
            got.extend_from_slice(&next_chunk(&mut r).await.expect("an event"));
        }
        delays.push(sent.elapsed());
        assert_eq!(String::from_utf8_lossy(&got), event);
    }
    drop(sender);
    assert_eq!(next_chunk(&mut r).await, None, "the end of the stream");
    println!("per-event delay through the gateway: {delays:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_that_keeps_sending_outlives_read_timeout() {
    let mut up = StreamingUpstream::start("application/octet-stream").await;
    // `read_timeout` bounds the pause between two reads, not the whole response.
    let gw = open_gateway(&up.url(), "1s").await;
    let pending = tokio::spawn({
        let client = gw.client.clone();
        let url = gw.url("/download");
        async move { client.get(url).send().await.expect("response head") }
    });
    let mut sender = up.next_body().await;
    let writer = tokio::spawn(async move {
        for _ in 0..12 {
            sender
                .send_data(Bytes::from(vec![b'x'; 1000]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let r = pending.await.unwrap();
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(20), r.bytes())
        .await
        .expect("bounded")
        .expect("the whole body, not cut at read_timeout");
    writer.await.unwrap();
    assert_eq!(body.len(), 12_000);
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "it did take longer than read_timeout"
    );
}

/// A gateway with one protected route whose bodies are bounded by `max_body_bytes: 1000`.
async fn bounded_body_setup() -> Setup {
    let key = TestKey::rsa("k", Algorithm::RS256);
    Setup::start(PROJECT, vec![key], |c, up| {
        c.route(
            RouteSpec::new("/", up)
                .name("api")
                .connector("ext")
                .set("max_body_bytes", 1000),
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_max_body_bytes_never_reach_the_backend_whole() {
    let s = bounded_body_setup().await;
    let t = s.token("t");
    let post = |body: Vec<u8>| {
        s.gw.client
            .post(s.gw.url("/upload"))
            .bearer_auth(&t)
            .body(body)
    };
    // Declared too large: 413 before anything is forwarded.
    let r = s.gw.send(post(vec![b'a'; 1001])).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(s.backend.count(), 0);
    // At the limit: forwarded.
    let r = s.gw.send(post(vec![b'a'; 1000])).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.backend.only().body.len(), 1000);
    s.backend.take();

    // Undeclared (chunked): cut at the limit.
    let mut c = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..6 {
        // Writes may fail once the gateway gave up on the body: that is the point.
        let _ = c.write_all(b"1F4\r\n").await;
        let _ = c.write_all(&[b'b'; 500]).await;
        let _ = c.write_all(b"\r\n").await;
    }
    let _ = c.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.backend.count(), 0, "the backend never got the body whole");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_get_grpc_shaped_refusals() {
    let s = bounded_body_setup().await;
    let call = |path: &str| {
        s.gw.client
            .post(s.gw.url(path))
            .header("content-type", "application/grpc+proto")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0])
    };
    let r = s.gw.send(call("/orders.v1.Orders/Get")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("grpc-status"), Some("16"), "UNAUTHENTICATED");
    assert!(
        r.header("grpc-message")
            .is_some_and(|m| m.starts_with("no session token")),
        "{r:?}"
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="extoken""#)
    );
    assert!(r.body.is_empty());
    let r =
        s.gw.send(call("/orders.v1.Orders/Get").bearer_auth("not.a.jwt"))
            .await;
    assert_eq!(r.header("grpc-status"), Some("16"), "{r:?}");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.contains("invalid_token")));
    let r =
        s.gw.send(call("/x").bearer_auth(s.token("t")).body(vec![0u8; 2000]))
            .await;
    assert_eq!(
        r.header("grpc-status"),
        Some("8"),
        "RESOURCE_EXHAUSTED: {r:?}"
    );
    assert_eq!(s.backend.count(), 0);
}

/// An h2c (prior knowledge) upstream that records each request's version and answers with a
/// trailer, as a gRPC server would.
async fn h2c_upstream(seen: Arc<Mutex<Vec<http::Version>>>) -> std::net::SocketAddr {
    let listener = bind(0).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    seen.lock().unwrap().push(req.version());
                    async move {
                        let _ = req.into_body().collect().await;
                        let body = Full::new(Bytes::from_static(b"h2 ok"));
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_route_speaks_http2_to_its_upstream() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let addr = h2c_upstream(seen.clone()).await;
    let key = TestKey::rsa("k", Algorithm::RS256);
    let s = Setup::start(PROJECT, vec![key], |c, _| {
        c.route(
            RouteSpec::new("/", &format!("http://{addr}"))
                .name("grpc")
                .connector("ext")
                .set("upstream_protocol", "h2"),
        )
    })
    .await;
    seen.lock().unwrap().clear();
    for _ in 0..3 {
        let r = s.gw.get_bearer("/svc/Method", &s.token("t")).await;
        assert_eq!((r.status, r.body.as_str()), (200, "h2 ok"), "{r:?}");
    }
    assert_eq!(*seen.lock().unwrap(), vec![http::Version::HTTP_2; 3]);
}
