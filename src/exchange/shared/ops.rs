//! Every Redis operation, bounded, counted and timed; and whether Redis is usable now.
//!
//! An operation that fails or takes longer than `operation_timeout` is a miss to the caller, who
//! then mints locally and serves the request as without a shared cache. Results are counted in
//! `extoken_shared_cache_operations_total{op,result}` and timed in
//! `extoken_shared_cache_operation_duration_seconds{op}`. The state (usable or not) is logged when
//! it changes, never per request. After a connection failure or a timeout the shared level is
//! skipped (`result="skipped"`) for [`PAUSE`], so a dead or hung Redis costs one timeout a
//! second, not one per request; the connection is remade meanwhile by the next try.

use crate::telemetry::trace;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Cmd, FromRedisValue, RedisError};

use super::connection::Connection;

/// How long the shared level is skipped after Redis was unreachable or too slow.
pub(crate) const PAUSE: Duration = Duration::from_secs(1);

/// The operations, as the `op` label says them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Get,
    Lock,
    Set,
    Unlock,
    /// The fleet's spacing of evictions (`SET <name>:evicted NX PX evict_min_interval`).
    EvictGuard,
    Delete,
    Publish,
    Subscribe,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Lock => "lock",
            Op::Set => "set",
            Op::Unlock => "unlock",
            Op::EvictGuard => "evict_guard",
            Op::Delete => "delete",
            Op::Publish => "publish",
            Op::Subscribe => "subscribe",
        }
    }
}

/// Redis could not be used for this operation (already counted and, on a change, logged).
#[derive(Debug)]
pub(crate) struct Unavailable;

pub(crate) struct Ops {
    pub(crate) conn: Connection,
    timeout: Duration,
    usable: AtomicBool,
    /// Milliseconds after `epoch` until which the shared level is skipped.
    paused_until: AtomicU64,
    epoch: Instant,
}

pub(crate) fn count(op: Op, result: &str) {
    crate::metrics::metrics()
        .shared_cache_operations_total
        .with_label_values(&[op.label(), result])
        .inc();
}

impl Ops {
    pub(crate) fn new(conn: Connection, timeout: Duration) -> Ops {
        Ops {
            conn,
            timeout,
            usable: AtomicBool::new(true),
            paused_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `cmd` within `operation_timeout`; `result` names a reply for the metric (`hit`,
    /// `miss`, `ok`, ...).
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        op: Op,
        cmd: &Cmd,
        result: impl FnOnce(&T) -> &'static str,
    ) -> Result<T, Unavailable> {
        if self.now_ms() < self.paused_until.load(Ordering::Relaxed) {
            count(op, "skipped");
            return Err(Unavailable);
        }
        // A measurement, not a freshness decision: real time.
        let start = Instant::now();
        let span = trace::Span::client("shared_cache");
        span.set("db.system.name", "redis");
        span.set("db.operation.name", op.label());
        let reply = tokio::time::timeout(self.timeout, self.conn.query::<T>(cmd)).await;
        crate::metrics::metrics()
            .shared_cache_operation_duration_seconds
            .with_label_values(&[op.label()])
            .observe(start.elapsed().as_secs_f64());
        match reply {
            Ok(Ok(v)) => {
                let r = result(&v);
                span.set("extoken.result", r);
                count(op, r);
                self.answered();
                Ok(v)
            }
            Ok(Err(e)) => {
                span.fail("error");
                count(op, "error");
                self.failed(op, &e);
                Err(Unavailable)
            }
            Err(_) => {
                span.fail("timeout");
                count(op, "timeout");
                self.pause();
                self.unusable(op, &format!("no answer within {:?}", self.timeout));
                Err(Unavailable)
            }
        }
    }

    fn failed(&self, op: Op, e: &RedisError) {
        // A server that answers with an error (out of memory, read-only) is not paused for: the
        // next operation may well work. A lost connection is.
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            self.pause();
        }
        // The error's category and code only: never a key, value or URL.
        let what = match e.code() {
            Some(code) => format!("{:?} ({code})", e.kind()),
            None => format!("{:?}", e.kind()),
        };
        self.unusable(op, &what);
    }

    fn pause(&self) {
        let until = self.now_ms() + u64::try_from(PAUSE.as_millis()).unwrap_or(1000);
        self.paused_until.store(until, Ordering::Relaxed);
    }

    fn unusable(&self, op: Op, what: &str) {
        if self.usable.swap(false, Ordering::AcqRel) {
            tracing::warn!(target: "extoken::shared_cache", op = op.label(), "shared token cache (Redis) unavailable: {what}; minting locally until it answers again");
        }
    }

    fn answered(&self) {
        if !self.usable.swap(true, Ordering::AcqRel) {
            tracing::info!(target: "extoken::shared_cache", "shared token cache (Redis) answers again: tokens are shared");
        }
    }
}
