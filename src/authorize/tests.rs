//! Rules and identity headers: config errors naming their keys, every operator, tenant scoping,
//! missing claims and wrong types, as examples and as properties against a plain model.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;
use crate::config::Config;

fn config(route_extra: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "descope: {{project_id: P2t, jwks_url: 'http://127.0.0.1:1/k'}}\n\
         connectors: {{ext: {{type: claim}}, signer: {{type: jwt, key_file: k.pem, issuer: gw}}}}\n\
         routes:\n\
         \x20 - {{name: open, path_prefix: /open, upstream: 'http://127.0.0.1:1', auth: none}}\n\
         \x20 - {{name: api, upstream: 'http://127.0.0.1:1', connector: ext{route_extra}}}\n"
    );
    let cfg = Config::parse(&text, &|_| None)?;
    validate(&cfg)?;
    Ok(cfg)
}

/// The `path: message` of the error a route setting gives.
fn error(route_extra: &str) -> String {
    match config(route_extra) {
        Ok(_) => panic!("{route_extra} was accepted"),
        Err(e) => e.to_string(),
    }
}

fn rules(require: &str) -> Rules {
    let cfg = config(&format!(", require: {require}")).unwrap();
    Rules::compile(cfg.routes[1].require.as_ref(), "routes[1].require").unwrap()
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims are an object"),
    }
}

/// `Ok(())` or the failed rule's name.
fn check(r: &Rules, c: &Value, method: &str) -> Result<(), String> {
    r.check(&claims(c.clone()), method)
        .map_err(|d| d.0.to_string())
}

#[test]
fn config_errors_name_their_key() {
    let cases = [
        (", require: {rolez: {any: [a]}}", "routes[1].require.rolez: unknown field `rolez`, expected one of `roles`"),
        (", require: {roles: {anyy: [a]}}", "routes[1].require.roles.anyy: unknown field `anyy`"),
        (", require: {roles: {any: []}}", "routes[1].require.roles.any: an empty list"),
        (", require: {roles: {}}", "routes[1].require.roles: give any"),
        (", require: {permissions: {all: [a, '']}}", "routes[1].require.permissions.all[1]: must not be empty"),
        (", require: {}", "routes[1].require: no rule given"),
        (", require: {methods: []}", "routes[1].require.methods: an empty list"),
        (", require: {methods: [GET, FETCH]}", "routes[1].require.methods[1]: \"FETCH\" is not a method: one of GET"),
        (", require: {methods: [get]}", "routes[1].require.methods[0]: \"get\" is not a method (write GET)"),
        (", require: {tenants: []}", "routes[1].require.tenants: an empty list"),
        (", require: {tenant: ''}", "routes[1].require.tenant: `current` or a tenant id"),
        (", require: {claims: {}}", "routes[1].require.claims: no claim rule given"),
        (", require: {claims: {plan: {in: []}}}", "routes[1].require.claims.plan.in: an empty list"),
        (", require: {claims: {plan: {nin: [a]}}}", "routes[1].require.claims.plan: a value, or {in: [values]}"),
        (", require: {claims: {plan: [a, b]}}", "routes[1].require.claims.plan: a string, number or boolean"),
        (", require: {claims: {plan: {in: [a, [b]]}}}", "routes[1].require.claims.plan.in[1]: a string, number or boolean"),
        (", require: {claims: {'a..b': 1}}", "routes[1].require.claims.a..b: \"a..b\" is not a dotted claim path"),
        (", require: {claims: {nsec.admin: true}}", "routes[1].require.claims.nsec.admin: nsec holds claims set by the client"),
        (", require: {roles: {any: a}}", "routes[1].require.roles.any: invalid type"),
        (", identity_headers: {}", "routes[1].identity_headers: no header given"),
        (", identity_headers: {Host: sub}", "routes[1].identity_headers.Host: \"Host\" is a header extoken sets"),
        (", identity_headers: {Authorization: sub}", "routes[1].identity_headers.Authorization: \"Authorization\" is a header extoken sets"),
        (", header: X-Legacy, identity_headers: {x-legacy: sub}", "routes[1].identity_headers.x-legacy: \"x-legacy\" is a header extoken sets"),
        (", identity_headers: {X_User: sub}", "routes[1].identity_headers.X_User: \"X_User\": use - rather than _"),
        (", identity_headers: {'X User': sub}", "routes[1].identity_headers.X User: \"X User\" is not a header name"),
        (", identity_headers: {X-User: sub, x-user: email}", "routes[1].identity_headers.x-user: \"x-user\" is given twice"),
        (", identity_headers: {X-User: 'nsec.uid'}", "routes[1].identity_headers.X-User: nsec holds claims"),
        (", identity_headers: {X-User: ''}", "routes[1].identity_headers.X-User: \"\" is not a dotted claim path"),
        (", identity_headers: {X-User: sub}, identity_headers_signed_by: ext", "routes[1].identity_headers_signed_by: \"ext\" is a claim connector; only a jwt connector's key signs"),
        (", identity_headers: {X-User: sub}, identity_headers_signed_by: nope", "routes[1].identity_headers_signed_by: no connector named \"nope\""),
        (", identity_headers_signed_by: signer", "routes[1].identity_headers_signed_by: there are no identity_headers to sign"),
        (", identity_headers: {X-User: sub}, identity_jws_header: X-Sig", "routes[1].identity_jws_header: only with identity_headers_signed_by"),
        (", identity_headers: {X-User: sub}, identity_headers_signed_by: signer, identity_jws_header: x-user", "routes[1].identity_jws_header: \"x-user\" is given twice"),
    ];
    for (extra, want) in cases {
        let got = error(extra);
        assert!(
            got.starts_with(want),
            "{extra}:\n got {got}\nwant {want}..."
        );
    }
}

