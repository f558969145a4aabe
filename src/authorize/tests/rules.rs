//! `require:` rules: every operator, tenant scoping, missing claims and wrong types, properties
//! against a plain model, and that checking never allocates.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::{check, claims, rules};
use crate::authorize::Denied;

#[test]
fn roles_and_permissions_any_and_all() {
    let c = json!({"roles": ["editor", "viewer"], "permissions": ["docs.read"]});
    let any = rules("{roles: {any: [admin, editor]}}");
    assert_eq!(check(&any, &c, "GET"), Ok(()));
    let any = rules("{roles: {any: [admin, owner]}}");
    assert_eq!(check(&any, &c, "GET"), Err("roles".into()));
    let all = rules("{roles: {all: [editor, viewer]}}");
    assert_eq!(check(&all, &c, "GET"), Ok(()));
    let all = rules("{roles: {all: [editor, admin]}}");
    assert_eq!(check(&all, &c, "GET"), Err("roles".into()));
    let both = rules("{roles: {any: [x, viewer], all: [editor]}}");
    assert_eq!(check(&both, &c, "GET"), Ok(()));
    let both = rules("{roles: {any: [x, y], all: [editor]}}");
    assert_eq!(check(&both, &c, "GET"), Err("roles".into()));
    let p = rules("{permissions: {all: [docs.read]}}");
    assert_eq!(check(&p, &c, "GET"), Ok(()));
    let p = rules("{permissions: {any: [docs.write]}}");
    assert_eq!(check(&p, &c, "GET"), Err("permissions".into()));
}

#[test]
fn missing_claims_and_wrong_types_are_denials() {
    let r = rules("{roles: {any: [admin]}}");
    for c in [
        json!({}),
        json!({"roles": "admin"}),
        json!({"roles": {"admin": true}}),
        json!({"roles": [1, true, null, ["admin"]]}),
        json!({"roles": null}),
    ] {
        assert_eq!(check(&r, &c, "GET"), Err("roles".into()), "{c}");
    }
    let t = rules("{tenants: [T1]}");
    for c in [
        json!({}),
        json!({"tenants": ["T1"]}),
        json!({"tenants": {"T1": "x"}}),
        json!({"tenants": {"T2": {}}}),
    ] {
        assert_eq!(check(&t, &c, "GET"), Err("tenants".into()), "{c}");
    }
    let cl = rules("{claims: {plan: pro, level: 3, beta: true}}");
    let base = json!({"plan": "pro", "level": 3, "beta": true});
    assert_eq!(check(&cl, &base, "GET"), Ok(()));
    for (k, v) in [
        ("plan", json!(null)),
        ("plan", json!(["pro"])),
        ("plan", json!({"pro": 1})),
        ("level", json!("3")),
        ("level", json!(3.5)),
        ("beta", json!("true")),
        ("beta", json!(1)),
    ] {
        let mut c = base.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        assert_eq!(check(&cl, &c, "GET"), Err(format!("claims.{k}")), "{c}");
    }
    // 3 and 3.0 are the same number.
    let mut c = base.clone();
    c["level"] = json!(3.0);
    assert_eq!(check(&cl, &c, "GET"), Ok(()));
}

#[test]
fn claims_in_and_dotted_paths() {
    let r = rules("{claims: {plan: {in: [pro, enterprise]}, org.tier: {in: [1, 2]}}}");
    let c = |plan: Value, tier: Value| json!({"plan": plan, "org": {"tier": tier}});
    assert_eq!(check(&r, &c(json!("pro"), json!(2)), "GET"), Ok(()));
    assert_eq!(check(&r, &c(json!("enterprise"), json!(1)), "GET"), Ok(()));
    assert_eq!(
        check(&r, &c(json!("free"), json!(1)), "GET"),
        Err("claims.plan".into())
    );
    assert_eq!(
        check(&r, &c(json!("pro"), json!(3)), "GET"),
        Err("claims.org.tier".into())
    );
    let flat = json!({"plan": "pro", "org.tier": 1, "org": 1});
    assert_eq!(check(&r, &flat, "GET"), Err("claims.org.tier".into()));
}

