//! The verification rules end to end through [`Verifier::verify`], in process: keys made here, a
//! [`KeySet`] parsed from a JWKS string and installed directly (no HTTP), time from a
//! [`ManualClock`] (no sleeps). The key store's source is a `jwks_file` in a temp dir, so an
//! unknown-`kid` refetch reads a file (missing unless a test writes it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use super::keys::parse_jwks;
use super::*;
use crate::clock::{Clock, ManualClock};

const MAX_TOKEN_BYTES: usize = 2048;

/// A P-256 signing key and its public JWK.
struct TestKey {
    encoding: EncodingKey,
    jwk: Value,
}

fn ec_key(kid: &str) -> TestKey {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    let jwk = serde_json::to_value(&jwk).unwrap();
    TestKey { encoding, jwk }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A compact JWS of `header` and `claims`, signed ES256 with `key` whatever the header says.
fn sign(key: &TestKey, header: Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(&header), b64(claims));
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, Algorithm::ES256).unwrap();
    format!("{input}.{sig}")
}

fn header(kid: &str) -> Value {
    json!({"alg": "ES256", "kid": kid, "typ": "JWT"})
}

struct Fixture {
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
    jwks_file: PathBuf,
    config: crate::config::Config,
    key: TestKey,
    verifier: Verifier,
}

impl Fixture {
    /// Keys `[k1]` installed, leeway 5 s, `descope_extra` added to the `descope:` settings.
    fn new(descope_extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let jwks_file = dir.path().join("jwks.json");
        let text = format!(
            "descope: {{project_id: P2t, jwks_file: '{}'{descope_extra}}}\n\
             connectors: {{ext: {{type: claim}}}}\n\
             routes: [{{upstream: 'http://127.0.0.1:3000', connector: ext}}]\n",
            jwks_file.display()
        );
        let config = crate::config::Config::parse(&text, &|_| None).unwrap();
        let clock = ManualClock::new();
        let keys = Arc::new(KeyStore::new(
            &config.descope,
            reqwest::Client::new(),
            clock.clone(),
        ));
        let fx = Fixture {
            verifier: Self::verifier_on(&config, keys, &clock),
            clock,
            _dir: dir,
            jwks_file,
            config,
            key: ec_key("k1"),
        };
        fx.install(&[&fx.key]);
        fx
    }

    fn verifier_on(
        config: &crate::config::Config,
        keys: Arc<KeyStore>,
        clock: &Arc<ManualClock>,
    ) -> Verifier {
        Verifier::new(&config.descope, keys, MAX_TOKEN_BYTES, 100, clock.clone())
    }

    /// A verifier with an empty session cache on the same keys and clock.
    fn fresh_verifier(&self) -> Verifier {
        Self::verifier_on(&self.config, self.verifier.keys.clone(), &self.clock)
    }

    fn install(&self, keys: &[&TestKey]) {
        let set = parse_jwks(jwks(keys).as_bytes(), &mut |w| panic!("{w}")).unwrap();
        self.verifier.keys.install(set);
    }

    fn now(&self) -> u64 {
        self.clock.unix()
    }

