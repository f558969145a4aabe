//! The hand-formatted access line: same shape as `tracing-subscriber`'s, one line whatever a client
//! sent, valid JSON in JSON mode, a correct clock.

use super::line::{civil, digits, millis, timestamp};
use super::*;

fn line<'a>(path: &'a str, reason: Option<&'a str>, upstream: Option<u16>) -> Line<'a> {
    Line {
        request_id: "0123456789abcdef0123456789abcdef",
        route: "api",
        method: "GET",
        path,
        status: upstream.unwrap_or(401),
        outcome: if upstream.is_some() {
            "forwarded"
        } else {
            "unauthorized"
        },
        reason,
        error: None,
        duration: Duration::from_micros(12_345),
        upstream_status: upstream,
        upstream_time: upstream.map(|_| Duration::from_micros(7)),
        client_cert: None,
        upgraded: None,
        session_refreshed: false,
        trace: None,
    }
}

fn text(l: &Line<'_>, now: Duration) -> String {
    let mut b = Vec::new();
    l.text(&mut b, now);
    String::from_utf8(b).unwrap()
}

fn json(l: &Line<'_>, now: Duration) -> serde_json::Value {
    let mut b = Vec::new();
    l.json(&mut b, now);
    assert_eq!(b.iter().filter(|&&c| c == b'\n').count(), 1, "one line");
    assert_eq!(b.last(), Some(&b'\n'));
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)))
}

#[test]
fn text_has_tracing_subscribers_shape() {
    let now = Duration::new(1_795_804_741, 123_456_789);
    assert_eq!(
        text(&line("/api/x", None, Some(200)), now),
        "2026-11-27T18:39:01.123456Z  INFO extoken::access: request \
         request_id=0123456789abcdef0123456789abcdef route=\"api\" method=GET path=/api/x \
         status=200 outcome=\"forwarded\" duration_ms=12.345 upstream_status=200 upstream_ms=0.007\n"
    );
    let refused = text(&line("/api/x", Some("expired"), None), now);
    assert!(
        refused.contains(
            " status=401 outcome=\"unauthorized\" reason=\"expired\" duration_ms=12.345\n"
        ),
        "{refused}"
    );
    assert!(!refused.contains("upstream"), "{refused}");
}

#[test]
fn json_has_tracing_subscribers_fields() {
    let now = Duration::new(1_795_804_741, 5_000);
    let j = json(&line("/api/x", None, Some(200)), now);
    assert_eq!(j["timestamp"], "2026-11-27T18:39:01.000005Z");
    assert_eq!(j["level"], "INFO");
    assert_eq!(j["message"], "request");
    assert_eq!(j["target"], "extoken::access");
    assert_eq!(j["route"], "api");
    assert_eq!(j["path"], "/api/x");
    assert_eq!(j["status"], 200);
    assert_eq!(j["outcome"], "forwarded");
    assert_eq!(j["duration_ms"], 12.345);
    assert_eq!(j["upstream_status"], 200);
    assert_eq!(j["upstream_ms"], 0.007);
    assert!(j.get("reason").is_none() && j.get("error").is_none());
    let r = json(&line("/api/x", Some("expired"), None), now);
    assert_eq!(r["reason"], "expired");
    assert!(r.get("upstream_status").is_none() && r.get("upstream_ms").is_none());
    assert!(j.get("session_refreshed").is_none());
}

/// A request that went on with a refreshed session says so, last, in both formats.
#[test]
fn a_refreshed_session_is_a_field() {
    let now = Duration::new(1_795_804_741, 5_000);
    let l = Line {
        session_refreshed: true,
        ..line("/", None, Some(200))
    };
    assert!(text(&l, now).ends_with(" upstream_ms=0.007 session_refreshed=true\n"));
    assert_eq!(json(&l, now)["session_refreshed"], true);
}

