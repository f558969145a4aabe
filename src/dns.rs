//! Fresh upstream addresses: host names are resolved again every `dns_refresh`, in the
//! background, and the answers swapped into each route's [`UpstreamAddrs`].
//!
//! pingora's `HttpPeer` holds one address, fixed when the route table is built (at start and at
//! reload). Upstreams behind Kubernetes headless services or cloud load balancers change address
//! while the gateway runs; without this they would be lost until a reload. Every A/AAAA record is
//! used ([`crate::route::Route::peer`] takes them in turn). A failed or empty answer keeps the last
//! good addresses (a resolver hiccup must not take a working upstream away), is logged once per
//! failure streak, and counted in `extoken_dns_resolutions_total{result}` with every other lookup.
//! IP-literal upstreams are never looked up. The resolver is a trait so tests can change answers.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::gateway::Gateway;
use crate::metrics::metrics;
use crate::route::RouteTable;

/// One lookup of a resolver takes at most this long (the system resolver may hang on a dead
/// name server; the refresh must go on with the other names).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers `host:port` with every address the name has.
#[async_trait]
pub(crate) trait Resolver: Send + Sync {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool: `/etc/hosts`, search domains and
/// `ndots` as the rest of the host sees them).
pub(crate) struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// What one lookup gave, as counted (`result` label).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Addrs(Vec<SocketAddr>),
    Empty,
    Failed(String),
}

impl Answer {
    fn label(&self) -> &'static str {
        match self {
            Answer::Addrs(_) => "ok",
            Answer::Empty => "empty",
            Answer::Failed(_) => "error",
        }
    }
}

async fn lookup(resolver: &dyn Resolver, host: &str, port: u16) -> Answer {
    let answer = match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.resolve(host, port)).await {
        Ok(Ok(addrs)) if addrs.is_empty() => Answer::Empty,
        Ok(Ok(addrs)) => Answer::Addrs(addrs),
        Ok(Err(e)) => Answer::Failed(e.to_string()),
        Err(_) => Answer::Failed(format!("no answer within {LOOKUP_TIMEOUT:?}")),
    };
    metrics()
        .dns_resolutions_total
        .with_label_values(&[answer.label()])
        .inc();
    answer
}

/// Resolves every host-name upstream of `routes` once (a name shared by several routes is looked
/// up once) and swaps changed answers in.
pub(crate) async fn refresh(routes: &RouteTable, resolver: &dyn Resolver) {
    let mut answers: HashMap<(String, u16), Answer> = HashMap::new();
    for route in routes.iter() {
        let Some(addrs) = route.upstream_addrs() else {
            continue; // an IP literal
        };
        let (host, port) = (route.upstream.host.as_str(), route.upstream.port);
        let key = (host.to_string(), port);
        let answer = match answers.get(&key) {
            Some(a) => a.clone(),
            None => {
                let a = lookup(resolver, host, port).await;
                answers.insert(key, a.clone());
                a
            }
        };
        let name = route.name.as_str();
        match answer {
            Answer::Addrs(found) => {
                if addrs.mark_ok() {
                    tracing::info!(target: "extoken::dns", route = name, host, "upstream resolves again");
                }
                if addrs.replace(found) {
                    let now = addrs.current();
                    tracing::info!(target: "extoken::dns", route = name, host, addresses = ?now, "upstream addresses changed");
                }
            }
            Answer::Empty | Answer::Failed(_) => {
                // Once per streak: a name that stays broken must not flood the log every period.
                if addrs.mark_failed() {
                    let why = match &answer {
                        Answer::Failed(e) => e.as_str(),
                        _ => "no address",
                    };
                    tracing::warn!(target: "extoken::dns", route = name, host, "cannot resolve the upstream ({why}); keeping its last good addresses");
                }
            }
        }
    }
}

/// The background task: [`refresh`] every `dns_refresh` on the gateway in force (a reload
/// resolves its own new routes when it builds them, and the next period uses its setting).
pub(crate) struct DnsRefresher {
    state: Arc<ArcSwap<Gateway>>,
    resolver: Arc<dyn Resolver>,
}

