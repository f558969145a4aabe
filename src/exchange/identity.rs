//! Reading what a connector needs out of a verified session: the user id, dotted claim paths, and
//! `claims:` mappings. Shared by every minting connector so they agree on what "the user" is.

use serde_json::{Map, Value};

use super::ExchangeError;
use crate::config::ClaimMap;
use crate::verify::VerifiedSession;

/// The Descope user id (`dsub`, else `sub`); a session without one cannot be mapped to a user.
pub fn user_id(session: &VerifiedSession) -> Result<&str, ExchangeError> {
    session
        .user_id()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ExchangeError::MissingClaim {
            claim: "sub".into(),
        })
}

/// `a.b.c` inside a claims object.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Sets `a.b.c` in `obj`, creating (or replacing non-object) intermediate objects.
pub fn set_path(obj: &mut Map<String, Value>, path: &str, value: Value) {
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
pub fn mapped(claims: &Map<String, Value>, map: &ClaimMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (target, source) in map {
        if let Some(v) = lookup(claims, source) {
            set_path(&mut out, target, v.clone());
        }
    }
    out
}

/// Deep-merges `src` into `dst` (objects merge, anything else replaces).
pub fn merge(dst: &mut Map<String, Value>, src: Map<String, Value>) {
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
