//! `tls:` (the TLS listener) and `routes[].upstream_tls` (how a route's `https://` upstream is
//! verified, and the client certificate it is shown). Only the shape and the checks that need no
//! file: the files are read, parsed and matched by `crate::tls`, which builds them into rustls
//! objects (at start, at `extoken check`, at every reload), with errors naming these keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{net, ConfigError};

/// The TLS listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(deserialize_with = "net::de_listen")]
    pub listen: SocketAddr,
    /// Chosen by SNI against each certificate's names; the first is the default (no SNI, or a
    /// name none of them has).
    pub certificates: Vec<CertificateFiles>,
    #[serde(default)]
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in order of preference.
    #[serde(default = "d_alpn")]
    pub alpn: Vec<String>,
    /// CAs that client certificates must chain to (`client_auth: optional | required`).
    pub client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// One server certificate: a PEM chain (leaf first) and its PEM private key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one passes, a certificate that does not verify fails.
    Optional,
    /// A client without a verified certificate fails the handshake.
    Required,
}

/// The ALPN names the listener can serve.
pub const ALPN_HTTP1: &str = "http/1.1";
pub const ALPN_H2: &str = "h2";

fn d_alpn() -> Vec<String> {
    vec![ALPN_H2.into(), ALPN_HTTP1.into()]
}

