//! Step 5: pingora's `ProxyHttp` phases, kept thin. Each phase calls one plain function: who
//! sent the request ([`rewrite::Peer::new`], once: the request id and the forwarding headers
//! follow the same trust decision) in `early_request_filter`, the canonical target
//! ([`target::decide`]), route lookup and [`Gateway::authorize`] in `request_filter`, the upstream
//! peer in `upstream_peer`, [`rewrite::apply_to_request`] in `upstream_request_filter`. Every
//! answer extoken writes itself goes through [`reply::send_answer`].
//! Nothing here parses config or keys.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use http::header::AUTHORIZATION;
use http::HeaderValue;

use crate::answer::{self, Answer};
use crate::config::{AuthMode, UnderscoreHeaders};
use crate::drain::{Drain, InFlight};
use crate::exchange::RequestInfo;
use crate::extract;
use crate::gateway::Gateway;
use crate::listener;
use crate::rewrite::{self, Rewrite};
use crate::route::Route;
use crate::target::BadTarget;
use crate::telemetry::trace::RequestTrace;
use crate::telemetry::{self, AccessLog, RequestLog};
use crate::websocket;

mod reply;
mod retry;
mod screen;

use reply::{failure_status, send_answer};
pub use screen::request_head_bytes;
pub(crate) use screen::screen;
use screen::{bad_target, check_declared_body, forwarded_host};

pub(crate) struct Proxy {
    state: Arc<ArcSwap<Gateway>>,
    drain: Drain,
    /// Where access lines go (`None`: no subscriber installed, no lines).
    access: Option<AccessLog>,
    /// The proxy listener's HTTP/2 connections (their state, for their requests).
    conns: Arc<listener::Conns>,
}

impl Proxy {
    pub(crate) fn new(
        state: Arc<ArcSwap<Gateway>>,
        drain: Drain,
        access: Option<AccessLog>,
        conns: Arc<listener::Conns>,
    ) -> Proxy {
        Proxy {
            state,
            drain,
            access,
            conns,
        }
    }
}

/// Per-request state carried between phases.
#[derive(Default)]
pub(crate) struct Ctx {
    /// Counts the request as in flight (a graceful shutdown waits for it) until the ctx drops.
    _in_flight: Option<InFlight>,
    gateway: Option<Arc<Gateway>>,
    route: Option<Arc<Route>>,
    rewrite: Option<Rewrite>,
    /// The `Host` to forward: canonical, or the upstream's (`preserve_host: false`).
    host: Option<HeaderValue>,
    /// The client's `Authorization` is a Bearer the backend must not see.
    drop_authorization: bool,
    /// Upstream connection attempts that failed so far.
    failed_attempts: u32,
    /// The request is a gRPC call: extoken's own answers take the gRPC shape.
    grpc: bool,
    /// Request body bytes read so far, against the route's `max_body_bytes`.
    body_bytes: u64,
    /// Who sent the request (and whether it is a trusted proxy), decided once when the head is
    /// read: the request id and the forwarding headers follow the same decision.
    peer: Option<rewrite::Peer>,
    /// Request id, timings and outcome for the access line and metrics.
    log: RequestLog,
    /// An HTTP/2 request counted on its connection (dropped with the context).
    h2: Option<listener::InFlight>,
    /// Its trace (with `tracing:` only): the SERVER span, the upstream attempt's CLIENT span.
    trace: Option<RequestTrace>,
}

