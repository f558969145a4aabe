//! Unit tests of `original.rs`: what each ingress sends, read back; disagreement refused.

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn read(
    target: &str,
    pairs: &[(&str, &str)],
) -> Result<(Protocol, String, String, String), String> {
    from_http(&Method::GET, target.as_bytes(), &headers(pairs), "/envoy")
        .map(|(p, o)| {
            (
                p,
                o.method.to_string(),
                String::from_utf8(o.target).unwrap(),
                o.host.to_str().unwrap().to_owned(),
            )
        })
        .map_err(|a| a.reason.to_owned())
}

#[test]
fn each_ingress_is_read_from_its_own_headers() {
    let nginx = read(
        "/auth",
        &[
            ("x-original-method", "POST"),
            ("x-original-uri", "/api/x?q=1"),
            ("x-forwarded-host", "app.example"),
        ],
    );
    assert_eq!(
        nginx,
        Ok((
            Protocol::Nginx,
            "POST".into(),
            "/api/x?q=1".into(),
            "app.example".into()
        ))
    );
    let traefik = read(
        "/",
        &[
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/api/y"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-proto", "https"),
        ],
    );
    assert_eq!(
        traefik,
        Ok((
            Protocol::Traefik,
            "DELETE".into(),
            "/api/y".into(),
            "app.example".into()
        ))
    );
    let envoy = read("/envoy/api/z?x=1", &[("host", "app.example")]);
    assert_eq!(
        envoy,
        Ok((
            Protocol::EnvoyHttp,
            "GET".into(),
            "/api/z?x=1".into(),
            "app.example".into()
        ))
    );
    assert_eq!(
        read("/envoy", &[("host", "h")]).map(|r| r.2),
        Ok("/".into())
    );
    assert_eq!(
        read("/envoy?a", &[("host", "h")]).map(|r| r.2),
        Ok("/?a".into())
    );
    // `/envoyx` is not under the prefix: it needs the headers.
    assert_eq!(
        read("/envoyx", &[("host", "h")]),
        Err("original_missing".into())
    );
}

#[test]
fn ingress_nginx_is_read_from_its_original_url() {
    // What ingress-nginx's auth location sends (its `Host` is the auth service's).
    let sent = [
        ("host", "extoken.svc"),
        ("x-original-url", "https://app.example/api/x;p?q=1"),
        ("x-original-method", "PUT"),
        ("x-auth-request-redirect", "/api/x;p?q=1"),
    ];
    assert_eq!(
        read("/auth", &sent),
        Ok((
            Protocol::IngressNginx,
            "PUT".into(),
            "/api/x;p?q=1".into(),
            "app.example".into()
        ))
    );
    // A client's own copies, which ingress-nginx passes on, may only repeat it.
    for spoof in [
        ("x-original-uri", "/public/x"),
        ("x-forwarded-uri", "/public/x"),
        ("x-forwarded-host", "other.example"),
        ("x-forwarded-method", "GET"),
    ] {
        let both = [&sent[..], &[spoof]].concat();
        assert_eq!(
            read("/auth", &both),
            Err("ambiguous_original".into()),
            "{spoof:?}"
        );
    }
    let agreeing = [&sent[..], &[("x-forwarded-host", "app.example")]].concat();
    assert!(read("/auth", &agreeing).is_ok());
    for bad in [
        "app.example/api",
        "ftp://app.example/api",
        "https://app.example",
        "https:///api",
        "https://app.example?x/api",
        "https://app.example#/api",
    ] {
        let h = [("x-original-url", bad), ("x-original-method", "GET")];
        assert_eq!(read("/auth", &h), Err("bad_original_url".into()), "{bad}");
    }
    // Beside Envoy's request line, a client's X-Original-URL must agree with it too.
    let envoy = [("host", "h"), ("x-original-url", "http://h/public")];
    assert_eq!(read("/envoy/api", &envoy), Err("ambiguous_original".into()));
    let envoy = [("host", "h"), ("x-original-url", "http://other/api")];
    assert_eq!(read("/envoy/api", &envoy), Err("ambiguous_original".into()));
}

#[test]
fn sources_that_disagree_are_refused_not_ranked() {
    let base = [("x-forwarded-host", "h"), ("x-original-method", "GET")];
    let spoofed = [
        &base[..],
        &[
            ("x-original-uri", "/api/admin"),
            ("x-forwarded-uri", "/public"),
        ],
    ]
    .concat();
    assert_eq!(read("/auth", &spoofed), Err("ambiguous_original".into()));
    let same = [
        &base[..],
        &[("x-original-uri", "/api"), ("x-forwarded-uri", "/api")],
    ]
    .concat();
    assert_eq!(read("/auth", &same).map(|r| r.2), Ok("/api".into()));
    let methods = [
        ("x-forwarded-host", "h"),
        ("x-original-uri", "/"),
        ("x-original-method", "GET"),
        ("x-forwarded-method", "POST"),
    ];
    assert_eq!(read("/auth", &methods), Err("ambiguous_original".into()));
    let twice = [
        ("x-forwarded-host", "h"),
        ("x-original-method", "GET"),
        ("x-original-uri", "/a"),
        ("x-original-uri", "/b"),
    ];
    assert_eq!(read("/auth", &twice), Err("ambiguous_original".into()));
    // Envoy's request line against a client's header that Envoy let through.
    assert_eq!(
        read(
            "/envoy/api",
            &[("host", "h"), ("x-forwarded-uri", "/public")]
        ),
        Err("ambiguous_original".into())
    );
    assert_eq!(
        read(
            "/envoy/api",
            &[("host", "h"), ("x-original-method", "POST")]
        ),
        Err("ambiguous_original".into())
    );
}

#[test]
fn what_is_missing_is_refused() {
    assert_eq!(
        read(
            "/auth",
            &[("x-original-uri", "/a"), ("x-forwarded-host", "h")]
        ),
        Err("original_missing".into())
    );
    assert_eq!(
        read(
            "/auth",
            &[("x-original-method", "GET"), ("x-forwarded-host", "h")]
        ),
        Err("original_missing".into())
    );
    assert_eq!(
        read(
            "/auth",
            &[("x-original-method", "GET"), ("x-original-uri", "/a")]
        ),
        Err("original_missing".into())
    );
    assert_eq!(
        read(
            "/auth",
            &[
                ("x-original-method", "G ET"),
                ("x-original-uri", "/a"),
                ("x-forwarded-host", "h")
            ]
        ),
        Err("bad_method".into())
    );
}
