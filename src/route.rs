//! Routing: which route a request belongs to, and where that route's upstream is.
//!
//! Routes are sorted once when the config loads (longest `path_prefix` first, a route with a
//! `host` before one without at equal length, then file order), so a lookup is a short linear scan
//! over pre-lowercased strings with no allocation.
//!
//! Each route's peer (timeouts, TLS, SNI) is built once. pingora's `HttpPeer` holds a single
//! address, so a route whose upstream is a host name keeps every address the name resolved to in
//! an [`UpstreamAddrs`] that [`crate::dns`] swaps fresh answers into; [`Route::peer`] takes them
//! in turn (round robin). DNS is never on the request path.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::upstreams::peer::HttpPeer;

use crate::authorize::{IdentityHeaders, Rules};
use crate::config::{AuthMode, Config, ConfigError, RouteConfig, Upstream, UpstreamProtocol};

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    prefix: String,
    host: Option<String>,
    pub auth: AuthMode,
    pub connector: Option<String>,
    /// Tenant (`dct`) → connector name; falls back to `connector`.
    pub connector_by_tenant: std::collections::BTreeMap<String, String>,
    /// `Host` to send instead of the client's (`preserve_host: false`).
    pub host_override: Option<http::HeaderValue>,
    pub header: http::HeaderName,
    pub scheme: String,
    pub strip_cookies: Vec<String>,
    pub upstream: Upstream,
    /// Extra attempts after a failed connect (idempotent requests only).
    pub retries: u32,
    /// Largest request body forwarded (the route's `max_body_bytes`, else the limits').
    pub(crate) max_body_bytes: Option<u64>,
    /// After a `101`.
    pub(crate) websocket: crate::config::WebSocketConfig,
    /// An expired session is refreshed with the refresh cookie (`refresh_session`, else
    /// `descope.refresh.enabled`).
    pub(crate) refresh_session: bool,
    /// Who may pass (`require:`), compiled.
    pub(crate) rules: Rules,
    /// What the backend is told about the session (`identity_headers`), compiled.
    pub(crate) identity: Option<IdentityHeaders>,
    /// Its request metrics, resolved once.
    pub(crate) metrics: Arc<crate::metrics::RouteMetrics>,
    /// The peer for every request of this route, built once with its timeouts.
    peer: HttpPeer,
    /// The addresses of a host-name upstream (`None` for an IP literal: never re-resolved).
    addrs: Option<Arc<UpstreamAddrs>>,
}

impl Route {
    /// A peer for one request (pingora takes ownership of it): a clone of the prebuilt one, with
    /// the next of the upstream's addresses. No lock and no allocation beyond the clone.
    pub(crate) fn peer(&self) -> Box<HttpPeer> {
        let mut peer = Box::new(self.peer.clone());
        if let Some(addrs) = &self.addrs {
            peer._address = PeerAddr::Inet(addrs.pick());
        }
        peer
    }

    /// Its `path_prefix` (a trace's `http.route`).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The resolved addresses of a host-name upstream, for the DNS refresher.
    pub(crate) fn upstream_addrs(&self) -> Option<&Arc<UpstreamAddrs>> {
        self.addrs.as_ref()
    }

    /// The connector for a session in tenant `dct` (if any).
    pub(crate) fn connector_for(&self, dct: Option<&str>) -> Option<&str> {
        dct.and_then(|t| self.connector_by_tenant.get(t))
            .or(self.connector.as_ref())
            .map(String::as_str)
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            match host {
                Some(h) if h == want => {}
                _ => return false,
            }
        }
        prefix_matches(&self.prefix, path)
    }
}

