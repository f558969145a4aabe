//! The TLS listener through the real binary, with certificates made at test time: certificates by
//! SNI, TLS versions, handshakes inside the client limits (deadline, `max_connections`, counted,
//! no ERROR line), rotation on SIGHUP, client certificates, `X-Forwarded-Proto: https`.
//! (`tests/tls_config.rs`: `extoken check` of TLS files, `upstream_tls`.)

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROJECT: &str = "P2tlsListenerProject000000";

/// A gateway with a TLS listener (`tls` block completed with `listen`), routing every path to a
/// recording backend without a session.
struct Rig {
    gw: GatewayProcess,
    tls: SocketAddr,
    backend: Backend,
    _jwks: JwksServer,
}

async fn rig(mut tls: Value, limits: Value, files: &[(&str, &str)]) -> Rig {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    tls["listen"] = json!(addr.to_string());
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .route(RouteSpec::new("/", &backend.url()).name("root").auth_none())
        .set("tls", tls)
        .set("limits", limits);
    let how = Launch {
        files,
        admin: true,
        ..Launch::default()
    };
    let gw = GatewayProcess::launch(&config.to_yaml(), how).await;
    Rig {
        gw,
        tls: addr,
        backend,
        _jwks: jwks,
    }
}

/// `tls:` with the certificate files `(cert, key)` of the config directory.
fn tls_block(certs: &[(&str, &str)]) -> Value {
    let certs: Vec<Value> = certs
        .iter()
        .map(|(c, k)| json!({"cert_file": c, "key_file": k}))
        .collect();
    json!({ "certificates": certs })
}

/// A labelled sample of `/metrics` (0 when absent: counters appear with their first count).
async fn sample(gw: &GatewayProcess, series: &str) -> f64 {
    metric_sample(&gw.metrics().await, series)
}

fn handshakes(result: &str) -> String {
    format!("extoken_tls_handshakes_total{{result=\"{result}\"}}")
}

/// Waits (bounded) until `series` reaches `at_least`.
async fn counted(gw: &GatewayProcess, series: &str, at_least: f64) -> bool {
    let ok = eventually(Duration::from_secs(10), || async {
        sample(gw, series).await >= at_least
    })
    .await;
    if !ok {
        let m = gw.metrics().await;
        let tls: Vec<&str> = m.lines().filter(|l| l.contains("tls_")).collect();
        eprintln!("{series} < {at_least}; {tls:?}");
    }
    ok
}

