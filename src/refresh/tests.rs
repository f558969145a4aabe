//! The refresher against a real refresh endpoint on 127.0.0.1 (hyper) that insists on the Descope
//! SDK's request (path, credential, project header, body), with time from a [`ManualClock`]:
//! the single flight, the reuse window, a new session never served past its `exp`, and how each
//! failure comes out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::EncodingKey;
use serde_json::{json, Value};

mod endpoint;

use endpoint::{claims, ec_key, serve, sign, Endpoint, Mode, PROJECT};

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::verify::{KeyStore, Verifier};

struct Fixture {
    clock: Arc<ManualClock>,
    key: EncodingKey,
    verifier: Arc<Verifier>,
    refresher: Arc<Refresher>,
    endpoint: Endpoint,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(mode: Mode) -> Fixture {
        let (key, jwk) = ec_key("k1");
        let clock = ManualClock::new();
        let endpoint = serve(mode, key.clone(), clock.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "descope: {{project_id: {PROJECT}, jwks_file: '{}', base_url: '{}', \
             refresh: {{enabled: true, timeout: 300ms, reuse: 10s, cookie: {{domain: example.com, same_site: strict}}}}}}\n\
             connectors: {{ext: {{type: claim}}}}\n\
             routes: [{{upstream: 'http://127.0.0.1:3000', connector: ext}}]\n",
            dir.path().join("jwks.json").display(),
            endpoint.url,
        );
        let cfg = crate::config::Config::parse(&text, &|_| None).unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let keys = Arc::new(KeyStore::new(&cfg.descope, client.clone(), clock.clone()));
        let set = json!({"keys": [jwk]}).to_string();
        keys.install(crate::verify::parse_jwks(set.as_bytes(), &mut |w| panic!("{w}")).unwrap());
        let verifier = Arc::new(Verifier::new(&cfg.descope, keys, 4096, 100, clock.clone()));
        let refresher = Arc::new(Refresher::new(&cfg.descope, client, clock.clone()));
        Fixture {
            clock,
            key,
            verifier,
            refresher,
            endpoint,
            _dir: dir,
        }
    }

    /// A valid refresh token of the project for `sub`, good for a day.
    fn dsr(&self, sub: &str) -> String {
        sign(
            &self.key,
            "k1",
            &claims("DSR", self.clock.unix() + 86_400, sub),
        )
    }

    async fn refresh(&self, dsr: &str) -> Result<Arc<Refreshed>, RefreshError> {
        self.refresher.refresh(dsr, &self.verifier).await
    }

    fn calls(&self) -> usize {
        self.endpoint.calls.load(Ordering::SeqCst)
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

#[tokio::test]
async fn twenty_concurrent_requests_make_one_call() {
    let fx = Arc::new(
        Fixture::new(Mode::Ok {
            delay_ms: 200,
            rotate: false,
        })
        .await,
    );
    let dsr = fx.dsr("U2a");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (fx, dsr) = (fx.clone(), dsr.clone());
        set.spawn(async move { fx.refresh(&dsr).await.map(|r| r.session_jwt.clone()) });
    }
    let mut sessions = Vec::new();
    while let Some(r) = set.join_next().await {
        sessions.push(r.unwrap().expect("refreshed"));
    }
    assert_eq!(fx.calls(), 1);
    assert_eq!(sessions.len(), 20);
    assert!(sessions.iter().all(|s| s == &sessions[0]));
    // Another refresh token is another flight.
    fx.refresh(&fx.dsr("U2b")).await.unwrap();
    assert_eq!(fx.calls(), 2);
}

#[tokio::test]
async fn an_outcome_is_reused_for_the_window_then_asked_again() {
    let fx = Fixture::new(Mode::Ok {
        delay_ms: 0,
        rotate: false,
    })
    .await;
    let dsr = fx.dsr("U2a");
    let first = fx.refresh(&dsr).await.unwrap();
    fx.advance(9);
    let again = fx.refresh(&dsr).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(fx.calls(), 1);
    fx.advance(2);
    let later = fx.refresh(&dsr).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &later));
    assert_eq!(fx.calls(), 2);
}

#[tokio::test]
async fn a_new_session_is_never_served_past_its_exp() {
    let fx = Fixture::new(Mode::ShortSession { secs: 3 }).await;
    let dsr = fx.dsr("U2a");
    fx.refresh(&dsr).await.unwrap();
    fx.advance(2);
    fx.refresh(&dsr).await.unwrap();
    assert_eq!(fx.calls(), 1);
    fx.advance(1);
    fx.refresh(&dsr).await.unwrap();
    assert_eq!(fx.calls(), 2, "the first session expired: asked again");
}

#[tokio::test]
async fn a_refusal_is_remembered_for_the_window() {
    for status in [400, 401, 403] {
        let fx = Fixture::new(Mode::Status(status)).await;
        let dsr = fx.dsr("U2a");
        assert_eq!(fx.refresh(&dsr).await.unwrap_err(), RefreshError::Refused);
        fx.advance(9);
        assert_eq!(fx.refresh(&dsr).await.unwrap_err(), RefreshError::Refused);
        assert_eq!(fx.calls(), 1, "a replayed refused token makes no call");
        fx.advance(2);
        *fx.endpoint.mode.lock().unwrap() = Mode::Ok {
            delay_ms: 0,
            rotate: false,
        };
        fx.refresh(&dsr).await.unwrap();
        assert_eq!(fx.calls(), 2);
    }
}

