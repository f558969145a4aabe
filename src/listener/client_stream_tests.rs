//! The adapter's deadlines over an in-memory pipe.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn the_reply_is_a_complete_408() {
    let r = String::from_utf8(timeout_reply(Duration::from_secs(10))).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{head}"
    );
    assert!(head.contains("connection: close"));
    assert!(head.contains(&format!("content-length: {}", body.len())));
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["error"], "request_timeout");
    assert!(j["error_description"].as_str().unwrap().contains("10s"));
}

/// A client stream over an in-memory pipe: the adapter, the peer's end, the shared state.
fn pipe(timeout: Duration) -> (ClientStream, tokio::io::DuplexStream, Arc<Conn>) {
    let (ours, theirs) = tokio::io::duplex(4096);
    let conn = Arc::new(Conn::default());
    let s = ClientStream::new(Box::new(ours), conn.clone(), timeout, Instant::now());
    (s, theirs, conn)
}

/// Reads until the adapter says the deadline passed (the read itself must stay pending);
/// false if that did not happen within 5 s.
async fn until_expired(s: &mut ClientStream, conn: &Conn) -> bool {
    let mut buf = [0u8; 64];
    tokio::select! {
        _ = conn.expired.notified() => true,
        r = s.read(&mut buf) => panic!("the read returned {r:?}"),
        _ = tokio::time::sleep(Duration::from_secs(5)) => false,
    }
}

const SHORT: Duration = Duration::from_millis(200);

#[tokio::test]
async fn a_late_head_gets_408_and_a_silent_client_nothing() {
    let (mut s, mut peer, conn) = pipe(SHORT);
    peer.write_all(b"GET / HT").await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).await.unwrap(), 8);
    assert!(until_expired(&mut s, &conn).await);
    let mut out = Vec::new();
    peer.read_to_end(&mut out).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 408 "), "{out:?}");

    let (mut s, mut peer, conn) = pipe(SHORT);
    assert!(until_expired(&mut s, &conn).await);
    let mut out = Vec::new();
    peer.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty(), "nothing was asked, nothing is answered");
}

#[tokio::test]
async fn bodies_and_idle_waits_have_no_head_deadline() {
    let (mut s, mut peer, conn) = pipe(SHORT);
    conn.phase.store(REQUEST, Ordering::Release);
    tokio::time::sleep(SHORT * 2).await;
    peer.write_all(b"body").await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).await.unwrap(), 4);

    // Between requests: no deadline until the first byte, then one from that byte.
    conn.phase.store(IDLE, Ordering::Release);
    let (n, _) = tokio::join!(s.read(&mut buf), async {
        tokio::time::sleep(SHORT * 2).await;
        peer.write_all(b"G").await.unwrap();
    });
    assert_eq!(n.unwrap(), 1);
    assert_eq!(conn.phase.load(Ordering::Acquire), HEAD);
    let started = Instant::now();
    assert!(until_expired(&mut s, &conn).await);
    assert!(started.elapsed() >= SHORT / 2, "{:?}", started.elapsed());
    let mut out = [0u8; 13];
    peer.read_exact(&mut out).await.unwrap();
    assert_eq!(&out, b"HTTP/1.1 408 ");
}

/// An HTTP/2 adapter over a pipe.
fn h2_pipe(timeout: Duration) -> (ClientStream, tokio::io::DuplexStream, Arc<Conn>) {
    let (ours, theirs) = tokio::io::duplex(4096);
    let conn = Arc::new(Conn::new(None, true));
    let s = ClientStream::new(Box::new(ours), conn.clone(), timeout, Instant::now());
    (s, theirs, conn)
}

#[tokio::test]
async fn h2_the_deadline_ends_with_the_first_settings_and_no_408_is_written() {
    // The preface, then a SETTINGS frame of 6 bytes in two pieces: no deadline after it.
    let (mut s, mut peer, conn) = h2_pipe(SHORT);
    let mut hello = crate::listener::PREFACE.to_vec();
    hello.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0]);
    peer.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 64];
    let mut read = 0;
    while read < hello.len() {
        read += s.read(&mut buf).await.unwrap();
    }
    assert!(
        s.due.is_some(),
        "three bytes of the SETTINGS payload are missing"
    );
    peer.write_all(&[0, 0, 100]).await.unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap(), 3);
    assert!(s.due.is_none());
    tokio::select! {
        _ = conn.expired.notified() => panic!("expired after its SETTINGS"),
        r = s.read(&mut buf) => panic!("the read returned {r:?}"),
        _ = tokio::time::sleep(SHORT * 3) => {}
    }

    // The preface alone: closed at the deadline, with nothing written.
    let (mut s, mut peer, conn) = h2_pipe(SHORT);
    peer.write_all(crate::listener::PREFACE).await.unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap(), 24);
    assert!(until_expired(&mut s, &conn).await);
    let mut out = Vec::new();
    peer.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty(), "{out:?}");
}

#[tokio::test]
async fn h2_a_wrong_preface_is_closed_at_once_and_silently() {
    let (mut s, mut peer, conn) = h2_pipe(Duration::from_secs(60));
    peer.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert!(
        until_expired(&mut s, &conn).await,
        "closed long before the deadline"
    );
    let mut out = Vec::new();
    peer.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty(), "{out:?}");
}

#[tokio::test]
async fn a_client_gone_mid_head_is_closed_quietly() {
    // pingora logs an ERROR for a head cut short: the adapter ends the connection itself.
    let (mut s, mut peer, conn) = pipe(Duration::from_secs(60));
    peer.write_all(b"GET / HT").await.unwrap();
    AsyncWriteExt::shutdown(&mut peer).await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(s.read(&mut buf).await.unwrap(), 8);
    assert!(
        until_expired(&mut s, &conn).await,
        "closed long before the deadline"
    );
    let mut out = Vec::new();
    peer.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty(), "{out:?}");

    // Before any byte, an end of stream is pingora's to see (it closes quietly).
    let (mut s, mut peer, _conn) = pipe(Duration::from_secs(60));
    AsyncWriteExt::shutdown(&mut peer).await.unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap(), 0);
}
