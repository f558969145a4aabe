//! The engine's floor: a bare pingora pass-through, built from this repo with the same pingora
//! version and the same build profile (allocator included) as extoken. `loadtest/run.sh` runs it
//! beside extoken, so every table says how much of a request's cost is pingora's and how much is
//! ours. It does what pingora's `examples` proxy does — `upstream_peer` only — and nothing else:
//! no routing, no auth, no logging.
//!
//!   cargo run --release --example passthrough -- 127.0.0.1:8090 127.0.0.1:8091 [threads] [bounded]
//!
//! `PASSTHROUGH_TLS=cert.pem:key.pem` in the environment serves TLS on LISTEN instead, with ALPN
//! `h2` and `http/1.1` (pingora's rustls "intermediate" settings): the floor of the TLS and HTTP/2
//! load tests.
//!
//! `bounded` adds only what bounding every wait costs inside pingora, with extoken's default
//! values: the upstream connect/read/write/idle timeouts on the peer and a 60 s keep-alive timeout
//! on the client connection. It is not the floor the targets are measured against (that is the
//! bare example); it says how much of extoken's cost is pingora's timers.

use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct PassThrough {
    upstream: std::net::SocketAddr,
    bounded: bool,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.bounded {
            let o = &mut peer.options;
            o.connection_timeout = Some(Duration::from_secs(5));
            o.total_connection_timeout = Some(Duration::from_secs(5));
            o.read_timeout = Some(Duration::from_secs(60));
            o.write_timeout = Some(Duration::from_secs(60));
            o.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<()> {
        if self.bounded && session.get_keepalive().is_some() {
            session.set_keepalive(Some(60));
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: passthrough LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let Ok(upstream) = upstream.parse() else {
        eprintln!("passthrough: UPSTREAM must be ip:port");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let bounded = args.get(4).is_some_and(|a| a == "bounded");
    let conf = ServerConf {
        threads,
        // A load-test target: stop at once on SIGTERM.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, PassThrough { upstream, bounded });
    match std::env::var("PASSTHROUGH_TLS").ok().and_then(|v| {
        let (cert, key) = v.split_once(':')?;
        Some((cert.to_string(), key.to_string()))
    }) {
        Some((cert, key)) => {
            let Ok(mut tls) = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key)
            else {
                eprintln!("passthrough: cannot load {cert} / {key}");
                std::process::exit(2);
            };
            tls.enable_h2();
            svc.add_tls_with_settings(listen, None, tls);
        }
        None => svc.add_tcp(listen),
    }
    server.add_service(svc);
    server.run_forever();
}
