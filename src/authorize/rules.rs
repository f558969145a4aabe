//! A route's `require:` block, compiled: the checks a verified session must pass, in a form that
//! evaluates by borrowing from the session's claims (no allocation, no parsing per request).
//!
//! Compilation is where an impossible rule is refused (an empty list, an unknown method, a claim
//! rule that is neither a value nor `{in: [...]}`, a path into `nsec`), each error naming its key.

use serde_json::{Map, Number, Value};

use crate::config::{ConfigError, RequireConfig, SetRuleConfig};
use crate::verify::{ClaimSource, ClaimsKept};

/// Why a session was refused: the rule that failed, as the config names it (`roles`, `methods`,
/// `claims.plan`, ...). Never a value from the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denied<'a>(pub(crate) &'a str);

/// The compiled `require:` of one route. An absent block is `Rules::default()`: everything passes.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    methods: Option<MethodSet>,
    tenant: Option<Tenant>,
    tenants: Option<Box<[Box<str>]>>,
    roles: Option<SetRule>,
    permissions: Option<SetRule>,
    claims: Box<[ClaimRule]>,
}

/// Which tenant's entry `roles`/`permissions` are read from.
#[derive(Debug, PartialEq)]
enum Tenant {
    /// The session's `dct`.
    Current,
    Id(Box<str>),
}

#[derive(Debug)]
struct SetRule {
    any: Box<[Box<str>]>,
    all: Box<[Box<str>]>,
}

#[derive(Debug)]
struct ClaimRule {
    /// `claims.<path>`: what a denial names.
    name: Box<str>,
    path: Box<[Box<str>]>,
    allowed: Box<[Scalar]>,
}

#[derive(Debug)]
enum Scalar {
    Str(Box<str>),
    Num(Number),
    Bool(bool),
}

/// The methods `methods:` may list (RFC 9110 §9 and PATCH), as bits.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MethodSet(u16);

