//! An upstream 401, for the fleet. Only a replica whose first level really evicted the token
//! (`cache/evict.rs`: it was still cached, and the key was not evicted within
//! `evict_min_interval` there) comes here; then, in order:
//!
//! 1. **Compare**: read the entry and open it. If Redis holds another token (a replica stored a
//!    newer one since) or none, there is nothing to delete and nobody to tell.
//! 2. **Space, fleet-wide**: `SET <name>:evicted 1 NX PX evict_min_interval`. If another replica
//!    set it (it evicted this key within the interval), stop: the entry stays, and this replica's
//!    next request reads that token back from Redis instead of minting. Without this, N replicas
//!    would each allow one eviction per interval.
//! 3. **Delete only those bytes** (`DEL_IF_SAME`, one script on one key, so a Cluster accepts it):
//!    a value written between the read and the delete survives.
//! 4. **Publish** the entry's name, so the other replicas drop it from their first level.
//!
//! The guard of step 2 is a second key, not part of the script: a Cluster may put it in another
//! slot. If it is taken and the delete then finds the value changed, the fleet only evicts that
//! key later (the safe side: fewer mints). Any Redis failure ends the eviction here (counted in
//! `ops.rs`); the other replicas then serve the token until their own 401 or its expiry.

use std::time::Duration;

use redis::{Cmd, Value};

use super::ops::Op;
use super::SharedCache;
use crate::exchange::cached::CacheKey;
use crate::exchange::ExternalToken;

/// Deletes a key only if it still holds `ARGV[1]`.
const DEL_IF_SAME: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

impl SharedCache {
    /// Forgets `key`'s entry in Redis and tells the other replicas, if it still holds `sent` and
    /// no replica evicted it within `interval`.
    pub(crate) async fn evict(&self, key: &CacheKey, sent: &ExternalToken, interval: Duration) {
        let names = self.names(key);
        let get = Cmd::get(&names.value);
        let Ok(Some(sealed)) = self
            .ops
            .run::<Option<Vec<u8>>>(Op::Get, &get, |v| if v.is_some() { "hit" } else { "miss" })
            .await
        else {
            return;
        };
        let holds_sent = self
            .keys
            .open(&names.value, &sealed)
            .is_some_and(|t| t.token.same_as(sent));
        if !holds_sent {
            return;
        }
        if !interval.is_zero() {
            let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
            let mut guard = Cmd::new();
            guard
                .arg("SET")
                .arg(format!("{}:evicted", names.value))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms);
            let taken = self
                .ops
                .run::<Value>(Op::EvictGuard, &guard, |v| match v {
                    Value::Nil => "held",
                    _ => "acquired",
                })
                .await;
            if matches!(taken, Ok(Value::Nil) | Err(_)) {
                return;
            }
        }
        let mut del = Cmd::new();
        del.arg("EVAL")
            .arg(DEL_IF_SAME)
            .arg(1)
            .arg(&names.value)
            .arg(sealed);
        let deleted = self
            .ops
            .run::<i64>(Op::Delete, &del, |n| if *n == 1 { "ok" } else { "changed" })
            .await;
        if !matches!(deleted, Ok(1)) {
            return;
        }
        let msg = format!("{}:{}", self.instance, names.id);
        let publish = Cmd::publish(self.channel(), msg);
        let _ = self.ops.run::<i64>(Op::Publish, &publish, |_| "ok").await;
    }
}
