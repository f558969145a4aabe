//! Evictions reach every replica: a replica whose token got an upstream 401 deletes the Redis
//! entry and publishes `<instance>:<entry id>` on `<key_prefix>evict`; every replica subscribes
//! and drops that entry from its first level, so the next request anywhere mints once (under the
//! lock) instead of serving the refused token until it expires.
//!
//! The entry id is the HMAC that names the entry in Redis: no user id travels. The subscription
//! is made on first use and remade (with a pause) whenever the connection is lost; it ends when
//! the cache it serves is dropped (a reload with other `cache:` settings).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;

use super::ops::{count, Op};
use super::SharedCache;

/// How often a quiet subscription checks that its cache still exists.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Pause between subscription attempts.
const RETRY: Duration = Duration::from_secs(1);

/// The first level, told about evictions by other replicas.
#[async_trait::async_trait]
pub(crate) trait Listener: Send + Sync {
    /// Another replica evicted entry `id`: drop it here too.
    async fn evicted(&self, id: &str);
}

/// Subscribes and forwards evictions to `local` until it is dropped.
pub(super) async fn subscribe(shared: Arc<SharedCache>, local: Weak<dyn Listener>) {
    let channel = shared.channel();
    let mut attempt = 0usize;
    let mut was_up = true;
    while local.strong_count() > 0 {
        let sub = async {
            let client = shared.ops.conn.pubsub_client(attempt).await?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(super::connection::CONNECT_TIMEOUT * 2, sub).await {
            Ok(Ok(ps)) => {
                count(Op::Subscribe, "ok");
                if !was_up {
                    tracing::info!(target: "extoken::shared_cache", "listening for evictions again");
                }
                was_up = true;
                if !forward(ps, &shared.instance, &local).await {
                    return;
                }
            }
            Ok(Err(_)) | Err(_) => {
                count(Op::Subscribe, "error");
                if was_up {
                    tracing::warn!(target: "extoken::shared_cache", "cannot listen for evictions by other replicas; retrying every {RETRY:?}");
                }
                was_up = false;
            }
        }
        attempt += 1;
        tokio::time::sleep(RETRY).await;
    }
}

/// Forwards messages until the subscription ends (`true`: subscribe again) or `local` is gone
/// (`false`).
async fn forward(ps: redis::aio::PubSub, instance: &str, local: &Weak<dyn Listener>) -> bool {
    let mut messages = ps.into_on_message();
    loop {
        match tokio::time::timeout(CHECK_EVERY, messages.next()).await {
            Err(_) => {
                if local.strong_count() == 0 {
                    return false;
                }
            }
            Ok(None) => return true,
            Ok(Some(msg)) => {
                let Some(l) = local.upgrade() else {
                    return false;
                };
                let payload = msg.get_payload_bytes();
                let Some((from, id)) = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|p| p.split_once(':'))
                else {
                    continue;
                };
                if from != instance {
                    l.evicted(id).await;
                }
            }
        }
    }
}
