//! The traces tests' rig: a Descope project, a backend, an `http` connector endpoint and an
//! OTLP/HTTP receiver, and the gateway configured over them; W3C `traceparent` helpers.

use serde_json::{json, Value};

use super::*;

pub const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const CLIENT_SPAN: &str = "00f067aa0ba902b7";

pub struct TraceRig {
    pub project: Project,
    pub backend: Backend,
    pub endpoint: TokenEndpoint,
    pub collector: Collector,
}

impl TraceRig {
    pub async fn start() -> TraceRig {
        TraceRig {
            project: Project::start().await,
            backend: Backend::start().await,
            endpoint: TokenEndpoint::start(OK_10M).await,
            collector: Collector::start().await,
        }
    }

    /// The config: an `http` connector `legacy` on route `api`, and `tracing` as given.
    pub fn config(&self, tracing: Option<Value>) -> ConfigBuilder {
        let mut legacy = self.endpoint.connector();
        legacy["ttl"] = "10m".into();
        let c = self.project.config().connector("legacy", legacy).route(
            RouteSpec::new("/", &self.backend.url())
                .name("api")
                .connector("legacy"),
        );
        match tracing {
            Some(t) => c.set("tracing", t),
            None => c,
        }
    }

    pub fn tracing(&self, ratio: f64) -> Value {
        json!({"otlp_endpoint": self.collector.url(), "sample_ratio": ratio, "service_name": "edge-test"})
    }

    pub async fn gateway(&self, config: &ConfigBuilder) -> GatewayProcess {
        let how = Launch {
            admin: true,
            pid_file: true,
            ..Launch::default()
        };
        self.project.gateway(config, how).await
    }
}

pub fn traceparent(trace: &str, span: &str, flags: &str) -> String {
    format!("00-{trace}-{span}-{flags}")
}

/// `(trace id, parent span id, flags)` of a `traceparent`.
pub fn parse(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!((p[0], p[1].len(), p[2].len()), ("00", 32, 16), "{tp}");
    (p[1].into(), p[2].into(), p[3].into())
}

pub fn one<'a>(spans: &'a [SpanRec], name: &str) -> &'a SpanRec {
    let found: Vec<&SpanRec> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span {name:?} expected in {spans:#?}");
    found[0]
}

/// `GET path` with the session as a Bearer and `traceparent` as the client's.
pub async fn get_traced(gw: &GatewayProcess, path: &str, token: &str, traceparent: &str) -> Reply {
    gw.send(
        gw.client
            .get(gw.url(path))
            .bearer_auth(token)
            .header("traceparent", traceparent),
    )
    .await
}
