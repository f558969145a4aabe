//! The forwarding headers: what the backend is told about the client and the way the request came
//! (peer address, scheme, host, port, and the path or method a proxy in front rewrote).
//!
//! Only a proxy may say these things, so a client's copies are believed only from a peer in
//! `trusted_proxies`. From any other peer the whole family is removed (frameworks route on some
//! of them: Symfony read `X-Original-URL` and `X-Rewrite-URL` as the path, CVE-2018-14773), with
//! the `_` twins a CGI/WSGI backend would read as the same header, and what extoken itself knows
//! is set. The removal is one pass over the request's names against a static list, without an
//! allocation unless a client sent one of them.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};

use super::{underscore_twin, Headers, Plan};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Forwarding headers extoken does not set from an untrusted peer (beyond `X-Forwarded-Port`,
/// which it sets only when it knows the listener's port), removed there as sent. The last five
/// are the path and method overrides some frameworks and proxies honour.
pub(super) static REMOVED: [HeaderName; 10] = [
    X_FORWARDED_PORT,
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-rewrite-url"),
];

/// The ones extoken replaces from an untrusted peer (`set` drops the client's lines), whose `_`
/// twins must go too. `Forwarded` has no `-`, so no twin.
static REPLACED: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REAL_IP,
];

/// Whether a client's header `n` is a forwarding header an untrusted peer may not send (`twins`:
/// underscore names are forwarded, so `x_original_url` counts as `x-original-url`).
pub(super) fn untrusted_forwarding(n: &HeaderName, twins: bool) -> bool {
    let b = n.as_str().as_bytes();
    // Every name of the family is `x-...` and at least 9 bytes long: most of a request's
    // headers (`accept`, `cookie`, `user-agent`, ...) are ruled out by two byte compares.
    if b.len() < 9 || b[0] != b'x' || !(b[1] == b'-' || b[1] == b'_') {
        return false;
    }
    if b.contains(&b'_') {
        return twins
            && REMOVED
                .iter()
                .chain(&REPLACED)
                .any(|f| underscore_twin(n, f));
    }
    REMOVED.iter().any(|f| f == n)
}

/// `X-Forwarded-For`, `-Proto`, `-Host`, `-Port`, `X-Real-IP`, `Forwarded` (nginx `real_ip` and
/// Envoy `xff_num_trusted_hops` are the models; Traefik's for the port): from an untrusted peer,
/// the family removed and these set from what extoken saw; from a trusted proxy, all kept, the
/// peer appended to `X-Forwarded-For` and `Forwarded`, missing `-Proto`/`-Host`/`-Port` added.
pub(super) fn forwarding<H: Headers>(req: &mut H, plan: &Plan<'_>) {
    let peer = plan.peer;
    let ip = peer.addr.map(|a| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    });
    let ip_text = ip.map(IpText::new);
    let proto = if peer.tls { "https" } else { "http" };
    if peer.trusted {
        if let Some(t) = &ip_text {
            append_list(req, X_FORWARDED_FOR, t.as_ref());
            if req.contains(&FORWARDED) {
                let mut node = Vec::with_capacity(t.as_ref().len() + 8);
                forwarded_node(&mut node, t);
                append_list(req, FORWARDED, &node);
            }
        }
        if !req.contains(&X_FORWARDED_PROTO) {
            req.set(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !req.contains(&X_FORWARDED_HOST) {
            req.set(X_FORWARDED_HOST, plan.host.clone());
        }
        if let Some(port) = peer.port.filter(|_| !req.contains(&X_FORWARDED_PORT)) {
            req.set(X_FORWARDED_PORT, port_value(port));
        }
        return;
    }
    let twins = !plan.drop_underscore_headers;
    req.remove_where(&|n: &HeaderName| untrusted_forwarding(n, twins));
    if let Some(port) = peer.port {
        req.set(X_FORWARDED_PORT, port_value(port));
    }
    // `set` replaces whatever the client sent; only a peer without an IP needs a removal.
    // The address is one shared allocation for both headers (an IP is always a valid value).
    match ip_text.and_then(|t| HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(t)).ok()) {
        Some(v) => {
            req.set(X_FORWARDED_FOR, v.clone());
            req.set(X_REAL_IP, v);
        }
        None => {
            req.remove(&X_FORWARDED_FOR);
            req.remove(&X_REAL_IP);
        }
    }
    req.set(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    req.set(X_FORWARDED_HOST, plan.host.clone());
    // RFC 7239: `for=<node>;host="<host>";proto=<proto>`, built without `format!`.
    let mut f = Vec::with_capacity(64 + plan.host.len());
    if let Some(t) = &ip_text {
        forwarded_node(&mut f, t);
        f.push(b';');
    }
    f.extend_from_slice(b"host=\"");
    f.extend_from_slice(plan.host.as_bytes());
    f.extend_from_slice(b"\";proto=");
    f.extend_from_slice(proto.as_bytes());
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(f)) {
        Ok(v) => req.set(FORWARDED, v),
        Err(_) => req.remove(&FORWARDED),
    }
}

/// The listener's port as a header value. A worker thread serves one or a few listeners, so the
/// last value is kept per thread: a request costs a counter bump, not an allocation.
fn port_value(port: u16) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(u16, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((p, v)) if *p == port => v.clone(),
            _ => {
                let v = HeaderValue::from(port);
                *last = Some((port, v.clone()));
                v
            }
        }
    })
}

/// `for=1.2.3.4` or `for="[2001:db8::1]"` (RFC 7239 quotes IPv6 nodes), appended to `out`.
fn forwarded_node(out: &mut Vec<u8>, ip: &IpText) {
    out.extend_from_slice(b"for=");
    if ip.v6 {
        out.extend_from_slice(b"\"[");
        out.extend_from_slice(ip.as_ref());
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(ip.as_ref());
    }
}

/// An address as text, on the stack; IPv4 (nearly every peer) without the formatting machinery.
#[derive(Clone, Copy)]
struct IpText {
    buf: [u8; 45],
    len: u8,
    v6: bool,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
            v6: ip.is_ipv6(),
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if o >= 100 {
                        t.push(b'0' + o / 100);
                    }
                    if o >= 10 {
                        t.push(b'0' + o / 10 % 10);
                    }
                    t.push(b'0' + o % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut w = &mut t.buf[..];
                // 45 bytes hold the longest form (`ffff:...:255.255.255.255`).
                let _ = write!(w, "{v6}");
                let left = w.len();
                t.len = u8::try_from(45 - left).unwrap_or(0);
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[usize::from(self.len)] = b;
        self.len += 1;
    }
}

impl AsRef<[u8]> for IpText {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Appends `item` to a comma-separated list header (all its lines joined into one).
fn append_list<H: Headers>(req: &mut H, name: HeaderName, item: &[u8]) {
    let mut joined: Vec<u8> = Vec::new();
    for v in req.get_all(&name) {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(item);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        req.set(name, v);
    }
}

#[cfg(test)]
#[path = "forwarding_tests.rs"]
mod tests;
