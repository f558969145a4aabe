//! Decision mode: extoken as the authorizer of an ingress a team already runs (nginx
//! `auth_request`, Traefik ForwardAuth, Envoy `ext_authz` over HTTP and gRPC).
//!
//! The ingress asks about a request it holds; extoken answers with the decision the proxy would
//! have made on it, by the same code: the original request is rebuilt (`original.rs` reads it
//! from what each ingress sends), screened and made canonical by [`crate::proxy::screen`], routed
//! by the same table, and authorized by [`Gateway::authorize`] (extraction, verification,
//! `require:`, connectors, caches). An allow carries what the ingress must set and remove on the
//! request it forwards ([`crate::rewrite::decision::forward`]); a deny is the proxy's [`Answer`].
//!
//! Only peers in `decision.trusted_proxies` are believed about the original request: anyone else
//! could name a public path and get an allow for a protected one.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderValue, Method};
use prometheus::{HistogramVec, IntCounterVec};

use crate::answer::Answer;
use crate::config::{AuthMode, UnderscoreHeaders};
use crate::exchange::RequestInfo;
use crate::extract;
use crate::gateway::Gateway;
use crate::rewrite::{self, decision::Forward};
use crate::route::Route;
use crate::verify::SessionMemo;

pub(crate) mod grpc;
mod grpc_conn;
mod grpc_wire;
pub(crate) mod http_app;
pub(crate) mod original;

/// Which ingress asked, as it shows on metrics and access lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `X-Original-URI` / `X-Original-Method` (nginx `auth_request`).
    Nginx,
    /// `X-Original-URL` / `X-Original-Method` (ingress-nginx's `auth-url`).
    IngressNginx,
    /// `X-Forwarded-Uri` / `X-Forwarded-Method` (Traefik ForwardAuth).
    Traefik,
    /// Envoy `ext_authz` HTTP: the request line under `envoy_path_prefix`.
    EnvoyHttp,
    /// Envoy `ext_authz` gRPC: `CheckRequest.attributes.request.http`.
    EnvoyGrpc,
}

impl Protocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Nginx => "nginx",
            Protocol::IngressNginx => "ingress_nginx",
            Protocol::Traefik => "traefik",
            Protocol::EnvoyHttp => "envoy_http",
            Protocol::EnvoyGrpc => "envoy_grpc",
        }
    }
}

/// The request an ingress asks about.
#[derive(Debug)]
pub(crate) struct Original {
    pub(crate) method: Method,
    /// The request target as the ingress received it (`path[?query]`), not yet canonical.
    pub(crate) target: Vec<u8>,
    /// The original `Host` (or `:authority`).
    pub(crate) host: HeaderValue,
    /// The client's headers as the ingress passed them (its own `Host` is replaced by `host`).
    pub(crate) headers: HeaderMap,
}

/// What [`decide`] found out, for the answer, the access line and the metrics.
pub(crate) struct Decision {
    pub(crate) verdict: Result<Forward, Answer>,
    pub(crate) route: Option<Arc<Route>>,
    /// The canonical path (never the query), once it was made.
    pub(crate) path: Option<String>,
}

impl Decision {
    /// Refused before a route was looked for (untrusted peer, unreadable original request).
    pub(crate) fn refused(answer: Answer) -> Decision {
        Decision {
            verdict: Err(answer),
            route: None,
            path: None,
        }
    }
}

/// `Ok` when `peer` may ask for decisions (it is in `decision.trusted_proxies`).
pub(crate) fn trusted(gw: &Gateway, peer: Option<IpAddr>) -> Result<(), Answer> {
    let blocks = gw
        .config
        .decision
        .as_ref()
        .map_or(&[][..], |d| &d.trusted_proxies[..]);
    match peer {
        Some(ip) if blocks.iter().any(|c| c.contains(ip)) => Ok(()),
        _ => Err(Answer::untrusted_peer()),
    }
}

/// The proxy's decision on `original`: see the module comment. `memo` is the asking
/// connection's last verified session.
pub(crate) async fn decide(gw: &Gateway, original: Original, memo: &mut SessionMemo) -> Decision {
    // The verdict is always `decide_into`'s, set just below; the placeholder only lets it write
    // the route and path as it finds them, and costs nothing (an `Answer` would build its JSON
    // body for every decision).
    let mut d = Decision {
        verdict: Ok(Forward::default()),
        route: None,
        path: None,
    };
    d.verdict = decide_into(gw, original, memo, &mut d).await;
    d
}

