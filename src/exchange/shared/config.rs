//! `cache.shared`, typed and checked: which Redis (one server, a Cluster, or the master a Sentinel
//! names), the key prefix, how long one Redis operation may take, the encryption key, and how long
//! the mint lock is held.
//!
//! The config keeps the block raw ([`RawSharedCache`]) because one check needs the connectors:
//! `lock_ttl` must outlive the slowest connector's worst case, or a second replica would mint while
//! the first still waits for its reply. Errors name the key (`cache.shared.encryption_key: ...`)
//! and never show the key's value.

use std::time::Duration;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use redis::{ConnectionInfo, IntoConnectionInfo};
use serde::Deserialize;

use crate::config::{ConfigError, Dur, RawSharedCache};

const PATH: &str = "cache.shared";

/// Added to the slowest connector's worst case for the default `lock_ttl`.
const LOCK_SLACK: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: Option<Urls>,
    cluster: Option<Vec<String>>,
    sentinel: Option<RawSentinel>,
    #[serde(default = "d_prefix")]
    key_prefix: String,
    #[serde(default = "d_operation_timeout")]
    operation_timeout: Dur,
    encryption_key: String,
    lock_ttl: Option<Dur>,
}

/// `url: redis://...`, or a list of node URLs: a Cluster, as `cluster:` says it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Urls {
    One(String),
    Nodes(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSentinel {
    master_name: String,
    nodes: Vec<String>,
    /// Credentials of the master (those of the Sentinels go in their URLs).
    username: Option<String>,
    password: Option<String>,
}

fn d_prefix() -> String {
    "extoken:".into()
}
fn d_operation_timeout() -> Dur {
    Dur::millis(50)
}

/// Where the shared cache lives.
pub(crate) enum Servers {
    Single(ConnectionInfo),
    Cluster(Vec<ConnectionInfo>),
    Sentinel {
        master_name: String,
        nodes: Vec<ConnectionInfo>,
        username: Option<String>,
        password: Option<String>,
        /// `rediss://` Sentinels: the master is reached over TLS too.
        tls: bool,
    },
}

/// `cache.shared`, checked.
pub(crate) struct SharedCacheConfig {
    pub(crate) servers: Servers,
    pub(crate) key_prefix: String,
    pub(crate) operation_timeout: Duration,
    pub(crate) encryption_key: [u8; 32],
    pub(crate) lock_ttl: Duration,
}

/// Redacted: it holds the encryption key.
impl std::fmt::Debug for SharedCacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCacheConfig")
            .field("key_prefix", &self.key_prefix)
            .field("operation_timeout", &self.operation_timeout)
            .field("lock_ttl", &self.lock_ttl)
            .finish_non_exhaustive()
    }
}

/// The slowest minting connector: its name and worst case.
pub(crate) type Slowest = Option<(String, Duration)>;

impl SharedCacheConfig {
    /// Parses and checks `cache.shared`; `slowest` is the connector whose mint can take longest.
    pub(crate) fn parse(raw: &RawSharedCache, slowest: &Slowest) -> Result<Self, ConfigError> {
        let r: Raw = serde_path_to_error::deserialize(raw.0.clone()).map_err(|e| {
            let key = match e.path().to_string().as_str() {
                "." => PATH.to_string(),
                inner => format!("{PATH}.{inner}"),
            };
            ConfigError::key(key, e.into_inner().to_string())
        })?;
        let servers = servers(&r)?;
        if r.key_prefix.is_empty() || r.key_prefix.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ConfigError::key(
                format!("{PATH}.key_prefix"),
                "must be visible ASCII, not empty",
            ));
        }
        if r.operation_timeout.0.is_zero() {
            return Err(ConfigError::key(
                format!("{PATH}.operation_timeout"),
                "must be more than 0",
            ));
        }
        Ok(SharedCacheConfig {
            servers,
            key_prefix: r.key_prefix,
            operation_timeout: r.operation_timeout.0,
            encryption_key: encryption_key(&r.encryption_key)?,
            lock_ttl: lock_ttl(r.lock_ttl, slowest)?,
        })
    }
}

