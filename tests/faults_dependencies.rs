//! Faults of what the gateway depends on besides the upstream: the Descope JWKS endpoint (slow,
//! huge, garbage, failing, flapping, under load), the token connectors (slow, huge, garbage,
//! hanging) and DNS. Real sockets on loopback, the real binary, bounded durations. Every case
//! checks the answer, how long it took (generous upper bounds only), that nothing reached the
//! backend that should not have, and that the gateway still serves afterwards. Huge replies also
//! check the gateway's peak memory (`VmHWM`): they are refused while streaming, never buffered.
//!
//! (tests/jwks.rs covers a JWKS endpoint that is down, answers garbage or 5xx before and after the
//! first load; tests/connector_http.rs the connector's 4xx/5xx, retries and unreachable endpoint.)

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const PROJECT: &str = "P2faultsDependencies00000";
/// The size of the runaway replies.
const HUGE: usize = 50 * 1024 * 1024;
/// How much a huge reply may raise the gateway's peak RSS (the limits are 1 MiB and 256 KiB).
const RSS_BOUND_KIB: u64 = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 server whose answer the test switches, able to stream a reply of any size
// without holding it (so this process stays small too) and to hang.

/// How the [`RawServer`] answers the next request.
#[derive(Clone, Debug)]
enum Answer {
    /// 200 with this JSON body.
    Json(String),
    /// 200 with `pad` bytes of JSON whitespace before `tail` (so the whole is valid JSON: only its
    /// size is wrong); with a `Content-Length` when `declared`, chunked otherwise.
    Padded {
        pad: usize,
        tail: String,
        declared: bool,
    },
    /// Reads the request and never answers (the connection stays open).
    Hang,
    /// 200 with this JSON body, after this long.
    Delayed(Duration, String),
}

