//! The decision tests' harness: a gateway with both decision listeners, and the four ways an
//! ingress asks it (nginx, Traefik, Envoy HTTP over reqwest; Envoy gRPC over a tonic client).

use std::collections::HashMap;

use super::common::*;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::{json, Value};

/// A gateway with both decision listeners, and the ports they are on.
pub struct Decider {
    pub project: Project,
    pub backend: Backend,
    /// The connector endpoint of route `down`, failing every call (kept alive for it).
    _down: TokenEndpoint,
    /// The config the gateway runs (to reload an edited one).
    pub config: ConfigBuilder,
    pub gw: GatewayProcess,
    pub http: String,
    pub grpc: String,
}

pub async fn decider(trusted: &str) -> Decider {
    decider_with(trusted, |c| c).await
}

/// [`decider`] with `extra` applied to its config (limits, ...).
pub async fn decider_with(
    trusted: &str,
    extra: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> Decider {
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
    let config = extra(config);
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

pub fn decision_block(http: u16, grpc: u16, trusted: &str) -> Value {
    json!({"listen": format!("127.0.0.1:{http}"),
           "grpc_listen": format!("127.0.0.1:{grpc}"),
           "trusted_proxies": [trusted]})
}

/// How one ingress asks about `method path` with the client's `headers`.
#[derive(Clone, Copy, Debug)]
pub enum Ingress {
    Nginx,
    /// ingress-nginx's `auth-url`: `X-Original-URL` and `X-Original-Method` (its template).
    K8sNginx,
    Traefik,
    EnvoyHttp,
    EnvoyGrpc,
}

pub const ALL: [Ingress; 5] = [
    Ingress::Nginx,
    Ingress::K8sNginx,
    Ingress::Traefik,
    Ingress::EnvoyHttp,
    Ingress::EnvoyGrpc,
];

/// A decision as the ingress sees it: status, headers (lower-case) and body.
#[derive(Debug)]
pub struct Asked {
    pub status: u16,
    pub headers: HashMap<String, String>,
    /// Envoy gRPC: `headers_to_remove`; HTTP: `x-envoy-auth-headers-to-remove`, split.
    pub remove: Vec<String>,
    pub body: String,
}

impl Decider {
    /// Alice's session token: the user most tests ask for (external token `ext-alice`).
    pub fn alice(&self) -> String {
        self.project.session(
            "U2alice",
            &[("externalToken", serde_json::json!("ext-alice"))],
        )
    }

    pub async fn ask(
        &self,
        how: Ingress,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Asked {
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
            Ingress::K8sNginx => c
                .get(format!("{}/auth", self.http))
                .header("host", "extoken-decision.extoken.svc")
                .header("x-original-url", format!("https://app.example{path}"))
                .header("x-original-method", method)
                .header("x-auth-request-redirect", path)
                .header("x-sent-from", "nginx-ingress-controller"),
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

fn pb_headers(h: Vec<HeaderValueOption>) -> HashMap<String, String> {
    h.into_iter()
        .filter_map(|h| h.header)
        .map(|h| (h.key, h.value))
        .collect()
}

fn grpc_asked(r: CheckResponse) -> Asked {
    let code = r.status.map_or(-1, |s| s.code);
    match r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(code, 0, "an OkHttpResponse with a failing status");
            let headers = pb_headers(ok.headers);
            Asked {
                status: 200,
                headers,
                remove: ok.headers_to_remove,
                body: String::new(),
            }
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_ne!(code, 0, "a DeniedHttpResponse with an OK status");
            let headers = pb_headers(d.headers);
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

pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}
