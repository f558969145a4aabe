//! `cache:` and `limits:`: how much is remembered and how much a request may be.

use serde::Deserialize;

use super::{Dur, EscapedSlashes, PathParameters};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Bound of the verified-session cache (tokens already verified, kept until they expire).
    #[serde(default = "d_verified_entries")]
    pub verified_sessions: u64,
    /// Bound of the external-token cache (all minting connectors together).
    #[serde(default = "d_verified_entries")]
    pub max_entries: u64,
    /// Refresh-ahead window as a share of the token's lifetime (`10%`).
    #[serde(default = "d_margin")]
    pub margin: Percent,
    /// ... but at least this long.
    #[serde(default = "d_min_margin")]
    pub min_margin: Dur,
    /// How long a connector failure is remembered per key (no call during it).
    #[serde(default = "d_negative_ttl")]
    pub negative_ttl: Dur,
    /// At most one eviction per key this often: an upstream 401 within it leaves the token
    /// cached, so a client cannot turn each 401 it provokes into a mint (`0s`: every 401 evicts).
    #[serde(default = "d_evict_min_interval")]
    pub evict_min_interval: Dur,
    /// `cache.shared`: a Redis second level shared by replicas (absent: each process alone).
    #[serde(default)]
    pub shared: Option<RawSharedCache>,
}

/// The `cache.shared` block, `${VAR}`-expanded, not yet interpreted: its meaning, checks and key
/// paths (`cache.shared.url: ...`) belong to the shared token cache in `crate::exchange`, which
/// uses it, as connector blocks do. It holds the encryption key: `Debug` never shows it.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct RawSharedCache(pub serde_yaml::Value);

impl std::fmt::Debug for RawSharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawSharedCache(..)")
    }
}

fn d_verified_entries() -> u64 {
    100_000
}
fn d_margin() -> Percent {
    Percent(10.0)
}
fn d_min_margin() -> Dur {
    Dur::secs(30)
}
fn d_negative_ttl() -> Dur {
    Dur::secs(1)
}
fn d_evict_min_interval() -> Dur {
    Dur::secs(30)
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            verified_sessions: d_verified_entries(),
            max_entries: d_verified_entries(),
            margin: d_margin(),
            min_margin: d_min_margin(),
            negative_ttl: d_negative_ttl(),
            evict_min_interval: d_evict_min_interval(),
            shared: None,
        }
    }
}

