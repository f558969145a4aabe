//! The claim rules a signed session must meet: pure functions of the claims and a time, no clock,
//! no I/O.
//!
//! `exp` is required and `exp`/`nbf`/`iat` are checked with the leeway; `iss` is the project id or
//! a URL whose last or second-to-last path segment is it; a refresh token (`drn` `DSR`) is not a
//! session; `aud` must match the configured audience, or when none is configured be absent or
//! contain the project id.
//!
//! Time claims are whole seconds from 0 to the end of year 9999; anything else (negative, beyond,
//! not a number) is a malformed token. All arithmetic on them saturates, so no token can make the
//! gateway panic on an overflow.

use serde_json::{Map, Value};

use super::AuthError;
use crate::config::DescopeConfig;

/// The settings the claims are checked against.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    pub(crate) project_id: String,
    pub(crate) audience: Option<Vec<String>>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`, in seconds.
    pub(crate) leeway: u64,
}

impl ClaimRules {
    pub(crate) fn new(cfg: &DescopeConfig) -> ClaimRules {
        ClaimRules {
            project_id: cfg.project_id.clone(),
            audience: cfg.audience.as_ref().map(|a| a.to_vec()),
            leeway: cfg.leeway.0.as_secs(),
        }
    }

    /// Whether a session expiring at `exp` is still valid at `now` (Unix seconds).
    pub(crate) fn unexpired(&self, exp: u64, now: u64) -> bool {
        exp.saturating_add(self.leeway) > now
    }

    /// Checks the claims of a token whose signature is valid, at time `now` (Unix seconds).
    /// Returns its `exp`.
    pub(crate) fn check(&self, c: &Map<String, Value>, now: u64) -> Result<u64, AuthError> {
        self.check_as(c, now, false)
    }

    /// The same rules for a refresh token: `drn` must be `DSR` (a session is not a refresh token).
    pub(crate) fn check_refresh(&self, c: &Map<String, Value>, now: u64) -> Result<u64, AuthError> {
        self.check_as(c, now, true)
    }

    fn check_as(&self, c: &Map<String, Value>, now: u64, refresh: bool) -> Result<u64, AuthError> {
        let exp = self.check_times(c, now)?;
        match c.get("iss").and_then(Value::as_str) {
            Some(iss) if issuer_matches(iss, &self.project_id) => {}
            _ => return Err(AuthError::WrongIssuer),
        }
        let is_refresh = c.get("drn").and_then(Value::as_str) == Some("DSR");
        match (refresh, is_refresh) {
            (false, true) => return Err(AuthError::RefreshToken),
            (true, false) => return Err(AuthError::Malformed("not a refresh token")),
            _ => {}
        }
        self.check_audience(c.get("aud"))?;
        Ok(exp)
    }

    /// `nbf`, `exp` (required), `iat`, with the leeway. Every time claim is read (and refused
    /// when out of range) before any is compared.
    fn check_times(&self, c: &Map<String, Value>, now: u64) -> Result<u64, AuthError> {
        let nbf = c.get("nbf").map(time_claim).transpose()?;
        let exp = c.get("exp").map(time_claim).transpose()?;
        let iat = c.get("iat").map(time_claim).transpose()?;
        let horizon = now.saturating_add(self.leeway);
        if nbf.is_some_and(|nbf| nbf > horizon) {
            return Err(AuthError::NotYetValid);
        }
        let exp = exp.ok_or(AuthError::MissingExp)?;
        if !self.unexpired(exp, now) {
            return Err(AuthError::Expired);
        }
        if iat.is_some_and(|iat| iat > horizon) {
            return Err(AuthError::NotYetValid);
        }
        Ok(exp)
    }

    /// `aud`: one of the configured audiences; with none configured, absent or the project id.
    fn check_audience(&self, aud: Option<&Value>) -> Result<(), AuthError> {
        let present: Vec<&str> = match aud {
            None => vec![],
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(AuthError::WrongAudience),
        };
        let ok = match &self.audience {
            Some(want) => present.iter().any(|a| want.iter().any(|w| w == a)),
            None => aud.is_none() || present.contains(&self.project_id.as_str()),
        };
        if ok {
            Ok(())
        } else {
            Err(AuthError::WrongAudience)
        }
    }
}

/// `iss` is the project id, or an http(s) URL whose last or second-to-last path segment is the
/// project id (node-sdk's rule). The host is not a path segment.
pub(crate) fn issuer_matches(iss: &str, project_id: &str) -> bool {
    if iss == project_id {
        return true;
    }
    let Some(rest) = iss
        .strip_prefix("https://")
        .or_else(|| iss.strip_prefix("http://"))
    else {
        return false;
    };
    let path = match rest.find('/') {
        Some(i) => &rest[i..],
        None => return false,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segs.len();
    (n >= 1 && segs[n - 1] == project_id) || (n >= 2 && segs[n - 2] == project_id)
}

/// The latest time claim accepted: 9999-12-31T23:59:59Z.
const MAX_TIME_CLAIM: u64 = 253_402_300_799;

/// A NumericDate claim as whole seconds: integers 0..=[`MAX_TIME_CLAIM`], or a non-negative float
/// in that range (floored). Negative, larger, or not a number: malformed.
fn time_claim(v: &Value) -> Result<u64, AuthError> {
    const OUT_OF_RANGE: AuthError = AuthError::Malformed("time claim out of range");
    let Value::Number(n) = v else {
        return Err(AuthError::Malformed("time claim is not a number"));
    };
    if let Some(u) = n.as_u64() {
        return if u <= MAX_TIME_CLAIM {
            Ok(u)
        } else {
            Err(OUT_OF_RANGE)
        };
    }
    if n.is_i64() {
        return Err(OUT_OF_RANGE); // a negative integer
    }
    match n.as_f64() {
        // The range check on the float comes first, so the cast below cannot saturate or wrap.
        Some(f) if f.is_finite() && (0.0..=MAX_TIME_CLAIM as f64).contains(&f) => {
            Ok(f.floor() as u64)
        }
        _ => Err(OUT_OF_RANGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn rules(leeway: u64) -> ClaimRules {
        ClaimRules {
            project_id: "P2t".into(),
            audience: None,
            leeway,
        }
    }

    fn claims(times: &[(&str, Value)]) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("iss".into(), "P2t".into());
        c.insert("exp".into(), (NOW + 60).into());
        for (k, v) in times {
            c.insert(k.to_string(), v.clone());
        }
        c
    }

    const OUT_OF_RANGE: AuthError = AuthError::Malformed("time claim out of range");

    #[test]
    fn time_claims_in_and_out_of_range() {
        let v = rules(5);
        let check = |k: &str, val: Value| v.check(&claims(&[(k, val)]), NOW);
        for k in ["exp", "nbf", "iat"] {
            for bad in [
                json!(-1),
                json!(i64::MIN),
                json!(u64::MAX),
                json!(MAX_TIME_CLAIM + 1),
                json!(1e300),
                json!(-0.5),
                json!(f64::MAX),
            ] {
                assert_eq!(check(k, bad.clone()), Err(OUT_OF_RANGE), "{k}: {bad}");
            }
            assert_eq!(
                check(k, json!("soon")),
                Err(AuthError::Malformed("time claim is not a number"))
            );
        }
        // Floats within range are floored.
        assert_eq!(check("exp", json!((NOW + 60) as f64 + 0.9)), Ok(NOW + 60));
        assert_eq!(check("nbf", json!(NOW as f64 + 5.99)), Ok(NOW + 60));
        assert_eq!(
            check("nbf", json!(NOW as f64 + 6.0)),
            Err(AuthError::NotYetValid)
        );
        // The last second of year 9999 is a valid exp; the leeway cannot overflow with it.
        let far = rules(u64::MAX);
        let c = claims(&[
            ("exp", json!(MAX_TIME_CLAIM)),
            ("nbf", json!(MAX_TIME_CLAIM)),
        ]);
        assert_eq!(far.check(&c, MAX_TIME_CLAIM), Ok(MAX_TIME_CLAIM));
        assert_eq!(far.check(&c, u64::MAX), Err(AuthError::Expired));
        // Expiry with the leeway, at the edges.
        let c = claims(&[("exp", json!(NOW - 5))]);
        assert_eq!(v.check(&c, NOW), Err(AuthError::Expired));
        let c = claims(&[("exp", json!(NOW - 4))]);
        assert_eq!(v.check(&c, NOW), Ok(NOW - 4));
        // An out-of-range claim is malformed even when another claim would fail first.
        let c = claims(&[("exp", json!(0)), ("iat", json!(-1))]);
        assert_eq!(v.check(&c, NOW), Err(OUT_OF_RANGE));
    }

    /// Any JSON number: integers of every width, floats of every magnitude.
    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (0..=MAX_TIME_CLAIM + 10).prop_map(Value::from),
            any::<f64>().prop_map(Value::from), // NaN and infinities become null
            (-1e20f64..1e20).prop_map(Value::from),
            (0.0..=(MAX_TIME_CLAIM as f64) * 1.01).prop_map(Value::from),
        ]
    }

    fn in_range(v: &Value) -> bool {
        match v {
            Value::Number(n) => match (n.as_u64(), n.as_f64()) {
                (Some(u), _) => u <= MAX_TIME_CLAIM,
                (None, Some(f)) => !n.is_i64() && (0.0..=MAX_TIME_CLAIM as f64).contains(&f),
                _ => false,
            },
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn check_claims_never_panics(
            exp in proptest::option::of(number()),
            nbf in proptest::option::of(number()),
            iat in proptest::option::of(number()),
            leeway in any::<u64>(),
            now in prop_oneof![Just(NOW), any::<u64>()],
        ) {
            let v = rules(leeway);
            let mut c = claims(&[]);
            c.remove("exp");
            for (k, val) in [("exp", &exp), ("nbf", &nbf), ("iat", &iat)] {
                if let Some(val) = val {
                    c.insert(k.into(), val.clone());
                }
            }
            let r = v.check(&c, now);
            let present: Vec<&Value> = [&exp, &nbf, &iat].into_iter().flatten().collect();
            if present.iter().any(|v| !in_range(v)) {
                prop_assert!(
                    matches!(r, Err(AuthError::Malformed(_))),
                    "{c:?} gave {r:?}"
                );
            } else if let Ok(e) = r {
                prop_assert!(e <= MAX_TIME_CLAIM);
                prop_assert!(exp.is_some());
            }
        }
    }

    #[test]
    fn issuer_rule() {
        let p = "P2abc";
        assert!(issuer_matches("P2abc", p));
        assert!(issuer_matches("https://api.descope.com/P2abc", p));
        assert!(issuer_matches(
            "https://auth.example.com/v1/apps/agentic/P2abc/srv1",
            p
        ));
        assert!(issuer_matches("https://api.descope.com/P2abc/", p));
        assert!(
            !issuer_matches("https://P2abc/x", p),
            "the host is not a segment"
        );
        assert!(!issuer_matches("https://P2abc", p));
        assert!(!issuer_matches("https://x.com/P2abc/a/b", p));
        assert!(!issuer_matches("P2abcd", p));
        assert!(!issuer_matches("https://x.com/P2abcd", p));
    }
}