/// A ClientHello offering only TLS 1.1 (rustls cannot send one): record, handshake, version 3.2.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // AES-CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&[0x00, 0x00]); // no extensions
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test]
async fn sni_picks_the_certificate_and_only_tls_12_and_13_are_spoken() {
    let ca = TestCa::new("test ca");
    let (api, other) = (
        ca.server(&["api.test", "*.api.test"]),
        ca.server(&["other.test"]),
    );
    let files = [
        ("api.pem", api.cert_pem.as_str()),
        ("api.key", api.key_pem.as_str()),
        ("other.pem", other.cert_pem.as_str()),
        ("other.key", other.key_pem.as_str()),
    ];
    let tls = tls_block(&[("api.pem", "api.key"), ("other.pem", "other.key")]);
    let r = rig(tls, json!({}), &files).await;
    let client = TlsClient::trusting(&ca);
    for (sni, want) in [
        ("api.test", &api),
        ("other.test", &other),
        ("v1.api.test", &api),
        // No certificate has the name: the first is the default (the client refuses it).
        ("unknown.test", &api),
    ] {
        match client.connect(r.tls, sni).await {
            Ok(s) => assert_eq!(server_cert(&s), want.der, "{sni}"),
            Err(e) => {
                assert_eq!(sni, "unknown.test", "{sni}: {e}");
                assert!(e.to_string().contains("not valid for name"), "{e}");
            }
        }
    }
    // TLS 1.2 and 1.3 both complete, and a request goes through each.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut s = TlsClient::trusting(&ca)
            .only(v)
            .connect(r.tls, "other.test")
            .await
            .unwrap_or_else(|e| panic!("{v:?}: {e}"));
        assert_eq!(s.get_ref().1.protocol_version(), Some(v.version));
        let reply = http_get(&mut s, "other.test", "/v").await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, "backend ok");
    }
    let seen = r.backend.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{seen:?}");
    assert!(
        seen.header("forwarded")
            .is_some_and(|f| f.contains("proto=https")),
        "{seen:?}"
    );

    // TLS 1.1: refused with a fatal alert (rustls says handshake_failure).
    let before = sample(&r.gw, &handshakes("incompatible")).await;
    let mut s = TcpStream::connect(r.tls).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert_eq!(got.first(), Some(&0x15), "an alert record: {got:?}");
    assert_eq!(got.get(5), Some(&2), "fatal: {got:?}");
    assert!(
        matches!(got.get(6), Some(40 | 70)),
        "handshake_failure: {got:?}"
    );
    assert!(counted(&r.gw, &handshakes("incompatible"), before + 1.0).await);
    // Three names and two versions; the client that refused the default certificate said so.
    assert_eq!(sample(&r.gw, &handshakes("ok")).await, 5.0);
    assert_eq!(sample(&r.gw, &handshakes("alert")).await, 1.0);

    // The cleartext listener is still plain HTTP, and says so upstream.
    let plain = r.gw.get("/p").await;
    assert_eq!(plain.status, 200);
    assert_eq!(r.backend.last().header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn handshakes_are_bounded_counted_and_quiet() {
    let ca = TestCa::new("test ca");
    let api = ca.server(&["api.test"]);
    let files = [
        ("api.pem", api.cert_pem.as_str()),
        ("api.key", api.key_pem.as_str()),
    ];
    let limits = json!({"tls_handshake_timeout": "1s", "max_connections": 3});
    let r = rig(tls_block(&[("api.pem", "api.key")]), limits, &files).await;

    // A port scan: connect and close at once.
    for _ in 0..5 {
        drop(TcpStream::connect(r.tls).await.unwrap());
    }
    assert!(counted(&r.gw, &handshakes("closed"), 5.0).await);

    // Half a handshake (a record header, then silence) is closed at the deadline.
    let mut half = TcpStream::connect(r.tls).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), half.read(&mut buf)).await;
    let waited = started.elapsed();
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed: {n:?}");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(counted(&r.gw, &handshakes("timeout"), 1.0).await);

    // Plain HTTP sent to the TLS port.
    let mut plain = TcpStream::connect(r.tls).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
    assert!(counted(&r.gw, &handshakes("malformed"), 1.0).await);

    // Handshaking sockets hold their slots: three silent ones fill max_connections, and a
    // fourth connection (on either listener) is closed at accept.
    let refused = "extoken_connections_refused_total";
    let before = sample(&r.gw, refused).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(r.tls).await.unwrap());
    }
    assert!(counted(&r.gw, "extoken_connections_open", 3.0).await);
    let mut extra = TcpStream::connect(r.gw.addr).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "refused: {n:?}");
    assert!(counted(&r.gw, refused, before + 1.0).await);
    drop(silent);
    // Once their handshake deadline passed, the slots are free again.
    assert!(
        eventually(Duration::from_secs(5), || async {
            sample(&r.gw, "extoken_connections_open").await == 0.0
        })
        .await
    );
    let mut s = TlsClient::trusting(&ca)
        .connect(r.tls, "api.test")
        .await
        .unwrap();
    assert_eq!(http_get(&mut s, "api.test", "/").await.unwrap().status, 200);

    // A client that handshakes, sends part of a head and leaves (and one in cleartext).
    let mut s = TlsClient::trusting(&ca)
        .connect(r.tls, "api.test")
        .await
        .unwrap();
    s.write_all(b"GET / HT").await.unwrap();
    s.shutdown().await.unwrap();
    drop(s);
    let mut plain = TcpStream::connect(r.gw.addr).await.unwrap();
    plain.write_all(b"GET / HT").await.unwrap();
    drop(plain);
    // The log writer is a thread of its own: give a line time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // No ERROR line for a failed handshake, nor for a head cut short.
    assert_eq!(error_lines(&r.gw.log()), Vec::<&str>::new());
}

