use http::HeaderMap;

use super::*;
use crate::rewrite::{apply, Peer, Plan};

/// The family a client may try to spoof, beyond the five extoken always sets.
const OVERRIDES: [(&str, &str); 10] = [
    ("x-forwarded-port", "1"),
    ("x-forwarded-prefix", "/admin"),
    ("x-forwarded-server", "internal"),
    ("x-forwarded-ssl", "on"),
    ("x-forwarded-uri", "/admin"),
    ("x-forwarded-method", "DELETE"),
    ("x-original-url", "/admin"),
    ("x-original-uri", "/admin"),
    ("x-original-method", "DELETE"),
    ("x-rewrite-url", "/admin"),
];

fn host() -> HeaderValue {
    HeaderValue::from_static("app.example.com")
}

/// An `auth: none` plan from an untrusted IPv4 peer on listener port 8443.
fn plan(host: &HeaderValue) -> Plan<'_> {
    Plan {
        host,
        token: None,
        drop_authorization: false,
        strip_cookies: &[],
        strip_headers: &[],
        drop_underscore_headers: true,
        peer: Peer {
            addr: Some("203.0.113.7".parse().unwrap()),
            trusted: false,
            tls: false,
            port: Some(8443),
        },
        request_id: None,
        traceparent: None,
    }
}

