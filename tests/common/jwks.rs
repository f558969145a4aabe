//! The Descope side: a JWKS endpoint on loopback ([`JwksServer`]) that serves a key set, counts
//! every request, and can be switched to fail in the ways a real endpoint fails ([`JwksMode`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::keys::{jwks, TestKey};
use super::net::{bind, response, Handler, HttpServer};

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

    /// Serves on a given port (one that was reserved with
    /// [`free_port`](super::net::free_port) and refused until now).
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
