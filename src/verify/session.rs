//! A verified session as the session cache keeps it, for as long as the token lives: its claims
//! and the key that verified it, in as few bytes as will do.
//!
//! The cache holds up to `cache.verified_sessions` (100,000) of these, so their size is the
//! gateway's memory: a `serde_json::Map` allocates a ~640-byte B-tree node however few claims it
//! holds, and a session carries claims nothing in the config reads (`amr`, `drn`, `iat`, `nsec`,
//! ...). [`Claims`] is a sorted slice instead, and [`ClaimsKept`] (decided by the gateway from the
//! config: what the connectors, the route rules and the identity headers read) drops the rest.
//! Measured with `loadtest/cold.sh`: docs/performance.md.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Which top-level claims a session keeps once verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClaimsKept {
    /// Every claim (something in the config reads claims it cannot name in advance, e.g. the
    /// `http` connector sends all custom claims).
    #[default]
    All,
    /// These claims only.
    Only(BTreeSet<Box<str>>),
    /// Every claim but these (a reader of "every custom claim" that names what it skips).
    AllBut(BTreeSet<Box<str>>),
}

impl ClaimsKept {
    /// Nothing yet: add what is read with [`ClaimsKept::read`] / [`ClaimsKept::read_all`].
    pub fn none() -> ClaimsKept {
        ClaimsKept::Only(BTreeSet::new())
    }

    /// Keeps the claim at the top of a dotted path (`tenants.T1.roles` keeps `tenants`).
    pub fn read(&mut self, path: &str) {
        self.read_name(path.split('.').next().unwrap_or(path));
    }

    /// Keeps the claim named exactly `name` (a name, not a path: dots are part of it).
    pub fn read_name(&mut self, name: &str) {
        match self {
            ClaimsKept::All => {}
            ClaimsKept::Only(set) => {
                if !set.contains(name) {
                    set.insert(name.into());
                }
            }
            ClaimsKept::AllBut(skipped) => {
                skipped.remove(name);
            }
        }
    }

    /// Keeps every claim except `skipped` (which stay dropped only if no reader names them).
    pub fn read_all_but(&mut self, skipped: &[&str]) {
        match self {
            ClaimsKept::All => {}
            ClaimsKept::Only(kept) => {
                let set = skipped
                    .iter()
                    .filter(|s| !kept.contains(**s))
                    .map(|s| Box::<str>::from(*s))
                    .collect();
                *self = ClaimsKept::AllBut(set);
            }
            ClaimsKept::AllBut(set) => set.retain(|s| skipped.contains(&&**s)),
        }
    }

    pub fn read_all(&mut self) {
        *self = ClaimsKept::All;
    }

    fn keeps(&self, name: &str) -> bool {
        match self {
            ClaimsKept::All => true,
            ClaimsKept::Only(set) => set.contains(name),
            ClaimsKept::AllBut(set) => !set.contains(name),
        }
    }
}

/// Where a dotted claim path starts: a session's [`Claims`], or any JSON object (a connector's
/// reply, a tenant's entry).
pub(crate) trait ClaimSource {
    fn top(&self, name: &str) -> Option<&Value>;
}

impl ClaimSource for Map<String, Value> {
    fn top(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

impl ClaimSource for Claims {
    fn top(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// A session's claims (those kept), sorted by name for lookup by binary search.
#[derive(Clone, PartialEq)]
pub struct Claims(Box<[(Box<str>, Value)]>);

impl Claims {
    /// `map` is a `BTreeMap` underneath (serde_json without `preserve_order`), so it iterates in
    /// name order and the slice comes out sorted.
    pub(crate) fn new(map: Map<String, Value>, kept: &ClaimsKept) -> Claims {
        let v: Vec<(Box<str>, Value)> = map
            .into_iter()
            .filter(|(k, _)| kept.keeps(k))
            .map(|(k, v)| (k.into_boxed_str(), v))
            .collect();
        debug_assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
        Claims(v.into_boxed_slice())
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A verified Descope session: its claims, read-only and shared.
pub struct VerifiedSession {
    pub(crate) claims: Claims,
    pub exp: u64,
    /// The key that verified it: a hit is served only while this very key is still published.
    pub(super) key: Arc<super::Key>,
}

impl std::fmt::Debug for VerifiedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedSession")
            .field("claims", &self.claims)
            .field("exp", &self.exp)
            .field("kid", &self.key.kid)
            .finish_non_exhaustive()
    }
}

impl VerifiedSession {
    /// A session with these claims, as if verified (unit tests of the connectors).
    #[cfg(test)]
    pub(crate) fn for_test(claims: Map<String, Value>) -> VerifiedSession {
        VerifiedSession {
            claims: Claims::new(claims, &ClaimsKept::All),
            exp: u64::MAX,
            key: Arc::new(super::Key::for_test("test")),
        }
    }

    /// The Descope user id: `dsub` when a JWT template overrode `sub`, else `sub`.
    pub(crate) fn user_id(&self) -> Option<&str> {
        self.str_claim("dsub").or_else(|| self.str_claim("sub"))
    }
    pub(crate) fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn lookups_by_name_over_the_kept_claims() {
        let m =
            map(json!({"sub": "U1", "amr": ["email"], "tenants": {"T": {}}, "dct": "T", "z": 1}));
        let all = Claims::new(m.clone(), &ClaimsKept::All);
        assert_eq!(all.len(), 5);
        for (k, v) in &m {
            assert_eq!(all.get(k), Some(v), "{k}");
        }
        assert_eq!(all.get("nope"), None);
        assert_eq!(all.get(""), None);
        let mut kept = ClaimsKept::none();
        kept.read("tenants.T.roles");
        kept.read("sub");
        kept.read("sub");
        let some = Claims::new(m, &kept);
        assert_eq!(some.len(), 2);
        assert_eq!(some.get("sub"), Some(&json!("U1")));
        assert_eq!(some.get("tenants"), Some(&json!({"T": {}})));
        assert_eq!(some.get("amr"), None);
        let names: Vec<&str> = some.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["sub", "tenants"]);
    }

    #[test]
    fn all_but_keeps_what_any_reader_names() {
        let m = map(json!({"sub": "U1", "amr": ["email"], "iat": 1, "plan": "pro", "dct": "T"}));
        let mut kept = ClaimsKept::none();
        kept.read("amr");
        kept.read_all_but(&["amr", "iat", "sub"]);
        kept.read("sub");
        let names = |k: &ClaimsKept| {
            Claims::new(m.clone(), k)
                .iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&kept),
            ["amr", "dct", "plan", "sub"],
            "iat alone dropped"
        );
        // Two such readers drop only what both skip.
        kept.read_all_but(&["iat", "plan"]);
        assert_eq!(names(&kept), ["amr", "dct", "plan", "sub"]);
        let mut both = ClaimsKept::none();
        both.read_all_but(&["iat", "plan", "amr"]);
        both.read_all_but(&["iat", "amr"]);
        assert_eq!(names(&both), ["dct", "plan", "sub"]);
    }

    #[test]
    fn reading_everything_wins() {
        let mut kept = ClaimsKept::none();
        kept.read("sub");
        kept.read_all();
        kept.read("dct");
        assert_eq!(kept, ClaimsKept::All);
    }
}
