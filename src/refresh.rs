//! Refreshing an expired session at the edge, as Descope's backend SDKs do
//! (`validate_and_refresh_session`): a request on a refreshing route that carries no valid session
//! (none, or an expired one of this project: never a forged one) but a refresh cookie that
//! verifies locally gets a new session from Descope's refresh endpoint, and goes on with it.
//!
//! * One call per refresh token at a time: requests carrying the same refresh token share one
//!   [`Flight`] (keyed by the token's SHA-256; moka's `and_compute_with` makes or keeps it
//!   atomically), whose outcome a `OnceCell` computes once while the others wait.
//! * A flight's outcome is served for `reuse` (a page's assets, the time a browser needs to store
//!   the new cookie), a new session never beyond its own `exp`, a refusal for all of `reuse` (so a
//!   replayed stolen refresh token makes at most one call per `reuse`), Descope being unreachable
//!   for [`UNAVAILABLE_MEMORY`]. Freshness is decided with the injected clock; moka only bounds.
//! * The call itself (`call.rs`) and the cookies the browser gets (`cookies.rs`).

mod call;
mod cookies;

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};

use crate::clock::SharedClock;
use crate::config::{CookieConfig, DescopeConfig};
use crate::extract::{Found, Source};
use crate::metrics::metrics;
use crate::verify::{AuthError, Verifier, VerifyError};

/// How long Descope being unreachable (or answering nonsense) is remembered for one refresh
/// token: long enough to spare an outage the retries of a page's assets, short enough that a user
/// is not locked out by a blip.
const UNAVAILABLE_MEMORY: Duration = Duration::from_secs(1);

/// Refresh tokens whose outcome is remembered at once, at most (each entry is ~1 KiB).
const MAX_FLIGHTS: u64 = 100_000;

/// A new session, as Descope issued it for one refresh token.
#[derive(Debug)]
pub(crate) struct Refreshed {
    /// The new session JWT (verified like any session before it was accepted).
    pub(crate) session_jwt: String,
    session_exp: u64,
    /// The rotated refresh token and its `exp`, when Descope rotated it.
    refresh_jwt: Option<(String, u64)>,
    /// When the cookies expire by Descope's answer (`cookieExpiration`, else now + `cookieMaxAge`).
    cookie_until: Option<u64>,
}

/// What one call to Descope came to; shared by every request of its flight.
#[derive(Debug, Clone)]
enum Outcome {
    Refreshed(Arc<Refreshed>),
    /// Descope refused the refresh token (revoked, expired, unknown: a 4xx).
    Refused,
    /// Descope could not be asked (down, slow past `timeout`, a 5xx, a reply that is no session).
    Unavailable,
}

/// One refresh token's call and its outcome, for as long as it is served.
struct Flight {
    started: Instant,
    outcome: tokio::sync::OnceCell<Outcome>,
}

impl Flight {
    /// Whether this flight still answers for its refresh token at `now` (`unix` for the session's
    /// `exp`). A flight still in the air does.
    fn live(&self, now: Instant, unix: u64, reuse: Duration) -> bool {
        let age = now.saturating_duration_since(self.started);
        match self.outcome.get() {
            None => true,
            Some(Outcome::Refreshed(r)) => age < reuse && r.session_exp > unix,
            Some(Outcome::Refused) => age < reuse,
            Some(Outcome::Unavailable) => age < UNAVAILABLE_MEMORY.min(reuse),
        }
    }
}

/// Why a request could not be refreshed; each has its answer (see `Answer::refresh_failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RefreshError {
    /// The refresh cookie is not a valid refresh token of this project: no call was made.
    #[error("the refresh token is not valid")]
    Invalid(VerifyError),
    #[error("Descope refused the refresh token")]
    Refused,
    #[error("the session expired and could not be refreshed")]
    Unavailable,
}

/// The refresh endpoint's client and the flights in progress or remembered.
pub(crate) struct Refresher {
    client: reqwest::Client,
    /// `{base_url}/v1/auth/refresh`.
    url: String,
    project_id: String,
    timeout: Duration,
    reuse: Duration,
    max_bytes: usize,
    cookie: CookieConfig,
    session_cookie: String,
    refresh_cookie: String,
    clock: SharedClock,
    flights: moka::future::Cache<[u8; 32], Arc<Flight>>,
}

