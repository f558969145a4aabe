//! The original request, read from what each ingress sends on the HTTP decision listener:
//!
//! * under `decision.envoy_path_prefix` (Envoy `ext_authz` HTTP, Istio `envoyExtAuthzHttp`): the
//!   request line itself, the path after the prefix, and `Host`;
//! * elsewhere (nginx `auth_request`, ingress-nginx, Traefik ForwardAuth): `X-Original-Method` /
//!   `X-Original-URI` (set by the documented nginx config), `X-Original-URL` (ingress-nginx's
//!   `$scheme://$http_host$request_uri`: its path and query are a target, its authority a host),
//!   `X-Forwarded-Method` / `X-Forwarded-Uri` (Traefik), and the host in `X-Forwarded-Host`.
//!
//! Every source present must agree: a request whose sources disagree is refused (400), never
//! settled by precedence, because an ingress passes the client's own copies of the headers it
//! does not set (nginx passes a client's `X-Forwarded-Uri` beside the `X-Original-URI` it set),
//! and whichever one won, a client could pick the path that is decided on.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{Original, Protocol};
use crate::answer::Answer;

const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// Which ingress a decision request on the HTTP listener comes from (by its path and headers).
pub(crate) fn protocol_of(target: &[u8], headers: &HeaderMap, envoy_prefix: &str) -> Protocol {
    if under_prefix(target, envoy_prefix.as_bytes()).is_some() {
        Protocol::EnvoyHttp
    } else if headers.contains_key(X_ORIGINAL_URL) {
        Protocol::IngressNginx
    } else if headers.contains_key(X_ORIGINAL_URI) {
        Protocol::Nginx
    } else {
        Protocol::Traefik
    }
}

/// The original request of a decision request (`method`, raw `target`, `headers`), or the 400
/// to answer.
pub(crate) fn from_http(
    method: &Method,
    target: &[u8],
    headers: &HeaderMap,
    envoy_prefix: &str,
) -> Result<(Protocol, Original), Answer> {
    if let Some(rest) = under_prefix(target, envoy_prefix.as_bytes()) {
        let target = if rest.first() == Some(&b'/') {
            rest.to_vec()
        } else {
            [b"/", rest].concat()
        };
        // Headers Envoy does not set are the client's (if `allowed_headers` lets them through):
        // they may only repeat what the request line says.
        let method = agree(
            &[
                Some(method.as_str().as_bytes()),
                one(headers, &X_ORIGINAL_METHOD)?,
                one(headers, &X_FORWARDED_METHOD)?,
            ],
            "method",
        )?;
        let (url_host, url_target) = original_url(headers)?;
        let uri = agree(
            &[
                Some(&target[..]),
                url_target,
                one(headers, &X_ORIGINAL_URI)?,
                one(headers, &X_FORWARDED_URI)?,
            ],
            "uri",
        )?;
        let host = agree(&[one(headers, &http::header::HOST)?, url_host], "host")?;
        let original = request_line(method, uri, host)?.with(headers.clone());
        return Ok((Protocol::EnvoyHttp, original));
    }
    let nginx = one(headers, &X_ORIGINAL_URI)?;
    let (url_host, url_target) = original_url(headers)?;
    let method = agree(
        &[
            one(headers, &X_ORIGINAL_METHOD)?,
            one(headers, &X_FORWARDED_METHOD)?,
        ],
        "method",
    )?;
    let uri = agree(&[url_target, nginx, one(headers, &X_FORWARDED_URI)?], "uri")?;
    let host = agree(&[url_host, one(headers, &X_FORWARDED_HOST)?], "host")?;
    let protocol = if url_target.is_some() {
        Protocol::IngressNginx
    } else if nginx.is_some() {
        Protocol::Nginx
    } else {
        Protocol::Traefik
    };
    Ok((
        protocol,
        request_line(method, uri, host)?.with(headers.clone()),
    ))
}

