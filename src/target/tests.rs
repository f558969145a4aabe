use proptest::prelude::*;

use super::*;

fn path(raw: &str) -> Result<String, BadTarget> {
    parse(raw.as_bytes(), EscapedSlashes::Reject)
        .map(|p| String::from_utf8(p.target.as_bytes().to_vec()).unwrap())
}

#[test]
fn canonical_forms() {
    for (raw, want) in [
        ("/", "/"),
        ("/api/x", "/api/x"),
        ("//api/x", "/api/x"),
        ("/./api/x", "/api/x"),
        ("/%61pi/x", "/api/x"),
        ("/public/../api/x", "/api/x"),
        ("/public/%2e%2e/api/x", "/api/x"),
        ("/public/.%2E/api/x", "/api/x"),
        ("/public/%2E./api/x", "/api/x"),
        ("/api/", "/api/"),
        ("/api//", "/api/"),
        ("/api/.", "/api/"),
        ("/api/..", "/"),
        ("/a/b/../c/./d/", "/a/c/d/"),
        ("/a?x=/../%2f&y=..", "/a?x=/../%2f&y=.."),
        ("/a%3bb;c=d", "/a%3Bb;c=d"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/%7euser", "/~user"),
        ("/a%20b", "/a%20b"),
        ("/..a/.b/a..", "/..a/.b/a.."),
        ("http://h.example/x/../y?q", "/y?q"),
        ("HTTP://h.example", "/"),
        ("https://h.example?q=1", "/?q=1"),
    ] {
        assert_eq!(path(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn refusals() {
    for (raw, why) in [
        ("/api%2fx", BadTarget::EscapedSlash),
        ("/public/..%2Fapi/x", BadTarget::EscapedSlash),
        ("/a%5cb", BadTarget::EscapedSlash),
        ("/public/..\\api/x", BadTarget::Backslash),
        ("/a%00b", BadTarget::Control),
        ("/a%0Ab", BadTarget::Control),
        ("/a%7f", BadTarget::Control),
        ("/a%zz", BadTarget::BadEscape),
        ("/a%2", BadTarget::BadEscape),
        ("/a%", BadTarget::BadEscape),
        ("/..", BadTarget::AboveRoot),
        ("/a/../../b", BadTarget::AboveRoot),
        ("/%2e%2e/x", BadTarget::AboveRoot),
        ("/public/..;/api/x", BadTarget::DotParams),
        ("/public/.;x/api", BadTarget::DotParams),
        ("/a#frag", BadTarget::Fragment),
        ("*", BadTarget::Form),
        ("api/x", BadTarget::Form),
        ("example.com:443", BadTarget::Form),
        ("ftp://h/x", BadTarget::Form),
        ("http:/\\h/x", BadTarget::Form),
        ("http://h\\x/y", BadTarget::Form),
    ] {
        assert_eq!(path(raw), Err(why), "{raw}");
    }
}

#[test]
fn escaped_slashes_can_be_kept() {
    let keep = |raw: &str| {
        parse(raw.as_bytes(), EscapedSlashes::Keep)
            .map(|p| String::from_utf8(p.target.as_bytes().to_vec()).unwrap())
    };
    assert_eq!(keep("/api%2fx").as_deref(), Ok("/api%2Fx"));
    assert_eq!(keep("/a/..%2f..%2fb").as_deref(), Ok("/a/..%2F..%2Fb"));
    assert_eq!(keep("/a%5Cb").as_deref(), Ok("/a%5Cb"));
    assert_eq!(keep("/a\\b"), Err(BadTarget::Backslash), "raw backslash");
}

#[test]
fn absolute_form_gives_its_authority() {
    let p = parse(b"http://Admin.Example.com:80/x", EscapedSlashes::Reject).unwrap();
    assert_eq!(p.authority, Some(&b"Admin.Example.com:80"[..]));
    assert_eq!(p.target.path(), "/x");
    assert_eq!(
        parse(b"/x", EscapedSlashes::Reject).unwrap().authority,
        None
    );
}

#[test]
fn hosts() {
    for (raw, value, name) in [
        (
            "admin.example.com",
            "admin.example.com",
            "admin.example.com",
        ),
        (
            "ADMIN.Example.COM.",
            "admin.example.com",
            "admin.example.com",
        ),
        (
            "admin.example.com.:8080",
            "admin.example.com:8080",
            "admin.example.com",
        ),
        ("a.b:080", "a.b:80", "a.b"),
        ("127.0.0.1:3000", "127.0.0.1:3000", "127.0.0.1"),
        ("[::1]:8080", "[::1]:8080", "::1"),
        ("[FD00::1]", "[fd00::1]", "fd00::1"),
        ("under_score", "under_score", "under_score"),
    ] {
        let h = canonical_host(raw.as_bytes()).unwrap();
        assert_eq!((h.as_str(), h.name()), (value, name), "{raw}");
    }
    for (raw, why) in [
        ("admin.example.com:8x", BadTarget::BadPort),
        ("admin.example.com:", BadTarget::BadPort),
        ("a:0", BadTarget::BadPort),
        ("a:65536", BadTarget::BadPort),
        ("a:000080", BadTarget::BadPort),
        ("a..b", BadTarget::BadHost),
        (".a", BadTarget::BadHost),
        ("a.b..", BadTarget::BadHost),
        ("", BadTarget::BadHost),
        ("u@a.b", BadTarget::BadHost),
        ("a b", BadTarget::BadHost),
        ("a/b", BadTarget::BadHost),
        ("[::1", BadTarget::BadHost),
        ("[::1]x", BadTarget::BadHost),
        ("[v1.x]", BadTarget::BadHost),
        ("a.b:80:80", BadTarget::BadPort),
        ("caf\u{e9}.com", BadTarget::BadHost),
    ] {
        assert_eq!(canonical_host(raw.as_bytes()), Err(why), "{raw}");
    }
}

/// Bytes a hostile path is made of: separators, dots, escapes of each, and ordinary characters.
fn path_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/", "//", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "%3b", "a", "api", "public",
        "%61", "%", "%2", "%zz", "%00", "~", "%7e", "?", "é", "%c3%a9", "x y", "%25", "#",
    ])
}

fn hostile_path() -> impl Strategy<Value = String> {
    prop::collection::vec(path_piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
}

fn prefix() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["/", "/api", "/api/", "/public", "/a/b"])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No input panics; what comes out is canonical (starts with `/`, no dot-segment, no `//`,
    /// only ASCII) and canonicalizing it again changes nothing.
    #[test]
    fn canonical_is_canonical_and_idempotent(raw in hostile_path(), keep in any::<bool>()) {
        let mode = if keep { EscapedSlashes::Keep } else { EscapedSlashes::Reject };
        if let Ok(p) = parse(raw.as_bytes(), mode) {
            let path = p.target.path();
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains("//"), "{path}");
            prop_assert!(path.is_ascii());
            for seg in path.split('/') {
                prop_assert!(seg != "." && seg != "..", "{path}");
            }
            let again = parse(p.target.as_bytes(), mode).expect("canonical parses");
            prop_assert_eq!(again.target.as_bytes(), p.target.as_bytes());
        }
    }

    /// Arbitrary bytes never panic the target or host parsers.
    #[test]
    fn no_input_panics(raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse(&raw, EscapedSlashes::Reject);
        let _ = parse(&raw, EscapedSlashes::Keep);
        if let Ok(h) = canonical_host(&raw) {
            prop_assert_eq!(canonical_host(h.as_str().as_bytes()).ok(), Some(h.clone()));
        }
    }

    /// A route prefix matches the canonical path iff the path is the prefix or continues it with
    /// a new segment — whatever encoding the client used to write it.
    #[test]
    fn routing_follows_the_canonical_path(raw in hostile_path(), prefix in prefix()) {
        if let Ok(p) = parse(raw.as_bytes(), EscapedSlashes::Reject) {
            let path = p.target.path();
            let expected = path == prefix
                || prefix.ends_with('/') && path.starts_with(prefix)
                || path.starts_with(&format!("{prefix}/"));
            prop_assert_eq!(crate::route::prefix_matches(prefix, path), expected, "{} {}", prefix, path);
        }
    }
}

#[test]
fn path_parameters_are_left_out_of_the_routing_path() {
    let routing = |raw: &str| {
        let t = parse(raw.as_bytes(), EscapedSlashes::Reject)
            .unwrap()
            .target;
        (
            t.path().to_string(),
            t.routing_path().to_string(),
            t.has_parameters(),
        )
    };
    for (raw, forwarded, routed) in [
        ("/api;x/admin", "/api;x/admin", "/api/admin"),
        ("/api;/admin", "/api;/admin", "/api/admin"),
        (
            "/api;jsessionid=0/admin",
            "/api;jsessionid=0/admin",
            "/api/admin",
        ),
        ("/%61pi;x/admin", "/api;x/admin", "/api/admin"),
        ("/api;a=b;c=d/admin", "/api;a=b;c=d/admin", "/api/admin"),
        ("/api;", "/api;", "/api"),
        ("/a;b?q=;c", "/a;b", "/a"),
    ] {
        assert_eq!(
            routing(raw),
            (forwarded.to_string(), routed.to_string(), true),
            "{raw}"
        );
    }
    // A `..` removes the segment with its parameters, before routing sees either.
    assert_eq!(
        routing("/api;x/../admin"),
        ("/admin".into(), "/admin".into(), false)
    );
    assert_eq!(path("/;x/.."), Err(BadTarget::AboveRoot));
    // A segment that is only parameters is an empty segment, as a servlet container reads it.
    for (raw, want) in [
        ("/;x/api", "/api"),
        ("/;x", "/"),
        ("/api/;x", "/api/"),
        ("/api/;/..", "/"),
        ("/api/;x=1;y/admin", "/api/admin"),
    ] {
        assert_eq!(routing(raw), (want.into(), want.into(), false), "{raw}");
    }
    // An escaped `;` is a byte of the segment, not a parameter.
    assert_eq!(
        routing("/api%3Bx/admin"),
        ("/api%3Bx/admin".into(), "/api%3Bx/admin".into(), false)
    );
    // Dot-segments with parameters stay refused: removing `;x` would make a new `..`.
    assert_eq!(path("/api/..;x/admin"), Err(BadTarget::DotParams));
}

#[test]
fn path_parameter_modes() {
    let target = |raw: &str, mode| {
        let mut t = parse(raw.as_bytes(), EscapedSlashes::Reject)
            .unwrap()
            .target;
        t.apply_parameters(mode)
            .map(|()| String::from_utf8(t.as_bytes().to_vec()).unwrap())
    };
    let raw = "/api;x/orders;v=1?q=1;2";
    assert_eq!(
        target(raw, PathParameters::Keep).as_deref(),
        Ok("/api;x/orders;v=1?q=1;2")
    );
    assert_eq!(
        target(raw, PathParameters::Strip).as_deref(),
        Ok("/api/orders?q=1;2")
    );
    assert_eq!(
        target(raw, PathParameters::Reject),
        Err(BadTarget::PathParameters)
    );
    // `reject` refuses a raw `;` even where canonicalization removed it.
    for raw in ["/;x/api", "/a;x/../b", "/api/;"] {
        assert_eq!(
            target(raw, PathParameters::Reject),
            Err(BadTarget::PathParameters),
            "{raw}"
        );
    }
    for mode in [
        PathParameters::Keep,
        PathParameters::Strip,
        PathParameters::Reject,
    ] {
        assert_eq!(target("/a%3Bb?x;y", mode).as_deref(), Ok("/a%3Bb?x;y"));
    }
    let mut t = parse(b"/a;b?q", EscapedSlashes::Reject).unwrap().target;
    t.apply_parameters(PathParameters::Strip).unwrap();
    assert_eq!(
        (t.path(), t.routing_path(), t.query()),
        ("/a", "/a", &b"q"[..])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever a path's `;params`, the route chosen is the route of the same path without them
    /// (the path a servlet container maps).
    #[test]
    fn the_route_never_depends_on_path_parameters(
        segs in proptest::collection::vec(
            ("(api|admin|a|b|x|%61pi|\\.\\.|\\.|)", proptest::option::of("[a-z=;]{0,4}")),
            0..6,
        ),
        trailing in any::<bool>(),
    ) {
        let mut with = String::new();
        let mut without = String::new();
        for (name, params) in &segs {
            with.push('/');
            with.push_str(name);
            without.push('/');
            without.push_str(name);
            if let Some(p) = params {
                with.push(';');
                with.push_str(p);
            }
        }
        if trailing {
            with.push('/');
            without.push('/');
        }
        let table = ["/api/admin", "/api", "/admin", "/a/b", "/"];
        let route = |path: &str| table.iter().find(|p| crate::route::prefix_matches(p, path));
        let a = parse(with.as_bytes(), EscapedSlashes::Reject);
        let b = parse(without.as_bytes(), EscapedSlashes::Reject);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(
                    route(a.target.routing_path()),
                    route(b.target.routing_path()),
                    "{} vs {}", with, without
                );
                prop_assert_eq!(b.target.routing_path(), b.target.path());
            }
            // Parameters on a dot-segment are refused outright, never routed.
            (Err(BadTarget::DotParams), _) => {}
            // `/;x/..` is `/` (the `..` takes the segment `;x`), while `//..` climbs above the
            // root. What matters is what goes upstream: the forwarded path has no dot-segment
            // left, and a servlet container maps it to the route extoken chose.
            (Ok(a), Err(_)) => {
                let forwarded = a.target.path().to_string();
                let servlet = without_parameters(forwarded.as_bytes());
                prop_assert_eq!(route(a.target.routing_path()), route(&servlet), "{}", with);
            }
            (Err(e), Ok(_)) => prop_assert!(false, "{} refused ({:?}), {} accepted", with, e, without),
            (Err(_), Err(_)) => {}
        }
    }
}
