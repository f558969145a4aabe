//! The `token_exchange` connector (RFC 8693) end to end: a strict token exchange server on
//! loopback ([`Sts`], checked first against the RFC's own example), the real gateway, a recording
//! backend. Covers each client authentication, what is sent (the session as subject token,
//! audience, resource, scope), the cache (a refreshed session with the same claims reuses the
//! token, changed roles do not), `invalid_grant` as a 401, server errors, timeouts and oversized
//! replies as 503, chaining through `subject: {external_token: ...}`, and config errors.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const AUDIENCE: &str = "legacy-api";
const RESOURCE: &str = "https://legacy.example.com/api";
const SCOPES: [&str; 2] = ["orders.read", "orders.write"];
const BASIC_SECRET: &str = "b4sic secret&=";
const POST_SECRET: &str = "p0st-secret";

// ---------------------------------------------------------------------------------------------
// The test server against RFC 8693 Appendix A.1

/// The RFC's display form, unwrapped: a line break and the next line's indentation go.
fn unwrap_rfc(text: &str) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        out.push_str(if i == 0 { line } else { line.trim_start() });
    }
    out
}

/// (head lines, body) of a fixture message.
fn message(rel: &str) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    let (head, body) = text.split_once("\n\n").unwrap();
    (head.lines().map(str::to_string).collect(), unwrap_rfc(body))
}

/// A server set up as the RFC's authorization server: client `rs08`, its secret, the resource,
/// and the subject token it issued earlier.
async fn rfc_server() -> Sts {
    let sts = Sts::start(StsSetup {
        clients: HashMap::from([(
            "rs08".to_string(),
            ClientCred::Basic("long-secure-random-secret".into()),
        )]),
        resource: vec!["https://backend.example.com/api".into()],
        expires_in: 60,
        ..StsSetup::default()
    })
    .await;
    sts.add_issued(
        "accVkjcJyb4BWCxGsndESCJQbdFMogUC5PbRDqceLTC",
        "bdc@example.com",
    );
    sts
}

async fn post(sts: &Sts, authorization: &str, body: &str) -> reqwest::Response {
    client()
        .post(sts.url())
        .header("authorization", authorization)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_server_answers_the_rfc_8693_a1_example_in_its_shape() {
    let (head, body) = message("rfc8693/a1-request.http");
    let authorization = head
        .iter()
        .find_map(|l| l.strip_prefix("Authorization: "))
        .unwrap()
        .to_string();
    let form = parse_form(body.as_bytes()).unwrap();
    assert_eq!(form.len(), 4, "{form:?}");
    let sts = rfc_server().await;

    let resp = post(&sts, &authorization, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-store"));
    let got: Value = resp.json().await.unwrap();
    let (rhead, rbody) = message("rfc8693/a1-response.http");
    assert_eq!(rhead[0], "HTTP/1.1 200 OK");
    let want: Value = serde_json::from_str(&rbody).unwrap();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&got), keys(&want), "{got}");
    for k in ["issued_token_type", "token_type", "expires_in"] {
        assert_eq!(got[k], want[k], "{k}");
    }
    assert!(got["access_token"]
        .as_str()
        .unwrap()
        .starts_with("sts-bdc@example.com-"));
    let call = &sts.calls()[0];
    assert_eq!(call.client_auth, "client_secret_basic");
    assert_eq!(call.all("resource"), ["https://backend.example.com/api"]);

    // The same request, each time broken in one way the server must refuse.
    let basic = |s: &str| format!("Basic {}", base64_std(s));
    let refusals = [
        (basic("rs08:wrong"), body.clone(), 401, "invalid_client"),
        (
            basic("rs09:long-secure-random-secret"),
            body.clone(),
            401,
            "invalid_client",
        ),
        (
            authorization.clone(),
            body.replace("token-exchange", "jwt-bearer"),
            400,
            "unsupported_grant_type",
        ),
        (
            authorization.clone(),
            body.replace("accVkjc", "xxxVkjc"),
            400,
            "invalid_grant",
        ),
        (
            authorization.clone(),
            body.replace("backend.example.com%2Fapi", "other.example.com"),
            400,
            "invalid_target",
        ),
        (
            authorization.clone(),
            format!("{body}&scope=api"),
            400,
            "invalid_scope",
        ),
        (
            authorization.clone(),
            body.split("&subject_token_type")
                .next()
                .unwrap()
                .to_string(),
            400,
            "invalid_request",
        ),
        (
            authorization.clone(),
            format!("{body}&grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"),
            400,
            "invalid_request",
        ),
        (
            authorization.clone(),
            format!("{body}&client_secret=long-secure-random-secret&client_id=rs08"),
            400,
            "invalid_request",
        ),
    ];
    for (auth, body, status, error) in refusals {
        let resp = post(&sts, &auth, &body).await;
        assert_eq!(resp.status().as_u16(), status, "{error}: {body}");
        let challenge = resp.headers().get("www-authenticate").is_some();
        assert_eq!(
            challenge,
            status == 401,
            "{error}: WWW-Authenticate on 401 only"
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], error, "{body}");
    }
    assert_eq!(sts.issued_count(), 1);
}

