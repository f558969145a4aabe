//! Micro-benchmarks of the accepted-request path, through the public library API only.
//!
//! One group per step of a request, in request order:
//! `extract` (find the session token) → `verify` (cache hit; miss = signature + claims) →
//! `route` (`RouteTable::find`) → `rewrite` (`rewrite::apply`: header set + cookie strip) →
//! `authorize` (`Gateway::authorize`, the whole auth pipeline for a cached session), plus
//! `per_request` for fixed per-request work the proxy does around it (request id, head size).
//!
//! Setup: a dev RSA key from `extoken::mint::DevKey` (and an ES256 key made here) in a temp dir,
//! one JWKS file with both public keys, a `Config` from `Config::parse` that reads it through
//! `jwks_file`, and a `KeyStore` loaded from that file. Nothing listens and nothing leaves the
//! process. No timing is asserted anywhere: these are measurements, not tests.
//!
//! `cargo bench --bench hot_path` runs everything; `cargo bench --bench hot_path -- verify` one
//! group. `HOT_PATH_POOL` sets how many distinct tokens are minted for the miss benchmark
//! (default 512; each miss iteration uses a token the verifier has not seen).
//!
//! Async functions are driven by [`poll_now`]: one poll with a no-op waker, falling back to the
//! runtime's `block_on` when the future is not ready at once. A cache hit and `authorize` for a
//! cached session complete on the first poll (they never yield), so their figures carry no
//! executor overhead; a miss yields (the signature check runs on the blocking pool) and its
//! figure includes that hand-off, as in the gateway.

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use tokio::runtime::Runtime;

use extoken::config::Config;
use extoken::exchange::RequestInfo;
use extoken::extract;
use extoken::gateway::Gateway;
use extoken::mint::{DevKey, MintOptions};
use extoken::rewrite::{self, Rewrite};
use extoken::route::Route;
use extoken::verify::{KeyStore, SessionMemo, Verifier};

const PROJECT: &str = "P2BenchHotPath000000000000";
const ES_KID: &str = "bench-es256";
/// A realistic browser request besides the credentials.
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";

/// Everything the benchmarks share, built once.
struct Fixture {
    rt: Runtime,
    _dir: tempfile::TempDir,
    config: Config,
    gateway: Gateway,
    /// RS256 session tokens, distinct subjects (`U2bench000001`, ...), externalToken `legacy-{sub}`.
    rs_tokens: Vec<String>,
    /// ES256 tokens, same claims.
    es_tokens: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        extoken::gateway::install_crypto_provider();
        let pool: usize = std::env::var("HOT_PATH_POOL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if test_mode() { 8 } else { 512 })
            .max(2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = tempfile::tempdir().expect("temp dir");

        // RS256: the dev key `extoken mint` uses. ES256: a P-256 key made here.
        let rsa = DevKey::load_or_create(&dir.path().join("dev-key.pem")).expect("dev key");
        let (es_encoding, es_jwk) = es256_key();
        let mut jwks: serde_json::Value = serde_json::from_str(&rsa.jwks).expect("dev JWKS");
        jwks["keys"]
            .as_array_mut()
            .expect("keys array")
            .push(es_jwk);
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, jwks.to_string()).expect("write JWKS");

        let opts = MintOptions {
            project_id: PROJECT.into(),
            issuer: Some(format!("https://api.descope.com/{PROJECT}")),
            sub: "U2bench".into(),
            ttl_secs: 24 * 3600,
            claims: vec![],
            external_token: Some("legacy-{sub}".into()),
            refresh: false,
        };
        let rs_tokens = opts.mint(&rsa, pool).expect("mint RS256");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(ES_KID.into());
        let es_tokens = (0..pool)
            .map(|i| {
                let claims = opts.claims_for(&format!("U2benchES{:06}", i + 1), now);
                jsonwebtoken::encode(&header, &claims, &es_encoding).expect("sign ES256")
            })
            .collect();

        let config = bench_config(&jwks_file);
        let keys = Arc::new(KeyStore::new(
            &config.descope,
            Gateway::http_client().expect("http client"),
            extoken::clock::system(),
        ));
        let n = rt.block_on(keys.load()).expect("load the JWKS file");
        assert_eq!(n, 2, "both bench keys usable");
        let gateway = Gateway::build(config.clone(), keys).expect("gateway");
        Fixture {
            rt,
            _dir: dir,
            config,
            gateway,
            rs_tokens,
            es_tokens,
        }
    }

