//! `envoy.service.auth.v3.Authorization/Check` as the decision reads it: the generated
//! `CheckRequest` decodes everything Envoy sends (peers, addresses, the headers as a `HashMap` of
//! `String`s hashed with SipHash), then the decision copies the headers again into a
//! `HeaderMap`. Here only `attributes.request.http` (method, path, host, headers) is decoded;
//! prost skips every other field on the wire. The header entries are `Bytes` cut from tonic's
//! receive buffer (no copy) and go straight into the `HeaderMap` the decision reads. Decoding,
//! copying and dropping the generated type took ~13% of extoken's CPU samples per check under
//! Envoy (docs/performance.md, "Decision mode").
//!
//! The answer is still the generated `CheckResponse`. Wire format: `map<string, string>` is
//! `repeated` entries of `{1: key, 2: value}`, so [`HttpRequest::headers`] reads it exactly.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::codegen::{Body, BoxFuture, Service, StdError};

/// The `CheckRequest` fields a decision reads (tags as in `external_auth.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub(crate) attributes: Option<AttributeContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AttributeContext {
    #[prost(message, optional, tag = "4")]
    pub(crate) request: Option<Request>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Request {
    #[prost(message, optional, tag = "2")]
    pub(crate) http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`: strings stay `String` (prost refuses one that is not UTF-8,
/// as the generated type did); the headers map is read as its entries.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HttpRequest {
    #[prost(string, tag = "2")]
    pub(crate) method: String,
    #[prost(message, repeated, tag = "3")]
    pub(crate) headers: Vec<HeaderEntry>,
    #[prost(string, tag = "4")]
    pub(crate) path: String,
    #[prost(string, tag = "5")]
    pub(crate) host: String,
}

/// One entry of `HttpRequest.headers`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HeaderEntry {
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) value: Bytes,
}

/// Up to this many header entries, duplicates are found by looking ahead (no allocation).
const LOOK_AHEAD_MAX: usize = 32;

/// The client's headers (Envoy lower-cases names and joins repeated ones); pseudo-headers and
/// what is not a valid header are left out, as `HeaderValue::from_str` did. A name or value that
/// is not UTF-8 fails the whole request, as decoding it as `map<string, string>` did; a key given
/// twice counts once, the last (protobuf map semantics).
pub(crate) fn client_headers(entries: Vec<HeaderEntry>) -> Result<HeaderMap, tonic::Status> {
    // One more for the `Host` the decision sets (`Original::into_request`): no regrowth.
    let mut h = HeaderMap::with_capacity(entries.len() + 1);
    // Which entry is the last of its key: by a look ahead for the usual few dozen headers, by a
    // map for a long list (a peer can send thousands: a look ahead would be quadratic).
    let last: Option<HashMap<&[u8], usize>> = (entries.len() > LOOK_AHEAD_MAX).then(|| {
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.key[..], i))
            .collect()
    });
    for (i, e) in entries.iter().enumerate() {
        if !utf8(&e.key) || !utf8(&e.value) {
            return Err(tonic::Status::internal(
                "failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded",
            ));
        }
        let superseded = match &last {
            Some(last) => last.get(&e.key[..]) != Some(&i),
            None => entries[i + 1..].iter().any(|later| later.key == e.key),
        };
        if superseded {
            continue;
        }
        // `from_maybe_shared` checks the value as `from_str` does, without copying it.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&e.key),
            HeaderValue::from_maybe_shared(e.value.clone()),
        ) {
            h.append(n, v);
        }
    }
    Ok(h)
}

fn utf8(b: &[u8]) -> bool {
    b.is_ascii() || std::str::from_utf8(b).is_ok()
}

/// What answers `Check` (the decision listener's service, `grpc.rs`).
pub(crate) trait Check: Send + Sync + 'static {
    fn answer(
        self: Arc<Self>,
        request: tonic::Request<CheckRequest>,
    ) -> BoxFuture<tonic::Response<CheckResponse>, tonic::Status>;
}

/// The `Authorization` service with the lean request type: what `AuthorizationServer` does for
/// `Check` (tonic's unary handling, default message limits, no compression), any other method
/// `UNIMPLEMENTED`.
pub(crate) struct CheckServer<C>(pub(crate) Arc<C>);

impl<C> Clone for CheckServer<C> {
    fn clone(&self) -> Self {
        CheckServer(self.0.clone())
    }
}

impl<C> tonic::server::NamedService for CheckServer<C> {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

impl<C: Check, B> Service<http::Request<B>> for CheckServer<C>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let check = Unary(self.0.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<CheckResponse, CheckRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(check, req).await)
        })
    }
}

struct Unary<C>(Arc<C>);

impl<C: Check> tonic::server::UnaryService<CheckRequest> for Unary<C> {
    type Response = CheckResponse;
    type Future = BoxFuture<tonic::Response<CheckResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        self.0.clone().answer(request)
    }
}

fn unimplemented() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::default());
    let headers = response.headers_mut();
    headers.insert(
        tonic::Status::GRPC_STATUS,
        (tonic::Code::Unimplemented as i32).into(),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn entry(k: &[u8], v: &[u8]) -> HeaderEntry {
        HeaderEntry {
            key: Bytes::copy_from_slice(k),
            value: Bytes::copy_from_slice(v),
        }
    }

    #[test]
    fn reads_what_the_generated_type_wrote() {
        use envoy_types::pb::envoy::service::auth::v3 as pb;
        let mut http = pb::attribute_context::HttpRequest {
            method: "POST".into(),
            path: "/a?b=1".into(),
            host: "h.example".into(),
            id: "ignored".into(),
            ..Default::default()
        };
        http.headers.insert("x-a".into(), "1".into());
        http.headers.insert(":authority".into(), "h.example".into());
        let full = pb::CheckRequest {
            attributes: Some(pb::AttributeContext {
                source: Some(Default::default()),
                request: Some(pb::attribute_context::Request {
                    time: Some(Default::default()),
                    http: Some(http),
                }),
                ..Default::default()
            }),
        };
        let lean = CheckRequest::decode(full.encode_to_vec().as_slice()).unwrap();
        let http = lean.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(
            (&*http.method, &*http.path, &*http.host),
            ("POST", "/a?b=1", "h.example")
        );
        let h = client_headers(http.headers).unwrap();
        assert_eq!(h.len(), 1, "the pseudo-header is left out");
        assert_eq!(h["x-a"], "1");
    }

    #[test]
    fn headers_are_read_as_a_map_would_be() {
        let h = client_headers(vec![
            entry(b"x-a", b"first"),
            entry(b"X-A", b"other case"),
            entry(b"x-a", b"last"),
            entry(b"x-ctl", b"a\x01b"),
            entry(b"x-high", "caf\u{e9}".as_bytes()),
        ])
        .unwrap();
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        // Same key twice: the last; another spelling of the name is another key.
        assert_eq!(a, ["other case", "last"]);
        assert!(
            !h.contains_key("x-ctl"),
            "a control character is not a header value"
        );
        assert_eq!(
            h["x-high"].as_bytes(),
            "caf\u{e9}".as_bytes(),
            "as from_str took it"
        );
        // A long list reads the same (by a map, not by looking ahead).
        let mut long: Vec<HeaderEntry> = (0..5_000)
            .map(|i| entry(format!("x-{i}").as_bytes(), b"v"))
            .collect();
        long.insert(0, entry(b"x-a", b"first"));
        long.push(entry(b"X-A", b"other case"));
        long.push(entry(b"x-a", b"last"));
        let h = client_headers(long).unwrap();
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["other case", "last"]);
        assert_eq!(h.len(), 5_002);
        let err = client_headers(vec![entry(b"x-a", b"\xff")]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(client_headers(vec![entry(b"\xff", b"v")]).is_err());
    }
}
