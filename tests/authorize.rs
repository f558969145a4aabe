//! `require:` rules and identity headers end to end: the real binary between a recording backend
//! and a counting connector endpoint. A refused session gets the 403 naming its rule, and neither
//! the connector nor the backend hears of it; the refusal is counted per route and as an auth
//! failure. Identity headers reach the backend from the verified session, and what a client sends
//! under those names (or their `_` twins) never does, on any route.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

fn requests_total(route: &str, outcome: &str) -> String {
    format!("extoken_requests_total{{outcome=\"{outcome}\",route=\"{route}\"}}")
}

/// Asserts the 403 for `rule`: header, body (the rule, no claim of the session), JSON.
fn assert_denied(r: &Reply, rule: &str) {
    assert_eq!(r.status, 403, "{r:?}");
    let description = format!("the session does not meet require.{rule} of this route");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(r#"Bearer error="insufficient_scope", error_description="{description}""#)
                .as_str()
        ),
        "{r:?}"
    );
    let j = r.json();
    assert_eq!(
        j,
        json!({"error": "insufficient_scope", "error_description": description, "rule": rule})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forbidden_requests_reach_neither_the_connector_nor_the_backend() {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let endpoint = TokenEndpoint::start(OK_10M).await;
    let up = backend.url();
    let config = project
        .config()
        .connector("legacy", endpoint.connector())
        .route(
            RouteSpec::new("/admin", &up)
                .name("admin")
                .connector("legacy")
                .set(
                    "require",
                    json!({"roles": {"any": ["admin", "owner"]}, "methods": ["GET", "POST"]}),
                ),
        )
        .route(
            RouteSpec::new("/docs", &up)
                .name("docs")
                .connector("legacy")
                .set(
                    "require",
                    json!({
                        "tenant": "current",
                        "permissions": {"all": ["docs.write"]},
                        "claims": {"plan": {"in": ["pro", "enterprise"]}},
                    }),
                ),
        );
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    let gw = project.gateway(&config, how).await;
    let send = |method: reqwest::Method, path: &str, token: &str| {
        gw.send(gw.client.request(method, gw.url(path)).bearer_auth(token))
    };
    let get = reqwest::Method::GET;

    // /admin: the roles rule, then the methods rule.
    let viewer = project.session("U2viewer", &[("roles", json!(["viewer"]))]);
    assert_denied(&send(get.clone(), "/admin/users", &viewer).await, "roles");
    let admin = project.session("U2admin", &[("roles", json!(["admin"]))]);
    assert_denied(
        &send(reqwest::Method::DELETE, "/admin/users/7", &admin).await,
        "methods",
    );
    // /docs: tenant scoping, permissions in that tenant, a custom claim.
    let tenants =
        json!({"T1": {"permissions": ["docs.read"]}, "T2": {"permissions": ["docs.write"]}});
    let in_t1 = project.session(
        "U2reader",
        &[
            ("dct", json!("T1")),
            ("tenants", tenants.clone()),
            ("plan", json!("pro")),
        ],
    );
    assert_denied(&send(get.clone(), "/docs/a", &in_t1).await, "permissions");
    let free = project.session(
        "U2free",
        &[
            ("dct", json!("T2")),
            ("tenants", tenants.clone()),
            ("plan", json!("free")),
        ],
    );
    assert_denied(&send(get.clone(), "/docs/a", &free).await, "claims.plan");
    let no_tenant = project.session(
        "U2none",
        &[("tenants", tenants.clone()), ("plan", json!("pro"))],
    );
    assert_denied(&send(get.clone(), "/docs/a", &no_tenant).await, "tenant");

    assert_eq!(backend.count(), 0, "a refused request reached the backend");
    assert_eq!(
        endpoint.calls(),
        0,
        "the connector was called for a refused request"
    );

    // No session is still a 401, not a 403.
    let r = gw.get("/admin/users").await;
    assert_eq!(r.status, 401, "{r:?}");

    // The sessions that meet the rules pass, through the connector.
    let r = send(reqwest::Method::POST, "/admin/users", &admin).await;
    assert_eq!(r.status, 200, "{r:?}");
    let writer = project.session(
        "U2writer",
        &[
            ("dct", json!("T2")),
            ("tenants", tenants),
            ("plan", json!("enterprise")),
        ],
    );
    let r = send(get, "/docs/a", &writer).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = backend.take();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer ext-U2admin-1")
    );
    assert_eq!(
        seen[1].header("authorization"),
        Some("Bearer ext-U2writer-2")
    );
    assert_eq!(endpoint.calls(), 2);

    // Counted per route and as auth failures (after the answer, in the logging phase).
    let want = [
        (requests_total("admin", "forbidden"), 2.0),
        (requests_total("docs", "forbidden"), 3.0),
        (requests_total("admin", "forwarded"), 1.0),
        (requests_total("admin", "unauthorized"), 1.0),
        (
            r#"extoken_auth_failures_total{reason="forbidden"}"#.to_string(),
            5.0,
        ),
    ];
    eventually(Duration::from_secs(5), || async {
        let m = gw.metrics().await;
        want.iter().all(|(s, n)| metric_sample(&m, s) >= *n)
    })
    .await;
    let m = gw.metrics().await;
    for (series, n) in &want {
        assert_eq!(metric_sample(&m, series), *n, "{series} in\n{m}");
    }
}

