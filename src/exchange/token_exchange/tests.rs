//! The `token_exchange` connector without a network: its settings (defaults, errors that name
//! their key, subject chains), the form body per client authentication, and how replies are read
//! (what keys the cache: `cache_key_tests.rs`). The exchange against a real RFC 8693 server is
//! `tests/token_exchange.rs`.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::RawConnector;
use crate::exchange::connector_config::ConnectorConfig;

const URL: &str = "https://idp.example.com/oauth2/token";

fn parse(name: &str, yaml: &str) -> Result<ConnectorConfig, ConfigError> {
    ConnectorConfig::parse(
        name,
        &RawConnector::new(serde_yaml::from_str(yaml).unwrap()),
    )
}

fn settings(yaml: &str) -> TokenExchangeConfig {
    match parse("idp", yaml).unwrap() {
        ConnectorConfig::TokenExchange(c) => c,
        other => panic!("not a token_exchange connector: {other:?}"),
    }
}

/// The block with `extra` keys, client_secret_basic auth.
pub(super) fn block(extra: &str) -> String {
    format!(
        "{{type: token_exchange, token_url: '{URL}', \
          client_auth: {{client_secret_basic: {{client_id: gw, client_secret: 's3 cr&t'}}}}{extra}}}"
    )
}

pub(super) fn build(yaml: &str) -> TokenExchange {
    let clock: SharedClock = ManualClock::new();
    let (t, loaded) = TokenExchange::build(
        "idp",
        "connectors.idp",
        &settings(yaml),
        reqwest::Client::new(),
        clock,
    )
    .unwrap();
    assert!(loaded.is_empty(), "no key file");
    t
}

pub(super) fn key_error(name: &str, yaml: &str) -> (String, String) {
    match parse(name, yaml) {
        Err(ConfigError::Key { path, message }) => (path, message),
        other => panic!("expected a key error, got {other:?}"),
    }
}

/// `a=1&b=2` as pairs, decoded (`+` is a space).
fn decode_form(body: &str) -> Vec<(String, String)> {
    let dec = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::new();
        let b = s.as_bytes();
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
        String::from_utf8(out).unwrap()
    };
    body.split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (dec(k), dec(v))
        })
        .collect()
}

#[test]
fn defaults() {
    let c = settings(&block(""));
    assert_eq!(c.requested_token_type, config::ACCESS_TOKEN_TYPE);
    assert_eq!(c.subject_token_type(), config::JWT_TYPE);
    assert_eq!(c.subject_connector(), None);
    assert_eq!(c.timeout.0, Duration::from_secs(5));
    assert!(c.default_lifetime.is_none());
    let chained = settings(&block(", subject: {external_token: other}"));
    assert_eq!(chained.subject_connector(), Some("other"));
    assert_eq!(chained.subject_token_type(), config::ACCESS_TOKEN_TYPE);
    let typed = settings(&block(", subject_token_type: 'urn:x:custom'"));
    assert_eq!(typed.subject_token_type(), "urn:x:custom");
}

#[test]
fn settings_errors_name_their_key() {
    let cases = [
        (", audience: ['']", "connectors.idp.audience[0]"),
        (
            ", resource: ['relative/path']",
            "connectors.idp.resource[0]",
        ),
        (
            ", resource: ['https://a/b#frag']",
            "connectors.idp.resource[0]",
        ),
        (", scope: ['a b']", "connectors.idp.scope[0]"),
        (", scope: [ok, 'q\"uote']", "connectors.idp.scope[1]"),
        (
            ", requested_token_type: 'access token'",
            "connectors.idp.requested_token_type",
        ),
        (
            ", subject_token_type: 'nope'",
            "connectors.idp.subject_token_type",
        ),
        (", timeout: 0s", "connectors.idp.timeout"),
        (", default_lifetime: 0s", "connectors.idp.default_lifetime"),
        (", audiance: x", "connectors.idp"),
        (", subject: {claim: x}", "connectors.idp"),
    ];
    for (extra, key) in cases {
        let (path, message) = key_error("idp", &block(extra));
        assert_eq!(path, key, "{extra}: {message}");
    }
    let (path, _) = key_error(
        "idp",
        &format!("{{type: token_exchange, token_url: '{URL}', client_auth: {{client_secret_post: {{client_id: gw, client_secret: ''}}}}}}"),
    );
    assert_eq!(
        path,
        "connectors.idp.client_auth.client_secret_post.client_secret"
    );
    let (path, _) = key_error(
        "idp",
        &format!("{{type: token_exchange, token_url: '{URL}', client_auth: {{private_key_jwt: {{client_id: '', key_file: k.pem}}}}}}"),
    );
    assert_eq!(path, "connectors.idp.client_auth.private_key_jwt.client_id");
    let (path, message) = key_error(
        "idp",
        &format!("{{type: token_exchange, token_url: '{URL}', client_auth: {{private_key_jwt: {{client_id: gw, key_file: k.pem, alg: HS256}}}}}}"),
    );
    assert_eq!(
        (path.as_str(), message.as_str()),
        (
            "connectors.idp",
            "unknown variant `HS256`, expected one of `RS256`, `ES256`, `EdDSA`"
        )
    );
    let (path, _) = key_error(
        "idp",
        &format!("{{type: token_exchange, token_url: '{URL}'}}"),
    );
    assert_eq!(path, "connectors.idp");
    let (path, message) = key_error("idp", &block("").replace(URL, "ftp://x"));
    assert_eq!(
        (path.as_str(), message.as_str()),
        (
            "connectors.idp.token_url",
            "\"ftp://x\" is not an http(s) URL"
        )
    );
}

