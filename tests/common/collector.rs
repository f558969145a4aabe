//! A real OTLP/HTTP trace receiver ([`Collector`]): decodes every `POST /v1/traces` body
//! (protobuf `ExportTraceServiceRequest`) into [`SpanRec`]s, or answers 503 while it is down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;

use super::net::{eventually, response, Handler, HttpServer};

/// One received span, ids in lower-case hex (`parent` empty for a root).
#[derive(Debug, Clone)]
pub struct SpanRec {
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub name: String,
    /// OTLP's `SpanKind`: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub attrs: BTreeMap<String, String>,
    /// 2: error.
    pub status: i32,
    /// The resource's `service.name`.
    pub service: String,
}

impl SpanRec {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
pub const INTERNAL: i32 = 1;

pub struct Collector {
    server: HttpServer,
    spans: Arc<Mutex<Vec<SpanRec>>>,
    down: Arc<AtomicBool>,
    posts: Arc<AtomicUsize>,
}

fn value(v: &KeyValue) -> String {
    match v.value.as_ref().and_then(|a| a.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn decode(body: &[u8]) -> Vec<SpanRec> {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(value)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(SpanRec {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    attrs: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value(kv)))
                        .collect(),
                    status: s.status.map_or(0, |st| st.code),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Collector {
    pub async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let posts = Arc::new(AtomicUsize::new(0));
        let (s, d, p) = (spans.clone(), down.clone(), posts.clone());
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let (s, d, p) = (s.clone(), d.clone(), p.clone());
            Box::pin(async move {
                let path = req.uri().path().to_string();
                let ct = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                p.fetch_add(1, Ordering::SeqCst);
                if d.load(Ordering::SeqCst) {
                    return Ok(response(503, "text/plain", "down"));
                }
                if path != "/v1/traces" || ct != "application/x-protobuf" {
                    return Ok(response(404, "text/plain", format!("{path} {ct}")));
                }
                s.lock().unwrap().extend(decode(&body));
                Ok(response(200, "application/x-protobuf", Vec::<u8>::new()))
            })
        });
        let server = HttpServer::serve(handler).await;
        Collector {
            server,
            spans,
            down,
            posts,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn spans(&self) -> Vec<SpanRec> {
        self.spans.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.spans.lock().unwrap().clear();
    }

    /// Exports received (answered or not).
    pub fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The spans of `trace_id` once there are at least `n` of them (panics after 10 s).
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<SpanRec> {
        let of = |c: &Collector| {
            c.spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect::<Vec<_>>()
        };
        let got = eventually(Duration::from_secs(10), || async { of(self).len() >= n }).await;
        let spans = of(self);
        assert!(
            got,
            "{n} spans of trace {trace_id} expected, got {spans:#?}"
        );
        spans
    }
}
