//! `routes[].require` and `routes[].identity_headers`: who may pass a route, and what the backend
//! is told about them. These types mirror the file; `crate::authorize` compiles them (once, at
//! load) into the rules and header lists a request is checked against, with errors naming the key.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `require:` — every rule given must hold.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RequireConfig {
    /// Roles of the session (project-level `roles`, or the tenant's with `tenant:`).
    pub roles: Option<SetRuleConfig>,
    /// Permissions of the session (project-level `permissions`, or the tenant's with `tenant:`).
    pub permissions: Option<SetRuleConfig>,
    /// `current` (the session's `dct`) or a tenant id: the session must be a member of it, and
    /// `roles`/`permissions` are read from that tenant's entry in `tenants`.
    pub tenant: Option<String>,
    /// The session must be a member of one of these tenants (a key of its `tenants` claim).
    pub tenants: Option<Vec<String>>,
    /// Dotted claim path → a value it must equal, or `{in: [values]}`. Kept as JSON values: the
    /// compiler checks their shape and names the key.
    pub claims: Option<BTreeMap<String, serde_json::Value>>,
    /// Allowed HTTP methods.
    pub methods: Option<Vec<String>>,
}

/// `{any: [...]}` (at least one) and/or `{all: [...]}` (every one).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SetRuleConfig {
    pub any: Option<Vec<String>>,
    pub all: Option<Vec<String>>,
}

impl super::RouteConfig {
    /// `  require: roles, methods; identity: X-User-Id, X-Tenant-Id (signed by gw)` for the
    /// `extoken check` summary (empty when the route has neither).
    pub(super) fn who_may_pass(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.require {
            let rules: Vec<&str> = [
                ("methods", r.methods.is_some()),
                ("tenant", r.tenant.is_some()),
                ("tenants", r.tenants.is_some()),
                ("roles", r.roles.is_some()),
                ("permissions", r.permissions.is_some()),
                ("claims", r.claims.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect();
            out.push_str(&format!("  require: {}", rules.join(", ")));
        }
        if let Some(h) = &self.identity_headers {
            let names: Vec<&str> = h.keys().map(String::as_str).collect();
            out.push_str(&format!("  identity: {}", names.join(", ")));
            if let Some(c) = &self.identity_headers_signed_by {
                out.push_str(&format!(" (signed by {c})"));
            }
        }
        out
    }
}

/// The header a signed identity assertion travels in, unless `identity_jws_header` names another.
pub const DEFAULT_IDENTITY_JWS_HEADER: &str = "X-Extoken-Identity";
