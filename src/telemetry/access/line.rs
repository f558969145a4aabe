//! One access line, formatted by hand into a reused buffer in the shape `tracing-subscriber`
//! gives every other line: its text format (`Display` fields bare, `&str` fields quoted) or its
//! JSON, with the same RFC 3339 timestamp.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::Duration;

use crate::telemetry::ClientCert;

/// One access line's fields, in the order they are written.
pub(super) struct Line<'a> {
    pub(super) request_id: &'a str,
    pub(super) route: &'a str,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) status: u16,
    pub(super) outcome: &'a str,
    pub(super) reason: Option<&'a str>,
    pub(super) error: Option<&'a str>,
    pub(super) duration: Duration,
    pub(super) upstream_status: Option<u16>,
    pub(super) upstream_time: Option<Duration>,
    pub(super) client_cert: Option<&'a ClientCert>,
    pub(super) upgraded: Option<(u64, u64)>,
    pub(super) session_refreshed: bool,
    /// A sampled request's SERVER span.
    pub(super) trace: Option<&'a opentelemetry::trace::SpanContext>,
}

impl Line<'_> {
    /// `tracing-subscriber`'s full text format: `Display` fields bare, `&str` fields quoted.
    pub(super) fn text(&self, b: &mut Vec<u8>, now: Duration) {
        timestamp(b, now);
        b.extend_from_slice(b"  INFO extoken::access: request request_id=");
        text_bare(b, self.request_id);
        b.extend_from_slice(b" route=");
        quoted(b, self.route);
        b.extend_from_slice(b" method=");
        text_bare(b, self.method);
        b.extend_from_slice(b" path=");
        text_bare(b, self.path);
        b.extend_from_slice(b" status=");
        digits(b, u64::from(self.status), 1);
        b.extend_from_slice(b" outcome=");
        quoted(b, self.outcome);
        if let Some(r) = self.reason {
            b.extend_from_slice(b" reason=");
            quoted(b, r);
        }
        if let Some(e) = self.error {
            b.extend_from_slice(b" error=");
            quoted(b, e);
        }
        b.extend_from_slice(b" duration_ms=");
        millis(b, self.duration);
        if let Some(s) = self.upstream_status {
            b.extend_from_slice(b" upstream_status=");
            digits(b, u64::from(s), 1);
        }
        if let Some(t) = self.upstream_time {
            b.extend_from_slice(b" upstream_ms=");
            millis(b, t);
        }
        if let Some(c) = self.client_cert {
            b.extend_from_slice(b" client_cert_subject=");
            quoted(b, &c.subject);
            b.extend_from_slice(b" client_cert_sha256=");
            quoted(b, &c.sha256);
        }
        if let Some((from_client, to_client)) = self.upgraded {
            b.extend_from_slice(b" upgraded=true bytes_from_client=");
            digits(b, from_client, 1);
            b.extend_from_slice(b" bytes_to_client=");
            digits(b, to_client, 1);
        }
        if self.session_refreshed {
            b.extend_from_slice(b" session_refreshed=true");
        }
        if let Some(t) = self.trace {
            let _ = write!(b, " trace_id={} span_id={}", t.trace_id(), t.span_id());
        }
        b.push(b'\n');
    }

    /// `tracing-subscriber`'s JSON format with `flatten_event`: timestamp, level, message, the
    /// fields, target.
    pub(super) fn json(&self, b: &mut Vec<u8>, now: Duration) {
        b.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(b, now);
        b.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
        quoted(b, self.request_id);
        b.extend_from_slice(b",\"route\":");
        quoted(b, self.route);
        b.extend_from_slice(b",\"method\":");
        quoted(b, self.method);
        b.extend_from_slice(b",\"path\":");
        quoted(b, self.path);
        b.extend_from_slice(b",\"status\":");
        digits(b, u64::from(self.status), 1);
        b.extend_from_slice(b",\"outcome\":");
        quoted(b, self.outcome);
        if let Some(r) = self.reason {
            b.extend_from_slice(b",\"reason\":");
            quoted(b, r);
        }
        if let Some(e) = self.error {
            b.extend_from_slice(b",\"error\":");
            quoted(b, e);
        }
        b.extend_from_slice(b",\"duration_ms\":");
        millis(b, self.duration);
        if let Some(s) = self.upstream_status {
            b.extend_from_slice(b",\"upstream_status\":");
            digits(b, u64::from(s), 1);
        }
        if let Some(t) = self.upstream_time {
            b.extend_from_slice(b",\"upstream_ms\":");
            millis(b, t);
        }
        if let Some(c) = self.client_cert {
            b.extend_from_slice(b",\"client_cert_subject\":");
            quoted(b, &c.subject);
            b.extend_from_slice(b",\"client_cert_sha256\":");
            quoted(b, &c.sha256);
        }
        if let Some((from_client, to_client)) = self.upgraded {
            b.extend_from_slice(b",\"upgraded\":true,\"bytes_from_client\":");
            digits(b, from_client, 1);
            b.extend_from_slice(b",\"bytes_to_client\":");
            digits(b, to_client, 1);
        }
        if self.session_refreshed {
            b.extend_from_slice(b",\"session_refreshed\":true");
        }
        if let Some(t) = self.trace {
            let _ = write!(
                b,
                ",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                t.trace_id(),
                t.span_id()
            );
        }
        b.extend_from_slice(b",\"target\":\"extoken::access\"}\n");
    }
}