fn base64_std(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

// ---------------------------------------------------------------------------------------------
// The gateway with token_exchange connectors

/// Project + STS + backend + gateway. Routes: `/basic`, `/post`, `/jwt` (one connector per client
/// authentication), `/chain` (exchanges the `/basic` connector's token again), `/claim-chain`
/// (exchanges the session's `externalToken` claim).
struct TeRig {
    project: Project,
    sts: Sts,
    backend: Backend,
    gw: GatewayProcess,
    /// The `gw-jwt` client's private key (PEM).
    client_pem: String,
}

/// A token_exchange connector with the exchange parameters the STS expects.
fn connector(client_auth: Value) -> Value {
    json!({
        "type": "token_exchange",
        "client_auth": client_auth,
        "audience": AUDIENCE,
        "resource": [RESOURCE],
        "scope": SCOPES,
        "timeout": "1s",
    })
}

async fn te_rig() -> TeRig {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let pem = extoken::mint::generate_pem().unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256)
        .unwrap();
    let mut jwk = serde_json::to_value(jwk).unwrap();
    jwk["kid"] = "client-key-1".into();
    let sts = Sts::start(StsSetup {
        clients: HashMap::from([
            ("gw-basic".into(), ClientCred::Basic(BASIC_SECRET.into())),
            ("gw-post".into(), ClientCred::Post(POST_SECRET.into())),
            ("gw-jwt".into(), ClientCred::PrivateKeyJwt(jwk)),
        ]),
        jwks_url: Some(project.jwks.url()),
        project: CONNECTOR_PROJECT.into(),
        audience: vec![AUDIENCE.into()],
        resource: vec![RESOURCE.into()],
        scope: Some(SCOPES.join(" ")),
        refused_users: ["U2mallory".to_string()].into(),
        expires_in: 600,
    })
    .await;
    let with_url = |mut c: Value| {
        c["token_url"] = sts.url().into();
        c
    };
    let basic =
        json!({"client_secret_basic": {"client_id": "gw-basic", "client_secret": BASIC_SECRET}});
    let mut chain = with_url(connector(basic.clone()));
    chain["subject"] = json!({"external_token": "basic"});
    let mut claim_chain = with_url(connector(basic.clone()));
    claim_chain["subject"] = json!({"external_token": "ext"});
    let route = |p: &str, c: &str| RouteSpec::new(p, &backend.url()).name(c).connector(c);
    let config = project
        .config()
        .ext_connector()
        .connector("basic", with_url(connector(basic)))
        .connector(
            "post",
            with_url(connector(json!({"client_secret_post": {"client_id": "gw-post", "client_secret": POST_SECRET}}))),
        )
        .connector(
            "jwt",
            with_url(connector(json!({"private_key_jwt": {"client_id": "gw-jwt", "key_file": "client.pem", "kid": "client-key-1"}}))),
        )
        .connector("chain", chain)
        .connector("claim_chain", claim_chain)
        .set("cache", json!({"negative_ttl": "1s"}))
        .route(route("/basic", "basic"))
        .route(route("/post", "post"))
        .route(route("/jwt", "jwt"))
        .route(route("/chain", "chain"))
        .route(route("/claim-chain", "claim_chain"));
    let files = [("client.pem", pem.as_str())];
    let how = Launch {
        files: &files,
        ..Launch::default()
    };
    let gw = project.gateway(&config, how).await;
    TeRig {
        project,
        sts,
        backend,
        gw,
        client_pem: pem,
    }
}

impl TeRig {
    /// A session for `user` with `extra` claims, issued `age` seconds ago (so two sessions with
    /// the same claims but another age are two different JWTs, as after a refresh).
    fn session(&self, user: &str, age: u64, extra: &[(&str, Value)]) -> String {
        let mut all = vec![("iat", json!(now() - age))];
        all.extend(extra.iter().cloned());
        self.project.session(user, &all)
    }

    /// Nothing secret of the exchange is in the gateway's log.
    fn assert_log_clean(&self, secrets: &[&str]) {
        let log = self.gw.log();
        for s in secrets.iter().chain([&BASIC_SECRET, &POST_SECRET]) {
            assert!(!log.contains(s), "{s} is in the log:\n{log}");
        }
    }
}