#[test]
fn a_missing_key_file_names_its_key() {
    let yaml = format!(
        "{{type: token_exchange, token_url: '{URL}', client_auth: {{private_key_jwt: {{client_id: gw, key_file: /nonexistent/k.pem}}}}}}"
    );
    let err = TokenExchange::build(
        "idp",
        "connectors.idp",
        &settings(&yaml),
        reqwest::Client::new(),
        crate::clock::system(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with("connectors.idp.client_auth.private_key_jwt.key_file"),
        "{err}"
    );
}

#[test]
fn subject_chains_are_checked() {
    let te = |subject: &str| {
        parse(
            "x",
            &block(&format!(", subject: {{external_token: {subject}}}")),
        )
        .unwrap()
    };
    let claim = parse("x", "{type: claim}").unwrap();
    let check = |pairs: Vec<(&'static str, ConnectorConfig)>| {
        let m: BTreeMap<&str, Option<&str>> = pairs
            .iter()
            .map(|(name, c)| (*name, c.subject_connector()))
            .collect();
        check_subjects(&m).map_err(|e| e.to_string())
    };
    assert!(check(vec![("a", te("b")), ("b", claim.clone())]).is_ok());
    assert!(check(vec![("a", te("b")), ("b", te("c")), ("c", claim.clone())]).is_ok());
    let e = check(vec![("a", te("a"))]).unwrap_err();
    assert!(
        e.starts_with("connectors.a.subject.external_token") && e.contains("its own"),
        "{e}"
    );
    let e = check(vec![("a", te("zz"))]).unwrap_err();
    assert!(
        e.starts_with("connectors.a.subject.external_token") && e.contains("\"zz\""),
        "{e}"
    );
    let e = check(vec![("a", te("b")), ("b", te("c")), ("c", te("a"))]).unwrap_err();
    assert!(
        e.starts_with("connectors.a.subject.external_token") && e.contains("a -> b -> c -> a"),
        "{e}"
    );
}

#[test]
fn body_with_client_secret_basic() {
    let t = build(&block(
        ", audience: [api-1, api-2], resource: 'https://api.example.com/', scope: [orders.read, orders.write]",
    ));
    let Auth::Basic(h) = &t.auth else {
        panic!("basic")
    };
    // RFC 6749 2.3.1: form-encoded, then base64 ("s3 cr&t" -> "s3+cr%26t").
    let want = base64::engine::general_purpose::STANDARD.encode("gw:s3+cr%26t");
    assert_eq!(h, &format!("Basic {want}"));
    let body = decode_form(&t.body("the.subject.jwt").unwrap());
    let pairs: Vec<(&str, &str)> = body.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        pairs,
        vec![
            ("grant_type", GRANT_TYPE),
            ("requested_token_type", config::ACCESS_TOKEN_TYPE),
            ("audience", "api-1"),
            ("audience", "api-2"),
            ("resource", "https://api.example.com/"),
            ("scope", "orders.read orders.write"),
            ("subject_token_type", config::JWT_TYPE),
            ("subject_token", "the.subject.jwt"),
        ]
    );
}

#[test]
fn body_with_client_secret_post() {
    let t = build(&format!(
        "{{type: token_exchange, token_url: '{URL}', client_auth: {{client_secret_post: {{client_id: 'g w', client_secret: 'p=&'}}}}}}"
    ));
    let body = decode_form(&t.body("s").unwrap());
    assert!(body.contains(&("client_id".into(), "g w".into())));
    assert!(body.contains(&("client_secret".into(), "p=&".into())));
    assert!(!body.iter().any(|(k, _)| k == "audience" || k == "scope"));
}

