//! Step 0 of the request path: the one request target and host that routing decides on and the
//! backend receives.
//!
//! A gateway that routes on the raw target while the backend acts on a normalized one can be
//! walked around (`/public/%2e%2e/api`, `Host: admin.example.com.`). So the target is made
//! canonical once, before routing, and that canonical form is what is forwarded: percent-encoded
//! unreserved bytes decoded (RFC 3986 §2.3, §6.2.2.2), dot-segments removed (§5.2.4), runs of `/`
//! merged, every other escape kept with upper-case hex, the query untouched. Whatever a backend
//! could read in two ways is refused instead (Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action: REJECT_REQUEST` are the model).

use std::fmt;

/// What to do with `%2F` / `%5C` in a path (`limits.escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Refuse the request (backends disagree on whether `%2F` separates segments).
    #[default]
    Reject,
    /// Keep them encoded and treat them as ordinary characters when matching.
    Keep,
}

/// What to do with `;` path parameters (`limits.path_parameters`). Whatever the mode, routes are
/// chosen on the path with every segment's `;params` removed, because that is the path Tomcat,
/// Jetty, Undertow and Spring map to a servlet (`/api;x/admin` is `/api/admin` to them): a route
/// matched on the raw segments would let `;x` move a request to a less protected route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// Forwarded as sent.
    #[default]
    Keep,
    /// Forwarded without them (the backend sees the path routing decided on).
    Strip,
    /// Refused (`400`).
    Reject,
}

/// Why a target or host was refused (always a `400`). `Display` is the client-facing description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    #[error("the request target must be a path or an absolute http(s) URL")]
    Form,
    #[error("the path contains an encoded slash or backslash")]
    EscapedSlash,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains an encoded control character")]
    Control,
    #[error("the path contains an invalid percent-encoding")]
    BadEscape,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path contains a dot-segment with parameters")]
    DotParams,
    #[error("the path contains ;parameters")]
    PathParameters,
    #[error("the request target contains a fragment")]
    Fragment,
    #[error("an HTTP/1.1 request needs exactly one Host header")]
    MissingHost,
    #[error("the Host is not a valid host name")]
    BadHost,
    #[error("the Host has an invalid port")]
    BadPort,
}

impl BadTarget {
    /// The metric/log reason.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            BadTarget::Form => "bad_target",
            BadTarget::EscapedSlash => "escaped_slash",
            BadTarget::Backslash => "backslash",
            BadTarget::Control => "control_character",
            BadTarget::BadEscape => "bad_escape",
            BadTarget::AboveRoot => "above_root",
            BadTarget::DotParams => "dot_params",
            BadTarget::PathParameters => "path_parameters",
            BadTarget::Fragment => "fragment",
            BadTarget::MissingHost => "missing_host",
            BadTarget::BadHost => "bad_host",
            BadTarget::BadPort => "bad_port",
        }
    }
}

/// A canonical request target: `path[?query]`, ASCII path, query bytes as received.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    bytes: Vec<u8>,
    path_len: usize,
    /// The path with every segment's `;params` removed, when the path has any (routes match on
    /// it); `None` (no allocation) for the usual path without `;`.
    routing: Option<Box<str>>,
    /// The path as received had a raw `;` (even one canonicalization removed: `/;x/api`,
    /// `/a;x/../b`): what `path_parameters: reject` refuses.
    raw_parameters: bool,
}

impl Target {
    /// The canonical path, as forwarded.
    pub fn path(&self) -> &str {
        // Only ASCII is ever written to the path part (see `canonical_path`).
        std::str::from_utf8(&self.bytes[..self.path_len]).unwrap_or("/")
    }
    /// The path routes match on: [`Target::path`] with every segment's `;params` removed, as a
    /// servlet container maps it.
    pub fn routing_path(&self) -> &str {
        self.routing.as_deref().unwrap_or_else(|| self.path())
    }
    /// Whether the path has `;params` (a raw `;`; an escaped `%3B` is a byte of its segment).
    pub fn has_parameters(&self) -> bool {
        self.routing.is_some()
    }
    /// The query after `?`, as received (empty when there is none).
    pub fn query(&self) -> &[u8] {
        self.bytes.get(self.path_len + 1..).unwrap_or_default()
    }
    /// Applies `limits.path_parameters`: `Keep` changes nothing, `Strip` forwards the routing
    /// path, `Reject` refuses a path with parameters.
    pub fn apply_parameters(&mut self, mode: PathParameters) -> Result<(), BadTarget> {
        if mode == PathParameters::Reject && self.raw_parameters {
            return Err(BadTarget::PathParameters);
        }
        let Some(routing) = self.routing.take() else {
            return Ok(());
        };
        match mode {
            PathParameters::Keep | PathParameters::Reject => self.routing = Some(routing),
            PathParameters::Strip => {
                let mut bytes =
                    Vec::with_capacity(routing.len() + self.bytes.len() - self.path_len);
                bytes.extend_from_slice(routing.as_bytes());
                bytes.extend_from_slice(&self.bytes[self.path_len..]);
                self.path_len = routing.len();
                self.bytes = bytes;
            }
        }
        Ok(())
    }
    /// Path and query, as forwarded.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The query may carry secrets (`?token=`): never printed.
        write!(f, "Target({})", self.path())
    }
}