async fn decide_into(
    gw: &Gateway,
    original: Original,
    memo: &mut SessionMemo,
    d: &mut Decision,
) -> Result<Forward, Answer> {
    let req = original.into_request()?;
    let decided = crate::proxy::screen(&req, &gw.config.limits)?;
    d.path = Some(decided.target.path().to_owned());
    let host_name = decided.host.as_ref().map(|h| h.name());
    let route = gw
        .routes
        .find(host_name, decided.target.routing_path())
        .cloned()
        .ok_or_else(Answer::no_route)?;
    d.route = Some(route.clone());
    let authorization = req.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let (token, drop_authorization) = if route.auth == AuthMode::Required {
        let info = RequestInfo {
            session_token: "",
            route: &route.name,
            method: req.method.as_str(),
            path: decided.target.path(),
            query: decided.target.query(),
        };
        let rw = gw.authorize(&route, &req.headers, info, memo).await?;
        (
            Some(rw),
            authorization.is_some_and(extract::has_bearer_scheme),
        )
    } else {
        let descope = authorization
            .and_then(extract::bearer)
            .is_some_and(|t| gw.is_descope_token(t));
        (None, descope)
    };
    // Host and peer are the ingress's business; `forward` reads neither.
    let host = HeaderValue::from_static("");
    let plan = rewrite::Plan {
        host: &host,
        token: token.as_ref(),
        drop_authorization,
        strip_cookies: &route.strip_cookies,
        strip_headers: gw.routes.identity_names(),
        drop_underscore_headers: gw.config.limits.underscore_headers == UnderscoreHeaders::Drop,
        peer: rewrite::Peer::new(None, None, &[]),
        request_id: None,
        traceparent: None,
    };
    Ok(rewrite::decision::forward(&req.headers, &plan))
}

impl Original {
    /// The original request as a request head, for the proxy's own screening and target
    /// canonicalization. The headers move in whole (`RequestHeader::append_header` would copy
    /// and re-parse every name); the target is then set from its raw bytes, which
    /// `http::request::Parts` alone would not keep (`raw_path`), as `build_no_case` sets it.
    fn into_request(self) -> Result<pingora::http::RequestHeader, Answer> {
        let mut headers = self.headers;
        // The ingress's own `Host` (all of its lines) gives way to the original's.
        headers.insert(HOST, self.host);
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method;
        parts.headers = headers;
        let mut req = pingora::http::RequestHeader::from(parts);
        req.set_raw_path(&self.target).map_err(|_| {
            Answer::bad_request(
                "the original request target must be a path or an absolute http(s) URL",
                "bad_target",
            )
        })?;
        Ok(req)
    }
}

/// Metrics of decision mode, registered in the process registry on first use.
struct DecisionMetrics {
    decisions: IntCounterVec,
    duration: HistogramVec,
}

fn decision_metrics() -> &'static DecisionMetrics {
    static M: OnceLock<DecisionMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = &crate::metrics::metrics().registry;
        let m = DecisionMetrics {
            decisions: IntCounterVec::new(
                prometheus::Opts::new(
                    "extoken_decisions_total",
                    "Decisions answered to an ingress, by protocol, route and result (allowed, or the outcome of the refusal).",
                ),
                &["protocol", "route", "result"],
            )
            .expect("static metric definition"),
            duration: HistogramVec::new(
                prometheus::HistogramOpts::new(
                    "extoken_decision_duration_seconds",
                    "Time to answer a decision, by protocol.",
                ),
                &["protocol"],
            )
            .expect("static metric definition"),
        };
        for c in [
            Box::new(m.decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.duration.clone()),
        ] {
            // Fresh names in a registry of our own: this only fails on a programming error.
            if let Err(e) = r.register(c) {
                tracing::error!(target: "extoken::decision", "metric not registered: {e}");
            }
        }
        m
    })
}

/// What one decision is reported with.
pub(crate) struct Report<'a> {
    pub(crate) protocol: Protocol,
    pub(crate) request_id: &'a str,
    pub(crate) method: &'a str,
    pub(crate) started: Instant,
}

