//! The `token_exchange` connector (RFC 8693) end to end: a strict token exchange server on
//! loopback ([`Sts`], itself tested in `tests/sts_rfc8693.rs`), the real gateway, a recording
//! backend ([`TeRig`]). Covers each client authentication, what is sent (the session as subject
//! token, audience, resource, scope), `invalid_grant` as a 401, server errors, timeouts and
//! oversized replies as 503, chaining through `subject: {external_token: ...}`, and config errors.
//! What keys its cache: `tests/token_exchange_cache.rs`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn each_client_authentication_exchanges_the_session_and_forwards_the_token() {
    let r = te_rig().await;
    let mut minted = vec![];
    for (path, method) in [
        ("/basic", "client_secret_basic"),
        ("/post", "client_secret_post"),
        ("/jwt", "private_key_jwt"),
    ] {
        let user = format!("U2{}", &path[1..]);
        let session = r.session(&user, 0, &[("roles", json!(["reader"]))]);
        let reply = r.gw.get_bearer(&format!("{path}/orders"), &session).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let calls = r.sts.calls();
        let call = calls.last().unwrap();
        assert_eq!((call.status, call.client_auth), (200, method), "{call:?}");
        assert_eq!(call.all("grant_type"), [TOKEN_EXCHANGE_GRANT]);
        assert_eq!(
            call.all("subject_token"),
            [session.as_str()],
            "the session is the subject"
        );
        assert_eq!(call.all("subject_token_type"), [JWT_TOKEN_TYPE]);
        assert_eq!(call.all("requested_token_type"), [ACCESS_TOKEN_TYPE]);
        assert_eq!(call.all("audience"), [AUDIENCE]);
        assert_eq!(call.all("resource"), [RESOURCE]);
        assert_eq!(call.all("scope"), ["orders.read orders.write"]);
        let token = format!(
            "sts-{user}-{}",
            calls.iter().filter(|c| c.status == 200).count()
        );
        let seen = r.backend.take();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].header("authorization"),
            Some(format!("Bearer {token}").as_str())
        );
        minted.push(token);
        minted.push(session);
    }
    let refs: Vec<&str> = minted.iter().map(String::as_str).collect();
    r.assert_log_clean(&refs);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_session_is_401_and_nothing_is_forwarded() {
    let r = te_rig().await;
    let session = r.session("U2mallory", 0, &[]);
    let reply = r.gw.get_bearer("/basic", &session).await;
    reply.assert_invalid_token("the identity provider of connector basic refused the session");
    assert_eq!(r.backend.count(), 0);
    let call = &r.sts.calls()[0];
    assert_eq!((call.status, call.error), (400, Some("invalid_grant")));
    assert!(
        !reply.body.contains("refused: invalid_grant"),
        "the provider's description stays out"
    );
    // Counted when the request's log line is written, just after the answer went out.
    let series = r#"extoken_auth_failures_total{reason="session_refused"}"#;
    let counted = eventually(Duration::from_secs(5), || async {
        metric_sample(&r.gw.metrics().await, series) == 1.0
    })
    .await;
    assert!(counted, "{}", r.gw.metrics().await);
    // Another user on the same connector is fine.
    assert_eq!(
        r.gw.get_bearer("/basic", &r.session("U2dave", 0, &[]))
            .await
            .status,
        200
    );
    r.assert_log_clean(&[&session]);
}

