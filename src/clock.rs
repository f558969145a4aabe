//! Time, injected: every expiry, refresh-ahead and negative-cache decision asks a [`Clock`], so
//! tests move time forward instead of sleeping.
//!
//! `moka` stores and bounds what is cached, but its own clock is private; our code decides
//! freshness with this one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time: a monotonic instant (for intervals) and Unix seconds (for JWT claims).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn unix(&self) -> u64;
}

/// The shared handle every component holds.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The real clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_unix: u64,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock at the real current time, then frozen.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Instant::now(),
            start_unix: SystemClock.unix(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    pub fn advance(&self, d: Duration) {
        let mut o = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        *o += d;
    }

    fn offset(&self) -> Duration {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.offset()
    }
    fn unix(&self) -> u64 {
        self.start_unix.saturating_add(self.offset().as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let (i, u) = (c.now(), c.unix());
        assert_eq!((c.now(), c.unix()), (i, u));
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now() - i, Duration::from_secs(90));
        assert_eq!(c.unix(), u + 90);
        let real = system();
        assert!(real.unix() >= u);
    }
}