#[test]
fn the_embedded_default_and_its_commented_example_compile() {
    let text = crate::config::EMBEDDED_DEFAULT;
    validate(&Config::parse(text, &|_| None).unwrap()).unwrap();
    // Uncommented (with a jwt connector to sign), the example is a valid route.
    let mut uncommented = String::new();
    for line in text.lines() {
        let example = line.strip_prefix("    # ").filter(|rest| {
            [
                "require:",
                "identity_headers:",
                "identity_headers_signed_by:",
            ]
            .iter()
            .any(|k| rest.starts_with(k))
                || (rest.starts_with("  ") && !rest.trim_start().starts_with('#'))
        });
        match example {
            Some(rest) => {
                uncommented.push_str("    ");
                uncommented.push_str(rest);
            }
            None => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    let uncommented = uncommented.replace(
        "connectors:\n",
        "connectors:\n  my-jwt-connector: {type: jwt, key_file: k.pem, issuer: gw}\n",
    );
    let cfg =
        Config::parse(&uncommented, &|_| None).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    validate(&cfg).unwrap();
    let r = &cfg.routes[0];
    assert!(r
        .require
        .as_ref()
        .is_some_and(|q| q.roles.is_some() && q.methods.is_some()));
    assert_eq!(r.identity_headers.as_ref().map(|h| h.len()), Some(4));
    assert_eq!(
        r.identity_headers_signed_by.as_deref(),
        Some("my-jwt-connector")
    );
}

#[test]
fn rules_and_identity_need_a_session() {
    let text = |extra: &str| {
        format!(
            "descope: {{project_id: P2t, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             routes: [{{upstream: 'http://127.0.0.1:1', auth: none{extra}}}]\n"
        )
    };
    for (extra, key) in [
        (", require: {roles: {any: [a]}}", "routes[0].require"),
        (
            ", identity_headers: {X-User: sub}",
            "routes[0].identity_headers",
        ),
    ] {
        let e = Config::parse(&text(extra), &|_| None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{key}: {} needs a session: not on an auth: none route",
                &key[10..]
            )
        );
    }
}

#[test]
fn accepted_configs_compile() {
    let ok = [
        ", require: {roles: {any: [admin, owner]}, methods: [GET, POST]}",
        ", require: {tenant: current, permissions: {all: [docs.write]}, claims: {plan: {in: [pro, enterprise]}}}",
        ", require: {tenants: [T1, T2], claims: {org.tier: gold, verified: true, level: 3}}",
        ", require: {roles: {any: [a], all: [b]}}",
        ", identity_headers: {X-User-Id: sub, X-Tenant-Id: dct}, identity_headers_signed_by: signer",
        ", identity_headers: {X-User-Id: sub}, identity_headers_signed_by: signer, identity_jws_header: X-Identity",
    ];
    for extra in ok {
        config(extra).unwrap_or_else(|e| panic!("{extra}: {e}"));
    }
    let s = config(ok[1]).unwrap().summary();
    assert!(
        s.contains(
            "[connector ext -> authorization (Bearer)]  require: tenant, permissions, claims\n"
        ),
        "{s}"
    );
    let s = config(ok[4]).unwrap().summary();
    assert!(
        s.contains("  identity: X-Tenant-Id, X-User-Id (signed by signer)\n"),
        "{s}"
    );
    assert!(Rules::compile(None, "x")
        .unwrap()
        .check(&Map::new(), "DELETE")
        .is_ok());
}

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

fn identity(headers: &str) -> IdentityHeaders {
    let cfg = config(&format!(", identity_headers: {headers}")).unwrap();
    IdentityHeaders::compile(&cfg.routes[1], "api", "routes[1]")
        .unwrap()
        .unwrap()
}

fn values(i: &IdentityHeaders, c: Value) -> Vec<(String, String)> {
    i.values(&claims(c))
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect()
}

#[test]
fn identity_values_are_rendered_and_encoded() {
    let i = identity("{X-User-Id: sub, X-Roles: roles, X-Email: email, X-Tenant: dct, X-Tier: org.tier, X-Beta: beta, X-Org: org, X-None: gone}");
    let got = values(
        &i,
        json!({
            "sub": "U2abc",
            "roles": ["admin", "a,b", 7, {"x": 1}, true],
            "email": "zoë 100%@example.com",
            "org": {"tier": 3},
            "beta": false,
            "dct": null,
        }),
    );
    let want = [
        ("x-beta", "false"),
        ("x-email", "zo%C3%AB%20100%25@example.com"),
        ("x-roles", "admin,a%2Cb,7,true"),
        ("x-tier", "3"),
        ("x-user-id", "U2abc"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    let names: Vec<&str> = i.names().map(|n| n.as_str()).collect();
    assert_eq!(names.len(), 8);
    // The signed variant's header joins the names.
    let cfg =
        config(", identity_headers: {X-User-Id: sub}, identity_headers_signed_by: signer").unwrap();
    let s = IdentityHeaders::compile(&cfg.routes[1], "api", "routes[1]")
        .unwrap()
        .unwrap();
    let names: Vec<&str> = s.names().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-user-id", "x-extoken-identity"]);
}

#[test]
fn assertion_claims_carry_the_sent_values() {
    let cfg =
        config(", identity_headers: {X-User-Id: sub}, identity_headers_signed_by: signer").unwrap();
    let s = IdentityHeaders::compile(&cfg.routes[1], "api", "routes[1]")
        .unwrap()
        .unwrap();
    let v = s.values(&claims(json!({"sub": "U é"})));
    let c = IdentityHeaders::assertion_claims(s.signed_by().unwrap(), &v, 1_000);
    assert_eq!(
        Value::Object(c),
        json!({"aud": "api", "iat": 1000, "exp": 1060, "hdr": {"x-user-id": "U%20%C3%A9"}})
    );
}

/// Percent-decoding, as a backend would.
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any string claim becomes one line of visible ASCII that decodes back to it; a list splits
    /// on `,` into its elements.
    #[test]
    fn values_are_visible_ascii_and_decode_back(s in any::<String>(), list in proptest::collection::vec(any::<String>(), 0..4)) {
        let i = identity("{X-One: one, X-List: list}");
        let got = values(&i, json!({"one": s, "list": list}));
        for (_, v) in &got {
            prop_assert!(v.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{}", v);
        }
        let one = &got.iter().find(|(n, _)| n == "x-one").unwrap().1;
        prop_assert_eq!(decode(one), s.as_bytes().to_vec());
        let l = &got.iter().find(|(n, _)| n == "x-list").unwrap().1;
        let parts: Vec<Vec<u8>> = if list.is_empty() { vec![] } else { l.split(',').map(decode).collect() };
        let want: Vec<Vec<u8>> = list.iter().map(|s| s.as_bytes().to_vec()).collect();
        prop_assert_eq!(parts, want);
    }
}

#[test]
fn assertions_are_reused_for_the_same_identity_while_fresh() {
    let cfg =
        config(", identity_headers: {X-User-Id: sub}, identity_headers_signed_by: signer").unwrap();
    let s = IdentityHeaders::compile(&cfg.routes[1], "api", "routes[1]")
        .unwrap()
        .unwrap();
    let signed = s.signed_by().unwrap();
    let cache = Assertions::new(100);
    let calls = std::cell::Cell::new(0);
    let sign = |c: Map<String, Value>| {
        calls.set(calls.get() + 1);
        Ok(format!(
            "jws-{}-{}",
            c["iat"],
            c["hdr"]["x-user-id"].as_str().unwrap()
        ))
    };
    let alice = s.values(&claims(json!({"sub": "alice"})));
    let bob = s.values(&claims(json!({"sub": "bob"})));
    let get = |v: &[(http::HeaderName, http::HeaderValue)], now| {
        cache
            .get_or_sign(signed, v, now, sign)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(get(&alice, 1000), "jws-1000-alice");
    assert_eq!(
        get(&alice, 1029),
        "jws-1000-alice",
        "reused: 31 s of life left"
    );
    assert_eq!(get(&bob, 1029), "jws-1029-bob", "another identity, its own");
    assert_eq!(calls.get(), 2);
    assert_eq!(
        get(&alice, 1030),
        "jws-1030-alice",
        "half its life gone: signed again"
    );
    assert_eq!(
        get(&alice, 999),
        "jws-999-alice",
        "a clock that went back: signed again"
    );
    assert_eq!(calls.get(), 4);
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
