//! Rules and identity headers: config errors naming their keys (here), every operator, tenant
//! scoping, missing claims and wrong types ([`rules`]), identity header values and signed
//! assertions ([`identity`]), as examples and as properties against a plain model.

mod identity;
mod rules;

use serde_json::{Map, Value};

use super::*;
use crate::config::Config;

pub(super) fn config(route_extra: &str) -> Result<Config, ConfigError> {
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

pub(super) fn rules(require: &str) -> Rules {
    let cfg = config(&format!(", require: {require}")).unwrap();
    Rules::compile(cfg.routes[1].require.as_ref(), "routes[1].require").unwrap()
}

pub(super) fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims are an object"),
    }
}

/// `Ok(())` or the failed rule's name.
pub(super) fn check(r: &Rules, c: &Value, method: &str) -> Result<(), String> {
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
        (", identity_headers: {X-Original-URL: sub}", "routes[1].identity_headers.X-Original-URL: \"X-Original-URL\" is a header extoken sets"),
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
