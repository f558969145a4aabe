//! What both levels of the token cache speak: the key of an entry ([`CacheKey`]), the token an
//! entry is filled with ([`Fill`]) and its refresh [`Margin`]. The first level (`cache.rs`) and
//! the shared one (`shared.rs`, which the first calls) both use them; here, neither depends on
//! the other for them.
//!
//! A [`Fill`] is a token, freshly minted or read from the shared level, with its lifetime and
//! what is left of it; its [`Margin`] decides when it is refreshed ahead and when it is no longer
//! served, the same way on every replica (from the token's whole lifetime, not from what a
//! replica happened to see of it).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{ExternalToken, Minted};

/// The refresh margin of a token: `margin` of its lifetime, at least `min_margin`, at most a third
/// (so a short-lived token is still served for a while before it is refreshed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Margin {
    share: f64,
    min: Duration,
}

impl Margin {
    /// `share` of the lifetime (0.1 for `10%`), at least `min`.
    pub(crate) fn new(share: f64, min: Duration) -> Margin {
        Margin { share, min }
    }

    pub(crate) fn of(&self, lifetime: Duration) -> Duration {
        lifetime.mul_f64(self.share).max(self.min).min(lifetime / 3)
    }
}

/// A token for the first level, freshly minted or read from the second.
#[derive(Debug, Clone)]
pub(crate) struct Fill {
    pub(crate) token: ExternalToken,
    /// Its whole lifetime (which decides its margin).
    pub(crate) lifetime: Duration,
    /// What is left of it now.
    pub(crate) remaining: Duration,
    /// When it expires, Unix seconds (how replicas compare a refreshed token with an old one).
    pub(crate) expires_at: u64,
    /// Read from the shared cache (not minted by this replica).
    pub(crate) shared: bool,
}

impl Fill {
    pub(crate) fn minted(m: Minted, unix_now: u64) -> Fill {
        Fill {
            expires_at: unix_now.saturating_add(m.lifetime.as_secs()),
            remaining: m.lifetime,
            lifetime: m.lifetime,
            token: m.token,
            shared: false,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub(crate) connector: Arc<str>,
    digest: [u8; 32],
}

impl CacheKey {
    /// `settings` fingerprints the connector's configuration, so a token minted under other
    /// settings (another secret, claims mapping, lifetime) is never served after a reload.
    pub(crate) fn new(
        connector: Arc<str>,
        settings: &[u8; 32],
        inputs: &serde_json::Value,
    ) -> CacheKey {
        // serde_json's Map is ordered (BTreeMap), so equal inputs serialize to equal bytes.
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(settings);
        ctx.update(&serde_json::to_vec(inputs).unwrap_or_default());
        let d = ctx.finish();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.as_ref());
        CacheKey { connector, digest }
    }

    /// SHA-256 of the settings fingerprint and the inputs (no token, no secret, but a user id
    /// could be guessed from it: the shared cache names entries by an HMAC of it instead).
    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{:02x}{:02x}{:02x}{:02x}",
            self.connector, self.digest[0], self.digest[1], self.digest[2], self.digest[3]
        )
    }
}
