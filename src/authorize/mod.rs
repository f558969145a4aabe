//! Step 3½ of the request path: may this verified session pass this route, and what is the backend
//! told about it? It runs after `verify` and before `exchange`, so no connector is ever called
//! for a request that is refused.
//!
//! [`Rules`] are a route's `require:` block compiled once at load ([`rules`]): `methods`,
//! `tenant` (scopes `roles`/`permissions` to `tenants.<id>`, `current` meaning the session's
//! `dct`), `tenants`, `roles`, `permissions`, `claims`. They are checked by borrowing from the
//! verified claims, without allocating. A refusal names its rule ([`Denied`]); `crate::answer`
//! turns it into the 403. [`IdentityHeaders`] ([`identity`]) are a route's `identity_headers`,
//! with the optional signed assertion of them.

mod identity;
mod method_override;
mod rules;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use identity::ASSERTION_LIFETIME_SECS;
pub(crate) use identity::{Assertions, IdentityHeaders};
pub(crate) use rules::{claim_path, Denied, Rules};

use crate::config::{Config, ConfigError};

/// Compiles every route's `require` and `identity_headers` without building anything else (what
/// `extoken check` and `extoken reload` check; building the routes does the same).
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    for (i, r) in cfg.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        Rules::compile(r.require.as_ref(), &format!("{path}.require"))?;
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        IdentityHeaders::compile(r, &name, &path)?;
    }
    Ok(())
}
