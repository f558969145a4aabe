//! Upgraded connections (WebSocket after a `101`): what bounds them and what ends them.
//!
//! After the `101` a socket may be quiet for long stretches (chat, dashboards), so the request's
//! body and read timeouts no longer apply: the route's `websocket.idle_timeout` is the only idle
//! bound, both ways (the proxy sets it on the client's reads and on the upstream peer). With
//! `close_at_session_expiry`, the client connection's adapter (`listener/client_stream.rs`) ends
//! the socket when the session that opened it expires (plus the leeway): a close frame with code
//! 1008 (policy violation) when no server frame is half written, then the TCP close
//! (`listener/ws_frames.rs` follows the server's frames to know when that is).
//!
//! Open upgraded connections and their bytes are metrics here; the access line of the upgrade
//! request is written when the socket closes, with its duration and bytes each way.

use std::sync::OnceLock;
use std::time::Duration;

use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use crate::config::WebSocketConfig;

/// An upgrade request (`Upgrade` + `Connection: upgrade`, HTTP/1.1): its upstream connection
/// outlives the route's read and write timeouts, so it gets the socket's idle bound instead.
/// pingora fixes a peer's timeouts when it connects, so the wait for the upstream's answer (the
/// `101`) is bounded by the route's `read_timeout` on the client connection's side instead.
pub(crate) fn idle_bound(session: &Session, peer: &mut HttpPeer, ws: &WebSocketConfig) {
    if session.as_downstream().is_upgrade_req() {
        if let Some(answer_within) = peer.options.read_timeout {
            crate::listener::response_due(session, answer_within);
        }
        peer.options.read_timeout = Some(ws.idle_timeout.0);
        peer.options.write_timeout = Some(ws.idle_timeout.0);
    }
}

/// A `101` went to the client: the client's reads get the socket's idle bound, the adapter stops
/// reading requests, and with `close_at_session_expiry` it ends the socket at `session_exp` plus
/// `leeway`. Counted open until [`closed`].
pub(crate) fn opened(
    session: &mut Session,
    ws: &WebSocketConfig,
    session_exp: Option<u64>,
    leeway: Duration,
) {
    session.set_read_timeout(Some(ws.idle_timeout.0));
    let close_at = session_exp
        .filter(|_| ws.close_at_session_expiry)
        .map(|exp| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            // Capped (a century) so no `exp` can overflow the `Instant` arithmetic.
            let left = time_left(exp, now, leeway).min(Duration::from_secs(100 * 365 * 86_400));
            tokio::time::Instant::now() + left
        });
    crate::listener::upgraded(session, close_at);
    metrics().open.inc();
}

/// How long a socket opened by a session expiring at `exp` (Unix seconds) may stay open, `now`
/// being the time since the epoch: to `exp` plus the leeway, to the millisecond (whole seconds
/// would close up to a second late), zero for a session already past it.
fn time_left(exp: u64, now: Duration, leeway: Duration) -> Duration {
    Duration::from_secs(exp)
        .saturating_add(leeway)
        .saturating_sub(now)
}

/// The upgraded connection ended (the `logging` phase).
pub(crate) fn closed() {
    metrics().open.dec();
}

/// Bytes carried, as they pass.
pub(crate) fn carried(direction: &'static str, n: usize) {
    metrics()
        .bytes
        .with_label_values(&[direction])
        .inc_by(n as u64);
}

pub(crate) struct WsMetrics {
    pub(crate) open: IntGauge,
    /// `direction`: `from_client`, `to_client`.
    pub(crate) bytes: IntCounterVec,
    pub(crate) closed_at_shutdown: IntCounter,
}

pub(crate) fn metrics() -> &'static WsMetrics {
    static M: OnceLock<WsMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = &crate::metrics::metrics().registry;
        let m = WsMetrics {
            open: IntGauge::new(
                "extoken_upgraded_connections_open",
                "Upgraded (WebSocket) connections open.",
            )
            .expect("static metric definition"),
            bytes: IntCounterVec::new(
                Opts::new(
                    "extoken_upgraded_bytes_total",
                    "Bytes carried by upgraded connections, by direction.",
                ),
                &["direction"],
            )
            .expect("static metric definition"),
            closed_at_shutdown: IntCounter::new(
                "extoken_upgraded_closed_at_shutdown_total",
                "Upgraded connections still open when shutdown_grace ended.",
            )
            .expect("static metric definition"),
        };
        for c in [
            Box::new(m.open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.bytes.clone()),
            Box::new(m.closed_at_shutdown.clone()),
        ] {
            // Registered once (OnceLock); a second registration could only be a duplicate name.
            let _ = r.register(c);
        }
        for d in ["from_client", "to_client"] {
            m.bytes.with_label_values(&[d]);
        }
        m
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_may_live_until_its_session_expires_plus_the_leeway() {
        let ms = Duration::from_millis;
        let now = Duration::from_secs(1_000) + ms(250);
        assert_eq!(time_left(1_003, now, ms(1_000)), ms(3_750));
        assert_eq!(time_left(1_003, now, Duration::ZERO), ms(2_750));
        // Expired already, and within or past the leeway.
        assert_eq!(time_left(1_000, now, ms(1_000)), ms(750));
        assert_eq!(time_left(990, now, ms(1_000)), Duration::ZERO);
        // No overflow, whatever `exp` says.
        assert!(time_left(u64::MAX, now, ms(1_000)) > Duration::from_secs(1 << 40));
    }
}
