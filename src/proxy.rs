//! Step 5: pingora's `ProxyHttp` phases, kept thin. Each phase calls one plain function:
//! route lookup and [`Gateway::authorize`] in `request_filter`, the peer in `upstream_peer`,
//! [`rewrite::apply`] in `upstream_request_filter`. Nothing here parses config or keys.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::answer::Answer;
use crate::config::AuthMode;
use crate::exchange::RequestInfo;
use crate::gateway::Gateway;
use crate::rewrite::{self, Rewrite};
use crate::route::Route;
use crate::telemetry::{self, RequestLog};

/// Bytes of a request head as it would go upstream: request line plus `name: value\r\n` lines.
pub fn request_head_bytes(req: &RequestHeader) -> usize {
    let target = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

pub struct Proxy {
    pub state: Arc<ArcSwap<Gateway>>,
}

/// Per-request state carried between phases.
#[derive(Default)]
pub struct Ctx {
    gateway: Option<Arc<Gateway>>,
    route: Option<Arc<Route>>,
    rewrite: Option<Rewrite>,
    /// Request id, timings and outcome for the access line and metrics.
    log: RequestLog,
}

/// Writes an [`Answer`] to the client (and notes its outcome for the access line).
pub async fn send_answer(session: &mut Session, a: &Answer, log: &mut RequestLog) -> Result<()> {
    log.answered(a.outcome, a.reason);
    crate::lifecycle::close_if_draining(session);
    let mut h = ResponseHeader::build(a.status, Some(7))?;
    log.stamp_response(&mut h)?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", a.body.len().to_string())?;
    h.insert_header("cache-control", "no-store")?;
    if let Some(w) = &a.www_authenticate {
        h.insert_header("www-authenticate", w.as_str())?;
    }
    if let Some(r) = a.retry_after {
        h.insert_header("retry-after", r.to_string())?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(a.body.clone()), true)
        .await?;
    Ok(())
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri.host().or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let gw = self.state.load_full();
        let req = session.req_header();
        // pingora itself reads heads up to 1 MB, which backends commonly refuse or choke on.
        if request_head_bytes(req) > gw.config.limits.max_header_bytes {
            send_answer(session, &Answer::headers_too_large(), &mut ctx.log).await?;
            return Ok(true);
        }
        let Some(route) = gw.routes.find(request_host(req), req.uri.path()).cloned() else {
            send_answer(session, &Answer::no_route(), &mut ctx.log).await?;
            return Ok(true);
        };
        ctx.log.route(&route.name);
        if route.auth == AuthMode::Required {
            let info = RequestInfo {
                route: &route.name,
                method: req.method.as_str(),
                path: req.uri.path(),
            };
            match gw.authorize(&route, &req.headers, info).await {
                Ok(rw) => ctx.rewrite = Some(rw),
                Err(answer) => {
                    send_answer(session, &answer, &mut ctx.log).await?;
                    return Ok(true);
                }
            }
        }
        ctx.route = Some(route);
        ctx.gateway = Some(gw);
        Ok(false)
    }

    /// The request id: the client's `X-Request-Id` if sane, else a new one.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.log.begin(session.req_header());
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.log.upstream_started();
        match &ctx.route {
            Some(r) => Ok(r.peer()),
            None => Error::e_explain(ErrorType::InternalError, "no route chosen"),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.log.stamp_request(upstream_request)?;
        // `auth: none` routes are forwarded untouched (but for the Host choice).
        if let Some(route) = &ctx.route {
            if let Some(rw) = &ctx.rewrite {
                rewrite::apply(upstream_request, rw, &route.strip_cookies);
            }
            if let Some(host) = &route.host_override {
                upstream_request.insert_header(http::header::HOST, host.clone())?;
            }
        }
        Ok(())
    }

    /// A 401 from the upstream to a minted token means the backend no longer accepts it (rotated
    /// secret, revoked user): forget it so the next request mints a fresh one.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.log.upstream_answered(upstream_response.status.as_u16());
        if upstream_response.status == http::StatusCode::UNAUTHORIZED {
            if let (Some(gw), Some(key)) = (
                &ctx.gateway,
                ctx.rewrite.as_ref().and_then(|r| r.evict.as_ref()),
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
        crate::lifecycle::close_if_draining(session);
        ctx.log.stamp_response(upstream_response)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> pingora::proxy::FailToProxy {
        telemetry::fail_to_proxy(session, e, &mut ctx.log).await
    }

    /// One access line per request, and the request metrics.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        telemetry::finish(session, e, &ctx.log);
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
        telemetry::retry_warning(error, &ctx.log.request_id);
        true
    }

    /// pingora's default summary includes the full URI; ours never logs a query string.
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }
}
