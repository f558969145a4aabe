//! The second level of the token cache: Redis, shared by every replica, so a fleet makes one
//! connector call per user and token lifetime instead of one per replica, and every replica
//! forwards the same token.
//!
//! The first level (moka, `cache.rs`) stays in front: only its misses and refresh-aheads come
//! here. On a miss the entry is read from Redis; if it is not there, one replica takes a short
//! lock and mints while the others wait for its value (`lock.rs`). Names and values are HMACs and
//! AES-256-GCM (`crypto.rs`). Redis is never needed to answer: whatever fails or is slow is a local
//! mint, counted and logged once (`ops.rs`). An upstream 401 that the first level evicted deletes
//! the entry — if it still holds the refused token, at most once per `evict_min_interval` for the
//! fleet (`evict.rs`) — and tells the other replicas, through a pub/sub channel, to drop it from
//! their first level (`pubsub.rs`).
//! `config.rs` checks `cache.shared`; `connection.rs` reaches one server, a Cluster or a Sentinel's
//! master.

mod config;
mod connection;
mod crypto;
mod evict;
mod lock;
mod ops;
mod pubsub;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub(crate) use config::{SharedCacheConfig, Slowest};
pub(crate) use pubsub::Listener;

use super::cached::{CacheKey, Margin};
use crate::clock::SharedClock;
use crate::config::ConfigError;
use connection::Connection;
use crypto::Keys;
use ops::Ops;

/// Redis key names of one cache entry.
pub(crate) struct Names {
    /// The HMAC, hex: how replicas name the entry to each other.
    pub(crate) id: String,
    /// The sealed token.
    pub(crate) value: String,
    /// Held by the replica minting it.
    pub(crate) lock: String,
}

pub(crate) struct SharedCache {
    ops: Ops,
    keys: Keys,
    prefix: String,
    lock_ttl: Duration,
    clock: SharedClock,
    margin: Margin,
    /// Ours, random: our own eviction messages are not acted on twice.
    instance: String,
    /// Entry id → the local key, for evictions announced by other replicas.
    known: moka::sync::Cache<String, CacheKey>,
    listening: AtomicBool,
}

impl SharedCache {
    /// The shared level for `cfg` (no I/O: Redis is reached on first use).
    pub(crate) fn new(
        cfg: &SharedCacheConfig,
        clock: SharedClock,
        margin: Margin,
        max_entries: u64,
    ) -> Result<SharedCache, ConfigError> {
        let conn = Connection::new(&cfg.servers)
            .map_err(|e| ConfigError::key("cache.shared", format!("{:?}", e.kind())))?;
        let mut instance = [0u8; 16];
        aws_lc_rs::rand::fill(&mut instance)
            .map_err(|_| ConfigError::key("cache.shared", "no random numbers"))?;
        Ok(SharedCache {
            ops: Ops::new(conn, cfg.operation_timeout),
            keys: Keys::derive(&cfg.encryption_key),
            prefix: cfg.key_prefix.clone(),
            lock_ttl: cfg.lock_ttl,
            clock,
            margin,
            instance: crypto::hex(&instance),
            known: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                // An entry is dropped here at the latest when Redis drops it (its TTL is one
                // token lifetime at most); a day bounds what a forgotten one costs.
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            listening: AtomicBool::new(false),
        })
    }

    pub(crate) fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    fn names(&self, key: &CacheKey) -> Names {
        let id = self.keys.name(key);
        Names {
            value: format!("{}{id}", self.prefix),
            lock: format!("{}{id}:lock", self.prefix),
            id,
        }
    }

    fn channel(&self) -> String {
        format!("{}evict", self.prefix)
    }

    /// Starts listening for other replicas' evictions (once; from a request, on its runtime).
    /// The listener stops when `local` is dropped.
    pub(crate) fn listen(self: &Arc<Self>, local: Weak<dyn Listener>) {
        if !self.listening.swap(true, Ordering::AcqRel) {
            tokio::spawn(pubsub::subscribe(self.clone(), local));
        }
    }

    /// The local key of entry `id`, if this replica has looked it up.
    pub(crate) fn local_key(&self, id: &str) -> Option<CacheKey> {
        self.known.get(id)
    }
}

#[cfg(test)]
mod tests;
