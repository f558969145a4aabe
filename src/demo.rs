//! `extoken demo`: the whole path on loopback with no Descope account and no network.
//!
//! One pingora server runs three services: a JWKS endpoint serving a local dev key (standing in
//! for Descope), an echo upstream that answers with the headers it received (standing in for the
//! legacy backend), and the gateway itself with the repo's `gateway.yaml`. Once the gateway
//! answers, two curl commands are printed: one accepted, one refused.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use crate::config::{Config, ConfigError, KeySource, EMBEDDED_DEFAULT};
use crate::lifecycle::{ConfigSource, LifecycleError};
use crate::mint::{DevKey, MintError, MintOptions};
use crate::server::StartError;
use crate::telemetry::TelemetryError;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("embedded config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Log(#[from] TelemetryError),
    #[error(transparent)]
    Key(#[from] MintError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Run(#[from] LifecycleError),
    #[error("the demo serves its keys over HTTP: set DESCOPE_JWKS_URL to an http:// URL")]
    KeysNotHttp,
    #[error("the demo upstream must be http://")]
    UpstreamNotHttp,
}

/// Runs the demo until Ctrl-C: dev key at `key_path` (created if absent), its JWKS and an echo
/// upstream as pingora services beside the gateway, on the embedded config's addresses.
pub fn run(key_path: &Path) -> Result<(), DemoError> {
    let cfg = Config::parse(EMBEDDED_DEFAULT, &|k| std::env::var(k).ok())?;
    let log = crate::telemetry::init(&cfg.log)?;
    let key = DevKey::load_or_create(key_path)?;
    let jwks_addr = match cfg.descope.key_source() {
        KeySource::Url(u) => url_authority(&u).ok_or(DemoError::KeysNotHttp)?,
        KeySource::File(_) => return Err(DemoError::KeysNotHttp),
    };
    let upstream = cfg.routes.first().map(|r| r.upstream.to_string());
    let echo_addr = upstream
        .as_deref()
        .and_then(url_authority)
        .ok_or(DemoError::UpstreamNotHttp)?;
    // The embedded config has a cleartext listener; the demo's announcement needs one.
    let listen = cfg
        .listen
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    let session = |ttl_secs| {
        MintOptions {
            project_id: cfg.descope.project_id.clone(),
            issuer: None,
            sub: "U2demoUser".into(),
            ttl_secs,
            claims: vec![],
            external_token: Some("legacy-token-for-{sub}".into()),
            refresh: false,
        }
        .mint(&key, 1)
        .map(|mut v| v.remove(0))
    };
    let (good, bad) = (session(3600)?, session(-600)?);

    let mut built = crate::server::build(cfg, Some(log))?;
    built.server.add_service(http_app(
        "demo jwks",
        &jwks_addr,
        StaticJson(key.jwks.clone().into_bytes()),
    ));
    built
        .server
        .add_service(http_app("demo echo upstream", &echo_addr, Echo));
    tracing::info!(jwks = %jwks_addr, upstream = %echo_addr, "demo: dev key {} (kid {})", key_path.display(), key.kid);
    announce_when_ready(listen, good, bad);
    built.run(ConfigSource::Embedded)?;
    Ok(())
}

/// Serves fixed JSON on every path (the JWKS).
pub struct StaticJson(pub Vec<u8>);

#[async_trait]
impl ServeHttp for StaticJson {
    async fn response(&self, _s: &mut ServerSession) -> Response<Vec<u8>> {
        json_response(200, self.0.clone())
    }
}

/// Answers with the method, path and headers it received, as JSON.
pub struct Echo;

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let req = s.req_header();
        let mut headers = BTreeMap::new();
        for (k, v) in req.headers.iter() {
            headers.insert(
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            );
        }
        let body = serde_json::json!({
            "echo": "received by the demo upstream",
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "headers": headers,
        });
        json_response(200, serde_json::to_vec_pretty(&body).unwrap_or_default())
    }
}

fn json_response(status: u16, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

/// A pingora listening service for a [`ServeHttp`] app on `addr`.
pub fn http_app<A: ServeHttp + Send + Sync + 'static>(
    name: &str,
    addr: &str,
    app: A,
) -> Service<A> {
    let mut svc = Service::new(name.to_string(), app);
    svc.add_tcp(addr);
    svc
}

/// `host:port` of an `http://host:port/...` URL.
pub fn url_authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let auth = rest.split('/').next()?;
    Some(if auth.contains(':') {
        auth.to_string()
    } else {
        format!("{auth}:80")
    })
}

/// Sends one GET with a bearer token to `addr` and returns the status code.
pub(crate) fn probe(addr: SocketAddr, token: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: demo\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf[..12]).ok()?;
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

/// Waits (in a thread) until the gateway accepts `good`, then prints the two curl commands.
pub fn announce_when_ready(listen: SocketAddr, good: String, bad: String) {
    std::thread::spawn(move || {
        let target = if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        } else {
            listen
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if probe(target, &good) == Some(200) {
                println!("\nextoken demo is up on http://{target}\n");
                println!("# accepted: the upstream echoes the Authorization it received (the external token)");
                println!("curl -s http://{target}/hello -H 'Authorization: Bearer {good}'\n");
                println!(
                    "# refused: an expired session gets 401 with an RFC 6750 WWW-Authenticate"
                );
                println!("curl -si http://{target}/hello -H 'Authorization: Bearer {bad}'\n");
                println!("Ctrl-C to stop.");
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("extoken demo: the gateway did not accept the demo token within 20 s; see the log above");
    });
}
