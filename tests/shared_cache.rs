//! `cache.shared` without a Redis (the interop suite runs it against a real one): a Redis that
//! refuses connections, or accepts them and never answers, costs nothing but sharing — every
//! request is still served (local mints, the first level still coalescing and caching), the
//! failures are counted, and the state change is logged once, not per request. `extoken check`
//! names the key of a bad `cache.shared` block.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn shared(url: &str) -> serde_json::Value {
    json!({"shared": {"url": url, "encryption_key": KEY}})
}

fn ops(text: &str, op: &str, result: &str) -> f64 {
    metric_sample(
        text,
        &format!("extoken_shared_cache_operations_total{{op=\"{op}\",result=\"{result}\"}}"),
    )
}

/// Requests for 3 users, 20 concurrent each, then again: all 200, one mint per user.
async fn serve_three_users(r: &Rig) {
    for user in ["U2ann", "U2ben", "U2cat"] {
        let t = r.session(user, &[]);
        let started = Instant::now();
        assert_eq!(burst(&r.gw, &t, 20).await, vec![200; 20], "{user}");
        assert_eq!(burst(&r.gw, &t, 5).await, vec![200; 5], "{user}: hits");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answers within a bound"
        );
    }
    assert_eq!(
        r.endpoint.calls(),
        3,
        "one local mint per user: the first level still works"
    );
}

fn warnings(log: &str) -> usize {
    log.matches("shared token cache (Redis) unavailable")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_refusing_connections_means_local_mints() {
    // Nothing listens there: every connection attempt is refused at once.
    let closed = format!("redis://127.0.0.1:{}", free_port());
    let r = rig(OK_10M).cache(shared(&closed)).admin().start().await;
    serve_three_users(&r).await;
    let m = r.gw.metrics().await;
    // Refused (or, while redis-rs retries the connection, not answered within the timeout).
    assert!(
        ops(&m, "get", "error") + ops(&m, "get", "timeout") >= 1.0,
        "{m}"
    );
    // After the first failure Redis is skipped for a second instead of being tried per request.
    assert_eq!(
        ops(&m, "get", "error") + ops(&m, "get", "skipped") + ops(&m, "get", "timeout"),
        3.0,
        "one shared lookup per first-level miss: {m}"
    );
    assert_eq!(ops(&m, "get", "hit") + ops(&m, "get", "miss"), 0.0);
    assert_eq!(warnings(&r.gw.log()), 1, "logged once:\n{}", r.gw.log());
    let (status, _) = r.gw.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 200, "readiness does not depend on Redis");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_that_never_answers_means_local_mints_within_the_timeout() {
    // Accepts connections and reads nothing: every operation runs into operation_timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = vec![];
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let r = rig(OK_10M).cache(shared(&url)).admin().start().await;
    serve_three_users(&r).await;
    let m = r.gw.metrics().await;
    assert!(ops(&m, "get", "timeout") >= 1.0, "{m}");
    assert_eq!(warnings(&r.gw.log()), 1, "logged once:\n{}", r.gw.log());
    held.abort();
}

#[test]
fn check_names_the_key_of_a_bad_shared_block() {
    let dir = tempfile::tempdir().unwrap();
    for (shared, key) in [
        (
            json!({"url": "http://r:6379", "encryption_key": KEY}),
            "cache.shared.url:",
        ),
        (
            json!({"url": "redis://r", "encryption_key": "c2hvcnQ="}),
            "cache.shared.encryption_key:",
        ),
        (
            json!({"url": "redis://r", "encryption_key": KEY, "lock_ttl": "1s"}),
            "cache.shared.lock_ttl:",
        ),
    ] {
        let yaml = ConfigBuilder::new("P2checkShared", "http://127.0.0.1:1/k")
            .connector(
                "api",
                json!({"type": "http", "url": "http://127.0.0.1:1/t", "timeout": "2s"}),
            )
            .set("cache", json!({ "shared": shared }))
            .route(RouteSpec::any_path("http://127.0.0.1:1").connector("api"))
            .to_yaml();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(!stderr.contains(KEY));
    }
}
