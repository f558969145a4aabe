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
use crate::rewrite::{self, Rewrite};
use crate::route::{Route, RouteTable};
use crate::verify::{AuthError, ClaimsKept, KeyStore, VerifiedSession, Verifier};

pub struct Gateway {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub verifier: Arc<Verifier>,
    pub connectors: Connectors,
    /// `iat`/`exp` of signed identity assertions.
    clock: SharedClock,
    /// Signed identity assertions, reused for the same identity while fresh.
    assertions: Assertions,
}

impl Gateway {
    /// Builds the runtime. `keys` is passed in because the key store's refresh task outlives any
    /// one config (see [`Gateway::rebuild`]).
    pub fn build(config: Config, keys: Arc<KeyStore>) -> Result<Gateway, ConfigError> {
        let (gateway, _) = Self::assemble(config, None, |c, kept| {
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
        let same_keys = old.descope == config.descope;
        let same_bounds = old.limits.max_token_bytes == config.limits.max_token_bytes
            && old.cache.verified_sessions == config.cache.verified_sessions;
        let cache = (old.cache == config.cache).then(|| self.connectors.cache().clone());
        Self::assemble(config, cache, |c, kept| {
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
        verifier: impl FnOnce(&Config, ClaimsKept) -> (Arc<Verifier>, bool),
    ) -> Result<(Gateway, bool), ConfigError> {
        let routes = RouteTable::build(&config)?;
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
        let gateway = Gateway {
            config: Arc::new(config),
            routes,
            verifier,
            connectors,
            clock: crate::clock::system(),
            assertions,
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
    /// answer to send instead; a refused session never reaches a connector.
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
        route
            .rules
            .check(&session.claims, info.method)
            .map_err(Answer::denied)?;
        let name = route
            .connector_for(session.str_claim("dct"))
            .ok_or_else(|| Answer::unavailable("route has no connector", "misconfigured"))?;
        let info = RequestInfo {
            session_token: found.token,
            ..info
        };
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
            header: route.header.clone(),
            value,
            cache_key: obtained.cache_key,
            identity: self.identity_headers(route, &session)?,
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
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'{extra}}}\n\
             connectors: {{ext: {{type: claim}}}}\nroutes: [{{upstream: 'http://127.0.0.1:1', connector: ext}}]\n"
        );
        Config::parse(&text, &|_| None).unwrap()
    }

    fn gateway() -> Gateway {
        install_crypto_provider();
        let c = cfg("");
        let client = Gateway::http_client().unwrap();
        let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
        Gateway::build(c, keys).unwrap()
    }

    #[test]
    fn rebuild_keeps_warm_state_when_settings_are_unchanged() {
        let gw = gateway();
        let (next, kept) = gw.rebuild(cfg("")).unwrap();
        assert!(kept);
        assert!(
            Arc::ptr_eq(&gw.verifier, &next.verifier),
            "keys and verified sessions kept"
        );
        assert!(
            gw.connectors.cache().is_same(next.connectors.cache()),
            "token cache kept"
        );
    }

    fn kept_for(connectors: &str) -> ClaimsKept {
        install_crypto_provider();
        let text = format!(
            "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors: {connectors}\nroutes: [{{upstream: 'http://127.0.0.1:1', connector: c}}]\n"
        );
        let c = Config::parse(&text, &|_| None).unwrap();
        let client = Gateway::http_client().unwrap();
        let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
        Gateway::build(c, keys).unwrap().verifier.kept().clone()
    }

    fn only(names: &[&str]) -> ClaimsKept {
        ClaimsKept::Only(names.iter().map(|n| Box::<str>::from(*n)).collect())
    }

    #[test]
    fn sessions_keep_only_the_claims_the_config_reads() {
        assert_eq!(
            kept_for("{c: {type: claim}}"),
            only(&["dct", "externalToken"])
        );
        assert_eq!(
            kept_for("{c: {type: claim, claim: legacy.tok}}"),
            only(&["dct", "legacy.tok"]),
            "a claim name, not a path"
        );
        assert_eq!(
            kept_for("{c: {type: supabase, jwt_secret: s, claims: {plan: custom.plan}}}"),
            only(&["custom", "dct", "dsub", "email", "phone", "sub"])
        );
        assert_eq!(
            kept_for(
                "{c: {type: claim}, t: {type: token_exchange, token_url: 'http://127.0.0.1:1/t', \
                 client_auth: {client_secret_post: {client_id: g, client_secret: s}}}}"
            ),
            only(&[
                "dct",
                "dsub",
                "externalToken",
                "permissions",
                "roles",
                "sub",
                "tenants"
            ])
        );
        // The http connector sends every custom claim: nothing can be dropped.
        assert_eq!(
            kept_for("{c: {type: http, url: 'http://127.0.0.1:1/m'}}"),
            ClaimsKept::All
        );
    }

    #[test]
    fn sessions_keep_what_route_rules_and_identity_headers_read() {
        install_crypto_provider();
        let text = "descope: {project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}\n\
             connectors: {c: {type: claim}}\nroutes:\n\
             - {path_prefix: /a, upstream: 'http://127.0.0.1:1', connector: c,\n   \
                require: {roles: {any: [admin]}, claims: {org.plan: pro}},\n   \
                identity_headers: {X-User-Email: email, X-Team: team.name}}\n\
             - {path_prefix: /b, upstream: 'http://127.0.0.1:1', connector: c,\n   \
                require: {tenant: T1, permissions: {all: [w]}}}\n";
        let c = Config::parse(text, &|_| None).unwrap();
        let client = Gateway::http_client().unwrap();
        let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
        let gw = Gateway::build(c, keys).unwrap();
        assert_eq!(
            gw.verifier.kept(),
            &only(&[
                "dct",
                "email",
                "externalToken",
                "org",
                "roles",
                "team",
                "tenants"
            ])
        );
    }

    #[test]
    fn a_reload_that_reads_other_claims_gets_a_new_session_cache_but_keeps_the_keys() {
        install_crypto_provider();
        let text = |conn: &str| {
            format!(
                "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
                 connectors: {{c: {conn}}}\nroutes: [{{upstream: 'http://127.0.0.1:1', connector: c}}]\n"
            )
        };
        let c = Config::parse(&text("{type: claim}"), &|_| None).unwrap();
        let client = Gateway::http_client().unwrap();
        let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
        let gw = Gateway::build(c, keys).unwrap();
        let other = Config::parse(&text("{type: claim, claim: other}"), &|_| None).unwrap();
        let (next, keys_kept) = gw.rebuild(other).unwrap();
        assert!(keys_kept);
        assert!(
            !Arc::ptr_eq(&gw.verifier, &next.verifier),
            "sessions lack `other`"
        );
        assert!(Arc::ptr_eq(&gw.verifier.keys, &next.verifier.keys));
        assert_eq!(next.verifier.kept(), &only(&["dct", "other"]));
    }

    #[test]
    fn rebuild_replaces_what_changed() {
        let gw = gateway();
        let (next, kept) = gw.rebuild(cfg(", leeway: 9s")).unwrap();
        assert!(!kept);
        assert!(!Arc::ptr_eq(&gw.verifier, &next.verifier));
        assert!(!Arc::ptr_eq(&gw.verifier.keys, &next.verifier.keys));
        assert!(
            gw.connectors.cache().is_same(next.connectors.cache()),
            "cache: unchanged"
        );
    }
}

/// `authorize` in process: the whole extract → verify → exchange → rewrite plan on a real key
/// set (a dev key's JWKS in a file), no pingora, no network.
#[cfg(test)]
mod authorize_tests {
    use super::*;
    use crate::mint::{DevKey, MintOptions};
    use http::HeaderValue;

    const PROJECT: &str = "P2authorizeTest";

    struct Fixture {
        gw: Gateway,
        key: DevKey,
        _dir: tempfile::TempDir,
    }

    async fn fixture(route_extra: &str) -> Fixture {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let key = DevKey::load_or_create(&dir.path().join("dev.pem")).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, &key.jwks).unwrap();
        // A jwt connector whose key signs identity assertions (the dev key will do).
        let text = format!(
            "descope: {{project_id: {PROJECT}, jwks_file: '{}'}}\n\
             connectors: {{ext: {{type: claim}}, gw: {{type: jwt, key_file: '{}', issuer: 'https://gw'}}}}\n\
             routes: [{{name: api, upstream: 'http://127.0.0.1:1', connector: ext{route_extra}}}]\n",
            jwks.display(),
            dir.path().join("dev.pem").display()
        );
        let cfg = Config::parse(&text, &|_| None).unwrap();
        let client = Gateway::http_client().unwrap();
        let keys = Arc::new(KeyStore::new(&cfg.descope, client, crate::clock::system()));
        keys.load().await.unwrap();
        Fixture {
            gw: Gateway::build(cfg, keys).unwrap(),
            key,
            _dir: dir,
        }
    }

    fn session(key: &DevKey, ttl_secs: i64, ext: Option<&str>) -> String {
        session_with(key, ttl_secs, ext, vec![])
    }

    fn session_with(
        key: &DevKey,
        ttl_secs: i64,
        ext: Option<&str>,
        claims: Vec<(String, serde_json::Value)>,
    ) -> String {
        MintOptions {
            project_id: PROJECT.into(),
            issuer: None,
            sub: "U2user".into(),
            ttl_secs,
            claims,
            external_token: ext.map(str::to_string),
            refresh: false,
        }
        .mint(key, 1)
        .unwrap()
        .remove(0)
    }

    async fn authorize(f: &Fixture, headers: &[(&str, String)]) -> Result<Rewrite, Answer> {
        authorize_as(f, "GET", headers).await
    }

    async fn authorize_as(
        f: &Fixture,
        method: &str,
        headers: &[(&str, String)],
    ) -> Result<Rewrite, Answer> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let route = f.gw.routes.find(None, "/x").unwrap().clone();
        let info = RequestInfo {
            session_token: "",
            route: &route.name,
            method,
            path: "/x",
        };
        f.gw.authorize(&route, &h, info).await
    }

    #[tokio::test]
    async fn a_valid_session_gets_the_external_token() {
        let f = fixture("").await;
        let bearer = format!("Bearer {}", session(&f.key, 600, Some("legacy-{sub}")));
        let rw = authorize(&f, &[("authorization", bearer)]).await.unwrap();
        assert_eq!(rw.header, http::header::AUTHORIZATION);
        assert_eq!(rw.value, "Bearer legacy-U2user");
        assert!(rw.cache_key.is_none(), "a claim connector caches nothing");
        // The same from the session cookie.
        let cookie = format!("theme=dark; DS={}", session(&f.key, 600, Some("c")));
        let rw = authorize(&f, &[("cookie", cookie)]).await.unwrap();
        assert_eq!(rw.value, "Bearer c");
    }

    #[tokio::test]
    async fn the_route_decides_header_and_scheme() {
        let f = fixture(", header: X-Legacy, scheme: ''").await;
        let bearer = format!("Bearer {}", session(&f.key, 600, Some("t")));
        let rw = authorize(&f, &[("authorization", bearer)]).await.unwrap();
        assert_eq!(
            (rw.header.as_str(), rw.value.to_str().unwrap()),
            ("x-legacy", "t")
        );
    }

    #[tokio::test]
    async fn refusals_are_answers() {
        let f = fixture("").await;
        let status = |r: Result<Rewrite, Answer>| r.map(|_| 200).unwrap_or_else(|a| a.status);
        let reason = |r: Result<Rewrite, Answer>| r.err().map(|a| a.reason);
        assert_eq!(reason(authorize(&f, &[]).await), Some("missing"));
        let expired = format!("Bearer {}", session(&f.key, -600, Some("t")));
        assert_eq!(
            reason(authorize(&f, &[("authorization", expired)]).await),
            Some("expired")
        );
        let no_claim = format!("Bearer {}", session(&f.key, 600, None));
        let r = authorize(&f, &[("authorization", no_claim)]).await;
        assert_eq!(
            (status(r.clone()), reason(r)),
            (401, Some("missing_external_token"))
        );
        let other = DevKey::load_or_create(&f._dir.path().join("other.pem")).unwrap();
        let forged = format!("Bearer {}", session(&other, 600, Some("t")));
        let r = authorize(&f, &[("authorization", forged)]).await;
        assert_eq!(status(r), 401);
    }

    /// A session the rules refuse gets the 403 naming the rule, even when it has no external
    /// token: the rules run before the connector, which is never asked.
    #[tokio::test]
    async fn rules_refuse_before_the_connector() {
        let f = fixture(", require: {roles: {any: [admin]}, methods: [GET]}").await;
        let roles = |r: &[&str]| vec![("roles".to_string(), serde_json::json!(r))];
        let viewer = format!(
            "Bearer {}",
            session_with(&f.key, 600, None, roles(&["viewer"]))
        );
        let a = authorize(&f, &[("authorization", viewer)])
            .await
            .unwrap_err();
        assert_eq!(
            (a.status, a.reason, a.outcome),
            (403, "forbidden", "forbidden")
        );
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["rule"], "roles");
        assert!(
            !String::from_utf8_lossy(&a.body).contains("viewer"),
            "no claim in the body"
        );
        // An admin without an external token passes the rules and fails at the connector (401).
        let admin = format!(
            "Bearer {}",
            session_with(&f.key, 600, None, roles(&["admin"]))
        );
        let a = authorize(&f, &[("authorization", admin)])
            .await
            .unwrap_err();
        assert_eq!((a.status, a.reason), (401, "missing_external_token"));
        let admin = format!(
            "Bearer {}",
            session_with(&f.key, 600, Some("t"), roles(&["admin"]))
        );
        let a = authorize_as(&f, "POST", &[("authorization", admin.clone())])
            .await
            .unwrap_err();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&a.body).unwrap()["rule"],
            "methods"
        );
        assert!(authorize(&f, &[("authorization", admin)]).await.is_ok());
        // No session at all is still the 401, not a 403.
        assert_eq!(authorize(&f, &[]).await.unwrap_err().status, 401);
    }

    /// Identity headers from the verified claims, and the assertion of them, which verifies with
    /// the jwt connector's published key.
    #[tokio::test]
    async fn identity_headers_and_their_signed_assertion() {
        let f = fixture(
            ", identity_headers: {X-User-Id: sub, X-Roles: roles, X-Tenant: dct}, identity_headers_signed_by: gw",
        )
        .await;
        let claims = vec![("roles".to_string(), serde_json::json!(["a", "b"]))];
        let bearer = format!("Bearer {}", session_with(&f.key, 600, Some("t"), claims));
        let rw = authorize(&f, &[("authorization", bearer)]).await.unwrap();
        let got: Vec<(&str, &str)> = rw
            .identity
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(&got[..2], &[("x-roles", "a,b"), ("x-user-id", "U2user")]);
        assert_eq!(got.len(), 3, "no dct: no X-Tenant; plus the assertion");
        assert_eq!(got[2].0, "x-extoken-identity");
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(f.gw.connectors.jwks().unwrap()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["api"]);
        v.set_issuer(&["https://gw"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(got[2].1, &key, &v).unwrap();
        assert_eq!(data.header.typ.as_deref(), Some("extoken-identity+jwt"));
        assert_eq!(
            data.claims["hdr"],
            serde_json::json!({"x-roles": "a,b", "x-user-id": "U2user"})
        );
        let (iat, exp) = (
            data.claims["iat"].as_u64().unwrap(),
            data.claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, crate::authorize::ASSERTION_LIFETIME_SECS);
    }
}
