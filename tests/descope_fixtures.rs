//! Every row of `tests/fixtures/descope/README.md` (tokens and keys from Descope's own SDK test
//! suites) through the real gateway, each with its own project id and key set.
//!
//! The accepted fixtures carry no `externalToken` claim, so on the usual route (`claim`
//! connector on `externalToken`) they must get the 401 that names `externalToken` — a description
//! that only comes after the signature and every claim check passed. To prove the acceptance
//! outright, each gateway also has a `/sub` route whose connector reads the `sub` claim: there the
//! accepted fixtures reach the backend as `Authorization: Bearer <sub>`.

mod common;

use common::*;

/// What the README's table says a gateway must do with a token.
enum Expect {
    /// Accept; the token's `sub`.
    Accept(&'static str),
    /// Refuse with this `error_description`.
    Reject(&'static str),
}
use Expect::*;

const EXPIRED: &str = "token has expired";
const REFRESH: &str = "a refresh token is not a session token";
const NOT_YET: &str = "token is not yet valid";
const BAD_SIG: &str = "token signature is invalid";

/// One project: its id, its key set (a file under `tests/fixtures/descope/jwks/`), how the
/// gateway gets it, and the tokens to try.
struct Group {
    project: &'static str,
    jwks: &'static str,
    from_file: bool,
    rows: &'static [(&'static str, Expect)],
}

const GROUPS: &[Group] = &[
    Group {
        project: "P2CuC9yv2UGtGI1o84gCZEb9qEQW",
        jwks: "py_testutils_public_key_P2CuC9.jwks.json",
        from_file: false,
        rows: &[
            (
                "py_testutils_VALID_SESSION_TOKEN.jwt",
                Accept("U2CuCPuJgPWHGB5P4GmfbuPGhGVm"),
            ),
            ("py_testutils_VALID_REFRESH_TOKEN.jwt", Reject(REFRESH)),
            ("py_testutils_EXPIRED_SESSION_TOKEN.jwt", Reject(EXPIRED)),
        ],
    },
    Group {
        project: "P2CtzUhdqpIF2ys9gg7ms06UvtC4",
        jwks: "py_test_auth_public_key_P2Ctz.jwks.json",
        from_file: false,
        rows: &[(
            "py_test_auth_valid_jwt_token_DSR_P2Ctz.jwt",
            Reject(REFRESH),
        )],
    },
    Group {
        project: "2Bt5WLccLUey1Dp7utptZb3Fx9K",
        jwks: "py_test_descope_client_public_key_2Bt5.jwks.json",
        from_file: false,
        rows: &[(
            "py_test_descope_client_expired_DS_2Bt5.jwt",
            Reject(EXPIRED),
        )],
    },
    Group {
        project: "test",
        jwks: "go_auth_test_publicKey_testkey.jwks.json",
        from_file: false,
        rows: &[
            ("go_auth_test_jwtTokenValid_DS.jwt", Accept("someuser")),
            ("go_auth_test_jwtRTokenValid_DSR.jwt", Reject(REFRESH)),
            // Same kid `testkey`, different key (the README's warning): must not verify here.
            ("go_auth_test_jwtTokenWithTenants_DS.jwt", Reject(BAD_SIG)),
        ],
    },
    Group {
        project: "test",
        jwks: "go_auth_test_publicKeyWithTenants_testkey.jwks.json",
        from_file: false,
        rows: &[
            (
                "go_auth_test_jwtTokenWithTenants_DS.jwt",
                Accept("someuser"),
            ),
            ("go_auth_test_jwtTokenValid_DS.jwt", Reject(BAD_SIG)),
        ],
    },
    Group {
        project: "test",
        jwks: "go_historical_c6b32cc9_rs384_PUBLIC_PART_e4a57cc9.jwks.json",
        from_file: true,
        rows: &[
            ("go_auth_test_jwtTokenExpired_RS384.jwt", Reject(EXPIRED)),
            // nbf in 2054 and no exp: the nbf is what the table names.
            ("go_auth_test_jwtTokenNotYet_RS384.jwt", Reject(NOT_YET)),
        ],
    },
];

/// `base` (the `descope:` block) with the `ext` route on `/` and the `subject` route on `/sub`.
fn config(base: ConfigBuilder, upstream: &str) -> String {
    base.ext_connector()
        .connector("subject", claim_connector("sub"))
        .route(RouteSpec::new("/", upstream).name("ext").connector("ext"))
        .route(
            RouteSpec::new("/sub", upstream)
                .name("sub")
                .connector("subject"),
        )
        .to_yaml()
}

