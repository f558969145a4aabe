//! Decision mode end to end: the real binary with its HTTP and gRPC decision listeners, asked the
//! way nginx `auth_request`, Traefik ForwardAuth and Envoy `ext_authz` (HTTP and gRPC) ask, and
//! compared with what its own proxy listener does with the same request: one decision.

mod common;

use std::collections::HashMap;

use common::*;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::{json, Value};

/// A gateway with both decision listeners, and the ports they are on.
struct Decider {
    project: Project,
    backend: Backend,
    /// The connector endpoint of route `down`, failing every call (kept alive for it).
    _down: TokenEndpoint,
    /// The config the gateway runs (to reload an edited one).
    config: ConfigBuilder,
    gw: GatewayProcess,
    http: String,
    grpc: String,
}

async fn decider(trusted: &str) -> Decider {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let up = backend.url();
    let down = TokenEndpoint::start(Mode::Status(500)).await;
    let (http_port, grpc_port) = (free_port(), free_port());
    let config = project
        .config()
        .ext_connector()
        .connector("down", down.connector())
        .route(RouteSpec::new("/down", &up).name("down").connector("down"))
        .route(RouteSpec::new("/public", &up).name("public").auth_none())
        .route(
            RouteSpec::new("/admin", &up)
                .name("admin")
                .connector("ext")
                .set("require", json!({"roles": {"any": ["admin"]}})),
        )
        .route(
            RouteSpec::new("/api", &up)
                .name("api")
                .connector("ext")
                .set("require", json!({"methods": ["GET", "PUT"]}))
                .set("identity_headers", json!({"X-User-Id": "sub"})),
        )
        .set("decision", decision_block(http_port, grpc_port, trusted));
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    let gw = project.gateway(&config, how).await;
    let http = format!("127.0.0.1:{http_port}");
    let up = eventually(std::time::Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&http).await.is_ok()
    })
    .await;
    assert!(up, "the decision listener never listened:\n{}", gw.log());
    Decider {
        project,
        backend,
        _down: down,
        config,
        gw,
        http: format!("http://{http}"),
        grpc: format!("http://127.0.0.1:{grpc_port}"),
    }
}

fn decision_block(http: u16, grpc: u16, trusted: &str) -> Value {
    json!({"listen": format!("127.0.0.1:{http}"),
           "grpc_listen": format!("127.0.0.1:{grpc}"),
           "trusted_proxies": [trusted]})
}

/// How one ingress asks about `method path` with the client's `headers`.
#[derive(Clone, Copy, Debug)]
enum Ingress {
    Nginx,
    Traefik,
    EnvoyHttp,
    EnvoyGrpc,
}

const ALL: [Ingress; 4] = [
    Ingress::Nginx,
    Ingress::Traefik,
    Ingress::EnvoyHttp,
    Ingress::EnvoyGrpc,
];

/// A decision as the ingress sees it: status, headers (lower-case) and body.
#[derive(Debug)]
struct Asked {
    status: u16,
    headers: HashMap<String, String>,
    /// Envoy gRPC: `headers_to_remove`; HTTP: `x-envoy-auth-headers-to-remove`, split.
    remove: Vec<String>,
    body: String,
}

impl Decider {
    async fn ask(&self, how: Ingress, method: &str, path: &str, headers: &[(&str, &str)]) -> Asked {
        match how {
            Ingress::EnvoyGrpc => self.ask_grpc(method, path, headers).await,
            _ => self.ask_http(how, method, path, headers).await,
        }
    }

