//! Signals under load, end to end with the real binary on loopback: `SIGHUP` several times a
//! second (each one a reload that builds a new key store) fails no request; `SIGTERM` answers
//! every request the gateway accepted completely, resets no connection mid-response, and exits 0.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PROJECT: &str = "P2FaultsSignals";

/// Session tokens of `n` distinct users (external token `ext-<i>`).
fn tokens(key: &TestKey, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let claims = session_claims(PROJECT, Some(&format!("ext-{i}")));
            key.sign(&with(claims, "sub", format!("U2signals{i}").into()))
        })
        .collect()
}

/// Replaces `path` with `text` in one rename, so a reload never reads half a file.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Five `SIGHUP`s a second for 4 s while 4 clients send requests. Every reload alternates the
/// `descope.leeway`, so each builds and loads a new key store before its swap. Not one request
/// fails or is answered other than `200` from the backend; every reload is applied, none fails.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_five_times_a_second_under_load_fails_no_request() {
    let key = TestKey::es256("signals-key");
    let up = Backend::start().await;
    let keys = JwksServer::start(&[&key]).await;
    let config = |leeway: &str| {
        ConfigBuilder::new(PROJECT, &keys.url())
            .descope("leeway", leeway)
            .ext_connector()
            .set("threads", 2)
            .route(RouteSpec::new("/", &up.url()).name("api").connector("ext"))
            .to_yaml()
    };
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    let gw = GatewayProcess::launch(&config("5s"), how).await;
    gw.wait_keys("/", &key.probe_token()).await;
    // The two files, each behind the harness's own lines, to swap in by rename.
    gw.write_config(&config("6s"));
    let other = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.write_config(&config("5s"));
    let first = std::fs::read_to_string(gw.config_path()).unwrap();

    let tokens = Arc::new(tokens(&key, 8));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (http, url, stop, tokens) =
                (client(), gw.url("/hup"), stop.clone(), tokens.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = c;
                while !stop.load(Ordering::SeqCst) {
                    let r = http
                        .get(&url)
                        .bearer_auth(&tokens[i % tokens.len()])
                        .send()
                        .await;
                    let answer = match r {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            format!("{s} {}", r.text().await.unwrap_or_else(|e| e.to_string()))
                        }
                        Err(e) => format!("error: {e}"),
                    };
                    answers.push(answer);
                    i += 1;
                }
                answers
            })
        })
        .collect();

    let path = gw.config_path();
    let mut sent = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        write_atomically(&path, if sent % 2 == 0 { &other } else { &first });
        gw.signal(libc::SIGHUP);
        sent += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }

    let bad: Vec<&String> = answers.iter().filter(|a| *a != "200 backend ok").collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, e.g. {:?}\n{}",
        bad.len(),
        answers.len(),
        bad.first(),
        gw.log()
    );
    assert!(
        answers.len() > 40,
        "the load did not run: {}",
        answers.len()
    );
    assert_eq!(up.count(), answers.len());

    // Signals that arrive while a reload runs may be merged into one: most are applied, none fail.
    let ok_series = r#"extoken_config_reloads_total{result="ok"}"#;
    eventually(Duration::from_secs(5), || async {
        metric_sample(&gw.metrics().await, ok_series) >= (sent / 2) as f64
    })
    .await;
    let m = gw.metrics().await;
    let applied = metric_sample(&m, ok_series);
    assert!(
        applied >= (sent / 2) as f64,
        "{applied} of {sent} reloads applied\n{m}"
    );
    assert_eq!(
        metric_sample(&m, r#"extoken_config_reloads_total{result="error"}"#),
        0.0,
        "{}",
        gw.log()
    );
    eprintln!(
        "{} requests, {sent} SIGHUPs, {applied} reloads applied",
        answers.len()
    );
    assert_eq!(gw.get_bearer("/after", &tokens[0]).await.status, 200);
    assert_eq!(gw.admin_get("/readyz").await.unwrap().0, 200);
}

/// What one request of a raw HTTP/1.1 client got.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    /// A whole response: status, body, whether it said `Connection: close`.
    Complete(u16, String, bool),
    /// The connection ended (EOF or reset) before a byte of the response; `reused`: the request
    /// went on a connection that had carried an earlier one.
    Nothing { reused: bool },
    /// Some of the response, then the connection ended.
    Truncated(String),
    /// Nothing more arrived for 10 s.
    Stuck(String),
}

