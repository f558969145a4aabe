//! What every connector's settings provide ([`Settings`]), and the checks they share. Its own
//! file so that each connector's module and `connector_config.rs` (which names every connector's
//! settings type) both depend on it, and not on each other.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, Dur};

/// What every connector's settings provide.
pub(crate) trait Settings {
    /// Checks that need no file or network access; `path` is `connectors.<name>`.
    fn validate(&self, path: &str) -> Result<(), ConfigError>;
    /// The file paths in the settings (key files, service accounts): resolved against the config
    /// file's directory, and left out of the connector's fingerprint (their contents count).
    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        Vec::new()
    }
    /// The longest one mint can take (every attempt timing out, plus the pauses between them;
    /// zero for a connector that signs locally): the shared cache's lock must outlive it, or a
    /// second replica would mint while the first still waits for its reply.
    fn worst_case(&self) -> Duration;
}

pub(super) fn check_url(key: String, u: &str) -> Result<(), ConfigError> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::key(
            key,
            format!("{u:?} is not an http(s) URL"),
        ))
    }
}

/// Two keys of which exactly one must be set; the error names the key to act on.
pub(super) fn exactly_one(
    path: &str,
    (a, a_set): (&str, bool),
    (b, b_set): (&str, bool),
    hint: &str,
) -> Result<(), ConfigError> {
    match (a_set, b_set) {
        (false, false) => Err(ConfigError::key(
            format!("{path}.{a}"),
            format!("set {a} or {b}{hint}"),
        )),
        (true, true) => Err(ConfigError::key(
            format!("{path}.{b}"),
            format!("{a} and {b} are exclusive: set one"),
        )),
        _ => Ok(()),
    }
}

pub(super) fn positive(key: String, d: Dur) -> Result<(), ConfigError> {
    if d.0.is_zero() {
        Err(ConfigError::key(key, "must be more than 0"))
    } else {
        Ok(())
    }
}
