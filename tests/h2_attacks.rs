//! HTTP/2 attacks against the real binary (issue 18, item 7), each on a connection of its own
//! while a well-behaved HTTP/2 client (the bystander) keeps asking on another: rapid reset
//! (CVE-2023-44487), a CONTINUATION flood (the 2024 family), SETTINGS and PING floods from a
//! client that never reads, an HPACK bomb and a zero-window reader of a large reply.
//!
//! For each: the gateway stays up, its resident memory stays bounded, the attack ends (the
//! connection is closed or its stream refused), and every bystander request is answered; the
//! bystander's latencies are printed (p50/p99/max), never asserted (no timing in tests).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const PROJECT: &str = "P2h2AttacksProject000000000";
/// Size of the reply the zero-window reader asks for.
const BIG: usize = 32 << 20;
/// What any one attack may add to the gateway's resident memory.
const RSS_BOUND_KIB: u64 = 48 << 10;

struct Rig {
    gw: GatewayProcess,
    backend: Backend,
    _big: HttpServer,
    _jwks: JwksServer,
}

/// A gateway with `h2c: true`, `client_send_timeout` and `keepalive_timeout` of 2 s: `/big` answers a 32 MiB body, every
/// other path the recording backend; all `auth: none`, so each stream costs the gateway a full
/// proxied request.
async fn rig() -> Rig {
    let key = TestKey::rsa("k", Algorithm::RS256);
    let jwks = JwksServer::start(&[&key]).await;
    let backend = Backend::start().await;
    let body = bytes::Bytes::from(vec![b'x'; BIG]);
    let big = HttpServer::serve(Arc::new(move |_req| {
        let body = body.clone();
        Box::pin(async move { Ok(response(200, "application/octet-stream", body)) })
    }))
    .await;
    let config = ConfigBuilder::new(PROJECT, &jwks.url())
        .route(
            RouteSpec::new("/big", &format!("http://{}", big.addr))
                .name("big")
                .auth_none(),
        )
        .route(RouteSpec::new("/", &backend.url()).name("root").auth_none())
        .set("h2c", true)
        .set(
            "limits",
            json!({"h2_max_concurrent_streams": 100, "client_send_timeout": "2s",
                   "keepalive_timeout": "2s"}),
        );
    let how = Launch {
        admin: true,
        ..Launch::default()
    };
    let gw = GatewayProcess::launch(&config.to_yaml(), how).await;
    Rig {
        gw,
        backend,
        _big: big,
        _jwks: jwks,
    }
}

/// What the attacker's connection received.
#[derive(Debug, Default)]
struct Seen {
    /// The GOAWAY's error code (RFC 9113 §7), if one came.
    goaway: Option<u32>,
    resets: usize,
    headers: usize,
    data_bytes: usize,
    /// The server closed the connection (rather than the watch ending).
    closed: bool,
}

/// Reads the attacker's connection until the server closes it or `limit` passes.
async fn watch(mut r: OwnedReadHalf, limit: Duration) -> Seen {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Seen::default();
    loop {
        match tokio::time::timeout_at(deadline, read_frame(&mut r)).await {
            Ok(Some(f)) => match f.kind {
                0x0 => seen.data_bytes += f.payload.len(),
                0x1 => seen.headers += 1,
                0x3 => seen.resets += 1,
                0x7 if f.payload.len() >= 8 => {
                    let code = &f.payload[4..8];
                    seen.goaway = Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
                }
                _ => {}
            },
            Ok(None) => {
                seen.closed = true;
                return seen;
            }
            Err(_) => return seen,
        }
    }
}

/// An HTTP/2 connection past its handshake: the client's SETTINGS (`settings`: id/value pairs)
/// sent, the server's read and acknowledged.
async fn attacker(
    addr: std::net::SocketAddr,
    settings: &[(u16, u32)],
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let payload: Vec<u8> = settings
        .iter()
        .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
        .collect();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &payload));
    s.write_all(&hello).await.unwrap();
    let first = read_frame(&mut s).await.expect("the server's SETTINGS");
    assert_eq!(first.kind, 0x4);
    s.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
    s.into_split()
}

