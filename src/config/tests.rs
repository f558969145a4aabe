//! Unit tests of config parsing: `${VAR}` expansion, defaults, errors that name their key path,
//! and where the keys come from.

use std::path::PathBuf;
use std::time::Duration;

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

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &no_env)
}

/// The error text of a config that must fail.
fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A key-path error: returns (path, message) and fails on any other kind of error.
fn key_err(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Key { path, message }) => (path, message),
        Err(other) => panic!("expected a key error, got {other:?}"),
        Ok(_) => panic!("config was accepted:\n{text}"),
    }
}

#[test]
fn defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.listen.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(c.threads, 0);
    let d = &c.descope;
    assert_eq!(d.project_id, "P2test");
    assert_eq!(d.base_url, None);
    assert_eq!(d.jwks_url, None);
    assert_eq!(d.jwks_file, None);
    assert_eq!(d.audience, None);
    assert_eq!(d.leeway.0, Duration::from_secs(5));
    assert_eq!(d.jwks_refresh.0, Duration::from_secs(300));
    assert_eq!(d.jwks_min_refetch.0, Duration::from_secs(30));
    assert_eq!(d.jwks_timeout.0, Duration::from_secs(5));
    assert_eq!(d.session_cookie, "DS");
    assert_eq!(d.refresh_cookie, "DSR");
    assert_eq!(c.connectors["ext"].type_name(), "claim");
    assert_eq!(c.routes.len(), 1);
    let r = &c.routes[0];
    assert_eq!(r.name, None);
    assert_eq!(r.path_prefix, "/");
    assert_eq!(r.host, None);
    assert_eq!(r.auth, AuthMode::Required);
    assert_eq!(r.connector.as_deref(), Some("ext"));
    assert_eq!(r.header, "Authorization");
    assert_eq!(r.scheme, "Bearer");
    assert_eq!(r.strip_cookies, None);
    assert_eq!(c.cache.verified_sessions, 100_000);
    assert_eq!(c.limits.max_token_bytes, 16 * 1024);
}

#[test]
fn explicit_values_are_read() {
    let c = parse(
        "
listen: 127.0.0.1:9000
descope:
  project_id: P2x
  base_url: https://auth.example.com/
  audience: [a, b]
  leeway: 500ms
  jwks_refresh: 10m
  jwks_min_refetch: 2s
  session_cookie: MYDS
  refresh_cookie: MYDSR
connectors:
  legacy: {type: claim, claim: legacyToken}
routes:
  - name: api
    path_prefix: /api
    host: api.example.com
    upstream: https://backend.internal:8443
    connector: legacy
    header: X-Legacy-Token
    scheme: ''
    strip_cookies: [MYDS]
  - {path_prefix: /public, upstream: 'http://127.0.0.1:1', auth: none}
",
    )
    .unwrap();
    assert_eq!(
        c.listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9000")
    );
    let d = &c.descope;
    assert_eq!(
        d.audience,
        Some(OneOrMany::Many(vec!["a".into(), "b".into()]))
    );
    assert_eq!(d.leeway.0, Duration::from_millis(500));
    assert_eq!(d.jwks_refresh.0, Duration::from_secs(600));
    assert_eq!(d.jwks_min_refetch.0, Duration::from_secs(2));
    assert_eq!(
        (d.session_cookie.as_str(), d.refresh_cookie.as_str()),
        ("MYDS", "MYDSR")
    );
    assert_eq!(
        d.key_source(),
        KeySource::Url("https://auth.example.com/v2/keys/P2x".into()),
        "a trailing / of base_url is not doubled"
    );
    assert_eq!(c.connectors["legacy"].type_name(), "claim");
    let r = &c.routes[0];
    assert_eq!(r.name.as_deref(), Some("api"));
    assert_eq!(r.host.as_deref(), Some("api.example.com"));
    assert_eq!(r.header, "X-Legacy-Token");
    assert_eq!(r.scheme, "");
    assert_eq!(r.strip_cookies, Some(vec!["MYDS".to_string()]));
    assert_eq!(c.routes[1].auth, AuthMode::None);
    assert_eq!(c.routes[1].connector, None);
    let s = c.summary();
    assert!(s.contains("project:  P2x"), "{s}");
    assert!(s.contains("audience: a, b"), "{s}");
    let lower = s.to_ascii_lowercase();
    assert!(
        lower.contains("api: /api host api.example.com -> https://backend.internal:8443  [connector legacy -> x-legacy-token]"),
        "{s}"
    );
    assert!(
        s.contains("/public -> http://127.0.0.1:1  [auth none]"),
        "{s}"
    );
}