fn all(m: &HeaderMap, name: &str) -> Vec<String> {
    m.get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn ip_text(ip: IpAddr) -> String {
    String::from_utf8_lossy(IpText::new(ip).as_ref()).into_owned()
}

#[test]
fn ipv4_text_is_what_display_writes() {
    for ip in [
        "0.0.0.0",
        "1.2.3.4",
        "10.20.30.40",
        "100.200.250.255",
        "127.0.0.1",
        "9.99.199.255",
    ] {
        let a: IpAddr = ip.parse().unwrap();
        assert_eq!(ip_text(a), a.to_string());
    }
}

#[test]
fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let mut m = HeaderMap::new();
    m.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    m.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
    m.insert(
        "x-forwarded-host",
        HeaderValue::from_static("admin.example.com"),
    );
    m.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    m.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
    let h = host();
    apply(&mut m, &plan(&h));
    assert_eq!(all(&m, "x-forwarded-for"), ["203.0.113.7"]);
    assert_eq!(all(&m, "x-real-ip"), ["203.0.113.7"]);
    assert_eq!(all(&m, "x-forwarded-host"), ["app.example.com"]);
    assert_eq!(all(&m, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(&m, "x-forwarded-port"), ["8443"]);
    assert_eq!(
        all(&m, "forwarded"),
        [r#"for=203.0.113.7;host="app.example.com";proto=http"#]
    );
}

/// Every override a framework might route on is gone from an untrusted peer (each line of it),
/// `X-Forwarded-Port` is the listener's, and nothing else of the request is touched.
#[test]
fn the_whole_family_from_an_untrusted_peer_is_removed() {
    let mut m = HeaderMap::new();
    for (n, v) in OVERRIDES {
        m.append(n, HeaderValue::from_static(v));
        m.append(n, HeaderValue::from_static(v));
    }
    for (n, v) in [
        ("x-forwarded", "kept"),
        ("x-original", "kept"),
        ("x-forwarded-portx", "kept"),
        ("x-rewrite-urls", "kept"),
        ("accept", "*/*"),
    ] {
        m.insert(n, HeaderValue::from_static(v));
    }
    let h = host();
    apply(&mut m, &plan(&h));
    for (n, _) in OVERRIDES.iter().skip(1) {
        assert!(m.get(*n).is_none(), "{n}");
    }
    assert_eq!(all(&m, "x-forwarded-port"), ["8443"]);
    for n in [
        "x-forwarded",
        "x-original",
        "x-forwarded-portx",
        "x-rewrite-urls",
    ] {
        assert_eq!(all(&m, n), ["kept"], "{n}");
    }
    assert_eq!(all(&m, "accept"), ["*/*"]);
    // A listener without a port (not an inet socket): the client's is removed, none is set.
    let mut m = HeaderMap::new();
    m.insert("x-forwarded-port", HeaderValue::from_static("1"));
    let mut p = plan(&h);
    p.peer.port = None;
    apply(&mut m, &p);
    assert!(m.get("x-forwarded-port").is_none());
}

/// With `underscore_headers: allow`, the `_` twins a CGI/WSGI backend reads as the real names go
/// too (every one of the family, the replaced ones included); other underscore names pass.
#[test]
fn underscore_twins_of_the_family_are_removed_when_allowed() {
    let twins = [
        "x_original_url",
        "x-original_url",
        "x_forwarded_prefix",
        "x_rewrite_url",
        "x_forwarded_port",
        "x_forwarded_for",
        "x_forwarded_host",
        "x_real_ip",
    ];
    let mut m = HeaderMap::new();
    for n in twins {
        m.insert(n, HeaderValue::from_static("/admin"));
    }
    m.insert("x_other", HeaderValue::from_static("kept"));
    m.insert("x_original_urlx", HeaderValue::from_static("kept"));
    let h = host();
    let mut p = plan(&h);
    p.drop_underscore_headers = false;
    apply(&mut m, &p);
    for n in twins {
        assert!(m.get(n).is_none(), "{n}");
    }
    assert_eq!(all(&m, "x_other"), ["kept"]);
    assert_eq!(all(&m, "x_original_urlx"), ["kept"]);
}

#[test]
fn a_trusted_proxy_is_appended_to_the_chain() {
    let mut m = HeaderMap::new();
    m.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
    m.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
    m.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    m.insert("forwarded", HeaderValue::from_static("for=198.51.100.1"));
    let h = host();
    let mut p = plan(&h);
    p.peer = Peer {
        addr: Some("::ffff:10.0.0.3".parse().unwrap()),
        trusted: true,
        tls: false,
        port: Some(8443),
    };
    apply(&mut m, &p);
    assert_eq!(
        all(&m, "x-forwarded-for"),
        ["198.51.100.1, 10.0.0.2, 10.0.0.3"]
    );
    assert_eq!(all(&m, "x-forwarded-proto"), ["https"], "kept");
    assert_eq!(all(&m, "x-forwarded-host"), ["app.example.com"], "added");
    assert_eq!(all(&m, "x-forwarded-port"), ["8443"], "added");
    assert_eq!(all(&m, "forwarded"), ["for=198.51.100.1, for=10.0.0.3"]);
}

/// A trusted proxy's overrides (and their twins) are its to send: kept as they are, its
/// `X-Forwarded-Port` too.
#[test]
fn a_trusted_proxy_keeps_the_whole_family() {
    let mut m = HeaderMap::new();
    for (n, v) in OVERRIDES {
        m.insert(n, HeaderValue::from_static(v));
    }
    m.insert("x_original_url", HeaderValue::from_static("/twin"));
    let h = host();
    let mut p = plan(&h);
    p.peer.trusted = true;
    p.drop_underscore_headers = false;
    apply(&mut m, &p);
    for (n, v) in OVERRIDES {
        assert_eq!(all(&m, n), [v], "{n}");
    }
    assert_eq!(all(&m, "x_original_url"), ["/twin"]);
}

#[test]
fn ipv6_peers_are_quoted_in_forwarded() {
    let mut m = HeaderMap::new();
    let h = host();
    let mut p = plan(&h);
    p.peer.addr = Some("2001:db8::1".parse().unwrap());
    apply(&mut m, &p);
    assert_eq!(all(&m, "x-forwarded-for"), ["2001:db8::1"]);
    assert_eq!(
        all(&m, "forwarded"),
        [r#"for="[2001:db8::1]";host="app.example.com";proto=http"#]
    );
}

/// The port value is kept per thread; another port is not served the last one.
#[test]
fn port_values_follow_the_port() {
    assert_eq!(port_value(8443), "8443");
    assert_eq!(port_value(8443), "8443");
    assert_eq!(port_value(80), "80");
    assert_eq!(port_value(65535), "65535");
}

/// The classifier agrees with the list, whatever the case of underscores and lengths.
#[test]
fn the_classifier_matches_exactly_the_family() {
    for f in REMOVED.iter() {
        assert!(untrusted_forwarding(f, false), "{f}");
        let twin = HeaderName::from_bytes(f.as_str().replace('-', "_").as_bytes()).unwrap();
        assert!(untrusted_forwarding(&twin, true), "{twin}");
        assert!(!untrusted_forwarding(&twin, false), "{twin}");
    }
    for n in [
        "x-forwarded-for",
        "x-request-id",
        "x-forwarded-po",
        "forwarded",
        "x",
        "x-",
        "host",
    ] {
        let n = HeaderName::from_static(n);
        assert!(!untrusted_forwarding(&n, true), "{n}");
    }
}