/// Reads one response (content-length or chunked body) from `s`.
async fn read_response(s: &mut TcpStream, reused: bool) -> Got {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    let complete = |buf: &[u8]| -> Option<Got> {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let close = head.contains("\r\nconnection: close");
        let body = &buf[end..];
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let body = match length {
            Some(n) if body.len() >= n => String::from_utf8_lossy(&body[..n]).into_owned(),
            Some(_) => return None,
            None if head.contains("transfer-encoding: chunked") => {
                if !body.ends_with(b"0\r\n\r\n") {
                    return None;
                }
                String::from_utf8_lossy(body).into_owned()
            }
            None => String::new(),
        };
        Some(Got::Complete(status, body, close))
    };
    loop {
        if let Some(got) = complete(&buf) {
            return got;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return Got::Stuck(String::from_utf8_lossy(&buf).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return Got::Nothing { reused },
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Got::Truncated(String::from_utf8_lossy(&buf).into_owned())
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One request of the SIGTERM load: when it was sent, on a new connection or not, what came back.
#[derive(Debug)]
struct Exchange {
    sent: Instant,
    got: Got,
}

/// A keep-alive client: sends requests until the gateway refuses the connection (or 15 s),
/// reconnecting after every `Connection: close`.
async fn keep_alive_client(addr: std::net::SocketAddr, token: String) -> Vec<Exchange> {
    let mut out = Vec::new();
    let start = Instant::now();
    let mut conn: Option<TcpStream> = None;
    while start.elapsed() < Duration::from_secs(15) {
        let reused = conn.is_some();
        let mut s = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(_) => break, // the listener is closed
            },
        };
        let req = format!(
            "GET /term/{} HTTP/1.1\r\nhost: signals.test\r\nauthorization: Bearer {token}\r\n\r\n",
            out.len()
        );
        let sent = Instant::now();
        let got = match s.write_all(req.as_bytes()).await {
            Ok(()) => read_response(&mut s, reused).await,
            Err(_) => Got::Nothing { reused },
        };
        if matches!(got, Got::Complete(_, _, false)) {
            conn = Some(s);
        }
        out.push(Exchange { sent, got });
    }
    out
}

/// `SIGTERM` while 6 keep-alive clients send requests to a backend that takes 150 ms. During
/// `shutdown_delay` (1 s) requests are still served, each answer saying `Connection: close`; then
/// the listener closes. Every request the gateway took is answered completely (no response cut, no
/// request on an open connection dropped unanswered), every request that reached the backend is
/// answered, and the process exits 0. The only requests without an answer are connections the
/// kernel had queued when the listener closed.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_every_accepted_request() {
    let key = TestKey::es256("signals-term");
    let up = Backend::start_with(Duration::from_millis(150), "backend ok").await;
    let keys = JwksServer::start(&[&key]).await;
    let config = ConfigBuilder::new(PROJECT, &keys.url())
        .ext_connector()
        .set("threads", 2)
        .set("shutdown_delay", "1s")
        .set("shutdown_grace", "10s")
        .route(RouteSpec::new("/", &up.url()).name("api").connector("ext"));
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    let mut gw = GatewayProcess::launch(&config.to_yaml(), how).await;
    gw.wait_keys("/", &key.probe_token()).await;
    let tokens = tokens(&key, 6);

    let clients: Vec<_> = tokens
        .iter()
        .map(|t| tokio::spawn(keep_alive_client(gw.addr, t.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    let mut exchanges = Vec::new();
    for c in clients {
        exchanges.extend(c.await.unwrap());
    }
    let status = gw.wait_exit(Duration::from_secs(12)).await;
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", gw.log()));
    assert!(status.success(), "exit {status}:\n{}", gw.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(11),
        "exited after {:?}",
        signalled.elapsed()
    );

    let closing = signalled + Duration::from_millis(900); // the listener closes at +1 s
    let mut complete = 0;
    let mut during_delay = 0;
    let mut queued = 0;
    for x in &exchanges {
        match &x.got {
            Got::Complete(status, body, close) => {
                assert_eq!((*status, body.as_str()), (200, "backend ok"), "{x:?}");
                complete += 1;
                if x.sent > signalled {
                    during_delay += 1;
                    assert!(close, "an answer while draining without Connection: close");
                }
            }
            Got::Nothing { reused: false } if x.sent >= closing => queued += 1,
            _ => panic!(
                "request sent {:?} after the signal: {:?}\n{}",
                x.sent.checked_duration_since(signalled),
                x.got,
                gw.log()
            ),
        }
    }
    assert!(during_delay > 0, "nothing was served during shutdown_delay");
    assert_eq!(
        up.count(),
        complete,
        "requests reached the backend without an answer"
    );
    eprintln!(
        "SIGTERM under load: {complete} answered ({during_delay} while draining), \
         {queued} connections queued when the listener closed"
    );
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}