/// The authority of an absolute-form target, if the raw target is one.
pub struct Parsed<'a> {
    pub target: Target,
    pub authority: Option<&'a [u8]>,
}

/// Canonicalizes a raw request target (pingora's `raw_path()`): origin-form or absolute-form
/// `http(s)://authority[/path][?query]`; anything else (asterisk-form, authority-form, a relative
/// path) is refused.
pub fn parse(raw: &[u8], slashes: EscapedSlashes) -> Result<Parsed<'_>, BadTarget> {
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    let (rest, authority) = if raw.first() == Some(&b'/') {
        (raw, None)
    } else {
        match raw_target_authority(raw) {
            RawTargetAuthority::Absolute {
                scheme,
                authority,
                path_and_query,
            } if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https") => {
                (path_and_query, Some(authority))
            }
            _ => return Err(BadTarget::Form),
        }
    };
    if rest.contains(&b'#') {
        return Err(BadTarget::Fragment);
    }
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    if !path.is_empty() && path[0] != b'/' {
        return Err(BadTarget::Form);
    }
    let mut bytes = canonical_path(path, slashes)?;
    let path_len = bytes.len();
    let routing = bytes
        .contains(&b';')
        .then(|| without_parameters(&bytes).into_boxed_str());
    if let Some(q) = query {
        bytes.extend_from_slice(q);
    }
    Ok(Parsed {
        target: Target {
            bytes,
            path_len,
            routing,
            raw_parameters: path.contains(&b';'),
        },
        authority,
    })
}

/// A canonical path with every segment's `;params` removed, as Tomcat's `parsePathParameters`
/// and Spring's `UrlPathHelper` do before mapping: `/api;x/admin` is `/api/admin`, `/api;` is
/// `/api`. A segment left empty (`/;x/api`) disappears, as the container's normalization merges
/// the `//` it leaves; a trailing one keeps the trailing `/`. Dot-segments with parameters never
/// get here (`canonical_path` refuses them), so removing parameters cannot make a new `..`.
pub fn without_parameters(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segments = path.split(|&b| b == b'/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let name = seg.split(|&b| b == b';').next().unwrap_or_default();
        let last = segments.peek().is_none();
        if name.is_empty() {
            if last && !out.is_empty() {
                out.push('/');
            }
            continue;
        }
        out.push('/');
        // The canonical path is ASCII (see `canonical_path`).
        out.extend(name.iter().map(|&b| char::from(b)));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The path part: see the module comment. An empty path is `/`.
pub fn canonical_path(path: &[u8], slashes: EscapedSlashes) -> Result<Vec<u8>, BadTarget> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len() + 1);
    // Start offsets in `out` of each segment written so far (for `..`).
    let mut starts: Vec<usize> = Vec::new();
    let mut segments = path.split(|&b| b == b'/').peekable();
    let mut trailing_slash = false;
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        if raw.is_empty() {
            trailing_slash = last && !out.is_empty();
            continue;
        }
        let seg = decode_segment(raw, slashes)?;
        let name = match seg.iter().position(|&b| b == b';') {
            Some(i) => &seg[..i],
            None => &seg[..],
        };
        // A segment that is only `;params` is an empty segment to a servlet container (its
        // parameters removed, the `//` left merged): dropped here too, so it can neither be
        // routed nor take a `..` away from the segment before it.
        if name.is_empty() {
            trailing_slash = last && !out.is_empty();
            continue;
        }
        let dots = name == b"." || name == b"..";
        if dots && name.len() != seg.len() {
            return Err(BadTarget::DotParams);
        }
        if name == b"." {
            trailing_slash = last;
            continue;
        }
        if name == b".." {
            let start = starts.pop().ok_or(BadTarget::AboveRoot)?;
            out.truncate(start);
            trailing_slash = last;
            continue;
        }
        starts.push(out.len());
        out.push(b'/');
        out.extend_from_slice(&seg);
        trailing_slash = false;
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(out)
}