impl DnsRefresher {
    pub(crate) fn new(state: Arc<ArcSwap<Gateway>>, resolver: Arc<dyn Resolver>) -> DnsRefresher {
        DnsRefresher { state, resolver }
    }
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let period = self.state.load().config.dns_refresh.0;
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return,
            }
            let gw = self.state.load_full();
            tokio::select! {
                _ = refresh(&gw.routes, self.resolver.as_ref()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::config::Config;

    /// Answers from a table the test changes; counts lookups per name.
    #[derive(Default)]
    struct FakeResolver {
        answers: Mutex<HashMap<String, Result<Vec<IpAddr>, String>>>,
        calls: Mutex<HashMap<String, usize>>,
        total: AtomicUsize,
    }

    impl FakeResolver {
        fn set(&self, host: &str, ips: &[&str]) {
            let ips = ips.iter().map(|s| s.parse().unwrap()).collect();
            self.answers.lock().unwrap().insert(host.into(), Ok(ips));
        }
        fn fail(&self, host: &str) {
            let e = Err("temporary failure in name resolution".to_string());
            self.answers.lock().unwrap().insert(host.into(), e);
        }
        fn answer(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            self.total.fetch_add(1, Ordering::SeqCst);
            *self.calls.lock().unwrap().entry(host.into()).or_default() += 1;
            match self.answers.lock().unwrap().get(host) {
                Some(Ok(ips)) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
                Some(Err(e)) => Err(io::Error::other(e.clone())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "unknown name")),
            }
        }
        fn calls(&self, host: &str) -> usize {
            self.calls.lock().unwrap().get(host).copied().unwrap_or(0)
        }
    }

    #[async_trait]
    impl Resolver for FakeResolver {
        async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            self.answer(host, port)
        }
    }

    fn config(routes: &[(&str, &str)], extra: &str) -> Config {
        let mut text = format!(
            "descope: {{project_id: P, jwks_url: 'http://127.0.0.1:1/k'}}\n\
             connectors: {{ext: {{type: claim}}}}\n{extra}routes:\n"
        );
        for (prefix, upstream) in routes {
            text.push_str(&format!(
                "  - {{name: '{}', path_prefix: '{prefix}', upstream: '{upstream}', connector: ext}}\n",
                prefix.trim_start_matches('/')
            ));
        }
        Config::parse(&text, &|_| None).unwrap()
    }

    fn table(fake: &FakeResolver, routes: &[(&str, &str)]) -> RouteTable {
        RouteTable::build_with(&config(routes, ""), &mut |h, p| fake.answer(h, p)).unwrap()
    }

    /// The addresses `n` successive requests of the route at `path` would go to.
    fn peers(t: &RouteTable, path: &str, n: usize) -> Vec<SocketAddr> {
        let route = t.find(None, path).unwrap();
        (0..n)
            .map(|_| match route.peer()._address {
                PeerAddr::Inet(a) => a,
                other => panic!("not an inet address: {other:?}"),
            })
            .collect()
    }

    use pingora::protocols::l4::socket::SocketAddr as PeerAddr;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn count(result: &str) -> u64 {
        metrics()
            .dns_resolutions_total
            .with_label_values(&[result])
            .get()
    }

    #[tokio::test]
    async fn answers_that_change_are_followed() {
        let fake = FakeResolver::default();
        fake.set("api.internal", &["10.0.0.1"]);
        let t = table(&fake, &[("/", "http://api.internal:8080")]);
        assert_eq!(peers(&t, "/", 2), [addr("10.0.0.1:8080"); 2]);

        fake.set("api.internal", &["10.0.0.3", "10.0.0.2"]);
        let ok = count("ok");
        refresh(&t, &fake).await;
        assert!(count("ok") > ok);
        let mut seen = peers(&t, "/", 4);
        seen.sort();
        assert_eq!(
            seen,
            [
                addr("10.0.0.2:8080"),
                addr("10.0.0.2:8080"),
                addr("10.0.0.3:8080"),
                addr("10.0.0.3:8080")
            ]
        );
        // The peer keeps everything else the route built into it.
        let p = t.find(None, "/").unwrap().peer();
        assert_eq!(p.options.connection_timeout, Some(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn every_record_is_used_in_turn() {
        let fake = FakeResolver::default();
        fake.set("multi.internal", &["10.0.0.7", "fd00::7", "10.0.0.5"]);
        let t = table(&fake, &[("/", "https://multi.internal:443")]);
        let seen = peers(&t, "/", 6);
        // Each of the three once per turn, in the same order every turn.
        assert_eq!(seen[..3], seen[3..]);
        let mut turn = seen[..3].to_vec();
        turn.sort();
        let want = [
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 443),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 443),
            SocketAddr::new(IpAddr::V6("fd00::7".parse::<Ipv6Addr>().unwrap()), 443),
        ];
        assert_eq!(turn, want);
        // TLS peers keep the host name as SNI whatever address they dial.
        assert_eq!(t.find(None, "/").unwrap().peer().sni, "multi.internal");
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_good_addresses() {
        let fake = FakeResolver::default();
        fake.set("flaky.internal", &["10.0.1.1", "10.0.1.2"]);
        let t = table(&fake, &[("/", "http://flaky.internal:80")]);
        let addrs = t.find(None, "/").unwrap().upstream_addrs().unwrap().clone();
        let before = addrs.current();

        fake.fail("flaky.internal");
        let errors = count("error");
        for _ in 0..3 {
            refresh(&t, &fake).await;
        }
        assert!(
            count("error") >= errors + 3,
            "each failed lookup is counted"
        );
        assert_eq!(addrs.current(), before);
        assert!(!addrs.mark_failed(), "the streak is still on (logged once)");
        assert!(peers(&t, "/", 4).iter().all(|a| before.contains(a)));

        // It resolves again, to something else: followed, and the streak is over.
        fake.set("flaky.internal", &["10.0.1.9"]);
        refresh(&t, &fake).await;
        assert_eq!(peers(&t, "/", 2), [addr("10.0.1.9:80"); 2]);
        assert!(addrs.mark_failed(), "a new failure starts a new streak");
    }

    #[tokio::test]
    async fn an_empty_answer_keeps_the_last_good_addresses() {
        let fake = FakeResolver::default();
        fake.set("drained.internal", &["10.0.2.1"]);
        let t = table(&fake, &[("/", "http://drained.internal:80")]);
        fake.set("drained.internal", &[]);
        let empty = count("empty");
        refresh(&t, &fake).await;
        assert!(count("empty") > empty);
        assert_eq!(peers(&t, "/", 3), [addr("10.0.2.1:80"); 3]);
    }

    #[tokio::test]
    async fn ip_literals_are_never_looked_up_and_names_once_per_refresh() {
        let fake = FakeResolver::default();
        fake.set("shared.internal", &["10.0.3.1"]);
        let t = table(
            &fake,
            &[
                ("/a", "http://shared.internal:80"),
                ("/b", "http://shared.internal:80"),
                ("/v4", "http://127.0.0.1:9"),
                ("/v6", "http://[::1]:9"),
            ],
        );
        assert_eq!(fake.calls("shared.internal"), 2, "one per route at build");
        refresh(&t, &fake).await;
        assert_eq!(fake.calls("shared.internal"), 3, "shared by both routes");
        assert_eq!(fake.total.load(Ordering::SeqCst), 3, "no literal looked up");
        assert_eq!(peers(&t, "/v4", 1), [addr("127.0.0.1:9")]);
        assert_eq!(peers(&t, "/v6", 1), [addr("[::1]:9")]);
        assert!(t.find(None, "/v6").unwrap().upstream_addrs().is_none());
    }

    #[test]
    fn a_name_without_any_address_fails_the_build_naming_its_route() {
        let fake = FakeResolver::default();
        fake.set("empty.internal", &[]);
        let cfg = config(
            &[
                ("/ok", "http://127.0.0.1:1"),
                ("/x", "http://empty.internal:80"),
                ("/y", "http://missing.internal:80"),
            ],
            "",
        );
        let e = RouteTable::build_with(&cfg, &mut |h, p| fake.answer(h, p)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "routes[1].upstream: empty.internal has no address"
        );
        let cfg = config(&[("/y", "http://missing.internal:80")], "");
        let e = RouteTable::build_with(&cfg, &mut |h, p| fake.answer(h, p)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("routes[0].upstream: cannot resolve missing.internal:"),
            "{e}"
        );
    }

    /// The background service on a real gateway: the live route table follows the resolver at
    /// `dns_refresh`, and the service stops at shutdown.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_refresher_follows_the_gateway_in_force() {
        crate::gateway::install_crypto_provider();
        // `localhost` is resolved by the system at build; the fake answers from then on.
        let cfg = config(&[("/", "http://localhost:4000")], "dns_refresh: 1s\n");
        let client = Gateway::http_client().unwrap();
        let keys = Arc::new(crate::verify::KeyStore::new(
            &cfg.descope,
            client,
            crate::clock::system(),
        ));
        let state = Arc::new(ArcSwap::from_pointee(Gateway::build(cfg, keys).unwrap()));
        let fake = Arc::new(FakeResolver::default());
        fake.set("localhost", &["127.0.0.2", "127.0.0.3"]);
        let (stop, watch) = tokio::sync::watch::channel(false);
        let service = DnsRefresher::new(state.clone(), fake.clone());
        let task = tokio::spawn(async move { service.start(watch).await });

        let want = vec![addr("127.0.0.2:4000"), addr("127.0.0.3:4000")];
        let live = || {
            let gw = state.load();
            let route = gw.routes.find(None, "/").unwrap();
            route.upstream_addrs().unwrap().current()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while *live() != want {
            assert!(std::time::Instant::now() < deadline, "never refreshed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(fake.calls("localhost") >= 1);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the refresher stops at shutdown")
            .unwrap();
    }
}
