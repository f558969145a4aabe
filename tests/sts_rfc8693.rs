//! The strict RFC 8693 token endpoint of the harness (`tests/common/sts.rs`) tested on its own,
//! before the `token_exchange` connector is tested against it (`tests/token_exchange.rs`): it
//! answers the RFC's Appendix A.1 example in the RFC's shape, and refuses what RFC 6749 / 7523 /
//! 8693 refuse (wrong client credentials or assertions, forged or foreign subject tokens, wrong
//! grant, target or scope, repeated parameters) with the standard error bodies.

mod common;

use std::collections::HashMap;

use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// RFC 8693 Appendix A.1

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
}

/// The RFC's request, each time broken in one way the server must refuse.
#[tokio::test(flavor = "multi_thread")]
async fn the_test_server_refuses_the_a1_request_broken_in_any_way() {
    let (head, body) = message("rfc8693/a1-request.http");
    let authorization = head
        .iter()
        .find_map(|l| l.strip_prefix("Authorization: "))
        .unwrap()
        .to_string();
    let sts = rfc_server().await;
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
    assert_eq!(sts.issued_count(), 0);
    assert_eq!(
        post(&sts, &authorization, &body).await.status(),
        200,
        "the unbroken one passes"
    );
}

fn base64_std(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

// ---------------------------------------------------------------------------------------------
// Subject JWTs and client assertions

/// A Descope project, and a server that trusts it, with a `private_key_jwt` client `gw-jwt` (whose
/// private key is returned) and a `client_secret_basic` client `gw-basic` / `secret`.
async fn project_and_server() -> (Project, Sts, EncodingKey) {
    let project = Project::start().await;
    let pem = extoken::mint::generate_pem().unwrap();
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap(),
    )
    .unwrap();
    jwk["kid"] = "c1".into();
    let sts = Sts::start(StsSetup {
        clients: HashMap::from([
            ("gw-basic".into(), ClientCred::Basic("secret".into())),
            ("gw-jwt".into(), ClientCred::PrivateKeyJwt(jwk)),
        ]),
        jwks_url: Some(project.jwks.url()),
        project: CONNECTOR_PROJECT.into(),
        expires_in: 600,
        ..StsSetup::default()
    })
    .await;
    (project, sts, key)
}

/// A form body exchanging the JWT `subject`, with `extra` parameters.
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
    let mut pairs = vec![
        ("grant_type", TOKEN_EXCHANGE_GRANT),
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

/// (status, error code) of a reply.
async fn outcome(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    (status, v["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_server_verifies_subject_jwts_against_the_descope_jwks() {
    let (project, sts, _) = project_and_server().await;
    let basic = format!("Basic {}", base64_std("gw-basic:secret"));
    let good = project.session("U2nina", &[]);
    let resp = post(&sts, &basic, &exchange_form(&good, &[])).await;
    assert_eq!(resp.status(), 200, "the form and the secret are right");
    let claims = |iss: &str, exp: u64| json!({"iss": iss, "sub": "U2nina", "exp": exp});
    let other_key = TestKey::rsa("k1", Algorithm::RS256);
    for (what, bad) in [
        (
            "another key, same kid",
            other_key.sign(&claims(CONNECTOR_PROJECT, now() + 600)),
        ),
        (
            "another project",
            project.key.sign(&claims("P2other", now() + 600)),
        ),
        (
            "expired",
            project.key.sign(&claims(CONNECTOR_PROJECT, now() - 600)),
        ),
        ("not a JWT", "not-a-jwt".to_string()),
    ] {
        let got = outcome(post(&sts, &basic, &exchange_form(&bad, &[])).await).await;
        assert_eq!(got, (400, "invalid_grant".to_string()), "{what}");
    }
    let as_access_token =
        exchange_form(&good, &[]).replace("token-type%3Ajwt", "token-type%3Aaccess_token");
    let got = outcome(post(&sts, &basic, &as_access_token).await).await;
    assert_eq!(
        got,
        (400, "invalid_grant".to_string()),
        "a session is no token the server issued"
    );
    // A step-up policy judges each subject token: the same user without `mfa` in `amr` is
    // refused, with it accepted.
    sts.setup(|s| s.required_amr = Some("mfa".into()));
    for (amr, want) in [
        (json!(["pwd"]), 400),
        (json!([]), 400),
        (json!("mfa"), 400),
        (json!(["pwd", "mfa"]), 200),
    ] {
        let subject = project.session("U2nina", &[("amr", amr.clone())]);
        let got = outcome(post(&sts, &basic, &exchange_form(&subject, &[])).await).await;
        assert_eq!(got.0, want, "amr {amr}: {got:?}");
    }
    let got = outcome(post(&sts, &basic, &exchange_form(&good, &[])).await).await;
    assert_eq!(got, (400, "invalid_grant".to_string()), "amr [\"email\"]");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_server_verifies_client_assertions() {
    let (project, sts, key) = project_and_server().await;
    let subject = project.session("U2nina", &[]);
    let assertion = |aud: &str, jti: &str, exp: u64, key: &EncodingKey| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("c1".into());
        let c = json!({"iss": "gw-jwt", "sub": "gw-jwt", "aud": aud, "jti": jti, "exp": exp});
        jsonwebtoken::encode(&h, &c, key).unwrap()
    };
    let form = |a: &str| {
        exchange_form(
            &subject,
            &[
                ("client_id", "gw-jwt"),
                ("client_assertion_type", JWT_BEARER_ASSERTION),
                ("client_assertion", a),
            ],
        )
    };
    let url = sts.url();
    let ok = assertion(&url, "jti-1", now() + 60, &key);
    assert_eq!(outcome(post(&sts, "", &form(&ok)).await).await.0, 200);
    let stranger =
        EncodingKey::from_rsa_pem(extoken::mint::generate_pem().unwrap().as_bytes()).unwrap();
    for (what, a) in [
        ("replayed jti", ok.clone()),
        (
            "wrong aud",
            assertion("https://elsewhere/token", "jti-2", now() + 60, &key),
        ),
        ("expired", assertion(&url, "jti-3", now() - 120, &key)),
        ("other key", assertion(&url, "jti-4", now() + 60, &stranger)),
    ] {
        let got = outcome(post(&sts, "", &form(&a)).await).await;
        assert_eq!(got, (401, "invalid_client".to_string()), "{what}");
    }
    let wrong_type =
        form(&assertion(&url, "jti-5", now() + 60, &key)).replace("jwt-bearer", "saml2-bearer");
    assert_eq!(
        outcome(post(&sts, "", &wrong_type).await).await,
        (400, "invalid_request".to_string())
    );
    let basic_for_jwt_client = format!("Basic {}", base64_std("gw-jwt:anything"));
    let got = outcome(post(&sts, &basic_for_jwt_client, &exchange_form(&subject, &[])).await).await;
    assert_eq!(
        got,
        (401, "invalid_client".to_string()),
        "only the registered method"
    );
}
