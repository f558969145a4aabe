//! The runtime built from one validated config: routes, verifier, connectors, in request order.
//!
//! [`Gateway::authorize`] is the whole auth pipeline as a plain async function
//! (extract → verify → exchange → rewrite plan), so it is testable without pingora. The proxy holds
//! the current `Gateway` behind an `ArcSwap`: a reload builds a new one and swaps it in, requests in
//! flight finish on the one they started with.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::answer::Answer;
use crate::authorize::Assertions;
use crate::clock::SharedClock;
use crate::config::{AuthMode, Config, ConfigError};
use crate::exchange::{Connectors, RequestInfo, TokenCache};
use crate::extract;
use crate::refresh::{self, Refreshed, Refresher};
use crate::rewrite::{self, Rewrite};
use crate::route::{Route, RouteTable};
use crate::telemetry::trace::{self, Tracing};
use crate::tls::ServerTls;
use crate::verify::{
    AuthError, ClaimsKept, KeyStore, SessionMemo, VerifiedSession, Verifier, VerifyError,
};

pub struct Gateway {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub verifier: Arc<Verifier>,
    pub connectors: Connectors,
    /// `iat`/`exp` of signed identity assertions.
    clock: SharedClock,
    /// Signed identity assertions, reused for the same identity while fresh.
    assertions: Assertions,
    /// The TLS listener's certificates and client CAs as read for this config (`tls:`).
    pub tls: Option<Arc<ServerTls>>,
    /// Refreshes expired sessions, when a route does (`refresh_session`).
    refresher: Option<Refresher>,
    /// Traces (`tracing:`); `None` costs the proxy one branch per request.
    pub tracing: Option<Arc<Tracing>>,
}

/// The session a request goes on with: its own (`token` is a slice of its headers), or one
/// Descope issued for its refresh cookie just now (`refreshed`).
struct RequestSession<'h> {
    verified: Arc<VerifiedSession>,
    token: Option<&'h str>,
    refreshed: Option<Arc<Refreshed>>,
}

impl Gateway {
    /// Builds the runtime. `keys` is passed in because the key store's refresh task outlives any
    /// one config (see [`Gateway::rebuild`]).
    pub fn build(config: Config, keys: Arc<KeyStore>) -> Result<Gateway, ConfigError> {
        let tracing = Self::tracing(&config, None)?;
        let (gateway, _) = Self::assemble(config, None, tracing, |c, kept| {
            (Self::verifier(c, keys, kept), true)
        })?;
        Ok(gateway)
    }

