//! `authorize` in process: the whole extract → verify → exchange → rewrite plan on a real key
//! set (a dev key's JWKS in a file), no pingora, no network.

use super::*;
use crate::mint::{DevKey, MintOptions};
use http::HeaderValue;

const PROJECT: &str = "P2authorizeTest";

struct Fixture {
    gw: Gateway,
    key: DevKey,
    _dir: tempfile::TempDir,
}

async fn fixture(route_extra: &str) -> Fixture {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(&dir.path().join("dev.pem")).unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &key.jwks).unwrap();
    // A jwt connector whose key signs identity assertions (the dev key will do).
    let text = format!(
        "descope: {{project_id: {PROJECT}, jwks_file: '{}'}}\n\
         connectors: {{ext: {{type: claim}}, gw: {{type: jwt, key_file: '{}', issuer: 'https://gw'}}}}\n\
         routes: [{{name: api, upstream: 'http://127.0.0.1:1', connector: ext{route_extra}}}]\n",
        jwks.display(),
        dir.path().join("dev.pem").display()
    );
    let cfg = Config::parse(&text, &|_| None).unwrap();
    let client = Gateway::http_client().unwrap();
    let keys = Arc::new(KeyStore::new(&cfg.descope, client, crate::clock::system()));
    keys.load().await.unwrap();
    Fixture {
        gw: Gateway::build(cfg, keys).unwrap(),
        key,
        _dir: dir,
    }
}

fn session(key: &DevKey, ttl_secs: i64, ext: Option<&str>) -> String {
    session_with(key, ttl_secs, ext, vec![])
}

fn session_with(
    key: &DevKey,
    ttl_secs: i64,
    ext: Option<&str>,
    claims: Vec<(String, serde_json::Value)>,
) -> String {
    MintOptions {
        project_id: PROJECT.into(),
        issuer: None,
        sub: "U2user".into(),
        ttl_secs,
        claims,
        external_token: ext.map(str::to_string),
        refresh: false,
    }
    .mint(key, 1)
    .unwrap()
    .remove(0)
}

async fn authorize(f: &Fixture, headers: &[(&str, String)]) -> Result<Rewrite, Answer> {
    authorize_as(f, "GET", headers).await
}

async fn authorize_as(
    f: &Fixture,
    method: &str,
    headers: &[(&str, String)],
) -> Result<Rewrite, Answer> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let route = f.gw.routes.find(None, "/x").unwrap().clone();
    let info = RequestInfo {
        session_token: "",
        route: &route.name,
        method,
        path: "/x",
        query: b"",
    };
    f.gw.authorize(&route, &h, info, &mut SessionMemo::default())
        .await
}

#[tokio::test]
async fn a_valid_session_gets_the_external_token() {
    let f = fixture("").await;
    let bearer = format!("Bearer {}", session(&f.key, 600, Some("legacy-{sub}")));
    let rw = authorize(&f, &[("authorization", bearer)]).await.unwrap();
    assert_eq!(rw.header, http::header::AUTHORIZATION);
    assert_eq!(rw.value, "Bearer legacy-U2user");
    assert!(rw.cache_key.is_none(), "a claim connector caches nothing");
    // The same from the session cookie.
    let cookie = format!("theme=dark; DS={}", session(&f.key, 600, Some("c")));
    let rw = authorize(&f, &[("cookie", cookie)]).await.unwrap();
    assert_eq!(rw.value, "Bearer c");
}

#[tokio::test]
async fn the_route_decides_header_and_scheme() {
    let f = fixture(", header: X-Legacy, scheme: ''").await;
    let bearer = format!("Bearer {}", session(&f.key, 600, Some("t")));
    let rw = authorize(&f, &[("authorization", bearer)]).await.unwrap();
    assert_eq!(
        (rw.header.as_str(), rw.value.to_str().unwrap()),
        ("x-legacy", "t")
    );
}