#[test]
fn audience_may_be_one_string() {
    let c = parse(&MINIMAL.replace("project_id: P2test", "project_id: P2test\n  audience: aud1"))
        .unwrap();
    assert_eq!(c.descope.audience, Some(OneOrMany::One("aud1".into())));
    assert_eq!(
        c.descope.audience.unwrap().to_vec(),
        vec!["aud1".to_string()]
    );
}

#[test]
fn env_expansion() {
    let env = |k: &str| match k {
        "PID" => Some("P2fromEnv".to_string()),
        "PORT" => Some("3999".to_string()),
        "REFRESH" => Some("45s".to_string()),
        "ENTRIES" => Some("123".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let text = "
listen: '127.0.0.1:${PORT}'
descope:
  project_id: ${PID}
  jwks_url: 'http://${JWKS_HOST:-127.0.0.1:8081}/v2/keys/${PID}'
  jwks_refresh: ${REFRESH}
  session_cookie: ${EMPTY:-DSX}
cache:
  verified_sessions: ${ENTRIES}
connectors:
  ext: {type: claim}
routes:
  - upstream: 'http://127.0.0.1:${PORT}'
    connector: ext
";
    let c = Config::parse(text, &env).unwrap();
    assert_eq!(
        c.listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:3999")
    );
    assert_eq!(c.descope.project_id, "P2fromEnv");
    assert_eq!(
        c.descope.jwks_url.as_deref(),
        Some("http://127.0.0.1:8081/v2/keys/P2fromEnv"),
        "unset variable with a default takes the default"
    );
    assert_eq!(c.descope.jwks_refresh.0, Duration::from_secs(45));
    assert_eq!(
        c.descope.session_cookie, "DSX",
        "an empty variable takes the default"
    );
    assert_eq!(
        c.cache.verified_sessions, 123,
        "a whole-value reference is re-read as a number"
    );
    assert_eq!(c.routes[0].upstream.to_string(), "http://127.0.0.1:3999");
}

#[test]
fn env_value_cannot_change_structure() {
    let env = |k: &str| (k == "PID").then(|| "P2x\nlisten: 1.2.3.4:1".to_string());
    let c = Config::parse(&MINIMAL.replace("P2test", "'${PID}'"), &env).unwrap();
    assert_eq!(c.descope.project_id, "P2x\nlisten: 1.2.3.4:1");
    assert_eq!(
        c.listen.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:8080")
    );
}

#[test]
fn unset_variable_names_key_and_variable() {
    let (path, msg) = key_err(&MINIMAL.replace("http://127.0.0.1:3000", "${UPSTREAM_URL}"));
    assert_eq!(path, "routes[0].upstream");
    assert!(
        msg.contains("UPSTREAM_URL") && msg.contains("not set"),
        "{msg}"
    );
    let (path, msg) = key_err(&MINIMAL.replace("P2test", "${NO_SUCH_PROJECT}"));
    assert_eq!(path, "descope.project_id");
    assert!(msg.contains("NO_SUCH_PROJECT"), "{msg}");
}

#[test]
fn unknown_keys_are_errors() {
    // The path names the unknown key itself.
    let (path, msg) =
        key_err(&MINIMAL.replace("project_id: P2test", "project_id: P2test\n  jwks_urll: x"));
    assert_eq!(path, "descope.jwks_urll");
    assert!(msg.contains("unknown field `jwks_urll`"), "{msg}");

    let (path, msg) =
        key_err(&MINIMAL.replace("connector: ext", "connector: ext\n    upstreams: x"));
    assert_eq!(path, "routes[0].upstreams");
    assert!(msg.contains("unknown field `upstreams`"), "{msg}");

    let e = err(&format!("lisen: 1.2.3.4:5\n{MINIMAL}"));
    assert!(e.contains("unknown field `lisen`"), "{e}");
}

#[test]
fn bad_durations_name_their_key() {
    for (key, val) in [
        ("leeway", "5 parsecs"),
        ("jwks_refresh", "-1s"),
        ("jwks_min_refetch", "soon"),
    ] {
        let (path, msg) = key_err(&MINIMAL.replace(
            "project_id: P2test",
            &format!("project_id: P2test\n  {key}: {val}"),
        ));
        assert_eq!(path, format!("descope.{key}"));
        assert!(msg.contains("duration"), "{key}: {msg}");
    }
    let (path, msg) = key_err(&MINIMAL.replace(
        "project_id: P2test",
        "project_id: P2test\n  jwks_refresh: 0s",
    ));
    assert_eq!(path, "descope.jwks_refresh");
    assert!(msg.contains("more than 0"), "{msg}");
}

#[test]
fn missing_or_empty_project_id() {
    let e = err(&MINIMAL.replace("project_id: P2test", "jwks_url: http://127.0.0.1:1/k"));
    assert!(
        e.contains("descope") && e.contains("missing field `project_id`"),
        "{e}"
    );
    let (path, msg) = key_err(&MINIMAL.replace("P2test", "'  '"));
    assert_eq!(path, "descope.project_id");
    assert!(msg.contains("empty"), "{msg}");
    let e = err("connectors: {}\nroutes: []\n");
    assert!(e.contains("missing field `descope`"), "{e}");
}

#[test]
fn jwks_file_and_url_are_exclusive() {
    let (path, msg) = key_err(&MINIMAL.replace(
        "project_id: P2test",
        "project_id: P2test\n  jwks_url: http://127.0.0.1:1/k\n  jwks_file: keys.json",
    ));
    assert_eq!(path, "descope.jwks_file");
    assert!(msg.contains("exclusive"), "{msg}");
}

#[test]
fn urls_must_be_http() {
    let (path, _) = key_err(&MINIMAL.replace(
        "project_id: P2test",
        "project_id: P2test\n  jwks_url: ftp://x/k",
    ));
    assert_eq!(path, "descope.jwks_url");
    let (path, _) = key_err(&MINIMAL.replace(
        "project_id: P2test",
        "project_id: P2test\n  base_url: api.descope.com",
    ));
    assert_eq!(path, "descope.base_url");
    let (path, msg) =
        key_err(&MINIMAL.replace("http://127.0.0.1:3000", "http://127.0.0.1:3000/base"));
    assert_eq!(path, "routes[0].upstream");
    assert!(msg.contains("no path"), "{msg}");
}

#[test]
fn route_errors_name_their_index() {
    let two = format!(
        "{MINIMAL}  - {{path_prefix: /b, upstream: 'http://127.0.0.1:1', connector: fb}}\n"
    );
    assert_eq!(
        key_err(&two),
        (
            "routes[1].connector".to_string(),
            r#"no connector named "fb""#.to_string()
        )
    );
    assert_eq!(err(&two), r#"routes[1].connector: no connector named "fb""#);

    let no_conn = format!("{MINIMAL}  - {{path_prefix: /b, upstream: 'http://127.0.0.1:1'}}\n");
    let (path, msg) = key_err(&no_conn);
    assert_eq!(path, "routes[1].connector");
    assert!(msg.contains("required"), "{msg}");

    let (path, _) =
        key_err(&MINIMAL.replace("connector: ext", "connector: ext\n    path_prefix: api"));
    assert_eq!(path, "routes[0].path_prefix");
    let (path, _) =
        key_err(&MINIMAL.replace("connector: ext", "connector: ext\n    header: 'bad header'"));
    assert_eq!(path, "routes[0].header");
    let (path, _) =
        key_err(&MINIMAL.replace("connector: ext", "connector: ext\n    scheme: 'Bear er'"));
    assert_eq!(path, "routes[0].scheme");
    let (path, _) = key_err(&MINIMAL.replace(
        "connector: ext",
        "connector: ext\n    strip_cookies: [DS, 'a;b']",
    ));
    assert_eq!(path, "routes[0].strip_cookies[1]");
    let (path, msg) =
        key_err(&MINIMAL.replace("connector: ext", "connector: ext\n    auth: sometimes"));
    assert_eq!(path, "routes[0].auth");
    assert!(msg.contains("sometimes"), "{msg}");
    let e = err(&MINIMAL.replace(
        "  - upstream: http://127.0.0.1:3000\n    connector",
        "  - connector",
    ));
    assert!(
        e.starts_with("routes[0]") && e.contains("missing field `upstream`"),
        "{e}"
    );
}

#[test]
fn other_key_errors() {
    let (path, msg) = key_err(&format!("listen: nowhere\n{MINIMAL}"));
    assert_eq!(path, "listen");
    assert!(msg.contains("nowhere"), "{msg}");
    let (path, _) = key_err(&MINIMAL.replace(
        "project_id: P2test",
        "project_id: P2test\n  session_cookie: 'a b'",
    ));
    assert_eq!(path, "descope.session_cookie");
    let no_routes = MINIMAL.split("routes:").next().unwrap().to_string() + "routes: []\n";
    let (path, msg) = key_err(&no_routes);
    assert_eq!(path, "routes");
    assert!(msg.contains("at least one"), "{msg}");
}

#[test]
fn yaml_syntax_error_is_reported() {
    match parse("descope: [unclosed\n") {
        Err(ConfigError::Syntax(m)) => assert!(!m.is_empty()),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn regional_base_url() {
    let id = "Puse12aAc4T2V93bddihGEx2Ryhc8e5Z";
    assert_eq!(id.len(), 32);
    assert_eq!(default_base_url(id), "https://api.use1.descope.com");
    let c = parse(&MINIMAL.replace("P2test", id)).unwrap();
    assert_eq!(
        c.descope.key_source(),
        KeySource::Url(format!("https://api.use1.descope.com/v2/keys/{id}"))
    );
    // Shorter ids use the global host.
    let short = "P2CuC9yv2UGtGI1o84gCZEb9qEQW";
    assert_eq!(default_base_url(short), "https://api.descope.com");
    let c = parse(&MINIMAL.replace("P2test", short)).unwrap();
    assert_eq!(
        c.descope.key_source(),
        KeySource::Url(format!("https://api.descope.com/v2/keys/{short}"))
    );
    // The region is lower-cased.
    assert_eq!(
        default_base_url("PEUW1aAc4T2V93bddihGEx2Ryhc8e5Zx"),
        "https://api.euw1.descope.com"
    );
}

#[test]
fn key_source_precedence() {
    let id = "Puse12aAc4T2V93bddihGEx2Ryhc8e5Z";
    let with = |extra: &str| {
        parse(&MINIMAL.replace(
            "project_id: P2test",
            &format!("project_id: {id}\n  {extra}"),
        ))
        .unwrap()
        .descope
        .key_source()
    };
    assert_eq!(
        with("base_url: https://auth.example.com"),
        KeySource::Url(format!("https://auth.example.com/v2/keys/{id}")),
        "base_url overrides the regional host"
    );
    assert_eq!(
        with("jwks_url: http://127.0.0.1:9/keys.json\n  base_url: https://auth.example.com"),
        KeySource::Url("http://127.0.0.1:9/keys.json".into()),
        "jwks_url overrides base_url"
    );
    assert_eq!(
        with("jwks_file: k.json"),
        KeySource::File(PathBuf::from("k.json"))
    );
}

#[test]
fn load_resolves_jwks_file_next_to_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        MINIMAL.replace(
            "project_id: P2test",
            "project_id: P2test\n  jwks_file: keys/k.jwks.json",
        ),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(
        c.descope.key_source(),
        KeySource::File(dir.path().join("keys/k.jwks.json"))
    );

    let abs = dir.path().join("abs.yaml");
    std::fs::write(
        &abs,
        MINIMAL.replace(
            "project_id: P2test",
            "project_id: P2test\n  jwks_file: /etc/k.json",
        ),
    )
    .unwrap();
    assert_eq!(
        Config::load(&abs).unwrap().descope.jwks_file,
        Some(PathBuf::from("/etc/k.json"))
    );

    match Config::load(&dir.path().join("missing.yaml")) {
        Err(ConfigError::Read { path, .. }) => assert!(path.ends_with("missing.yaml")),
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::parse(EMBEDDED_DEFAULT, &no_env).unwrap();
    assert_eq!(
        c.listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:8080")
    );
    assert!(
        matches!(c.descope.key_source(), KeySource::Url(u) if u.starts_with("http://127.0.0.1:8081/"))
    );
    assert_eq!(c.routes[0].connector.as_deref(), Some("descope-claim"));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "descope: {project_id: P2x, jwks_file: keys/jwks.json}\npid_file: run/extoken.pid\n\
         connectors: {ext: {type: claim}}\nroutes: [{upstream: 'http://127.0.0.1:1', connector: ext}]\n",
    )
    .unwrap();
    let cfg = Config::load(&path).unwrap();
    assert_eq!(
        cfg.descope.jwks_file,
        Some(dir.path().join("keys/jwks.json"))
    );
    assert_eq!(cfg.pid_file, Some(dir.path().join("run/extoken.pid")));
}

/// One route with `extra` keys, for the request-edge settings.
fn route_with(extra: &str) -> String {
    format!(
        "descope:\n  project_id: P2test\nconnectors:\n  ext: {{type: claim}}\nroutes:\n  - {{upstream: 'http://127.0.0.1:3000', connector: ext, {extra}}}\n"
    )
}

#[test]
fn request_edge_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.limits.escaped_slashes, EscapedSlashes::Reject);
    assert_eq!(c.limits.underscore_headers, UnderscoreHeaders::Drop);
    assert!(c.trusted_proxies.is_empty());
    let c = parse(&format!(
        "{MINIMAL}limits: {{escaped_slashes: keep, underscore_headers: allow}}\ntrusted_proxies: [10.0.0.0/8, '::1']\n"
    ))
    .unwrap();
    assert_eq!(c.limits.escaped_slashes, EscapedSlashes::Keep);
    assert_eq!(c.limits.underscore_headers, UnderscoreHeaders::Allow);
    assert_eq!(c.trusted_proxies.len(), 2);
    assert!(c.trusted_proxies[0].contains("10.2.3.4".parse().unwrap()));
}

#[test]
fn request_edge_errors_name_their_key() {
    let (path, msg) = key_err(&format!("{MINIMAL}trusted_proxies: [10.0.0.0/40]\n"));
    assert_eq!(path, "trusted_proxies[0]");
    assert!(msg.contains("CIDR"), "{msg}");
    let (path, _) = key_err(&format!("{MINIMAL}limits: {{underscore_headers: maybe}}\n"));
    assert_eq!(path, "limits.underscore_headers");
    let (path, _) = key_err(&format!("{MINIMAL}limits: {{escaped_slashes: decode}}\n"));
    assert_eq!(path, "limits.escaped_slashes");
}

#[test]
fn path_prefixes_must_be_canonical() {
    for (prefix, hint) in [
        ("/api/../admin", "\"/admin\""),
        ("//api", "\"/api\""),
        ("/%61pi", "\"/api\""),
        ("/api/./v1", "\"/api/v1\""),
    ] {
        let (path, msg) = key_err(&route_with(&format!("path_prefix: '{prefix}'")));
        assert_eq!(path, "routes[0].path_prefix");
        assert!(
            msg.contains("canonical") && msg.contains(hint),
            "{prefix}: {msg}"
        );
    }
    let (_, msg) = key_err(&route_with("path_prefix: '/a%2Fb'"));
    assert!(msg.contains("encoded slash"), "{msg}");
    for ok in ["/", "/api", "/api/", "/a%3Bb", "/caf%C3%A9"] {
        assert!(
            parse(&route_with(&format!("path_prefix: '{ok}'"))).is_ok(),
            "{ok}"
        );
    }
}

#[test]
fn route_hosts_are_names_without_ports() {
    for bad in [
        "admin.example.com:8080",
        "http://admin.example.com",
        "a..b",
        "*.example.com",
    ] {
        let (path, _) = key_err(&route_with(&format!("host: '{bad}'")));
        assert_eq!(path, "routes[0].host", "{bad}");
    }
    assert!(parse(&route_with("host: Admin.Example.com.")).is_ok());
}

#[test]
fn dns_refresh_and_jwks_max_bytes() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.dns_refresh.0, Duration::from_secs(30));
    assert_eq!(c.descope.jwks_max_bytes, 1024 * 1024);
    let c = parse(&format!("{MINIMAL}dns_refresh: 5s\n").replace(
        "project_id: P2test",
        "project_id: P2test\n  jwks_max_bytes: 65536",
    ))
    .unwrap();
    assert_eq!(c.dns_refresh.0, Duration::from_secs(5));
    assert_eq!(c.descope.jwks_max_bytes, 65536);
    for bad in ["0s", "500ms"] {
        let (path, msg) = key_err(&format!("{MINIMAL}dns_refresh: {bad}\n"));
        assert_eq!(path, "dns_refresh");
        assert!(msg.contains("at least 1s"), "{msg}");
    }
    let (path, _) = key_err(&MINIMAL.replace(
        "project_id: P2test",
        "project_id: P2test\n  jwks_max_bytes: 0",
    ));
    assert_eq!(path, "descope.jwks_max_bytes");
    let (path, _) = key_err(&MINIMAL.replace(
        "project_id: P2test",
        "project_id: P2test\n  jwks_max_bytes: 1MiB",
    ));
    assert_eq!(path, "descope.jwks_max_bytes");
}

