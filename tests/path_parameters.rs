//! Ways around a route's protection that live in how backends read a request, end to end through
//! the real binary: `;` path parameters (servlet containers map `/api;x/admin` as `/api/admin`),
//! method-override headers and `_method` (Rails and Express act on them), and a Bearer separated
//! from its token by a tab (Django REST framework splits on any whitespace).

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const PROJECT: &str = "P2pathParamsTestProject000";

/// A protected `/api` (an `admin` role needed under `/api/admin`) and an open `/`, one backend.
async fn servlet_like(limits: Option<serde_json::Value>) -> Setup {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let s = Setup::start(PROJECT, vec![key], |c, up| {
        let c = c
            .route(RouteSpec::new("/api", up).name("api").connector("ext"))
            .route(
                RouteSpec::new("/api/admin", up)
                    .name("admin")
                    .connector("ext")
                    .set("require", json!({"roles": {"any": ["admin"]}})),
            )
            .route(RouteSpec::new("/", up).name("open").auth_none());
        match limits {
            Some(l) => c.set("limits", l),
            None => c,
        }
    })
    .await;
    settle(&s).await;
    s
}

/// `Setup` probes `/` for keys, which an open route answers at once: probe a protected path, and
/// forget what the open route forwarded.
async fn settle(s: &Setup) {
    s.gw.wait_keys("/api/x", &s.key.probe_token()).await;
    s.backend.take();
}

#[tokio::test(flavor = "multi_thread")]
async fn path_parameters_cannot_move_a_request_to_a_less_protected_route() {
    let s = servlet_like(None).await;
    // Without a session each of these is the protected `/api/admin` (or `/api`) to a servlet
    // container; the open route must not take them.
    for path in [
        "/api;x/admin",
        "/api;/admin",
        "/api;jsessionid=0/admin",
        "/%61pi;x/admin",
        "/api;a=b;c=d/admin",
        "/api;",
        "/;x/api/admin",
        "/api/admin;x/users",
    ] {
        let r = s.gw.get(path).await;
        assert_eq!(r.status, 401, "{path}: {r:?}");
    }
    assert_eq!(s.backend.count(), 0, "nothing reached the backend");

    // A session without `admin` asking `/api/admin;x/users` is judged by `/api/admin`'s rule.
    let r = s.gw.get_bearer("/api/admin;x/users", &s.token("t")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(s.backend.count(), 0);

    // Forwarded as sent by default (`keep`); with a session the protected route takes it.
    let r =
        s.gw.get_bearer("/api;jsessionid=0/orders", &s.token("t"))
            .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = s.backend.only();
    assert_eq!(seen.uri, "/api;jsessionid=0/orders");
    assert_eq!(seen.header("authorization"), Some("Bearer t"));
    s.backend.take();

    // An escaped `;` is a byte of its segment: `/api%3Bx` is not `/api`, and it is open.
    let r = s.gw.get("/api%3Bx/admin").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.backend.only().uri, "/api%3Bx/admin");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_parameters_strip_and_reject() {
    let s = servlet_like(Some(json!({"path_parameters": "strip"}))).await;
    let r =
        s.gw.get_bearer("/api;x/orders;v=1?q=1;2", &s.token("t"))
            .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.backend.only().uri,
        "/api/orders?q=1;2",
        "the path without its parameters, the query untouched"
    );
    assert_eq!(s.gw.get("/api;x/admin").await.status, 401);
    drop(s);

    let s = servlet_like(Some(json!({"path_parameters": "reject"}))).await;
    for path in ["/api;x/orders", "/public;x", "/x;"] {
        let r = s.gw.get_bearer(path, &s.token("t")).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(
            r.json()["error_description"],
            "the path contains ;parameters",
            "{r:?}"
        );
    }
    // `%3B` is not a parameter; a query's `;` neither.
    assert_eq!(s.gw.get("/x%3By?a;b").await.status, 200);
    assert_eq!(s.backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn method_overrides_are_judged_by_require_methods() {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let s = Setup::start(PROJECT, vec![key], |c, up| {
        c.route(
            RouteSpec::new("/", up)
                .name("api")
                .connector("ext")
                .set("require", json!({"methods": ["GET", "POST"]})),
        )
    })
    .await;
    let t = s.token("t");
    let post = |path: &str| {
        s.gw.client
            .post(s.gw.url(path))
            .header("Authorization", format!("Bearer {t}"))
    };
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "PUT"),
        ("X-Method-Override", "delete"),
        ("X-HTTP-Method-Override", "GET, DELETE"),
    ] {
        let r = s.gw.send(post("/orders/1").header(name, value)).await;
        assert_eq!(r.status, 403, "{name}: {value}: {r:?}");
        assert_eq!(r.json()["rule"], "methods", "{r:?}");
    }
    for q in ["/orders/1?_method=DELETE", "/orders/1?a=1&%5Fmethod=patch"] {
        let r = s.gw.send(post(q)).await;
        assert_eq!(r.status, 403, "{q}: {r:?}");
    }
    assert_eq!(
        s.backend.count(),
        0,
        "no overridden request reached the backend"
    );

    // An override to an allowed method passes, as does a plain allowed request.
    let r =
        s.gw.send(post("/orders/1?_method=get").header("X-HTTP-Method-Override", "GET"))
            .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.backend.only().method, "POST");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tab_separated_bearer_session_is_found_and_removed_on_every_route() {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let s = Setup::start(PROJECT, vec![key], |c, up| {
        c.route(RouteSpec::new("/api", up).name("api").connector("ext"))
            .route(RouteSpec::new("/", up).name("open").auth_none())
    })
    .await;
    settle(&s).await;
    let t = s.token("ext-t");
    for value in [format!("Bearer\t{t}"), format!("bearer \t{t}\t")] {
        let r =
            s.gw.send(
                s.gw.client
                    .get(s.gw.url("/page"))
                    .header("Authorization", &value),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            s.backend.only().header("authorization"),
            None,
            "the session never reaches an auth: none backend"
        );
        s.backend.take();
        // On a protected route the same value is the session.
        let r =
            s.gw.send(
                s.gw.client
                    .get(s.gw.url("/api/x"))
                    .header("Authorization", &value),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            s.backend.only().header("authorization"),
            Some("Bearer ext-t")
        );
        s.backend.take();
    }
}
