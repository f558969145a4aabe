//! The signing connectors (`supabase`, `firebase`, `jwt`) end to end, their tokens verified
//! independently of the gateway's own code: each has the shape its consumer expects; a key file
//! replaced in place and reloaded is the key tokens are signed with from then on (the token
//! cache's fingerprint covers the key bytes, not the file's path, security issue #7); a Supabase
//! role mapped from the session must be one of `allowed_roles` (else 403).

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde_json::{json, Value};

const SUPABASE_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";

/// Descope keys, a recording backend, and a gateway (with an admin listener) whose one route
/// uses connector `c`.
struct Signing {
    project: Project,
    backend: Backend,
    gw: GatewayProcess,
}

/// A [`Signing`] rig whose connector `c` is `connector`; `files` go in the config directory.
async fn signing(connector: Value, files: &[(&str, &str)]) -> Signing {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let config = project
        .config()
        .connector("c", connector)
        .route(RouteSpec::any_path(&backend.url()).connector("c"));
    let how = Launch {
        files,
        admin: true,
        ..Launch::default()
    };
    let gw = project.gateway(&config, how).await;
    Signing {
        project,
        backend,
        gw,
    }
}

/// The token connector `c` makes for a session with `claims`, forwarded in one request.
async fn one_forwarded_token(
    connector: Value,
    files: &[(&str, &str)],
    claims: Value,
) -> (String, Signing) {
    let s = signing(connector, files).await;
    let reply = s.gw.get_bearer("/", &s.project.key.sign(&claims)).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, s.gw.log());
    assert_eq!(s.backend.count(), 1, "{:#?}", s.backend.requests());
    (forwarded(&s.backend), s)
}

/// The decoded JOSE header of a token.
fn header_of(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

/// The bearer token of the backend's latest request.
fn forwarded(backend: &Backend) -> String {
    let auth = backend.last().header("authorization").unwrap().to_string();
    auth.strip_prefix("Bearer ").unwrap().to_string()
}

/// The public JWK of an RSA private key PEM.
fn public_jwk(pem: &str) -> jsonwebtoken::jwk::Jwk {
    let enc = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap()
}

/// Whether `token` is a valid RS256 token of the in-house issuer under `pem`'s public key.
fn signed_by(token: &str, pem: &str) -> bool {
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&["https://gw.example"]);
    v.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&public_jwk(pem)).unwrap(), &v)
        .is_ok()
}