/// Counts a decision and writes its access line (no header value, cookie, token or query).
pub(crate) fn report(r: &Report<'_>, d: &Decision) {
    let duration = r.started.elapsed();
    let route = d.route.as_ref().map_or("-", |r| r.name.as_str());
    let (status, outcome, reason) = match &d.verdict {
        Ok(_) => (200, "allowed", None),
        Err(a) => (a.status, a.outcome, Some(a.reason)),
    };
    let m = decision_metrics();
    m.decisions
        .with_label_values(&[r.protocol.as_str(), route, outcome])
        .inc();
    m.duration
        .with_label_values(&[r.protocol.as_str()])
        .observe(duration.as_secs_f64());
    if outcome == "unauthorized" || outcome == "forbidden" {
        crate::metrics::metrics()
            .auth_failures_total
            .with_label_values(&[reason.unwrap_or("other")])
            .inc();
    }
    tracing::info!(
        target: "extoken::access",
        request_id = r.request_id,
        protocol = r.protocol.as_str(),
        route,
        method = r.method,
        path = d.path.as_deref().unwrap_or("-"),
        status,
        outcome,
        reason = reason.unwrap_or(""),
        duration_ms = duration_ms(duration),
        "decision"
    );
}

fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// The decision listeners of `decision:` (if any): the HTTP one as a pingora service behind the
/// proxy listener's client limits, the gRPC one on its own thread (bound here).
pub(crate) fn add_services(
    server: &mut pingora::server::Server,
    state: &Arc<arc_swap::ArcSwap<Gateway>>,
    drain: &crate::drain::Drain,
    threads: usize,
) -> Result<(), grpc::GrpcError> {
    let Some(d) = state.load().config.decision.clone() else {
        return Ok(());
    };
    if let Some(addr) = d.listen {
        let app = crate::listener::ClientLimits::new(
            http_app::DecisionHttp::new(state.clone(), drain.clone()),
            state.clone(),
            threads,
            Arc::new(crate::listener::Conns::default()),
        )
        .plain_http1();
        let mut svc = pingora::services::listening::Service::new("decision".to_string(), app);
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    if let Some(addr) = d.grpc_listen {
        grpc::spawn(addr, state.clone(), drain.clone(), threads)?;
    }
    Ok(())
}

/// `Ok` when every configured decision listener accepts connections (for `/readyz`).
pub async fn listeners_ready(gw: &Gateway) -> Result<(), String> {
    let Some(d) = &gw.config.decision else {
        return Ok(());
    };
    for (name, addr) in [
        ("decision.listen", d.listen),
        ("decision.grpc_listen", d.grpc_listen),
    ] {
        let Some(addr) = addr else { continue };
        let probe = loopback(addr);
        let connect = tokio::net::TcpStream::connect(probe);
        match tokio::time::timeout(Duration::from_secs(1), connect).await {
            Ok(Ok(_)) => {}
            _ => return Err(format!("{name} {addr} does not accept connections")),
        }
    }
    Ok(())
}

/// A wildcard listen address is probed on loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::verify::KeyStore;

    fn gateway(http: u16, grpc: u16) -> Gateway {
        crate::gateway::install_crypto_provider();
        let c = Config::parse(
            &format!(
                "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
                 connectors: {{ext: {{type: claim}}}}\n\
                 routes: [{{upstream: 'http://127.0.0.1:1', connector: ext}}]\n\
                 decision: {{listen: '0.0.0.0:{http}', grpc_listen: '127.0.0.1:{grpc}', \
                 trusted_proxies: [10.0.0.0/8]}}\n"
            ),
            &|_| None,
        )
        .unwrap();
        let client = Gateway::http_client().unwrap();
        let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
        Gateway::build(c, keys).unwrap()
    }

    #[tokio::test]
    async fn readiness_needs_every_decision_listener() {
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (hp, gp) = (
            http.local_addr().unwrap().port(),
            grpc.local_addr().unwrap().port(),
        );
        drop(grpc);
        let gw = gateway(hp, gp);
        let err = listeners_ready(&gw).await.unwrap_err();
        assert!(err.contains("decision.grpc_listen"), "{err}");
        let _grpc = std::net::TcpListener::bind(("127.0.0.1", gp)).unwrap();
        // `0.0.0.0` is probed on loopback.
        assert_eq!(listeners_ready(&gw).await, Ok(()));
        drop(http);
        let err = listeners_ready(&gw).await.unwrap_err();
        assert!(err.contains("decision.listen"), "{err}");
    }

    #[test]
    fn only_trusted_peers_may_ask() {
        let gw = gateway(1, 2);
        assert!(trusted(&gw, Some("10.1.2.3".parse().unwrap())).is_ok());
        assert!(trusted(&gw, Some("::ffff:10.1.2.3".parse().unwrap())).is_ok());
        let a = trusted(&gw, Some("127.0.0.1".parse().unwrap())).unwrap_err();
        assert_eq!((a.status, a.reason), (403, "untrusted_peer"));
        assert!(trusted(&gw, None).is_err(), "no address, no trust");
    }
}
