//! One mint per entry across the fleet: read Redis; on a miss take the entry's lock
//! (`SET <name>:lock <owner> NX PX lock_ttl`), read once more (the previous holder may have just
//! stored its value and unlocked) and mint; or, if another replica holds it, wait for its value,
//! polling, and take the lock yourself once it is free (the holder's connector failed) or mint
//! anyway when `lock_ttl` has passed (the holder died). The lock is released only by its owner (compare and delete), so a slow
//! holder whose lock expired cannot release the next one's.
//!
//! A refresh-ahead goes through the same steps, asking for a value newer than the one it
//! replaces: the first replica to refresh mints under the lock, the others find its value.
//! Whenever Redis cannot be used, the token is minted locally and the request served as without a
//! shared cache.

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Value};

use super::crypto::SharedToken;
use super::ops::{Op, Unavailable};
use super::{Names, SharedCache};
use crate::exchange::cached::{CacheKey, Fill};
use crate::exchange::{ExchangeError, Mint};

/// First pause of a replica waiting for another's mint; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(100);

/// Releases a lock only if it is still ours.
const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

impl SharedCache {
    /// The token for `key`: from Redis, or minted (by this replica, under the lock, and shared).
    /// `newer_than` (a refresh-ahead) accepts only a value expiring after that Unix time.
    pub(crate) async fn obtain(
        &self,
        key: &CacheKey,
        newer_than: Option<u64>,
        mint: &Arc<dyn Mint>,
        inputs: &serde_json::Value,
    ) -> Result<Fill, ExchangeError> {
        let names = self.names(key);
        self.known.insert(names.id.clone(), key.clone());
        match self.read(&names, newer_than).await {
            Ok(Some(fill)) => return Ok(fill),
            Ok(None) => {}
            Err(Unavailable) => return self.mint(mint, inputs).await,
        }
        let deadline = tokio::time::Instant::now() + self.lock_ttl;
        let mut pause = FIRST_POLL;
        loop {
            match self.try_lock(&names).await {
                Ok(Some(owner)) => {
                    // The previous holder may have stored its value and unlocked since we read.
                    if let Ok(Some(fill)) = self.read(&names, newer_than).await {
                        self.unlock(&names, &owner).await;
                        return Ok(fill);
                    }
                    return self.mint_and_share(&names, &owner, mint, inputs).await;
                }
                Ok(None) => {}
                Err(Unavailable) => return self.mint(mint, inputs).await,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                // The holder never delivered: mint, and share what we got.
                let fill = self.mint(mint, inputs).await?;
                self.write(&names, &fill).await;
                return Ok(fill);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL);
            match self.read(&names, newer_than).await {
                Ok(Some(fill)) => return Ok(fill),
                Ok(None) => {}
                Err(Unavailable) => return self.mint(mint, inputs).await,
            }
        }
    }

    /// A usable value of `names` from Redis: it opens, is newer than `newer_than`, and has more
    /// than its refresh margin left. `Ok(None)` is a miss.
    async fn read(
        &self,
        names: &Names,
        newer_than: Option<u64>,
    ) -> Result<Option<Fill>, Unavailable> {
        let get = Cmd::get(&names.value);
        let value: Option<Vec<u8>> = self
            .ops
            .run(
                Op::Get,
                &get,
                |v: &Option<Vec<u8>>| {
                    if v.is_some() {
                        "hit"
                    } else {
                        "miss"
                    }
                },
            )
            .await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let Some(t) = self.keys.open(&names.value, &value) else {
            // Another encryption key (a rotation in progress) or a damaged value: a miss.
            super::ops::count(Op::Get, "undecryptable");
            return Ok(None);
        };
        if newer_than.is_some_and(|n| t.expires_at <= n) {
            return Ok(None);
        }
        let remaining = Duration::from_secs(t.expires_at.saturating_sub(self.clock.unix()));
        if remaining <= self.margin.of(t.lifetime) {
            return Ok(None);
        }
        Ok(Some(Fill {
            token: t.token,
            lifetime: t.lifetime,
            remaining,
            expires_at: t.expires_at,
            shared: true,
        }))
    }

    /// `Some(owner)` if this replica now holds the lock of `names`, `None` if another does.
    async fn try_lock(&self, names: &Names) -> Result<Option<String>, Unavailable> {
        let mut owner = [0u8; 16];
        aws_lc_rs::rand::fill(&mut owner).map_err(|_| Unavailable)?;
        let owner = super::crypto::hex(&owner);
        let ms = u64::try_from(self.lock_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut set = Cmd::new();
        set.arg("SET")
            .arg(&names.lock)
            .arg(&owner)
            .arg("NX")
            .arg("PX")
            .arg(ms);
        let reply: Value = self
            .ops
            .run(Op::Lock, &set, |v: &Value| match v {
                Value::Nil => "held",
                _ => "acquired",
            })
            .await?;
        Ok((!matches!(reply, Value::Nil)).then_some(owner))
    }

    async fn mint_and_share(
        &self,
        names: &Names,
        owner: &str,
        mint: &Arc<dyn Mint>,
        inputs: &serde_json::Value,
    ) -> Result<Fill, ExchangeError> {
        let result = self.mint(mint, inputs).await;
        if let Ok(fill) = &result {
            self.write(names, fill).await;
        }
        self.unlock(names, owner).await;
        result
    }

    async fn unlock(&self, names: &Names, owner: &str) {
        let mut unlock = Cmd::new();
        unlock
            .arg("EVAL")
            .arg(UNLOCK)
            .arg(1)
            .arg(&names.lock)
            .arg(owner);
        let _ = self.ops.run::<i64>(Op::Unlock, &unlock, |_| "ok").await;
    }

    /// Mints here (no Redis involved).
    async fn mint(
        &self,
        mint: &Arc<dyn Mint>,
        inputs: &serde_json::Value,
    ) -> Result<Fill, ExchangeError> {
        let m = mint.mint(inputs).await?;
        Ok(Fill::minted(m, self.clock.unix()))
    }

    /// Stores `fill` for the other replicas, for as long as it may be served (its lifetime less
    /// the refresh margin).
    async fn write(&self, names: &Names, fill: &Fill) {
        let serve_for = fill.lifetime.saturating_sub(self.margin.of(fill.lifetime));
        let ms = u64::try_from(serve_for.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return;
        }
        let t = SharedToken {
            token: fill.token.clone(),
            expires_at: fill.expires_at,
            lifetime: fill.lifetime,
        };
        let Some(sealed) = self.keys.seal(&names.value, &t) else {
            return;
        };
        let mut set = Cmd::new();
        set.arg("SET")
            .arg(&names.value)
            .arg(sealed)
            .arg("PX")
            .arg(ms);
        let _ = self.ops.run::<Value>(Op::Set, &set, |_| "ok").await;
    }
}