#[test]
fn methods_are_a_rule_like_any_other() {
    let r = rules("{methods: [GET, HEAD]}");
    assert_eq!(check(&r, &json!({}), "GET"), Ok(()));
    assert_eq!(check(&r, &json!({}), "HEAD"), Ok(()));
    for m in ["POST", "get", "PROPFIND", ""] {
        assert_eq!(check(&r, &json!({}), m), Err("methods".into()), "{m}");
    }
    // The method is checked first: a wrong method is named even when the roles fail too.
    let r = rules("{methods: [GET], roles: {any: [a]}}");
    assert_eq!(check(&r, &json!({}), "POST"), Err("methods".into()));
}

#[test]
fn tenant_scopes_roles_and_permissions() {
    let session = json!({
        "dct": "T1",
        "roles": ["admin"],
        "permissions": ["docs.write"],
        "tenants": {
            "T1": {"roles": ["viewer"], "permissions": ["docs.read"]},
            "T2": {"roles": ["admin"], "permissions": ["docs.write"]},
        }
    });
    // Project level: admin.
    assert_eq!(
        check(&rules("{roles: {any: [admin]}}"), &session, "GET"),
        Ok(())
    );
    // Current tenant T1: viewer only, the project-level admin does not count.
    let cur = rules("{tenant: current, roles: {any: [admin]}}");
    assert_eq!(check(&cur, &session, "GET"), Err("roles".into()));
    let cur = rules("{tenant: current, roles: {all: [viewer]}, permissions: {any: [docs.read]}}");
    assert_eq!(check(&cur, &session, "GET"), Ok(()));
    let cur_w = rules("{tenant: current, permissions: {all: [docs.write]}}");
    assert_eq!(check(&cur_w, &session, "GET"), Err("permissions".into()));
    // Another current tenant changes the answer.
    let mut in_t2 = session.clone();
    in_t2["dct"] = json!("T2");
    assert_eq!(check(&cur_w, &in_t2, "GET"), Ok(()));
    // A named tenant, whatever dct is.
    let t2 = rules("{tenant: T2, roles: {any: [admin]}}");
    assert_eq!(check(&t2, &session, "GET"), Ok(()));
    // `tenant` alone is membership; no dct, or a dct the session is not a member of, is denied.
    let member = rules("{tenant: current}");
    assert_eq!(check(&member, &session, "GET"), Ok(()));
    for bad in [json!(null), json!("T9"), json!(1)] {
        let mut s = session.clone();
        if bad.is_null() {
            s.as_object_mut().unwrap().remove("dct");
        } else {
            s["dct"] = bad;
        }
        assert_eq!(check(&member, &s, "GET"), Err("tenant".into()), "{s}");
    }
    assert_eq!(
        check(&rules("{tenant: T9}"), &session, "GET"),
        Err("tenant".into())
    );
    // Membership of one of a list.
    assert_eq!(
        check(&rules("{tenants: [T9, T2]}"), &session, "GET"),
        Ok(())
    );
    assert_eq!(
        check(&rules("{tenants: [T9]}"), &session, "GET"),
        Err("tenants".into())
    );
}

#[test]
fn descope_fixture_with_tenants() {
    // The claims of the Go SDK's `jwtTokenWithTenants` fixture (tenants with no roles).
    let c = json!({"sub": "someuser", "tenants": {"tenant1": {}, "tenant2": {}, "tenant3": {}}});
    assert_eq!(check(&rules("{tenants: [tenant2]}"), &c, "GET"), Ok(()));
    assert_eq!(check(&rules("{tenant: tenant1}"), &c, "GET"), Ok(()));
    let r = rules("{tenant: tenant1, roles: {any: [admin]}}");
    assert_eq!(check(&r, &c, "GET"), Err("roles".into()));
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

fn subset() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(NAMES.to_vec(), 0..=NAMES.len())
}

