//! OpenTelemetry traces end to end: the real gateway exports to a real OTLP/HTTP receiver on
//! loopback ([`Collector`], protobuf decoded with `opentelemetry-proto`), with an `http`
//! connector endpoint and a backend that record the `traceparent` they get. Covers the span
//! tree (names, kinds, parents, attributes), propagation in and out, the ids on the access line,
//! unsampled requests, a JWKS refetch. How spans leave the process (a collector that is down,
//! the export settings, reload, the flush at shutdown) is in `tracing_export.rs`.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_from_the_client_through_the_connector_to_the_backend() {
    let r = TraceRig::start().await;
    let gw = r.gateway(&r.config(Some(r.tracing(1.0)))).await;
    let token = r
        .project
        .session("U2alice", &[("email", json!("a@example.com"))]);
    let reply = gw
        .send(
            gw.client
                .get(gw.url("/orders/7?secret=q"))
                .bearer_auth(&token)
                .header("traceparent", traceparent(CLIENT_TRACE, CLIENT_SPAN, "01"))
                .header("tracestate", "vendor=x"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let spans = r.collector.trace(CLIENT_TRACE, 6).await;

    let server = one(&spans, "GET api");
    assert_eq!((server.kind, server.parent.as_str()), (SERVER, CLIENT_SPAN));
    assert_eq!(server.service, "edge-test");
    assert_eq!(server.attr("http.request.method"), Some("GET"));
    assert_eq!(
        server.attr("url.path"),
        Some("/orders/7"),
        "never the query"
    );
    assert_eq!(server.attr("http.route"), Some("/"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("extoken.outcome"), Some("forwarded"));
    for (name, kind) in [
        ("verify", INTERNAL),
        ("authorize", INTERNAL),
        ("external_token", INTERNAL),
    ] {
        let s = one(&spans, name);
        assert_eq!((s.kind, &s.parent), (kind, &server.span_id), "{s:?}");
    }
    assert_eq!(
        one(&spans, "verify").attr("extoken.verify.source"),
        Some("first_sight")
    );
    let ext = one(&spans, "external_token");
    assert_eq!(ext.attr("extoken.token.source"), Some("miss"));
    assert_eq!(ext.attr("extoken.connector"), Some("legacy"));
    let call = one(&spans, "connector http");
    assert_eq!((call.kind, &call.parent), (CLIENT, &ext.span_id));
    assert_eq!(call.attr("http.response.status_code"), Some("200"));
    let upstream = one(&spans, "GET");
    assert_eq!((upstream.kind, &upstream.parent), (CLIENT, &server.span_id));
    assert_eq!(upstream.attr("http.response.status_code"), Some("200"));
    assert_eq!(upstream.attr("server.address"), Some("127.0.0.1"));

    // The backend and the connector endpoint joined the trace, under their CLIENT spans; the
    // client's `traceparent` was replaced, not forwarded beside ours; its `tracestate` passes.
    let seen = r.backend.only();
    let (t, parent, flags) = parse(seen.header("traceparent").unwrap());
    assert_eq!(
        (t.as_str(), &parent, flags.as_str()),
        (CLIENT_TRACE, &upstream.span_id, "01")
    );
    assert_eq!(seen.header("tracestate"), Some("vendor=x"));
    let (_, headers) = r.endpoint.bodies()[0].clone();
    let tp = headers
        .iter()
        .find(|(k, _)| k == "traceparent")
        .expect("connector traceparent");
    let (t, parent, _) = parse(&tp.1);
    assert_eq!((t.as_str(), &parent), (CLIENT_TRACE, &call.span_id));

    // No credential in any attribute.
    for s in &spans {
        for v in s.attrs.values() {
            assert!(
                !v.contains(&token) && !v.contains("ext-U2alice") && !v.contains("a@example"),
                "{s:?}"
            );
            assert!(!v.contains("secret=q"), "{s:?}");
        }
    }
    // The access line names the trace and the SERVER span.
    let log = gw.log_with(&format!("span_id={}", server.span_id)).await;
    assert!(
        log.contains(&format!(
            "trace_id={CLIENT_TRACE} span_id={}",
            server.span_id
        )),
        "{log}"
    );

    // Again: the session and the token come from the caches.
    let second = "0af7651916cd43dd8448eb211c80319c";
    let reply = get_traced(
        &gw,
        "/again",
        &token,
        &traceparent(second, CLIENT_SPAN, "01"),
    )
    .await;
    assert_eq!(reply.status, 200);
    let spans = r.collector.trace(second, 5).await;
    let source = one(&spans, "verify")
        .attr("extoken.verify.source")
        .unwrap()
        .to_string();
    assert!(source == "memo" || source == "cache", "{source}");
    assert_eq!(
        one(&spans, "external_token").attr("extoken.token.source"),
        Some("hit")
    );
    assert!(spans.iter().all(|s| s.name != "connector http"));
}

/// A line written during a sampled request's steps carries the ids of the span it was written
/// in (JSON: two more fields); the access line those of the SERVER span.
#[tokio::test(flavor = "multi_thread")]
async fn log_lines_during_a_request_join_its_trace() {
    let r = TraceRig::start().await;
    r.endpoint.set_mode(Mode::Status(500));
    let config = r
        .config(Some(r.tracing(1.0)))
        .set("log", json!({"format": "json"}));
    let gw = r.gateway(&config).await;
    let token = r.project.session("U2erin", &[]);
    let reply = get_traced(
        &gw,
        "/fails",
        &token,
        &traceparent(CLIENT_TRACE, CLIENT_SPAN, "01"),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let spans = r.collector.trace(CLIENT_TRACE, 4).await;
    let server = one(&spans, "GET api");
    let ext = one(&spans, "external_token");
    assert_eq!(
        (ext.status, ext.attr("extoken.reason")),
        (2, Some("connector_unavailable"))
    );
    assert_eq!(server.attr("http.response.status_code"), Some("503"));
    let log = gw.log_with("\"path\":\"/fails\"").await;
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let warn = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no external token"))
        })
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(warn["trace_id"], CLIENT_TRACE, "{warn}");
    assert_eq!(warn["span_id"], server.span_id.as_str(), "{warn}");
    let access = lines.iter().find(|l| l["path"] == "/fails").unwrap();
    assert_eq!(access["trace_id"], CLIENT_TRACE);
    assert_eq!(access["span_id"], server.span_id.as_str());
    // Lines outside any request carry no ids.
    assert!(lines
        .iter()
        .filter(|l| l["target"] == "extoken::lifecycle")
        .all(|l| l.get("trace_id").is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_carries_its_reason_and_a_root_is_sampled() {
    let r = TraceRig::start().await;
    let gw = r.gateway(&r.config(Some(r.tracing(1.0)))).await;
    let reply = gw.get("/orders").await;
    assert_eq!(reply.status, 401);
    let log = gw.log_with("status=401").await;
    let line = log.lines().find(|l| l.contains("status=401")).unwrap();
    let trace_id = line.split("trace_id=").nth(1).expect(line)[..32].to_string();
    let reason = line
        .split("reason=\"")
        .nth(1)
        .expect(line)
        .split('"')
        .next()
        .unwrap();
    let spans = r.collector.trace(&trace_id, 2).await;
    let server = one(&spans, "GET api");
    assert_eq!(server.parent, "", "a root");
    assert_eq!(server.attr("extoken.outcome"), Some("unauthorized"));
    assert_eq!(
        server.attr("extoken.reason"),
        Some(reason),
        "the metrics' word"
    );
    assert_eq!(server.attr("http.response.status_code"), Some("401"));
    let verify = one(&spans, "verify");
    assert_eq!(
        (verify.attr("extoken.reason"), verify.status),
        (Some(reason), 2)
    );
    assert!(spans.iter().all(|s| s.name != "GET"), "no upstream span");
    let m = gw.metrics().await;
    assert!(
        m.contains(&format!(
            "extoken_auth_failures_total{{reason=\"{reason}\"}}"
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsampled_requests_export_nothing_and_the_backend_follows_the_decision() {
    let r = TraceRig::start().await;
    let gw = r.gateway(&r.config(Some(r.tracing(0.0)))).await;
    let token = r.project.session("U2bob", &[]);
    // A client that says "not sampled": the backend gets the same trace, our span, unsampled.
    let reply = get_traced(
        &gw,
        "/a",
        &token,
        &traceparent(CLIENT_TRACE, CLIENT_SPAN, "00"),
    )
    .await;
    assert_eq!(reply.status, 200);
    let (t, parent, flags) = parse(r.backend.last().header("traceparent").unwrap());
    assert_eq!((t.as_str(), flags.as_str()), (CLIENT_TRACE, "00"));
    assert_ne!(parent, CLIENT_SPAN, "replaced by extoken's span");
    // A root at ratio 0: a new trace id, unsampled.
    assert_eq!(gw.get_bearer("/b", &token).await.status, 200);
    let (t, _, flags) = parse(r.backend.last().header("traceparent").unwrap());
    assert_ne!(t, CLIENT_TRACE);
    assert_eq!(flags, "00");
    // A sampled parent is followed whatever the ratio.
    let sampled = "11111111111111111111111111111111";
    let reply = get_traced(&gw, "/c", &token, &traceparent(sampled, CLIENT_SPAN, "01")).await;
    assert_eq!(reply.status, 200);
    r.collector.trace(sampled, 4).await;
    assert!(
        r.collector.spans().iter().all(|s| s.trace_id == sampled),
        "only the sampled trace"
    );
    let log = gw.log_with("path=/c").await;
    let unsampled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("path=/a") || l.contains("path=/b"))
        .collect();
    assert!(
        unsampled.iter().all(|l| !l.contains("trace_id=")),
        "{unsampled:?}"
    );
}

/// A token signed with a key the gateway has not loaded yet: the refetch of the JWKS is a CLIENT
/// span under `verify`, and the verification is a first sight.
#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_refetch_is_a_span_of_the_verification() {
    let r = TraceRig::start().await;
    let gw = r.gateway(&r.config(Some(r.tracing(1.0)))).await;
    let k2 = TestKey::rsa("k2", jsonwebtoken::Algorithm::RS256);
    r.project.jwks.set_keys(&[&r.project.key, &k2]);
    let token = k2.sign(&session("U2frank", &[]));
    let tid = "44444444444444444444444444444444";
    let reply = get_traced(
        &gw,
        "/new-key",
        &token,
        &traceparent(tid, CLIENT_SPAN, "01"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let spans = r.collector.trace(tid, 6).await;
    let verify = one(&spans, "verify");
    assert_eq!(verify.attr("extoken.verify.source"), Some("first_sight"));
    let fetch = one(&spans, "jwks fetch");
    assert_eq!((fetch.kind, &fetch.parent), (CLIENT, &verify.span_id));
    assert_eq!(fetch.attr("http.request.method"), Some("GET"));
    assert_eq!(fetch.attr("http.response.status_code"), Some("200"));
}
