//! The gateway under test: [`GatewayProcess`], the real `extoken` binary spawned with
//! `run --config <tempdir>/gateway.yaml` on a free loopback port and killed on drop (its log is
//! printed when the test failed); optionally with an admin listener and a pid file ([`Launch`]).
//! It can be signalled, reloaded with a new config, and waited for. Its answers are read whole
//! into a [`Reply`]; [`client`] is the proxy-free HTTP client tests talk to it with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::net::{eventually, free_port};

/// The `WWW-Authenticate` of a request that carried no token.
pub const REALM_CHALLENGE: &str = r#"Bearer realm="extoken""#;

pub const BIN: &str = env!("CARGO_BIN_EXE_extoken");

/// The pid file's name in the config directory ([`Launch::pid_file`]).
const PID_FILE: &str = "extoken.pid";

/// The real `extoken run` process on a loopback port; killed on drop.
pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when started with [`Launch::admin`].
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    /// The lines the harness put before the test's config (`listen:`, `admin_listen:`, ...).
    head: String,
    pub client: reqwest::Client,
}

/// How [`GatewayProcess::launch`] starts the gateway, beyond its config text.
#[derive(Debug, Default, Clone, Copy)]
pub struct Launch<'a> {
    /// Files (name, content) written into the config directory first.
    pub files: &'a [(&'a str, &'a str)],
    /// An admin listener on a free port (`admin_listen:`, [`GatewayProcess::admin`]); the start then
    /// also waits for its `/healthz`.
    pub admin: bool,
    /// A `pid_file:` in the config directory ([`GatewayProcess::pid_file`]).
    pub pid_file: bool,
    /// Leaves `EXTOKEN_LOG` unset, so the config's `log.level` applies (otherwise it is `info`).
    pub config_log_level: bool,
}

impl GatewayProcess {
    /// Starts `extoken run` with `yaml` (which must not set `listen:`; a free port is added) and
    /// waits until it accepts connections. Relative paths in the config resolve in [`GatewayProcess::dir`].
    pub async fn start(yaml: &str) -> GatewayProcess {
        Self::launch(yaml, Launch::default()).await
    }

    /// Like [`GatewayProcess::start`], first writing `files` (name, content) into the config directory.
    pub async fn start_with_files(yaml: &str, files: &[(&str, &str)]) -> GatewayProcess {
        Self::launch(
            yaml,
            Launch {
                files,
                ..Launch::default()
            },
        )
        .await
    }

    /// Like [`GatewayProcess::start`], with an admin listener (`/metrics`, probes).
    pub async fn start_with_admin(yaml: &str) -> GatewayProcess {
        Self::launch(
            yaml,
            Launch {
                admin: true,
                ..Launch::default()
            },
        )
        .await
    }

    /// Like [`GatewayProcess::start`], as `how` says.
    pub async fn launch(yaml: &str, how: Launch<'_>) -> GatewayProcess {
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
            let mut gw = GatewayProcess {
                child,
                addr,
                admin,
                dir,
                log,
                head,
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
    /// served set (e.g. [`TestKey::probe_token`](super::keys::TestKey::probe_token)); it is answered 503 until the keys are loaded.
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

    /// The log once it holds `needle`: an access line is written after the reply has left,
    /// so a test that reads the log right after its last request must wait for it.
    pub async fn log_with(&self, needle: &str) -> String {
        eventually(Duration::from_secs(5), || async {
            self.log().contains(needle)
        })
        .await;
        self.log()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One memory field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`: the peak), in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }

    /// The config file the gateway was started with (rewrite it, then reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    /// Replaces the config file with `yaml`, behind the same harness lines (listen address, admin
    /// listener, pid file) the gateway was started with; a reload then applies it.
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(self.config_path(), format!("{}{yaml}", self.head)).unwrap();
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

impl Drop for GatewayProcess {
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

/// The value of one sample line of `/metrics` (`series` is the name with its labels), 0 when
/// absent.
pub fn metric_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}