impl MethodSet {
    fn contains(self, method: &str) -> bool {
        METHODS
            .iter()
            .position(|m| *m == method)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

impl Rules {
    /// Compiles `require` (absent: no rules). `path` is `routes[i].require`.
    pub(crate) fn compile(req: Option<&RequireConfig>, path: &str) -> Result<Rules, ConfigError> {
        let Some(r) = req else {
            return Ok(Rules::default());
        };
        let key = |k: &str| format!("{path}.{k}");
        if *r == RequireConfig::default() {
            return Err(ConfigError::key(path, "no rule given (leave require out)"));
        }
        let rules = Rules {
            methods: r
                .methods
                .as_deref()
                .map(|m| methods(m, &key("methods")))
                .transpose()?,
            tenant: r
                .tenant
                .as_deref()
                .map(|t| tenant(t, &key("tenant")))
                .transpose()?,
            tenants: r
                .tenants
                .as_deref()
                .map(|t| names(t, &key("tenants")))
                .transpose()?,
            roles: r
                .roles
                .as_ref()
                .map(|s| set_rule(s, &key("roles")))
                .transpose()?,
            permissions: r
                .permissions
                .as_ref()
                .map(|s| set_rule(s, &key("permissions")))
                .transpose()?,
            claims: match &r.claims {
                None => Box::default(),
                Some(c) if c.is_empty() => {
                    return Err(ConfigError::key(key("claims"), "no claim rule given"))
                }
                Some(c) => c
                    .iter()
                    .map(|(p, v)| claim_rule(p, v, &key("claims")))
                    .collect::<Result<_, _>>()?,
            },
        };
        Ok(rules)
    }

    /// Adds the session claims these rules read to `kept`.
    pub(crate) fn claims_read(&self, kept: &mut ClaimsKept) {
        match &self.tenant {
            Some(Tenant::Current) => {
                kept.read_name("dct");
                kept.read_name("tenants");
            }
            Some(Tenant::Id(_)) => kept.read_name("tenants"),
            None => {
                if self.roles.is_some() {
                    kept.read_name("roles");
                }
                if self.permissions.is_some() {
                    kept.read_name("permissions");
                }
            }
        }
        if self.tenants.is_some() {
            kept.read_name("tenants");
        }
        for c in self.claims.iter() {
            if let Some(top) = c.path.first() {
                kept.read_name(top);
            }
        }
    }

    /// Whether the methods a request asks for through method-override headers or a `_method`
    /// query parameter ([`super::method_override`]) are ones `methods` allows; checked only when
    /// the route has `methods`.
    pub(crate) fn check_overrides(
        &self,
        headers: &http::HeaderMap,
        query: &[u8],
    ) -> Result<(), Denied<'static>> {
        match self.methods {
            Some(m) if !super::method_override::all_allowed(headers, query, |v| m.contains(v)) => {
                Err(Denied("methods"))
            }
            _ => Ok(()),
        }
    }

    /// Whether a session with `claims` may send `method` on this route: `Err` names the first
    /// rule that fails, in the order methods, tenant, tenants, roles, permissions, claims.
    pub(crate) fn check<'r, C: ClaimSource>(
        &'r self,
        claims: &C,
        method: &str,
    ) -> Result<(), Denied<'r>> {
        if self.methods.is_some_and(|m| !m.contains(method)) {
            return Err(Denied("methods"));
        }
        // Where roles and permissions are read from: the tenant's entry, or the session itself.
        let scope: &dyn ClaimSource = match &self.tenant {
            None => claims,
            Some(t) => {
                let id = match t {
                    Tenant::Current => claims.top("dct").and_then(Value::as_str),
                    Tenant::Id(id) => Some(&**id),
                };
                id.and_then(|id| tenant_entry(claims, id))
                    .ok_or(Denied("tenant"))?
            }
        };
        if let Some(allowed) = &self.tenants {
            if !allowed.iter().any(|t| tenant_entry(claims, t).is_some()) {
                return Err(Denied("tenants"));
            }
        }
        for (rule, name, claim) in [
            (&self.roles, "roles", "roles"),
            (&self.permissions, "permissions", "permissions"),
        ] {
            if let Some(rule) = rule {
                if !rule.holds(scope.top(claim)) {
                    return Err(Denied(name));
                }
            }
        }
        for c in self.claims.iter() {
            if !c.holds(claims) {
                return Err(Denied(&c.name));
            }
        }
        Ok(())
    }
}

/// The session's entry for tenant `id` in its `tenants` claim (an object), if a member.
fn tenant_entry<'c, C: ClaimSource + ?Sized>(
    claims: &'c C,
    id: &str,
) -> Option<&'c Map<String, Value>> {
    claims.top("tenants")?.as_object()?.get(id)?.as_object()
}

impl SetRule {
    /// `claim` must be a list of strings (absent counts as empty; any other type fails).
    fn holds(&self, claim: Option<&Value>) -> bool {
        let have: &[Value] = match claim {
            None => &[],
            Some(Value::Array(a)) => a,
            Some(_) => return false,
        };
        let has = |want: &str| have.iter().any(|v| v.as_str() == Some(want));
        (self.any.is_empty() || self.any.iter().any(|w| has(w))) && self.all.iter().all(|w| has(w))
    }
}

impl ClaimRule {
    fn holds<C: ClaimSource + ?Sized>(&self, claims: &C) -> bool {
        let value = lookup(claims, &self.path);
        value.is_some_and(|v| self.allowed.iter().any(|a| a.matches(v)))
    }
}

/// The value at a dotted path (already split), borrowing from the claims.
pub(crate) fn lookup<'c, C: ClaimSource + ?Sized, S: AsRef<str>>(
    claims: &'c C,
    path: &[S],
) -> Option<&'c Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.top(first.as_ref())?;
    for seg in rest {
        v = v.as_object()?.get(seg.as_ref())?;
    }
    Some(v)
}

