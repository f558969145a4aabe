//! The upstream side: a [`Backend`] that records every request it receives ([`Recorded`]:
//! method, path and query, every header line, body) so tests can assert what crossed the gateway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;

use super::net::{response, Handler, HttpServer};

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
        let server = HttpServer::serve(handler).await;
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

    /// The `Authorization` of every request received so far, in order (panics if one had none).
    pub fn authorizations(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|q| q.header("authorization").unwrap().to_string())
            .collect()
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