/// One segment with unreserved escapes decoded and every other byte that may not appear raw in a
/// path written as an upper-case `%XX`.
fn decode_segment(raw: &[u8], slashes: EscapedSlashes) -> Result<Vec<u8>, BadTarget> {
    let mut seg = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'\\' {
            return Err(BadTarget::Backslash);
        }
        if b < 0x20 || b == 0x7f {
            return Err(BadTarget::Control);
        }
        if b != b'%' {
            push_byte(&mut seg, b);
            i += 1;
            continue;
        }
        let (hi, lo) = match (raw.get(i + 1), raw.get(i + 2)) {
            (Some(&h), Some(&l)) => (hex(h), hex(l)),
            _ => (None, None),
        };
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(BadTarget::BadEscape);
        };
        let v = hi << 4 | lo;
        match v {
            0x00..=0x1f | 0x7f => return Err(BadTarget::Control),
            b'/' | b'\\' if slashes == EscapedSlashes::Reject => {
                return Err(BadTarget::EscapedSlash)
            }
            v if is_unreserved(v) => seg.push(v),
            v => push_escaped(&mut seg, v),
        }
        i += 3;
    }
    Ok(seg)
}

/// Writes a raw byte: kept when RFC 3986 allows it in a segment, else escaped.
fn push_byte(seg: &mut Vec<u8>, b: u8) {
    if is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b) {
        seg.push(b);
    } else {
        push_escaped(seg, b);
    }
}

fn push_escaped(seg: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    seg.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A canonical host: lower-case name (one trailing dot removed, IPv6 in brackets) and the port
/// as sent, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `name[:port]`, what is forwarded as `Host`.
    value: String,
    name_len: usize,
}

impl Host {
    /// The name routes match on (no port).
    pub fn name(&self) -> &str {
        let n = &self.value[..self.name_len];
        n.strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(n)
    }
    /// `name[:port]` as forwarded.
    pub fn as_str(&self) -> &str {
        &self.value
    }
    pub(crate) fn has_port(&self) -> bool {
        self.value.len() != self.name_len
    }
    /// `name[:port]` as a header value, without copying it.
    pub fn into_header_value(self) -> Option<http::HeaderValue> {
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(self.value)).ok()
    }
}

/// The target and host of a request, decided once.
#[derive(Debug)]
pub(crate) struct Decided {
    pub target: Target,
    /// `None` only for an HTTP/1.0 origin-form request without `Host`.
    pub(crate) host: Option<Host>,
}

/// The canonical target and host of a request. The host is the absolute-form authority if there
/// is one (pingora has already refused a `Host` that differs from it), else the one `Host`
/// header; an HTTP/1.1 request without exactly one `Host` is refused (RFC 9112 §3.2).
pub(crate) fn decide(
    req: &pingora::http::RequestHeader,
    slashes: EscapedSlashes,
    params: PathParameters,
) -> Result<Decided, BadTarget> {
    let mut parsed = parse(req.raw_path(), slashes)?;
    parsed.target.apply_parameters(params)?;
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() || req.version == http::Version::HTTP_11 && header.is_none() {
        return Err(BadTarget::MissingHost);
    }
    let raw = parsed
        .authority
        .or_else(|| header.map(|h| h.as_bytes()))
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    Ok(Decided {
        target: parsed.target,
        host: raw.map(canonical_host).transpose()?,
    })
}

/// Parses and canonicalizes a `Host` value or an absolute-form authority. Userinfo (`u@host`) is
/// refused, as is any byte a host name cannot hold.
pub fn canonical_host(raw: &[u8]) -> Result<Host, BadTarget> {
    let (name, port) = if raw.first() == Some(&b'[') {
        let end = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or(BadTarget::BadHost)?;
        let inner = &raw[1..end];
        if inner.is_empty() || !inner.iter().all(|b| b.is_ascii_hexdigit() || *b == b':') {
            return Err(BadTarget::BadHost);
        }
        let rest = &raw[end + 1..];
        let port = match rest.split_first() {
            None => None,
            Some((b':', p)) => Some(p),
            Some(_) => return Err(BadTarget::BadHost),
        };
        (&raw[..=end], port)
    } else {
        let (name, port) = match raw.iter().position(|&b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        let name = name.strip_suffix(b".").unwrap_or(name);
        let label_ok = |l: &[u8]| {
            !l.is_empty()
                && l.iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        };
        if !name.split(|&b| b == b'.').all(label_ok) {
            return Err(BadTarget::BadHost);
        }
        (name, port)
    };
    let mut value = String::with_capacity(name.len() + 6);
    value.extend(name.iter().map(|&b| char::from(b.to_ascii_lowercase())));
    let name_len = value.len();
    if let Some(p) = port {
        let n = parse_port(p).ok_or(BadTarget::BadPort)?;
        value.push(':');
        value.push_str(&n.to_string());
    }
    Ok(Host { value, name_len })
}

fn parse_port(p: &[u8]) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests;
