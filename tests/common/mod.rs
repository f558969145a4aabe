//! Shared harness of the integration tests: real servers on 127.0.0.1, no mocks.
//!
//! - [`JwksServer`]: serves a JSON Web Key Set, counts every request, can be switched to fail.
//! - [`Backend`]: records every request it receives (method, path+query, all headers, body).
//! - [`Gateway`]: the real `extoken` binary, spawned with `run --config <tempdir>/gateway.yaml`,
//!   killed on drop (its log is printed when the test failed); optionally with an admin listener
//!   and a pid file ([`Launch`]), and can be signalled and waited for.
//! - [`TestKey`]: RSA / EC P-256 / Ed25519 keys generated at test time, their JWKs, and a signer
//!   that takes any header (so tests can forge `alg`, `kid`, signatures).
#![allow(dead_code)] // each test file uses a different part of the harness

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The `WWW-Authenticate` of a request that carried no token.
pub const REALM_CHALLENGE: &str = r#"Bearer realm="extoken""#;

// ---------------------------------------------------------------------------------------------
// Ports and time

/// A port nobody listens on right now (bound to :0 and released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

// ---------------------------------------------------------------------------------------------
// A tiny hyper 1 server

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
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn bind(port: u16) -> TcpListener {
    TcpListener::bind(("127.0.0.1", port)).await.unwrap()
}

pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// JWKS endpoint

/// How the JWKS endpoint behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksMode {
    /// 200 with the current key set.
    Up,
    /// Answers this status with an HTML body.
    Status(u16),
    /// Accepts connections and closes them without a word (a crashed server behind a port).
    Drop,
    /// Holds every request until the mode changes, then answers per the new mode.
    Hang,
}

struct JwksState {
    body: String,
    mode: JwksMode,
}

/// A JWKS endpoint on loopback (any path). Counts every request, answered or not.
pub struct JwksServer {
    server: HttpServer,
    state: Arc<Mutex<JwksState>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> JwksServer {
        Self::start_on(0, &jwks(keys)).await
    }

    /// Serves `body` verbatim (e.g. a fixture file).
    pub async fn start_raw(body: &str) -> JwksServer {
        Self::start_on(0, body).await
    }