/// A percentage written `10%` (or a bare number).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => s
                .trim()
                .trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .map_err(|_| {
                    serde::de::Error::custom(format!("{s:?} is not a percentage like 10%"))
                })?,
        };
        if !(0.0..=50.0).contains(&v) {
            return Err(serde::de::Error::custom(
                "a margin must be between 0% and 50%",
            ));
        }
        Ok(Percent(v))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest session token accepted; longer ones are refused before any parsing.
    #[serde(default = "d_max_token")]
    pub max_token_bytes: usize,
    /// Largest request head (request line + headers) forwarded; larger ones get a 431.
    #[serde(default = "d_max_header")]
    pub max_header_bytes: usize,
    /// `%2F`/`%5C` in a path: refused (`reject`), or kept encoded as ordinary characters (`keep`).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// `;params` in path segments: routed without them whatever this says; forwarded as sent
    /// (`keep`), without them (`strip`), or refused (`reject`, 400).
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// Header names with `_` (which CGI/WSGI backends read as `-`): `drop`, `reject` (400), `allow`.
    #[serde(default)]
    pub underscore_headers: UnderscoreHeaders,
    /// The whole request head must arrive within this, counted from the accept (first request)
    /// or from the first byte of a later request on a keep-alive connection; pingora's own read
    /// timeout is per read, which a client sending a byte now and then never trips.
    #[serde(default = "d_client_header_timeout", deserialize_with = "de_positive")]
    pub client_header_timeout: Dur,
    /// An idle keep-alive connection is closed after this. Whole seconds: pingora keeps it in
    /// seconds, and 0 would mean "forever" there.
    #[serde(default = "d_keepalive_timeout", deserialize_with = "de_whole_seconds")]
    pub keepalive_timeout: Dur,
    /// Longest pause between two reads of a request body.
    #[serde(default = "d_client_body_timeout", deserialize_with = "de_positive")]
    pub client_body_timeout: Dur,
    /// Longest wait for the client to take a write of the response (nginx's `send_timeout`): a
    /// reader that stops reading, or an HTTP/2 client that never opens its flow-control window,
    /// would otherwise hold the stream and its upstream connection forever.
    #[serde(default = "d_client_send_timeout", deserialize_with = "de_positive")]
    pub client_send_timeout: Dur,
    /// Largest request body forwarded (a route may set its own); unset: no limit. A declared
    /// larger body is refused with `413` before anything is forwarded; a chunked one is cut at the
    /// limit, so the backend never receives it whole.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Client connections open at once on `listen`; beyond it a new one is closed at accept.
    /// Unset: derived from the open-file limit at start (see `crate::listener`).
    #[serde(default, deserialize_with = "de_max_connections")]
    pub max_connections: Option<usize>,
    /// A TLS handshake must complete within this, counted from the accept (the request head's
    /// own deadline starts after it).
    #[serde(default = "d_tls_handshake_timeout", deserialize_with = "de_positive")]
    pub tls_handshake_timeout: Dur,
    /// Streams one HTTP/2 connection may have open at once (advertised in its SETTINGS).
    #[serde(default = "d_h2_streams", deserialize_with = "de_h2_streams")]
    pub h2_max_concurrent_streams: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Removed before forwarding (nginx's `underscores_in_headers off`).
    #[default]
    Drop,
    /// The request is refused with `400`.
    Reject,
    /// Forwarded as received.
    Allow,
}

fn d_max_token() -> usize {
    16 * 1024
}
fn d_max_header() -> usize {
    64 * 1024
}
fn d_client_header_timeout() -> Dur {
    Dur::secs(10)
}
fn d_keepalive_timeout() -> Dur {
    Dur::secs(60)
}
fn d_client_body_timeout() -> Dur {
    Dur::secs(60)
}
fn d_client_send_timeout() -> Dur {
    Dur::secs(60)
}
fn d_tls_handshake_timeout() -> Dur {
    Dur::secs(10)
}
fn d_h2_streams() -> u32 {
    100
}

fn de_h2_streams<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

// Checked while parsing, so the error carries the key path like any type error.
fn de_positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let v = Dur::deserialize(d)?;
    if v.0.is_zero() {
        return Err(serde::de::Error::custom("must be more than 0"));
    }
    Ok(v)
}

fn de_whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let v = Dur::deserialize(d)?;
    if v.0.subsec_nanos() != 0 || v.0.as_secs() == 0 {
        return Err(serde::de::Error::custom(format!(
            "{v} is not a whole number of seconds of at least 1s"
        )));
    }
    Ok(v)
}

fn de_max_connections<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match Option::<usize>::deserialize(d)? {
        Some(0) => Err(serde::de::Error::custom(
            "must be at least 1 (leave it out for the default)",
        )),
        v => Ok(v),
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_token_bytes: d_max_token(),
            max_header_bytes: d_max_header(),
            escaped_slashes: EscapedSlashes::default(),
            path_parameters: PathParameters::default(),
            underscore_headers: UnderscoreHeaders::default(),
            client_header_timeout: d_client_header_timeout(),
            keepalive_timeout: d_keepalive_timeout(),
            client_body_timeout: d_client_body_timeout(),
            client_send_timeout: d_client_send_timeout(),
            max_body_bytes: None,
            max_connections: None,
            tls_handshake_timeout: d_tls_handshake_timeout(),
            h2_max_concurrent_streams: d_h2_streams(),
        }
    }
}