/// Exactly one of `url`, `cluster`, `sentinel`; every URL `redis://` or `rediss://`.
fn servers(r: &Raw) -> Result<Servers, ConfigError> {
    let set = [r.url.is_some(), r.cluster.is_some(), r.sentinel.is_some()];
    match set.iter().filter(|s| **s).count() {
        0 => {
            return Err(ConfigError::key(
                format!("{PATH}.url"),
                "set url (one server), cluster (node URLs) or sentinel",
            ))
        }
        1 => {}
        _ => {
            return Err(ConfigError::key(
                PATH,
                "url, cluster and sentinel are exclusive: set one",
            ))
        }
    }
    match &r.url {
        Some(Urls::One(u)) => return Ok(Servers::Single(redis_url(&format!("{PATH}.url"), u)?)),
        Some(Urls::Nodes(n)) => return Ok(Servers::Cluster(node_list(&format!("{PATH}.url"), n)?)),
        None => {}
    }
    if let Some(nodes) = &r.cluster {
        return Ok(Servers::Cluster(node_list(
            &format!("{PATH}.cluster"),
            nodes,
        )?));
    }
    let s = r
        .sentinel
        .as_ref()
        .ok_or_else(|| ConfigError::key(PATH, "no servers"))?;
    if s.master_name.is_empty() {
        return Err(ConfigError::key(
            format!("{PATH}.sentinel.master_name"),
            "must not be empty",
        ));
    }
    let key = format!("{PATH}.sentinel.nodes");
    let nodes = node_list(&key, &s.nodes)?;
    Ok(Servers::Sentinel {
        master_name: s.master_name.clone(),
        tls: s.nodes.iter().any(|u| u.starts_with("rediss://")),
        nodes,
        username: s.username.clone(),
        password: s.password.clone(),
    })
}

/// At least one URL, all with the same scheme (TLS for all or none).
fn node_list(key: &str, urls: &[String]) -> Result<Vec<ConnectionInfo>, ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError::key(key, "needs at least one node URL"));
    }
    let tls = urls[0].starts_with("rediss://");
    urls.iter()
        .enumerate()
        .map(|(i, u)| {
            let key = format!("{key}[{i}]");
            if u.starts_with("rediss://") != tls {
                return Err(ConfigError::key(
                    key,
                    "mixes redis:// and rediss://: use one scheme for all nodes",
                ));
            }
            redis_url(&key, u)
        })
        .collect()
}

fn redis_url(key: &str, u: &str) -> Result<ConnectionInfo, ConfigError> {
    // Not echoed: a URL may carry a password.
    let scheme_ok = u.starts_with("redis://") || u.starts_with("rediss://");
    let info = scheme_ok.then(|| u.into_connection_info().ok()).flatten();
    info.ok_or_else(|| {
        ConfigError::key(
            key,
            "not a redis:// or rediss:// URL (redis://host:6379, rediss:// for TLS)",
        )
    })
}

/// 32 bytes, base64 (standard or URL-safe alphabet, padded or not).
fn encryption_key(text: &str) -> Result<[u8; 32], ConfigError> {
    let key = format!("{PATH}.encryption_key");
    let lenient =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let text = text.trim();
    let bytes = GeneralPurpose::new(&alphabet::STANDARD, lenient)
        .decode(text)
        .or_else(|_| GeneralPurpose::new(&alphabet::URL_SAFE, lenient).decode(text))
        .map_err(|_| {
            ConfigError::key(
                &key,
                "is not base64 (make one with `openssl rand -base64 32`)",
            )
        })?;
    bytes.as_slice().try_into().map_err(|_| {
        ConfigError::key(
            key,
            format!(
                "must be 32 bytes, base64; this one is {} bytes (make one with \
                 `openssl rand -base64 32`)",
                bytes.len()
            ),
        )
    })
}

/// The configured `lock_ttl`, if it outlives the slowest connector's worst case; else an error.
/// Unset: that worst case plus a second.
fn lock_ttl(configured: Option<Dur>, slowest: &Slowest) -> Result<Duration, ConfigError> {
    let worst = slowest.as_ref().map_or(Duration::ZERO, |(_, d)| *d);
    match configured {
        None => Ok(worst + LOCK_SLACK),
        Some(d) if d.0.is_zero() => Err(ConfigError::key(
            format!("{PATH}.lock_ttl"),
            "must be more than 0",
        )),
        Some(d) if d.0 < worst => {
            let (name, _) = slowest
                .as_ref()
                .map_or(("?", ()), |(n, _)| (n.as_str(), ()));
            Err(ConfigError::key(
                format!("{PATH}.lock_ttl"),
                format!(
                    "{d} is shorter than the worst case of connectors.{name} ({}: every attempt \
                     timing out, with the pauses between them); raise it or leave it out",
                    Dur(worst)
                ),
            ))
        }
        Some(d) => Ok(d.0),
    }
}