/// `user`'s request through `/basic` is a 503 with Retry-After naming the connector; nothing was
/// forwarded.
async fn assert_unavailable(r: &TeRig, user: &str) {
    let reply = r.gw.get_bearer("/basic", &r.session(user, 0, &[])).await;
    assert_eq!(reply.status, 503, "{user}: {}", reply.body);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert!(reply.body.contains("basic"), "{}", reply.body);
    assert_eq!(r.backend.count(), 0, "{user}: forwarded without a token");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_timeouts_and_oversized_replies_are_503() {
    let r = te_rig().await;
    r.sts.set_mode(StsMode::ServerError(500));
    assert_unavailable(&r, "U2erin").await;
    r.sts.set_mode(StsMode::ServerError(503));
    assert_unavailable(&r, "U2frank").await;
    r.sts.set_mode(StsMode::Oversized(300 * 1024));
    assert_unavailable(&r, "U2gina").await;
    r.sts.set_mode(StsMode::Slow(Duration::from_secs(3)));
    let start = std::time::Instant::now();
    assert_unavailable(&r, "U2hank").await;
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "the 1s timeout applies"
    );
    // A client the server does not accept (here: a secret it does not know) is our fault, not
    // the session's: 503 as well.
    r.sts.set_mode(StsMode::Issue);
    r.sts.setup(|s| {
        s.clients
            .insert("gw-basic".into(), ClientCred::Basic("rotated".into()));
    });
    assert_unavailable(&r, "U2ivan").await;
    assert_eq!(r.sts.calls().last().unwrap().error, Some("invalid_client"));
    r.assert_log_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connectors_token_can_be_the_subject() {
    let r = te_rig().await;
    let session = r.session("U2judy", 0, &[]);
    let reply = r.gw.get_bearer("/chain", &session).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let calls = r.sts.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].all("subject_token"), [session.as_str()]);
    assert_eq!(calls[1].all("subject_token"), ["sts-U2judy-1"]);
    assert_eq!(calls[1].all("subject_token_type"), [ACCESS_TOKEN_TYPE]);
    assert_eq!(
        r.backend.take()[0].header("authorization"),
        Some("Bearer sts-U2judy-2")
    );
    // Both tokens are cached: the inner one serves /basic too.
    assert_eq!(r.gw.get_bearer("/chain", &session).await.status, 200);
    assert_eq!(r.gw.get_bearer("/basic", &session).await.status, 200);
    assert_eq!(r.sts.calls().len(), 2);
    assert_eq!(
        r.backend.authorizations(),
        ["Bearer sts-U2judy-2", "Bearer sts-U2judy-1"]
    );

    // The session's externalToken claim (from a Descope flow) as the subject.
    r.sts.add_issued("idp-token-from-flow", "U2kim");
    let s = r.session(
        "U2kim",
        0,
        &[("externalToken", json!("idp-token-from-flow"))],
    );
    let reply = r.gw.get_bearer("/claim-chain", &s).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        r.sts.calls()[2].all("subject_token"),
        ["idp-token-from-flow"]
    );
    // Without the claim the inner connector's 401 is the answer; the server is not called.
    let reply =
        r.gw.get_bearer("/claim-chain", &r.session("U2leo", 0, &[]))
            .await;
    reply.assert_invalid_token(NO_EXTERNAL_TOKEN);
    assert_eq!(r.sts.calls().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Config errors, as `extoken check` prints them

fn check(connectors: Value) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ConfigBuilder::new("P2check", "http://127.0.0.1:9/keys");
    for (name, c) in connectors.as_object().unwrap() {
        cfg = cfg.connector(name, c.clone());
    }
    let first = connectors
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let cfg = cfg
        .set("listen", "127.0.0.1:18080")
        .route(RouteSpec::new("/", "http://127.0.0.1:18082").connector(&first));
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, cfg.to_yaml()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code(), text)
}

fn te(extra: Value) -> Value {
    let mut c =
        te_connector(json!({"client_secret_basic": {"client_id": "gw", "client_secret": "s"}}));
    c["token_url"] = "https://idp.example.com/token".into();
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn config_errors_name_their_key() {
    let (code, text) = check(json!({"a": te(json!({}))}));
    assert_eq!(code, Some(0), "{text}");
    for (connectors, want) in [
        (
            json!({"a": te(json!({"subject": {"external_token": "a"}}))}),
            "connectors.a.subject.external_token: a connector cannot exchange its own token",
        ),
        (
            json!({"a": te(json!({"subject": {"external_token": "nope"}}))}),
            "connectors.a.subject.external_token: no connector named \"nope\"",
        ),
        (
            json!({"a": te(json!({"subject": {"external_token": "b"}})), "b": te(json!({"subject": {"external_token": "a"}}))}),
            "connectors.a.subject.external_token: subjects form a cycle: a -> b -> a",
        ),
        (
            json!({"a": te(json!({"scope": ["a b"]}))}),
            "connectors.a.scope[0]",
        ),
        (
            json!({"a": te(json!({"cache_key": []}))}),
            "connectors.a.cache_key: ",
        ),
        (
            json!({"a": te(json!({"cache_key": ["sub", "nsec.level"]}))}),
            "connectors.a.cache_key[1]: nsec holds claims set by the client",
        ),
        (
            json!({"a": te(json!({"cache_key": ["tenants..roles"]}))}),
            "connectors.a.cache_key[0]: ",
        ),
        (
            json!({"a": te(json!({"client_auth": {"private_key_jwt": {"client_id": "gw", "key_file": "missing.pem"}}}))}),
            "connectors.a.client_auth.private_key_jwt.key_file",
        ),
        (
            json!({"a": te(json!({"client_auth": {"client_secret_jwt": {"client_id": "gw"}}}))}),
            "connectors.a: unknown variant `client_secret_jwt`",
        ),
    ] {
        let (code, text) = check(connectors.clone());
        assert_ne!(code, Some(0), "{connectors}");
        assert!(
            text.contains(want),
            "{connectors}: want {want:?} in\n{text}"
        );
    }
}
