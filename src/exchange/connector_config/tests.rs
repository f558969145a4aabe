//! Parsing and checking `connectors.<name>` blocks: defaults, errors that name their key path
//! (exactly as `extoken check` prints them), and relative paths.

use std::path::Path;

use super::*;

const MINIMAL: &str = "
descope:
  project_id: P2test
connectors:
  ext: {type: claim}
routes:
  - upstream: http://127.0.0.1:3000
    connector: ext
";

/// A config whose only connector is `c: <block>`.
fn with_connector(block: &str) -> String {
    format!(
        "descope: {{project_id: P, jwks_url: 'http://127.0.0.1:1/k'}}\nconnectors:\n  c: {block}\n\
         routes:\n  - {{upstream: 'http://127.0.0.1:1', connector: c}}\n"
    )
}

fn config(text: &str) -> Config {
    Config::parse(text, &|_| None).unwrap()
}

fn typed(text: &str, name: &str) -> Result<ConnectorConfig, ConfigError> {
    ConnectorConfig::parse(name, &config(text).connectors[name])
}

/// The error `validate` gives for a config, as `extoken check` prints it.
fn err(text: &str) -> String {
    match validate(&config(text)) {
        Ok(()) => panic!("connectors were accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A key-path error: returns (path, message) and fails on any other kind of error.
fn key_err(text: &str) -> (String, String) {
    match validate(&config(text)) {
        Err(ConfigError::Key { path, message }) => (path, message),
        Err(other) => panic!("expected a key error, got {other:?}"),
        Ok(()) => panic!("connectors were accepted:\n{text}"),
    }
}

/// The claim a `claim` connector reads; panics for any other connector type.
fn claim_of(c: &ConnectorConfig) -> &str {
    match c {
        ConnectorConfig::Claim(cc) => &cc.claim,
        other => panic!("not a claim connector: {other:?}"),
    }
}

#[test]
fn claim_defaults_to_external_token() {
    assert_eq!(claim_of(&typed(MINIMAL, "ext").unwrap()), "externalToken");
    let legacy = MINIMAL.replace("{type: claim}", "{type: claim, claim: legacyToken}");
    assert_eq!(claim_of(&typed(&legacy, "ext").unwrap()), "legacyToken");
}

#[test]
fn unknown_keys_are_errors() {
    let (path, msg) = key_err(&MINIMAL.replace("{type: claim}", "{type: claim, clam: x}"));
    assert!(path.starts_with("connectors.ext"), "{path}");
    assert!(msg.contains("unknown field `clam`"), "{msg}");
}

#[test]
fn unknown_connector_type() {
    let (path, msg) = key_err(&MINIMAL.replace("{type: claim}", "{type: firebase-ish}"));
    assert!(path.starts_with("connectors.ext"), "{path}");
    assert!(msg.contains("firebase-ish"), "{msg}");
}

#[test]
fn empty_claim() {
    let (path, _) = key_err(&MINIMAL.replace("{type: claim}", "{type: claim, claim: ''}"));
    assert_eq!(path, "connectors.ext.claim");
}

/// The messages of the checks that need no I/O, word for word as they were when the config
/// itself checked connectors (serde errors inside a block name the block, not the key).
#[test]
fn errors_name_their_key_exactly() {
    for (block, want) in [
        ("{type: firebase-ish}", "connectors.c.type: unknown variant `firebase-ish`, expected one of `claim`, `supabase`, `firebase`, `http`, `jwt`, `token_exchange`"),
        ("{type: 5}", "connectors.c.type: invalid type: integer `5`, expected variant identifier"),
        ("{claim: x}", "connectors.c: missing field `type`"),
        ("5", "connectors.c: invalid type: integer `5`, expected internally tagged enum ConnectorConfig"),
        ("{type: claim, clam: x}", "connectors.c: unknown field `clam`, expected `claim`"),
        ("{type: supabase}", "connectors.c.jwt_secret: set jwt_secret or signing_key (HS256 secret, or an ES256/RS256 key file)"),
        ("{type: supabase, jwt_secret: s, signing_key: k.pem}", "connectors.c.signing_key: jwt_secret and signing_key are exclusive: set one"),
        ("{type: supabase, jwt_secret: ''}", "connectors.c.jwt_secret: must not be empty"),
        ("{type: supabase, jwt_secret: s, role: service_role}", "connectors.c.role: \"service_role\" is not in allowed_roles [\"authenticated\", \"anon\"]"),
        ("{type: supabase, jwt_secret: s, uuid_namespace: nope}", "connectors.c.uuid_namespace: not a UUID"),
        ("{type: supabase, jwt_secret: s, expires_in: 0s}", "connectors.c.expires_in: must be more than 0"),
        ("{type: supabase, jwt_secret: s, expires_in: soon}", "connectors.c: invalid duration \"soon\": expected e.g. 500ms, 5s, 10m, 1h"),
        ("{type: supabase, jwt_secret: s, sub_mode: weird}", "connectors.c: unknown variant `weird`, expected `uuid` or `descope`"),
        ("{type: supabase, jwt_secret: s, claims: {sub: dct}}", "connectors.c.claims.sub: \"sub\" is set by the connector and cannot be mapped"),
        ("{type: supabase, jwt_secret: s, claims: {'a..b': dct}}", "connectors.c.claims.a..b: invalid claim path"),
        ("{type: supabase, jwt_secret: s, claims: {a: ''}}", "connectors.c.claims.a: invalid session claim path"),
        ("{type: supabase, jwt_secret: s, claims: {app_metadata.plan: nsec.plan}}", "connectors.c.claims.app_metadata.plan: nsec holds claims set by the client: never a basis for trust"),
        ("{type: firebase, service_account_json: '{}', claims: {plan: nsec}}", "connectors.c.claims.plan: nsec holds claims set by the client: never a basis for trust"),
        ("{type: jwt, key_file: k.pem, issuer: x, claims: {tier: nsec.x.y}}", "connectors.c.claims.tier: nsec holds claims set by the client: never a basis for trust"),
        ("{type: firebase}", "connectors.c.service_account_file: set service_account_file or service_account_json"),
        ("{type: firebase, service_account_file: a.json, service_account_json: '{}'}", "connectors.c.service_account_json: service_account_file and service_account_json are exclusive: set one"),
        ("{type: firebase, service_account_json: '{}', mode: id_token}", "connectors.c.api_key: required when mode is id_token"),
        ("{type: firebase, service_account_json: '{}', identity_toolkit_url: x}", "connectors.c.identity_toolkit_url: \"x\" is not an http(s) URL"),
        ("{type: firebase, service_account_json: '{}', claims: {firebase: dct}}", "connectors.c.claims.firebase: \"firebase\" is set by the connector and cannot be mapped"),
        ("{type: http, url: ftp://x}", "connectors.c.url: \"ftp://x\" is not an http(s) URL"),
        ("{type: http}", "connectors.c: missing field `url`"),
        ("{type: http, url: 'http://x', token_field: ''}", "connectors.c.token_field: must not be empty"),
        ("{type: http, url: 'http://x', timeout: 0s}", "connectors.c.timeout: must be more than 0"),
        ("{type: http, url: 'http://x', ttl: 0s}", "connectors.c.ttl: must be more than 0"),
        ("{type: http, url: 'http://x', headers: {'a b': v}}", "connectors.c.headers.a b: not a header name"),
        ("{type: http, url: 'http://x', auth: {api_key: {header: 'a b', value: v}}}", "connectors.c.auth.api_key.header: not a header name"),
        ("{type: http, url: 'http://x', auth: {oauth2_client_credentials: {token_url: x, client_id: a, client_secret: b}}}", "connectors.c.auth.oauth2_client_credentials.token_url: \"x\" is not an http(s) URL"),
        ("{type: http, url: 'http://x', auth: {digest: x}}", "connectors.c: unknown variant `digest`, expected one of `bearer`, `basic`, `api_key`, `oauth2_client_credentials`"),
        ("{type: jwt, issuer: x}", "connectors.c: missing field `key_file`"),
        ("{type: jwt, key_file: k.pem, issuer: ''}", "connectors.c.issuer: must not be empty"),
        ("{type: jwt, key_file: k.pem, issuer: x, expires_in: 0s}", "connectors.c.expires_in: must be more than 0"),
        ("{type: jwt, key_file: k.pem, issuer: x, algorithm: HS256}", "connectors.c: unknown variant `HS256`, expected one of `RS256`, `ES256`, `EdDSA`"),
        ("{type: jwt, key_file: k.pem, issuer: x, claims: {iss: dct}}", "connectors.c.claims.iss: \"iss\" is set by the connector and cannot be mapped"),
    ] {
        assert_eq!(err(&with_connector(block)), want, "{block}");
    }
}

/// MINIMAL with connector `sb` of type supabase: `jwt_secret` plus `extra` (flow-mapping entries).
fn supabase(extra: &str) -> String {
    MINIMAL.replace(
        "ext: {type: claim}",
        &format!("ext: {{type: claim}}\n  sb: {{type: supabase, jwt_secret: s{extra}}}"),
    )
}

#[test]
fn supabase_allowed_roles_default_and_static_role_check() {
    match typed(&supabase(""), "sb").unwrap() {
        ConnectorConfig::Supabase(s) => {
            assert_eq!(s.role, "authenticated");
            assert_eq!(s.allowed_roles, ["authenticated", "anon"]);
        }
        other => panic!("not supabase: {other:?}"),
    }
    assert!(validate(&config(&supabase(", role: anon"))).is_ok());
    assert!(validate(&config(&supabase(", role: staff, allowed_roles: [staff]"))).is_ok());
    for bad in [
        ", role: service_role",
        ", role: supabase_admin",
        ", allowed_roles: [anon]",
        ", allowed_roles: []",
    ] {
        let (path, msg) = key_err(&supabase(bad));
        assert_eq!(path, "connectors.sb.role", "{bad}");
        assert!(msg.contains("allowed_roles"), "{bad}: {msg}");
    }
}

#[test]
fn key_files_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "descope: {project_id: P2x, jwks_url: 'http://127.0.0.1:1/k'}\nconnectors:\n\
         \x20 sb: {type: supabase, signing_key: keys/sb.pem}\n\
         \x20 fb: {type: firebase, service_account_file: sa.json}\n\
         \x20 j: {type: jwt, key_file: /etc/extoken/j.pem, issuer: x}\n\
         routes: [{upstream: 'http://127.0.0.1:1', connector: sb}]\n",
    )
    .unwrap();
    let cfg = Config::load(&path).unwrap();
    let paths = |name: &str| {
        let mut c = ConnectorConfig::parse(name, &cfg.connectors[name]).unwrap();
        let got: Vec<PathBuf> = c
            .settings_mut()
            .paths_mut()
            .into_iter()
            .map(|p| p.clone())
            .collect();
        got
    };
    assert_eq!(paths("sb"), [dir.path().join("keys/sb.pem")]);
    assert_eq!(paths("fb"), [dir.path().join("sa.json")]);
    assert_eq!(paths("j"), [Path::new("/etc/extoken/j.pem")]);
    // Without a file (Config::parse), relative paths stay relative to the working directory.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut c = typed(&text, "sb").unwrap();
    assert_eq!(
        c.settings_mut().paths_mut(),
        [&mut PathBuf::from("keys/sb.pem")]
    );
}

#[test]
fn fingerprint_text_leaves_out_paths_only() {
    let a = typed(
        &with_connector("{type: jwt, key_file: a.pem, issuer: x}"),
        "c",
    )
    .unwrap();
    let b = typed(
        &with_connector("{type: jwt, key_file: b.pem, issuer: x}"),
        "c",
    )
    .unwrap();
    let other = typed(
        &with_connector("{type: jwt, key_file: a.pem, issuer: y}"),
        "c",
    )
    .unwrap();
    assert_eq!(a.settings_without_paths(), b.settings_without_paths());
    assert_ne!(a.settings_without_paths(), other.settings_without_paths());
}