    /// Serves on a given port (one that was reserved with [`free_port`] and refused until now).
    pub async fn start_on(port: u16, body: &str) -> JwksServer {
        let state = Arc::new(Mutex::new(JwksState {
            body: body.to_string(),
            mode: JwksMode::Up,
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let (st, h) = (state.clone(), hits.clone());
        let handler: Handler = Arc::new(move |_req| {
            let st = st.clone();
            let h = h.clone();
            Box::pin(async move {
                h.fetch_add(1, Ordering::SeqCst);
                let (mode, body) = loop {
                    let (mode, body) = {
                        let s = st.lock().unwrap();
                        (s.mode, s.body.clone())
                    };
                    if mode != JwksMode::Hang {
                        break (mode, body);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                };
                match mode {
                    JwksMode::Up => Ok(response(200, "application/json", body)),
                    JwksMode::Status(s) => Ok(response(s, "text/html", "<html>down</html>")),
                    JwksMode::Drop | JwksMode::Hang => Err("dropping the connection".to_string()),
                }
            })
        });
        let (st, h) = (state.clone(), hits.clone());
        let refuse = Arc::new(move || {
            let drop_it = st.lock().unwrap().mode == JwksMode::Drop;
            if drop_it {
                h.fetch_add(1, Ordering::SeqCst);
            }
            drop_it
        });
        let server = HttpServer::start(bind(port).await, handler, refuse);
        JwksServer {
            server,
            state,
            hits,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v2/keys/test-project", self.server.addr)
    }

    /// Requests received so far (including refused and failed ones).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        self.state.lock().unwrap().body = jwks(keys);
    }

    /// Serves `body` verbatim from now on.
    pub fn set_body(&self, body: &str) {
        self.state.lock().unwrap().body = body.to_string();
    }

    pub fn set_mode(&self, mode: JwksMode) {
        self.state.lock().unwrap().mode = mode;
    }
}

// ---------------------------------------------------------------------------------------------
// Recording backend

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// Every header line, in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// All values of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of a header; panics if it appears more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    /// All cookie pairs of all `Cookie` headers, in order.
    pub fn cookies(&self) -> Vec<String> {
        self.all("cookie")
            .iter()
            .flat_map(|v| v.split(';'))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    }
}

/// A backend that records every request and answers `200 backend ok` with `x-backend: yes`.
pub struct Backend {
    server: HttpServer,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Backend {
    pub async fn start() -> Backend {
        Self::start_with(Duration::ZERO, "backend ok").await
    }

    /// A backend that answers `answer` after `delay` (a slow upstream); each request is recorded
    /// as soon as it arrived, before the wait.
    pub async fn start_with(delay: Duration, answer: &'static str) -> Backend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let s = s.clone();
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes()
                    .to_vec();
                let rec = Recorded {
                    method: parts.method.to_string(),
                    uri: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body,
                };
                s.lock().unwrap().push(rec);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut r = response(200, "text/plain", answer);
                r.headers_mut().insert("x-backend", "yes".parse().unwrap());
                Ok(r)
            })
        });
        let server = HttpServer::start(bind(0).await, handler, Arc::new(|| false));
        Backend { server, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// The latest request received; panics if none arrived.
    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the backend received no request")
    }

    /// The only request received so far; panics unless exactly one arrived.
    pub fn only(&self) -> Recorded {
        let seen = self.requests();
        assert_eq!(
            seen.len(),
            1,
            "backend received {} requests: {seen:#?}",
            seen.len()
        );
        seen.into_iter().next().unwrap()
    }

    /// Forgets what was recorded.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process

pub const BIN: &str = env!("CARGO_BIN_EXE_extoken");

/// The pid file's name in the config directory ([`Launch::pid_file`]).
const PID_FILE: &str = "extoken.pid";

/// The real `extoken run` process on a loopback port; killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when started with [`Launch::admin`].
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    pub client: reqwest::Client,
}

/// How [`Gateway::launch`] starts the gateway, beyond its config text.
#[derive(Debug, Default, Clone, Copy)]
pub struct Launch<'a> {
    /// Files (name, content) written into the config directory first.
    pub files: &'a [(&'a str, &'a str)],
    /// An admin listener on a free port (`admin_listen:`, [`Gateway::admin`]); the start then
    /// also waits for its `/healthz`.
    pub admin: bool,
    /// A `pid_file:` in the config directory ([`Gateway::pid_file`]).
    pub pid_file: bool,
    /// Leaves `EXTOKEN_LOG` unset, so the config's `log.level` applies (otherwise it is `info`).
    pub config_log_level: bool,
}

impl Gateway {
    /// Starts `extoken run` with `yaml` (which must not set `listen:`; a free port is added) and
    /// waits until it accepts connections. Relative paths in the config resolve in [`Gateway::dir`].
    pub async fn start(yaml: &str) -> Gateway {
        Self::launch(yaml, Launch::default()).await
    }

    /// Like [`Gateway::start`], first writing `files` (name, content) into the config directory.
    pub async fn start_with_files(yaml: &str, files: &[(&str, &str)]) -> Gateway {
        Self::launch(
            yaml,
            Launch {
                files,
                ..Launch::default()
            },
        )
        .await
    }

