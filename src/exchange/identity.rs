//! Reading what a connector needs out of a verified session: the user id, dotted claim paths, and
//! `claims:` mappings (and their checks). Shared by every minting connector so they agree on what
//! "the user" is.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::ExchangeError;
use crate::authorize::claim_path;
use crate::config::ConfigError;
use crate::verify::{ClaimSource, ClaimsKept, VerifiedSession};

/// A `claims:` mapping: target claim (dotted path) → session claim (dotted path).
pub(crate) type ClaimMap = BTreeMap<String, String>;

/// Claims a mapping of a connector that signs JWTs may not set: the connector owns them.
pub(crate) const JWT_RESERVED: &[&str] = &["sub", "exp", "iat", "nbf", "iss", "aud"];

/// Checks a `claims:` mapping (at `{path}.claims`): well-formed paths, no `reserved` target, no
/// source in `nsec`.
pub(crate) fn check_claim_map(
    path: &str,
    m: &ClaimMap,
    reserved: &[&str],
) -> Result<(), ConfigError> {
    for (target, source) in m {
        let key = format!("{path}.claims.{target}");
        let top = target.split('.').next().unwrap_or_default();
        if target.is_empty() || target.split('.').any(str::is_empty) {
            return Err(ConfigError::key(key, "invalid claim path"));
        }
        if reserved.contains(&top) {
            return Err(ConfigError::key(
                key,
                format!("{top:?} is set by the connector and cannot be mapped"),
            ));
        }
        if source.is_empty() || source.split('.').any(str::is_empty) {
            return Err(ConfigError::key(key, "invalid session claim path"));
        }
        // The check `require` and `identity_headers` use (one function): a claim the client set
        // itself (`nsec`) must never become a claim of a token the gateway signs.
        claim_path(source).map_err(|m| ConfigError::key(key, m))?;
    }
    Ok(())
}

/// The Descope user id (`dsub`, else `sub`); a session without one cannot be mapped to a user.
pub(crate) fn user_id(session: &VerifiedSession) -> Result<&str, ExchangeError> {
    session
        .user_id()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ExchangeError::MissingClaim {
            claim: "sub".into(),
        })
}

/// What a connector that maps `map` onto a user id reads: `dsub`, `sub` and each source path.
pub(crate) fn claims_read(kept: &mut ClaimsKept, map: &ClaimMap) {
    kept.read("sub");
    kept.read("dsub");
    for source in map.values() {
        kept.read(source);
    }
}

/// `a.b.c` inside a claims object.
pub(crate) fn lookup<'a, C: ClaimSource + ?Sized>(claims: &'a C, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = claims.top(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Sets `a.b.c` in `obj`, creating (or replacing non-object) intermediate objects.
pub(crate) fn set_path(obj: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            obj.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let child = obj
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(m) = child {
                set_path(m, rest, value);
            }
        }
    }
}

/// Applies a `claims:` mapping: for each target, the session's value at the source path, if any.
pub(crate) fn mapped<C: ClaimSource + ?Sized>(claims: &C, map: &ClaimMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (target, source) in map {
        if let Some(v) = lookup(claims, source) {
            set_path(&mut out, target, v.clone());
        }
    }
    out
}

/// Deep-merges `src` into `dst` (objects merge, anything else replaces).
pub(crate) fn merge(dst: &mut Map<String, Value>, src: Map<String, Value>) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(Value::Object(d)), Value::Object(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mapping_with_dotted_paths() {
        let c = json!({"dct": "T1", "tenants": {"T1": {"roles": ["admin"]}}, "roles": ["r"]});
        let c = c.as_object().unwrap();
        let map: ClaimMap = [
            ("tenant".to_string(), "dct".to_string()),
            (
                "app_metadata.roles".to_string(),
                "tenants.T1.roles".to_string(),
            ),
            ("missing".to_string(), "nope.x".to_string()),
        ]
        .into();
        let m = mapped(c, &map);
        assert_eq!(
            Value::Object(m),
            json!({"tenant": "T1", "app_metadata": {"roles": ["admin"]}})
        );
    }

    #[test]
    fn merge_is_deep() {
        let mut a = json!({"app_metadata": {"provider": "descope"}})
            .as_object()
            .unwrap()
            .clone();
        merge(
            &mut a,
            json!({"app_metadata": {"roles": ["x"]}})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(
            Value::Object(a),
            json!({"app_metadata": {"provider": "descope", "roles": ["x"]}})
        );
    }
}