    /// A verifier with an empty session cache on the fixture's (shared, already loaded) keys.
    fn fresh_verifier(&self) -> Verifier {
        Verifier::new(
            &self.config.descope,
            self.gateway.verifier.keys.clone(),
            self.config.limits.max_token_bytes,
            self.config.cache.verified_sessions,
            extoken::clock::system(),
        )
    }

    fn api_route(&self) -> Arc<Route> {
        self.gateway
            .routes
            .find(Some("api.example.com"), "/v1/orders/42")
            .expect("the catch-all route")
            .clone()
    }
}

/// Criterion's test mode (`cargo test --benches`, or `--test`): every benchmark runs once, so a
/// small token pool is enough. `cargo bench` passes `--bench`.
fn test_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench")
}

/// A fresh P-256 key: its jsonwebtoken signing key and its public JWK (kid, alg, use set).
fn es256_key() -> (jsonwebtoken::EncodingKey, serde_json::Value) {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .expect("P-256 key");
    let encoding = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::ES256)
            .expect("P-256 JWK");
    jwk.common.key_id = Some(ES_KID.into());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    (encoding, serde_json::to_value(&jwk).expect("JWK as JSON"))
}

/// Three routes, so `find` scans past the more specific ones to reach the catch-all, as most
/// requests of a real deployment do.
fn bench_config(jwks_file: &Path) -> Config {
    let text = format!(
        "listen: 127.0.0.1:18090\n\
         admin_listen: 'off'\n\
         descope:\n  project_id: {PROJECT}\n  jwks_file: '{}'\n\
         connectors:\n  ext: {{type: claim, claim: externalToken}}\n\
         routes:\n\
         \x20 - {{name: health, path_prefix: /healthz, upstream: 'http://127.0.0.1:18080', auth: none}}\n\
         \x20 - {{name: admin, path_prefix: /admin, host: admin.example.com, upstream: 'http://127.0.0.1:18080', connector: ext}}\n\
         \x20 - {{name: api, path_prefix: /, upstream: 'http://127.0.0.1:18080', connector: ext}}\n",
        jwks_file.display()
    );
    Config::parse(&text, &|_| None).expect("bench config")
}

/// Runs a future to completion: one poll with a no-op waker (no executor cost when it is ready at
/// once), else `block_on` on the fixture's runtime.
fn poll_now<F: Future>(rt: &Runtime, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let first = {
        let _ctx = rt.enter();
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    };
    match first {
        Poll::Ready(v) => v,
        Poll::Pending => rt.block_on(fut),
    }
}

/// The request heads of the benchmarks: a browser-like request with the session as Bearer, and the
/// same with the session in the `DS` cookie among others (and a `DSR` to strip).
fn bearer_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static(UA));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
    );
    h
}

fn cookie_headers(token: &str) -> HeaderMap {
    let mut h = bearer_headers(token);
    h.remove(AUTHORIZATION);
    h.append(
        COOKIE,
        HeaderValue::from_str(&format!(
            "theme=dark; _ga=GA1.2.123456789.1700000000; DS={token}; DSR=refresh-token-value; lang=en"
        ))
        .expect("cookie value"),
    );
    h
}

fn pingora_request(h: &HeaderMap) -> pingora::http::RequestHeader {
    let mut req = pingora::http::RequestHeader::build("GET", b"/v1/orders/42", Some(h.len()))
        .expect("request head");
    for (k, v) in h {
        req.append_header(k.clone(), v.clone()).expect("header");
    }
    req
}