    /// Like [`Gateway::start`], as `how` says.
    pub async fn launch(yaml: &str, how: Launch<'_>) -> Gateway {
        let mut dir = tempfile::tempdir().unwrap();
        for (name, content) in how.files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        // A port picked with :0 may be taken by someone else before the gateway binds it: retry.
        let mut last_log = String::new();
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let cfg = dir.path().join("gateway.yaml");
            // No admin listener unless the test asks for one: parallel gateways would all want
            // its default port.
            let mut admin = None;
            let mut head = format!("listen: \"{addr}\"\n");
            if how.admin {
                let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                head.push_str(&format!("admin_listen: \"{a}\"\n"));
                admin = Some(a);
            } else if !yaml.contains("admin_listen:") {
                head.push_str("admin_listen: off\n");
            }
            if how.pid_file {
                let pid = dir.path().join(PID_FILE);
                head.push_str(&format!("pid_file: \"{}\"\n", pid.display()));
            }
            std::fs::write(&cfg, format!("{head}{yaml}")).unwrap();
            let log = dir.path().join("gateway.log");
            let mut cmd = gateway_command(&cfg, &log);
            if how.config_log_level {
                cmd.env_remove("EXTOKEN_LOG");
            }
            let child = cmd.spawn().expect("spawn extoken");
            let mut gw = Gateway {
                child,
                addr,
                admin,
                dir,
                log,
                client: client(),
            };
            match gw.wait_listening().await {
                Ok(()) => return gw,
                Err(log) => {
                    last_log = log;
                    let _ = gw.child.kill();
                    let _ = gw.child.wait();
                    if !last_log.contains("in use") {
                        break;
                    }
                    dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
                }
            }
        }
        panic!("the gateway did not start:\n{last_log}");
    }

    async fn wait_listening(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("extoken exited with {status}:\n{}", self.log()));
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && (self.admin.is_none()
                    || matches!(self.admin_get("/healthz").await, Some((200, _))))
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(15) {
                return Err(format!(
                    "extoken did not listen within 15 s:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until the gateway has keys: `probe` must be a token whose `kid` is in the
    /// served set (e.g. [`TestKey::probe_token`]); it is answered 503 until the keys are loaded.
    pub async fn wait_keys(&self, path: &str, probe: &str) {
        let ok = eventually(Duration::from_secs(10), || async {
            match self
                .client
                .get(self.url(path))
                .bearer_auth(probe)
                .send()
                .await
            {
                Ok(r) => r.status() != 503,
                Err(_) => false,
            }
        })
        .await;
        assert!(ok, "the gateway never loaded its keys:\n{}", self.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the gateway was started with (rewrite it, then reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    /// Where [`Launch::pid_file`] has the gateway write its pid.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join(PID_FILE)
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGHUP`, ...) to the process.
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Waits (bounded) for the process to exit; `None` if it still runs after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET path` on the admin listener: status and body, `None` if it did not answer.
    /// Panics unless started with [`Launch::admin`].
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let admin = self.admin.expect("the gateway has no admin listener");
        let r = self
            .client
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    }

    /// Waits (bounded) until the admin `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(20), || async {
            matches!(self.admin_get("/readyz").await, Some((200, _)))
        })
        .await;
        assert!(ok, "never ready:\n{}", self.log());
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.expect("no /metrics").1
    }

    /// `GET path` with a bearer token.
    pub async fn get_bearer(&self, path: &str, token: &str) -> Reply {
        Reply::from(
            self.client
                .get(self.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// `GET path` with no credentials.
    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        Reply::from(req.send().await.unwrap()).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- extoken log ({}) ----\n{}", self.addr, self.log());
        }
    }
}

fn gateway_command(cfg: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .env("EXTOKEN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// A client for talking to the gateway: loopback only, never through a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A gateway answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the 401 for a bad token with exactly this description, in the header and the body.
    pub fn assert_invalid_token(&self, description: &str) {
        assert_eq!(self.status, 401, "{self:?}");
        assert_eq!(
            self.header("www-authenticate"),
            Some(
                format!(r#"Bearer error="invalid_token", error_description="{description}""#)
                    .as_str()
            ),
            "{self:?}"
        );
        let j = self.json();
        assert_eq!(j["error"], "invalid_token", "{self:?}");
        assert_eq!(j["error_description"], description, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
    }

    /// The `error_description` of a 401 invalid_token answer.
    pub fn description(&self) -> String {
        assert_eq!(self.status, 401, "{self:?}");
        self.json()["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens

/// The description of a valid session that lacks the `externalToken` claim.
pub const NO_EXTERNAL_TOKEN: &str = "session has no usable externalToken claim";
/// The description of a valid session whose `externalToken` may not go in a header.
pub const BAD_EXTERNAL_TOKEN: &str = "session's externalToken claim is not usable";

/// A signing key made at test time, with its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

impl TestKey {
    /// A fresh RSA-2048 key whose JWK says `alg` (an RS* or PS* algorithm).
    pub fn rsa(kid: &str, alg: Algorithm) -> TestKey {
        let pem = extoken::mint::generate_pem().unwrap();
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let mut jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, alg).unwrap(),
        )
        .unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        TestKey {
            kid: kid.into(),
            alg,
            encoding,
            jwk,
        }
    }

    /// A fresh EC P-256 key (ES256).
    pub fn es256(kid: &str) -> TestKey {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = kp.public_key().as_ref(); // 0x04 || x || y
        assert_eq!(point.len(), 65);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        });
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        }
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> TestKey {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8v1(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.as_ref()).unwrap();
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
            "x": b64(kp.public_key().as_ref()),
        });
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk,
        }
    }

    /// A token signed with this key's own `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(
            &json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"}),
            self.alg,
            claims,
        )
    }

    /// A token with any header, signed with this key using `alg`.
    pub fn sign_with(&self, header: &Value, alg: Algorithm, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, alg).unwrap();
        format!("{input}.{sig}")
    }

    /// A token the gateway answers 503 while it has no keys and 401 (bad signature) once it has
    /// this key: for [`Gateway::wait_keys`]. Never reaches a backend, never cached.
    pub fn probe_token(&self) -> String {
        let header = json!({"alg": alg_name(self.alg), "kid": self.kid});
        format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(b"{}"),
            b64(b"not a signature")
        )
    }
}

