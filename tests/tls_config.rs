//! TLS settings end to end: `extoken check` naming the key of a bad TLS file, and
//! `routes[].upstream_tls` to an HTTPS backend with a private CA and mTLS, with certificates made
//! at test time.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const PROJECT: &str = "P2tlsConfigProject00000000";

/// `extoken check` reads every TLS file and names the key of a bad one.
#[test]
fn check_names_the_key_of_a_bad_tls_file() {
    let ca = TestCa::new("test ca");
    let (a, b) = (ca.server(&["a.test"]), ca.server(&["b.test"]));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("a.pem", &a.cert_pem);
    write("a.key", &a.key_pem);
    write("b.key", &b.key_pem);
    write("garbage.pem", "not a certificate");
    let check = |certs: Value| {
        let tls = json!({"listen": "127.0.0.1:8443", "certificates": certs});
        let cfg = ConfigBuilder::new(PROJECT, "http://127.0.0.1:1/keys")
            .route(RouteSpec::new("/", "http://127.0.0.1:1").auth_none())
            .set("tls", tls)
            .to_yaml();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, cfg).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(json!([{"cert_file": "a.pem", "key_file": "a.key"}]));
    assert!(ok, "{err}");
    for (certs, want) in [
        (
            json!([{"cert_file": "a.pem", "key_file": "b.key"}]),
            "tls.certificates[0].key_file: ",
        ),
        (
            json!([{"cert_file": "a.pem", "key_file": "a.key"}, {"cert_file": "missing.pem", "key_file": "a.key"}]),
            "tls.certificates[1].cert_file: ",
        ),
        (
            json!([{"cert_file": "garbage.pem", "key_file": "a.key"}]),
            "tls.certificates[0].cert_file: ",
        ),
        (
            json!([{"cert_file": "a.pem", "key_file": "a.pem"}]),
            "tls.certificates[0].key_file: ",
        ),
    ] {
        let (ok, err) = check(certs.clone());
        assert!(!ok && err.contains(want), "{certs}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !err.contains("PRIVATE KEY"),
            "no key material in a message: {err}"
        );
    }
}

#[tokio::test]
async fn upstream_tls_with_a_private_ca_and_a_client_certificate() {
    let (internal, gateways) = (TestCa::new("internal ca"), TestCa::new("gateway ca"));
    let orders = internal.server(&["orders.internal"]);
    let me = gateways.client("extoken-gateway");
    let backend = TlsBackend::start(&orders, Some(&gateways)).await;
    let upstream = format!("https://{}", backend.addr);
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let full = json!({"ca_file": "internal-ca.pem", "server_name": "orders.internal",
                      "client_cert_file": "gw.pem", "client_key_file": "gw.key"});
    let route = |prefix: &str, tls: Value| {
        RouteSpec::new(prefix, &upstream)
            .auth_none()
            .set("retries", 0)
            .set("upstream_tls", tls)
    };
    let mut no_cert = full.clone();
    no_cert.as_object_mut().unwrap().remove("client_cert_file");
    no_cert.as_object_mut().unwrap().remove("client_key_file");
    let mut wrong_name = full.clone();
    wrong_name["server_name"] = json!("billing.internal");
    let mut system_roots = full.clone();
    system_roots.as_object_mut().unwrap().remove("ca_file");
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .route(route("/mtls", full))
        .route(route("/no-client-cert", no_cert))
        .route(route("/wrong-name", wrong_name))
        .route(route("/system-roots", system_roots));
    let ca_pem = internal.pem();
    let files = [
        ("internal-ca.pem", ca_pem.as_str()),
        ("gw.pem", me.cert_pem.as_str()),
        ("gw.key", me.key_pem.as_str()),
    ];
    let gw = GatewayProcess::start_with_files(&config.to_yaml(), &files).await;

    let ok = gw.get("/mtls/x").await;
    assert_eq!(
        (ok.status, ok.body.as_str()),
        (200, "tls backend ok"),
        "{ok:?}"
    );
    let seen = backend.client_subjects.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| s.contains("CN=extoken-gateway")) && !seen.is_empty(),
        "{seen:?}"
    );
    // Each missing piece fails the connection: verification is never skipped.
    for path in ["/no-client-cert/x", "/wrong-name/x", "/system-roots/x"] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 502, "{path}: {r:?}");
    }
    assert_eq!(gw.get("/mtls/again").await.status, 200);
}
