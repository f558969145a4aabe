//! The admin listener (`admin_listen`, default `127.0.0.1:9090`), apart from the proxy port:
//!
//! * `GET /healthz` — 200 while the process runs (liveness).
//! * `GET /readyz` — 200 when the config is loaded, the Descope keys were loaded at least once and
//!   not longer ago than `keys_max_age`, and the process is not shutting down; else 503 with a
//!   one-line reason.
//! * `GET /metrics` — Prometheus text format.
//! * `GET /.well-known/jwks.json` — the public keys of the `jwt` connectors (404 when none).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use crate::drain::Drain;
use crate::gateway::Gateway;
use crate::metrics::metrics;

pub struct Admin {
    state: Arc<ArcSwap<Gateway>>,
    drain: Drain,
}

/// The admin service on `addr` (one thread: it serves probes and scrapes).
pub fn service(addr: &str, state: Arc<ArcSwap<Gateway>>, drain: Drain) -> Service<Admin> {
    let mut svc = Service::new("admin".to_string(), Admin { state, drain });
    svc.threads = Some(1);
    svc.add_tcp(addr);
    svc
}

/// `Ok(())` when ready, else why not (one line).
pub fn readiness(gw: &Gateway, drain: &Drain) -> Result<(), String> {
    if drain.draining() {
        return Err("shutting down".into());
    }
    let keys = &gw.verifier.keys;
    let max = gw.config.keys_max_age;
    match keys.age() {
        None => Err("Descope keys not loaded yet".into()),
        Some(age) if age > max.0 => Err(format!(
            "Descope keys are {}s old (keys_max_age {max}); the last loads failed",
            age.as_secs()
        )),
        Some(_) => Ok(()),
    }
}

fn text(status: u16, body: impl Into<Vec<u8>>, content_type: &str) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

impl Admin {
    /// [`readiness`], and the decision listeners accept connections.
    async fn ready(&self) -> Result<(), String> {
        let gw = self.state.load_full();
        readiness(&gw, &self.drain)?;
        crate::decision::listeners_ready(&gw).await
    }

    fn metrics_text(&self) -> Vec<u8> {
        let gw = self.state.load();
        let keys = &gw.verifier.keys;
        let m = metrics();
        m.jwks_keys
            .set(i64::try_from(keys.current().len()).unwrap_or(i64::MAX));
        m.jwks_last_success_timestamp_seconds
            .set(i64::try_from(keys.stats.last_success.load(Ordering::Relaxed)).unwrap_or(0));
        m.verified_sessions
            .set(i64::try_from(gw.verifier.cached_sessions()).unwrap_or(i64::MAX));
        m.render()
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let req = s.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            let mut r = text(405, "method not allowed\n", "text/plain; charset=utf-8");
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        match req.uri.path() {
            "/healthz" => text(200, "ok\n", "text/plain; charset=utf-8"),
            "/readyz" => match self.ready().await {
                Ok(()) => text(200, "ready\n", "text/plain; charset=utf-8"),
                Err(why) => text(
                    503,
                    format!("not ready: {why}\n"),
                    "text/plain; charset=utf-8",
                ),
            },
            "/metrics" => text(200, self.metrics_text(), "text/plain; version=0.0.4"),
            "/.well-known/jwks.json" => match self.state.load().connectors.jwks() {
                Some(j) => text(200, j.as_bytes().to_vec(), "application/json"),
                None => text(404, "no jwt connector configured\n", "text/plain"),
            },
            _ => text(404, "not found\n", "text/plain; charset=utf-8"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::config::Config;
    use crate::verify::KeyStore;

    fn gateway() -> Gateway {
        crate::gateway::install_crypto_provider();
        let c = Config::parse(
            "descope: {project_id: P2x, jwks_url: 'http://127.0.0.1:1/k', jwks_refresh: 1m}\n\
             keys_max_age: 10m\nconnectors: {ext: {type: claim}}\n\
             routes: [{upstream: 'http://127.0.0.1:1', connector: ext}]\n",
            &|_| None,
        )
        .unwrap();
        let client = Gateway::http_client().unwrap();
        let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
        Gateway::build(c, keys).unwrap()
    }

    #[test]
    fn readiness_follows_key_age() {
        let gw = gateway();
        let err = readiness(&gw, &Drain::default()).unwrap_err();
        assert!(err.contains("not loaded"), "{err}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let last = &gw.verifier.keys.stats.last_success;
        last.store(now - 60, Ordering::Relaxed);
        assert_eq!(readiness(&gw, &Drain::default()), Ok(()));
        last.store(now - 3600, Ordering::Relaxed);
        let err = readiness(&gw, &Drain::default()).unwrap_err();
        assert!(
            err.contains("3600s old") && err.contains("keys_max_age 10m"),
            "{err}"
        );
        last.store(now, Ordering::Relaxed);
        assert_eq!(
            readiness(&gw, &Drain::default()),
            Ok(()),
            "ready again when keys return"
        );
    }
}