#[tokio::test]
async fn descope_hung_down_or_nonsense_is_unavailable_and_bounded() {
    for mode in [
        Mode::Hang,
        Mode::Status(503),
        Mode::Status(429),
        Mode::Forged,
    ] {
        let fx = Fixture::new(mode).await;
        let dsr = fx.dsr("U2a");
        let started = std::time::Instant::now();
        assert_eq!(
            fx.refresh(&dsr).await.unwrap_err(),
            RefreshError::Unavailable,
            "{mode:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{mode:?}");
        // Remembered briefly: the page's other requests make no call of their own.
        assert_eq!(
            fx.refresh(&dsr).await.unwrap_err(),
            RefreshError::Unavailable
        );
        assert_eq!(fx.calls(), 1, "{mode:?}");
        fx.advance(1);
        let _ = fx.refresh(&dsr).await;
        assert_eq!(fx.calls(), 2, "{mode:?}");
    }
}

#[tokio::test]
async fn a_refresh_token_that_does_not_verify_makes_no_call() {
    let fx = Fixture::new(Mode::Ok {
        delay_ms: 0,
        rotate: false,
    })
    .await;
    let now = fx.clock.unix();
    let (other, _) = ec_key("k1");
    for bad in [
        sign(&fx.key, "k1", &claims("DS", now + 600, "U")), // a session, not a refresh token
        sign(&fx.key, "k1", &claims("DSR", now - 60, "U")), // expired
        sign(&other, "k1", &claims("DSR", now + 600, "U")), // forged
        sign(
            &fx.key,
            "k1",
            &with_iss(claims("DSR", now + 600, "U"), "P2other"),
        ),
        "not.a.jwt".to_string(),
    ] {
        let e = fx.refresh(&bad).await.unwrap_err();
        assert!(matches!(e, RefreshError::Invalid(_)), "{e:?}");
    }
    assert_eq!(fx.calls(), 0);
}

fn with_iss(mut c: Value, iss: &str) -> Value {
    c["iss"] = iss.into();
    c
}

#[tokio::test]
async fn cookies_carry_the_config_attributes_and_descopes_lifetime() {
    let fx = Fixture::new(Mode::Ok {
        delay_ms: 0,
        rotate: true,
    })
    .await;
    let r = fx.refresh(&fx.dsr("U2a")).await.unwrap();
    fx.advance(100);
    let set: Vec<String> = fx
        .refresher
        .set_cookies(&r)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(set.len(), 2, "{set:?}");
    let (ds, dsr) = (&set[0], &set[1]);
    assert_eq!(
        ds,
        &format!(
            "DS={}; Path=/; Domain=example.com; Max-Age=2419100; Secure; SameSite=Strict",
            r.session_jwt
        )
    );
    let rotated = &r.refresh_jwt.as_ref().unwrap().0;
    assert_eq!(
        dsr,
        &format!(
            "DSR={rotated}; Path=/; Domain=example.com; Max-Age=2419100; Secure; HttpOnly; SameSite=Strict"
        )
    );
}

#[tokio::test]
async fn without_descopes_lifetime_the_cookie_lives_as_long_as_the_session() {
    let fx = Fixture::new(Mode::ShortSession { secs: 300 }).await;
    let r = fx.refresh(&fx.dsr("U2a")).await.unwrap();
    let set = fx.refresher.set_cookies(&r);
    assert_eq!(set.len(), 1, "not rotated: no DSR cookie");
    assert!(
        set[0].to_str().unwrap().contains("; Max-Age=300;"),
        "{set:?}"
    );
}

#[test]
fn only_a_missing_or_expired_cookie_session_of_the_project_is_refreshed() {
    use crate::extract::{Found, Source};
    let (key, _) = ec_key("k1");
    let expired = VerifyError::Invalid(AuthError::Expired);
    let stale = sign(&key, "k1", &claims("DS", 1_000, "U"));
    let cookie = |t| {
        Some(Found {
            token: t,
            source: Source::Cookie,
        })
    };
    let missing = VerifyError::Invalid(AuthError::Missing);
    assert!(may_refresh(None, &missing, PROJECT));
    assert!(may_refresh(cookie(&stale), &expired, PROJECT));
    let bearer = Some(Found {
        token: &stale,
        source: Source::Bearer,
    });
    assert!(
        !may_refresh(bearer, &expired, PROJECT),
        "an API client refreshes itself"
    );
    let other = sign(&key, "k1", &with_iss(claims("DS", 1_000, "U"), "P2other"));
    assert!(!may_refresh(cookie(&other), &expired, PROJECT));
    let old_dsr = sign(&key, "k1", &claims("DSR", 1_000, "U"));
    assert!(!may_refresh(cookie(&old_dsr), &expired, PROJECT));
    for e in [
        AuthError::BadSignature,
        AuthError::UnknownKey,
        AuthError::WrongIssuer,
        AuthError::Malformed("x"),
    ] {
        assert!(
            !may_refresh(cookie(&stale), &VerifyError::Invalid(e.clone()), PROJECT),
            "{e:?}"
        );
    }
    assert!(!may_refresh(
        cookie(&stale),
        &VerifyError::KeysUnavailable,
        PROJECT
    ));
}

#[tokio::test]
async fn a_refresh_token_rotated_in_a_set_cookie_is_passed_on() {
    let fx = Fixture::new(Mode::RotateByCookie).await;
    let r = fx.refresh(&fx.dsr("U2a")).await.unwrap();
    let set = fx.refresher.set_cookies(&r);
    assert_eq!(set.len(), 2, "{set:?}");
    let dsr = set[1].to_str().unwrap();
    let rotated = &r.refresh_jwt.as_ref().expect("rotated").0;
    assert!(dsr.starts_with(&format!("DSR={rotated}; ")), "{dsr}");
    // No `cookieMaxAge` in the answer: the refresh cookie lives as long as its token.
    assert!(dsr.contains("; Max-Age=3600;"), "{dsr}");
}