/// Writes `chunk` again and again until `limit` passes or the server stops taking it; the bytes
/// it took.
async fn flood(w: &mut OwnedWriteHalf, chunk: &[u8], limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    let mut sent = 0;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, w.write_all(chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    sent
}

/// Sequential HTTP/2 GETs on a connection of its own until `stop`; every one must be a 200
/// within 10 s. Their latencies.
async fn bystander(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut send = h2_client(TcpStream::connect(addr).await.unwrap()).await;
    let mut took = Vec::new();
    while !stop.load(Ordering::Relaxed) || took.len() < 5 {
        let t = Instant::now();
        let (status, body) = h2_get(&mut send, "http://api.test/bystander", &[]).await;
        assert_eq!(status, 200, "the bystander was refused: {body}");
        took.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    took
}

/// Runs `attack` while the bystander asks; checks the gateway is up, serving and within its
/// memory bound, and prints what happened. What the attacker saw is returned for the caller's
/// own checks.
async fn under_attack<F>(r: &mut Rig, name: &str, attack: F) -> (Seen, usize)
where
    F: std::future::Future<Output = (Seen, usize)>,
{
    let (rss0, hwm0) = (r.gw.status_kib("VmRSS"), r.gw.status_kib("VmHWM"));
    let stop = Arc::new(AtomicBool::new(false));
    let by = tokio::spawn(bystander(r.gw.addr, stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (seen, sent) = attack.await;
    stop.store(true, Ordering::Relaxed);
    let mut took = by.await.expect("the bystander was answered every time");
    let (rss1, hwm1) = (r.gw.status_kib("VmRSS"), r.gw.status_kib("VmHWM"));
    took.sort_unstable();
    let pct = |p: usize| took[(took.len() * p / 100).min(took.len() - 1)];
    println!(
        "{name}: attacker sent {sent} bytes, saw {seen:?}; bystander {} requests, p50 {:?}, \
         p99 {:?}, max {:?}; gateway VmRSS {rss0} -> {rss1} KiB, VmHWM {hwm0} -> {hwm1} KiB",
        took.len(),
        pct(50),
        pct(99),
        took[took.len() - 1],
    );
    assert!(r.gw.is_running(), "the gateway died:\n{}", r.gw.log());
    assert!(
        hwm1.saturating_sub(rss0) < RSS_BOUND_KIB,
        "{name}: memory grew from {rss0} KiB to a peak of {hwm1} KiB"
    );
    // A new connection is served too.
    assert_eq!(r.gw.get("/after").await.status, 200, "{name}");
    assert_eq!(error_lines(&r.gw.log()), Vec::<&str>::new(), "{name}");
    (seen, sent)
}

fn attacker_requests(r: &Rig, path: &str) -> usize {
    r.backend
        .requests()
        .iter()
        .filter(|q| q.uri == path)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn rapid_reset_is_cut_off_and_the_bystander_is_served() {
    let mut r = rig().await;
    let addr = r.gw.addr;
    let streams = 20_000u32;
    let (seen, sent) = under_attack(&mut r, "rapid reset", async {
        let (rd, mut w) = attacker(addr, &[]).await;
        let watcher = tokio::spawn(watch(rd, Duration::from_secs(8)));
        let mut sent = 0;
        for batch in (1..streams * 2).step_by(2).collect::<Vec<_>>().chunks(100) {
            let mut out = Vec::new();
            for id in batch {
                out.extend(get_headers(*id));
                out.extend(frame(0x3, 0, *id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
            }
            match tokio::time::timeout(Duration::from_secs(2), w.write_all(&out)).await {
                Ok(Ok(())) => sent += out.len(),
                _ => break,
            }
        }
        (watcher.await.unwrap(), sent)
    })
    .await;
    let reached = attacker_requests(&r, "/");
    println!("rapid reset: {reached} of {streams} reset streams reached the backend");
    // The connection is told to calm down (ENHANCE_YOUR_CALM) or closed long before 20,000
    // streams' worth of work is done.
    assert!(seen.goaway.is_some() || seen.closed, "{seen:?}");
    assert!(
        sent < 20_000 * 40,
        "every reset stream was taken: {sent} bytes"
    );
    assert!(reached < 1_000, "{reached} reset streams were proxied");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continuation_flood_is_cut_off() {
    let mut r = rig().await;
    let addr = r.gw.addr;
    let (seen, sent) = under_attack(&mut r, "CONTINUATION flood", async {
        let (rd, mut w) = attacker(addr, &[]).await;
        let watcher = tokio::spawn(watch(rd, Duration::from_secs(6)));
        // HEADERS without END_HEADERS, then CONTINUATION frames of 200-byte fields, forever.
        let mut start = get_headers(1);
        start[4] = 0x1; // END_STREAM only
        w.write_all(&start).await.unwrap();
        let mut field = vec![0x00, 0x03, b'x', b'-', b'a', 0x7f, 200 - 127];
        field.extend([b'b'; 200]);
        let block: Vec<u8> = field.iter().copied().cycle().take(207 * 79).collect();
        let sent = flood(&mut w, &frame(0x9, 0, 1, &block), Duration::from_secs(4)).await;
        (watcher.await.unwrap(), sent)
    })
    .await;
    assert!(seen.goaway.is_some() || seen.closed, "{seen:?}");
    assert!(sent < 64 << 20, "64 MiB of CONTINUATION taken");
    assert_eq!(attacker_requests(&r, "/"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_and_ping_floods_from_a_client_that_never_reads() {
    let mut r = rig().await;
    let addr = r.gw.addr;
    for (name, one) in [
        ("SETTINGS flood", frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])),
        ("PING flood", frame(0x6, 0, 0, &[7; 8])),
    ] {
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        let (seen, _) = under_attack(&mut r, name, async {
            let (rd, mut w) = attacker(addr, &[]).await;
            // Nothing is read while flooding: the server's acknowledgements pile up.
            let sent = flood(&mut w, &batch, Duration::from_secs(4)).await;
            (watch(rd, Duration::from_secs(6)).await, sent)
        })
        .await;
        // Control frames open no stream: the connection is idle, and ends at keepalive_timeout
        // however fast they come.
        assert!(seen.closed, "{name}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hpack_bomb_is_refused_unforwarded() {
    let mut r = rig().await;
    let addr = r.gw.addr;
    let (seen, _) = under_attack(&mut r, "HPACK bomb", async {
        let (rd, mut w) = attacker(addr, &[]).await;
        let watcher = tokio::spawn(watch(rd, Duration::from_secs(4)));
        // A 4,000-byte field added to the dynamic table, then referenced 3,000 times
        // (index 62): ~12 MB of headers from ~7 KB on the wire.
        let mut block = vec![0x82, 0x86, 0x84, 0x01, 8];
        block.extend_from_slice(b"api.test");
        block.extend([0x40, 6]);
        block.extend_from_slice(b"x-bomb");
        block.extend([0x7f, 0xa1, 0x1e]); // 4,000 = 127 + 3,873
        block.extend([b'b'; 4000]);
        block.extend([0xbe; 3000]);
        let bomb = frame(0x1, 0x5, 1, &block);
        w.write_all(&bomb).await.unwrap();
        (watcher.await.unwrap(), bomb.len())
    })
    .await;
    // Refused as a stream (431 or RST_STREAM) or as a connection; never forwarded.
    assert!(
        seen.headers + seen.resets > 0 || seen.goaway.is_some() || seen.closed,
        "{seen:?}"
    );
    assert_eq!(attacker_requests(&r, "/"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_window_reader_holds_nothing_and_is_given_up_at_the_send_timeout() {
    let mut r = rig().await;
    let addr = r.gw.addr;
    let (seen, _) = under_attack(&mut r, "zero window", async {
        // SETTINGS_INITIAL_WINDOW_SIZE = 0: the server may send no DATA until told.
        let (rd, mut w) = attacker(addr, &[(0x4, 0)]).await;
        let watcher = tokio::spawn(watch(rd, Duration::from_secs(6)));
        let mut block = vec![0x82, 0x86, 0x04, 4];
        block.extend_from_slice(b"/big");
        block.extend([0x01, 8]);
        block.extend_from_slice(b"api.test");
        let get = frame(0x1, 0x5, 1, &block);
        w.write_all(&get).await.unwrap();
        let seen = watcher.await.unwrap();
        drop(w);
        (seen, get.len())
    })
    .await;
    assert_eq!(seen.data_bytes, 0, "DATA beyond a zero window: {seen:?}");
    // The answer's head came; at client_send_timeout the stream was given up.
    assert_eq!(seen.headers, 1, "{seen:?}");
    assert!(seen.resets == 1 || seen.closed, "never given up: {seen:?}");
}

/// The same bound on HTTP/1.1: a client that stops reading a large reply is cut at
/// `client_send_timeout` rather than holding its upstream connection for ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_http1_client_that_stops_reading_is_cut_at_the_send_timeout() {
    let r = rig().await;
    let mut s = TcpStream::connect(r.gw.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    // Kernel buffers fill, the gateway's write stalls, the timeout passes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (got, closed) = read_until_closed(&mut s, Instant::now(), Duration::from_secs(10)).await;
    println!(
        "HTTP/1.1 slow reader: {} of {BIG} bytes, then closed",
        got.len()
    );
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(closed.is_some() && got.len() < BIG, "{} bytes", got.len());
    assert_eq!(r.gw.get("/after").await.status, 200);
}