impl Refresher {
    pub(crate) fn new(cfg: &DescopeConfig, client: reqwest::Client, clock: SharedClock) -> Self {
        let r = &cfg.refresh;
        Refresher {
            client,
            url: format!("{}/v1/auth/refresh", cfg.base_url()),
            project_id: cfg.project_id.clone(),
            timeout: r.timeout.0,
            reuse: r.reuse.0,
            max_bytes: r.max_bytes,
            cookie: r.cookie.clone(),
            session_cookie: cfg.session_cookie.clone(),
            refresh_cookie: cfg.refresh_cookie.clone(),
            clock,
            // Only a bound: moka's clock is its own, so freshness is decided by `Flight::live`.
            flights: moka::future::Cache::builder()
                .max_capacity(MAX_FLIGHTS)
                // A flight in the air lives at most `timeout`: it is never dropped mid-call.
                .time_to_live(r.reuse.0 + r.timeout.0 + Duration::from_secs(1))
                .build(),
        }
    }

    /// The name of the cookie the refresh token comes in.
    pub(crate) fn refresh_cookie(&self) -> &str {
        &self.refresh_cookie
    }

    /// A new session for the refresh token `dsr`: verified locally first (a token that does not
    /// verify makes no call), then one call per token per flight, shared by concurrent requests.
    pub(crate) async fn refresh(
        &self,
        dsr: &str,
        verifier: &Verifier,
    ) -> Result<Arc<Refreshed>, RefreshError> {
        if let Err(e) = verifier.verify_refresh(dsr).await {
            count("invalid");
            return Err(RefreshError::Invalid(e));
        }
        let flight = self.flight(session_key(dsr)).await;
        let mut called = false;
        let outcome = flight
            .outcome
            .get_or_init(|| {
                called = true;
                self.call(dsr, verifier)
            })
            .await;
        count(match (outcome, called) {
            (Outcome::Refreshed(_), true) => "refreshed",
            (Outcome::Refreshed(_), false) => "reused",
            (Outcome::Refused, true) => "refused",
            (Outcome::Unavailable, true) => "unavailable",
            (_, false) => "rate_limited",
        });
        match outcome {
            Outcome::Refreshed(r) => Ok(r.clone()),
            Outcome::Refused => Err(RefreshError::Refused),
            Outcome::Unavailable => Err(RefreshError::Unavailable),
        }
    }

    /// The live flight for `key`, or a new one in its place: decided atomically per key, so
    /// concurrent requests get the same flight.
    async fn flight(&self, key: [u8; 32]) -> Arc<Flight> {
        let (now, unix, reuse) = (self.clock.now(), self.clock.unix(), self.reuse);
        let decided = self
            .flights
            .entry(key)
            .and_compute_with(|e| {
                std::future::ready(match e {
                    Some(e) if e.value().live(now, unix, reuse) => Op::Nop,
                    _ => Op::Put(Arc::new(Flight {
                        started: now,
                        outcome: tokio::sync::OnceCell::new(),
                    })),
                })
            })
            .await;
        match decided {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                e.into_value()
            }
            // Neither is produced by the closure above; a flight of its own is still correct.
            CompResult::Removed(_) | CompResult::StillNone(_) => Arc::new(Flight {
                started: now,
                outcome: tokio::sync::OnceCell::new(),
            }),
        }
    }
}

/// Whether a request whose session did not verify with `error` may be refreshed: it carried none,
/// or a session cookie that is this project's session and only expired. `AuthError::Expired`
/// comes only after the signature was checked, so the claims read here are the signed ones; a
/// forged token, another project's, a refresh token sent as the session, or a Bearer (an API
/// client refreshes itself) never is.
pub(crate) fn may_refresh(found: Option<Found<'_>>, error: &VerifyError, project: &str) -> bool {
    match (found, error) {
        (None, VerifyError::Invalid(AuthError::Missing)) => true,
        (Some(f), VerifyError::Invalid(AuthError::Expired)) if f.source == Source::Cookie => {
            let mut is_refresh = true;
            let ours = crate::extract::unverified_issuer_is(f.token, |iss| {
                crate::verify::issuer_matches(iss, project)
            });
            if ours {
                is_refresh = crate::extract::unverified_claim_is(f.token, "drn", "DSR");
            }
            ours && !is_refresh
        }
        _ => false,
    }
}

fn session_key(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

fn count(result: &str) {
    metrics()
        .session_refresh_total
        .with_label_values(&[result])
        .inc();
}

#[cfg(test)]
mod tests;