const SPOOFS: [(&str, &str); 5] = [
    ("X-User-Id", "U2forged"),
    ("x_user_id", "U2forged"),
    ("X-User_Roles", "admin"),
    ("X-Extoken-Identity", "forged.jws.value"),
    ("x_extoken_identity", "forged.jws.value"),
];

#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_come_from_the_session_and_spoofs_never_pass() {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let up = backend.url();
    let pem = extoken::mint::generate_pem().unwrap();
    let config = project
        .config()
        .connector("ext", claim_connector("externalToken"))
        .connector(
            "idsig",
            json!({"type": "jwt", "key_file": "id.pem", "issuer": "https://gw.example"}),
        )
        // Underscore names pass in general here: their identity twins still must not.
        .set("limits", json!({"underscore_headers": "allow"}))
        .route(RouteSpec::new("/public", &up).name("public").auth_none())
        .route(RouteSpec::new("/plain", &up).name("plain").connector("ext"))
        .route(
            RouteSpec::new("/api", &up)
                .name("api")
                .connector("ext")
                .set(
                    "identity_headers",
                    json!({"X-User-Id": "sub", "X-Tenant-Id": "dct", "X-User-Roles": "roles",
                           "X-User-Email": "email", "X-Tier": "org.tier"}),
                )
                .set("identity_headers_signed_by", "idsig"),
        );
    let how = Launch {
        admin: true,
        files: &[("id.pem", &pem)],
        ..Launch::default()
    };
    let gw = project.gateway(&config, how).await;
    let with_spoofs = |path: &str, token: Option<&str>| {
        let mut req = gw.client.get(gw.url(path)).header("x_other", "kept");
        for (n, v) in SPOOFS {
            req = req.header(n, v);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        gw.send(req)
    };
    let session = project.session(
        "U2alice",
        &[
            ("externalToken", json!("ext-alice")),
            ("dct", json!("T1")),
            ("roles", json!(["admin", "billing"])),
            ("email", json!("zoë@example.com")),
            ("org", json!({"tier": 2})),
        ],
    );
    let r = with_spoofs("/api/x", Some(&session)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = backend.only();
    backend.take();
    assert_eq!(seen.header("authorization"), Some("Bearer ext-alice"));
    assert_eq!(seen.header("x-user-id"), Some("U2alice"));
    assert_eq!(seen.header("x-tenant-id"), Some("T1"));
    assert_eq!(seen.header("x-user-roles"), Some("admin,billing"));
    assert_eq!(seen.header("x-user-email"), Some("zo%C3%AB@example.com"));
    assert_eq!(seen.header("x-tier"), Some("2"));
    assert_eq!(seen.header("x_user_id"), None);
    assert_eq!(seen.header("x-user_roles"), None);
    assert_eq!(seen.header("x_extoken_identity"), None);
    assert_eq!(
        seen.header("x_other"),
        Some("kept"),
        "underscore_headers: allow"
    );

    // The assertion verifies with the key the admin listener publishes, and states what was sent.
    let jws = seen.header("x-extoken-identity").unwrap();
    assert_ne!(jws, "forged.jws.value");
    let (status, jwks) = gw.admin_get("/.well-known/jwks.json").await.unwrap();
    assert_eq!(status, 200);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&["api"]);
    v.set_issuer(&["https://gw.example"]);
    let data =
        jsonwebtoken::decode::<Value>(jws, &DecodingKey::from_jwk(&set.keys[0]).unwrap(), &v)
            .unwrap();
    assert_eq!(data.header.typ.as_deref(), Some("extoken-identity+jwt"));
    assert_eq!(
        data.claims["hdr"],
        json!({"x-user-id": "U2alice", "x-tenant-id": "T1", "x-user-roles": "admin,billing",
               "x-user-email": "zo%C3%AB@example.com", "x-tier": "2"})
    );

    // A claim the session lacks sends no header, and the client's copy is gone all the same.
    let bare = project.session("U2bob", &[("externalToken", json!("ext-bob"))]);
    let r = with_spoofs("/api/x", Some(&bare)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = backend.take().remove(0);
    assert_eq!(seen.header("x-user-id"), Some("U2bob"));
    for absent in [
        "x-tenant-id",
        "x-user-roles",
        "x-user-email",
        "x_user_id",
        "x-user_roles",
    ] {
        assert_eq!(seen.header(absent), None, "{absent}");
    }

    // Routes without identity headers, with and without a session: every copy removed.
    for (path, token) in [("/public/x", None), ("/plain/x", Some(bare.as_str()))] {
        let r = with_spoofs(path, token).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let seen = backend.take().remove(0);
        for (name, _) in SPOOFS {
            assert_eq!(seen.header(name), None, "{path}: {name} passed");
        }
        assert_eq!(seen.header("x_other"), Some("kept"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_impossible_rules_naming_the_key() {
    let cfg = ConfigBuilder::new("P2check", "http://127.0.0.1:1/jwks")
        .ext_connector()
        .route(
            RouteSpec::new("/", "http://127.0.0.1:1")
                .name("api")
                .connector("ext"),
        )
        .route(
            RouteSpec::new("/a", "http://127.0.0.1:1")
                .connector("ext")
                .set("require", json!({"roles": {"any": []}})),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, cfg.to_yaml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extoken"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[1].require.roles.any: an empty list admits no session"),
        "{err}"
    );
}

/// A reload puts new rules in force; one with an impossible rule is refused and the old rules
/// stay.
#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_new_rules_and_refuses_impossible_ones() {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let config = |roles: Value| {
        project
            .config()
            .connector("ext", claim_connector("externalToken"))
            .route(
                RouteSpec::new("/", &backend.url())
                    .name("api")
                    .connector("ext")
                    .set("require", json!({"roles": roles})),
            )
    };
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    let gw = project
        .gateway(&config(json!({"any": ["admin"]})), how)
        .await;
    let viewer = project.session(
        "U2viewer",
        &[
            ("roles", json!(["viewer"])),
            ("externalToken", json!("ext-v")),
        ],
    );
    assert_denied(&gw.get_bearer("/x", &viewer).await, "roles");

    let reloads = |result: &str| format!("extoken_config_reloads_total{{result=\"{result}\"}}");
    let reloaded = |result: &'static str, n: f64| {
        let series = reloads(result);
        let gw = &gw;
        async move {
            gw.signal(libc::SIGHUP);
            let done = eventually(Duration::from_secs(10), || async {
                metric_sample(&gw.metrics().await, &series) >= n
            })
            .await;
            assert!(done, "no {series} = {n}:\n{}", gw.log());
        }
    };
    gw.write_config(&config(json!({"any": ["admin", "viewer"]})).to_yaml());
    reloaded("ok", 1.0).await;
    let r = gw.get_bearer("/x", &viewer).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(backend.only().header("authorization"), Some("Bearer ext-v"));

    gw.write_config(&config(json!({"any": []})).to_yaml());
    reloaded("error", 1.0).await;
    let why = "routes[0].require.roles.any: an empty list admits no session";
    // The metric may be counted a moment before the line reaches the log file.
    let logged = eventually(Duration::from_secs(5), || async { gw.log().contains(why) }).await;
    assert!(logged, "{}", gw.log());
    let r = gw.get_bearer("/x", &viewer).await;
    assert_eq!(r.status, 200, "the rules in force stay: {r:?}");
}
