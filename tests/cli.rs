//! The command line: `check` (errors name their key, broken connector keys included), `mint` (its
//! tokens validate against its own JWKS, through the real gateway), `--help` everywhere.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

fn extoken(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("EXTOKEN_TEST_UNSET_VAR")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    cmd.output().expect("run extoken")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A valid file for `project` (`check` reads it as is: `listen:` included), with a summary worth
/// checking: routes[0] is `api` (auth required), routes[1] is `public` (auth none).
fn valid_for(project: &str) -> ConfigBuilder {
    let jwks_url = format!("http://127.0.0.1:18081/v2/keys/{project}");
    ConfigBuilder::new(project, &jwks_url)
        .descope("jwks_refresh", "1m")
        .connector("ext", json!({"type": "claim"}))
        .set("listen", "127.0.0.1:18080")
        .route(
            RouteSpec::new("/api", "http://127.0.0.1:18082")
                .name("api")
                .connector("ext"),
        )
        .route(
            RouteSpec::new("/public", "http://127.0.0.1:18083")
                .name("public")
                .auth_none(),
        )
}

fn valid() -> ConfigBuilder {
    valid_for("P2checkProject")
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn check_accepts_a_valid_file_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ok.yaml", &valid().to_yaml());
    let out = extoken(&["check", "--config", &path]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for line in [
        "listen:   127.0.0.1:18080",
        "project:  P2checkProject",
        "http://127.0.0.1:18081/v2/keys/P2checkProject",
        "ext: claim",
        "api: /api -> http://127.0.0.1:18082",
        "connector ext",
        "public: /public -> http://127.0.0.1:18083",
        "auth none",
    ] {
        assert!(stdout.contains(line), "summary lacks {line:?}:\n{stdout}");
    }
    assert!(stdout.contains(&format!("ok: {path} is valid")), "{stdout}");
    // Traces: where, and the export queue's settings as resolved.
    let traced = valid().set(
        "tracing",
        json!({"otlp_endpoint": "http://127.0.0.1:4318", "max_batch_spans": 64, "batch_delay": "250ms"}),
    );
    let path = write(dir.path(), "traced.yaml", &traced.to_yaml());
    let out = extoken(&["check", "--config", &path]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("traces:   http://127.0.0.1:4318/v1/traces as \"extoken\", 1 of new traces sampled; queue 8192 spans, batches of 64 at least every 250ms, export timeout 5s"),
        "{stdout}{}",
        text(&out.stderr)
    );

    // ${VAR} from the environment.
    let path = write(
        dir.path(),
        "env.yaml",
        &valid_for("${EXTOKEN_TEST_PROJECT}").to_yaml(),
    );
    let out = Command::new(BIN)
        .args(["check", "--config", &path])
        .env("EXTOKEN_TEST_PROJECT", "P2fromTheEnvironment")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("project:  P2fromTheEnvironment"));
}

#[test]
fn check_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let fb_connector = || valid().edit_route(1, |r| r.unset("auth").connector("fb"));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown connector",
            fb_connector().to_yaml(),
            r#"routes[1].connector: no connector named "fb""#,
        ),
        (
            "unknown key",
            valid().descope("jwks_ur", "x").to_yaml(),
            "descope.jwks_ur: unknown field `jwks_ur`",
        ),
        (
            "unknown key in a route",
            valid().edit_route(1, |r| r.set("upstrem", "x")).to_yaml(),
            "routes[1].upstrem: unknown field `upstrem`",
        ),
        (
            "bad duration",
            valid().descope("jwks_refresh", "1 minute").to_yaml(),
            "descope.jwks_refresh: invalid duration",
        ),
        (
            "zero duration",
            valid().descope("jwks_refresh", "0s").to_yaml(),
            "descope.jwks_refresh: must be more than 0",
        ),
        (
            "missing project_id",
            valid().unset_descope("project_id").to_yaml(),
            "missing field `project_id`",
        ),
        (
            "jwks_file with jwks_url",
            valid().descope("jwks_file", "keys.json").to_yaml(),
            "descope.jwks_file: jwks_file and jwks_url are exclusive",
        ),
        (
            "unset variable",
            valid()
                .edit_route(1, |r| r.set("upstream", "${EXTOKEN_TEST_UNSET_VAR}"))
                .to_yaml(),
            "routes[1].upstream: environment variable EXTOKEN_TEST_UNSET_VAR is not set",
        ),
        (
            "auth required without connector",
            valid().edit_route(0, |r| r.unset("connector")).to_yaml(),
            "routes[0].connector: required when auth is required",
        ),
        (
            "bad upstream",
            valid()
                .edit_route(0, |r| r.set("upstream", "127.0.0.1:18082"))
                .to_yaml(),
            "routes[0].upstream:",
        ),
        (
            "bad listen",
            valid().set("listen", "port 80").to_yaml(),
            "listen:",
        ),
        (
            "trace sample ratio out of range",
            valid()
                .set(
                    "tracing",
                    serde_json::json!({"otlp_endpoint": "http://127.0.0.1:4318", "sample_ratio": 2}),
                )
                .to_yaml(),
            "tracing.sample_ratio: 2 is not between 0 and 1",
        ),
        (
            "trace endpoint missing",
            valid()
                .set("tracing", serde_json::json!({"sample_ratio": 0.5}))
                .to_yaml(),
            "tracing.otlp_endpoint: required (or set OTEL_EXPORTER_OTLP_ENDPOINT)",
        ),
        (
            "not YAML",
            "descope: [oops\n".to_string(),
            "line 1 column 10",
        ),
    ];
    for (what, yaml, expected) in &cases {
        let path = write(dir.path(), "bad.yaml", yaml);
        let out = extoken(&["check", "--config", &path]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: expected {expected:?} in:\n{stderr}"
        );
        assert!(!text(&out.stdout).contains("is valid"), "{what}");
    }
    // `run` refuses the same file the same way, before listening.
    let path = write(dir.path(), "bad.yaml", &fb_connector().to_yaml());
    let out = extoken(&["run", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(r#"routes[1].connector: no connector named "fb""#));

    let out = extoken(&[
        "check",
        "--config",
        dir.path().join("absent.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("absent.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_command_has_help() {
    for (args, flag) in [
        (vec!["--help"], "mint"),
        (vec!["run", "--help"], "--config"),
        (vec!["check", "--help"], "--config"),
        (vec!["mint", "--help"], "--external-token"),
        (vec!["demo", "--help"], "--key"),
    ] {
        let out = extoken(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            text(&out.stdout).contains(flag),
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
    let out = extoken(&["mint", "--help"]);
    for flag in [
        "--key",
        "--project-id",
        "--sub",
        "--ttl",
        "--claim",
        "--count",
        "--refresh",
    ] {
        assert!(text(&out.stdout).contains(flag), "mint --help lacks {flag}");
    }
}

#[test]
fn check_names_broken_connector_keys() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    write(dir.path(), "bad-sa.json", r#"{"client_email":"x@y"}"#);
    let cases = [
        (json!({"type": "supabase"}), "connectors.c.jwt_secret"),
        (
            json!({"type": "supabase", "jwt_secret": "s", "signing_key": "k.pem"}),
            "connectors.c.signing_key: jwt_secret and signing_key are exclusive",
        ),
        (
            json!({"type": "firebase"}),
            "connectors.c.service_account_file: set service_account_file or service_account_json",
        ),
        (
            json!({"type": "supabase", "signing_key": "missing.json"}),
            "connectors.c.signing_key: cannot read",
        ),
        (
            json!({"type": "jwt", "key_file": "bad.pem", "issuer": "x"}),
            "connectors.c.key_file",
        ),
        (
            json!({"type": "firebase", "service_account_file": "bad-sa.json"}),
            "connectors.c.service_account_file: not a service account JSON",
        ),
        (
            json!({"type": "firebase", "service_account_file": "bad-sa.json", "mode": "id_token"}),
            "connectors.c.api_key: required when mode is id_token",
        ),
        (
            json!({"type": "http", "url": "ftp://x"}),
            "connectors.c.url",
        ),
        (
            json!({"type": "supabase", "jwt_secret": "s", "claims": {"sub": "dct"}}),
            "connectors.c.claims.sub",
        ),
        (
            json!({"type": "firebase", "service_account_json": "{}", "claims": {"firebase": "dct"}}),
            "connectors.c.claims.firebase",
        ),
        // A claim the client set itself (`nsec`) never becomes a claim the gateway signs.
        (
            json!({"type": "supabase", "jwt_secret": "s", "claims": {"app_metadata.plan": "nsec.plan"}}),
            "connectors.c.claims.app_metadata.plan: nsec holds claims set by the client",
        ),
        (
            json!({"type": "jwt", "key_file": "bad.pem", "issuer": "x", "claims": {"tier": "nsec.x"}}),
            "connectors.c.claims.tier: nsec holds claims set by the client",
        ),
        (
            json!({"type": "firebase", "service_account_json": "{}", "claims": {"plan": "nsec"}}),
            "connectors.c.claims.plan: nsec holds claims set by the client",
        ),
    ];
    for (connector, want) in cases {
        let config = ConfigBuilder::new("P", "http://127.0.0.1:1/k")
            .connector("c", connector.clone())
            .route(RouteSpec::any_path("http://127.0.0.1:1").connector("c"));
        let path = write(dir.path(), "gateway.yaml", &config.to_yaml());
        let out = extoken(&["check", "--config", &path]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{connector}: {err}");
        assert!(
            err.contains(want),
            "{connector}: expected {want:?} in {err}"
        );
        assert!(!err.contains("AAAA"), "no key material in errors");
    }
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn mint(key: &str, project: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["mint", "--key", key, "--project-id", project];
    args.extend_from_slice(extra);
    let out = extoken(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "mint {extra:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn minted_tokens_validate_against_their_own_jwks() {
    const PROJECT: &str = "P2mintProject000000000000";
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("dev/key.pem");
    let key_s = key.to_str().unwrap();

    let tokens = mint(
        key_s,
        PROJECT,
        &[
            "--count",
            "3",
            "--sub",
            "U2user",
            "--external-token",
            "legacy-{sub}",
            "--claim",
            r#"dct="T1""#,
            "--claim",
            r#"roles=["admin","viewer"]"#,
        ],
    );
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    let jwks_path = keydir.path().join("dev/key.jwks.json");
    assert!(
        key.exists() && jwks_path.exists(),
        "key and JWKS are created"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is private");
    }
    let subs: Vec<String> = tokens
        .iter()
        .map(|t| claims_of(t)["sub"].as_str().unwrap().to_string())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = subs.iter().collect();
    assert_eq!(distinct.len(), 3, "{subs:?}");
    for t in &tokens {
        let c = claims_of(t);
        assert_eq!(c["iss"], PROJECT);
        assert_eq!(c["drn"], "DS");
        assert_eq!(c["dct"], "T1");
        assert_eq!(c["roles"], serde_json::json!(["admin", "viewer"]));
        assert_eq!(
            c["externalToken"],
            format!("legacy-{}", c["sub"].as_str().unwrap())
        );
        let ttl = c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap();
        assert_eq!(ttl, 600, "default ttl 10m");
    }
    // The same key is reused on the next run.
    let refresh = mint(key_s, PROJECT, &["--refresh", "--external-token", "r"]);
    let no_ext = mint(key_s, PROJECT, &["--ttl", "1h"]);
    let expired = mint(key_s, PROJECT, &["--ttl", "-10m", "--external-token", "e"]);
    let url_iss = mint(
        key_s,
        PROJECT,
        &[
            "--issuer",
            &format!("https://api.descope.com/{PROJECT}"),
            "--external-token",
            "via-url-iss",
        ],
    );
    assert_eq!(claims_of(&refresh[0])["drn"], "DSR");
    assert_eq!(
        claims_of(&no_ext[0])["exp"].as_u64().unwrap()
            - claims_of(&no_ext[0])["iat"].as_u64().unwrap(),
        3600
    );

    // The gateway loads the mint's own JWKS file.
    let backend = Backend::start().await;
    let config = ConfigBuilder::from_jwks_file(PROJECT, jwks_path.to_str().unwrap())
        .ext_connector()
        .route(RouteSpec::any_path(&backend.url()).connector("ext"));
    let gw = GatewayProcess::start(&config.to_yaml()).await;
    let ok = eventually(std::time::Duration::from_secs(10), || async {
        gw.get_bearer("/", &tokens[0]).await.status != 503
    })
    .await;
    assert!(ok, "keys never loaded:\n{}", gw.log());
    backend.take();

    for (t, sub) in tokens.iter().zip(&subs) {
        let r = gw.get_bearer("/minted", t).await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = backend.take();
        assert_eq!(
            seen[0].header("authorization"),
            Some(format!("Bearer legacy-{sub}").as_str())
        );
    }
    assert_eq!(gw.get_bearer("/", &url_iss[0]).await.status, 200);
    assert_eq!(
        backend.take()[0].header("authorization"),
        Some("Bearer via-url-iss")
    );

    gw.get_bearer("/", &refresh[0])
        .await
        .assert_invalid_token("a refresh token is not a session token");
    gw.get_bearer("/", &no_ext[0])
        .await
        .assert_invalid_token(NO_EXTERNAL_TOKEN);
    gw.get_bearer("/", &expired[0])
        .await
        .assert_invalid_token("token has expired");
    assert_eq!(backend.count(), 0);

    // A token from another dev key is not accepted by this JWKS.
    let other_key = keydir.path().join("other.pem");
    let foreign = mint(
        other_key.to_str().unwrap(),
        PROJECT,
        &["--external-token", "x"],
    );
    gw.get_bearer("/", &foreign[0])
        .await
        .assert_invalid_token("token is signed with an unknown key");
    assert_eq!(backend.count(), 0);
}

#[test]
fn mint_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let key = key.to_str().unwrap();
    for (args, expected) in [
        (vec!["mint", "--key", key, "--count", "0"], "--count"),
        (vec!["mint", "--key", key, "--claim", "novalue"], "novalue"),
        (
            vec!["mint", "--key", key, "--ttl", "ten minutes"],
            "ten minutes",
        ),
    ] {
        let out = extoken(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: no token on stdout");
        assert!(
            text(&out.stderr).contains(expected),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(&bad_pem, "not a key").unwrap();
    let out = extoken(&["mint", "--key", bad_pem.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bad.pem"),
        "{}",
        text(&out.stderr)
    );
}
