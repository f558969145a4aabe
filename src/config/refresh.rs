//! `descope.refresh:`: refreshing expired sessions at the edge (off by default), and how the new
//! `DS` (and a rotated `DSR`) cookie is set in the browser. A route opts in or out with
//! `refresh_session` (default: `enabled`).

use serde::Deserialize;

use super::{ConfigError, Dur};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// Whether routes refresh by default (`routes[].refresh_session` overrides it per route).
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub cookie: CookieConfig,
    /// One call to Descope's refresh endpoint, at most (connect, send, whole reply).
    #[serde(default = "d_timeout")]
    pub timeout: Dur,
    /// The outcome of one refresh is served to every request carrying the same refresh token for
    /// this long (a page's twenty assets, the time a browser needs to store the new cookie), so
    /// it is also the least time between two calls for one refresh token. A new session is never
    /// served beyond its own `exp`.
    #[serde(default = "d_reuse")]
    pub reuse: Dur,
    /// A larger reply from the refresh endpoint is a failed refresh.
    #[serde(default = "d_max_bytes")]
    pub max_bytes: usize,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            enabled: false,
            cookie: CookieConfig::default(),
            timeout: d_timeout(),
            reuse: d_reuse(),
            max_bytes: d_max_bytes(),
        }
    }
}

/// The attributes of the cookies a refresh sets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CookieConfig {
    #[serde(default = "d_true")]
    pub secure: bool,
    #[serde(default)]
    pub same_site: SameSite,
    /// `None`: a host-only cookie (no `Domain` attribute).
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default = "d_path")]
    pub path: String,
    /// `HttpOnly` on the session cookie too (the refresh cookie always has it). Off by default:
    /// Descope's web SDK reads `DS` from script.
    #[serde(default)]
    pub http_only: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            secure: true,
            same_site: SameSite::default(),
            domain: None,
            path: d_path(),
            http_only: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    Strict,
    #[default]
    Lax,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

fn d_timeout() -> Dur {
    Dur::secs(2)
}
fn d_reuse() -> Dur {
    Dur::secs(10)
}
fn d_max_bytes() -> usize {
    64 * 1024
}
fn d_true() -> bool {
    true
}
fn d_path() -> String {
    "/".into()
}

impl RefreshConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("descope.refresh.{k}");
        if self.timeout.0.is_zero() {
            return Err(ConfigError::key(key("timeout"), "must be more than 0"));
        }
        if self.reuse.0.is_zero() {
            return Err(ConfigError::key(key("reuse"), "must be more than 0"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::key(key("max_bytes"), "must be more than 0"));
        }
        let c = &self.cookie;
        // Browsers drop a `SameSite=None` cookie that is not `Secure`.
        if c.same_site == SameSite::None && !c.secure {
            return Err(ConfigError::key(
                key("cookie.same_site"),
                "none needs cookie.secure: true (browsers refuse it otherwise)",
            ));
        }
        let attr_safe = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && b != b';');
        if !c.path.starts_with('/') || !attr_safe(&c.path) {
            return Err(ConfigError::key(
                key("cookie.path"),
                format!("{:?} is not a cookie path", c.path),
            ));
        }
        if let Some(d) = &c.domain {
            if d.is_empty() || !attr_safe(d) {
                return Err(ConfigError::key(
                    key("cookie.domain"),
                    format!("{d:?} is not a cookie domain"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn parse(descope_extra: &str, route_extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'{descope_extra}}}\n\
             connectors: {{ext: {{type: claim}}}}\n\
             routes: [{{upstream: 'http://127.0.0.1:1', connector: ext{route_extra}}}]\n"
        );
        Config::parse(&text, &|_| None)
    }

    fn error(descope_extra: &str, route_extra: &str) -> String {
        parse(descope_extra, route_extra).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_off_secure_lax_root_two_seconds() {
        let c = parse("", "").unwrap();
        let r = &c.descope.refresh;
        assert!(!r.enabled && r.cookie.secure && !r.cookie.http_only);
        assert_eq!(r.cookie.same_site, super::SameSite::Lax);
        assert_eq!(
            (r.cookie.path.as_str(), r.cookie.domain.as_ref()),
            ("/", None)
        );
        assert_eq!(r.timeout.0, std::time::Duration::from_secs(2));
        assert_eq!(r.reuse.0, std::time::Duration::from_secs(10));
        assert_eq!(c.routes[0].refresh_session, None);
        let c = parse(
            ", refresh: {enabled: true, timeout: 500ms, cookie: {domain: example.com, same_site: strict}}",
            ", refresh_session: false",
        )
        .unwrap();
        assert!(c.descope.refresh.enabled);
        assert_eq!(
            c.descope.refresh.cookie.domain.as_deref(),
            Some("example.com")
        );
        assert_eq!(c.routes[0].refresh_session, Some(false));
    }

    #[test]
    fn errors_name_their_keys() {
        for (extra, want) in [
            (
                ", refresh: {timeout: 0s}",
                "descope.refresh.timeout: must be more than 0",
            ),
            (
                ", refresh: {reuse: 0s}",
                "descope.refresh.reuse: must be more than 0",
            ),
            (
                ", refresh: {cookie: {same_site: none, secure: false}}",
                "descope.refresh.cookie.same_site: none needs cookie.secure: true",
            ),
            (
                ", refresh: {cookie: {path: app}}",
                "descope.refresh.cookie.path: \"app\"",
            ),
            (
                ", refresh: {cookie: {domain: 'a.com; x=1'}}",
                "descope.refresh.cookie.domain: \"a.com; x=1\"",
            ),
            (
                ", refresh: {enable: true}",
                "descope.refresh.enable: unknown field `enable`",
            ),
        ] {
            let e = error(extra, "");
            assert!(e.starts_with(want), "{extra}: {e}");
        }
        let e = error("", ", auth: none, refresh_session: true");
        assert!(e.starts_with("routes[0].refresh_session: "), "{e}");
    }
}
