//! The configured connectors, by name: built once per config from its typed blocks, then asked
//! for a token per request (minting ones through the shared [`TokenCache`]).

use crate::telemetry::trace;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::cache::{CacheKey, Eviction, Lookup, TokenCache, TokenRef};
use super::claim::ClaimConnector;
use super::connector_config::{parse_all, shared_config, ConnectorConfig};
use super::firebase::Firebase;
use super::http_endpoint::HttpConnector;
use super::jwt_template::JwtConnector;
use super::shared::SharedCache;
use super::supabase::Supabase;
use super::token_exchange::TokenExchange;
use super::{ExchangeError, ExternalToken, IdentitySigner, Mint, Minted, RequestInfo};
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::verify::{ClaimsKept, VerifiedSession};

/// How a connector produces tokens.
enum ConnectorKind {
    /// Reads it from the session: nothing to mint or cache.
    Claim(ClaimConnector),
    /// Mints it, through the cache.
    Minting(Arc<dyn Mint>),
}

/// Counts and times every connector call (`extoken_connector_calls_total`,
/// `extoken_connector_duration_seconds`), wherever the cache makes it from.
struct Instrumented {
    name: String,
    inner: Arc<dyn Mint>,
}

#[async_trait::async_trait]
impl Mint for Instrumented {
    fn inputs(
        &self,
        s: &VerifiedSession,
        req: RequestInfo<'_>,
    ) -> Result<serde_json::Value, ExchangeError> {
        self.inner.inputs(s, req)
    }
    fn cache_inputs(&self, inputs: &serde_json::Value) -> serde_json::Value {
        self.inner.cache_inputs(inputs)
    }
    async fn mint(&self, inputs: &serde_json::Value) -> Result<Minted, ExchangeError> {
        let m = crate::metrics::metrics();
        // A measurement for the histogram, not a freshness decision: real time, not the clock.
        let start = std::time::Instant::now();
        let result = self.inner.mint(inputs).await;
        m.connector_duration_seconds
            .with_label_values(&[self.name.as_str()])
            .observe(start.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        m.connector_calls_total
            .with_label_values(&[self.name.as_str(), outcome])
            .inc();
        result
    }
    fn subject_connector(&self) -> Option<&str> {
        self.inner.subject_connector()
    }
    fn bind_subject(&self, inputs: &mut serde_json::Value, subject: &ExternalToken) {
        self.inner.bind_subject(inputs, subject)
    }
    fn public_jwk(&self) -> Option<jsonwebtoken::jwk::Jwk> {
        self.inner.public_jwk()
    }
    fn claims_read(&self, kept: &mut ClaimsKept) {
        self.inner.claims_read(kept)
    }
    fn identity_signer(&self) -> Option<IdentitySigner> {
        self.inner.identity_signer()
    }
}

/// A configured connector: its name, what it does, and the fingerprint of its settings.
struct Connector {
    name: Arc<str>,
    kind: ConnectorKind,
    /// The connector's [`fingerprint`]: part of every cache key, so a token minted under other
    /// settings or another key is never served.
    settings: [u8; 32],
    /// `extoken_cache_lookups_total{connector, result}`, one handle per [`Lookup`], resolved once
    /// (a `with_label_values` per request hashes both labels and takes the vector's lock).
    lookups: [prometheus::IntCounter; 6],
    /// `extoken_token_evictions_total{connector, result}`, one handle per [`Eviction`] (resolved
    /// once, so each series is exported from the start, at 0).
    evictions: [prometheus::IntCounter; 3],
}

impl Connector {
    /// Builds connector `name` from its settings, reading its key files.
    fn build(
        name: &str,
        cfg: &ConnectorConfig,
        client: &reqwest::Client,
        clock: &SharedClock,
    ) -> Result<Connector, ConfigError> {
        let path = format!("connectors.{name}");
        fn minting<T: Mint + 'static>((m, loaded): (T, Vec<u8>)) -> (Arc<dyn Mint>, Vec<u8>) {
            (Arc::new(m), loaded)
        }
        let (inner, loaded) = match cfg {
            ConnectorConfig::Claim(c) => {
                let kind = ConnectorKind::Claim(ClaimConnector::new(c));
                return Ok(Connector::new(name, kind, cfg, &[]));
            }
            ConnectorConfig::Supabase(c) => {
                minting(Supabase::build(name, &path, c, clock.clone())?)
            }
            ConnectorConfig::Firebase(c) => minting(Firebase::build(
                name,
                &path,
                c,
                client.clone(),
                clock.clone(),
            )?),
            ConnectorConfig::Http(c) => minting((
                HttpConnector::build(name, &path, c, client.clone(), clock.clone())?,
                Vec::new(),
            )),
            ConnectorConfig::Jwt(c) => minting(JwtConnector::build(name, &path, c, clock.clone())?),
            ConnectorConfig::TokenExchange(c) => minting(TokenExchange::build(
                name,
                &path,
                c,
                client.clone(),
                clock.clone(),
            )?),
        };
        let kind = ConnectorKind::Minting(Arc::new(Instrumented {
            name: name.to_string(),
            inner,
        }));
        Ok(Connector::new(name, kind, cfg, &loaded))
    }