#[test]
fn hostile_values_stay_on_one_line_and_round_trip() {
    let nasty = "/a\"b\\c\nd\re\tf\u{1}g\u{7f}h/é";
    let now = Duration::from_secs(0);
    assert_eq!(json(&line(nasty, None, Some(200)), now)["path"], nasty);
    let t = text(&line(nasty, None, Some(200)), now);
    assert_eq!(t.matches('\n').count(), 1, "{t}");
    assert!(
        t.contains(r#"path="/a\"b\\c\nd\re\tf\u0001g\u007fh/é" status="#),
        "{t}"
    );
    // A plain path is written bare, as `tracing`'s Display field was.
    assert!(text(&line("/x/%2F", None, None), now).contains(" path=/x/%2F "));
    assert!(text(&line("", None, None), now).contains(" path=\"\" "));
}

#[test]
fn civil_time_matches_known_dates() {
    for (secs, want) in [
        (0, "1970-01-01T00:00:00"),
        (951_782_399, "2000-02-28T23:59:59"),
        (951_782_400, "2000-02-29T00:00:00"),
        (951_868_800, "2000-03-01T00:00:00"),
        (1_709_164_800, "2024-02-29T00:00:00"),
        (1_735_689_599, "2024-12-31T23:59:59"),
        (4_102_444_800, "2100-01-01T00:00:00"),
        (4_107_542_400, "2100-03-01T00:00:00"),
        (253_402_300_799, "9999-12-31T23:59:59"),
    ] {
        assert_eq!(std::str::from_utf8(&civil(secs)).unwrap(), want, "{secs}");
    }
}

#[test]
fn civil_time_agrees_with_httpdate_day_by_day() {
    // An independent implementation (the `Date` header's) over 150 years of days.
    for day in 0..(150 * 366) {
        let secs = day * 86_400 + 45_296; // 12:34:56
        let ours = String::from_utf8(civil(secs).to_vec()).unwrap();
        let http = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        // "Sun, 06 Nov 1994 12:34:56 GMT"
        let mut p = http.split(' ');
        let (_, d, m, y) = (
            p.next(),
            p.next().unwrap(),
            p.next().unwrap(),
            p.next().unwrap(),
        );
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let mi = months.iter().position(|x| *x == m).unwrap() + 1;
        assert_eq!(ours, format!("{y}-{mi:02}-{d}T12:34:56"), "day {day}");
    }
}

#[test]
fn timestamp_reuses_the_date_within_a_second_and_moves_on() {
    let mut b = Vec::new();
    timestamp(&mut b, Duration::new(86_399, 999_999_000));
    timestamp(&mut b, Duration::new(86_400, 0));
    timestamp(&mut b, Duration::new(86_400, 1_000));
    assert_eq!(
        String::from_utf8(b).unwrap(),
        "1970-01-01T23:59:59.999999Z1970-01-02T00:00:00.000000Z1970-01-02T00:00:00.000001Z"
    );
}

#[test]
fn digits_are_what_the_formatter_writes() {
    for n in [
        0u64,
        1,
        9,
        10,
        99,
        100,
        999,
        1000,
        12_345,
        999_999,
        u64::MAX,
    ] {
        for width in [1usize, 3, 6] {
            let mut b = Vec::new();
            digits(&mut b, n, width);
            assert_eq!(String::from_utf8(b).unwrap(), format!("{n:0width$}"));
        }
    }
    let mut b = Vec::new();
    millis(&mut b, Duration::from_micros(12_345));
    millis(&mut b, Duration::from_micros(7));
    assert_eq!(b, b"12.3450.007");
}

/// A client's `X-Request-Id` is kept only from a trusted proxy (and only when sane); otherwise
/// the request gets a new id.
#[test]
fn request_ids_are_believed_only_from_trusted_proxies() {
    let id = |sent: &str, trusted: bool| {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-request-id", sent).unwrap();
        let mut log = RequestLog::default();
        log.begin(&req, trusted);
        log.request_id().to_string()
    };
    assert_eq!(id("attacker-id", true), "attacker-id");
    let fresh = id("attacker-id", false);
    assert_eq!(fresh.len(), 32, "{fresh}");
    assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()), "{fresh}");
    let insane = id("has space", true);
    assert_eq!(
        insane.len(),
        32,
        "not sane, even from a trusted proxy: {insane}"
    );
}

#[test]
fn a_client_certificate_is_named_by_subject_and_fingerprint() {
    let cert = crate::telemetry::ClientCert {
        subject: "CN=alice \"x\",O=Example".into(),
        sha256: "ab".repeat(32),
    };
    let l = Line {
        client_cert: Some(&cert),
        ..line("/api/x", None, Some(200))
    };
    let now = Duration::new(1_795_804_741, 0);
    let t = text(&l, now);
    assert!(
        t.ends_with(&format!(
            " client_cert_subject=\"CN=alice \\\"x\\\",O=Example\" client_cert_sha256=\"{}\"\n",
            "ab".repeat(32)
        )),
        "{t}"
    );
    let j = json(&l, now);
    assert_eq!(j["client_cert_subject"], "CN=alice \"x\",O=Example");
    assert_eq!(j["client_cert_sha256"], "ab".repeat(32));
}

/// A sampled request's line names its trace and SERVER span, last, in both formats.
#[test]
fn a_traced_request_names_its_trace() {
    let sc = crate::telemetry::trace::w3c_example();
    let l = Line {
        trace: Some(&sc),
        ..line("/", None, Some(200))
    };
    let now = Duration::new(1_795_804_741, 0);
    assert!(text(&l, now)
        .ends_with(" trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7\n"));
    let j = json(&l, now);
    assert_eq!(j["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(j["span_id"], "00f067aa0ba902b7");
}
