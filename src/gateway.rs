//! The runtime built from one validated config: routes, verifier, connectors, in request order.
//!
//! [`Gateway::authorize`] is the whole auth pipeline as a plain async function
//! (extract → verify → exchange → rewrite plan), so it is testable without pingora. The proxy holds
//! the current `Gateway` behind an `ArcSwap`: a reload builds a new one and swaps it in, requests in
//! flight finish on the one they started with.

use std::sync::Arc;

use http::HeaderMap;

use crate::answer::Answer;
use crate::config::{AuthMode, Config, ConfigError};
use crate::exchange::{Connectors, RequestInfo};
use crate::extract::{self, Source};
use crate::rewrite::{self, Rewrite};
use crate::route::{Route, RouteTable};
use crate::verify::{AuthError, KeyStore, Verifier};

pub struct Gateway {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub verifier: Verifier,
    pub connectors: Connectors,
}

impl Gateway {
    /// Builds the runtime. `keys` is passed in so a reload with unchanged `descope:` settings keeps
    /// the keys already loaded.
    pub fn build(config: Config, keys: Arc<KeyStore>) -> Result<Gateway, ConfigError> {
        let routes = RouteTable::build(&config).map_err(|m| match m.split_once(": ") {
            Some((p, msg)) => ConfigError::key(p, msg),
            None => ConfigError::Syntax(m),
        })?;
        let client = Self::http_client()
            .map_err(|e| ConfigError::Syntax(format!("cannot create the HTTP client: {e}")))?;
        let connectors = Connectors::build(&config, &client)?;
        let verifier = Verifier::new(
            &config.descope,
            keys,
            config.limits.max_token_bytes,
            config.cache.verified_sessions,
        );
        Ok(Gateway {
            config: Arc::new(config),
            routes,
            verifier,
            connectors,
        })
    }

    /// The HTTP client for JWKS and connectors: one pool for the process.
    pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .user_agent(concat!("extoken/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
    }

    /// Decides whether a request on an `auth: required` route may go upstream, and with what
    /// header. `Err` is the answer to send instead.
    pub async fn authorize(
        &self,
        route: &Route,
        headers: &HeaderMap,
        info: RequestInfo<'_>,
    ) -> Result<Rewrite, Answer> {
        debug_assert_eq!(route.auth, AuthMode::Required);
        let found = extract::session_token(headers, &self.config.descope.session_cookie)
            .ok_or_else(|| Answer::unauthorized(&AuthError::Missing))?;
        let session = self
            .verifier
            .verify(found.token)
            .await
            .map_err(|e| Answer::from_verify(&e))?;
        let name = route
            .connector_for(session.str_claim("dct"))
            .ok_or_else(|| Answer::unavailable("route has no connector", "misconfigured"))?;
        let obtained = self
            .connectors
            .obtain(name, &session, info)
            .await
            .map_err(|e| {
                if let crate::exchange::ExchangeError::Unavailable { connector, reason } = &e {
                    tracing::warn!(target: "extoken::exchange", connector = %connector, "no external token: {reason}");
                }
                Answer::from_exchange(&e)
            })?;
        let value = rewrite::auth_value(&route.scheme, &obtained.token).ok_or_else(|| {
            Answer::unavailable(
                "external token is not a valid header value",
                "invalid_external_token",
            )
        })?;
        Ok(Rewrite {
            drop_bearer: found.source == Source::Bearer
                && route.header != http::header::AUTHORIZATION,
            header: route.header.clone(),
            value,
            evict: obtained.cache_key,
        })
    }
}
