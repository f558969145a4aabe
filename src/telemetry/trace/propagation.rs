//! W3C trace context by hand, for the request path: reading a `traceparent`, deciding a new
//! trace's sampling, ids for an unsampled request, writing a `traceparent`. The SDK is only
//! asked for sampled requests: an unsampled one (99 of 100 at `sample_ratio: 0.01`) makes no
//! span, no context and no allocation but its `traceparent` header (measured in
//! docs/performance.md: through the SDK's propagator and sampler it cost 2.5k instructions).

use std::cell::Cell;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The parent a request's `traceparent` names (version `00`, or a later one read as `00`
/// allows), with its `tracestate`; `None` when absent or malformed (the request then starts a
/// trace, as the W3C spec says).
pub(super) fn parent(headers: &http::HeaderMap) -> Option<SpanContext> {
    let v = headers.get(TRACEPARENT)?.as_bytes();
    if v.len() < 55
        || (v.len() > 55 && v[55] != b'-')
        || v[2] != b'-'
        || v[35] != b'-'
        || v[52] != b'-'
    {
        return None;
    }
    let version = hex_u64(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    let trace_id =
        TraceId::from((u128::from(hex_u64(&v[3..19])?) << 64) | u128::from(hex_u64(&v[19..35])?));
    let span_id = SpanId::from(hex_u64(&v[36..52])?);
    let flags = TraceFlags::new(u8::try_from(hex_u64(&v[53..55])?).ok()?);
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    // Only a sampled parent's state is carried into spans (an unsampled request records none).
    let state = match flags.is_sampled() {
        true => headers
            .get(TRACESTATE)
            .and_then(|s| s.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default(),
        false => TraceState::default(),
    };
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Lower-case hex digits (the spec allows no others) as a number.
fn hex_u64(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |n, c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some((n << 4) | u64::from(d))
    })
}

/// A random 64-bit number: splitmix64 over a per-thread state seeded from the system's random
/// source. Ids only need to be unique and unguessable enough to not collide; no secret rests on
/// them.
pub(super) fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn seed() -> u64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Not expected; the clock still separates the streams.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = t.to_le_bytes();
    }
    u64::from_le_bytes(b)
}

/// A new non-zero span id.
pub(super) fn span_id() -> SpanId {
    SpanId::from(random().max(1))
}

/// A new non-zero trace id.
pub(super) fn trace_id() -> TraceId {
    TraceId::from((u128::from(random()) << 64) | u128::from(random().max(1)))
}

/// Whether a trace that starts here is recorded: `ratio` of them.
pub(super) fn sample_root(ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    // 2^64 · ratio, compared with a uniform 64-bit draw.
    let bound = (ratio.max(0.0) * 18_446_744_073_709_551_616.0) as u64;
    random() < bound
}

/// `traceparent` of a trace id, span id and flags: `00-{trace id}-{span id}-{flags}`.
pub(crate) fn traceparent(
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
) -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 55];
    b[..3].copy_from_slice(b"00-");
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, x) in bytes.iter().enumerate() {
            b[at + 2 * i] = HEX[usize::from(x >> 4)];
            b[at + 2 * i + 1] = HEX[usize::from(x & 0xf)];
        }
    };
    put(3, &trace_id.to_bytes());
    put(36, &span_id.to_bytes());
    put(53, &[flags.to_u8()]);
    b[35] = b'-';
    b[52] = b'-';
    http::HeaderValue::from_bytes(&b).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(tp: &str, ts: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, tp.parse().unwrap());
        if let Some(s) = ts {
            h.insert(TRACESTATE, s.parse().unwrap());
        }
        h
    }

    #[test]
    fn reads_a_valid_traceparent_and_refuses_the_rest() {
        let p = parent(&headers(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("congo=t61rcWkgMzE"),
        ))
        .unwrap();
        assert_eq!(
            format!("{}", p.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{}", p.span_id()), "00f067aa0ba902b7");
        assert!(p.is_sampled() && p.is_remote());
        assert_eq!(p.trace_state().get("congo"), Some("t61rcWkgMzE"));
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever";
        assert!(!parent(&headers(later, None)).unwrap().is_sampled());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parent(&headers(bad, None)).is_none(), "{bad}");
        }
        assert!(parent(&http::HeaderMap::new()).is_none());
    }

    #[test]
    fn writes_what_it_reads() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parent(&headers(tp, None)).unwrap();
        assert_eq!(traceparent(p.trace_id(), p.span_id(), p.trace_flags()), tp);
    }

    #[test]
    fn roots_are_sampled_at_the_ratio() {
        assert!((0..1000).all(|_| sample_root(1.0)));
        assert!((0..1000).all(|_| !sample_root(0.0)));
        let n = (0..100_000).filter(|_| sample_root(0.01)).count();
        assert!((700..1300).contains(&n), "{n} of 100000 at 0.01");
        let ids: std::collections::HashSet<TraceId> = (0..10_000).map(|_| trace_id()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
