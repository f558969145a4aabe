//! The runtime's build and rebuild: what a reload keeps, and which claims sessions keep.

use super::*;

fn cfg(extra: &str) -> Config {
    let text = format!(
        "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'{extra}}}\n\
         connectors: {{ext: {{type: claim}}}}\nroutes: [{{upstream: 'http://127.0.0.1:1', connector: ext}}]\n"
    );
    Config::parse(&text, &|_| None).unwrap()
}

fn gateway() -> Gateway {
    install_crypto_provider();
    let c = cfg("");
    let client = Gateway::http_client().unwrap();
    let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
    Gateway::build(c, keys).unwrap()
}

#[test]
fn rebuild_keeps_warm_state_when_settings_are_unchanged() {
    let gw = gateway();
    let (next, kept) = gw.rebuild(cfg("")).unwrap();
    assert!(kept);
    assert!(
        Arc::ptr_eq(&gw.verifier, &next.verifier),
        "keys and verified sessions kept"
    );
    assert!(
        gw.connectors.cache().is_same(next.connectors.cache()),
        "token cache kept"
    );
}

fn kept_for(connectors: &str) -> ClaimsKept {
    install_crypto_provider();
    let text = format!(
        "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
         connectors: {connectors}\nroutes: [{{upstream: 'http://127.0.0.1:1', connector: c}}]\n"
    );
    let c = Config::parse(&text, &|_| None).unwrap();
    let client = Gateway::http_client().unwrap();
    let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
    Gateway::build(c, keys).unwrap().verifier.kept().clone()
}

fn only(names: &[&str]) -> ClaimsKept {
    ClaimsKept::Only(names.iter().map(|n| Box::<str>::from(*n)).collect())
}

#[test]
fn sessions_keep_only_the_claims_the_config_reads() {
    assert_eq!(
        kept_for("{c: {type: claim}}"),
        only(&["dct", "externalToken"])
    );
    assert_eq!(
        kept_for("{c: {type: claim, claim: legacy.tok}}"),
        only(&["dct", "legacy.tok"]),
        "a claim name, not a path"
    );
    assert_eq!(
        kept_for("{c: {type: supabase, jwt_secret: s, claims: {plan: custom.plan}}}"),
        only(&["custom", "dct", "dsub", "email", "phone", "sub"])
    );
    // token_exchange is keyed by the subject token: it reads no claim, unless `cache_key` names
    // claims (and then the user id too).
    let token_exchange = |extra: &str| {
        kept_for(&format!(
            "{{c: {{type: claim}}, t: {{type: token_exchange, token_url: 'http://127.0.0.1:1/t', \
             client_auth: {{client_secret_post: {{client_id: g, client_secret: s}}}}{extra}}}}}"
        ))
    };
    assert_eq!(token_exchange(""), only(&["dct", "externalToken"]));
    assert_eq!(
        token_exchange(", cache_key: [amr, tenants.T1.roles]"),
        only(&["amr", "dct", "dsub", "externalToken", "sub", "tenants"])
    );
    // The http connector sends every custom claim: only standard ones it does not send go.
    let skipped = [
        "amr",
        "aud",
        "cnf",
        "drn",
        "exp",
        "externalToken",
        "iat",
        "iss",
        "jti",
        "nbf",
        "nsec",
        "rexp",
    ];
    assert_eq!(
        kept_for("{c: {type: http, url: 'http://127.0.0.1:1/m'}}"),
        ClaimsKept::AllBut(skipped.iter().map(|n| Box::<str>::from(*n)).collect())
    );
    // With a claim connector beside it, `externalToken` is kept after all.
    let both = kept_for("{c: {type: http, url: 'http://127.0.0.1:1/m'}, d: {type: claim}}");
    assert!(
        matches!(&both, ClaimsKept::AllBut(s) if !s.contains("externalToken") && s.contains("amr")),
        "{both:?}"
    );
}

#[test]
fn sessions_keep_what_route_rules_and_identity_headers_read() {
    install_crypto_provider();
    let text = "descope: {project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}\n\
         connectors: {c: {type: claim}}\nroutes:\n\
         - {path_prefix: /a, upstream: 'http://127.0.0.1:1', connector: c,\n   \
            require: {roles: {any: [admin]}, claims: {org.plan: pro}},\n   \
            identity_headers: {X-User-Email: email, X-Team: team.name}}\n\
         - {path_prefix: /b, upstream: 'http://127.0.0.1:1', connector: c,\n   \
            require: {tenant: T1, permissions: {all: [w]}}}\n";
    let c = Config::parse(text, &|_| None).unwrap();
    let client = Gateway::http_client().unwrap();
    let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
    let gw = Gateway::build(c, keys).unwrap();
    assert_eq!(
        gw.verifier.kept(),
        &only(&[
            "dct",
            "email",
            "externalToken",
            "org",
            "roles",
            "team",
            "tenants"
        ])
    );
}

#[test]
fn a_reload_that_reads_other_claims_gets_a_new_session_cache_but_keeps_the_keys() {
    install_crypto_provider();
    let text = |conn: &str| {
        format!(
            "descope: {{project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors: {{c: {conn}}}\nroutes: [{{upstream: 'http://127.0.0.1:1', connector: c}}]\n"
        )
    };
    let c = Config::parse(&text("{type: claim}"), &|_| None).unwrap();
    let client = Gateway::http_client().unwrap();
    let keys = Arc::new(KeyStore::new(&c.descope, client, crate::clock::system()));
    let gw = Gateway::build(c, keys).unwrap();
    let other = Config::parse(&text("{type: claim, claim: other}"), &|_| None).unwrap();
    let (next, keys_kept) = gw.rebuild(other).unwrap();
    assert!(keys_kept);
    assert!(
        !Arc::ptr_eq(&gw.verifier, &next.verifier),
        "sessions lack `other`"
    );
    assert!(Arc::ptr_eq(&gw.verifier.keys, &next.verifier.keys));
    assert_eq!(next.verifier.kept(), &only(&["dct", "other"]));
}

#[test]
fn rebuild_replaces_what_changed() {
    let gw = gateway();
    let (next, kept) = gw.rebuild(cfg(", leeway: 9s")).unwrap();
    assert!(!kept);
    assert!(!Arc::ptr_eq(&gw.verifier, &next.verifier));
    assert!(!Arc::ptr_eq(&gw.verifier.keys, &next.verifier.keys));
    assert!(
        gw.connectors.cache().is_same(next.connectors.cache()),
        "cache: unchanged"
    );
}

/// Turning session refresh on is a reload that keeps the keys and verified sessions, and builds
/// the refresher only when a route refreshes.
#[test]
fn a_refresh_setting_keeps_the_keys() {
    let gw = gateway();
    assert!(gw.refresher.is_none(), "no route refreshes");
    let (next, kept) = gw.rebuild(cfg(", refresh: {enabled: true}")).unwrap();
    assert!(kept && Arc::ptr_eq(&gw.verifier, &next.verifier));
    assert!(next.refresher.is_some());
    assert!(next.routes.iter().all(|r| r.refresh_session));
}
