//! Network values of the config, parsed once by serde: listen addresses, upstream URLs, header
//! names, CIDR blocks. The runtime never parses them again.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer};

/// `host:port` to listen on, e.g. `0.0.0.0:8080` (no host names: nothing is resolved at bind).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:8080"))
}

/// serde `deserialize_with` for a listen address.
pub(crate) fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map_err(serde::de::Error::custom)
}

/// `listen`: an address, or `off` for none (TLS only).
pub(crate) fn de_listen_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim() == "off" {
        return Ok(None);
    }
    parse_listen(&s).map(Some).map_err(serde::de::Error::custom)
}

/// `admin_listen`: an address, or `off` / empty for none.
pub(crate) fn de_admin_listen<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if matches!(s.trim(), "" | "off") {
        return Ok(None);
    }
    parse_listen(&s).map(Some).map_err(serde::de::Error::custom)
}

/// serde `deserialize_with` for a header name (`Authorization`, `X-Legacy-Token`).
pub(crate) fn de_header_name<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<http::HeaderName, D::Error> {
    let s = String::deserialize(d)?;
    http::HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a header name")))
}

/// A route's `upstream:`, `http://host[:port]` or `https://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// Parses `http://host[:port]` / `https://host[:port]` (a trailing `/` is allowed, a path is
    /// not: extoken forwards the request's own canonical path).
    pub fn parse(s: &str) -> Result<Upstream, String> {
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

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Upstream::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One `address/prefix` block (`10.0.0.0/8`, `fd00::/8`; a bare address is a /32 or /128).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not a CIDR block like 10.0.0.0/8 or fd00::/8");
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, what a dual-stack
    /// listener reports) is matched as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_parsing() {
        assert_eq!(
            Upstream::parse("http://127.0.0.1:3000").unwrap(),
            Upstream {
                tls: false,
                host: "127.0.0.1".into(),
                port: 3000
            }
        );
        let u = Upstream::parse("https://api.example.com/").unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 443);
        assert_eq!(u.to_string(), "https://api.example.com:443");
        assert!(Upstream::parse("ftp://x").is_err());
        assert!(Upstream::parse("http://x/base").is_err());
        assert!(Upstream::parse("http://").is_err());
        assert!(Upstream::parse("http://u:p@x").is_err());
    }

    #[test]
    fn host_header_omits_default_ports() {
        let h = |u: &str| Upstream::parse(u).unwrap().host_header().unwrap();
        assert_eq!(h("https://abc.supabase.co"), "abc.supabase.co");
        assert_eq!(h("http://127.0.0.1:3000"), "127.0.0.1:3000");
        assert_eq!(h("http://[::1]:8080"), "[::1]:8080");
    }

    #[test]
    fn blocks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "10.0.0.0/", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