#[tokio::test]
async fn refusals_are_answers() {
    let f = fixture("").await;
    let status = |r: Result<Rewrite, Answer>| r.map(|_| 200).unwrap_or_else(|a| a.status);
    let reason = |r: Result<Rewrite, Answer>| r.err().map(|a| a.reason);
    assert_eq!(reason(authorize(&f, &[]).await), Some("missing"));
    let expired = format!("Bearer {}", session(&f.key, -600, Some("t")));
    assert_eq!(
        reason(authorize(&f, &[("authorization", expired)]).await),
        Some("expired")
    );
    let no_claim = format!("Bearer {}", session(&f.key, 600, None));
    let r = authorize(&f, &[("authorization", no_claim)]).await;
    assert_eq!(
        (status(r.clone()), reason(r)),
        (401, Some("missing_external_token"))
    );
    let other = DevKey::load_or_create(&f._dir.path().join("other.pem")).unwrap();
    let forged = format!("Bearer {}", session(&other, 600, Some("t")));
    let r = authorize(&f, &[("authorization", forged)]).await;
    assert_eq!(status(r), 401);
}

/// A session the rules refuse gets the 403 naming the rule, even when it has no external
/// token: the rules run before the connector, which is never asked.
#[tokio::test]
async fn rules_refuse_before_the_connector() {
    let f = fixture(", require: {roles: {any: [admin]}, methods: [GET]}").await;
    let roles = |r: &[&str]| vec![("roles".to_string(), serde_json::json!(r))];
    let viewer = format!(
        "Bearer {}",
        session_with(&f.key, 600, None, roles(&["viewer"]))
    );
    let a = authorize(&f, &[("authorization", viewer)])
        .await
        .unwrap_err();
    assert_eq!(
        (a.status, a.reason, a.outcome),
        (403, "forbidden", "forbidden")
    );
    let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(body["rule"], "roles");
    assert!(
        !String::from_utf8_lossy(&a.body).contains("viewer"),
        "no claim in the body"
    );
    // An admin without an external token passes the rules and fails at the connector (401).
    let admin = format!(
        "Bearer {}",
        session_with(&f.key, 600, None, roles(&["admin"]))
    );
    let a = authorize(&f, &[("authorization", admin)])
        .await
        .unwrap_err();
    assert_eq!((a.status, a.reason), (401, "missing_external_token"));
    let admin = format!(
        "Bearer {}",
        session_with(&f.key, 600, Some("t"), roles(&["admin"]))
    );
    let a = authorize_as(&f, "POST", &[("authorization", admin.clone())])
        .await
        .unwrap_err();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&a.body).unwrap()["rule"],
        "methods"
    );
    assert!(authorize(&f, &[("authorization", admin)]).await.is_ok());
    // No session at all is still the 401, not a 403.
    assert_eq!(authorize(&f, &[]).await.unwrap_err().status, 401);
}

/// Identity headers from the verified claims, and the assertion of them, which verifies with
/// the jwt connector's published key.
#[tokio::test]
async fn identity_headers_and_their_signed_assertion() {
    let f = fixture(
        ", identity_headers: {X-User-Id: sub, X-Roles: roles, X-Tenant: dct}, identity_headers_signed_by: gw",
    )
    .await;
    let claims = vec![("roles".to_string(), serde_json::json!(["a", "b"]))];
    let bearer = format!("Bearer {}", session_with(&f.key, 600, Some("t"), claims));
    let rw = authorize(&f, &[("authorization", bearer)]).await.unwrap();
    let got: Vec<(&str, &str)> = rw
        .identity
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(&got[..2], &[("x-roles", "a,b"), ("x-user-id", "U2user")]);
    assert_eq!(got.len(), 3, "no dct: no X-Tenant; plus the assertion");
    assert_eq!(got[2].0, "x-extoken-identity");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(f.gw.connectors.jwks().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["api"]);
    v.set_issuer(&["https://gw"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(got[2].1, &key, &v).unwrap();
    assert_eq!(data.header.typ.as_deref(), Some("extoken-identity+jwt"));
    assert_eq!(
        data.claims["hdr"],
        serde_json::json!({"x-roles": "a,b", "x-user-id": "U2user"})
    );
    let (iat, exp) = (
        data.claims["iat"].as_u64().unwrap(),
        data.claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, crate::authorize::ASSERTION_LIFETIME_SECS);
}
