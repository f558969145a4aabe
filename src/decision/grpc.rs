//! The gRPC decision listener (`decision.grpc_listen`): Envoy's
//! `envoy.service.auth.v3.Authorization/Check`, served by tonic on a runtime of its own beside
//! pingora's services (pingora's listeners speak HTTP/1 and h2 to a proxy, not a gRPC server).
//!
//! The peer must be in `decision.trusted_proxies`, as on the HTTP listener: `attributes.source`
//! is what Envoy says about its client, so the trust is decided on the TCP peer, never on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue as PbHeader, HeaderValueOption,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use http::HeaderValue;

use super::grpc_wire::{client_headers, Check, CheckRequest, CheckServer};
use super::{original, Decision, Protocol, Report};
use crate::answer::Answer;
use crate::drain::Drain;
use crate::gateway::Gateway;
use crate::rewrite::decision::Forward;
use crate::verify::SessionMemo;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("cannot listen on decision.grpc_listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the gRPC decision runtime: {0}")]
    Runtime(std::io::Error),
}

pub(crate) struct DecisionGrpc {
    state: Arc<ArcSwap<Gateway>>,
    drain: Drain,
}

/// Binds `addr` now (so a taken port fails the start, not a later request) and serves `Check` on
/// a thread of its own for the life of the process: a tokio runtime with the proxy's number of
/// worker `threads` (one: the current-thread scheduler), under the proxy listener's client limits
/// (`grpc_conn.rs`).
pub(crate) fn spawn(
    addr: SocketAddr,
    state: Arc<ArcSwap<Gateway>>,
    drain: Drain,
    threads: usize,
) -> Result<(), GrpcError> {
    let bind = |source| GrpcError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let limits = state.load().config.limits.clone();
    let max = super::grpc_conn::max_connections(&limits, threads);
    // One thread: tokio's current-thread scheduler on this listener's own thread. The
    // multi-thread one with a single worker adds a thread hand-off and work-stealing bookkeeping
    // to every check: 2-3 us of the ~18 us a check costs (loadtest/decision.sh, envoy-grpc).
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        .thread_name("extoken-grpc")
        .enable_all()
        .build()
        .map_err(GrpcError::Runtime)?;
    std::thread::Builder::new()
        .name("extoken-grpc".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(target: "extoken::decision", %addr, "gRPC decision listener failed: {e}");
                        return;
                    }
                };
                let incoming = super::grpc_conn::incoming(
                    listener,
                    max,
                    limits.client_header_timeout.0,
                );
                let svc = CheckServer(Arc::new(DecisionGrpc { state, drain }));
                let served = super::grpc_conn::server(&limits)
                    .add_service(svc)
                    .serve_with_incoming(incoming)
                    .await;
                if let Err(e) = served {
                    tracing::error!(target: "extoken::decision", %addr, "gRPC decision listener stopped: {e}");
                }
            });
        })
        .map_err(GrpcError::Runtime)?;
    Ok(())
}

impl Check for DecisionGrpc {
    fn answer(
        self: Arc<Self>,
        request: tonic::Request<CheckRequest>,
    ) -> tonic::codegen::BoxFuture<tonic::Response<CheckResponse>, tonic::Status> {
        Box::pin(async move { self.check(request).await })
    }
}

impl DecisionGrpc {
    /// `Check`: the decision on the request Envoy holds.
    pub(super) async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        // A graceful shutdown waits for the decision, as for a proxied request.
        let _in_flight = self.drain.enter();
        let gw = self.state.load_full();
        let peer = request.remote_addr().map(|a| a.ip());
        let check = request.into_inner();
        let http = check
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        let headers = client_headers(http.headers)?;
        let trust = super::trusted(&gw, peer);
        // Envoy's request id (it passes a client's own only when configured to trust it).
        let offered = headers.get("x-request-id").filter(|_| trust.is_ok());
        let request_id = super::http_app::request_id(offered);
        let decision = match trust
            .and_then(|()| original::from_grpc(&http.method, &http.path, &http.host, headers))
        {
            Ok(o) => super::decide(&gw, o, &mut SessionMemo::default()).await,
            Err(answer) => Decision::refused(answer),
        };
        super::report(
            &Report {
                protocol: Protocol::EnvoyGrpc,
                request_id: request_id.to_str().unwrap_or(""),
                method: &http.method,
                started,
            },
            &decision,
        );
        Ok(tonic::Response::new(match &decision.verdict {
            Ok(f) => ok_response(f),
            Err(a) => denied_response(a, &request_id),
        }))
    }
}

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(PbHeader {
            key: name.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        // Replaces the client's value; never appends to it.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

pub(crate) fn ok_response(f: &Forward) -> CheckResponse {
    let headers = f
        .set
        .iter()
        .filter_map(|(n, v)| Some(header(n.as_str(), v.to_str().ok()?)))
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: 0,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: f.remove.iter().map(|n| n.as_str().to_owned()).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The proxy's answer as Envoy sends it to the client: status, challenge, body.
pub(crate) fn denied_response(a: &Answer, request_id: &HeaderValue) -> CheckResponse {
    let mut headers = vec![header("content-type", "application/json")];
    headers.push(header("cache-control", "no-store"));
    if let Some(w) = &a.www_authenticate {
        headers.push(header("www-authenticate", w));
    }
    if let Some(r) = a.retry_after {
        headers.push(header("retry-after", &r.to_string()));
    }
    if let Ok(id) = request_id.to_str() {
        headers.push(header("x-request-id", id));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: i32::from(a.grpc_status()),
            message: a.grpc_message(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(a.status),
            }),
            headers,
            body: String::from_utf8_lossy(&a.body).into_owned(),
        })),
        ..Default::default()
    }
}