    async fn ask_http(
        &self,
        how: Ingress,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Asked {
        let c = &self.gw.client;
        let mut req = match how {
            Ingress::Nginx => c
                .get(format!("{}/auth", self.http))
                .header("x-original-method", method)
                .header("x-original-uri", path)
                .header("x-forwarded-host", "app.example"),
            Ingress::Traefik => c
                .get(format!("{}/", self.http))
                .header("x-forwarded-method", method)
                .header("x-forwarded-uri", path)
                .header("x-forwarded-host", "app.example")
                .header("x-forwarded-proto", "https"),
            _ => c
                .request(
                    method.parse().unwrap(),
                    format!("{}/envoy{path}", self.http),
                )
                .header("host", "app.example"),
        };
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let r = req.send().await.expect("decision request");
        let status = r.status().as_u16();
        let mut h: HashMap<String, String> = r
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let remove = h
            .remove("x-envoy-auth-headers-to-remove")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let body = r.text().await.unwrap_or_default();
        Asked {
            status,
            headers: h,
            remove,
            body,
        }
    }

    async fn ask_grpc(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Asked {
        let mut client = AuthorizationClient::connect(self.grpc.clone())
            .await
            .expect("gRPC decision listener");
        let mut map: HashMap<String, String> = headers
            .iter()
            .map(|(n, v)| (n.to_lowercase(), v.to_string()))
            .collect();
        map.insert(":authority".into(), "app.example".into());
        let check = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        host: "app.example".into(),
                        scheme: "https".into(),
                        headers: map,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let r: CheckResponse = client.check(check).await.expect("Check").into_inner();
        grpc_asked(r)
    }
}

fn grpc_asked(r: CheckResponse) -> Asked {
    let code = r.status.map_or(-1, |s| s.code);
    match r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(code, 0, "an OkHttpResponse with a failing status");
            let headers = ok
                .headers
                .into_iter()
                .filter_map(|h| h.header)
                .map(|h| (h.key, h.value))
                .collect();
            Asked {
                status: 200,
                headers,
                remove: ok.headers_to_remove,
                body: String::new(),
            }
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_ne!(code, 0, "a DeniedHttpResponse with an OK status");
            let headers = d
                .headers
                .into_iter()
                .filter_map(|h| h.header)
                .map(|h| (h.key, h.value))
                .collect();
            let status = d.status.map_or(0, |s| u16::try_from(s.code).unwrap_or(0));
            Asked {
                status,
                headers,
                remove: Vec::new(),
                body: d.body,
            }
        }
        other => panic!("a CheckResponse without an ok or denied response: {other:?}"),
    }
}

/// Method, path, the client's headers.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