/// A form body for the rig's STS: the expected parameters, this subject, and `extra`.
fn exchange_form(subject: &str, extra: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let scope = SCOPES.join(" ");
    let mut pairs = vec![
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("audience", AUDIENCE),
        ("resource", RESOURCE),
        ("scope", scope.as_str()),
        ("subject_token", subject),
        ("subject_token_type", JWT_TOKEN_TYPE),
    ];
    pairs.extend_from_slice(extra);
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The rig's STS refuses forged subjects and bad client assertions: the happy paths above are
/// not vacuous.
#[tokio::test(flavor = "multi_thread")]
async fn the_test_server_verifies_subject_jwts_and_client_assertions() {
    let r = te_rig().await;
    let basic = format!(
        "Basic {}",
        base64_std(&format!(
            "gw-basic:{}",
            BASIC_SECRET
                .replace(' ', "+")
                .replace('&', "%26")
                .replace('=', "%3D")
        ))
    );
    let error = |resp: reqwest::Response| async move {
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        (status, v["error"].as_str().unwrap_or("").to_string())
    };
    let good = r.session("U2nina", 0, &[]);
    let resp = post(&r.sts, &basic, &exchange_form(&good, &[])).await;
    assert_eq!(resp.status(), 200, "the form and the secret are right");
    let other_key = TestKey::rsa("k1", jsonwebtoken::Algorithm::RS256);
    let forged =
        other_key.sign(&json!({"iss": CONNECTOR_PROJECT, "sub": "U2nina", "exp": now() + 600}));
    let other_project = r
        .project
        .key
        .sign(&json!({"iss": "P2other", "sub": "U2nina", "exp": now() + 600}));
    let expired = r
        .project
        .key
        .sign(&json!({"iss": CONNECTOR_PROJECT, "sub": "U2nina", "exp": now() - 600}));
    for bad in [forged, other_project, expired, "not-a-jwt".to_string()] {
        let got = error(post(&r.sts, &basic, &exchange_form(&bad, &[])).await).await;
        assert_eq!(got, (400, "invalid_grant".to_string()), "{bad}");
    }

    // private_key_jwt: a fresh, well-aimed assertion passes once; anything else is invalid_client.
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(r.client_pem.as_bytes()).unwrap();
    let assertion = |aud: &str, jti: &str, exp: u64, key: &jsonwebtoken::EncodingKey| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("client-key-1".into());
        let c = json!({"iss": "gw-jwt", "sub": "gw-jwt", "aud": aud, "jti": jti, "exp": exp});
        jsonwebtoken::encode(&h, &c, key).unwrap()
    };
    let form = |a: &str| {
        exchange_form(
            &good,
            &[
                ("client_id", "gw-jwt"),
                ("client_assertion_type", JWT_BEARER_ASSERTION),
                ("client_assertion", a),
            ],
        )
    };
    let url = r.sts.url();
    let ok = assertion(&url, "jti-1", now() + 60, &key);
    assert_eq!(error(post(&r.sts, "", &form(&ok)).await).await.0, 200);
    let stranger =
        jsonwebtoken::EncodingKey::from_rsa_pem(extoken::mint::generate_pem().unwrap().as_bytes())
            .unwrap();
    for (what, a) in [
        ("replayed jti", ok.clone()),
        (
            "wrong aud",
            assertion("https://elsewhere/token", "jti-2", now() + 60, &key),
        ),
        ("expired", assertion(&url, "jti-3", now() - 120, &key)),
        ("other key", assertion(&url, "jti-4", now() + 60, &stranger)),
    ] {
        let got = error(post(&r.sts, "", &form(&a)).await).await;
        assert_eq!(got, (401, "invalid_client".to_string()), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_client_authentication_exchanges_the_session_and_forwards_the_token() {
    let r = te_rig().await;
    let mut minted = vec![];
    for (path, method) in [
        ("/basic", "client_secret_basic"),
        ("/post", "client_secret_post"),
        ("/jwt", "private_key_jwt"),
    ] {
        let user = format!("U2{}", &path[1..]);
        let session = r.session(&user, 0, &[("roles", json!(["reader"]))]);
        let reply = r.gw.get_bearer(&format!("{path}/orders"), &session).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let calls = r.sts.calls();
        let call = calls.last().unwrap();
        assert_eq!((call.status, call.client_auth), (200, method), "{call:?}");
        assert_eq!(call.all("grant_type"), [TOKEN_EXCHANGE_GRANT]);
        assert_eq!(
            call.all("subject_token"),
            [session.as_str()],
            "the session is the subject"
        );
        assert_eq!(call.all("subject_token_type"), [JWT_TOKEN_TYPE]);
        assert_eq!(call.all("requested_token_type"), [ACCESS_TOKEN_TYPE]);
        assert_eq!(call.all("audience"), [AUDIENCE]);
        assert_eq!(call.all("resource"), [RESOURCE]);
        assert_eq!(call.all("scope"), ["orders.read orders.write"]);
        let token = format!(
            "sts-{user}-{}",
            calls.iter().filter(|c| c.status == 200).count()
        );
        let seen = r.backend.take();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].header("authorization"),
            Some(format!("Bearer {token}").as_str())
        );
        minted.push(token);
        minted.push(session);
    }
    let refs: Vec<&str> = minted.iter().map(String::as_str).collect();
    r.assert_log_clean(&refs);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_cached_on_the_claims_not_the_session_jwt() {
    let r = te_rig().await;
    let claims = [
        ("roles", json!(["reader"])),
        ("dct", json!("T1")),
        ("tenants", json!({"T1": {"roles": ["member"]}})),
    ];
    let first = r.session("U2carol", 30, &claims);
    assert_eq!(r.gw.get_bearer("/basic/a", &first).await.status, 200);
    assert_eq!(r.gw.get_bearer("/basic/b", &first).await.status, 200);
    assert_eq!(
        r.sts.issued_count(),
        1,
        "the second request is served from the cache"
    );

    let refreshed = r.session("U2carol", 0, &claims);
    assert_ne!(first, refreshed);
    assert_eq!(r.gw.get_bearer("/basic/c", &refreshed).await.status, 200);
    assert_eq!(
        r.sts.issued_count(),
        1,
        "a refreshed session with the same claims reuses it"
    );
    let auths = r.backend.authorizations();
    assert_eq!(auths, vec!["Bearer sts-U2carol-1"; 3]);

    let promoted = r.session(
        "U2carol",
        0,
        &[
            ("roles", json!(["reader", "admin"])),
            claims[1].clone(),
            claims[2].clone(),
        ],
    );
    assert_eq!(r.gw.get_bearer("/basic/d", &promoted).await.status, 200);
    assert_eq!(r.sts.issued_count(), 2, "changed roles: a new exchange");
    let tenant_role = r.session(
        "U2carol",
        0,
        &[
            claims[0].clone(),
            claims[1].clone(),
            ("tenants", json!({"T1": {"roles": ["owner"]}})),
        ],
    );
    assert_eq!(r.gw.get_bearer("/basic/e", &tenant_role).await.status, 200);
    assert_eq!(
        r.sts.issued_count(),
        3,
        "changed tenant roles: a new exchange"
    );
    assert_eq!(
        r.sts.calls()[2].all("subject_token"),
        [tenant_role.as_str()],
        "the new exchange sends the current session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_session_is_401_and_nothing_is_forwarded() {
    let r = te_rig().await;
    let session = r.session("U2mallory", 0, &[]);
    let reply = r.gw.get_bearer("/basic", &session).await;
    reply.assert_invalid_token("the identity provider of connector basic refused the session");
    assert_eq!(r.backend.count(), 0);
    let call = &r.sts.calls()[0];
    assert_eq!((call.status, call.error), (400, Some("invalid_grant")));
    assert!(
        !reply.body.contains("refused: invalid_grant"),
        "the provider's description stays out"
    );
    // Another user on the same connector is fine.
    assert_eq!(
        r.gw.get_bearer("/basic", &r.session("U2dave", 0, &[]))
            .await
            .status,
        200
    );
    r.assert_log_clean(&[&session]);
}

/// `user`'s request through `/basic` is a 503 with Retry-After naming the connector; nothing was
/// forwarded.
async fn assert_unavailable(r: &TeRig, user: &str) {
    let reply = r.gw.get_bearer("/basic", &r.session(user, 0, &[])).await;
    assert_eq!(reply.status, 503, "{user}: {}", reply.body);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert!(reply.body.contains("basic"), "{}", reply.body);
    assert_eq!(r.backend.count(), 0, "{user}: forwarded without a token");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_timeouts_and_oversized_replies_are_503() {
    let r = te_rig().await;
    r.sts.set_mode(StsMode::ServerError(500));
    assert_unavailable(&r, "U2erin").await;
    r.sts.set_mode(StsMode::ServerError(503));
    assert_unavailable(&r, "U2frank").await;
    r.sts.set_mode(StsMode::Oversized(300 * 1024));
    assert_unavailable(&r, "U2gina").await;
    r.sts.set_mode(StsMode::Slow(Duration::from_secs(3)));
    let start = std::time::Instant::now();
    assert_unavailable(&r, "U2hank").await;
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "the 1s timeout applies"
    );
    // A client the server does not accept (here: a secret it does not know) is our fault, not
    // the session's: 503 as well.
    r.sts.set_mode(StsMode::Issue);
    r.sts.setup(|s| {
        s.clients
            .insert("gw-basic".into(), ClientCred::Basic("rotated".into()));
    });
    assert_unavailable(&r, "U2ivan").await;
    assert_eq!(r.sts.calls().last().unwrap().error, Some("invalid_client"));
    r.assert_log_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connectors_token_can_be_the_subject() {
    let r = te_rig().await;
    let session = r.session("U2judy", 0, &[]);
    let reply = r.gw.get_bearer("/chain", &session).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let calls = r.sts.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].all("subject_token"), [session.as_str()]);
    assert_eq!(calls[1].all("subject_token"), ["sts-U2judy-1"]);
    assert_eq!(calls[1].all("subject_token_type"), [ACCESS_TOKEN_TYPE]);
    assert_eq!(
        r.backend.take()[0].header("authorization"),
        Some("Bearer sts-U2judy-2")
    );
    // Both tokens are cached: the inner one serves /basic too.
    assert_eq!(r.gw.get_bearer("/chain", &session).await.status, 200);
    assert_eq!(r.gw.get_bearer("/basic", &session).await.status, 200);
    assert_eq!(r.sts.calls().len(), 2);
    assert_eq!(
        r.backend.authorizations(),
        ["Bearer sts-U2judy-2", "Bearer sts-U2judy-1"]
    );

    // The session's externalToken claim (from a Descope flow) as the subject.
    r.sts.add_issued("idp-token-from-flow", "U2kim");
    let s = r.session(
        "U2kim",
        0,
        &[("externalToken", json!("idp-token-from-flow"))],
    );
    let reply = r.gw.get_bearer("/claim-chain", &s).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        r.sts.calls()[2].all("subject_token"),
        ["idp-token-from-flow"]
    );
    // Without the claim the inner connector's 401 is the answer; the server is not called.
    let reply =
        r.gw.get_bearer("/claim-chain", &r.session("U2leo", 0, &[]))
            .await;
    reply.assert_invalid_token(NO_EXTERNAL_TOKEN);
    assert_eq!(r.sts.calls().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Config errors, as `extoken check` prints them

fn check(connectors: Value) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ConfigBuilder::new("P2check", "http://127.0.0.1:9/keys");
    for (name, c) in connectors.as_object().unwrap() {
        cfg = cfg.connector(name, c.clone());
    }
    let first = connectors
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let cfg = cfg
        .set("listen", "127.0.0.1:18080")
        .route(RouteSpec::new("/", "http://127.0.0.1:18082").connector(&first));
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, cfg.to_yaml()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code(), text)
}

fn te(extra: Value) -> Value {
    let mut c =
        connector(json!({"client_secret_basic": {"client_id": "gw", "client_secret": "s"}}));
    c["token_url"] = "https://idp.example.com/token".into();
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn config_errors_name_their_key() {
    let (code, text) = check(json!({"a": te(json!({}))}));
    assert_eq!(code, Some(0), "{text}");
    for (connectors, want) in [
        (
            json!({"a": te(json!({"subject": {"external_token": "a"}}))}),
            "connectors.a.subject.external_token: a connector cannot exchange its own token",
        ),
        (
            json!({"a": te(json!({"subject": {"external_token": "nope"}}))}),
            "connectors.a.subject.external_token: no connector named \"nope\"",
        ),
        (
            json!({"a": te(json!({"subject": {"external_token": "b"}})), "b": te(json!({"subject": {"external_token": "a"}}))}),
            "connectors.a.subject.external_token: subjects form a cycle: a -> b -> a",
        ),
        (
            json!({"a": te(json!({"scope": ["a b"]}))}),
            "connectors.a.scope[0]",
        ),
        (
            json!({"a": te(json!({"client_auth": {"private_key_jwt": {"client_id": "gw", "key_file": "missing.pem"}}}))}),
            "connectors.a.client_auth.private_key_jwt.key_file",
        ),
        (
            json!({"a": te(json!({"client_auth": {"client_secret_jwt": {"client_id": "gw"}}}))}),
            "connectors.a: unknown variant `client_secret_jwt`",
        ),
    ] {
        let (code, text) = check(connectors.clone());
        assert_ne!(code, Some(0), "{connectors}");
        assert!(
            text.contains(want),
            "{connectors}: want {want:?} in\n{text}"
        );
    }
}
