//! Security issue #7, minting connectors, end to end with the real binary on loopback:
//! - a key file replaced in place and reloaded is the key tokens are signed with from then on
//!   (the token cache's fingerprint covers the key bytes, not the file's path);
//! - a Supabase role mapped from the session must be one of `allowed_roles` (else 403).

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde_json::{json, Value};

const PROJECT: &str = "P2ConnectorKeysProject";
const SUPABASE_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";

/// Descope keys, a recording backend, and a gateway (with an admin listener) whose one route
/// uses connector `c`, configured by `connectors`.
struct Rig {
    key: TestKey,
    _jwks: JwksServer,
    backend: Backend,
    gw: GatewayProcess,
}

async fn rig(connectors: &str, files: &[(&str, &str)]) -> Rig {
    let key = TestKey::rsa("k1", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let yaml = format!(
        "{}connectors:\n{connectors}routes:\n  - upstream: \"{}\"\n    connector: c\n",
        descope_block(PROJECT, &jwks.url(), &[]),
        backend.url()
    );
    let how = Launch {
        files,
        admin: true,
        ..Launch::default()
    };
    let gw = GatewayProcess::launch(&yaml, how).await;
    gw.wait_keys("/", &key.probe_token()).await;
    Rig {
        key,
        _jwks: jwks,
        backend,
        gw,
    }
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
async fn jwt_key_file_replaced_in_place_signs_after_reload() {
    let (k1, k2) = (
        extoken::mint::generate_pem().unwrap(),
        extoken::mint::generate_pem().unwrap(),
    );
    // A fixed kid: the config text stays byte-identical, only the key file changes.
    let connectors = "  c:\n    type: jwt\n    algorithm: RS256\n    key_file: inhouse.pem\n    kid: inhouse\n    issuer: \"https://gw.example\"\n    expires_in: 10m\n";
    let r = rig(connectors, &[("inhouse.pem", &k1)]).await;
    let session = r.key.sign(&session_claims(PROJECT, None));

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

const SUPABASE: &str = "  c:\n    type: supabase\n    jwt_secret: \"super-secret-jwt-token-with-at-least-32-characters\"\n    claims:\n      role: app_role\n";

#[tokio::test(flavor = "multi_thread")]
async fn supabase_mapped_role_must_be_allowed() {
    let r = rig(SUPABASE, &[]).await;
    let session = |user: &str, role: Value| {
        let c = with(session_claims(PROJECT, None), "sub", user.into());
        r.key.sign(&with(c, "app_role", role))
    };

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
        (
            "U2ok",
            with(
                session_claims(PROJECT, None),
                "app_role",
                json!("authenticated"),
            ),
        ),
        ("U2plain", session_claims(PROJECT, None)),
    ] {
        let token = r.key.sign(&with(claims, "sub", user.into()));
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