async fn check_group(g: &Group) {
    let backend = Backend::start().await;
    let jwks_body = read_fixture(&format!("descope/jwks/{}", g.jwks));
    let (gw, _jwks_server) = if g.from_file {
        let base = ConfigBuilder::from_jwks_file(g.project, "keys.jwks.json");
        let yaml = config(base, &backend.url());
        let gw = GatewayProcess::start_with_files(&yaml, &[("keys.jwks.json", &jwks_body)]).await;
        (gw, None)
    } else {
        let server = JwksServer::start_raw(&jwks_body).await;
        let yaml = config(ConfigBuilder::new(g.project, &server.url()), &backend.url());
        (GatewayProcess::start(&yaml).await, Some(server))
    };
    // A probe with the set's kid and alg: 503 until the keys are in, then a bad-signature 401.
    let jwk: serde_json::Value = serde_json::from_str(&jwks_body).unwrap();
    let probe_key = &jwk["keys"][0];
    let probe = format!(
        "{}.e30.c2ln",
        base64_url(
            serde_json::json!({"alg": probe_key["alg"], "kid": probe_key["kid"]})
                .to_string()
                .as_bytes()
        )
    );
    gw.wait_keys("/", &probe).await;

    for (file, expect) in g.rows {
        let token = read_fixture(&format!("descope/{file}"));
        let ctx = format!("{file} (project {}, keys {})", g.project, g.jwks);
        match expect {
            Accept(sub) => {
                // The externalToken route: verified, then refused for want of the claim.
                let r = gw.get_bearer("/", &token).await;
                assert_eq!(r.description(), NO_EXTERNAL_TOKEN, "{ctx}: {r:?}");
                assert!(
                    r.header("www-authenticate")
                        .unwrap()
                        .contains("externalToken"),
                    "{ctx}"
                );
                // As the DS cookie too.
                let r = gw
                    .send(
                        gw.client
                            .get(gw.url("/"))
                            .header("Cookie", format!("DS={token}")),
                    )
                    .await;
                assert_eq!(r.description(), NO_EXTERNAL_TOKEN, "{ctx} (cookie): {r:?}");
                assert_eq!(backend.count(), 0, "{ctx}");

                // The `sub` route: forwarded, with the session's subject as the token.
                let r = gw.get_bearer("/sub/profile", &token).await;
                assert_eq!(r.status, 200, "{ctx}: {r:?}");
                let seen = backend.take();
                assert_eq!(seen.len(), 1, "{ctx}");
                assert_eq!(seen[0].uri, "/sub/profile");
                assert_eq!(
                    seen[0].header("authorization"),
                    Some(format!("Bearer {sub}").as_str()),
                    "{ctx}"
                );

                // Negative control: the same token with its signature changed is refused.
                let (input, sig) = token.rsplit_once('.').unwrap();
                let first = if sig.starts_with('A') { 'B' } else { 'A' };
                let forged = format!("{input}.{first}{}", &sig[1..]);
                gw.get_bearer("/sub/profile", &forged)
                    .await
                    .assert_invalid_token(BAD_SIG);
                assert_eq!(
                    backend.count(),
                    0,
                    "{ctx}: a forged signature reached the backend"
                );
            }
            Reject(description) => {
                for path in ["/", "/sub/profile"] {
                    let r = gw.get_bearer(path, &token).await;
                    r.assert_invalid_token(description);
                }
                let r = gw
                    .send(
                        gw.client
                            .get(gw.url("/sub"))
                            .header("Cookie", format!("DS={token}")),
                    )
                    .await;
                r.assert_invalid_token(description);
                assert_eq!(
                    backend.count(),
                    0,
                    "{ctx}: a refused token reached the backend"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_vectors() {
    for g in GROUPS.iter().filter(|g| g.rows[0].0.starts_with("py_")) {
        check_group(g).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn go_sdk_vectors() {
    for g in GROUPS.iter().filter(|g| g.rows[0].0.starts_with("go_")) {
        check_group(g).await;
    }
}

/// Every fixture token named in the README's table is exercised above (no row forgotten).
#[test]
fn every_readme_row_is_covered() {
    let readme = std::fs::read_to_string(fixture("descope/README.md")).unwrap();
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(".jwt"))
        .map(|l| l.trim_start_matches("| ").split(' ').next().unwrap())
        .collect();
    assert_eq!(rows.len(), 10, "{rows:?}");
    for r in rows {
        assert!(
            GROUPS.iter().any(|g| g.rows.iter().any(|(f, _)| *f == r)),
            "README row {r} has no test"
        );
        assert!(fixture(&format!("descope/{r}")).exists(), "{r} missing");
    }
}
