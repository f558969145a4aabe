//! Operations, end to end with the real binary on loopback: admin probes, metrics, request ids,
//! SIGHUP reload (broken and valid files), SIGTERM drain with a slow request in flight, and a
//! grep of everything the gateway logged for the secrets the test sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use extoken::mint::{DevKey, MintOptions};

const BIN: &str = env!("CARGO_BIN_EXE_extoken");
const PROJECT: &str = "P2OpsTestProject";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Loopback servers

/// What a test server saw: request path+query and the `x-request-id` it carried.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A hyper server on `listener`: answers `body` after `delay`, records each request.
fn serve(listener: TcpListener, delay: Duration, body: String, seen: Seen) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (body, seen) = (body.clone(), seen.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (body, seen) = (body.clone(), seen.clone());
                    async move {
                        let rid = req
                            .headers()
                            .get("x-request-id")
                            .map(|v| v.to_str().unwrap_or_default().to_string());
                        let uri = req.uri().path_and_query().map(|p| p.to_string());
                        seen.lock().unwrap().push((uri.unwrap_or_default(), rid));
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

struct Upstream {
    addr: SocketAddr,
    seen: Seen,
}

impl Upstream {
    async fn start(delay: Duration) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Seen::default();
        serve(l, delay, "upstream ok".into(), seen.clone());
        Upstream { addr, seen }
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn last(&self) -> (String, Option<String>) {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

/// Serves the key's JWKS on `port` (which may have been refused until now).
async fn serve_jwks(port: u16, key: &DevKey) {
    let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    serve(l, Duration::ZERO, key.jwks.clone(), Seen::default());
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens

struct Keys {
    _dir: tempfile::TempDir,
    key: DevKey,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let key = DevKey::load_or_create(&dir.path().join("key.pem")).unwrap();
        Keys { _dir: dir, key }
    }

    /// A session for `sub` whose external token is `EXTSECRET-<sub>`.
    fn token(&self, sub: &str, ttl_secs: i64) -> String {
        MintOptions {
            project_id: PROJECT.into(),
            issuer: None,
            sub: sub.into(),
            ttl_secs,
            claims: vec![],
            external_token: Some("EXTSECRET-{sub}".into()),
            refresh: false,
        }
        .mint(&self.key, 1)
        .unwrap()
        .remove(0)
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process

struct Gw {
    child: Child,
    dir: tempfile::TempDir,
    proxy: SocketAddr,
    admin: SocketAddr,
    http: reqwest::Client,
}

/// The config's common part; `routes` and extra keys come from the test.
fn base_config(proxy: SocketAddr, admin: SocketAddr, jwks_port: u16, pid: &Path) -> String {
    format!(
        "listen: \"{proxy}\"\nadmin_listen: \"{admin}\"\npid_file: \"{}\"\n\
         descope:\n  project_id: {PROJECT}\n  jwks_url: \"http://127.0.0.1:{jwks_port}/v2/keys/{PROJECT}\"\n\
         connectors:\n  ext:\n    type: claim\n",
        pid.display()
    )
}

impl Gw {
    /// Starts `extoken run` with the base config plus `rest`, and waits for `/healthz`.
    async fn start(jwks_port: u16, rest: &str) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = base_config(proxy, admin, jwks_port, &dir.path().join("extoken.pid"));
        std::fs::write(dir.path().join("gateway.yaml"), format!("{cfg}{rest}")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--config")
            .arg(dir.path().join("gateway.yaml"))
            .env_remove("EXTOKEN_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        for v in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
        ] {
            cmd.env_remove(v);
        }
        let child = cmd.spawn().unwrap();
        let mut gw = Gw {
            child,
            dir,
            proxy,
            admin,
            http: client(),
        };
        let up = eventually(Duration::from_secs(15), || async {
            matches!(gw.admin_get("/healthz").await, Some((200, _)))
        })
        .await;
        assert!(
            up && gw.running(),
            "the gateway did not start:\n{}",
            gw.log()
        );
        gw
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("extoken.pid")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let r = self
            .http
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    }

    async fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(20), || async {
            matches!(self.admin_get("/readyz").await, Some((200, _)))
        })
        .await;
        assert!(ok, "never ready:\n{}", self.log());
    }

    async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.unwrap().1
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- extoken stderr ----\n{}", self.log());
        }
    }
}

fn routes(upstream: &str) -> String {
    format!("routes:\n  - name: api\n    path_prefix: /api\n    upstream: \"{upstream}\"\n    connector: ext\n")
}

/// The value of one sample line (`name{labels}` exactly as the text format prints it).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn probes_metrics_and_request_ids() {
    let keys = Keys::new();
    let up = Upstream::start(Duration::ZERO).await;
    let jwks_port = free_port(); // nobody listens yet
    let gw = Gw::start(jwks_port, &routes(&up.url())).await;

    assert_eq!(gw.admin_get("/healthz").await.unwrap().0, 200);
    let (status, body) = gw.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: ") && body.trim().lines().count() == 1,
        "{body}"
    );
    assert_eq!(gw.admin_get("/.well-known/jwks.json").await.unwrap().0, 404);
    assert_eq!(gw.admin_get("/nope").await.unwrap().0, 404);

    serve_jwks(jwks_port, &keys.key).await;
    gw.wait_ready().await;

    let good = keys.token("U2ops", 600);
    let expired = keys.token("U2old", -600);

    // Forwarded, with the client's request id.
    let r = gw
        .http
        .get(gw.url("/api/a"))
        .bearer_auth(&good)
        .header("x-request-id", "ops-test-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "ops-test-42");
    assert_eq!(up.last().1.as_deref(), Some("ops-test-42"));

    // An insane id is replaced by a generated one, forwarded and returned.
    let r = gw
        .http
        .get(gw.url("/api/b"))
        .bearer_auth(&good)
        .header("x-request-id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32, "{rid}");
    assert!(rid.bytes().all(|b| b.is_ascii_hexdigit()), "{rid}");
    assert_eq!(up.last().1.as_deref(), Some(rid.as_str()));

    // Refusals carry an id too.
    let r = gw.get("/api/c", Some(&expired)).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(gw.get("/api/d", None).await.status(), 401);
    assert_eq!(gw.get("/elsewhere", Some(&good)).await.status(), 404);
    assert_eq!(up.count(), 2);

    // Requests are counted in pingora's logging phase, which may run just after the client has
    // its answer: wait until the last one (the 404) is in before reading the rest.
    let settled = eventually(Duration::from_secs(5), || async {
        sample(
            &gw.metrics().await,
            r#"extoken_requests_total{outcome="no_route",route="unmatched"}"#,
        )
        .is_some()
    })
    .await;
    assert!(settled, "the 404 was never counted");
    let m = gw.metrics().await;
    let v = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no {s} in\n{m}"));
    assert_eq!(
        v(r#"extoken_requests_total{outcome="forwarded",route="api"}"#),
        2.0
    );
    assert_eq!(
        v(r#"extoken_requests_total{outcome="unauthorized",route="api"}"#),
        2.0
    );
    assert_eq!(
        v(r#"extoken_requests_total{outcome="no_route",route="unmatched"}"#),
        1.0
    );
    assert_eq!(v(r#"extoken_auth_failures_total{reason="expired"}"#), 1.0);
    assert_eq!(v(r#"extoken_auth_failures_total{reason="missing"}"#), 1.0);
    assert_eq!(
        v(r#"extoken_upstream_responses_total{class="2xx",route="api"}"#),
        2.0
    );
    assert_eq!(
        v(r#"extoken_request_duration_seconds_count{route="api"}"#),
        4.0
    );
    assert!(v(r#"extoken_jwks_fetches_total{result="ok"}"#) >= 1.0);
    assert!(v(r#"extoken_jwks_fetches_total{result="error"}"#) >= 1.0);
    assert_eq!(v("extoken_jwks_keys"), 1.0);
    assert!(v("extoken_jwks_last_success_timestamp_seconds") > 1.7e9);
    assert_eq!(v(r#"extoken_config_reloads_total{result="error"}"#), 0.0);
    assert_eq!(
        v(&format!(
            r#"extoken_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}

#[tokio::test]
async fn sigterm_drains_a_slow_request_and_exits_zero() {
    let keys = Keys::new();
    let slow = Upstream::start(Duration::from_secs(2)).await;
    let fast = Upstream::start(Duration::ZERO).await;
    let jwks_port = free_port();
    serve_jwks(jwks_port, &keys.key).await;
    let rest = format!(
        "shutdown_delay: 1s\nshutdown_grace: 10s\n{}  - name: fast\n    path_prefix: /fast\n    upstream: \"{}\"\n    connector: ext\n",
        routes(&slow.url()),
        fast.url()
    );
    let mut gw = Gw::start(jwks_port, &rest).await;
    gw.wait_ready().await;
    let token = keys.token("U2slow", 600);

    let (http, url, t) = (gw.http.clone(), gw.url("/api/slow"), token.clone());
    let in_flight = tokio::spawn(async move { http.get(url).bearer_auth(t).send().await });
    assert!(
        eventually(Duration::from_secs(5), || async { slow.count() == 1 }).await,
        "the slow request never reached the upstream"
    );

    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    let not_ready = eventually(Duration::from_millis(800), || async {
        matches!(gw.admin_get("/readyz").await, Some((503, b)) if b.contains("shutting down"))
    })
    .await;
    assert!(not_ready, "readiness did not flip to 503");
    // Still served during shutdown_delay, but asked to reconnect elsewhere.
    let r = gw.get("/fast/x", Some(&token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );

    let r = in_flight
        .await
        .unwrap()
        .expect("the in-flight request failed");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "upstream ok");

    let status = gw.wait_exit(Duration::from_secs(15)).await;
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", gw.log()));
    assert!(status.success(), "exit {status}:\n{}", gw.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(12),
        "exited after {:?}",
        signalled.elapsed()
    );
    assert!(!gw.pid_file().exists(), "pid file left behind");
    // Closed for good.
    assert!(tokio::net::TcpStream::connect(gw.proxy).await.is_err());
}

#[tokio::test]
async fn sighup_reload_keeps_a_broken_file_out_and_applies_a_valid_one() {
    let keys = Keys::new();
    let up = Upstream::start(Duration::ZERO).await;
    let jwks_port = free_port();
    serve_jwks(jwks_port, &keys.key).await;
    let mut gw = Gw::start(jwks_port, &routes(&up.url())).await;
    gw.wait_ready().await;
    let token = keys.token("U2reload", 600);
    assert_eq!(gw.get("/api/x", Some(&token)).await.status(), 200);
    assert_eq!(gw.get("/new/x", Some(&token)).await.status(), 404);
    let pid = std::fs::read_to_string(gw.pid_file()).unwrap();
    assert_eq!(pid.trim(), gw.child.id().to_string());

    let original = std::fs::read_to_string(gw.config_path()).unwrap();
    let base = original.split("routes:").next().unwrap().to_string();

    // Broken: a route naming a connector that does not exist. `extoken reload` sends the SIGHUP.
    std::fs::write(
        gw.config_path(),
        format!(
            "{base}routes:\n  - path_prefix: /api\n    upstream: \"{}\"\n    connector: nope\n",
            up.url()
        ),
    )
    .unwrap();
    // `extoken reload` checks the file first and sends nothing; a bare SIGHUP reaches the gateway.
    let out = Command::new(BIN)
        .args(["reload", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("routes[0].connector"),
        "{out:?}"
    );
    gw.signal(libc::SIGHUP);
    let counted = eventually(Duration::from_secs(5), || async {
        sample(
            &gw.metrics().await,
            r#"extoken_config_reloads_total{result="error"}"#,
        ) == Some(1.0)
    })
    .await;
    assert!(counted, "reload error not counted:\n{}", gw.log());
    assert!(gw.running());
    assert!(
        gw.log().contains("routes[0].connector"),
        "the log does not say why:\n{}",
        gw.log()
    );
    assert_eq!(gw.get("/api/x", Some(&token)).await.status(), 200);
    assert_eq!(gw.admin_get("/readyz").await.unwrap().0, 200);

    // Valid: a new route, and changed descope settings (a new key store, loaded before the swap).
    std::fs::write(
        gw.config_path(),
        format!(
            "{}{}  - name: new\n    path_prefix: /new\n    upstream: \"{}\"\n    connector: ext\n",
            base.replace("descope:\n", "descope:\n  leeway: 7s\n"),
            routes(&up.url()),
            up.url()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["reload", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let applied = eventually(Duration::from_secs(10), || async {
        gw.get("/new/x", Some(&token)).await.status() == 200
    })
    .await;
    assert!(applied, "the new route never answered:\n{}", gw.log());
    assert_eq!(gw.get("/api/x", Some(&token)).await.status(), 200);
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"extoken_config_reloads_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(gw.admin_get("/readyz").await.unwrap().0, 200);
    assert!(gw.running());
}

#[tokio::test]
async fn logs_never_carry_tokens_cookies_or_query_strings() {
    let keys = Keys::new();
    let other = Keys::new(); // signs tokens the gateway must refuse
    let up = Upstream::start(Duration::ZERO).await;
    let jwks_port = free_port();
    serve_jwks(jwks_port, &keys.key).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let rest = format!(
        "shutdown_delay: 0s\nlog:\n  format: json\n  level: debug\n{}  - name: down\n    path_prefix: /down\n    upstream: \"{dead}\"\n    connector: ext\n",
        routes(&up.url())
    );
    let mut gw = Gw::start(jwks_port, &rest).await;
    gw.wait_ready().await;

    let good = keys.token("U2leak", 600);
    let expired = keys.token("U2leakold", -600);
    let forged = other.token("U2forged", 600);
    let malformed = "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24.c2ln-MALFORMEDSECRET";
    let secrets = [
        good.as_str(),
        expired.as_str(),
        forged.as_str(),
        malformed,
        "EXTSECRET-",
        "QUERYSECRET",
        "COOKIESECRET",
        "api_key",
    ];
    let sends: Vec<(&str, Option<&str>, Option<String>)> = vec![
        ("/api/ok?api_key=QUERYSECRET", Some(&good), None),
        (
            "/api/cookie?x=QUERYSECRET",
            None,
            Some(format!("DS={good}; theme=COOKIESECRET")),
        ),
        ("/api/expired?api_key=QUERYSECRET", Some(&expired), None),
        ("/api/forged?api_key=QUERYSECRET", Some(&forged), None),
        ("/api/malformed?api_key=QUERYSECRET", Some(malformed), None),
        (
            "/api/cookie-bad",
            None,
            Some(format!("DS={malformed}; s=COOKIESECRET")),
        ),
        (
            "/down/x?api_key=QUERYSECRET",
            Some(&good),
            Some("s=COOKIESECRET".into()),
        ),
        ("/nowhere?api_key=QUERYSECRET", Some(&good), None),
    ];
    let mut statuses = vec![];
    for (path, bearer, cookie) in &sends {
        let mut r = gw.http.get(gw.url(path));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        statuses.push(r.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 401, 401, 401, 401, 502, 404]);
    assert!(
        up.seen.lock().unwrap()[0].0.contains("QUERYSECRET"),
        "query forwarded"
    );

    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(40)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    let log = gw.log();
    for s in secrets {
        assert!(!log.contains(s), "the log contains {s:?}:\n{log}");
    }
    let access: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
        })
        .filter(|j| j["target"] == "extoken::access")
        .collect();
    assert_eq!(
        access.len(),
        sends.len(),
        "one access line per request:\n{log}"
    );
    let outcomes: Vec<&str> = access
        .iter()
        .map(|j| j["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        outcomes,
        [
            "forwarded",
            "forwarded",
            "unauthorized",
            "unauthorized",
            "unauthorized",
            "unauthorized",
            "upstream_error",
            "no_route"
        ]
    );
    assert_eq!(access[0]["path"], "/api/ok");
    assert_eq!(access[2]["reason"], "expired");
    assert!(access[0]["request_id"]
        .as_str()
        .is_some_and(|r| r.len() == 32));
    assert_eq!(access[0]["upstream_status"], 200);
    assert_eq!(access[6]["status"], 502);
}