impl TlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.certificates.is_empty() {
            return Err(ConfigError::key(
                "tls.certificates",
                "at least one certificate is needed",
            ));
        }
        if self.alpn.is_empty() {
            return Err(ConfigError::key("tls.alpn", "at least one protocol"));
        }
        for (i, p) in self.alpn.iter().enumerate() {
            if p != ALPN_HTTP1 && p != ALPN_H2 {
                let m = format!("{p:?} is not one of {ALPN_H2}, {ALPN_HTTP1}");
                return Err(ConfigError::key(format!("tls.alpn[{i}]"), m));
            }
            if self.alpn[..i].contains(p) {
                return Err(ConfigError::key(format!("tls.alpn[{i}]"), "listed twice"));
            }
        }
        match (self.client_auth, &self.client_ca_file) {
            (ClientAuth::None, Some(_)) => Err(ConfigError::key(
                "tls.client_ca_file",
                "set, but client_auth is none: say optional or required (or remove it)",
            )),
            (ClientAuth::Optional | ClientAuth::Required, None) => Err(ConfigError::key(
                "tls.client_ca_file",
                "required when client_auth is optional or required",
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for c in &mut self.certificates {
            resolve(&mut c.cert_file, base);
            resolve(&mut c.key_file, base);
        }
        if let Some(f) = &mut self.client_ca_file {
            resolve(f, base);
        }
    }
}

/// `routes[].upstream_tls`: a private CA, the name to verify, a client certificate.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CAs the upstream's certificate must chain to, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and verified in the upstream's certificate (default: the upstream's
    /// host). Never empty: an empty SNI would turn pingora's verification off.
    pub server_name: Option<String>,
    /// A client certificate chain and key shown to the upstream (mTLS).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl UpstreamTlsConfig {
    /// `path` is `routes[i].upstream_tls`; `tls`: whether the upstream is `https://`.
    pub(super) fn validate(&self, path: &str, tls: bool) -> Result<(), ConfigError> {
        if !tls {
            return Err(ConfigError::key(path, "only for an https:// upstream"));
        }
        if let Some(n) = &self.server_name {
            if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
                let m = format!("{n:?} is not a DNS name or an IP address");
                return Err(ConfigError::key(format!("{path}.server_name"), m));
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => Err(ConfigError::key(
                format!("{path}.client_key_file"),
                "required with client_cert_file",
            )),
            (None, Some(_)) => Err(ConfigError::key(
                format!("{path}.client_cert_file"),
                "required with client_key_file",
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for f in [
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(f, base);
        }
    }
}

impl super::Config {
    /// At least one listener; the TLS one on a port of its own (the proxy tells its connections
    /// apart by the local port they arrived on).
    pub(super) fn validate_listeners(&self) -> Result<(), ConfigError> {
        let Some(tls) = &self.tls else {
            if self.listen.is_none() {
                return Err(ConfigError::key(
                    "listen",
                    "off, and there is no tls listener: nothing would be served",
                ));
            }
            return Ok(());
        };
        if self.listen.is_some_and(|l| l.port() == tls.listen.port()) {
            return Err(ConfigError::key(
                "tls.listen",
                "must use another port than listen",
            ));
        }
        if self.admin_listen == Some(tls.listen) {
            return Err(ConfigError::key(
                "tls.listen",
                "must differ from admin_listen",
            ));
        }
        tls.validate()
    }
}

fn resolve(p: &mut PathBuf, base: &Path) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn parse(extra: &str, route: &str) -> Result<Config, String> {
        let text = format!(
            "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors: {{ext: {{type: claim}}}}\n\
             routes: [{{upstream: 'https://127.0.0.1:1', connector: ext{route}}}]\n{extra}"
        );
        Config::parse(&text, &|_| None).map_err(|e| e.to_string())
    }

    const CERT: &str = "certificates: [{cert_file: a.pem, key_file: a.key}]";

    #[test]
    fn a_tls_listener_with_defaults() {
        let c = parse(&format!("tls: {{listen: '0.0.0.0:8443', {CERT}}}"), "").unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.min_version, super::TlsVersion::V1_2);
        assert_eq!(t.alpn, ["h2", "http/1.1"]);
        assert_eq!(t.client_auth, super::ClientAuth::None);
        assert_eq!(c.limits.tls_handshake_timeout.to_string(), "10s");
        let only = parse(
            &format!("listen: 'off'\ntls: {{listen: '0.0.0.0:8443', {CERT}}}"),
            "",
        );
        assert_eq!(only.unwrap().listen, None);
    }

    #[test]
    fn tls_mistakes_name_their_keys() {
        for (extra, want) in [
            ("listen: 'off'", "listen: off, and there is no tls listener"),
            (
                "tls: {listen: '0.0.0.0:8080', certificates: []}",
                "tls.listen: must use another port",
            ),
            (
                "tls: {listen: '0.0.0.0:8443', certificates: []}",
                "tls.certificates: at least one",
            ),
            (
                &format!("tls: {{listen: '0.0.0.0:8443', {CERT}, min_version: '1.1'}}"),
                "tls.min_version",
            ),
            (
                &format!("tls: {{listen: '0.0.0.0:8443', {CERT}, alpn: [spdy]}}"),
                "tls.alpn[0]",
            ),
            (
                &format!("tls: {{listen: '0.0.0.0:8443', {CERT}, client_auth: required}}"),
                "tls.client_ca_file: required when client_auth",
            ),
            (
                &format!("tls: {{listen: '0.0.0.0:8443', {CERT}, client_ca_file: ca.pem}}"),
                "tls.client_ca_file: set, but client_auth is none",
            ),
            (
                "limits: {tls_handshake_timeout: 0s}",
                "limits.tls_handshake_timeout",
            ),
        ] {
            let e = parse(extra, "").unwrap_err();
            assert!(e.starts_with(want), "{extra}: {e}");
        }
    }

    #[test]
    fn upstream_tls_never_turns_verification_off() {
        let ok = parse(
            "",
            ", upstream_tls: {ca_file: ca.pem, server_name: orders.internal}",
        );
        let u = ok.unwrap().routes[0].upstream_tls.clone().unwrap();
        assert_eq!(u.server_name.as_deref(), Some("orders.internal"));
        for (route, want) in [
            (
                ", upstream_tls: {server_name: ''}",
                "routes[0].upstream_tls.server_name",
            ),
            (
                ", upstream_tls: {server_name: 'a b'}",
                "routes[0].upstream_tls.server_name",
            ),
            (
                ", upstream_tls: {client_cert_file: c.pem}",
                "routes[0].upstream_tls.client_key_file: required",
            ),
            (", upstream_tls: {verify: false}", "routes[0].upstream_tls"),
        ] {
            let e = parse("", route).unwrap_err();
            assert!(e.starts_with(want), "{route}: {e}");
        }
        let plain = "descope: {project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}\n\
             routes: [{upstream: 'http://127.0.0.1:1', auth: none, upstream_tls: {}}]\n";
        let e = Config::parse(plain, &|_| None).unwrap_err().to_string();
        assert!(
            e.starts_with("routes[0].upstream_tls: only for an https"),
            "{e}"
        );
    }
}
