use http::header::{CACHE_CONTROL, SET_COOKIE};
use http::HeaderMap;
use proptest::prelude::*;

use super::*;

static RID: HeaderValue = HeaderValue::from_static("rid-1");

fn strip() -> Vec<String> {
    vec!["DS".into(), "DSR".into()]
}

fn host() -> HeaderValue {
    HeaderValue::from_static("app.example.com")
}

fn plan<'a>(host: &'a HeaderValue, token: Option<&'a Rewrite>, strip: &'a [String]) -> Plan<'a> {
    Plan {
        host,
        token,
        drop_authorization: false,
        strip_cookies: strip,
        strip_headers: &[],
        drop_underscore_headers: true,
        peer: Peer {
            addr: Some("203.0.113.7".parse().unwrap()),
            trusted: false,
            tls: false,
            port: Some(8443),
        },
        request_id: Some(&RID),
        traceparent: None,
    }
}

fn all(m: &HeaderMap, name: &str) -> Vec<String> {
    m.get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[test]
fn strips_only_descope_cookies() {
    let v = HeaderValue::from_static("a=1; DS=x; b=2;DSR=y");
    assert_eq!(strip_cookies(&v, &strip()).unwrap(), "a=1; b=2");
    assert_eq!(
        strip_cookies(&HeaderValue::from_static("DS=x; DSR=y"), &strip()),
        None
    );
    let keep = HeaderValue::from_static("DSX=1; xDS=2");
    assert_eq!(strip_cookies(&keep, &strip()).unwrap(), keep);
}

#[test]
fn strips_next_to_non_ascii_bytes() {
    let v = HeaderValue::from_bytes(b"name=caf\xc3\xa9; DS=tok; DSR=r; x=\xff").unwrap();
    let kept = strip_cookies(&v, &strip()).unwrap();
    assert_eq!(kept.as_bytes(), b"name=caf\xc3\xa9; x=\xff");
}

#[test]
fn apply_sets_header_and_cleans_cookies() {
    let mut m = HeaderMap::new();
    m.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer descope-jwt"),
    );
    m.append(COOKIE, HeaderValue::from_static("DS=x"));
    m.append(COOKIE, HeaderValue::from_static("theme=dark; DSR=y"));
    let tok = ExternalToken::new("legacy.token").unwrap();
    let rw = Rewrite {
        header: HeaderName::from_static("x-legacy"),
        value: auth_value("", &tok).unwrap(),
        cache_key: None,
        identity: vec![],
        session_exp: u64::MAX,
        set_cookie: vec![],
    };
    let (h, s) = (host(), strip());
    let mut p = plan(&h, Some(&rw), &s);
    p.drop_authorization = true;
    apply(&mut m, &p);
    assert_eq!(m.get("x-legacy").unwrap(), "legacy.token");
    assert!(m.get(AUTHORIZATION).is_none());
    assert_eq!(all(&m, "cookie"), vec!["theme=dark"]);
    assert_eq!(m.get(HOST).unwrap(), "app.example.com");
    assert_eq!(m.get("x-request-id").unwrap(), "rid-1");
}

#[test]
fn underscore_twins_are_dropped() {
    let mut m = HeaderMap::new();
    m.insert("x_external_token", HeaderValue::from_static("forged"));
    m.insert("x-other", HeaderValue::from_static("kept"));
    let (h, s) = (host(), strip());
    let mut p = plan(&h, None, &s);
    apply(&mut m, &p);
    assert!(m.get("x_external_token").is_none());
    assert_eq!(m.get("x-other").unwrap(), "kept");

    m.insert("x_external_token", HeaderValue::from_static("forged"));
    p.drop_underscore_headers = false;
    apply(&mut m, &p);
    assert_eq!(m.get("x_external_token").unwrap(), "forged", "allow");
}

