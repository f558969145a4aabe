//! `connectors.<name>` blocks as the file has them. What a connector's settings mean is the
//! connector's business: `crate::exchange` parses each block into its typed settings, validates
//! it and builds the connector (at start, on reload, in `extoken check`), with errors that name
//! the key path (`connectors.fb.service_account_file: ...`). The config only needs the names
//! (routes must name an existing connector) and the `type` (for the summary).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One `connectors.<name>` block, `${VAR}`-expanded, not yet interpreted.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct RawConnector {
    value: serde_yaml::Value,
    /// The config file's directory, which relative file paths in the block are relative to.
    #[serde(skip)]
    dir: Option<PathBuf>,
}

impl RawConnector {
    /// A block from its YAML value (tests and tools; a config file deserializes into it).
    pub fn new(value: serde_yaml::Value) -> RawConnector {
        RawConnector { value, dir: None }
    }

    /// The block's YAML value.
    pub fn value(&self) -> &serde_yaml::Value {
        &self.value
    }

    /// The block's `type`, as written (`?` when it has none).
    pub fn type_name(&self) -> &str {
        self.value
            .get("type")
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or("?")
    }

    /// Where relative file paths of the block start from: the config file's directory, or the
    /// working directory for a config that was not read from a file.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Relative file paths in the block are relative to `base`, the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.dir = Some(base.to_owned());
    }
}

/// Only the type: the block holds secrets.
impl fmt::Debug for RawConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawConnector")
            .field("type", &self.type_name())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_name_and_redacted_debug() {
        let c = RawConnector::new(
            serde_yaml::from_str("{type: supabase, jwt_secret: s3cr3t}").unwrap(),
        );
        assert_eq!(c.type_name(), "supabase");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(RawConnector::new(serde_yaml::Value::Null).type_name(), "?");
        let mut c = c;
        assert_eq!(c.dir(), None);
        c.resolve_paths(Path::new("/etc/extoken"));
        assert_eq!(c.dir(), Some(Path::new("/etc/extoken")));
    }
}
