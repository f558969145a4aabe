//! `decision:`: extoken as the authorizer of an ingress a team already runs (nginx
//! `auth_request`, Traefik ForwardAuth, Envoy `ext_authz` over HTTP and gRPC). The routes,
//! limits and connectors are the proxy's; this block only says where the decisions are asked
//! and who may ask them.

use serde::Deserialize;

use super::{net, Cidr, ConfigError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionConfig {
    /// The HTTP decision listener (nginx, Traefik, Envoy `ext_authz` HTTP, Istio
    /// `envoyExtAuthzHttp`).
    #[serde(default, deserialize_with = "de_opt_listen")]
    pub listen: Option<std::net::SocketAddr>,
    /// The gRPC decision listener (`envoy.service.auth.v3.Authorization/Check`).
    #[serde(default, deserialize_with = "de_opt_listen")]
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// The only peers whose word on the original request is taken; any other peer is refused
    /// (403) on both listeners.
    pub trusted_proxies: Vec<Cidr>,
    /// On the HTTP listener, requests under this path are Envoy's (`ext_authz`
    /// `http_service.path_prefix`): the original request is the request line itself, the path
    /// after the prefix. Other paths read the original request from nginx's and Traefik's
    /// headers.
    #[serde(default = "d_envoy_path_prefix")]
    pub envoy_path_prefix: String,
}

fn d_envoy_path_prefix() -> String {
    "/envoy".into()
}

fn de_opt_listen<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    net::de_listen(d).map(Some)
}

impl DecisionConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_none() && self.grpc_listen.is_none() {
            return Err(ConfigError::key(
                "decision",
                "needs listen, grpc_listen or both",
            ));
        }
        // An empty list would refuse every ingress; a missing one is a parse error already.
        if self.trusted_proxies.is_empty() {
            return Err(ConfigError::key(
                "decision.trusted_proxies",
                "at least one block is needed: only these peers may say what the original request was",
            ));
        }
        let p = &self.envoy_path_prefix;
        if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') || p.contains(['?', '#', ';']) {
            return Err(ConfigError::key(
                "decision.envoy_path_prefix",
                "must be a path like /envoy (a leading /, no trailing /)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<DecisionConfig, String> {
        let d: DecisionConfig = serde_yaml::from_str(y).map_err(|e| e.to_string())?;
        d.validate().map_err(|e| e.to_string())?;
        Ok(d)
    }

    #[test]
    fn listeners_and_trusted_proxies() {
        let d = parse("{listen: '127.0.0.1:9191', trusted_proxies: [10.0.0.0/8]}").unwrap();
        assert_eq!(d.listen.map(|a| a.port()), Some(9191));
        assert_eq!(d.grpc_listen, None);
        assert_eq!(d.envoy_path_prefix, "/envoy");
        let e = parse("{trusted_proxies: [10.0.0.0/8]}").unwrap_err();
        assert!(e.contains("needs listen"), "{e}");
        let e = parse("{listen: '127.0.0.1:9191', trusted_proxies: []}").unwrap_err();
        assert!(e.contains("decision.trusted_proxies"), "{e}");
        let e = parse("{listen: '127.0.0.1:9191'}").unwrap_err();
        assert!(e.contains("trusted_proxies"), "{e}");
        let e = parse(
            "{grpc_listen: '127.0.0.1:1', trusted_proxies: [10.0.0.0/8], envoy_path_prefix: 'x/'}",
        )
        .unwrap_err();
        assert!(e.contains("envoy_path_prefix"), "{e}");
    }

    #[test]
    fn check_names_the_decision_listeners() {
        let c = crate::config::Config::parse(
            "descope: {project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}\n\
             connectors: {ext: {type: claim}}\n\
             routes: [{upstream: 'http://127.0.0.1:1', connector: ext}]\n\
             decision: {grpc_listen: '127.0.0.1:9192', trusted_proxies: [10.0.0.0/8, 192.168.0.0/16]}\n",
            &|_| None,
        )
        .unwrap();
        assert!(
            c.summary()
                .contains("decision: http off, grpc 127.0.0.1:9192, 2 trusted proxy block(s)\n"),
            "{}",
            c.summary()
        );
    }
}
