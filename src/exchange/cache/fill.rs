//! What the first level is filled with and how long it serves it: a [`Fill`] is a token, freshly
//! minted or read from the shared level, with its lifetime and what is left of it; its [`Margin`]
//! decides when it is refreshed ahead and when it is no longer served, the same way on every
//! replica (from the token's whole lifetime, not from what a replica happened to see of it).

use std::time::Duration;

use crate::exchange::{ExternalToken, Minted};

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