struct RawServer {
    addr: std::net::SocketAddr,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawServer {
    async fn start(answer: Answer) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let task = tokio::spawn(async move {
            // Owned here: aborting the accept loop drops (and so aborts) every connection task.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (a, h) = (a.clone(), h.clone());
                conns.spawn(async move {
                    let _ = serve(stream, a, h).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        RawServer {
            addr,
            answer,
            hits,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Requests received (their heads read) so far.
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request on `s` (head and `Content-Length` body read, so closing never resets the client),
/// answered per the current [`Answer`], then the connection closes.
async fn serve(
    mut s: TcpStream,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < body_len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let answer = answer.lock().unwrap().clone();
    match answer {
        Answer::Json(body) => write_json(&mut s, &body).await,
        Answer::Delayed(d, body) => {
            tokio::time::sleep(d).await;
            write_json(&mut s, &body).await
        }
        Answer::Hang => std::future::pending().await,
        Answer::Padded {
            pad,
            tail,
            declared,
        } => {
            let framing = if declared {
                format!("content-length: {}", pad + tail.len())
            } else {
                "transfer-encoding: chunked".to_string()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await?;
            let spaces = vec![b' '; 64 * 1024];
            let mut left = pad;
            // The gateway stops reading at its limit and closes: a write then fails, and we stop.
            while left > 0 {
                let n = left.min(spaces.len());
                write_piece(&mut s, &spaces[..n], declared).await?;
                left -= n;
            }
            write_piece(&mut s, tail.as_bytes(), declared).await?;
            if !declared {
                s.write_all(b"0\r\n\r\n").await?;
            }
            Ok(())
        }
    }
}

async fn write_json(s: &mut TcpStream, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await
}

async fn write_piece(s: &mut TcpStream, piece: &[u8], declared: bool) -> std::io::Result<()> {
    if !declared {
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await?;
    }
    s.write_all(piece).await?;
    if !declared {
        s.write_all(b"\r\n").await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The value of one series in a `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

const JWKS_ERRORS: &str = r#"extoken_jwks_fetches_total{result="error"}"#;
const JWKS_OKS: &str = r#"extoken_jwks_fetches_total{result="ok"}"#;

async fn metric_of(gw: &GatewayProcess, series: &str) -> u64 {
    metric(&gw.metrics().await, series)
}

/// Waits (bounded) until `series` reached `at_least`.
async fn wait_metric(gw: &GatewayProcess, series: &str, at_least: u64) {
    let ok = eventually(Duration::from_secs(15), || async {
        metric_of(gw, series).await >= at_least
    })
    .await;
    assert!(
        ok,
        "{series} stayed at {} (want {at_least}):\n{}",
        metric_of(gw, series).await,
        gw.log()
    );
}

/// A fresh session (never verified before) whose external token is `ext`.
fn session(key: &TestKey, ext: &str) -> String {
    key.sign(&session_claims(PROJECT, Some(ext)))
}

/// The usual one-route gateway (claim connector `ext`), its config edited by `edit` (the
/// `descope:` settings), with an admin listener.
async fn jwks_gateway(
    jwks_url: &str,
    upstream: &str,
    edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> GatewayProcess {
    let config = edit(ConfigBuilder::simple(PROJECT, jwks_url, upstream));
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    GatewayProcess::launch(&config.to_yaml(), how).await
}

/// Sends a fresh session and expects it forwarded, answered within `limit`.
async fn assert_served(gw: &GatewayProcess, key: &TestKey, ext: &str, limit: Duration) {
    let start = Instant::now();
    let r = gw.get_bearer("/", &session(key, ext)).await;
    assert_eq!(r.status, 200, "{ext}: {r:?}\n{}", gw.log());
    assert!(start.elapsed() < limit, "{ext}: took {:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// JWKS

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_endpoint_slower_than_jwks_timeout_keeps_the_last_good_keys() {
    let backend = Backend::start().await;
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let gw = jwks_gateway(&jwks.url(), &backend.url(), |c| {
        c.descope("jwks_refresh", "200ms")
            .descope("jwks_timeout", "300ms")
    })
    .await;
    gw.wait_keys("/", &key.probe_token()).await;
    let errors = metric_of(&gw, JWKS_ERRORS).await;

    jwks.set_mode(JwksMode::Hang);
    // Two refreshes that time out (the retry after a failure waits 1 s).
    wait_metric(&gw, JWKS_ERRORS, errors + 2).await;
    for i in 0..5 {
        // Sessions are verified with the keys in hand: nobody waits for the slow endpoint.
        assert_served(&gw, &key, &format!("slow-{i}"), Duration::from_secs(2)).await;
    }
    jwks.set_mode(JwksMode::Up);
    let oks = metric_of(&gw, JWKS_OKS).await;
    wait_metric(&gw, JWKS_OKS, oks + 1).await;
    assert_served(&gw, &key, "after", Duration::from_secs(2)).await;
    assert_eq!(backend.count(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn before_the_first_load_a_hanging_jwks_endpoint_means_a_quick_503() {
    let backend = Backend::start().await;
    let key = TestKey::es256("ec1");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_mode(JwksMode::Hang);
    // A long fetch timeout: requests must not wait for the fetch in flight.
    let gw = jwks_gateway(&jwks.url(), &backend.url(), |c| {
        c.descope("jwks_timeout", "30s")
    })
    .await;
    let ok = eventually(Duration::from_secs(10), || async { jwks.hits() >= 1 }).await;
    assert!(ok, "the first fetch never started");
    for i in 0..3 {
        let start = Instant::now();
        let r = gw
            .get_bearer("/", &session(&key, &format!("early-{i}")))
            .await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("5"));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(backend.count(), 0);
    jwks.set_mode(JwksMode::Up);
    let served = eventually(Duration::from_secs(10), || async {
        gw.get_bearer("/", &session(&key, "late")).await.status == 200
    })
    .await;
    assert!(served, "the keys never loaded:\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_jwks_replies_are_failed_fetches_and_do_not_grow_memory() {
    let backend = Backend::start().await;
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let other = TestKey::es256("k2");
    let set = common::jwks(&[&key]);
    let jwks = RawServer::start(Answer::Json(set.clone())).await;
    let gw = jwks_gateway(&jwks.url("/keys"), &backend.url(), |c| {
        c.descope("jwks_refresh", "200ms")
            .descope("jwks_min_refetch", "100ms")
    })
    .await;
    gw.wait_keys("/", &key.probe_token()).await;
    for i in 0..20 {
        assert_served(&gw, &key, &format!("warm-{i}"), Duration::from_secs(5)).await;
    }
    let before = gw.status_kib("VmHWM");

    // 50 MB of whitespace before a key set with a new key: valid JSON, too big. Once chunked
    // (refused while streaming), once with its Content-Length (refused before reading).
    let bigger = common::jwks(&[&key, &other]);
    for declared in [false, true] {
        let errors = metric_of(&gw, JWKS_ERRORS).await;
        let hits = jwks.hits();
        jwks.set(Answer::Padded {
            pad: HUGE,
            tail: bigger.clone(),
            declared,
        });
        wait_metric(&gw, JWKS_ERRORS, errors + 2).await;
        assert!(jwks.hits() >= hits + 2);
        // The last good keys are in use; the oversized set was not taken.
        assert_served(
            &gw,
            &key,
            &format!("kept-{declared}"),
            Duration::from_secs(5),
        )
        .await;
        gw.get_bearer("/", &session(&other, "new"))
            .await
            .assert_invalid_token("token is signed with an unknown key");
    }
    let after = gw.status_kib("VmHWM");
    let growth = after.saturating_sub(before);
    println!("gateway peak RSS: {before} KiB before, {after} KiB after 50 MB JWKS replies (+{growth} KiB)");
    assert!(
        growth < RSS_BOUND_KIB,
        "peak RSS grew by {growth} KiB reading 50 MB JWKS replies"
    );

    // The endpoint recovers: the new set is taken.
    jwks.set(Answer::Json(bigger));
    let ok = eventually(Duration::from_secs(10), || async {
        gw.get_bearer("/", &session(&other, "recovered"))
            .await
            .status
            == 200
    })
    .await;
    assert!(ok, "the key set was never reloaded:\n{}", gw.log());
    assert!(backend.authorizations().iter().all(|a| a != "Bearer new"));
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_max_bytes_is_the_bound() {
    let backend = Backend::start().await;
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let other = TestKey::es256("k2");
    let set = common::jwks(&[&key]);
    let padded = |pad: usize, tail: &str| Answer::Padded {
        pad,
        tail: tail.to_string(),
        declared: false,
    };
    // 3000 bytes of padding + the set: under 4096, loaded.
    let jwks = RawServer::start(padded(3000, &set)).await;
    let gw = jwks_gateway(&jwks.url("/keys"), &backend.url(), |c| {
        c.descope("jwks_max_bytes", 4096)
            .descope("jwks_refresh", "200ms")
    })
    .await;
    gw.wait_keys("/", &key.probe_token()).await;
    let errors = metric_of(&gw, JWKS_ERRORS).await;
    assert_eq!(errors, 0, "{}", gw.log());

    // 5000 bytes of padding: over it, refused; the set it holds is not taken.
    jwks.set(padded(5000, &common::jwks(&[&key, &other])));
    wait_metric(&gw, JWKS_ERRORS, 1).await;
    assert_served(&gw, &key, "kept", Duration::from_secs(5)).await;
    gw.get_bearer("/", &session(&other, "x"))
        .await
        .assert_invalid_token("token is signed with an unknown key");
    assert!(
        gw.log()
            .contains("larger than descope.jwks_max_bytes (4096 bytes)"),
        "the log says why:\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_jwks_endpoint_under_load_never_fails_a_valid_session() {
    let backend = Backend::start().await;
    let key = Arc::new(TestKey::rsa("k1", Algorithm::RS256));
    let jwks = Arc::new(JwksServer::start(&[&key]).await);
    let gw = Arc::new(
        jwks_gateway(&jwks.url(), &backend.url(), |c| {
            c.descope("jwks_refresh", "100ms")
                .descope("jwks_min_refetch", "100ms")
                .descope("jwks_timeout", "200ms")
        })
        .await,
    );
    gw.wait_keys("/", &key.probe_token()).await;
    let errors = metric_of(&gw, JWKS_ERRORS).await;

    // The endpoint cycles through every way of failing, and back, for 3 s.
    let flapper = {
        let (jwks, set) = (jwks.clone(), common::jwks(&[&key]));
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(3);
            let mut i = 0usize;
            while Instant::now() < end {
                match i % 5 {
                    0 => jwks.set_mode(JwksMode::Status(500)),
                    1 => jwks.set_mode(JwksMode::Drop),
                    2 => {
                        jwks.set_body("<html>maintenance</html>");
                        jwks.set_mode(JwksMode::Up);
                    }
                    3 => jwks.set_mode(JwksMode::Hang),
                    _ => {
                        jwks.set_body(&set);
                        jwks.set_mode(JwksMode::Up);
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            jwks.set_body(&set);
            jwks.set_mode(JwksMode::Up);
        })
    };
    // Meanwhile, 6 clients: fresh sessions (verified now), a cached one, and forged kids (an
    // unknown kid's refetch may fail: still 401, never 503).
    let cached = session(&key, "cached");
    let forged = TestKey::rsa("forged", Algorithm::RS256);
    let mut clients = JoinSet::new();
    for c in 0..6 {
        let (gw, key, cached, forged_token) = (
            gw.clone(),
            key.clone(),
            cached.clone(),
            session(&forged, "forged"),
        );
        clients.spawn(async move {
            let mut statuses = Vec::new();
            let end = Instant::now() + Duration::from_secs(3);
            let mut n = 0;
            while Instant::now() < end {
                let (token, want) = match n % 4 {
                    0 => (cached.clone(), 200),
                    3 => (forged_token.clone(), 401),
                    _ => (session(&key, &format!("c{c}-{n}")), 200),
                };
                let start = Instant::now();
                let status = gw.get_bearer("/", &token).await.status;
                statuses.push((status, want, start.elapsed()));
                n += 1;
            }
            statuses
        });
    }
    let mut total = 0;
    while let Some(r) = clients.join_next().await {
        for (status, want, took) in r.unwrap() {
            assert_eq!(status, want, "a request failed while the JWKS flapped");
            assert!(took < Duration::from_secs(3), "a request took {took:?}");
            total += 1;
        }
    }
    flapper.await.unwrap();
    assert!(total > 50, "only {total} requests");
    assert!(
        metric_of(&gw, JWKS_ERRORS).await > errors,
        "the flapping was never seen"
    );
    assert!(backend
        .authorizations()
        .iter()
        .all(|a| a != "Bearer forged"));
}

// ---------------------------------------------------------------------------------------------
// Connectors

/// One connector endpoint misbehaving in one way, on its own route.
struct Faulty {
    name: &'static str,
    server: RawServer,
}

#[tokio::test(flavor = "multi_thread")]
async fn connectors_that_are_slow_huge_garbage_or_hanging_are_503_within_their_timeout() {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let ok_token = json!({"token": "never-used", "expires_in": 600}).to_string();
    let huge = |declared| Answer::Padded {
        pad: HUGE,
        tail: ok_token.clone(),
        declared,
    };
    let cases = [
        (
            "slow",
            Answer::Delayed(Duration::from_secs(10), ok_token.clone()),
        ),
        ("hanging", Answer::Hang),
        ("huge", huge(false)),
        ("huge-declared", huge(true)),
        ("garbage", Answer::Json("<html>token=zzz</html>".into())),
        ("oauth-huge", huge(false)),
        ("firebase-huge", huge(false)),
    ];
    let mut faulty = Vec::new();
    for (name, answer) in cases {
        faulty.push(Faulty {
            name,
            server: RawServer::start(answer).await,
        });
    }
    // The OAuth case: the token endpoint is the huge one; the connector endpoint is never reached.
    let endpoint = TokenEndpoint::start(OK_10M).await;
    let pem = extoken::mint::generate_pem().unwrap();
    let service_account = json!({
        "type": "service_account", "project_id": "demo-extoken", "private_key_id": "pk1",
        "private_key": pem, "client_email": "svc@demo-extoken.iam.gserviceaccount.com",
    })
    .to_string();

    let mut config = project
        .config()
        .set("cache", json!({"negative_ttl": "1m"}))
        .ext_connector()
        .route(RouteSpec::new("/ok", &backend.url()).connector("ext"));
    for f in &faulty {
        let spec = match f.name {
            "oauth-huge" => json!({
                "type": "http", "url": endpoint.url(), "ttl": "10m", "timeout": "1s",
                "auth": {"oauth2_client_credentials": {
                    "token_url": f.server.url("/oauth"), "client_id": "c", "client_secret": "s",
                }},
            }),
            "firebase-huge" => json!({
                "type": "firebase", "mode": "id_token", "api_key": "test-api-key",
                "service_account_json": service_account, "timeout": "1s",
                "identity_toolkit_url": f.server.url(""),
            }),
            _ => json!({
                "type": "http", "url": f.server.url("/token"), "ttl": "10m",
                "timeout": "1s", "retries": 2,
            }),
        };
        config = config.connector(f.name, spec).route(
            RouteSpec::new(&format!("/{}", f.name), &backend.url())
                .name(f.name)
                .connector(f.name),
        );
    }
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    let gw = project.gateway(&config, how).await;
    let user = project.session("U2fault", &[("externalToken", json!("claim-token"))]);
    // Warm the process up on the healthy route first.
    for _ in 0..10 {
        assert_eq!(gw.get_bearer("/ok", &user).await.status, 200);
    }
    let before = gw.status_kib("VmHWM");

    for f in &faulty {
        let path = format!("/{}/x", f.name);
        let start = Instant::now();
        let r = gw.get_bearer(&path, &user).await;
        let took = start.elapsed();
        assert_eq!(r.status, 503, "{}: {r:?}", f.name);
        assert_eq!(r.header("retry-after"), Some("5"), "{}", f.name);
        assert!(
            r.body.contains(f.name),
            "{}: names the connector: {}",
            f.name,
            r.body
        );
        assert!(!r.body.contains("zzz") && !r.body.contains("never-used"));
        // `timeout: 1s`: well within a generous bound (the slow endpoint answers after 10 s).
        assert!(took < Duration::from_secs(4), "{}: took {took:?}", f.name);
        assert_eq!(f.server.hits(), 1, "{}: called once, not retried", f.name);

        // Within negative_ttl the failure is remembered: no second call.
        let start = Instant::now();
        let again = gw.get_bearer(&path, &user).await;
        assert_eq!(again.status, 503, "{}", f.name);
        assert!(start.elapsed() < Duration::from_secs(1), "{}", f.name);
        assert_eq!(f.server.hits(), 1, "{}: negative cache used", f.name);
    }
    assert_eq!(
        endpoint.calls(),
        0,
        "no connector call without an OAuth token"
    );
    assert_eq!(backend.count(), 10, "nothing forwarded without a token");
    let after = gw.status_kib("VmHWM");
    let growth = after.saturating_sub(before);
    println!("gateway peak RSS: {before} KiB before, {after} KiB after 4 × 50 MB connector replies (+{growth} KiB)");
    assert!(
        growth < RSS_BOUND_KIB,
        "peak RSS grew by {growth} KiB reading 50 MB connector replies"
    );
    let log = gw.log();
    assert!(log.contains("larger than 262144 bytes"), "{log}");
    assert!(!log.contains("test-api-key"), "the Firebase API key leaked");
    // Still serving.
    assert_eq!(gw.get_bearer("/ok", &user).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// DNS

#[tokio::test(flavor = "multi_thread")]
async fn upstream_names_are_resolved_again_in_the_background() {
    let backend = Backend::start().await;
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    // The backend by name: `localhost` is resolved at start, then every second.
    let upstream = backend.url().replace("127.0.0.1", "localhost");
    let config = ConfigBuilder::simple(PROJECT, &jwks.url(), &upstream).set("dns_refresh", "1s");
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    let gw = GatewayProcess::launch(&config.to_yaml(), how).await;
    gw.wait_keys("/", &key.probe_token()).await;
    let series = r#"extoken_dns_resolutions_total{result="ok"}"#;
    wait_metric(&gw, series, 2).await;
    for i in 0..5 {
        assert_served(&gw, &key, &format!("dns-{i}"), Duration::from_secs(5)).await;
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, r#"extoken_dns_resolutions_total{result="error"}"#),
        0
    );
    assert_eq!(backend.count(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_name_that_does_not_resolve_at_start_fails_the_start_naming_its_route() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::new(PROJECT, "http://127.0.0.1:1/keys")
        .ext_connector()
        .route(RouteSpec::new("/", "http://127.0.0.1:1").connector("ext"))
        .route(RouteSpec::new("/b", "http://no-such-host.invalid:80").connector("ext"))
        .set("listen", format!("127.0.0.1:{}", free_port()))
        .set("admin_listen", "off");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config.to_yaml()).unwrap();
    let mut child = Command::new(common::BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("extoken started with an unresolvable upstream");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("routes[1].upstream: cannot resolve no-such-host.invalid"),
        "{err}"
    );
}
