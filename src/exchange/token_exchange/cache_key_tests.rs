//! What keys the `token_exchange` cache: by default the subject token's digest, so the provider
//! decides for each session; with `cache_key`, the user and the listed claims (the operator's
//! opt-in to per-user reuse). And which session claims the connector makes the session cache keep.

use serde_json::json;

use super::tests::{block, build, info, key_error, session};
use super::*;

/// A session of user U1 in tenant T1, signed in with a password only.
fn claims() -> Value {
    json!({
        "sub": "U1", "dct": "T1", "roles": ["r"], "amr": ["pwd"],
        "tenants": {"T1": {"roles": ["tr"]}, "T2": {"roles": ["x"]}},
        "email": "a@b",
    })
}

#[test]
fn by_default_each_subject_token_is_its_own_key() {
    let t = build(&block(""));
    let key = |claims: Value, jwt: &str| {
        let inputs = t.inputs(&session(claims), info(jwt)).unwrap();
        assert_eq!(inputs["subject_token"], jwt, "the session is the subject");
        t.cache_inputs(&inputs)
    };
    let one = key(claims(), "jwt.one.x");
    assert_eq!(one, key(claims(), "jwt.one.x"), "the same session: a hit");
    // Same user and claims, another JWT (a refresh, or a second session of the user).
    assert_ne!(one, key(claims(), "jwt.two.y"));
    // Claims do not enter the key: a JWT determines its own.
    let mut other = claims();
    other["sub"] = json!("U2");
    assert_eq!(one, key(other, "jwt.one.x"));
    // The key holds a digest, never the token.
    let text = one.to_string();
    assert!(!text.contains("jwt.one.x"), "{text}");
    assert_eq!(one.as_object().map(|o| o.len()), Some(1), "{text}");
    // The provider judges the subject, so a session without a user id is its to refuse.
    assert!(t.inputs(&session(json!({})), info("j")).is_ok());
}

#[test]
fn by_default_no_session_claim_is_kept_for_it() {
    let mut kept = ClaimsKept::none();
    build(&block("")).claims_read(&mut kept);
    assert_eq!(kept, ClaimsKept::none());
    let mut kept = ClaimsKept::none();
    build(&block(", cache_key: [amr, tenants.T1.roles]")).claims_read(&mut kept);
    let mut want = ClaimsKept::none();
    for c in ["sub", "dsub", "amr", "tenants"] {
        want.read_name(c);
    }
    assert_eq!(kept, want);
}

#[test]
fn with_cache_key_the_user_and_the_listed_claims_key_it() {
    let t = build(&block(", cache_key: [sub, amr, dct, tenants.T1.roles]"));
    let key = |claims: Value, jwt: &str| {
        let inputs = t.inputs(&session(claims), info(jwt)).unwrap();
        assert_eq!(
            inputs["subject_token"], jwt,
            "the session is still the subject"
        );
        t.cache_inputs(&inputs)
    };
    let one = key(claims(), "jwt.one.x");
    assert_eq!(
        one,
        json!({"user": "U1", "claims": {"sub": "U1", "amr": ["pwd"], "dct": "T1",
                                        "tenants.T1.roles": ["tr"]}})
    );
    // Another session of the user with the listed claims unchanged reuses the token ...
    let mut same = claims();
    same["email"] = json!("new@b");
    same["roles"] = json!(["r", "admin"]);
    same["tenants"]["T2"] = json!({"roles": ["y"]});
    assert_eq!(one, key(same, "jwt.two.y"));
    // ... a change in one of them does not.
    for (k, v) in [
        ("amr", json!(["pwd", "mfa"])),
        ("dct", json!("T2")),
        ("tenants", json!({"T1": {"roles": ["owner"]}})),
        ("sub", json!("U2")),
    ] {
        let mut c = claims();
        c[k] = v;
        assert_ne!(one, key(c, "jwt.one.x"), "{k}");
    }
    // The user always keys it, listed or not: no claim list can share a token between users.
    let roles_only = build(&block(", cache_key: [roles]"));
    let key_of = |user: &str| {
        let mut c = claims();
        c["sub"] = json!(user);
        roles_only.cache_inputs(&roles_only.inputs(&session(c), info("j")).unwrap())
    };
    assert_ne!(key_of("U1"), key_of("U2"));
    let anonymous = roles_only.inputs(&session(json!({"roles": ["r"]})), info("j"));
    assert!(matches!(anonymous, Err(ExchangeError::MissingClaim { .. })));
}

#[test]
fn a_chained_subject_is_bound_and_keyed_by_its_digest() {
    let t = build(&block(", subject: {external_token: inner}"));
    assert_eq!(t.subject_connector(), Some("inner"));
    let s = session(json!({"sub": "U1"}));
    let mut a = t.inputs(&s, info("the.session.jwt")).unwrap();
    assert!(a.get("subject_token").is_none(), "not the session");
    let mut b = a.clone();
    t.bind_subject(&mut a, &ExternalToken::new("inner-1").unwrap());
    t.bind_subject(&mut b, &ExternalToken::new("inner-2").unwrap());
    assert_eq!(a["subject_token"], "inner-1");
    assert_ne!(t.cache_inputs(&a), t.cache_inputs(&b));
    assert!(!t.cache_inputs(&a).to_string().contains("inner-1"));
    // Opted in to per-user reuse: the user's claims key it, not the inner token.
    let t = build(&block(
        ", subject: {external_token: inner}, cache_key: [sub]",
    ));
    let mut a = t.inputs(&s, info("the.session.jwt")).unwrap();
    let mut b = a.clone();
    t.bind_subject(&mut a, &ExternalToken::new("inner-1").unwrap());
    t.bind_subject(&mut b, &ExternalToken::new("inner-2").unwrap());
    assert_eq!(t.cache_inputs(&a), t.cache_inputs(&b));
}

#[test]
fn cache_key_errors_name_their_key() {
    for (extra, want_path, want) in [
        (
            ", cache_key: []",
            "connectors.idp.cache_key",
            "at least one",
        ),
        (
            ", cache_key: ['']",
            "connectors.idp.cache_key[0]",
            "dotted claim path",
        ),
        (
            ", cache_key: [sub, 'a..b']",
            "connectors.idp.cache_key[1]",
            "dotted claim path",
        ),
        (
            ", cache_key: [sub, 'tenants.']",
            "connectors.idp.cache_key[1]",
            "dotted",
        ),
        (
            ", cache_key: [nsec]",
            "connectors.idp.cache_key[0]",
            "nsec holds claims",
        ),
        (
            ", cache_key: [sub, nsec.level]",
            "connectors.idp.cache_key[1]",
            "nsec holds",
        ),
        (", cache_key: sub", "connectors.idp", "sequence"),
    ] {
        let (path, message) = key_error("idp", &block(extra));
        assert_eq!(path, want_path, "{extra}: {message}");
        assert!(message.contains(want), "{extra}: {message}");
    }
    // `nsec` is refused as the first segment only; a claim named `nsecret` is fine.
    build(&block(", cache_key: [nsecret, tenants.nsec]"));
}