impl Proxy {
    /// Everything `request_filter` decides, as one plain function: `Err` is the answer to send.
    /// The target is made canonical here and replaces the received one, so routing, the
    /// connector, the access line and the backend all see the same request.
    async fn admit(
        &self,
        gw: &Gateway,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<(), Answer> {
        let mut decided = screen(session.req_header(), &gw.config.limits)?;
        let host_name = decided.host.as_ref().map(|h| h.name());
        let route = gw
            .routes
            .find(host_name, decided.target.routing_path())
            .cloned()
            .ok_or_else(Answer::no_route)?;
        ctx.log.route(&route.metrics);
        if let Some(t) = &ctx.trace {
            let method = session.req_header().method.as_str();
            t.routed(method, &route.name, route.prefix());
        }
        check_declared_body(session.req_header(), &route)?;
        ctx.host = forwarded_host(&route, decided.host.take());
        if session.req_header().raw_path() != decided.target.as_bytes() {
            session
                .req_header_mut()
                .set_raw_path(decided.target.as_bytes())
                .map_err(|_| bad_target(BadTarget::Form))?;
        }
        let req = session.req_header();
        let authorization = req.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if route.auth == AuthMode::Required {
            let info = RequestInfo {
                // `authorize` puts in the session it extracts.
                session_token: "",
                route: &route.name,
                method: req.method.as_str(),
                path: decided.target.path(),
                query: decided.target.query(),
            };
            let mut memo = listener::take_memo(session, ctx.h2.as_ref());
            let authorized = gw.authorize(&route, &req.headers, info, &mut memo).await;
            listener::put_memo(session, ctx.h2.as_ref(), memo);
            let authorized = authorized?;
            ctx.log.session_refreshed = !authorized.set_cookie.is_empty();
            ctx.rewrite = Some(authorized);
            ctx.drop_authorization = authorization.is_some_and(extract::has_bearer_scheme);
        } else {
            ctx.drop_authorization = authorization
                .and_then(extract::bearer)
                .is_some_and(|t| gw.is_descope_token(t));
        }
        ctx.route = Some(route);
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: Some(self.drain.enter()),
            ..Ctx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let gw = self.state.load_full();
        ctx.grpc = answer::is_grpc(
            session
                .req_header()
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
        );
        // A sampled request's steps run in its trace's context (their spans are its children).
        let admitted = match ctx.trace.as_ref().and_then(RequestTrace::context).cloned() {
            None => self.admit(&gw, session, ctx).await,
            Some(cx) => {
                use opentelemetry::context::FutureExt as _;
                self.admit(&gw, session, ctx).with_context(cx).await
            }
        };
        if let Err(answer) = admitted {
            ctx.log.answered(answer.outcome, answer.reason);
            send_answer(session, &answer, &ctx.log, ctx.grpc, self.drain.draining()).await?;
            return Ok(true);
        }
        ctx.gateway = Some(gw);
        Ok(false)
    }

    /// The peer, and the request id: a trusted proxy's `X-Request-Id` if sane, else a new one
    /// (a client's own would let it forge or collide with other requests' log lines). The head
    /// is read: its deadline ends, the body and keep-alive timeouts of the request are set.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let gw = self.state.load();
        let mut peer = rewrite::Peer::new(
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.port()),
            &gw.config.trusted_proxies,
        );
        // The client's connection to us was TLS (the digest of its handshake).
        peer.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.log.begin(session.req_header(), peer.trusted);
        if let Some(t) = &gw.tracing {
            ctx.trace = Some(t.request(session.req_header(), peer.addr, peer.tls));
        }
        ctx.peer = Some(peer);
        ctx.h2 = listener::head_complete(session, &gw.config.limits, Some(&self.conns));
        ctx.log.client_cert = listener::client_cert(session, ctx.h2.as_ref());
        Ok(())
    }

    /// Counts the body against the route's `max_body_bytes`: past it the request fails with
    /// `413` (if no response began) and the upstream connection is dropped mid-body, so the
    /// backend never receives the body whole.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Some(up)) = (body.as_ref(), ctx.log.upgraded.as_mut()) {
            // After the `101` these are the socket's bytes, not a body: never bounded by size.
            up.0 += b.len() as u64;
            websocket::carried("from_client", b.len());
            return Ok(());
        }
        let (Some(len), Some(limit)) = (
            body.as_ref().map(bytes::Bytes::len),
            ctx.route.as_ref().and_then(|r| r.max_body_bytes),
        ) else {
            return Ok(());
        };
        ctx.body_bytes += len as u64;
        if ctx.body_bytes > limit {
            ctx.log.answered("bad_request", "body_too_large");
            *body = None;
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "request body over max_body_bytes",
            );
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.log.upstream_started();
        match &ctx.route {
            Some(r) => {
                if let Some(t) = &mut ctx.trace {
                    t.upstream_started(&session.req_header().method, &r.upstream);
                }
                let mut peer = r.peer();
                websocket::idle_bound(session, &mut peer, &r.websocket);
                Ok(peer)
            }
            None => Error::e_explain(ErrorType::InternalError, "no route chosen"),
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.failed_attempts += 1;
        if let Some(t) = &mut ctx.trace {
            t.upstream_ended(None, Some(e.etype().as_str()));
        }
        let budget = ctx.route.as_ref().map_or(0, |r| r.retries);
        e.set_retry(retry::after_connect_failure(
            session.req_header(),
            ctx.failed_attempts,
            budget,
        ));
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        ctx.failed_attempts += 1;
        if let Some(t) = &mut ctx.trace {
            t.upstream_ended(None, Some(e.etype().as_str()));
        }
        let budget = ctx.route.as_ref().map_or(0, |r| r.retries);
        let again = retry::after_sending(
            session.req_header(),
            &e,
            client_reused,
            session.response_written().is_some(),
            ctx.failed_attempts,
            budget,
        );
        e.set_retry(again);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(gw), Some(route), Some(host), Some(peer)) =
            (&ctx.gateway, &ctx.route, &ctx.host, ctx.peer)
        else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let plan = rewrite::Plan {
            host,
            token: ctx.rewrite.as_ref(),
            drop_authorization: ctx.drop_authorization,
            strip_cookies: &route.strip_cookies,
            strip_headers: gw.routes.identity_names(),
            drop_underscore_headers: gw.config.limits.underscore_headers == UnderscoreHeaders::Drop,
            peer,
            request_id: ctx.log.request_id_value.as_ref(),
            traceparent: ctx.trace.as_ref().map(RequestTrace::upstream_traceparent),
        };
        rewrite::apply_to_request(upstream_request, &plan);
        Ok(())
    }

    /// A 401 from the upstream to a minted token means the backend no longer accepts it (rotated
    /// secret, revoked user): forget it so the next request mints a fresh one. Only that token
    /// (not one minted since), and a key at most once per `cache.evict_min_interval`: a client
    /// that can provoke 401s must not get a mint for each.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        listener::response_arrived(session);
        ctx.log.upstream_answered(upstream_response.status.as_u16());
        if let Some(t) = &mut ctx.trace {
            t.upstream_ended(Some(upstream_response.status.as_u16()), None);
        }
        if upstream_response.status == http::StatusCode::UNAUTHORIZED {
            if let (Some(gw), Some(key)) = (
                &ctx.gateway,
                ctx.rewrite.as_ref().and_then(|r| r.cache_key.as_ref()),
            ) {
                gw.connectors.evict(key).await;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.drain.close_if_draining(session);
        rewrite::stamp_request_id(upstream_response, ctx.log.request_id_value.as_ref());
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(route), Some(gw)) = (&ctx.route, &ctx.gateway) {
                let exp = ctx.rewrite.as_ref().map(|r| r.session_exp);
                websocket::opened(session, &route.websocket, exp, gw.config.descope.leeway.0);
                ctx.log.upgraded = Some((0, 0));
            }
        }
        if let Some(rw) = ctx.rewrite.as_ref().filter(|rw| !rw.set_cookie.is_empty()) {
            rewrite::refreshed_response(upstream_response, &rw.set_cookie);
        }
        Ok(())
    }

    /// Bytes an upgraded connection carries to the client.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(b), Some(up)) = (body.as_ref(), ctx.log.upgraded.as_mut()) {
            up.1 += b.len() as u64;
            websocket::carried("to_client", b.len());
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // An upgrade request's answer was late: the client connection's read ended the wait.
        let late = listener::response_was_late(session);
        let status = if late { 504 } else { failure_status(e) };
        if let Some(t) = &mut ctx.trace {
            t.upstream_ended(None, Some(e.etype().as_str()));
        }
        let outcome = *ctx.log.outcome.get_or_insert(match (status, e.esource()) {
            (504, _) if late => "upstream_timeout",
            (_, ErrorSource::Downstream) => "client_error",
            (504, _) => "upstream_timeout",
            _ => "upstream_error",
        });
        if status > 0 && session.response_written().is_none() {
            let route = ctx.route.as_ref().map(|r| r.name.as_str());
            let answer = Answer::proxy_failure(status, outcome, route);
            if let Err(we) = send_answer(session, &answer, &ctx.log, ctx.grpc, true).await {
                tracing::debug!(target: "extoken::proxy", request_id = %ctx.log.request_id(), error = we.etype().as_str(), "cannot send the error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// One access line per request, and the request metrics.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.log.upgraded.is_some() {
            websocket::closed();
        }
        listener::request_done(session);
        telemetry::log_request(session, e, &ctx.log, self.access.as_ref(), ctx.trace.take());
    }

    /// pingora's error lines print error contexts we do not vouch for; the access line carries the
    /// error kind instead.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Ctx,
        error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        telemetry::retry_warning(error, ctx.log.request_id());
        true
    }

    /// pingora's default summary includes the full URI; ours never logs a query string.
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }
}