fn info(route: &Route) -> RequestInfo<'_> {
    RequestInfo {
        session_token: "",
        route: &route.name,
        method: "GET",
        path: "/v1/orders/42",
        query: b"",
    }
}

fn authorize(fx: &Fixture, route: &Route, headers: &HeaderMap) -> Rewrite {
    poll_now(
        &fx.rt,
        fx.gateway
            .authorize(route, headers, info(route), &mut SessionMemo::default()),
    )
    .map_err(|a| a.status)
    .expect("accepted")
}

fn bench_extract(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Elements(1));
    let cookie_name = fx.config.descope.session_cookie.as_str();
    let bearer = bearer_headers(&fx.rs_tokens[0]);
    let cookie = cookie_headers(&fx.rs_tokens[0]);
    g.bench_function("session_token/bearer", |b| {
        b.iter(|| extract::session_token(black_box(&bearer), cookie_name).map(|f| f.token.len()))
    });
    g.bench_function("session_token/cookie", |b| {
        b.iter(|| extract::session_token(black_box(&cookie), cookie_name).map(|f| f.token.len()))
    });
    g.finish();
}

fn bench_verify(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));

    // Hit: tokens verified once, then served from the session cache (expiry + key re-checked).
    let verifier = fx.fresh_verifier();
    for t in fx.rs_tokens.iter().chain(&fx.es_tokens) {
        poll_now(&fx.rt, verifier.verify(t)).expect("valid token");
    }
    let one = fx.rs_tokens[0].as_str();
    g.bench_function("hit/rs256/same_token", |b| {
        b.iter(|| poll_now(&fx.rt, verifier.verify(black_box(one))).map(|s| s.exp))
    });
    // The connection's memo: the same token again on one connection (no SHA-256, no lookup),
    // and the memo's cost when every request brings another token (compare, copy, then the cache).
    let mut memo = SessionMemo::default();
    g.bench_function("remembered/rs256/same_token", |b| {
        b.iter(|| {
            poll_now(
                &fx.rt,
                verifier.verify_remembered(black_box(one), &mut memo),
            )
            .map(|s| s.exp)
        })
    });
    let mut k = 0;
    g.bench_function(
        format!("remembered/rs256/rotating_{}", fx.rs_tokens.len()),
        |b| {
            b.iter(|| {
                k = (k + 1) % fx.rs_tokens.len();
                let t = black_box(&fx.rs_tokens[k]);
                poll_now(&fx.rt, verifier.verify_remembered(t, &mut memo)).map(|s| s.exp)
            })
        },
    );
    let mut i = 0;
    g.bench_function(format!("hit/rs256/rotating_{}", fx.rs_tokens.len()), |b| {
        b.iter(|| {
            i = (i + 1) % fx.rs_tokens.len();
            poll_now(&fx.rt, verifier.verify(black_box(&fx.rs_tokens[i]))).map(|s| s.exp)
        })
    });

    // Miss: every timed call is a token the verifier has not seen (signature, claims, cache
    // insert). A fresh verifier replaces the warm one, outside the timed part, when the pool
    // of distinct tokens runs out.
    for (name, tokens) in [("rs256", &fx.rs_tokens), ("es256", &fx.es_tokens)] {
        g.bench_function(format!("miss/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut v = fx.fresh_verifier();
                for n in 0..iters as usize {
                    let k = n % tokens.len();
                    if k == 0 && n > 0 {
                        v = fx.fresh_verifier();
                    }
                    let t0 = Instant::now();
                    let r = poll_now(&fx.rt, v.verify(black_box(&tokens[k])));
                    total += t0.elapsed();
                    assert!(r.is_ok(), "miss bench token refused: {:?}", r.err());
                }
                total
            })
        });
    }

    // The signature alone (what a miss costs besides parsing, claims and the cache), to tell the
    // crypto from extoken's own work.
    let keys = fx.gateway.verifier.keys.current();
    for (name, token, alg) in [
        ("rs256", &fx.rs_tokens[0], jsonwebtoken::Algorithm::RS256),
        ("es256", &fx.es_tokens[0], jsonwebtoken::Algorithm::ES256),
    ] {
        let kid = jsonwebtoken::decode_header(token.as_str())
            .expect("header")
            .kid
            .expect("kid");
        let key = keys.get(&kid).expect("bench key").clone();
        let (input, sig) = token.rsplit_once('.').expect("JWT");
        g.bench_function(format!("signature_only/{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(black_box(sig), input.as_bytes(), &key.decoding, alg)
                    .expect("verify")
            })
        });
    }
    g.finish();
}