impl Scalar {
    /// Same type and value; numbers compare by value (`5` equals `5.0`).
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(a), Value::String(b)) => **a == **b,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => number_eq(a, b),
            _ => false,
        }
    }
}

fn number_eq(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn methods(list: &[String], key: &str) -> Result<MethodSet, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::key(key, "an empty list admits no request"));
    }
    let mut bits = 0u16;
    for (j, m) in list.iter().enumerate() {
        let i = METHODS.iter().position(|k| k == m).ok_or_else(|| {
            let hint = METHODS
                .iter()
                .find(|k| k.eq_ignore_ascii_case(m))
                .map(|k| format!(" (write {k})"))
                .unwrap_or_else(|| format!(": one of {}", METHODS.join(", ")));
            ConfigError::key(
                format!("{key}[{j}]"),
                format!("{m:?} is not a method{hint}"),
            )
        })?;
        bits |= 1 << i;
    }
    Ok(MethodSet(bits))
}

fn tenant(t: &str, key: &str) -> Result<Tenant, ConfigError> {
    match t {
        "" => Err(ConfigError::key(key, "`current` or a tenant id")),
        "current" => Ok(Tenant::Current),
        id => Ok(Tenant::Id(id.into())),
    }
}

/// A non-empty list of non-empty names.
fn names(list: &[String], key: &str) -> Result<Box<[Box<str>]>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::key(key, "an empty list admits no session"));
    }
    list.iter()
        .enumerate()
        .map(|(j, n)| match n.as_str() {
            "" => Err(ConfigError::key(format!("{key}[{j}]"), "must not be empty")),
            n => Ok(n.into()),
        })
        .collect()
}

fn set_rule(s: &SetRuleConfig, key: &str) -> Result<SetRule, ConfigError> {
    if s.any.is_none() && s.all.is_none() {
        return Err(ConfigError::key(key, "give any: [...] or all: [...]"));
    }
    let list = |l: &Option<Vec<String>>, k: &str| match l {
        None => Ok(Box::default()),
        Some(l) => names(l, &format!("{key}.{k}")),
    };
    Ok(SetRule {
        any: list(&s.any, "any")?,
        all: list(&s.all, "all")?,
    })
}

/// Splits a dotted claim path; `nsec` (claims the client set itself) is never a basis for trust.
pub(crate) fn claim_path(p: &str) -> Result<Box<[Box<str>]>, String> {
    let segs: Vec<Box<str>> = p.split('.').map(Box::from).collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(format!("{p:?} is not a dotted claim path"));
    }
    if &*segs[0] == "nsec" {
        return Err("nsec holds claims set by the client: never a basis for trust".into());
    }
    Ok(segs.into())
}

fn claim_rule(path: &str, v: &Value, key: &str) -> Result<ClaimRule, ConfigError> {
    let key = format!("{key}.{path}");
    let segs = claim_path(path).map_err(|m| ConfigError::key(&key, m))?;
    let scalar = |v: &Value, key: &str| match v {
        Value::String(s) => Ok(Scalar::Str(s.as_str().into())),
        Value::Number(n) => Ok(Scalar::Num(n.clone())),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        _ => Err(ConfigError::key(key, "a string, number or boolean")),
    };
    let allowed: Box<[Scalar]> = match v {
        Value::Object(o) => {
            let (k, list) = match o.iter().next() {
                Some((k, Value::Array(list))) if o.len() == 1 && k == "in" => (k, list),
                _ => {
                    let m = "a value, or {in: [values]}";
                    return Err(ConfigError::key(&key, m));
                }
            };
            if list.is_empty() {
                let m = "an empty list admits no session";
                return Err(ConfigError::key(format!("{key}.{k}"), m));
            }
            list.iter()
                .enumerate()
                .map(|(j, v)| scalar(v, &format!("{key}.in[{j}]")))
                .collect::<Result<_, _>>()?
        }
        v => Box::new([scalar(v, &key)?]),
    };
    Ok(ClaimRule {
        name: format!("claims.{path}").into(),
        path: segs,
        allowed,
    })
}
