//! Operational settings: the admin listener, logs, shutdown timing, readiness, pid file.
//!
//! All top-level keys of `gateway.yaml`, all optional. `log.level` is the only one a reload
//! (`SIGHUP`) applies; the others are read at start (a reload that changes them logs a warning).

use serde::Deserialize;

use super::{ConfigError, Dur};

pub(super) fn d_admin_listen() -> Option<std::net::SocketAddr> {
    Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9090)))
}
pub(super) fn d_shutdown_grace() -> Dur {
    Dur::secs(25)
}
pub(super) fn d_shutdown_delay() -> Dur {
    Dur::secs(5)
}
pub(super) fn d_keys_max_age() -> Dur {
    Dur::secs(3600)
}

/// `log:`: the format and level of every log line (access lines included).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug`, `trace` or `off`. `EXTOKEN_LOG` overrides it.
    #[serde(default = "d_level")]
    pub level: String,
}

fn d_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: d_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

impl super::Config {
    pub(super) fn validate_ops(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.admin_listen {
            if self.listen == Some(addr) {
                return Err(ConfigError::key(
                    "admin_listen",
                    "must differ from listen (or be off)",
                ));
            }
        }
        if !LOG_LEVELS.contains(&self.log.level.to_ascii_lowercase().as_str()) {
            return Err(ConfigError::key(
                "log.level",
                format!(
                    "{:?} is not one of {}",
                    self.log.level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if self.shutdown_grace.0 < std::time::Duration::from_secs(1) {
            return Err(ConfigError::key("shutdown_grace", "must be at least 1s"));
        }
        if self.shutdown_delay >= self.shutdown_grace {
            return Err(ConfigError::key(
                "shutdown_delay",
                format!(
                    "must be shorter than shutdown_grace ({})",
                    self.shutdown_grace
                ),
            ));
        }
        if self.keys_max_age.0.is_zero() {
            return Err(ConfigError::key("keys_max_age", "must be more than 0"));
        }
        if self.keys_max_age <= self.descope.jwks_refresh {
            return Err(ConfigError::key(
                "keys_max_age",
                format!(
                    "must be longer than descope.jwks_refresh ({}), or readiness would flap",
                    self.descope.jwks_refresh
                ),
            ));
        }
        if let Some(p) = &self.pid_file {
            if p.as_os_str().is_empty() {
                return Err(ConfigError::key("pid_file", "must not be empty"));
            }
        }
        Ok(())
    }

    /// Settings a reload cannot change (they are read once at start), by key name.
    pub fn restart_only_changes(&self, new: &super::Config) -> Vec<&'static str> {
        let mut v = vec![];
        if self.listen != new.listen {
            v.push("listen");
        }
        if self.tls.as_ref().map(|t| t.listen) != new.tls.as_ref().map(|t| t.listen) {
            v.push("tls.listen");
        }
        if self.h2c != new.h2c {
            v.push("h2c");
        }
        if self.limits.h2_max_concurrent_streams != new.limits.h2_max_concurrent_streams {
            v.push("limits.h2_max_concurrent_streams");
        }
        if self.threads != new.threads {
            v.push("threads");
        }
        if self.admin_listen != new.admin_listen {
            v.push("admin_listen");
        }
        if self.log.format != new.log.format {
            v.push("log.format");
        }
        if self.shutdown_grace != new.shutdown_grace || self.shutdown_delay != new.shutdown_delay {
            v.push("shutdown_grace/shutdown_delay");
        }
        if self.pid_file != new.pid_file {
            v.push("pid_file");
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        let text = format!(
            "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors: {{ext: {{type: claim}}}}\n\
             routes: [{{upstream: 'http://127.0.0.1:1', connector: ext}}]\n{extra}"
        );
        Config::parse(&text, &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.log.format, super::LogFormat::Text);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.shutdown_grace.to_string(), "25s");
        assert_eq!(c.shutdown_delay.to_string(), "5s");
        assert_eq!(c.keys_max_age.to_string(), "1h");
        assert_eq!(c.pid_file, None);
    }

    #[test]
    fn values_and_errors_name_their_key() {
        let c =
            parse("admin_listen: off\nlog: {format: json, level: debug}\npid_file: /run/x.pid\n")
                .unwrap();
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.log.format, super::LogFormat::Json);
        for (extra, key) in [
            ("admin_listen: nope", "admin_listen:"),
            ("admin_listen: '0.0.0.0:8080'", "admin_listen:"),
            ("log: {level: loud}", "log.level:"),
            ("log: {format: xml}", "log.format"),
            ("shutdown_delay: 30s", "shutdown_delay:"),
            ("keys_max_age: 0s", "keys_max_age:"),
            ("keys_max_age: 5m", "keys_max_age:"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.starts_with(key), "{extra}: {e}");
        }
    }

    #[test]
    fn restart_only_settings_are_named() {
        let a = parse("").unwrap();
        let b = parse("admin_listen: off\nlog: {format: json, level: debug}\n").unwrap();
        assert_eq!(a.restart_only_changes(&b), ["admin_listen", "log.format"]);
    }
}