    fn new(name: &str, kind: ConnectorKind, cfg: &ConnectorConfig, loaded: &[u8]) -> Connector {
        let m = crate::metrics::metrics();
        let (lookups, evictions) = (&m.cache_lookups_total, &m.token_evictions_total);
        Connector {
            name: name.into(),
            kind,
            settings: fingerprint(cfg, loaded),
            lookups: Lookup::ALL.map(|l| lookups.with_label_values(&[name, l.label()])),
            evictions: Eviction::ALL.map(|e| evictions.with_label_values(&[name, e.label()])),
        }
    }
}

/// SHA-256 of what a connector mints with: its settings (secrets included, so only ever hashed)
/// without file paths, and the bytes of the files it loaded (key files, service accounts), as the
/// builder read them. A key file replaced in place changes it; the same key at another path does
/// not.
fn fingerprint(cfg: &ConnectorConfig, loaded: &[u8]) -> [u8; 32] {
    let settings = cfg.settings_without_paths();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [settings.as_bytes(), loaded] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The token a request gets, and (when it came from the cache) the token and its cache key, to
/// forget it by if the upstream refuses it.
#[derive(Debug, Clone)]
pub(crate) struct Obtained {
    pub(crate) token: ExternalToken,
    pub(crate) cache_key: Option<TokenRef>,
}

/// The configured connectors, by name, with the token cache they share.
pub struct Connectors {
    by_name: BTreeMap<String, Connector>,
    cache: TokenCache,
    jwks: Option<String>,
    /// The `jwt` connectors' keys, by name, for routes' signed identity headers.
    signers: BTreeMap<String, IdentitySigner>,
}

impl Connectors {
    /// Parses and builds every connector of `cfg`, reading key files and service accounts: a bad
    /// one is an error here (at start, on reload, and in `extoken check`), naming its key.
    /// `clock` decides token freshness and the `iat`/`exp` of the tokens the gateway signs.
    pub fn build(
        cfg: &Config,
        client: &reqwest::Client,
        clock: SharedClock,
    ) -> Result<Connectors, ConfigError> {
        Self::build_with_cache(cfg, client, clock, None)
    }

    /// [`Connectors::build`], keeping `cache` if given (a reload with unchanged `cache:`
    /// settings: the keys fingerprint each connector's settings, so a changed connector never
    /// gets a token minted under the old ones); else a new cache on `clock`.
    pub(crate) fn build_with_cache(
        cfg: &Config,
        client: &reqwest::Client,
        clock: SharedClock,
        cache: Option<TokenCache>,
    ) -> Result<Connectors, ConfigError> {
        let mut by_name = BTreeMap::new();
        let mut public = vec![];
        let mut signers = BTreeMap::new();
        let mut typed_all = Vec::with_capacity(cfg.connectors.len());
        for (name, typed) in parse_all(cfg)? {
            let c = Connector::build(name, &typed, client, &clock)?;
            typed_all.push((name, typed));
            if let ConnectorKind::Minting(m) = &c.kind {
                public.extend(m.public_jwk());
                if let Some(s) = m.identity_signer() {
                    signers.insert(name.to_string(), s);
                }
            }
            by_name.insert(name.to_string(), c);
        }
        let jwks = (!public.is_empty()).then(|| {
            serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: public }).unwrap_or_default()
        });
        let shared = shared_config(cfg, &typed_all)?;
        // A kept cache must still fit: its lock outlives the slowest connector as now configured.
        let kept = cache.filter(|c| c.lock_ttl() == shared.as_ref().map(|s| s.lock_ttl));
        let cache = match kept {
            Some(c) => c,
            None => {
                let shared = match &shared {
                    Some(s) => Some(SharedCache::new(
                        s,
                        clock.clone(),
                        TokenCache::margin_of(&cfg.cache),
                        cfg.cache.max_entries,
                    )?),
                    None => None,
                };
                TokenCache::with_shared(&cfg.cache, clock, shared)
            }
        };
        Ok(Connectors {
            by_name,
            cache,
            jwks,
            signers,
        })
    }

    /// The external token from connector `name` for this session.
    pub(crate) async fn obtain(
        &self,
        name: &str,
        session: &VerifiedSession,
        req: RequestInfo<'_>,
    ) -> Result<Obtained, ExchangeError> {
        let c = self
            .by_name
            .get(name)
            .ok_or_else(|| ExchangeError::unavailable(name, "no such connector"))?;
        match &c.kind {
            ConnectorKind::Claim(cc) => {
                trace::note("extoken.token.source", "claim");
                Ok(Obtained {
                    token: cc.extract(session)?,
                    cache_key: None,
                })
            }
            ConnectorKind::Minting(m) => {
                let mut inputs = m.inputs(session, req)?;
                if let Some(subject) = m.subject_connector() {
                    // Config checks rule out a cycle, so this recursion ends.
                    let from = Box::pin(self.obtain(subject, session, req)).await?;
                    m.bind_subject(&mut inputs, &from.token);
                }
                let inputs = Arc::new(inputs);
                let key = CacheKey::new(c.name.clone(), &c.settings, &m.cache_inputs(&inputs));
                let (result, how) = self.cache.get_or_mint(&key, m, &inputs).await;
                c.lookups[how as usize].inc();
                trace::note("extoken.token.source", how.label());
                let token = result?;
                Ok(Obtained {
                    cache_key: Some(TokenRef {
                        key,
                        token: token.clone(),
                    }),
                    token,
                })
            }
        }
    }

    /// The upstream answered 401 to `sent`: forgets it unless it is no longer cached or its key
    /// was evicted within `cache.evict_min_interval` (see `cache/evict.rs`), and counts which.
    pub(crate) async fn evict(&self, sent: &TokenRef) -> Eviction {
        let outcome = self.cache.evict(sent).await;
        // The key was made by this configuration's connector: it is there.
        if let Some(c) = self.by_name.get(&*sent.key.connector) {
            c.evictions[outcome as usize].inc();
        }
        outcome
    }

    /// `{"keys":[...]}` of the `jwt` connectors' public keys, if any are configured.
    pub(crate) fn jwks(&self) -> Option<&str> {
        self.jwks.as_deref()
    }

    /// The key of `jwt` connector `name`, to sign identity assertions with.
    pub(crate) fn identity_signer(&self, name: &str) -> Option<&IdentitySigner> {
        self.signers.get(name)
    }

    pub(crate) fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Adds the session claims any connector reads to `kept`.
    pub(crate) fn claims_read(&self, kept: &mut ClaimsKept) {
        for c in self.by_name.values() {
            match &c.kind {
                ConnectorKind::Claim(claim) => claim.claims_read(kept),
                ConnectorKind::Minting(m) => m.claims_read(kept),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache fingerprint of connector `c`, a `jwt` connector whose key is the file `key`.
    fn jwt_fingerprint(key: &std::path::Path) -> [u8; 32] {
        let yaml = format!(
            "descope: {{project_id: P2t, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors:\n  c: {{type: jwt, key_file: '{}', kid: k, issuer: 'https://gw'}}\n\
             routes: [{{upstream: 'http://127.0.0.1:3000', connector: c}}]\n",
            key.display()
        );
        let cfg = Config::parse(&yaml, &|_| None).unwrap();
        let built =
            Connectors::build(&cfg, &reqwest::Client::new(), crate::clock::system()).unwrap();
        built.by_name["c"].settings
    }

    #[test]
    fn fingerprint_covers_key_contents_not_paths() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (
            crate::mint::generate_pem().unwrap(),
            crate::mint::generate_pem().unwrap(),
        );
        let (a, b, c) = (
            dir.path().join("a.pem"),
            dir.path().join("b.pem"),
            dir.path().join("c.pem"),
        );
        std::fs::write(&a, &k1).unwrap();
        std::fs::write(&b, &k1).unwrap();
        std::fs::write(&c, &k2).unwrap();
        let fa = jwt_fingerprint(&a);
        assert_eq!(fa, jwt_fingerprint(&b), "same key at another path");
        assert_ne!(fa, jwt_fingerprint(&c), "another key");
        // Replaced in place: same path, same settings, other contents.
        std::fs::write(&a, &k2).unwrap();
        assert_ne!(fa, jwt_fingerprint(&a));
        assert_eq!(jwt_fingerprint(&a), jwt_fingerprint(&c));
    }

    /// Replicas must agree on fingerprints (the shared cache names entries by them): equal settings
    /// give equal fingerprints however they were written, with nothing per-process in them (a
    /// `HashMap` in the settings would order its entries differently in each parse).
    #[test]
    fn fingerprint_is_the_same_for_the_same_settings_written_otherwise() {
        let headers: Vec<String> = (0..12).map(|i| format!("X-H{i}: v{i}")).collect();
        let mut reversed = headers.clone();
        reversed.reverse();
        let parse = |h: &[String]| -> ConnectorConfig {
            serde_yaml::from_str(&format!(
                "{{type: http, url: 'http://t/mint', headers: {{{}}}, timeout: 2s}}",
                h.join(", ")
            ))
            .unwrap()
        };
        let a = fingerprint(&parse(&headers), b"");
        for _ in 0..8 {
            assert_eq!(a, fingerprint(&parse(&headers), b""));
            assert_eq!(
                a,
                fingerprint(&parse(&reversed), b""),
                "key order is not a setting"
            );
        }
    }

    #[test]
    fn fingerprint_covers_settings_and_loaded_bytes_unambiguously() {
        let cfg: ConnectorConfig =
            serde_yaml::from_str("{type: supabase, jwt_secret: s1}").unwrap();
        let other: ConnectorConfig =
            serde_yaml::from_str("{type: supabase, jwt_secret: s2}").unwrap();
        assert_ne!(fingerprint(&cfg, b""), fingerprint(&other, b""));
        assert_ne!(fingerprint(&cfg, b""), fingerprint(&cfg, b"x"));
        assert_eq!(fingerprint(&cfg, b"x"), fingerprint(&cfg, b"x"));
    }
}
