//! The shutdown handle: whether the process is draining, and how many requests are in flight.
//!
//! Created once by [`crate::server`] and handed to whoever needs it (the proxy counts requests and
//! closes keep-alive while draining, the admin listener fails `/readyz`, the signal watcher flips
//! it and waits for the count to reach zero). A handle, not a global, so every test and every
//! server in one process has its own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Drain {
    /// Counts one request as in flight for as long as the guard lives.
    pub fn enter(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.inner.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// From now on the process is shutting down.
    pub fn begin(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// While draining, answers say `Connection: close` so keep-alive clients reconnect elsewhere.
    pub fn close_if_draining(&self, session: &mut pingora::proxy::Session) {
        if self.draining() {
            session.set_keepalive(None);
        }
    }
}

/// One request in flight (see [`Drain::enter`]).
pub struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_flags_per_handle() {
        let (a, b) = (Drain::default(), Drain::default());
        let g1 = a.enter();
        let g2 = a.clone().enter();
        assert_eq!((a.in_flight(), b.in_flight()), (2, 0));
        drop(g1);
        assert_eq!(a.in_flight(), 1);
        a.begin();
        assert!(a.draining() && !b.draining());
        drop(g2);
        assert_eq!(a.in_flight(), 0);
    }
}
