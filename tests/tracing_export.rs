//! How spans leave the process, end to end against a real OTLP/HTTP receiver on loopback: a
//! collector that is down costs spans, never requests; the export settings (`max_batch_spans`,
//! `batch_delay`) shape what is posted; a reload turns traces on and off; shutdown flushes.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_spans_never_requests() {
    let r = TraceRig::start().await;
    r.collector.set_down(true);
    let gw = r.gateway(&r.config(Some(r.tracing(1.0)))).await;
    let token = r.project.session("U2carol", &[]);
    for i in 0..20 {
        let reply = gw.get_bearer(&format!("/down/{i}"), &token).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let dropped = eventually(Duration::from_secs(10), || async {
        metric_sample(
            &gw.metrics().await,
            "extoken_trace_spans_dropped_total{reason=\"export_failed\"}",
        ) >= 20.0
    })
    .await;
    assert!(dropped, "{}", gw.metrics().await);
    // Back up: one line each way, then spans arrive again.
    r.collector.set_down(false);
    let tid = "22222222222222222222222222222222";
    let reply = get_traced(&gw, "/up", &token, &traceparent(tid, CLIENT_SPAN, "01")).await;
    assert_eq!(reply.status, 200);
    r.collector.trace(tid, 4).await;
    let log = gw.log_with("trace collector answers again").await;
    assert_eq!(
        log.matches("trace collector unavailable").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("trace collector answers again").count(),
        1,
        "{log}"
    );
    assert!(metric_sample(&gw.metrics().await, "extoken_trace_spans_exported_total") >= 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_turns_traces_on_and_off_and_shutdown_flushes() {
    let r = TraceRig::start().await;
    // No delay after SIGTERM: the exit comes before the export thread's own 1 s batch delay.
    let timing = |c: ConfigBuilder| c.set("shutdown_delay", "0s").set("shutdown_grace", "10s");
    let mut gw = r.gateway(&timing(r.config(None))).await;
    let token = r.project.session("U2dave", &[]);
    let client_tp = traceparent(CLIENT_TRACE, CLIENT_SPAN, "01");
    let get = |path: &str| {
        gw.client
            .get(gw.url(path))
            .bearer_auth(&token)
            .header("traceparent", client_tp.clone())
    };
    // Off: the client's traceparent passes as it came.
    assert_eq!(gw.send(get("/off")).await.status, 200);
    assert_eq!(
        r.backend.last().header("traceparent"),
        Some(client_tp.as_str())
    );

    gw.write_config(&timing(r.config(Some(r.tracing(1.0)))).to_yaml());
    reload(&gw, 1).await;
    assert_eq!(gw.send(get("/on")).await.status, 200);
    let (_, parent, _) = parse(r.backend.last().header("traceparent").unwrap());
    assert_ne!(parent, CLIENT_SPAN);
    r.collector.trace(CLIENT_TRACE, 4).await;

    gw.write_config(&timing(r.config(None)).to_yaml());
    reload(&gw, 2).await;
    let before = r.collector.spans().len();
    assert_eq!(gw.send(get("/off-again")).await.status, 200);
    assert_eq!(
        r.backend.last().header("traceparent"),
        Some(client_tp.as_str())
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.collector.spans().len(), before, "no spans once off");

    // On again, then SIGTERM right after a request: its spans are sent before the exit.
    gw.write_config(&timing(r.config(Some(r.tracing(1.0)))).to_yaml());
    reload(&gw, 3).await;
    let last = "33333333333333333333333333333333";
    let reply = get_traced(&gw, "/last", &token, &traceparent(last, CLIENT_SPAN, "01")).await;
    assert_eq!(reply.status, 200);
    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_exit(Duration::from_secs(30)).await.is_some(),
        "{}",
        gw.log()
    );
    let spans: Vec<SpanRec> = r
        .collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == last)
        .collect();
    assert!(
        spans.iter().any(|s| s.name == "GET api"),
        "flushed at exit: {spans:#?}\n{}",
        gw.log()
    );
}

/// SIGHUP, then waits for the `n`th "config reloaded".
async fn reload(gw: &GatewayProcess, n: usize) {
    gw.signal(libc::SIGHUP);
    let done = eventually(Duration::from_secs(10), || async {
        gw.log().matches("config reloaded").count() >= n
    })
    .await;
    assert!(done, "{}", gw.log());
}

/// `max_batch_spans: 2` with `batch_delay: 1h`: spans leave in full batches of two, at once,
/// and an incomplete batch waits (the defaults, 512 and 1 s, would post these in one request a
/// second later).
#[tokio::test(flavor = "multi_thread")]
async fn the_export_settings_shape_the_batches() {
    let r = TraceRig::start().await;
    let mut t = r.tracing(1.0);
    t["max_batch_spans"] = 2.into();
    t["max_queue_spans"] = 64.into();
    t["batch_delay"] = "1h".into();
    let gw = r.gateway(&r.config(Some(t))).await;
    let token = r.project.session("U2batch", &[]);
    // The key probe's spans may leave a batch half full: its second span completes it.
    let (tid_a, tid_b) = (
        "33333333333333333333333333333333",
        "44444444444444444444444444444444",
    );
    for tid in [tid_a, tid_b] {
        let reply = get_traced(&gw, "/batch", &token, &traceparent(tid, CLIENT_SPAN, "01")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Each request ends 4 spans (the first also mints: 5). With batch_delay 1h, whatever arrives
    // within seconds came in full batches of two.
    let _ = r.collector.trace(tid_b, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (spans, posts) = (r.collector.spans().len(), r.collector.posts());
    assert_eq!(
        spans,
        2 * posts,
        "{spans} spans in {posts} posts: every post is a full batch"
    );
    assert!(posts >= 4, "{posts} posts");
    // An odd span out waits for its batch: nothing more arrives within two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.collector.posts(), posts);
}