#[test]
fn client_deadlines_and_connection_limit() {
    let l = parse(MINIMAL).unwrap().limits;
    assert_eq!(l.client_header_timeout.0, Duration::from_secs(10));
    assert_eq!(l.keepalive_timeout.0, Duration::from_secs(60));
    assert_eq!(l.client_body_timeout.0, Duration::from_secs(60));
    assert_eq!(l.client_send_timeout.0, Duration::from_secs(60));
    assert_eq!(
        l.max_connections, None,
        "derived from the open-file limit at start"
    );
    let l = parse(&format!(
        "{MINIMAL}limits: {{client_header_timeout: 1500ms, keepalive_timeout: 5s, \
         client_body_timeout: 2m, client_send_timeout: 3s, max_connections: 20}}\n"
    ))
    .unwrap()
    .limits;
    assert_eq!(l.client_header_timeout.0, Duration::from_millis(1500));
    assert_eq!(l.keepalive_timeout.0, Duration::from_secs(5));
    assert_eq!(l.client_body_timeout.0, Duration::from_secs(120));
    assert_eq!(l.client_send_timeout.0, Duration::from_secs(3));
    assert_eq!(l.max_connections, Some(20));
    for (bad, key, says) in [
        (
            "keepalive_timeout: 0s",
            "limits.keepalive_timeout",
            "whole number",
        ),
        (
            "keepalive_timeout: 1500ms",
            "limits.keepalive_timeout",
            "whole number",
        ),
        (
            "keepalive_timeout: 500ms",
            "limits.keepalive_timeout",
            "at least 1s",
        ),
        (
            "client_header_timeout: 0s",
            "limits.client_header_timeout",
            "more than 0",
        ),
        (
            "client_body_timeout: 0",
            "limits.client_body_timeout",
            "more than 0",
        ),
        (
            "client_body_timeout: soon",
            "limits.client_body_timeout",
            "duration",
        ),
        ("max_connections: 0", "limits.max_connections", "at least 1"),
        ("max_connections: -5", "limits.max_connections", ""),
        (
            "max_connection: 5",
            "limits.max_connection",
            "unknown field",
        ),
    ] {
        let (path, msg) = key_err(&format!("{MINIMAL}limits: {{{bad}}}\n"));
        assert_eq!(path, key, "{bad}: {msg}");
        assert!(msg.contains(says), "{bad}: {msg}");
    }
}
