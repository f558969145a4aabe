//! Identity headers: values rendered and percent-encoded, the signed assertion's claims, and
//! assertions reused per identity while fresh.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::{claims, config};
use crate::authorize::{Assertions, IdentityHeaders};

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