fn yaml_list(v: &[&str]) -> String {
    format!("[{}]", v.join(", "))
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        proptest::sample::select(NAMES.to_vec()).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                proptest::sample::select(NAMES.to_vec()).prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `any` holds when the session has one of them, `all` when it has each; in the tenant
    /// scope exactly as at project level, and the other scope's roles never count.
    #[test]
    fn set_rules_match_the_model(
        have in subset(),
        other in subset(),
        any in subset(),
        all in subset(),
        scoped in any::<bool>(),
    ) {
        prop_assume!(!any.is_empty() || !all.is_empty());
        let mut parts = vec![];
        if !any.is_empty() { parts.push(format!("any: {}", yaml_list(&any))); }
        if !all.is_empty() { parts.push(format!("all: {}", yaml_list(&all))); }
        let tenant = if scoped { "tenant: current, " } else { "" };
        let r = rules(&format!("{{{tenant}roles: {{{}}}}}", parts.join(", ")));
        let (project, in_tenant) = if scoped { (&other, &have) } else { (&have, &other) };
        let c = json!({"dct": "T1", "roles": project, "tenants": {"T1": {"roles": in_tenant}}});
        let want = (any.is_empty() || any.iter().any(|x| have.contains(x)))
            && all.iter().all(|x| have.contains(x));
        prop_assert_eq!(check(&r, &c, "GET").is_ok(), want);
    }

    /// A claim rule holds exactly when the value at the path is a scalar equal to an allowed one;
    /// any other session value (missing, wrong type, nested) is a denial, never a panic.
    #[test]
    fn claim_rules_match_the_model(value in proptest::option::of(any_json()), allowed in subset()) {
        prop_assume!(!allowed.is_empty());
        let r = rules(&format!("{{claims: {{x.y: {{in: {}}}}}}}", yaml_list(&allowed)));
        let c = match &value {
            Some(v) => json!({"x": {"y": v}}),
            None => json!({"x": {}}),
        };
        let want = value.as_ref().and_then(Value::as_str).is_some_and(|s| allowed.contains(&s));
        prop_assert_eq!(check(&r, &c, "GET").is_ok(), want);
    }

    /// Arbitrary sessions against every rule at once: no panic, and a pass means each rule holds
    /// on its own.
    #[test]
    fn every_rule_together(session in proptest::collection::btree_map(
        proptest::sample::select(vec!["roles", "permissions", "dct", "tenants", "plan"]).prop_map(String::from),
        any_json(),
        0..5,
    ), method in proptest::sample::select(vec!["GET", "POST", "PUT"])) {
        let c = Value::Object(session.into_iter().collect());
        let all = rules("{methods: [GET, POST], tenant: current, tenants: [a, b], roles: {any: [a]}, permissions: {all: [b]}, claims: {plan: {in: [c, d]}}}");
        if check(&all, &c, method).is_ok() {
            for single in ["{methods: [GET, POST]}", "{tenant: current}", "{tenants: [a, b]}", "{claims: {plan: {in: [c, d]}}}"] {
                prop_assert!(check(&rules(single), &c, method).is_ok(), "{}", single);
            }
        }
    }
}

/// Counts this thread's allocations, to show rule checks borrow and never allocate.
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCS: Cell<usize> = const { Cell::new(0) };
    }

    struct Counting;

    // SAFETY: forwards to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            System.alloc(l)
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            System.dealloc(p, l)
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            System.realloc(p, l, n)
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Allocations made by `f` on this thread.
    pub(super) fn during(f: impl FnOnce()) -> usize {
        let before = ALLOCS.with(Cell::get);
        f();
        ALLOCS.with(Cell::get) - before
    }
}

#[test]
fn checking_rules_never_allocates() {
    let all = rules("{methods: [GET, POST], tenant: current, tenants: [T0, T1], roles: {any: [x, admin], all: [admin]}, permissions: {all: [p]}, claims: {plan: {in: [free, pro]}, org.tier: 2, beta: true}}");
    let pass = claims(json!({
        "dct": "T1",
        "tenants": {"T1": {"roles": ["admin"], "permissions": ["p"]}},
        "plan": "pro", "org": {"tier": 2}, "beta": true,
    }));
    let mut fail_late = pass.clone();
    fail_late.insert("beta".into(), json!(false));
    assert!(all.check(&pass, "GET").is_ok());
    assert_eq!(all.check(&fail_late, "GET"), Err(Denied("claims.beta")));
    let n = alloc_count::during(|| {
        for _ in 0..100 {
            assert!(all.check(&pass, "POST").is_ok());
            assert!(all.check(&fail_late, "GET").is_err());
            assert!(all.check(&pass, "DELETE").is_err());
            assert!(all.check(&Map::new(), "GET").is_err());
        }
    });
    assert_eq!(n, 0, "allocations while checking rules");
    // The counter works: building a claims map allocates.
    assert!(alloc_count::during(|| drop(claims(json!({"a": [1]})))) > 0);
}
