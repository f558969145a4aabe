//! The refresh endpoint of the refresher's tests: a real hyper server on 127.0.0.1 that insists
//! on the Descope SDK's request, signs with the test key, and answers per [`Mode`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use crate::clock::{Clock, ManualClock};

pub(super) const PROJECT: &str = "P2refresh";

/// How the endpoint answers a request that follows the contract.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Mode {
    /// 200 with a session of 10 minutes (after `delay`), a rotated refresh token when asked.
    Ok {
        delay_ms: u64,
        rotate: bool,
    },
    /// 200 with a session that expires `secs` from now.
    ShortSession {
        secs: u64,
    },
    Status(u16),
    /// Never answers.
    Hang,
    /// 200 with a session signed by a key the project does not publish.
    Forged,
    /// 200 with a session, the rotated refresh token only in a `Set-Cookie: DSR=` (the SDK reads
    /// it there too).
    RotateByCookie,
}

pub(super) struct Endpoint {
    pub(super) url: String,
    pub(super) calls: Arc<AtomicUsize>,
    pub(super) mode: Arc<Mutex<Mode>>,
}

pub(super) fn ec_key(kid: &str) -> (EncodingKey, Value) {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    (key, serde_json::to_value(&jwk).unwrap())
}

pub(super) fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "ES256", "kid": kid})),
        b64(claims)
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, Algorithm::ES256).unwrap();
    format!("{input}.{sig}")
}

pub(super) fn claims(drn: &str, exp: u64, sub: &str) -> Value {
    json!({"iss": PROJECT, "sub": sub, "drn": drn, "exp": exp, "iat": 1_700_000_000u64})
}

/// The refresh endpoint: a request that is not exactly the SDK's gets a 400 (so a test expecting a
/// session fails), a proper one is answered per the mode.
pub(super) async fn serve(mode: Mode, key: EncodingKey, clock: Arc<ManualClock>) -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let mode = Arc::new(Mutex::new(mode));
    let (c, m) = (calls.clone(), mode.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (c, m, key, clock) = (c.clone(), m.clone(), key.clone(), clock.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (c, m, key, clock) = (c.clone(), m.clone(), key.clone(), clock.clone());
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        let mode = *m.lock().unwrap();
                        Ok::<_, std::convert::Infallible>(answer(req, mode, &key, &*clock).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Endpoint { url, calls, mode }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    mode: Mode,
    key: &EncodingKey,
    clock: &dyn Clock,
) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, body: Value| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let dsr = header("authorization")
        .and_then(|a| a.strip_prefix(&format!("Bearer {PROJECT}:")))
        .unwrap_or("");
    let ok = parts.method == "POST"
        && parts.uri.path() == "/v1/auth/refresh"
        && header("x-descope-project-id") == Some(PROJECT)
        && header("content-type") == Some("application/json")
        && serde_json::from_slice::<Value>(&body).ok() == Some(json!({}))
        && dsr.split('.').count() == 3;
    if !ok {
        return reply(
            400,
            json!({"errorCode": "E011001", "errorDescription": "bad request"}),
        );
    }
    let now = clock.unix();
    let session = |exp: u64, k: &EncodingKey| sign(k, "k1", &claims("DS", exp, "U2new"));
    match mode {
        Mode::Ok { delay_ms, rotate } => {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let mut b = json!({"sessionJwt": session(now + 600, key), "cookieMaxAge": 2_419_200});
            if rotate {
                b["refreshJwt"] = sign(key, "k1", &claims("DSR", now + 86_400, "U2new")).into();
            }
            reply(200, b)
        }
        Mode::ShortSession { secs } => reply(200, json!({"sessionJwt": session(now + secs, key)})),
        Mode::Status(s) => reply(s, json!({"errorCode": "E061005", "errorDescription": "x"})),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            reply(500, json!({}))
        }
        Mode::RotateByCookie => {
            let mut r = reply(200, json!({"sessionJwt": session(now + 600, key)}));
            let dsr = sign(key, "k1", &claims("DSR", now + 3_600, "U2new"));
            let cookie = format!("DSR={dsr}; Path=/; HttpOnly; Secure; SameSite=Strict");
            r.headers_mut()
                .insert("set-cookie", cookie.parse().unwrap());
            r
        }
        Mode::Forged => reply(
            200,
            json!({"sessionJwt": session(now + 600, &ec_key("k1").0)}),
        ),
    }
}