fn bench_route(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    let routes = &fx.gateway.routes;
    g.bench_function("find/catch_all_with_port", |b| {
        b.iter(|| {
            routes
                .find(
                    black_box(Some("api.example.com")),
                    black_box("/v1/orders/42"),
                )
                .map(|r| r.name.len())
        })
    });
    g.bench_function("find/host_route", |b| {
        b.iter(|| {
            routes
                .find(
                    black_box(Some("admin.example.com")),
                    black_box("/admin/users"),
                )
                .map(|r| r.name.len())
        })
    });
    g.finish();
}

static BENCH_REQUEST_ID: HeaderValue = HeaderValue::from_static("0123456789abcdef0123456789abcdef");

/// What the proxy plans for an accepted request from an untrusted peer.
fn plan<'a>(
    rw: &'a rewrite::Rewrite,
    strip: &'a [String],
    host: &'a HeaderValue,
) -> rewrite::Plan<'a> {
    rewrite::Plan {
        host,
        token: Some(rw),
        drop_authorization: true,
        strip_cookies: strip,
        strip_headers: &[],
        drop_underscore_headers: true,
        peer: rewrite::Peer {
            addr: Some(std::net::IpAddr::from([203, 0, 113, 7])),
            trusted: false,
            tls: false,
            port: Some(8443),
        },
        request_id: Some(&BENCH_REQUEST_ID),
        traceparent: None,
    }
}

fn bench_target(c: &mut Criterion) {
    let mut g = c.benchmark_group("target");
    g.throughput(Throughput::Elements(1));
    let slashes = extoken::target::EscapedSlashes::Reject;
    for (name, raw) in [
        ("canonical", &b"/v1/orders/42?expand=items"[..]),
        (
            "dot_segments",
            &b"/v1/./orders/../orders/%34%32?expand=items"[..],
        ),
    ] {
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| {
                extoken::target::parse(black_box(raw), slashes).map(|p| p.target.as_bytes().len())
            })
        });
    }
    g.bench_function("canonical_host", |b| {
        b.iter(|| {
            extoken::target::canonical_host(black_box(b"API.example.com:8443"))
                .map(|h| h.as_str().len())
        })
    });
    g.finish();
}

