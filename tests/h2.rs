//! HTTP/2 downstream through the real binary: ALPN `h2` on the TLS listener, `h2c` (prior
//! knowledge) beside HTTP/1.1 on the cleartext one, and the client limits on HTTP/2 connections
//! (preface and SETTINGS within the head deadline, a busy stream never cut by it, idle connections
//! closed with GOAWAY, the advertised and enforced stream limit), tried with the `h2` crate's
//! client and with raw frames.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PROJECT: &str = "P2h2DownstreamProject00000";

struct Rig {
    gw: GatewayProcess,
    tls: SocketAddr,
    ca: TestCa,
    backend: Backend,
    _jwks: JwksServer,
}

/// A gateway with `h2c: true` and a TLS listener (default ALPN: h2, http/1.1) in front of
/// `backend`, every path on an `auth: none` route.
async fn rig(limits: Value, backend: Backend) -> Rig {
    rig_with(limits, backend, None).await
}

/// [`rig`], asking TLS clients for a certificate of `clients` (`client_auth: optional`).
async fn rig_with(limits: Value, backend: Backend, clients: Option<&TestCa>) -> Rig {
    let ca = TestCa::new("test ca");
    let api = ca.server(&["api.test"]);
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut tls_block = json!({"listen": tls.to_string(),
                               "certificates": [{"cert_file": "api.pem", "key_file": "api.key"}]});
    if clients.is_some() {
        tls_block["client_auth"] = json!("optional");
        tls_block["client_ca_file"] = json!("clients.pem");
    }
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .route(RouteSpec::new("/", &backend.url()).name("root").auth_none())
        .set("h2c", true)
        .set("tls", tls_block)
        .set("limits", limits);
    let clients_pem = clients.map(TestCa::pem).unwrap_or_default();
    let files = [
        ("api.pem", api.cert_pem.as_str()),
        ("api.key", api.key_pem.as_str()),
        ("clients.pem", clients_pem.as_str()),
    ];
    let how = Launch {
        files: &files,
        admin: true,
        ..Launch::default()
    };
    let gw = GatewayProcess::launch(&config.to_yaml(), how).await;
    Rig {
        gw,
        tls,
        ca,
        backend,
        _jwks: jwks,
    }
}

#[tokio::test]
async fn h2_by_alpn_and_h2c_beside_http1_make_the_same_decisions() {
    let r = rig(json!({"max_header_bytes": 4096}), Backend::start().await).await;

    // TLS, ALPN h2.
    let mut client = TlsClient::trusting(&r.ca);
    client.alpn = vec![b"h2".to_vec()];
    let tls = client.connect(r.tls, "api.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = h2_client(tls).await;
    let (status, body) = h2_get(&mut send, "https://api.test/a/%2e%2e/b?q=1", &[]).await;
    assert_eq!((status, body.as_str()), (200, "backend ok"), "{body}");
    let seen = r.backend.last();
    assert_eq!(seen.uri, "/b?q=1", "the canonical target from :path");
    assert_eq!(seen.header("host"), Some("api.test"), "{seen:?}");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // A Host that disagrees with :authority is refused (pingora already answers 400 for any
    // Host that is not byte for byte the authority); one that agrees passes.
    let (status, _) = h2_get(&mut send, "https://api.test/x", &[("host", "evil.test")]).await;
    assert_eq!(status, 400);
    let (status, body) = h2_get(&mut send, "https://api.test/x", &[("host", "api.test")]).await;
    assert_eq!(status, 200, "{body}");
    // max_header_bytes applies to each request's header block.
    let big = "x".repeat(5000);
    let (status, _) = h2_get(&mut send, "https://api.test/x", &[("x-big", &big)]).await;
    assert_eq!(status, 431);
    let (status, _) = h2_get(&mut send, "https://api.test/after", &[]).await;
    assert_eq!(status, 200, "the connection still serves");

    // Cleartext: HTTP/2 with prior knowledge, and HTTP/1.1 on the same port.
    let mut send = h2_client(TcpStream::connect(r.gw.addr).await.unwrap()).await;
    let (status, _) = h2_get(&mut send, "http://api.test/c", &[]).await;
    assert_eq!(status, 200);
    let seen = r.backend.last();
    assert_eq!(seen.uri, "/c");
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.gw.get("/h1").await.status, 200);
    assert_eq!(r.backend.last().uri, "/h1");
    // An HTTP/1.0 request shorter than the preface is answered too (pingora's own preface peek
    // would wait for 24 bytes).
    let mut s = TcpStream::connect(r.gw.addr).await.unwrap();
    s.write_all(b"GET /short HTTP/1.0\r\n\r\n").await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Instant::now(), Duration::from_secs(5)).await;
    assert!(closed.is_some(), "no answer: {got:?}");
    assert!(
        got.starts_with(b"HTTP/1.0 200") || got.starts_with(b"HTTP/1.1 200"),
        "{got:?}"
    );
    // ALPN h2, then HTTP/1.1 bytes: closed, without the ERROR line pingora writes for a failed
    // HTTP/2 handshake.
    let mut client = TlsClient::trusting(&r.ca);
    client.alpn = vec![b"h2".to_vec()];
    let mut tls = client.connect(r.tls, "api.test").await.unwrap();
    let reply = http_get(&mut tls, "api.test", "/not-h2").await;
    assert!(reply.is_err(), "{reply:?}");
    // The log writer is a thread of its own: give a line time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(error_lines(&r.gw.log()), Vec::<&str>::new());
}

