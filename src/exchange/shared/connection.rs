//! The connection to Redis, whichever its shape, made on first use and remade when lost.
//!
//! * One server: redis-rs's `ConnectionManager`, which reconnects by itself.
//! * A Cluster: redis-rs's cluster connection, which follows slots and reconnects to nodes.
//! * A Sentinel: the master it names, asked again whenever the master is lost or turns read-only
//!   (a failover), then reached through a `ConnectionManager`.
//!
//! Nothing here waits for Redis at start: `extoken check` and a gateway whose Redis is down start
//! as always. Every call is bounded by the caller (`operation_timeout`); a connection attempt cut
//! short is simply made again by the next call.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, Cmd, ConnectionInfo, ErrorKind, FromRedisValue, RedisError, RedisResult};

use super::config::Servers;

/// How long establishing a TCP (and TLS) connection may take, in the background of a call.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A reply slower than this drops the connection (ours are bounded much tighter per call; this
/// notices a server that went silent without closing the connection).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

enum Topology {
    Single(Client),
    Cluster(ClusterClient, Vec<ConnectionInfo>),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

#[derive(Clone)]
enum Conn {
    Manager(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

pub(crate) struct Connection {
    topology: Topology,
    current: ArcSwapOption<Conn>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

impl Connection {
    /// The clients for `servers` (no I/O).
    pub(crate) fn new(servers: &Servers) -> RedisResult<Connection> {
        let topology = match servers {
            Servers::Single(info) => Topology::Single(Client::open(info.clone())?),
            Servers::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(1)
                    .build()?;
                Topology::Cluster(client, nodes.clone())
            }
            Servers::Sentinel {
                master_name,
                nodes,
                username,
                password,
                tls,
            } => {
                let mut redis = redis::RedisConnectionInfo::default();
                if let Some(u) = username {
                    redis = redis.set_username(u);
                }
                if let Some(p) = password {
                    redis = redis.set_password(p);
                }
                let mut info =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
                if *tls {
                    info = info.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    nodes.clone(),
                    master_name.clone(),
                    Some(info),
                    SentinelServerType::Master,
                )?;
                Topology::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        Ok(Connection {
            topology,
            current: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    async fn conn(&self) -> RedisResult<Conn> {
        if let Some(c) = self.current.load_full() {
            return Ok((*c).clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current.load_full() {
            return Ok((*c).clone());
        }
        let c = match &self.topology {
            Topology::Single(client) => Conn::Manager(ConnectionManager::new_lazy_with_config(
                client.clone(),
                manager_config(),
            )?),
            Topology::Cluster(client, _) => {
                let cfg = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                Conn::Cluster(client.get_pending_async_connection_with_config(cfg))
            }
            Topology::Sentinel(s) => {
                let master = s.lock().await.async_get_client().await?;
                Conn::Manager(ConnectionManager::new_with_config(master, manager_config()).await?)
            }
        };
        self.current.store(Some(Arc::new(c.clone())));
        Ok(c)
    }

    /// Sends `cmd` and reads its reply.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let result = match self.conn().await? {
            Conn::Manager(mut m) => cmd.query_async(&mut m).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        };
        if let (Err(e), Topology::Sentinel(_)) = (&result, &self.topology) {
            if lost_master(e) {
                // Ask the Sentinels again on the next call: the master may have moved.
                self.current.store(None);
            }
        }
        result
    }

    /// A client for one server to subscribe on: the server, the master, or each Cluster node in
    /// turn (a Cluster delivers every `PUBLISH` to subscribers on any node).
    pub(crate) async fn pubsub_client(&self, attempt: usize) -> RedisResult<Client> {
        match &self.topology {
            Topology::Single(c) => Ok(c.clone()),
            Topology::Cluster(_, nodes) => Client::open(nodes[attempt % nodes.len()].clone()),
            Topology::Sentinel(s) => s.lock().await.async_get_client().await,
        }
    }
}

/// Whether `e` means the Sentinel's master is gone or no longer the master.
fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}