#[tokio::test]
async fn certificates_rotate_on_sighup_and_a_bad_file_keeps_the_old_ones() {
    let ca = TestCa::new("test ca");
    let (first, second) = (ca.server(&["api.test"]), ca.server(&["api.test"]));
    let files = [
        ("api.pem", first.cert_pem.as_str()),
        ("api.key", first.key_pem.as_str()),
    ];
    let r = rig(tls_block(&[("api.pem", "api.key")]), json!({}), &files).await;
    let client = TlsClient::trusting(&ca);
    let mut old = client.connect(r.tls, "api.test").await.unwrap();
    assert_eq!(server_cert(&old), first.der);
    assert_eq!(
        http_get(&mut old, "api.test", "/").await.unwrap().status,
        200
    );

    // Replaced in place (a new key too), then SIGHUP.
    let dir = r.gw.dir.path();
    std::fs::write(dir.join("api.pem"), &second.cert_pem).unwrap();
    std::fs::write(dir.join("api.key"), &second.key_pem).unwrap();
    r.gw.signal(libc::SIGHUP);
    assert!(counted(&r.gw, r#"extoken_config_reloads_total{result="ok"}"#, 1.0).await);
    let new = client.connect(r.tls, "api.test").await.unwrap();
    assert_eq!(
        server_cert(&new),
        second.der,
        "a new connection gets the new one"
    );
    // The connection made before keeps its session and is still served.
    let again = http_get(&mut old, "api.test", "/again").await.unwrap();
    assert_eq!(again.status, 200, "{again:?}");

    // A certificate whose key does not match: the reload is refused, the running ones stay.
    let third = ca.server(&["api.test"]);
    std::fs::write(dir.join("api.pem"), &third.cert_pem).unwrap();
    // `extoken reload` reads the files first, says why, and sends nothing.
    let out = std::process::Command::new(BIN)
        .args(["reload", "--config"])
        .arg(r.gw.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tls.certificates[0].key_file"),
        "{err}"
    );
    r.gw.signal(libc::SIGHUP);
    let errors = r#"extoken_config_reloads_total{result="error"}"#;
    assert!(counted(&r.gw, errors, 1.0).await);
    // The log line is written by the writer thread, maybe after the count.
    let logged = eventually(Duration::from_secs(5), || async {
        r.gw.log().contains("tls.certificates[0].key_file")
    })
    .await;
    assert!(logged, "{}", r.gw.log());
    let after = client.connect(r.tls, "api.test").await.unwrap();
    assert_eq!(server_cert(&after), second.der);
    assert_eq!(
        sample(&r.gw, r#"extoken_config_reloads_total{result="ok"}"#).await,
        1.0
    );
}

/// Whether a request over a fresh connection with `client` fails (in the handshake, or, in TLS
/// 1.3 where the client finishes first, at its first read).
async fn refused(client: &TlsClient, addr: SocketAddr) -> bool {
    match client.connect(addr, "api.test").await {
        Err(_) => true,
        Ok(mut s) => http_get(&mut s, "api.test", "/").await.is_err(),
    }
}

#[tokio::test]
async fn client_certificates_are_verified_and_logged() {
    let (ca, clients, foreign) = (
        TestCa::new("test ca"),
        TestCa::new("client ca"),
        TestCa::new("foreign ca"),
    );
    let api = ca.server(&["api.test"]);
    let alice = clients.client("alice");
    let mallory = foreign.client("mallory");
    let clients_pem = clients.pem();
    let files = [
        ("api.pem", api.cert_pem.as_str()),
        ("api.key", api.key_pem.as_str()),
        ("clients.pem", clients_pem.as_str()),
    ];
    let mut tls = tls_block(&[("api.pem", "api.key")]);
    tls["client_ca_file"] = json!("clients.pem");
    tls["client_auth"] = json!("required");
    let r = rig(tls.clone(), json!({}), &files).await;

    assert!(
        refused(&TlsClient::trusting(&ca), r.tls).await,
        "no certificate"
    );
    assert!(
        refused(&TlsClient::trusting(&ca).with_cert(&mallory), r.tls).await,
        "a certificate of another CA"
    );
    assert!(counted(&r.gw, &handshakes("client_certificate"), 2.0).await);
    assert_eq!(r.backend.count(), 0);

    let mut s = TlsClient::trusting(&ca)
        .with_cert(&alice)
        .connect(r.tls, "api.test")
        .await
        .unwrap();
    let reply = http_get(&mut s, "api.test", "/whoami").await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let logged = eventually(Duration::from_secs(5), || async {
        r.gw.log().lines().any(|l| {
            l.contains("path=/whoami")
                && l.contains("client_cert_subject=\"CN=alice")
                && l.contains(&format!("client_cert_sha256=\"{}\"", alice.sha256()))
        })
    })
    .await;
    assert!(logged, "{}", r.gw.log());

    // optional: a client without a certificate passes (and its line names none); a foreign
    // certificate still fails.
    tls["client_auth"] = json!("optional");
    let r = rig(tls, json!({}), &files).await;
    let mut s = TlsClient::trusting(&ca)
        .connect(r.tls, "api.test")
        .await
        .unwrap();
    assert_eq!(
        http_get(&mut s, "api.test", "/anon").await.unwrap().status,
        200
    );
    assert!(
        refused(&TlsClient::trusting(&ca).with_cert(&mallory), r.tls).await,
        "a certificate of another CA"
    );
    let line = eventually(Duration::from_secs(5), || async {
        r.gw.log()
            .lines()
            .any(|l| l.contains("path=/anon") && !l.contains("client_cert"))
    })
    .await;
    assert!(line, "{}", r.gw.log());
}

#[tokio::test]
async fn client_cas_rotate_on_sighup() {
    let (ca, old_clients, new_clients) = (
        TestCa::new("test ca"),
        TestCa::new("old client ca"),
        TestCa::new("new client ca"),
    );
    let api = ca.server(&["api.test"]);
    let (before, after) = (old_clients.client("before"), new_clients.client("after"));
    let old_pem = old_clients.pem();
    let files = [
        ("api.pem", api.cert_pem.as_str()),
        ("api.key", api.key_pem.as_str()),
        ("clients.pem", old_pem.as_str()),
    ];
    let mut tls = tls_block(&[("api.pem", "api.key")]);
    tls["client_ca_file"] = json!("clients.pem");
    tls["client_auth"] = json!("required");
    let r = rig(tls, json!({}), &files).await;
    let old_client = TlsClient::trusting(&ca).with_cert(&before);
    let new_client = TlsClient::trusting(&ca).with_cert(&after);
    let mut kept = old_client.connect(r.tls, "api.test").await.unwrap();
    assert_eq!(
        http_get(&mut kept, "api.test", "/").await.unwrap().status,
        200
    );
    assert!(refused(&new_client, r.tls).await);

    std::fs::write(r.gw.dir.path().join("clients.pem"), new_clients.pem()).unwrap();
    r.gw.signal(libc::SIGHUP);
    assert!(counted(&r.gw, r#"extoken_config_reloads_total{result="ok"}"#, 1.0).await);
    assert!(
        refused(&old_client, r.tls).await,
        "the old CA no longer admits"
    );
    let mut s = new_client.connect(r.tls, "api.test").await.unwrap();
    assert_eq!(http_get(&mut s, "api.test", "/").await.unwrap().status, 200);
    // The connection verified under the old CA keeps its session.
    assert_eq!(
        http_get(&mut kept, "api.test", "/").await.unwrap().status,
        200
    );
}