#[tokio::test]
async fn h2_connections_keep_the_client_limits() {
    let limits = json!({"client_header_timeout": "1s", "keepalive_timeout": "2s",
                        "h2_max_concurrent_streams": 2});
    let backend = Backend::start_with(Duration::from_millis(1500), "slow ok").await;
    let r = rig(limits, backend).await;

    // Part of the preface, then silence: closed at the head deadline, nothing written.
    let mut s = TcpStream::connect(r.gw.addr).await.unwrap();
    s.write_all(&PREFACE[..10]).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Instant::now(), Duration::from_secs(5)).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(3)),
        "{closed:?}"
    );

    // The preface but no SETTINGS: closed at the deadline, and never an HTTP/1.1 answer.
    let mut s = TcpStream::connect(r.gw.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Instant::now(), Duration::from_secs(5)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1"),
        "{got:?}"
    );
    assert!(
        closed.is_some_and(|t| t < Duration::from_secs(3)),
        "{closed:?}"
    );

    // A proper start: the server's SETTINGS advertise the stream limit; a request slower than
    // client_header_timeout is answered; a third concurrent stream is refused; the idle
    // connection gets a GOAWAY at keepalive_timeout and is closed.
    let mut s = TcpStream::connect(r.gw.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let settings = read_frame(&mut s).await.expect("the server's SETTINGS");
    assert_eq!((settings.kind, settings.stream), (0x4, 0));
    let max_streams = settings
        .payload
        .chunks(6)
        .find(|p| p[..2] == [0, 3])
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    assert_eq!(max_streams, Some(2));
    let mut out = frame(0x4, 0x1, 0, &[]); // SETTINGS ACK
    for id in [1, 3, 5] {
        out.extend(get_headers(id));
    }
    s.write_all(&out).await.unwrap();
    let (mut answered, mut refused, mut goaway_at) = (Vec::new(), Vec::new(), None);
    let sent = Instant::now();
    while let Some(f) = read_frame(&mut s).await {
        match f.kind {
            0x1 => answered.push((f.stream, f.payload.first().copied())),
            0x3 if f.payload == [0, 0, 0, 7] => refused.push(f.stream),
            0x7 => {
                goaway_at.get_or_insert(sent.elapsed());
            }
            // A client answers PINGs (pingora's graceful close waits for one).
            0x6 if f.flags & 0x1 == 0 => {
                let _ = s.write_all(&frame(0x6, 0x1, 0, &f.payload)).await;
            }
            _ => {}
        }
    }
    let closed = sent.elapsed();
    // `:status: 200` is static table entry 8 (0x88).
    answered.sort_unstable();
    assert_eq!(answered, [(1, Some(0x88)), (3, Some(0x88))], "{refused:?}");
    assert_eq!(refused, [5]);
    let goaway = goaway_at.expect("a GOAWAY before the close");
    // Answers after ~1.5 s, then 2 s idle.
    assert!(
        goaway >= Duration::from_millis(3000) && goaway < Duration::from_secs(6),
        "{goaway:?}"
    );
    assert!(closed < Duration::from_secs(8), "{closed:?}");
    assert_eq!(r.backend.count(), 2);

    assert_eq!(error_lines(&r.gw.log()), Vec::<&str>::new());
}

#[tokio::test]
async fn h2_requests_carry_their_connections_client_certificate() {
    let clients = TestCa::new("client ca");
    let alice = clients.client("alice");
    let r = rig_with(json!({}), Backend::start().await, Some(&clients)).await;
    let mut client = TlsClient::trusting(&r.ca).with_cert(&alice);
    client.alpn = vec![b"h2".to_vec()];
    let tls = client.connect(r.tls, "api.test").await.unwrap();
    let mut send = h2_client(tls).await;
    for path in ["/one", "/two"] {
        let (status, _) = h2_get(&mut send, &format!("https://api.test{path}"), &[]).await;
        assert_eq!(status, 200);
    }
    let both = eventually(Duration::from_secs(5), || async {
        let log = r.gw.log();
        ["path=/one", "path=/two"].iter().all(|p| {
            log.lines().any(|l| {
                l.contains(p)
                    && l.contains("client_cert_subject=\"CN=alice")
                    && l.contains(&alice.sha256())
            })
        })
    })
    .await;
    assert!(both, "{}", r.gw.log());
}