    /// Valid session claims, with `extra` merged over them (`null` removes a claim).
    fn claims(&self, extra: Value) -> Value {
        let mut c = json!({"iss": "P2t", "sub": "U1", "iat": self.now(), "exp": self.now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            match v {
                Value::Null => c.as_object_mut().unwrap().remove(k),
                v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        c
    }

    /// A token signed with the fixture's key (`k1`).
    fn token(&self, extra: Value) -> String {
        sign(&self.key, header("k1"), &self.claims(extra))
    }

    async fn verify(&self, token: &str) -> Result<Arc<VerifiedSession>, VerifyError> {
        self.verifier.verify(token).await
    }

    async fn refusal(&self, token: &str) -> AuthError {
        match self.verify(token).await {
            Err(VerifyError::Invalid(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

fn invalid(e: AuthError) -> Result<(), VerifyError> {
    Err(VerifyError::Invalid(e))
}

fn ok(r: Result<Arc<VerifiedSession>, VerifyError>) -> Result<(), VerifyError> {
    r.map(|_| ())
}

#[tokio::test]
async fn a_valid_session_is_accepted_with_its_claims() {
    let fx = Fixture::new("");
    let s = fx.verify(&fx.token(json!({"dct": "T1"}))).await.unwrap();
    assert_eq!(s.exp, fx.now() + 600);
    assert_eq!(s.user_id(), Some("U1"));
    assert_eq!(s.str_claim("dct"), Some("T1"));
}

#[tokio::test]
async fn expiry_is_checked_with_the_leeway_as_the_clock_moves() {
    let fx = Fixture::new("");
    let exp = fx.now() + 10;
    let t = fx.token(json!({"exp": exp}));
    fx.clock.advance(Duration::from_secs(14)); // exp + 4: within the 5 s leeway
    assert_eq!(ok(fx.verify(&t).await), Ok(()));
    assert_eq!(ok(fx.fresh_verifier().verify(&t).await), Ok(()));
    fx.clock.advance(Duration::from_secs(1)); // exp + 5
    assert_eq!(ok(fx.verify(&t).await), invalid(AuthError::Expired));
    assert_eq!(
        ok(fx.fresh_verifier().verify(&t).await),
        invalid(AuthError::Expired)
    );
}

#[tokio::test]
async fn nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() {
    let fx = Fixture::new("");
    let now = fx.now();
    let nbf_ok = fx.token(json!({"nbf": now + 5}));
    assert_eq!(ok(fx.verify(&nbf_ok).await), Ok(()));
    let nbf = fx.token(json!({"nbf": now + 6}));
    assert_eq!(fx.refusal(&nbf).await, AuthError::NotYetValid);
    let iat = fx.token(json!({"iat": now + 60}));
    assert_eq!(fx.refusal(&iat).await, AuthError::NotYetValid);
    // A refusal is not remembered: once the clock gets there, the same tokens pass.
    fx.clock.advance(Duration::from_secs(55));
    assert_eq!(ok(fx.verify(&nbf).await), Ok(()));
    assert_eq!(ok(fx.verify(&iat).await), Ok(()));
}

#[tokio::test]
async fn exp_is_required_and_time_claims_must_be_in_range() {
    let fx = Fixture::new("");
    let t = fx.token(json!({"exp": null}));
    assert_eq!(fx.refusal(&t).await, AuthError::MissingExp);
    let t = fx.token(json!({"exp": -1}));
    assert_eq!(
        fx.refusal(&t).await,
        AuthError::Malformed("time claim out of range")
    );
}

#[tokio::test]
async fn issuer_is_the_project() {
    let fx = Fixture::new("");
    for iss in ["P2t", "https://api.descope.com/P2t", "https://x.io/P2t/srv"] {
        let t = fx.token(json!({ "iss": iss }));
        assert_eq!(ok(fx.verify(&t).await), Ok(()), "{iss}");
    }
    for iss in [
        json!("P2other"),
        json!("https://P2t/x"),
        json!(null),
        json!(7),
    ] {
        let t = fx.token(json!({ "iss": iss }));
        assert_eq!(fx.refusal(&t).await, AuthError::WrongIssuer, "{iss}");
    }
}

#[tokio::test]
async fn audience_without_configuration_is_absent_or_the_project() {
    let fx = Fixture::new("");
    for aud in [json!(null), json!("P2t"), json!(["x", "P2t"])] {
        let t = fx.token(json!({ "aud": aud }));
        assert_eq!(ok(fx.verify(&t).await), Ok(()), "{aud}");
    }
    for aud in [json!("api"), json!([]), json!(["x"]), json!(5)] {
        let t = fx.token(json!({ "aud": aud }));
        assert_eq!(fx.refusal(&t).await, AuthError::WrongAudience, "{aud}");
    }
}

#[tokio::test]
async fn a_configured_audience_must_be_present() {
    let fx = Fixture::new(", audience: [api, web]");
    for aud in [json!("api"), json!(["x", "web"])] {
        let t = fx.token(json!({ "aud": aud }));
        assert_eq!(ok(fx.verify(&t).await), Ok(()), "{aud}");
    }
    for aud in [json!(null), json!("P2t"), json!(["x"]), json!({"a": "api"})] {
        let t = fx.token(json!({ "aud": aud }));
        assert_eq!(fx.refusal(&t).await, AuthError::WrongAudience, "{aud}");
    }
}

#[tokio::test]
async fn a_refresh_token_is_not_a_session() {
    let fx = Fixture::new("");
    let t = fx.token(json!({"drn": "DSR"}));
    assert_eq!(fx.refusal(&t).await, AuthError::RefreshToken);
    let t = fx.token(json!({"drn": "DS"}));
    assert_eq!(ok(fx.verify(&t).await), Ok(()));
}

#[tokio::test]
async fn the_header_alg_must_be_the_keys() {
    let fx = Fixture::new("");
    let claims = fx.claims(json!({}));
    for alg in ["ES384", "RS256", "PS256", "HS256", "none"] {
        let t = sign(&fx.key, json!({"alg": alg, "kid": "k1"}), &claims);
        assert_eq!(fx.refusal(&t).await, AuthError::BadAlgorithm, "{alg}");
    }
    let t = sign(&fx.key, json!({"kid": "k1"}), &claims);
    assert_eq!(fx.refusal(&t).await, AuthError::BadAlgorithm);
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_per_cooldown() {
    let fx = Fixture::new("");
    let k2 = ec_key("k2");
    let t = sign(&k2, header("k2"), &fx.claims(json!({})));
    // The refetch finds no file: the key stays unknown.
    assert_eq!(fx.refusal(&t).await, AuthError::UnknownKey);
    // The file now has k2, but the last refetch was less than jwks_min_refetch (30 s) ago.
    std::fs::write(&fx.jwks_file, jwks(&[&fx.key, &k2])).unwrap();
    fx.clock.advance(Duration::from_secs(29));
    assert_eq!(fx.refusal(&t).await, AuthError::UnknownKey);
    fx.clock.advance(Duration::from_secs(1));
    assert_eq!(ok(fx.verify(&t).await), Ok(()));
    assert_eq!(fx.verifier.keys.current().len(), 2);
}

#[tokio::test]
async fn a_token_without_kid_is_malformed() {
    let fx = Fixture::new("");
    let t = sign(&fx.key, json!({"alg": "ES256"}), &fx.claims(json!({})));
    assert_eq!(fx.refusal(&t).await, AuthError::Malformed("no kid"));
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let fx = Fixture::new("");
    // Signed by another key under the same kid.
    let other = ec_key("k1");
    let t = sign(&other, header("k1"), &fx.claims(json!({})));
    assert_eq!(fx.refusal(&t).await, AuthError::BadSignature);
    // Claims changed after signing.
    let t = fx.token(json!({}));
    let (h, rest) = t.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let forged = format!("{h}.{}.{sig}", b64(&fx.claims(json!({"sub": "admin"}))));
    assert_eq!(fx.refusal(&forged).await, AuthError::BadSignature);
    // A signature that is not base64url.
    let t = format!("{}.!!", t.rsplit_once('.').unwrap().0);
    assert_eq!(fx.refusal(&t).await, AuthError::BadSignature);
}

#[tokio::test]
async fn a_crit_header_is_refused() {
    let fx = Fixture::new("");
    let h = json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1});
    let t = sign(&fx.key, h, &fx.claims(json!({})));
    assert_eq!(
        fx.refusal(&t).await,
        AuthError::Malformed("unsupported crit header")
    );
}

#[tokio::test]
async fn a_token_over_the_limit_is_refused_before_parsing() {
    let fx = Fixture::new("");
    let padded = |n: usize| fx.token(json!({"pad": "x".repeat(n)}));
    let base = padded(0).len();
    // Base64 of the claims grows by 4 characters per 3 bytes of padding.
    let t = padded((MAX_TOKEN_BYTES - base - 4) / 4 * 3);
    assert!(t.len() <= MAX_TOKEN_BYTES);
    assert_eq!(ok(fx.verify(&t).await), Ok(()));
    let t = padded(MAX_TOKEN_BYTES);
    assert_eq!(fx.refusal(&t).await, AuthError::TooLong);
    let garbage = "x".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(fx.refusal(&garbage).await, AuthError::TooLong);
}

#[tokio::test]
async fn no_keys_yet_is_unavailable_not_invalid() {
    let fx = Fixture::new("");
    let empty = Arc::new(KeyStore::new(
        &fx.config.descope,
        reqwest::Client::new(),
        fx.clock.clone(),
    ));
    let v = Verifier::new(&fx.config.descope, empty, 2048, 10, fx.clock.clone());
    let r = v.verify(&fx.token(json!({}))).await;
    assert_eq!(ok(r), Err(VerifyError::KeysUnavailable));
}

#[tokio::test]
async fn a_cached_session_is_served_until_the_clock_passes_exp() {
    let fx = Fixture::new("");
    let exp = fx.now() + 60;
    let t = fx.token(json!({"exp": exp}));
    let first = fx.verify(&t).await.unwrap();
    let hit = fx.verify(&t).await.unwrap();
    assert!(Arc::ptr_eq(&first, &hit), "served from the session cache");
    fx.clock.advance(Duration::from_secs(64)); // exp + 4
    let hit = fx.verify(&t).await.unwrap();
    assert!(Arc::ptr_eq(&first, &hit), "still within the leeway");
    fx.clock.advance(Duration::from_secs(1)); // exp + 5
    assert_eq!(fx.refusal(&t).await, AuthError::Expired);
}

#[tokio::test]
async fn a_cached_session_stops_when_its_key_is_replaced_or_withdrawn() {
    let fx = Fixture::new("");
    let t = fx.token(json!({}));
    fx.verify(&t).await.unwrap();
    // Another key published under the same kid: the cached session is not served.
    let replacement = ec_key("k1");
    fx.install(&[&replacement]);
    assert_eq!(fx.refusal(&t).await, AuthError::BadSignature);
    // The original key back: verified afresh.
    fx.install(&[&fx.key]);
    assert_eq!(ok(fx.verify(&t).await), Ok(()));
    // Withdrawn (another kid only; the refetch finds no file).
    fx.install(&[&ec_key("k9")]);
    assert_eq!(fx.refusal(&t).await, AuthError::UnknownKey);
}

#[tokio::test]
async fn the_sweep_frees_expired_sessions_and_those_of_withdrawn_keys() {
    let fx = Fixture::new("");
    let short = fx.token(json!({"exp": fx.now() + 60, "sub": "U1"}));
    let long = fx.token(json!({"exp": fx.now() + 3600, "sub": "U2"}));
    assert_eq!(ok(fx.verify(&short).await), Ok(()));
    assert_eq!(ok(fx.verify(&long).await), Ok(()));
    assert_eq!(fx.verifier.sweep(), 0, "both fresh");
    assert_eq!(fx.verifier.cached_sessions(), 2);
    // Inside the leeway (5 s by default): still held.
    fx.clock.advance(Duration::from_secs(62));
    assert_eq!(fx.verifier.sweep(), 0);
    fx.clock.advance(Duration::from_secs(10));
    assert_eq!(fx.verifier.sweep(), 1, "the expired one");
    assert_eq!(fx.verifier.cached_sessions(), 1);
    // Its key withdrawn: the other goes too, without waiting for a request.
    fx.install(&[&ec_key("k9")]);
    assert_eq!(fx.verifier.sweep(), 1);
    assert_eq!(fx.verifier.cached_sessions(), 0);
}

#[tokio::test]
async fn key_age_follows_the_clock() {
    let fx = Fixture::new("");
    let keys = &fx.verifier.keys;
    assert_eq!(keys.age(), None, "installed, never loaded");
    std::fs::write(&fx.jwks_file, jwks(&[&fx.key])).unwrap();
    assert_eq!(keys.load().await.unwrap(), 1);
    assert_eq!(keys.age(), Some(Duration::ZERO));
    fx.clock.advance(Duration::from_secs(90));
    assert_eq!(keys.age(), Some(Duration::from_secs(90)));
}

#[tokio::test]
async fn a_connections_memo_serves_its_very_token_and_no_other() {
    let fx = Fixture::new("");
    let v = &fx.verifier;
    let t1 = fx.token(json!({"sub": "U1"}));
    let t2 = fx.token(json!({"sub": "U2"}));
    let mut memo = SessionMemo::default();
    let first = v.verify_remembered(&t1, &mut memo).await.unwrap();
    v.verified.clear();
    let hit = v.verify_remembered(&t1, &mut memo).await.unwrap();
    assert!(Arc::ptr_eq(&first, &hit), "served from the memo");
    assert_eq!(v.cached_sessions(), 0, "the session cache was not asked");

    // The same length, one byte of the signature changed: verified (and refused), not remembered.
    let mut forged = t1.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(forged.len(), t1.len());
    assert_eq!(
        ok(v.verify_remembered(&forged, &mut memo).await),
        invalid(AuthError::BadSignature)
    );
    let hit = v.verify_remembered(&t1, &mut memo).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &hit),
        "a refused token leaves the memo as it was"
    );

    // Another session replaces it.
    let other = v.verify_remembered(&t2, &mut memo).await.unwrap();
    assert_eq!(other.str_claim("sub"), Some("U2"));
    assert_eq!(v.cached_sessions(), 1);
    let again = v.verify_remembered(&t1, &mut memo).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &again), "verified anew");
    assert_eq!(again.str_claim("sub"), Some("U1"));
}

#[tokio::test]
async fn a_memo_hit_is_checked_as_a_cache_hit_is() {
    let fx = Fixture::new("");
    let v = &fx.verifier;
    let t = fx.token(json!({"exp": fx.now() + 60}));
    let mut memo = SessionMemo::default();
    v.verify_remembered(&t, &mut memo).await.unwrap();
    // Another key under the same kid: the remembered session is not served.
    fx.install(&[&ec_key("k1")]);
    assert_eq!(
        ok(v.verify_remembered(&t, &mut memo).await),
        invalid(AuthError::BadSignature)
    );
    fx.install(&[&fx.key]);
    assert_eq!(ok(v.verify_remembered(&t, &mut memo).await), Ok(()));
    // Past exp and the leeway.
    fx.clock.advance(Duration::from_secs(65));
    assert_eq!(
        ok(v.verify_remembered(&t, &mut memo).await),
        invalid(AuthError::Expired)
    );
}

#[tokio::test]
async fn a_memo_from_the_verifier_before_a_reload_is_not_trusted() {
    let fx = Fixture::new("");
    let t = fx.token(json!({}));
    let mut memo = SessionMemo::default();
    fx.verifier.verify_remembered(&t, &mut memo).await.unwrap();
    let reloaded = fx.fresh_verifier();
    reloaded.verify_remembered(&t, &mut memo).await.unwrap();
    assert_eq!(
        reloaded.cached_sessions(),
        1,
        "verified by the new verifier"
    );
}