pub fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        other => panic!("no name for {other:?}"),
    }
}

/// `{"keys":[...]}` for these keys.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Descope-shaped session claims: `iss` = project, 10 minutes of life, `drn` DS, and the
/// `externalToken` claim when `ext` is given.
pub fn session_claims(project: &str, ext: Option<&str>) -> Value {
    let now = now();
    let mut c = Map::new();
    c.insert("iss".into(), project.into());
    c.insert("sub".into(), "U2testUser".into());
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), (now + 600).into());
    c.insert("drn".into(), "DS".into());
    c.insert("amr".into(), json!(["email"]));
    if let Some(e) = ext {
        c.insert("externalToken".into(), e.into());
    }
    Value::Object(c)
}

/// `claims` with `key` set to `value` (or removed when `value` is null).
pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    let m = claims.as_object_mut().unwrap();
    if value.is_null() {
        m.remove(key);
    } else {
        m.insert(key.into(), value);
    }
    claims
}

// ---------------------------------------------------------------------------------------------
// Config snippets

/// The `descope:` block for a project whose keys come from `jwks_url`, plus `extra` lines
/// (each `key: value`, indented by this function).
pub fn descope_block(project: &str, jwks_url: &str, extra: &[&str]) -> String {
    let mut s = format!("descope:\n  project_id: \"{project}\"\n  jwks_url: \"{jwks_url}\"\n");
    for e in extra {
        s.push_str(&format!("  {e}\n"));
    }
    s
}

/// The usual `connectors:` block: `ext`, a `claim` connector on `externalToken`.
pub const CONNECTORS: &str = "connectors:\n  ext:\n    type: claim\n    claim: externalToken\n";

/// A whole config: project, keys at `jwks_url`, one `auth: required` route `/` to `upstream`.
pub fn simple_config(project: &str, jwks_url: &str, upstream: &str) -> String {
    format!(
        "{}{CONNECTORS}routes:\n  - name: api\n    path_prefix: /\n    upstream: \"{upstream}\"\n    connector: ext\n",
        descope_block(project, jwks_url, &[])
    )
}

/// Path of a fixture under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn read_fixture(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel))
        .unwrap()
        .trim()
        .to_string()
}