/// The `n` of every key the admin listener publishes.
async fn published_moduli(gw: &GatewayProcess) -> Vec<String> {
    let (status, body) = gw.admin_get("/.well-known/jwks.json").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let set: Value = serde_json::from_str(&body).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["n"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn modulus(pem: &str) -> String {
    serde_json::to_value(public_jwk(pem)).unwrap()["n"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn supabase_hs256_token_has_supabase_shape() {
    let connector = json!({
        "type": "supabase",
        "jwt_secret": SUPABASE_SECRET,
        "expires_in": "30m",
        "issuer": "https://ref.supabase.co/auth/v1",
        "claims": {"tenant": "dct", "app_metadata.roles": "roles"},
    });
    let claims = session(
        "U2supa",
        &[
            ("email", json!("s@example.com")),
            ("dct", json!("T9")),
            ("roles", json!(["editor"])),
        ],
    );
    let (token, _gw) = one_forwarded_token(connector, &[], claims).await;
    assert!(
        header_of(&token).get("kid").is_none(),
        "HS256 tokens carry no kid (PostgREST)"
    );
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["authenticated"]);
    v.set_issuer(&["https://ref.supabase.co/auth/v1"]);
    let c = jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(SUPABASE_SECRET.as_bytes()),
        &v,
    )
    .unwrap()
    .claims;
    let ns = uuid::Uuid::parse_str("dbd8928c-bb64-505a-830f-43f6b6e8fabd").unwrap();
    assert_eq!(c["sub"], uuid::Uuid::new_v5(&ns, b"U2supa").to_string());
    assert_eq!(c["descope_user_id"], "U2supa");
    assert_eq!(c["role"], "authenticated");
    assert_eq!(c["email"], "s@example.com");
    assert_eq!(c["tenant"], "T9");
    assert_eq!(c["app_metadata"]["roles"], json!(["editor"]));
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        1800
    );
    // The wrong secret must fail: the check above is not vacuous.
    assert!(jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(b"another-secret"),
        &v
    )
    .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn firebase_custom_token_matches_firebase_admin_shape() {
    let pem = extoken::mint::generate_pem().unwrap();
    let sa = json!({
        "type": "service_account", "project_id": "demo-extoken", "private_key_id": "pkid-123",
        "private_key": pem, "client_email": "svc@demo-extoken.iam.gserviceaccount.com",
    });
    let connector = json!({
        "type": "firebase",
        "service_account_file": "sa.json",
        "tenant_id": "tenant-a",
        "claims": {"roles": "roles"},
    });
    let claims = session("U2fire", &[("roles", json!(["admin"]))]);
    let (token, _gw) =
        one_forwarded_token(connector, &[("sa.json", &sa.to_string())], claims).await;
    let h = header_of(&token);
    assert_eq!(
        (h["alg"].as_str(), h["kid"].as_str(), h["typ"].as_str()),
        (Some("RS256"), Some("pkid-123"), Some("JWT"))
    );
    let jwk = public_jwk(&pem);
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[extoken::exchange::FIREBASE_AUDIENCE]);
    let c = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
        .unwrap()
        .claims;
    assert_eq!(c["iss"], "svc@demo-extoken.iam.gserviceaccount.com");
    assert_eq!(c["sub"], c["iss"]);
    assert_eq!(c["uid"], "U2fire");
    assert_eq!(c["claims"], json!({"roles": ["admin"]}));
    assert_eq!(c["tenant_id"], "tenant-a");
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        3600
    );
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "aud",
            "claims",
            "exp",
            "iat",
            "iss",
            "sub",
            "tenant_id",
            "uid"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_connector_signs_with_its_own_key() {
    let pem = extoken::mint::generate_pem().unwrap();
    let connector = json!({
        "type": "jwt",
        "algorithm": "RS256",
        "key_file": "inhouse.pem",
        "kid": "inhouse-1",
        "issuer": "https://gw.example",
        "audience": "legacy-api",
        "expires_in": "5m",
        "claims": {"tenant": "dct"},
    });
    let claims = session("U2jwt", &[("dct", json!("T3"))]);
    let (token, _gw) = one_forwarded_token(connector, &[("inhouse.pem", &pem)], claims).await;
    assert_eq!(header_of(&token)["kid"], "inhouse-1");
    let jwk = public_jwk(&pem);
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&["legacy-api"]);
    v.set_issuer(&["https://gw.example"]);
    let c = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
        .unwrap()
        .claims;
    assert_eq!(
        (c["sub"].as_str(), c["tenant"].as_str()),
        (Some("U2jwt"), Some("T3"))
    );
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_key_file_replaced_in_place_signs_after_reload() {
    let (k1, k2) = (
        extoken::mint::generate_pem().unwrap(),
        extoken::mint::generate_pem().unwrap(),
    );
    // A fixed kid: the config text stays byte-identical, only the key file changes.
    let connector = json!({
        "type": "jwt",
        "algorithm": "RS256",
        "key_file": "inhouse.pem",
        "kid": "inhouse",
        "issuer": "https://gw.example",
        "expires_in": "10m",
    });
    let r = signing(connector, &[("inhouse.pem", &k1)]).await;
    let session = r.project.key.sign(&session_claims(CONNECTOR_PROJECT, None));

    let reply = r.gw.get_bearer("/", &session).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", r.gw.log());
    let t1 = forwarded(&r.backend);
    assert!(signed_by(&t1, &k1) && !signed_by(&t1, &k2));
    assert_eq!(published_moduli(&r.gw).await, [modulus(&k1)]);
    // Cached: the same token again.
    assert_eq!(r.gw.get_bearer("/", &session).await.status, 200);
    assert_eq!(forwarded(&r.backend), t1);

    // The key is rotated in place (same path, same config) and the config reloaded.
    std::fs::write(r.gw.dir.path().join("inhouse.pem"), &k2).unwrap();
    r.gw.signal(libc::SIGHUP);
    let applied = eventually(Duration::from_secs(10), || async {
        published_moduli(&r.gw).await == [modulus(&k2)]
    })
    .await;
    assert!(applied, "the reload never published K2:\n{}", r.gw.log());
    assert!(
        r.gw.metrics()
            .await
            .contains("extoken_config_reloads_total{result=\"ok\"} 1"),
        "{}",
        r.gw.log()
    );

    // The same session now gets a token signed by K2, not the cached one signed by K1.
    let reply = r.gw.get_bearer("/", &session).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let t2 = forwarded(&r.backend);
    assert_ne!(t2, t1);
    assert!(signed_by(&t2, &k2), "not signed by the new key");
    assert!(!signed_by(&t2, &k1), "still signed by the old key");
    assert_eq!(r.backend.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn supabase_mapped_role_must_be_allowed() {
    let connector = json!({
        "type": "supabase",
        "jwt_secret": SUPABASE_SECRET,
        "claims": {"role": "app_role"},
    });
    let r = signing(connector, &[]).await;
    let session = |user: &str, role: Value| r.project.session(user, &[("app_role", role)]);

    for (user, role) in [
        ("U2svc", json!("service_role")),
        ("U2adm", json!("supabase_admin")),
        ("U2arr", json!(["authenticated"])),
    ] {
        // Twice: a refusal is never served from, or stored in, the token cache.
        for _ in 0..2 {
            let reply = r.gw.get_bearer("/", &session(user, role.clone())).await;
            assert_eq!(reply.status, 403, "{role}: {reply:?}");
            assert_eq!(
                reply.header("www-authenticate"),
                Some(
                    r#"Bearer error="insufficient_scope", error_description="role is not allowed by connector c""#
                ),
                "{reply:?}"
            );
            assert_eq!(reply.json()["error"], "insufficient_scope");
        }
    }
    assert_eq!(r.backend.count(), 0, "{:#?}", r.backend.requests());
    let m = r.gw.metrics().await;
    assert!(
        !m.contains("extoken_connector_calls_total{connector=\"c\""),
        "nothing was minted:\n{m}"
    );
    // Six refusals, counted as forbidden requests and forbidden auth failures (the count lands
    // in the logging phase, just after the answer: poll for it).
    let counted = eventually(Duration::from_secs(5), || async {
        let m = r.gw.metrics().await;
        let six = |prefix: &str, label: &str| {
            m.lines()
                .any(|l| l.starts_with(prefix) && l.contains(label) && l.ends_with(" 6"))
        };
        six("extoken_requests_total", r#"outcome="forbidden""#)
            && six("extoken_auth_failures_total", r#"reason="forbidden""#)
    })
    .await;
    assert!(counted, "{}", r.gw.metrics().await);

    // An allowed role, and no role claim at all (the static role): both minted, as that role.
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["authenticated"]);
    let secret = DecodingKey::from_secret(SUPABASE_SECRET.as_bytes());
    for (user, claims) in [
        ("U2ok", vec![("app_role", json!("authenticated"))]),
        ("U2plain", vec![]),
    ] {
        let token = r.project.session(user, &claims);
        let reply = r.gw.get_bearer("/", &token).await;
        assert_eq!(reply.status, 200, "{reply:?}\n{}", r.gw.log());
        let c = jsonwebtoken::decode::<Value>(&forwarded(&r.backend), &secret, &v)
            .unwrap()
            .claims;
        assert_eq!(c["role"], "authenticated");
        assert_eq!(c["descope_user_id"], user);
    }
    assert_eq!(r.backend.count(), 2);
}