/// The original request of an Envoy `ext_authz` gRPC `CheckRequest`: `method`, `path` (with the
/// query) and `host` from `attributes.request.http`, the client's headers from its `headers` map
/// (pseudo-headers left out). A client's `X-Original-*`/`X-Forwarded-Uri|Method` may only repeat
/// them, as on the Envoy HTTP path.
pub(crate) fn from_grpc<'a>(
    method: &'a str,
    path: &'a str,
    host: &'a str,
    headers: HeaderMap,
) -> Result<Original, Answer> {
    let nonempty = |s: &'a str| (!s.is_empty()).then_some(s.as_bytes());
    let method = agree(
        &[
            nonempty(method),
            one(&headers, &X_ORIGINAL_METHOD)?,
            one(&headers, &X_FORWARDED_METHOD)?,
        ],
        "method",
    )?;
    let (url_host, url_target) = original_url(&headers)?;
    let uri = agree(
        &[
            nonempty(path),
            url_target,
            one(&headers, &X_ORIGINAL_URI)?,
            one(&headers, &X_FORWARDED_URI)?,
        ],
        "uri",
    )?;
    let host = agree(&[nonempty(host), url_host], "host")?;
    // The map is the request's own: it moves into `Original`, uncopied.
    Ok(request_line(method, uri, host)?.with(headers))
}

/// The original method, target and host, before the headers join them.
struct RequestLine {
    method: Method,
    target: Vec<u8>,
    host: HeaderValue,
}

impl RequestLine {
    fn with(self, headers: HeaderMap) -> Original {
        Original {
            method: self.method,
            target: self.target,
            host: self.host,
            headers,
        }
    }
}

/// Each of method, target and host, present and valid, or the 400 to answer.
fn request_line(
    method: Option<&[u8]>,
    uri: Option<&[u8]>,
    host: Option<&[u8]>,
) -> Result<RequestLine, Answer> {
    let missing = |what: &str| {
        Answer::bad_request(
            &format!("the decision request does not say the original {what}"),
            "original_missing",
        )
    };
    let method = method.ok_or_else(|| missing("method"))?;
    let method = Method::from_bytes(method).map_err(|_| {
        Answer::bad_request("the original method is not a valid method", "bad_method")
    })?;
    let target = uri.ok_or_else(|| missing("request target"))?.to_vec();
    let host = host.ok_or_else(|| missing("host"))?;
    let host = HeaderValue::from_bytes(host)
        .map_err(|_| Answer::bad_request("the original host is not valid", "bad_host"))?;
    Ok(RequestLine {
        method,
        target,
        host,
    })
}

/// A host and a target, each if given.
type HostAndTarget<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// The authority and the target (`/path[?query]`) of an `X-Original-URL`, each `None` when the
/// header is absent. Anything but `http(s)://authority/...` is refused: a target that does not
/// start with `/` right after the authority (`http://h?x/admin`, `http://h#/admin`) would make
/// the split between host and path a guess, and a guess is what a client would aim at.
fn original_url(headers: &HeaderMap) -> Result<HostAndTarget<'_>, Answer> {
    let Some(url) = one(headers, &X_ORIGINAL_URL)? else {
        return Ok((None, None));
    };
    let bad = || {
        Answer::bad_request(
            "X-Original-URL is not an absolute http(s) URL with a path",
            "bad_original_url",
        )
    };
    let rest = url
        .strip_prefix(b"https://")
        .or_else(|| url.strip_prefix(b"http://"))
        .ok_or_else(bad)?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .ok_or_else(bad)?;
    if rest[end] != b'/' || end == 0 {
        return Err(bad());
    }
    Ok((Some(&rest[..end]), Some(&rest[end..])))
}

/// The rest of `target` when it is `prefix` or under it (`/envoy`, `/envoy/...`, `/envoy?...`).
fn under_prefix<'a>(target: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = target.strip_prefix(prefix)?;
    matches!(rest.first(), None | Some(b'/') | Some(b'?')).then_some(rest)
}

/// The one value of `name`, `None` when absent; two lines are refused (which one would count?).
fn one<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a [u8]>, Answer> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(Answer::bad_request(
            &format!("more than one {name} header"),
            "ambiguous_original",
        ));
    }
    Ok(first.map(HeaderValue::as_bytes))
}

/// The value every present source gives, `None` when none is present; sources that disagree are
/// refused.
fn agree<'a>(sources: &[Option<&'a [u8]>], what: &str) -> Result<Option<&'a [u8]>, Answer> {
    let mut present = sources.iter().flatten();
    let Some(first) = present.next() else {
        return Ok(None);
    };
    if present.any(|v| v != first) {
        return Err(Answer::bad_request(
            &format!("the original {what} is given twice, differently"),
            "ambiguous_original",
        ));
    }
    Ok(Some(first))
}

#[cfg(test)]
#[path = "original_tests.rs"]
mod tests;