fn bench_rewrite(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("rewrite");
    g.throughput(Throughput::Elements(1));
    let route = fx.api_route();
    let strip = route.strip_cookies.clone();
    let token = &fx.rs_tokens[0];

    // Bearer session, a Cookie header without Descope cookies (the strip scans and keeps it).
    let mut bearer = bearer_headers(token);
    bearer.append(COOKIE, HeaderValue::from_static("theme=dark; lang=en"));
    let rw_bearer = authorize(fx, &route, &bearer);
    // Session in the DS cookie with DSR beside it: both removed, the others kept.
    let cookie = cookie_headers(token);
    let rw_cookie = authorize(fx, &route, &cookie);

    // What the benchmarks time is the real rewrite: check its result once.
    let host = HeaderValue::from_static("api.example.com");
    let mut check = pingora_request(&cookie);
    rewrite::apply(&mut check, &plan(&rw_cookie, &strip, &host));
    assert_eq!(
        check.headers.get(AUTHORIZATION).expect("Authorization set"),
        "Bearer legacy-U2bench000001"
    );
    let left: Vec<_> = check.headers.get_all(COOKIE).iter().collect();
    assert_eq!(
        left,
        ["theme=dark; _ga=GA1.2.123456789.1700000000; lang=en"]
    );

    for (name, headers, rw) in [
        ("bearer", &bearer, &rw_bearer),
        ("cookie_strip", &cookie, &rw_cookie),
    ] {
        g.bench_function(format!("apply/http_headermap/{name}"), |b| {
            b.iter_batched(
                || headers.clone(),
                |mut h| {
                    rewrite::apply(&mut h, &plan(rw, &strip, &host));
                    h
                },
                BatchSize::SmallInput,
            )
        });
        // What the proxy does: the same on pingora's RequestHeader (keeps header-name case).
        let req = pingora_request(headers);
        g.bench_function(format!("apply/pingora_request/{name}"), |b| {
            b.iter_batched(
                || req.clone(),
                |mut r| {
                    rewrite::apply(&mut r, &plan(rw, &strip, &host));
                    r
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_authorize(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("authorize");
    g.throughput(Throughput::Elements(1));
    let route = fx.api_route();
    // Warm the gateway's own session cache.
    let bearer: Vec<HeaderMap> = fx.rs_tokens.iter().map(|t| bearer_headers(t)).collect();
    for h in &bearer {
        authorize(fx, &route, h);
    }
    let cookie = cookie_headers(&fx.rs_tokens[0]);
    authorize(fx, &route, &cookie);

    let run = |h: &HeaderMap| {
        poll_now(
            &fx.rt,
            fx.gateway
                .authorize(&route, h, info(&route), &mut SessionMemo::default()),
        )
        .map(|rw| rw.value.len())
    };
    g.bench_function("cached_session/bearer", |b| {
        b.iter(|| run(black_box(&bearer[0])))
    });
    g.bench_function("cached_session/cookie", |b| {
        b.iter(|| run(black_box(&cookie)))
    });
    let mut i = 0;
    g.bench_function(
        format!("cached_session/bearer_rotating_{}", bearer.len()),
        |b| {
            b.iter(|| {
                i = (i + 1) % bearer.len();
                run(black_box(&bearer[i]))
            })
        },
    );
    // The whole accepted-request path that extoken adds, minus pingora: route lookup, authorize,
    // rewrite of the upstream request head.
    let req = pingora_request(&bearer[0]);
    let host = HeaderValue::from_static("api.example.com");
    g.bench_function("find+authorize+apply/bearer", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                let route = fx
                    .gateway
                    .routes
                    .find(Some("api.example.com"), r.uri.path())
                    .expect("route");
                let rw = poll_now(
                    &fx.rt,
                    fx.gateway.authorize(
                        route,
                        &r.headers,
                        info(route),
                        &mut SessionMemo::default(),
                    ),
                )
                .map_err(|a| a.status)
                .expect("accepted");
                rewrite::apply(&mut r, &plan(&rw, &route.strip_cookies, &host));
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Work the proxy does on every request around the auth path (see `proxy.rs`/`telemetry.rs`).
fn bench_per_request(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("per_request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("telemetry::new_request_id", |b| {
        b.iter(extoken::telemetry::new_request_id)
    });
    let req = pingora_request(&bearer_headers(&fx.rs_tokens[0]));
    g.bench_function("proxy::request_head_bytes", |b| {
        b.iter(|| extoken::proxy::request_head_bytes(black_box(&req)))
    });
    g.finish();
}

fn hot_path(c: &mut Criterion) {
    let fx = Fixture::new();
    bench_extract(c, &fx);
    bench_verify(c, &fx);
    bench_route(c, &fx);
    bench_target(c);
    bench_rewrite(c, &fx);
    bench_authorize(c, &fx);
    bench_per_request(c, &fx);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_path
}
criterion_main!(benches);