/// A client's copies of identity headers (of any route) go, with every `_` twin, whatever
/// `underscore_headers` says; then the route's own values are set.
#[test]
fn identity_headers_are_the_gateways_alone() {
    let names = [
        HeaderName::from_static("x-user-id"),
        HeaderName::from_static("x-extoken-identity"),
    ];
    let spoofed = || {
        let mut m = HeaderMap::new();
        for (n, v) in [
            ("x-user-id", "forged"),
            ("x_user_id", "forged"),
            ("x-user_id", "forged"),
            ("x_extoken-identity", "forged"),
            ("x-extoken-identity", "forged"),
            ("x-user-idx", "kept"),
            ("x_other", "kept-if-allowed"),
        ] {
            m.append(n, HeaderValue::from_static(v));
        }
        m
    };
    let (h, s) = (host(), strip());
    for drop in [true, false] {
        // `auth: none` (no token, no values): only stripped.
        let mut m = spoofed();
        let mut p = plan(&h, None, &s);
        p.strip_headers = &names;
        p.drop_underscore_headers = drop;
        apply(&mut m, &p);
        let mut left: Vec<&str> = m
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("x-user") || k.starts_with("x_") || k.contains("identity"))
            .collect();
        left.sort();
        let want: &[&str] = if drop {
            &["x-user-idx"]
        } else {
            &["x-user-idx", "x_other"]
        };
        assert_eq!(left, want, "drop_underscore_headers: {drop}");
        // With a token and values: set after the strip.
        let tok = ExternalToken::new("t").unwrap();
        let rw = Rewrite {
            header: AUTHORIZATION,
            value: auth_value("Bearer", &tok).unwrap(),
            cache_key: None,
            identity: vec![(names[0].clone(), HeaderValue::from_static("U2real"))],
            session_exp: u64::MAX,
            set_cookie: vec![],
        };
        let mut m = spoofed();
        p.token = Some(&rw);
        apply(&mut m, &p);
        assert_eq!(all(&m, "x-user-id"), vec!["U2real"]);
        assert!(m.get("x_user_id").is_none() && m.get("x-extoken-identity").is_none());
    }
}

#[test]
fn auth_value_with_scheme() {
    let tok = ExternalToken::new("abc").unwrap();
    assert_eq!(auth_value("Bearer", &tok).unwrap(), "Bearer abc");
}

proptest! {
    /// Whatever bytes a `Cookie` header holds, no stripped cookie survives, every other pair is
    /// kept byte for byte, and extraction finds the session exactly when stripping removes one.
    #[test]
    fn cookie_stripping_is_total(
        pairs in prop::collection::vec(
            (prop::sample::select(vec!["DS", "DSR", "a", "ds", "DSX", " DS", "DS ", ""]),
             prop::collection::vec(prop_oneof![Just(b'x'), Just(b'='), Just(b' '), Just(b'"'), Just(0xc3u8), Just(0xffu8), Just(b',')], 0..6)),
            0..6),
        sep in prop::sample::select(vec!["; ", ";", " ; ", ";;"]),
    ) {
        let mut raw = Vec::new();
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 { raw.extend_from_slice(sep.as_bytes()); }
            raw.extend_from_slice(name.as_bytes());
            raw.push(b'=');
            raw.extend_from_slice(value);
        }
        let Ok(v) = HeaderValue::from_bytes(&raw) else { return Ok(()) };
        let out = strip_cookies(&v, &strip());
        let out_bytes = out.as_ref().map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        for p in crate::extract::cookie_pairs(&out_bytes) {
            prop_assert!(p.name != b"DS" && p.name != b"DSR");
        }
        let before: Vec<_> = crate::extract::cookie_pairs(&raw)
            .filter(|p| p.name != b"DS" && p.name != b"DSR")
            .map(|p| p.raw.to_vec())
            .collect();
        let after: Vec<_> = crate::extract::cookie_pairs(&out_bytes).map(|p| p.raw.to_vec()).collect();
        prop_assert_eq!(before, after);
    }
}

