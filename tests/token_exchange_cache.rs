//! What keys the `token_exchange` cache, end to end ([`TeRig`]: a strict RFC 8693 server on
//! loopback, the real gateway, a recording backend). The provider is the decision point for each
//! subject token (RFC 8693 §2.1): by default each session is exchanged once and on its own, so a
//! session the provider refuses (here: no `mfa` in `amr`) gets the refusal, never the token
//! exchanged for another session of the same user. `cache_key: [claims]` opts in to per-user
//! reuse, giving up that per-session decision for what the list leaves out.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn each_session_is_exchanged_once_and_on_its_own() {
    let r = te_rig().await;
    let claims = [("roles", json!(["reader"]))];
    let first = r.session("U2carol", 30, &claims);
    assert_eq!(r.gw.get_bearer("/basic/a", &first).await.status, 200);
    assert_eq!(r.gw.get_bearer("/basic/b", &first).await.status, 200);
    assert_eq!(
        r.sts.issued_count(),
        1,
        "the second request is served from the cache"
    );
    // A refreshed session with the same claims is another subject token: the provider decides
    // again.
    let refreshed = r.session("U2carol", 0, &claims);
    assert_ne!(first, refreshed);
    assert_eq!(r.gw.get_bearer("/basic/c", &refreshed).await.status, 200);
    assert_eq!(r.gw.get_bearer("/basic/d", &refreshed).await.status, 200);
    assert_eq!(r.sts.issued_count(), 2);
    assert_eq!(
        r.sts.calls()[1].all("subject_token"),
        [refreshed.as_str()],
        "the new exchange sends the current session"
    );
    assert_eq!(
        r.backend.authorizations(),
        [
            "Bearer sts-U2carol-1",
            "Bearer sts-U2carol-1",
            "Bearer sts-U2carol-2",
            "Bearer sts-U2carol-2"
        ]
    );
}

/// The provider's step-up policy (here: `mfa` in `amr`) is decided per subject token: a session
/// it refuses gets the refusal, not the token exchanged for another session of the same user.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_the_provider_refuses_never_gets_another_sessions_token() {
    let r = te_rig().await;
    r.sts.setup(|s| s.required_amr = Some("mfa".into()));
    let mfa = r.session("U2olga", 30, &[("amr", json!(["pwd", "mfa"]))]);
    let pwd = r.session("U2olga", 0, &[("amr", json!(["pwd"]))]);
    for path in ["/basic", "/per-user-amr"] {
        assert_eq!(r.gw.get_bearer(path, &mfa).await.status, 200, "{path}");
        let reply = r.gw.get_bearer(path, &pwd).await;
        reply.assert_invalid_token(&format!(
            "the identity provider of connector {} refused the session",
            &path[1..].replace('-', "_")
        ));
        // A refusal remembered for the one session does not refuse the other.
        assert_eq!(r.gw.get_bearer(path, &mfa).await.status, 200, "{path}");
    }
    let calls = r.sts.calls();
    assert_eq!(
        calls.iter().map(|c| c.error).collect::<Vec<_>>(),
        [None, Some("invalid_grant"), None, Some("invalid_grant")]
    );
    assert_eq!(
        r.backend.authorizations(),
        [
            "Bearer sts-U2olga-1",
            "Bearer sts-U2olga-1",
            "Bearer sts-U2olga-2",
            "Bearer sts-U2olga-2"
        ],
        "nothing forwarded for the refused session"
    );
    r.backend.take();

    // The documented opt-in: `cache_key` without `amr` reuses the user's token for any of their
    // sessions, so the provider is not asked about the second one.
    assert_eq!(r.gw.get_bearer("/per-user", &mfa).await.status, 200);
    assert_eq!(r.gw.get_bearer("/per-user", &pwd).await.status, 200);
    assert_eq!(r.sts.calls().len(), 5);
    assert_eq!(
        r.backend.authorizations(),
        ["Bearer sts-U2olga-3", "Bearer sts-U2olga-3"]
    );
}

/// With `cache_key`, a refreshed session with the listed claims unchanged reuses the token; a
/// change in one of them is a new exchange.
#[tokio::test(flavor = "multi_thread")]
async fn with_cache_key_the_token_is_reused_for_the_listed_claims() {
    let r = te_rig().await;
    let claims = [
        ("roles", json!(["reader"])),
        ("dct", json!("T1")),
        ("tenants", json!({"T1": {"roles": ["member"]}})),
    ];
    let first = r.session("U2carol", 30, &claims);
    assert_eq!(r.gw.get_bearer("/per-user/a", &first).await.status, 200);
    let mut refreshed_claims = claims.to_vec();
    refreshed_claims.push(("email", json!("carol@example.com")));
    let refreshed = r.session("U2carol", 0, &refreshed_claims);
    assert_eq!(r.gw.get_bearer("/per-user/b", &refreshed).await.status, 200);
    assert_eq!(
        r.sts.issued_count(),
        1,
        "a refreshed session with the same listed claims reuses it"
    );
    let promoted = r.session(
        "U2carol",
        0,
        &[
            ("roles", json!(["reader", "admin"])),
            claims[1].clone(),
            claims[2].clone(),
        ],
    );
    assert_eq!(r.gw.get_bearer("/per-user/c", &promoted).await.status, 200);
    assert_eq!(r.sts.issued_count(), 2, "changed roles: a new exchange");
    let tenant_role = r.session(
        "U2carol",
        0,
        &[
            claims[0].clone(),
            claims[1].clone(),
            ("tenants", json!({"T1": {"roles": ["owner"]}})),
        ],
    );
    assert_eq!(
        r.gw.get_bearer("/per-user/d", &tenant_role).await.status,
        200
    );
    assert_eq!(
        r.sts.issued_count(),
        3,
        "changed tenant roles: a new exchange"
    );
    assert_eq!(
        r.backend.authorizations(),
        [
            "Bearer sts-U2carol-1",
            "Bearer sts-U2carol-1",
            "Bearer sts-U2carol-2",
            "Bearer sts-U2carol-3"
        ]
    );
    // Another user with the same listed claims never shares it.
    let other = r.session("U2dora", 0, &claims);
    assert_eq!(r.gw.get_bearer("/per-user/e", &other).await.status, 200);
    assert_eq!(r.sts.issued_count(), 4);
}