#[tokio::test(flavor = "multi_thread")]
async fn every_ingress_gets_the_proxys_decision() {
    let d = decider("127.0.0.0/8").await;
    let alice = d
        .project
        .session("U2alice", &[("externalToken", json!("ext-alice"))]);
    let boss = d.project.session(
        "U2boss",
        &[
            ("externalToken", json!("ext-boss")),
            ("roles", json!(["admin"])),
        ],
    );
    let bearer_alice = format!("Bearer {alice}");
    let bearer_boss = format!("Bearer {boss}");
    let cookie_alice = format!("DS={alice}; theme=dark");
    let cases: Vec<Case> = vec![
        ("GET", "/api/x", vec![]),
        (
            "GET",
            "/api/x?q=1",
            vec![("authorization", bearer_alice.as_str())],
        ),
        ("GET", "/api/x", vec![("cookie", cookie_alice.as_str())]),
        (
            "POST",
            "/api/x",
            vec![("authorization", bearer_alice.as_str())],
        ),
        ("GET", "/api/x", vec![("authorization", "Bearer not.a.jwt")]),
        (
            "GET",
            "/admin/x",
            vec![("authorization", bearer_alice.as_str())],
        ),
        (
            "GET",
            "/admin/x",
            vec![("authorization", bearer_boss.as_str())],
        ),
        // Canonicalized before routing: this is /admin/x, not a public path.
        ("GET", "/public/%2e%2e/admin/x", vec![]),
        ("GET", "/public/x", vec![]),
        ("GET", "/api%2Fx", vec![]),
        ("GET", "/elsewhere", vec![]),
        // limits.path_parameters: routed as /admin/x.
        ("GET", "/admin;x=1/x", vec![]),
        // A connector that fails: 503, fail closed.
        (
            "GET",
            "/down/x",
            vec![("authorization", bearer_alice.as_str())],
        ),
        // A method override judged by require.methods, as on the proxy.
        (
            "GET",
            "/api/x",
            vec![
                ("authorization", bearer_alice.as_str()),
                ("x-http-method-override", "DELETE"),
            ],
        ),
    ];
    let mut statuses = std::collections::BTreeSet::new();
    for (method, path, headers) in &cases {
        let mut req = d.gw.client.request(method.parse().unwrap(), d.gw.url(path));
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let proxied = d.gw.send(req).await;
        statuses.insert(proxied.status);
        for how in ALL {
            let asked = d.ask(how, method, path, headers).await;
            let what = format!("{how:?} {method} {path} {headers:?}");
            assert_eq!(
                asked.status, proxied.status,
                "{what}: {asked:?} vs {proxied:?}"
            );
            if proxied.status == 200 {
                assert!(asked.body.is_empty(), "{what}: an allow has no body");
                continue;
            }
            assert_eq!(asked.body, proxied.body, "{what}");
            for h in ["www-authenticate", "retry-after", "content-type"] {
                assert_eq!(
                    asked.headers.get(h).map(String::as_str),
                    proxied.header(h),
                    "{what}: {h}"
                );
            }
        }
    }
    // The cases cover every kind of answer.
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        [200, 400, 401, 403, 404, 503]
    );
    // Nothing but the proxied requests reached the backend.
    let allowed = d.backend.count();
    assert_eq!(allowed, 4, "proxied allows only");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_says_what_to_set_and_what_to_remove() {
    let d = decider("127.0.0.1/32").await;
    let alice = d
        .project
        .session("U2alice", &[("externalToken", json!("ext-alice"))]);
    let cookie = format!("theme=dark; DS={alice}; DSR=refresh");
    let headers = [
        ("cookie", cookie.as_str()),
        ("x-user-id", "U2mallory"),
        ("x_user_id", "U2mallory"),
    ];
    for how in ALL {
        let a = d.ask(how, "GET", "/api/x", &headers).await;
        assert_eq!(a.status, 200, "{how:?}: {a:?}");
        let h = |n: &str| a.headers.get(n).map(String::as_str);
        assert_eq!(h("authorization"), Some("Bearer ext-alice"), "{how:?}");
        assert_eq!(h("x-user-id"), Some("U2alice"), "{how:?}");
        assert_eq!(h("cookie"), Some("theme=dark"), "{how:?}");
        if !matches!(how, Ingress::EnvoyGrpc) {
            // Envoy's map cannot hold `x_user_id`'s twin beside it (names are joined): over HTTP
            // the client's underscore copy is seen and removed.
            assert!(
                a.remove.contains(&"x_user_id".to_string()),
                "{how:?}: {a:?}"
            );
        }
        assert!(
            !a.remove.contains(&"x-user-id".to_string()),
            "{how:?}: a set name is never removed"
        );
        assert!(!a.remove.contains(&"cookie".to_string()), "{how:?}");
    }
    // An `auth: none` route: allowed, with the Descope cookies gone (nothing else left: removed).
    let only_ds = format!("DS={alice}");
    for how in ALL {
        let a = d
            .ask(how, "GET", "/public/x", &[("cookie", only_ds.as_str())])
            .await;
        assert_eq!(a.status, 200, "{how:?}: {a:?}");
        assert_eq!(a.headers.get("cookie"), None, "{how:?}");
        assert!(a.remove.contains(&"cookie".to_string()), "{how:?}: {a:?}");
        assert!(
            a.remove.contains(&"x-user-id".to_string()),
            "{how:?}: {a:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_trusted_proxies_are_believed_and_ambiguity_is_refused() {
    let d = decider("10.0.0.0/8").await;
    let alice = d
        .project
        .session("U2alice", &[("externalToken", json!("ext-alice"))]);
    let bearer = format!("Bearer {alice}");
    for how in ALL {
        let a = d
            .ask(
                how,
                "GET",
                "/public/x",
                &[("authorization", bearer.as_str())],
            )
            .await;
        assert_eq!(a.status, 403, "{how:?}: {a:?}");
        let body: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(body["error"], "forbidden", "{how:?}");
    }
    let m = d.gw.metrics().await;
    for p in ["nginx", "traefik", "envoy_http", "envoy_grpc"] {
        let series =
            format!("extoken_decisions_total{{protocol=\"{p}\",result=\"refused\",route=\"-\"}}");
        assert!(metric_sample(&m, &series) >= 1.0, "{series} in\n{m}");
    }

    let d = decider("127.0.0.0/8").await;
    // nginx passes the client's own X-Forwarded-Uri beside the X-Original-URI it set.
    let spoofed = [
        ("x-forwarded-uri", "/public/x"),
        ("authorization", bearer.as_str()),
    ];
    for how in ALL {
        let a = d.ask(how, "GET", "/admin/x", &spoofed).await;
        assert_eq!(a.status, 400, "{how:?}: {a:?}");
        let a = d
            .ask(how, "GET", "/admin/x", &[("x-original-method", "POST")])
            .await;
        assert_eq!(a.status, 400, "{how:?}: {a:?}");
    }
    let (status, body) = d.gw.admin_get("/readyz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let m = d.gw.metrics().await;
    let series = "extoken_decisions_total{protocol=\"nginx\",result=\"bad_request\",route=\"-\"}";
    assert!(metric_sample(&m, series) >= 2.0, "{series} in\n{m}");
    assert!(
        d.gw.log().contains("decision"),
        "an access line per decision"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_applies_to_both_listeners() {
    let d = decider("127.0.0.0/8").await;
    let alice = d
        .project
        .session("U2alice", &[("externalToken", json!("ext-alice"))]);
    let bearer = format!("Bearer {alice}");
    let headers = [("authorization", bearer.as_str())];
    for how in ALL {
        assert_eq!(
            d.ask(how, "GET", "/api/x", &headers).await.status,
            200,
            "{how:?}"
        );
    }
    // Same listeners (bound at start), trusted_proxies changed: nobody here is trusted any more.
    let cfg = d.config.clone().set(
        "decision",
        decision_block(port_of(&d.http), port_of(&d.grpc), "10.0.0.0/8"),
    );
    d.gw.write_config(&cfg.to_yaml());
    d.gw.signal(libc::SIGHUP);
    let applied = eventually(std::time::Duration::from_secs(10), || async {
        metric_sample(
            &d.gw.metrics().await,
            "extoken_config_reloads_total{result=\"ok\"}",
        ) >= 1.0
    })
    .await;
    assert!(applied, "reload not applied:\n{}", d.gw.log());
    for how in ALL {
        let a = d.ask(how, "GET", "/api/x", &headers).await;
        assert_eq!(a.status, 403, "{how:?}: {a:?}");
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_decision_listener_has_the_client_limits() {
    let d = decider("127.0.0.0/8").await;
    // A head that never ends is cut at client_header_timeout (read from the live config at each
    // accept), with the 408 the proxy listener gives.
    let cfg = d
        .config
        .clone()
        .set("limits", json!({"client_header_timeout": "1s"}));
    d.gw.write_config(&cfg.to_yaml());
    d.gw.signal(libc::SIGHUP);
    let applied = eventually(std::time::Duration::from_secs(10), || async {
        metric_sample(
            &d.gw.metrics().await,
            "extoken_config_reloads_total{result=\"ok\"}",
        ) >= 1.0
    })
    .await;
    assert!(applied, "reload not applied:\n{}", d.gw.log());
    let mut s = tokio::net::TcpStream::connect(d.http.trim_start_matches("http://"))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /auth HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, _) =
        tokio::time::timeout(std::time::Duration::from_secs(5), read_response(&mut s))
            .await
            .expect("the decision listener never cut the slow head");
    assert_eq!(status, 408);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}