/// pingora's own header type: the client's name case is dropped (one map instead of two), and
/// nothing else of the request changes.
#[test]
fn pingora_header_loses_only_the_name_case() {
    use pingora::http::RequestHeader;
    let mut req = RequestHeader::build("POST", b"/api/a%20b?q=1&r=%2F", None).unwrap();
    req.set_version(http::Version::HTTP_11);
    req.append_header("X-Custom-Name", "v1").unwrap();
    req.append_header("x-custom-name", "v2").unwrap();
    req.append_header("Content-Type", "text/plain").unwrap();
    req.append_header("Cookie", "DS=x; keep=1").unwrap();
    assert!(req.has_case());
    let (h, s) = (host(), strip());
    apply_to_request(&mut req, &plan(&h, None, &s));
    assert!(!req.has_case());
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.version, http::Version::HTTP_11);
    assert_eq!(req.raw_path(), b"/api/a%20b?q=1&r=%2F");
    let values: Vec<_> = req.headers.get_all("x-custom-name").iter().collect();
    assert_eq!(values, ["v1", "v2"], "repeated lines kept, in order");
    assert_eq!(req.headers.get("cookie").unwrap(), "keep=1");
    let mut wire = bytes::BytesMut::new();
    req.header_to_h1_wire(&mut wire);
    let wire = String::from_utf8(wire.to_vec()).unwrap();
    // Other names lower-cased; pingora writes standard ones in their usual spelling.
    assert!(
        wire.contains("x-custom-name: v1\r\nx-custom-name: v2\r\n"),
        "{wire}"
    );
    assert!(wire.contains("Content-Type: text/plain\r\n"), "{wire}");
    assert!(wire.contains("Host: app.example.com\r\n"), "{wire}");
}

/// A target the URI cannot reproduce (absolute-form) is never traded for the lower-case names.
#[test]
fn pingora_header_with_a_verbatim_target_keeps_everything() {
    use pingora::http::RequestHeader;
    let mut req = RequestHeader::build("GET", b"http://a.example/x?y", None).unwrap();
    req.append_header("X-Custom-Name", "v").unwrap();
    let (h, s) = (host(), strip());
    apply_to_request(&mut req, &plan(&h, None, &s));
    assert!(req.has_case());
    assert_eq!(req.raw_path(), b"http://a.example/x?y");
    let mut wire = bytes::BytesMut::new();
    req.header_to_h1_wire(&mut wire);
    assert!(String::from_utf8_lossy(&wire).contains("X-Custom-Name: v\r\n"));
}

/// A refreshed session's response: the cookies appended to the backend's own, and no shared cache
/// may keep it (`public` and `s-maxage` go, `private` is first, other directives stay).
#[test]
fn a_refreshed_response_is_private_and_sets_the_cookies() {
    let cookies = [
        HeaderValue::from_static("DS=new; Path=/"),
        HeaderValue::from_static("DSR=r; Path=/; HttpOnly"),
    ];
    for (backend, want) in [
        (None, "private"),
        (Some("public, max-age=600"), "private, max-age=600"),
        (Some("s-maxage=60, max-age=5"), "private, max-age=5"),
        (Some("no-store"), "private, no-store"),
        (
            Some("Private, S-MaxAge=1,  must-revalidate"),
            "private, must-revalidate",
        ),
    ] {
        let mut m = HeaderMap::new();
        m.append(SET_COOKIE, HeaderValue::from_static("theme=dark"));
        if let Some(b) = backend {
            m.insert(CACHE_CONTROL, HeaderValue::from_static(b));
        }
        refreshed_headers(&mut m, &cookies);
        assert_eq!(m.get_all(CACHE_CONTROL).iter().count(), 1);
        assert_eq!(m.get(CACHE_CONTROL).unwrap(), want, "{backend:?}");
        let set: Vec<_> = m.get_all(SET_COOKIE).iter().collect();
        assert_eq!(
            set,
            ["theme=dark", "DS=new; Path=/", "DSR=r; Path=/; HttpOnly"]
        );
    }
}

/// With traces on, the backend gets extoken's `traceparent` instead of the client's (one value,
/// never both); without, the client's passes as it came.
#[test]
fn traceparent_replaces_the_clients() {
    let ours = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (h, s) = (host(), strip());
    let mut req = HeaderMap::new();
    req.append("traceparent", HeaderValue::from_static(theirs));
    req.append("traceparent", HeaderValue::from_static("junk"));
    let mut off = req.clone();
    apply(&mut off, &plan(&h, None, &s));
    assert_eq!(all(&off, "traceparent"), [theirs, "junk"]);
    let on = Plan {
        traceparent: Some(ours.clone()),
        ..plan(&h, None, &s)
    };
    apply(&mut req, &on);
    assert_eq!(all(&req, "traceparent"), [ours.to_str().unwrap()]);
}
