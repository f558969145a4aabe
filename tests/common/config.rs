//! Gateway configs as data: a [`ConfigBuilder`] (the `descope:` block, named connectors, routes
//! as [`RouteSpec`]s, any other top-level key) serialized to YAML by serde_yaml, so tests never
//! splice YAML text and every value is quoted as YAML needs. The harness adds `listen:` and the
//! admin lines itself ([`GatewayProcess::launch`](super::process::GatewayProcess::launch)).
//!
//! ```ignore
//! let yaml = ConfigBuilder::new(PROJECT, &jwks.url())
//!     .descope("jwks_refresh", "1s")
//!     .ext_connector()
//!     .route(RouteSpec::new("/public", &up).auth_none())
//!     .route(RouteSpec::new("/", &up).name("api").connector("ext"))
//!     .to_yaml();
//! ```

use serde_json::{json, Map, Value};

/// A whole gateway config, built up key by key.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    descope: Map<String, Value>,
    connectors: Map<String, Value>,
    /// Other top-level keys (`cache`, `limits`, `log`, ...), in the order set.
    top: Vec<(String, Value)>,
    routes: Vec<RouteSpec>,
}

impl ConfigBuilder {
    /// A config for `project` whose keys come from `jwks_url`; no connectors, no routes yet.
    pub fn new(project: &str, jwks_url: &str) -> ConfigBuilder {
        Self::with_descope(json!({"project_id": project, "jwks_url": jwks_url}))
    }

    /// A config for `project` whose keys are read from a file (relative to the config file).
    pub fn from_jwks_file(project: &str, path: &str) -> ConfigBuilder {
        Self::with_descope(json!({"project_id": project, "jwks_file": path}))
    }

    fn with_descope(descope: Value) -> ConfigBuilder {
        let Value::Object(descope) = descope else {
            unreachable!()
        };
        ConfigBuilder {
            descope,
            connectors: Map::new(),
            top: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// The usual whole config: the [`ext`](Self::ext_connector) connector and one
    /// `auth: required` route `api` on `/` to `upstream`.
    pub fn simple(project: &str, jwks_url: &str, upstream: &str) -> ConfigBuilder {
        Self::new(project, jwks_url)
            .ext_connector()
            .route(RouteSpec::new("/", upstream).name("api").connector("ext"))
    }

    /// Sets a key of the `descope:` block (`jwks_refresh`, `audience`, `leeway`, ...).
    pub fn descope(mut self, key: &str, value: impl Into<Value>) -> ConfigBuilder {
        self.descope.insert(key.into(), value.into());
        self
    }

    /// Removes a key of the `descope:` block.
    pub fn unset_descope(mut self, key: &str) -> ConfigBuilder {
        self.descope.remove(key);
        self
    }

    /// Adds (or replaces) the connector `name`, e.g. `json!({"type": "claim"})`.
    pub fn connector(mut self, name: &str, spec: Value) -> ConfigBuilder {
        assert!(spec.is_object(), "a connector is a mapping: {spec}");
        self.connectors.insert(name.into(), spec);
        self
    }

    /// The usual connector: `ext`, a `claim` connector on `externalToken`.
    pub fn ext_connector(self) -> ConfigBuilder {
        self.connector("ext", claim_connector("externalToken"))
    }

    /// Sets a top-level key other than `descope`, `connectors` and `routes`.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> ConfigBuilder {
        assert!(
            !matches!(key, "descope" | "connectors" | "routes"),
            "{key} has its own builder method"
        );
        let value = value.into();
        match self.top.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.top.push((key.into(), value)),
        }
        self
    }

    /// Appends a route (routes keep their order).
    pub fn route(mut self, route: RouteSpec) -> ConfigBuilder {
        self.routes.push(route);
        self
    }

    /// Changes the route at `index` (in the order added).
    pub fn edit_route(
        mut self,
        index: usize,
        edit: impl FnOnce(RouteSpec) -> RouteSpec,
    ) -> ConfigBuilder {
        let route = self.routes.remove(index);
        self.routes.insert(index, edit(route));
        self
    }

    /// The config file's text.
    pub fn to_yaml(&self) -> String {
        let mut doc = serde_yaml::Mapping::new();
        let mut put = |key: &str, value: Value| {
            doc.insert(key.into(), serde_yaml::to_value(value).unwrap());
        };
        put("descope", Value::Object(self.descope.clone()));
        if !self.connectors.is_empty() {
            put("connectors", Value::Object(self.connectors.clone()));
        }
        for (key, value) in &self.top {
            put(key, value.clone());
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(|r| Value::Object(r.0.clone()));
            put("routes", Value::Array(routes.collect()));
        }
        serde_yaml::to_string(&doc).unwrap()
    }
}

/// A `claim` connector that forwards the session's `claim`.
pub fn claim_connector(claim: &str) -> Value {
    json!({"type": "claim", "claim": claim})
}

/// One entry of `routes:`.
#[derive(Clone, Debug)]
pub struct RouteSpec(Map<String, Value>);

impl RouteSpec {
    /// A route for the paths under `path_prefix`, to `upstream`.
    pub fn new(path_prefix: &str, upstream: &str) -> RouteSpec {
        RouteSpec::any_path(upstream).set("path_prefix", path_prefix)
    }

    /// A route with no `path_prefix` (the default: every path), to `upstream`.
    pub fn any_path(upstream: &str) -> RouteSpec {
        RouteSpec(Map::new()).set("upstream", upstream)
    }

    pub fn name(self, name: &str) -> RouteSpec {
        self.set("name", name)
    }

    /// The connector that makes the external token (the route is `auth: required`).
    pub fn connector(self, name: &str) -> RouteSpec {
        self.set("connector", name)
    }

    /// `auth: none`: no session needed, nothing minted.
    pub fn auth_none(self) -> RouteSpec {
        self.set("auth", "none")
    }

    /// Only for requests to this host.
    pub fn host(self, host: &str) -> RouteSpec {
        self.set("host", host)
    }

    /// Any other route key (`header`, `scheme`, `strip_cookies`, `preserve_host`, ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> RouteSpec {
        self.0.insert(key.into(), value.into());
        self
    }

    pub fn unset(mut self, key: &str) -> RouteSpec {
        self.0.remove(key);
        self
    }
}
