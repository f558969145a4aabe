//! Session validation, end to end: a real JWKS endpoint, a recording backend and the `extoken`
//! binary on loopback. Every way a token is refused names its reason (expiry, signature, key and
//! algorithm, issuer, audience, the external token, malformed input) and reaches no backend;
//! the issuers, audiences and algorithm families that are accepted get through.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const PROJECT: &str = "P2authTestProject000000000";

async fn setup() -> Setup {
    Setup::root(PROJECT, vec![TestKey::rsa("rsa-1", Algorithm::RS256)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_their_reason() {
    let s = setup().await;
    let k = &s.key;
    let base = || session_claims(PROJECT, Some("ext"));
    let now = now() as i64;

    s.refused(
        &k.sign(&with(base(), "exp", json!(now - 3600))),
        "token has expired",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "nbf", json!(now + 3600))),
        "token is not yet valid",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "iat", json!(now + 3600))),
        "token is not yet valid",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "exp", Value::Null)),
        "token has no exp claim",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "exp", json!("tomorrow"))),
        "malformed token: time claim is not a number",
    )
    .await;
    s.refused(
        &k.sign(&with(base(), "drn", json!("DSR"))),
        "a refresh token is not a session token",
    )
    .await;

    // Signature: another key under our kid; a payload changed after signing.
    let other = TestKey::rsa("rsa-1", Algorithm::RS256);
    s.refused(&other.sign(&base()), "token signature is invalid")
        .await;
    let good = s.token("ext");
    let parts: Vec<&str> = good.split('.').collect();
    let evil = with(base(), "externalToken", json!("admin-token"));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64_url(evil.to_string().as_bytes()),
        parts[2]
    );
    s.refused(&tampered, "token signature is invalid").await;
    let mut sig = parts[2].as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(sig).unwrap()
    );
    s.refused(&flipped, "token signature is invalid").await;
    s.refused(
        &format!("{}.{}.", parts[0], parts[1]),
        "token signature is invalid",
    )
    .await;

    // Keys and algorithms.
    let unknown = TestKey::rsa("rsa-unknown", Algorithm::RS256);
    s.refused(
        &unknown.sign(&base()),
        "token is signed with an unknown key",
    )
    .await;
    let bad_alg = "token algorithm is not accepted for its key";
    for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
        let h = json!({"alg": alg_name(alg), "kid": "rsa-1"});
        s.refused(&k.sign_with(&h, alg, &base()), bad_alg).await;
    }
    let ec = TestKey::es256("ec");
    s.refused(
        &ec.sign_with(
            &json!({"alg": "ES256", "kid": "rsa-1"}),
            Algorithm::ES256,
            &base(),
        ),
        bad_alg,
    )
    .await;
    let none = format!(
        "{}.{}.",
        base64_url(
            json!({"alg": "none", "kid": "rsa-1"})
                .to_string()
                .as_bytes()
        ),
        base64_url(base().to_string().as_bytes())
    );
    s.refused(&none, bad_alg).await;
    let hmac = TestKey {
        kid: "rsa-1".into(),
        alg: Algorithm::HS256,
        encoding: EncodingKey::from_secret(b"shared secret"),
        jwk: Value::Null,
    };
    s.refused(&hmac.sign(&base()), bad_alg).await;
    let no_alg = k.sign_with(&json!({"kid": "rsa-1"}), Algorithm::RS256, &base());
    s.refused(&no_alg, bad_alg).await;
    let no_kid = k.sign_with(&json!({"alg": "RS256"}), Algorithm::RS256, &base());
    s.refused(&no_kid, "malformed token: no kid").await;
    let crit = k.sign_with(
        &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
        Algorithm::RS256,
        &base(),
    );
    s.refused(&crit, "malformed token: unsupported crit header")
        .await;

    // Issuers: the project id, or a URL whose last or second-to-last path segment is it.
    let wrong_iss = "token issuer is not this project";
    for iss in [
        json!("P2someOtherProject"),
        json!(format!("https://{PROJECT}/x")),
        json!(format!("https://{PROJECT}")),
        json!(format!("https://api.descope.com/{PROJECT}/a/b")),
        json!(format!("{PROJECT}x")),
        json!(42),
        Value::Null,
    ] {
        s.refused(&k.sign(&with(base(), "iss", iss)), wrong_iss)
            .await;
    }
    // An aud that does not name the project, when no audience is configured.
    s.refused(
        &k.sign(&with(base(), "aud", json!(["someone-else"]))),
        "token audience is not accepted",
    )
    .await;

    // The external token must be a header-safe string.
    for bad in [
        json!("two words"),
        json!("x\r\nX-Evil: 1"),
        json!("caf\u{e9}"),
    ] {
        s.refused(
            &k.sign(&with(base(), "externalToken", bad)),
            BAD_EXTERNAL_TOKEN,
        )
        .await;
    }
    for missing in [Value::Null, json!(""), json!(123)] {
        s.refused(
            &k.sign(&with(base(), "externalToken", missing)),
            NO_EXTERNAL_TOKEN,
        )
        .await;
    }

    // Not JWTs at all.
    s.refused("not-a-jwt", "malformed token: not a JWT").await;
    s.refused("a.b.c.d", "malformed token: not a JWT").await;
    s.refused("!!!.e30.sig", "malformed token: bad header encoding")
        .await;
    s.refused(
        &format!("{}.e30.sig", base64_url(b"[1,2]")),
        "malformed token: bad header",
    )
    .await;
    s.refused(&"x".repeat(17 * 1024), "token is too long").await;

    // ...and after all that, the same gateway still forwards a good session.
    assert_eq!(s.backend.count(), 0);
    s.accepted(&good, "ext").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_issuers_and_audiences() {
    let s = setup().await;
    let k = &s.key;
    for (i, iss) in [
        PROJECT.to_string(),
        format!("https://api.descope.com/{PROJECT}"),
        format!("https://api.descope.com/{PROJECT}/"),
        format!("https://auth.example.com/v1/apps/agentic/{PROJECT}/server-1"),
    ]
    .into_iter()
    .enumerate()
    {
        let ext = format!("iss-{i}");
        let t = k.sign(&with(
            session_claims(PROJECT, Some(&ext)),
            "iss",
            json!(iss),
        ));
        s.accepted(&t, &ext).await;
    }
    // Without a configured audience, an aud naming the project is fine.
    let t = k.sign(&with(
        session_claims(PROJECT, Some("aud-proj")),
        "aud",
        json!([PROJECT]),
    ));
    s.accepted(&t, "aud-proj").await;
    let t = k.sign(&with(
        session_claims(PROJECT, Some("aud-str")),
        "aud",
        json!(PROJECT),
    ));
    s.accepted(&t, "aud-str").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_audience_must_match() {
    let keys = vec![TestKey::rsa("rsa-1", Algorithm::RS256)];
    let s = Setup::start(PROJECT, keys, |config, up| {
        config
            .descope("audience", json!(["aud-a", "aud-b"]))
            .route(root_route(up))
    })
    .await;
    let k = &s.key;
    let claims = |ext: &str, aud: Value| with(session_claims(PROJECT, Some(ext)), "aud", aud);
    s.accepted(&k.sign(&claims("one", json!("aud-b"))), "one")
        .await;
    s.accepted(&k.sign(&claims("two", json!(["x", "aud-a"]))), "two")
        .await;
    let wrong = "token audience is not accepted";
    s.refused(&k.sign(&claims("e", json!(["x", "y"]))), wrong)
        .await;
    s.refused(&k.sign(&claims("e", Value::Null)), wrong).await;
    s.refused(&k.sign(&claims("e", json!([PROJECT]))), wrong)
        .await;
    s.refused(&k.sign(&claims("e", json!({"aud": "aud-a"}))), wrong)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_accepted_algorithm_family() {
    let keys = vec![
        TestKey::es256("ec-p256"),
        TestKey::rsa("rsa-rs256", Algorithm::RS256),
        TestKey::rsa("rsa-rs512", Algorithm::RS512),
        TestKey::rsa("rsa-ps256", Algorithm::PS256),
        TestKey::ed25519("ed-1"),
    ];
    let s = Setup::root(PROJECT, keys).await;
    s.accepted(&s.token("es256"), "es256").await;
    for k in &s.others {
        let ext = format!("via-{}", k.kid);
        s.accepted(&k.sign(&session_claims(PROJECT, Some(&ext))), &ext)
            .await;
    }
    // An RSA key whose JWK names RS512 refuses RS256, an EC P-256 key refuses ES384-style claims
    // of another curve, and an Ed25519 key refuses anything but EdDSA.
    let bad_alg = "token algorithm is not accepted for its key";
    let rs512 = &s.others[1];
    let h = json!({"alg": "RS256", "kid": rs512.kid});
    s.refused(
        &rs512.sign_with(&h, Algorithm::RS256, &session_claims(PROJECT, Some("x"))),
        bad_alg,
    )
    .await;
    let ps = &s.others[2];
    let h = json!({"alg": "RS256", "kid": ps.kid});
    s.refused(
        &ps.sign_with(&h, Algorithm::RS256, &session_claims(PROJECT, Some("x"))),
        bad_alg,
    )
    .await;
    let h = json!({"alg": "ES384", "kid": "ec-p256"});
    s.refused(
        &s.key
            .sign_with(&h, Algorithm::ES256, &session_claims(PROJECT, Some("x"))),
        bad_alg,
    )
    .await;
    let h = json!({"alg": "ES256", "kid": "ed-1"});
    s.refused(
        &s.key
            .sign_with(&h, Algorithm::ES256, &session_claims(PROJECT, Some("x"))),
        bad_alg,
    )
    .await;
}