/// The upstream peer with the route's timeouts (pingora's `PeerOptions`).
fn peer(upstream: &Upstream, addr: SocketAddr, r: &RouteConfig) -> HttpPeer {
    let sni = if upstream.tls {
        upstream.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, upstream.tls, sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(r.connect_timeout.0);
    // TCP and TLS together within the same bound.
    o.total_connection_timeout = Some(r.connect_timeout.0);
    o.read_timeout = Some(r.read_timeout.0);
    o.write_timeout = Some(r.write_timeout.0);
    o.idle_timeout = Some(r.idle_timeout.0);
    if r.upstream_protocol == UpstreamProtocol::H2 {
        // Over TLS by ALPN; over cleartext pingora speaks h2 with prior knowledge.
        o.alpn = pingora::protocols::ALPN::H2;
        // Streams of many requests share one connection (pingora's default is one per
        // connection, which would make a gRPC stream per TCP connection).
        o.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    peer
}

/// Concurrent requests pingora multiplexes on one h2 upstream connection.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The cookies a route removes: the Descope session and refresh cookies always (every visitor's
/// long-lived refresh token must reach no backend, whatever a route says), then the route's own
/// `strip_cookies`, each name once.
fn strip_list(descope: &[String], route: Option<&[String]>) -> Vec<String> {
    let mut list = descope.to_vec();
    for c in route.into_iter().flatten() {
        if !list.contains(c) {
            list.push(c.clone());
        }
    }
    list
}

/// Every address an upstream host name resolves to (A and AAAA), used in turn. Never empty: a
/// failed or empty resolution leaves the last good set in place.
#[derive(Debug)]
pub struct UpstreamAddrs {
    current: ArcSwap<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// Whether the last refresh failed (so a failure streak is logged once, and its end too).
    failing: AtomicBool,
}

impl UpstreamAddrs {
    /// `None` when `addrs` is empty.
    pub(crate) fn new(addrs: Vec<SocketAddr>) -> Option<UpstreamAddrs> {
        let addrs = normalized(addrs)?;
        Some(UpstreamAddrs {
            current: ArcSwap::from_pointee(addrs),
            next: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        })
    }

    /// The next address, round robin.
    pub(crate) fn pick(&self) -> SocketAddr {
        let addrs = self.current.load();
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        // Never empty (see `new` and `replace`).
        addrs[i % addrs.len()]
    }

    /// The addresses in use, sorted.
    pub fn current(&self) -> Arc<Vec<SocketAddr>> {
        self.current.load_full()
    }

    /// Puts a fresh answer in force; `false` (and nothing changes) when it is empty or the same
    /// set. The order of an answer varies between lookups, so sets are compared sorted.
    pub(crate) fn replace(&self, addrs: Vec<SocketAddr>) -> bool {
        match normalized(addrs) {
            Some(new) if *self.current.load().as_ref() != new => {
                self.current.store(Arc::new(new));
                true
            }
            _ => false,
        }
    }

    /// Records a failed refresh; `true` when it starts a failure streak.
    pub(crate) fn mark_failed(&self) -> bool {
        !self.failing.swap(true, Ordering::Relaxed)
    }

    /// Records a good refresh; `true` when it ends a failure streak.
    pub(crate) fn mark_ok(&self) -> bool {
        self.failing.swap(false, Ordering::Relaxed)
    }
}

fn normalized(mut addrs: Vec<SocketAddr>) -> Option<Vec<SocketAddr>> {
    addrs.sort_unstable();
    addrs.dedup();
    (!addrs.is_empty()).then_some(addrs)
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; a prefix ending in `/` matches
/// anything under it. Both sides are canonical (see [`crate::target`]), and matching is
/// case-sensitive, as RFC 3986 paths are.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Every route's identity header names: removed from client requests on every route.
    identity_names: Box<[http::HeaderName]>,
}

impl RouteTable {
    /// The routes of a validated config, sorted for lookup. Resolves each upstream host name with
    /// the system resolver (an unresolvable one is an error naming its `routes[i].upstream`).
    pub fn build(cfg: &Config) -> Result<RouteTable, ConfigError> {
        Self::build_with(cfg, &mut |host, port| {
            (host, port).to_socket_addrs().map(Iterator::collect)
        })
    }

    /// [`RouteTable::build`] with the first resolution done by `resolve` (tests answer for names
    /// the system cannot resolve). Blocking: it runs at start and reload, never per request.
    pub(crate) fn build_with(
        cfg: &Config,
        resolve: &mut dyn FnMut(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
    ) -> Result<RouteTable, ConfigError> {
        let max_body = cfg.limits.max_body_bytes;
        // Descope's own names too when the config renames them: a browser may still hold them.
        let descope_cookies = strip_list(
            &[
                cfg.descope.session_cookie.clone(),
                cfg.descope.refresh_cookie.clone(),
            ],
            Some(&["DS".to_string(), "DSR".to_string()]),
        );
        let mut routes = Vec::with_capacity(cfg.routes.len());
        for (i, r) in cfg.routes.iter().enumerate() {
            let mut route = Self::route(i, r, &descope_cookies, resolve)?;
            route.max_body_bytes = r.max_body_bytes.or(max_body);
            route.refresh_session = r.auth == AuthMode::Required
                && r.refresh_session.unwrap_or(cfg.descope.refresh.enabled);
            routes.push((i, Arc::new(route)));
        }
        routes.sort_by(|(ia, a), (ib, b)| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
                .then(ia.cmp(ib))
        });
        let mut identity_names: Vec<http::HeaderName> = Vec::new();
        for (_, r) in &routes {
            for n in r.identity.iter().flat_map(IdentityHeaders::names) {
                if !identity_names.contains(n) {
                    identity_names.push(n.clone());
                }
            }
        }
        Ok(RouteTable {
            routes: routes.into_iter().map(|(_, r)| r).collect(),
            identity_names: identity_names.into(),
        })
    }

    fn route(
        i: usize,
        r: &RouteConfig,
        descope_cookies: &[String],
        resolve: &mut dyn FnMut(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
    ) -> Result<Route, ConfigError> {
        let upstream = r.upstream.clone();
        let key = || format!("routes[{i}].upstream");
        let (peer_addr, addrs) = match upstream.host.parse::<IpAddr>() {
            Ok(ip) => (SocketAddr::new(ip, upstream.port), None),
            Err(_) => {
                let found = resolve(&upstream.host, upstream.port).map_err(|e| {
                    ConfigError::key(key(), format!("cannot resolve {}: {e}", upstream.host))
                })?;
                let addrs = UpstreamAddrs::new(found).ok_or_else(|| {
                    ConfigError::key(key(), format!("{} has no address", upstream.host))
                })?;
                (addrs.current()[0], Some(Arc::new(addrs)))
            }
        };
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        let path = format!("routes[{i}]");
        let rules = Rules::compile(r.require.as_ref(), &format!("{path}.require"))?;
        let identity = IdentityHeaders::compile(r, &name, &path)?;
        let mut peer = peer(&upstream, peer_addr, r);
        if let Some(t) = &r.upstream_tls {
            let key = format!("{path}.upstream_tls");
            crate::tls::upstream::UpstreamTls::build(&key, t)?.apply(&mut peer);
        }
        Ok(Route {
            rules,
            identity,
            metrics: crate::metrics::RouteMetrics::new(&name),
            name,
            prefix: r.path_prefix.clone(),
            // Validated as canonical by the config; matched against canonical request hosts.
            host: r.host.as_ref().map(|h| {
                crate::target::canonical_host(h.as_bytes())
                    .map(|c| c.name().to_string())
                    .unwrap_or_else(|_| h.to_ascii_lowercase())
            }),
            auth: r.auth,
            connector: r.connector.clone(),
            connector_by_tenant: r.connector_by_tenant.clone(),
            host_override: (!r.preserve_host).then(|| upstream.host_header()).flatten(),
            header: r.header.clone(),
            scheme: r.scheme.clone(),
            strip_cookies: strip_list(descope_cookies, r.strip_cookies.as_deref()),
            retries: r.retries,
            max_body_bytes: None,
            websocket: r.websocket,
            refresh_session: false,
            peer,
            addrs,
            upstream,
        })
    }

    /// The route for a request: `host` is the canonical host name (no port), `path` the
    /// canonical path (no query), both from [`crate::target`].
    /// Adds the session claims any route's rules or identity headers read to `kept`.
    pub(crate) fn claims_read(&self, kept: &mut crate::verify::ClaimsKept) {
        for r in &self.routes {
            r.rules.claims_read(kept);
            if let Some(i) = &r.identity {
                i.claims_read(kept);
            }
        }
    }

    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(host, path))
    }

    /// The header names of every route's identity headers (and signed assertion), which no
    /// client may send on any route.
    pub(crate) fn identity_names(&self) -> &[http::HeaderName] {
        &self.identity_names
    }

    /// Every route, in lookup order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml_routes: &str) -> RouteTable {
        let text = format!(
            "descope: {{project_id: P, jwks_url: 'http://127.0.0.1:1/k'}}\nconnectors: {{ext: {{type: claim}}}}\nroutes:\n{yaml_routes}"
        );
        let cfg = Config::parse(&text, &|_| None).unwrap();
        RouteTable::build(&cfg).unwrap()
    }

    #[test]
    fn longest_prefix_then_host_wins() {
        let t = table(
            "  - {name: root, path_prefix: /, upstream: 'http://127.0.0.1:1', connector: ext}\n\
             \x20 - {name: api, path_prefix: /api, upstream: 'http://127.0.0.1:2', connector: ext}\n\
             \x20 - {name: api-host, path_prefix: /api, host: API.example.com, upstream: 'http://127.0.0.1:3', connector: ext}\n\
             \x20 - {name: v2, path_prefix: /api/v2/, upstream: 'http://127.0.0.1:4', connector: ext}\n",
        );
        let name = |h: Option<&str>, p: &str| t.find(h, p).map(|r| r.name.clone());
        assert_eq!(name(None, "/api/x").as_deref(), Some("api"));
        assert_eq!(
            name(Some("api.example.com"), "/api/x").as_deref(),
            Some("api-host")
        );
        assert_eq!(name(Some("other.com"), "/api").as_deref(), Some("api"));
        assert_eq!(name(None, "/apix").as_deref(), Some("root"));
        assert_eq!(name(None, "/api/v2/users").as_deref(), Some("v2"));
    }

    /// A route's `strip_cookies` adds to the Descope cookies, never replaces them.
    #[test]
    fn descope_cookies_are_stripped_on_every_route() {
        let t = table(
            "  - {name: own, path_prefix: /a, upstream: 'http://127.0.0.1:1', connector: ext, strip_cookies: [legacy_sid, DSR]}\n\
             \x20 - {name: empty, path_prefix: /b, upstream: 'http://127.0.0.1:1', connector: ext, strip_cookies: []}\n\
             \x20 - {name: default, path_prefix: /c, upstream: 'http://127.0.0.1:1', connector: ext}\n",
        );
        let strip = |p: &str| t.find(None, p).map(|r| r.strip_cookies.clone());
        assert_eq!(strip("/a").unwrap(), ["DS", "DSR", "legacy_sid"]);
        assert_eq!(strip("/b").unwrap(), ["DS", "DSR"]);
        assert_eq!(strip("/c").unwrap(), ["DS", "DSR"]);
        let text = "descope: {project_id: P, jwks_url: 'http://127.0.0.1:1/k', session_cookie: S, refresh_cookie: R}\nconnectors: {ext: {type: claim}}\nroutes:\n  - {upstream: 'http://127.0.0.1:1', connector: ext, strip_cookies: [x]}\n";
        let t = RouteTable::build(&Config::parse(text, &|_| None).unwrap()).unwrap();
        let r = t.find(None, "/").unwrap();
        assert_eq!(r.strip_cookies, ["S", "R", "DS", "DSR", "x"]);
    }

    #[test]
    fn no_route() {
        let t = table("  - {path_prefix: /only, upstream: 'http://127.0.0.1:1', connector: ext}\n");
        assert!(t.find(None, "/other").is_none());
    }
}