    /// A new runtime for a reloaded config that keeps what is still valid: the verifier (its keys
    /// and verified sessions) when `descope:`, `limits:`, the session cache bound and the claims
    /// sessions keep are unchanged, else the keys alone when `descope:` is; and the token cache
    /// when `cache:` is unchanged (its keys fingerprint each connector's settings, so a changed
    /// connector never gets a token minted under the old ones).
    /// `Ok((gateway, keys_kept))`; when the keys were not kept, the caller starts a refresh task
    /// for `gateway.verifier.keys`.
    pub(crate) fn rebuild(&self, config: Config) -> Result<(Gateway, bool), ConfigError> {
        let old = &self.config;
        // `descope.refresh` is not about keys: changing it keeps them (the refresher is rebuilt).
        let same_keys = crate::config::DescopeConfig {
            refresh: config.descope.refresh.clone(),
            ..old.descope.clone()
        } == config.descope;
        let same_bounds = old.limits.max_token_bytes == config.limits.max_token_bytes
            && old.cache.verified_sessions == config.cache.verified_sessions;
        let cache = (old.cache == config.cache).then(|| self.connectors.cache().clone());
        let tracing = Self::tracing(&config, self.tracing.as_ref())?;
        Self::assemble(config, cache, tracing, |c, kept| {
            if same_keys && same_bounds && self.verifier.kept() == &kept {
                return (self.verifier.clone(), true);
            }
            let keys = if same_keys {
                self.verifier.keys.clone()
            } else {
                let client = self.verifier.keys.client();
                Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()))
            };
            (Self::verifier(c, keys, kept), same_keys)
        })
    }

    /// The traces of `config.tracing`: the running ones when the block is unchanged (their queue
    /// and export thread go on), else new ones (the old ones send what they hold and stop when
    /// the last request on the old gateway is done).
    fn tracing(
        config: &Config,
        running: Option<&Arc<Tracing>>,
    ) -> Result<Option<Arc<Tracing>>, ConfigError> {
        let Some(t) = &config.tracing else {
            return Ok(None);
        };
        if let Some(r) = running.filter(|r| r.config() == t) {
            return Ok(Some(r.clone()));
        }
        Tracing::build(t)
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| ConfigError::key("tracing", e.to_string()))
    }

    fn verifier(config: &Config, keys: Arc<KeyStore>, kept: ClaimsKept) -> Arc<Verifier> {
        Arc::new(
            Verifier::new(
                &config.descope,
                keys,
                config.limits.max_token_bytes,
                config.cache.verified_sessions,
                crate::clock::system(),
            )
            .keeping(kept),
        )
    }

    /// Builds routes and connectors, then the verifier (`verifier` makes or reuses it, given the
    /// claims sessions must keep: what the connectors and routes read).
    fn assemble(
        config: Config,
        cache: Option<TokenCache>,
        tracing: Option<Arc<Tracing>>,
        verifier: impl FnOnce(&Config, ClaimsKept) -> (Arc<Verifier>, bool),
    ) -> Result<(Gateway, bool), ConfigError> {
        let routes = RouteTable::build(&config)?;
        let tls = config.tls.as_ref().map(ServerTls::build).transpose()?;
        let client = Self::http_client()
            .map_err(|e| ConfigError::Syntax(format!("cannot create the HTTP client: {e}")))?;
        let connectors =
            Connectors::build_with_cache(&config, &client, crate::clock::system(), cache)?;
        let mut kept = ClaimsKept::none();
        // A route may pick its connector by the session's tenant.
        kept.read("dct");
        connectors.claims_read(&mut kept);
        routes.claims_read(&mut kept);
        let (verifier, keys_kept) = verifier(&config, kept);
        let assertions = Assertions::new(config.cache.max_entries);
        let refresher = routes
            .iter()
            .any(|r| r.refresh_session)
            .then(|| Refresher::new(&config.descope, client.clone(), crate::clock::system()));
        let gateway = Gateway {
            config: Arc::new(config),
            routes,
            verifier,
            connectors,
            clock: crate::clock::system(),
            assertions,
            tls: tls.map(Arc::new),
            refresher,
            tracing,
        };
        Ok((gateway, keys_kept))
    }

    /// The HTTP client for JWKS and connectors: one pool for the process.
    /// (Call [`install_crypto_provider`] first.)
    pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .user_agent(concat!("extoken/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
    }

    /// Decides whether a request on an `auth: required` route may go upstream, and with what
    /// headers: extract → verify → the route's rules → exchange → identity headers. `Err` is the
    /// answer to send instead; a refused session never reaches a connector. `memo` is the client
    /// connection's last session (see [`Verifier::verify_remembered`]).
    pub async fn authorize(
        &self,
        route: &Route,
        headers: &HeaderMap,
        info: RequestInfo<'_>,
        memo: &mut SessionMemo,
    ) -> Result<Rewrite, Answer> {
        debug_assert_eq!(route.auth, AuthMode::Required);
        let span = trace::Span::internal("verify");
        let RequestSession {
            verified: session,
            token,
            refreshed,
        } = span
            .run(self.session(route, headers, memo))
            .await
            .inspect_err(|a| span.fail(a.reason))?;
        drop(span);
        let span = trace::Span::internal("authorize");
        route
            .rules
            .check(&session.claims, info.method)
            .and_then(|()| route.rules.check_overrides(headers, info.query))
            .map_err(Answer::denied)
            .inspect_err(|a| span.fail(a.reason))?;
        drop(span);
        let name = route
            .connector_for(session.str_claim("dct"))
            .ok_or_else(|| Answer::unavailable("route has no connector", "misconfigured"))?;
        let info = RequestInfo {
            session_token: refreshed
                .as_ref()
                .map_or(token.unwrap_or(""), |r| r.session_jwt.as_str()),
            ..info
        };
        let span = trace::Span::internal("external_token");
        if span.is_recording() {
            span.set("extoken.connector", name.to_string());
        }
        let obtained = span
            .run(self.connectors.obtain(name, &session, info))
            .await
            .map_err(|e| {
                if let crate::exchange::ExchangeError::Unavailable { connector, reason } = &e {
                    tracing::warn!(target: "extoken::exchange", connector = %connector, "no external token: {reason}");
                }
                let answer = Answer::from_exchange(&e);
                span.fail(answer.reason);
                answer
            })?;
        drop(span);
        let value = rewrite::auth_value(&route.scheme, &obtained.token).ok_or_else(|| {
            Answer::unavailable(
                "external token is not a valid header value",
                "invalid_external_token",
            )
        })?;
        Ok(Rewrite {
            header: route.header.clone(),
            value,
            cache_key: obtained.cache_key,
            identity: self.identity_headers(route, &session)?,
            session_exp: session.exp,
            set_cookie: match (&self.refresher, &refreshed) {
                (Some(r), Some(new)) => r.set_cookies(new),
                _ => Vec::new(),
            },
        })
    }

    /// The request's session: the one it carries if valid; else, on a refreshing route, a new one
    /// for its refresh cookie (see [`refresh::may_refresh`] for when).
    async fn session<'h>(
        &self,
        route: &Route,
        headers: &'h HeaderMap,
        memo: &mut SessionMemo,
    ) -> Result<RequestSession<'h>, Answer> {
        let found = extract::session_token(headers, &self.config.descope.session_cookie);
        let error = match found {
            Some(f) => match self.verifier.verify_remembered(f.token, memo).await {
                Ok(verified) => {
                    return Ok(RequestSession {
                        verified,
                        token: Some(f.token),
                        refreshed: None,
                    })
                }
                Err(e) => e,
            },
            None => VerifyError::Invalid(AuthError::Missing),
        };
        let refresher = match &self.refresher {
            Some(r) if route.refresh_session => r,
            _ => return Err(Answer::from_verify(&error)),
        };
        let dsr = extract::named_cookie(headers, refresher.refresh_cookie())
            .filter(|_| refresh::may_refresh(found, &error, &self.config.descope.project_id))
            .ok_or_else(|| Answer::from_verify(&error))?;
        let new = refresher
            .refresh(dsr, &self.verifier)
            .await
            .map_err(|e| Answer::refresh_failed(&e, &error))?;
        // A cache hit: the flight verified it; this checks it is still unexpired, its key published.
        let verified = self
            .verifier
            .verify(&new.session_jwt)
            .await
            .map_err(|e| Answer::from_verify(&e))?;
        Ok(RequestSession {
            verified,
            token: None,
            refreshed: Some(new),
        })
    }

    /// The route's identity headers for this session, with the signed assertion when configured.
    fn identity_headers(
        &self,
        route: &Route,
        session: &VerifiedSession,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Answer> {
        let Some(identity) = &route.identity else {
            return Ok(Vec::new());
        };
        let mut values = identity.values(&session.claims);
        if let Some(signed) = identity.signed_by() {
            let unsigned =
                || Answer::unavailable("identity assertion not signed", "identity_signing");
            let signer = self
                .connectors
                .identity_signer(&signed.connector)
                .ok_or_else(unsigned)?;
            let jws = self
                .assertions
                .get_or_sign(signed, &values, self.clock.unix(), |claims| signer.sign(claims))
                .map_err(|e| {
                    tracing::warn!(target: "extoken::authorize", connector = %signed.connector, "cannot sign an identity assertion: {e}");
                    unsigned()
                })?;
            values.push((signed.header.clone(), jws));
        }
        Ok(values)
    }

    /// Whether a Bearer token presented on an `auth: none` route is a session of this Descope
    /// project (by its unverified `iss`): it is removed before forwarding all the same.
    pub(crate) fn is_descope_token(&self, token: &str) -> bool {
        let project = &self.config.descope.project_id;
        extract::unverified_issuer_is(token, |iss| crate::verify::issuer_matches(iss, project))
    }
}

/// rustls is linked with two crypto providers (pingora's and ours); name the process default once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod authorize_tests;
