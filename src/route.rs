//! Routing: which route a request belongs to, and where that route's upstream is.
//!
//! Routes are sorted once when the config loads (longest `path_prefix` first, a route with a
//! `host` before one without at equal length, then file order), so a lookup is a short linear scan
//! over pre-lowercased strings with no allocation.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use crate::config::{AuthMode, Config, RouteConfig};

/// A parsed `upstream:` value.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Parses `http://host[:port]` / `https://host[:port]` (a trailing `/` is allowed, a path is not:
/// extoken forwards the request path unchanged).
impl Upstream {
    /// `host[:port]` as a `Host` header (the port only when it is not the scheme's default).
    pub fn host_header(&self) -> Option<http::HeaderValue> {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        let v = if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        };
        http::HeaderValue::from_str(&v).ok()
    }
}

pub fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("{s:?} must start with http:// or https://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{s:?} must be scheme://host[:port] with no path, query or credentials"
        ));
    }
    let uri: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("{s:?} has an invalid host"))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = uri
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Upstream { tls, host, port })
}

pub fn check_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:8080"))
}

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
    /// Resolved once at load: DNS is not on the request path. Reload to re-resolve.
    peer_addr: SocketAddr,
}

impl Route {
    /// A fresh peer for one request (pingora takes ownership of it).
    pub fn peer(&self) -> Box<HttpPeer> {
        let sni = if self.upstream.tls {
            self.upstream.host.clone()
        } else {
            String::new()
        };
        Box::new(HttpPeer::new(self.peer_addr, self.upstream.tls, sni))
    }

    /// The connector for a session in tenant `dct` (if any).
    pub fn connector_for(&self, dct: Option<&str>) -> Option<&str> {
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
    pub fn build(cfg: &Config) -> Result<RouteTable, String> {
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

    fn route(i: usize, r: &RouteConfig, default_strip: &[String]) -> Result<Route, String> {
        let upstream =
            parse_upstream(&r.upstream).map_err(|m| format!("routes[{i}].upstream: {m}"))?;
        let peer_addr = (upstream.host.as_str(), upstream.port)
            .to_socket_addrs()
            .map_err(|e| {
                format!(
                    "routes[{i}].upstream: cannot resolve {}: {e}",
                    upstream.host
                )
            })?
            .next()
            .ok_or_else(|| format!("routes[{i}].upstream: {} has no address", upstream.host))?;
        Ok(Route {
            name: r.name.clone().unwrap_or_else(|| format!("route{i}")),
            prefix: r.path_prefix.clone(),
            host: r.host.as_ref().map(|h| {
                crate::target::canonical_host(h.as_bytes())
                    .map(|c| c.name().to_string())
                    .unwrap_or_else(|_| h.to_ascii_lowercase())
            }),
            auth: r.auth,
            connector: r.connector.clone(),
            connector_by_tenant: r.connector_by_tenant.clone(),
            host_override: (!r.preserve_host).then(|| upstream.host_header()).flatten(),
            header: http::HeaderName::from_bytes(r.header.as_bytes())
                .map_err(|_| format!("routes[{i}].header: invalid header name"))?,
            scheme: r.scheme.clone(),
            strip_cookies: r
                .strip_cookies
                .clone()
                .unwrap_or_else(|| default_strip.to_vec()),
            upstream,
            peer_addr,
        })
    }

    /// The route for a request: `host` is the canonical host name (no port), `path` the
    /// canonical path (no query), both from [`crate::target`].
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(host, path))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
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
    fn upstream_parsing() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:3000").unwrap(),
            Upstream {
                tls: false,
                host: "127.0.0.1".into(),
                port: 3000
            }
        );
        let u = parse_upstream("https://api.example.com/").unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 443);
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://x/base").is_err());
        assert!(parse_upstream("http://").is_err());
        assert!(parse_upstream("http://u:p@x").is_err());
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

    #[test]
    fn host_header_omits_default_ports() {
        let h = |u: &str| parse_upstream(u).unwrap().host_header().unwrap();
        assert_eq!(h("https://abc.supabase.co"), "abc.supabase.co");
        assert_eq!(h("http://127.0.0.1:3000"), "127.0.0.1:3000");
        assert_eq!(h("http://[::1]:8080"), "[::1]:8080");
    }
}
