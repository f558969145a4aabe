//! Routing: which route a request belongs to, and where that route's upstream is.
//!
//! Routes are sorted once when the config loads (longest `path_prefix` first, a route with a
//! `host` before one without at equal length, then file order), so a lookup is a short linear scan
//! over pre-lowercased strings with no allocation.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use crate::config::{AuthMode, Config, ConfigError, RouteConfig, Upstream};

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
    /// The peer for every request of this route, built once with its timeouts (the address is
    /// resolved at load: DNS is not on the request path).
    peer: HttpPeer,
}

impl Route {
    /// A peer for one request (pingora takes ownership of it): a clone of the prebuilt one.
    pub(crate) fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
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
    peer
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
}

impl RouteTable {
    /// The routes of a validated config, sorted for lookup. Resolves each upstream host once
    /// (an unresolvable one is an error naming its `routes[i].upstream`).
    pub fn build(cfg: &Config) -> Result<RouteTable, ConfigError> {
        let default_strip = vec![
            cfg.descope.session_cookie.clone(),
            cfg.descope.refresh_cookie.clone(),
        ];
        let mut routes = Vec::with_capacity(cfg.routes.len());
        for (i, r) in cfg.routes.iter().enumerate() {
            routes.push((i, Arc::new(Self::route(i, r, &default_strip)?)));
        }
        routes.sort_by(|(ia, a), (ib, b)| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
                .then(ia.cmp(ib))
        });
        Ok(RouteTable {
            routes: routes.into_iter().map(|(_, r)| r).collect(),
        })
    }

    fn route(i: usize, r: &RouteConfig, default_strip: &[String]) -> Result<Route, ConfigError> {
        let upstream = r.upstream.clone();
        let key = || format!("routes[{i}].upstream");
        let peer_addr = (upstream.host.as_str(), upstream.port)
            .to_socket_addrs()
            .map_err(|e| ConfigError::key(key(), format!("cannot resolve {}: {e}", upstream.host)))?
            .next()
            .ok_or_else(|| ConfigError::key(key(), format!("{} has no address", upstream.host)))?;
        Ok(Route {
            name: r.name.clone().unwrap_or_else(|| format!("route{i}")),
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
            strip_cookies: r
                .strip_cookies
                .clone()
                .unwrap_or_else(|| default_strip.to_vec()),
            retries: r.retries,
            peer: peer(&upstream, peer_addr, r),
            upstream,
        })
    }

    /// The route for a request: `host` is the canonical host name (no port), `path` the
    /// canonical path (no query), both from [`crate::target`].
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(host, path))
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

    #[test]
    fn no_route() {
        let t = table("  - {path_prefix: /only, upstream: 'http://127.0.0.1:1', connector: ext}\n");
        assert!(t.find(None, "/other").is_none());
    }
}