#[test]
fn body_with_private_key_jwt_has_a_fresh_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let pem = crate::mint::generate_pem().unwrap();
    let key = dir.path().join("client.pem");
    std::fs::write(&key, &pem).unwrap();
    let yaml = format!(
        "{{type: token_exchange, token_url: '{URL}', client_auth: {{private_key_jwt: {{client_id: gw, key_file: '{}', kid: c1}}}}}}",
        key.display()
    );
    let clock = ManualClock::new();
    let (t, loaded) = TokenExchange::build(
        "idp",
        "connectors.idp",
        &settings(&yaml),
        reqwest::Client::new(),
        clock.clone(),
    )
    .unwrap();
    assert_eq!(loaded, pem.as_bytes(), "the key file joins the fingerprint");
    let assertion = |body: &str| {
        let body = decode_form(body);
        let get = |k: &str| body.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("client_assertion_type"), JWT_BEARER_ASSERTION);
        assert_eq!(get("client_id"), "gw");
        get("client_assertion")
    };
    let a1 = assertion(&t.body("s").unwrap());
    let a2 = assertion(&t.body("s").unwrap());
    let Auth::Jwt { signer, .. } = &t.auth else {
        panic!("private_key_jwt")
    };
    let decoding = jsonwebtoken::DecodingKey::from_jwk(signer.public.as_ref().unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
    v.set_audience(&[URL]);
    let claims = |a: &str| {
        let d = jsonwebtoken::decode::<Value>(a, &decoding, &v).unwrap();
        assert_eq!(d.header.kid.as_deref(), Some("c1"));
        d.claims
    };
    let (c1, c2) = (claims(&a1), claims(&a2));
    assert_eq!(
        (c1["iss"].as_str(), c1["sub"].as_str()),
        (Some("gw"), Some("gw"))
    );
    assert_eq!(c1["exp"].as_u64(), Some(clock.unix() + ASSERTION_LIFETIME));
    assert_ne!(c1["jti"], c2["jti"], "a jti is never reused");
}

#[test]
fn invalid_grant_refuses_the_session_other_errors_are_unavailable() {
    let t = build(&block(""));
    let status = |s: u16| reqwest::StatusCode::from_u16(s).unwrap();
    let e = t.error_reply(
        status(400),
        br#"{"error":"invalid_grant","error_description":"secret detail"}"#,
    );
    assert_eq!(
        e,
        ExchangeError::Refused {
            connector: "idp".into()
        }
    );
    for (s, body, code) in [
        (401, r#"{"error":"invalid_client"}"#, "invalid_client"),
        (400, r#"{"error":"invalid_target"}"#, "invalid_target"),
        (400, r#"{"error":"invalid_scope"}"#, "invalid_scope"),
        (
            400,
            r#"{"error":"unauthorized_client"}"#,
            "unauthorized_client",
        ),
        (400, r#"{"error":"invalid_request"}"#, "invalid_request"),
        (500, r#"{"error":"invalid_grant"}"#, "invalid_grant"),
        (400, r#"{"error":"made_up\r\nx"}"#, "no RFC 6749 error code"),
        (502, "<html>bad gateway</html>", "no RFC 6749 error code"),
    ] {
        match t.error_reply(status(s), body.as_bytes()) {
            ExchangeError::Unavailable { reason, .. } => {
                assert!(reason.contains(code), "{s} {body}: {reason}");
                assert!(!reason.contains("made_up") && !reason.contains("html"));
            }
            other => panic!("{s} {body}: {other:?}"),
        }
    }
    assert!(
        matches!(
            t.error_reply(status(400), b""),
            ExchangeError::Unavailable { .. }
        ),
        "a 400 without an error code is unavailability"
    );
}

#[test]
fn success_replies() {
    let t = build(&block(", default_lifetime: 2m"));
    let ok = |v: Value| t.success_reply(v.to_string().as_bytes());
    let m = ok(json!({"access_token": "at-1", "issued_token_type": config::ACCESS_TOKEN_TYPE, "token_type": "Bearer", "expires_in": 300})).unwrap();
    assert_eq!(
        (m.token.as_str(), m.lifetime),
        ("at-1", Duration::from_secs(300))
    );
    let m = ok(json!({"access_token": "at-2", "expires_in": "60"})).unwrap();
    assert_eq!(m.lifetime, Duration::from_secs(60));
    let m = ok(json!({"access_token": "opaque"})).unwrap();
    assert_eq!(m.lifetime, Duration::from_secs(120), "default_lifetime");
    let exp = t.clock.unix() + 90;
    let jwt = format!(
        "e30.{}.sig",
        URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{exp}}}"))
    );
    assert_eq!(
        ok(json!({"access_token": jwt})).unwrap().lifetime,
        Duration::from_secs(90)
    );
    for bad in [
        json!({"token": "x", "expires_in": 60}),
        json!({"access_token": 7, "expires_in": 60}),
        json!({"access_token": "a b", "expires_in": 60}),
        json!({"access_token": "x", "expires_in": 0}),
        json!({"access_token": "rt", "issued_token_type": REFRESH_TOKEN_TYPE, "expires_in": 60}),
    ] {
        assert!(
            matches!(ok(bad.clone()), Err(ExchangeError::Unavailable { .. })),
            "{bad}"
        );
    }
    assert!(t.success_reply(b"not json").is_err());
    let strict = build(&block(""));
    let e = strict
        .success_reply(br#"{"access_token":"opaque"}"#)
        .unwrap_err();
    assert!(e.to_string().contains("default_lifetime"), "{e}");
}

pub(super) fn session(claims: Value) -> VerifiedSession {
    let Value::Object(m) = claims else { panic!() };
    VerifiedSession::for_test(m)
}

pub(super) fn info(session_token: &str) -> RequestInfo<'_> {
    RequestInfo {
        session_token,
        route: "api",
        method: "GET",
        path: "/x",
        query: b"",
    }
}
