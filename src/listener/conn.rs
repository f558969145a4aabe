//! What the client connection adapter ([`super::client_stream`]) and the proxy phases share
//! about one connection: its phase, the deadlines' settings, the last verified session, the
//! client certificate, HTTP/2 requests in flight and an upgraded socket's closing time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::telemetry::ClientCert;
use crate::verify::SessionMemo;

pub(super) const HEAD: u8 = 0;
pub(super) const REQUEST: u8 = 1;
pub(super) const IDLE: u8 = 2;
/// An HTTP/2 connection: the head deadline covers its preface and first SETTINGS only; requests
/// are counted in `h2_active` (see `listener/h2.rs`).
pub(super) const H2: u8 = 3;
/// Upgraded (WebSocket after a `101`): bytes pass both ways; the only deadline is the opening
/// session's expiry, when `close_at_session_expiry` set one (`close_at_ms`).
pub(super) const UPGRADED: u8 = 4;

/// What the adapter and the proxy phases share about one connection.
pub(crate) struct Conn {
    /// [`HEAD`] (reading a head, the deadline runs), [`REQUEST`] (head read: body and response,
    /// pingora's per-read body timeout applies, and for an upgrade request `response_due_ms`),
    /// [`IDLE`] (between requests: the next byte read starts a head), [`UPGRADED`], or [`H2`]
    /// for good.
    pub(super) phase: AtomicU8,
    /// Signalled once the head deadline passed.
    pub(super) expired: Notify,
    /// `keepalive_timeout` of the last request, in ms (0: none set; pingora closes the connection
    /// after the response anyway).
    pub(super) idle_ms: AtomicU64,
    /// The last session verified on this connection.
    pub(super) memo: Mutex<SessionMemo>,
    /// The client certificate verified in the TLS handshake.
    pub(super) client_cert: Option<Arc<ClientCert>>,
    /// HTTP/2: requests in flight, and since when (ms after `born`) none has been.
    pub(super) h2_active: AtomicUsize,
    h2_idle_since_ms: AtomicU64,
    /// Upgraded: when (ms after `born`) the socket is closed, 0 for never.
    pub(super) close_at_ms: AtomicU64,
    /// An upgrade request upstream: when (ms after `born`) its answer is due, 0 for none.
    pub(super) response_due_ms: AtomicU64,
    /// That answer was late: the request failed for the upstream's lateness, not the client's.
    pub(super) response_late: AtomicBool,
    pub(super) born: Instant,
}

impl Default for Conn {
    fn default() -> Conn {
        Conn::new(None, false)
    }
}

impl Conn {
    pub(super) fn new(client_cert: Option<Arc<ClientCert>>, h2: bool) -> Conn {
        Conn {
            phase: AtomicU8::new(if h2 { H2 } else { HEAD }),
            expired: Notify::new(),
            idle_ms: AtomicU64::new(0),
            memo: Mutex::default(),
            client_cert,
            h2_active: AtomicUsize::new(0),
            h2_idle_since_ms: AtomicU64::new(0),
            close_at_ms: AtomicU64::new(0),
            response_due_ms: AtomicU64::new(0),
            response_late: AtomicBool::new(false),
            born: Instant::now(),
        }
    }

    pub(super) fn is_h2(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == H2
    }

    /// `at` as the ms-after-birth `close_at_ms` holds (at least 1: 0 means never).
    pub(super) fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub(super) fn age_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How much longer an HTTP/2 connection may idle (zero: it has idled `keepalive`); `None`
    /// while a request is in flight.
    pub(super) fn h2_idle_left(&self, keepalive: Duration) -> Option<Duration> {
        if self.h2_active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.h2_idle_since_ms.load(Ordering::Acquire);
        let idle = Duration::from_millis(self.age_ms().saturating_sub(since));
        Some(keepalive.saturating_sub(idle))
    }

    /// An HTTP/2 request ended: the idle time starts now if it was the last.
    pub(super) fn h2_request_ended(&self) {
        // Written before the count drops, so an idle check never pairs "none in flight" with
        // an older idle start.
        self.h2_idle_since_ms
            .store(self.age_ms(), Ordering::Release);
        self.h2_active.fetch_sub(1, Ordering::AcqRel);
    }

    pub(super) fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}