/// Milliseconds with microsecond precision: `12.345`.
pub(super) fn millis(b: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    digits(b, us / 1000, 1);
    b.push(b'.');
    digits(b, us % 1000, 3);
}

/// `n` in decimal, zero-padded to `width` digits: the formatting machinery of `write!` costs ~1k
/// instructions per number, and an access line has four.
pub(super) fn digits(b: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    while n > 0 || tmp.len() - i < width {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    b.extend_from_slice(&tmp[i..]);
}

/// A bare text value: as it is when it is visible ASCII (every path extoken forwards is), else
/// quoted and escaped, so a line can never be split or spoofed by what a client sent.
fn text_bare(b: &mut Vec<u8>, s: &str) {
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_graphic() && c != b'"') {
        b.extend_from_slice(s.as_bytes());
    } else {
        quoted(b, s);
    }
}

/// A quoted value, JSON-escaped (in the text format too: a line stays one line).
fn quoted(b: &mut Vec<u8>, s: &str) {
    b.push(b'"');
    escape(b, s);
    b.push(b'"');
}

/// JSON string escaping (also valid inside the text format's quotes): `"`, `\\` and control
/// characters; other UTF-8 as is.
fn escape(b: &mut Vec<u8>, s: &str) {
    for &c in s.as_bytes() {
        match c {
            b'"' => b.extend_from_slice(b"\\\""),
            b'\\' => b.extend_from_slice(b"\\\\"),
            b'\n' => b.extend_from_slice(b"\\n"),
            b'\r' => b.extend_from_slice(b"\\r"),
            b'\t' => b.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                let _ = write!(b, "\\u{:04x}", c);
            }
            _ => b.push(c),
        }
    }
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber`'s default timer prints it:
/// `2026-11-27T18:25:41.123456Z`. The date part is computed once per second per thread.
pub(super) fn timestamp(b: &mut Vec<u8>, since_epoch: Duration) {
    thread_local! {
        static LAST: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let secs = since_epoch.as_secs();
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        if l.0 != secs {
            *l = (secs, civil(secs));
        }
        b.extend_from_slice(&l.1);
    });
    b.push(b'.');
    digits(b, u64::from(since_epoch.subsec_micros()), 6);
    b.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (Howard Hinnant's civil-from-days).
pub(super) fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 19];
    let mut w = &mut out[..];
    let _ = write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        year.clamp(0, 9999),
        month,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    out
}
