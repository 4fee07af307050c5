//! One Redis connection type for both topologies: a single server (or a managed
//! endpoint) and a Redis Cluster.
//!
//! [`RedisClient::open`] reads a URL setting:
//!
//! * one URL (`redis://host:6379/0`, `rediss://...`, `unix:///path`): a single server,
//!   through a self-reconnecting [`ConnectionManager`];
//! * several URLs separated by commas (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`),
//!   or one URL whose scheme is `redis+cluster://` / `rediss+cluster://`: a Redis Cluster,
//!   these being seed nodes (the client learns every other node from them), through the
//!   `redis` crate's cluster client, which follows `MOVED`/`ASK`, refreshes the slot map
//!   after a failover and reconnects to nodes. Password, user, TLS and protocol come
//!   from the first URL; the others must agree.
//! * one or more `redis+sentinel://host:26379/<service>` URLs (comma-separated, one per
//!   Sentinel, all naming the same service): a primary watched by Redis Sentinel. The
//!   primary's address is asked of the Sentinels (the `redis` crate's `Sentinel`, which
//!   also checks the answer really is a primary), and asked again whenever a request
//!   fails the way a failover makes it fail (connection refused or dropped, a timeout,
//!   `READONLY` from a demoted primary): the connection then moves to the promoted
//!   replica by itself. A password in the URL is the primary's (Sentinels without one);
//!   a database number follows the service (`/<service>/2`).
//!
//! Either way the result is a [`RedisConn`]: cheap to clone, multiplexed, and usable
//! wherever a `redis::aio::ConnectionLike` is, so every call of the engine is written
//! once. What the cluster changes, and where Fleet deals with it:
//!
//! * **Scripts** run by their first key, and every key of a script shares one hash
//!   tag (`crate::keys`, `crate::scripts`). A script whose SHA a node does not know
//!   (a promoted replica after a failover, a flushed script cache) is sent again as
//!   `EVAL` of its body to that node only (`scripts::ScriptCall`), never as
//!   `SCRIPT LOAD` to every node, which fails while any node is down.
//! * **Pipelines** go whole to the node of their first key: every pipeline Fleet sends
//!   touches one hash tag (tenant event appends are grouped per tenant: `events.rs`).
//! * **Blocking waits** (`BLPOP` on a queue's wake-up list) never run on the shared
//!   connection, where they would hold up every command behind them on that node: each
//!   queue's fetcher opens its own connection for them ([`RedisClient::blocking`]).
//! * **Keyless scans** (the admin views' `SCAN`) visit every primary
//!   ([`RedisConn::scan_match`]).
//!
//! TLS (`rediss://`, `rediss+cluster://`) takes the CA file and client certificate of
//! [`RedisClient::open_with`] for either topology: `redis::Client::build_with_tls` for one
//! server, `ClusterClientBuilder::certs` for a cluster's nodes.

use crate::error::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// Time allowed to open a connection to one server or node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for one reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one cluster request including its redirections and retries (a
/// failover takes a few seconds: the engine's own loops retry beyond this).
const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Redis is: one server, or the seed nodes of a cluster. Cheap to clone; opens
/// connections ([`RedisClient::connect`]).
#[derive(Clone)]
pub struct RedisClient {
    target: Target,
}

#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(Vec<ConnectionInfo>, Option<redis::TlsCertificates>),
    Sentinel(std::sync::Arc<SentinelTarget>),
}

/// The Sentinels watching one primary, and how to talk to that primary.
struct SentinelTarget {
    /// The Sentinels' addresses.
    sentinels: Vec<ConnectionInfo>,
    /// The monitored service (`sentinel monitor <name> ...`).
    service: String,
    /// Password, user and database of the primary.
    node: redis::sentinel::SentinelNodeConnectionInfo,
}

impl SentinelTarget {
    /// The current primary, as the Sentinels say (and it confirms).
    async fn primary(&self) -> RedisResult<redis::Client> {
        let mut sentinel = redis::sentinel::Sentinel::build(self.sentinels.clone())?;
        sentinel.async_master_for(&self.service, Some(&self.node)).await
    }
}

/// The scheme of a Sentinel URL.
const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// Reads `redis+sentinel://[:password@]host:port/<service>[/<db>]` URLs.
fn sentinel_target(entries: &[&str]) -> Result<SentinelTarget> {
    let invalid = Error::RedisUrl;
    let (mut sentinels, mut service, mut redis_info) = (Vec::new(), None::<String>, None);
    for entry in entries {
        let Some(rest) = entry.strip_prefix(SENTINEL_SCHEME) else {
            return Err(invalid(format!(
                "{:?}: every URL of a Sentinel setting must be redis+sentinel:// (TLS to Sentinels is not supported)",
                redact(entry)
            )));
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let name = parts.next().ok_or_else(|| {
            invalid(format!("{:?}: name the monitored service: redis+sentinel://host:26379/<service>", redact(entry)))
        })?;
        let db: i64 = match parts.next() {
            Some(d) => d.parse().map_err(|_| invalid(format!("{:?}: the database must be a number", redact(entry))))?,
            None => 0,
        };
        if service.as_deref().is_some_and(|s| s != name) {
            return Err(invalid("every redis+sentinel:// URL must name the same service".into()));
        }
        service = Some(name.to_owned());
        let info = format!("redis://{host}")
            .as_str()
            .into_connection_info()
            .map_err(|e| invalid(format!("{:?} is not a Sentinel address ({e})", redact(entry))))?;
        sentinels.push(info);
        // The primary's password, user and database, read as a plain URL would be.
        let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
        let primary = format!("redis://{auth}{host}/{db}")
            .as_str()
            .into_connection_info()
            .map_err(|e| invalid(format!("{:?} is not a Sentinel URL ({e})", redact(entry))))?
            .redis_settings()
            .clone();
        redis_info.get_or_insert(primary);
    }
    Ok(SentinelTarget {
        sentinels,
        service: service.unwrap_or_default(),
        node: redis::sentinel::SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(redis_info.unwrap_or_default()),
    })
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URLs: they may hold a password.
        match &self.target {
            Target::Single(_) => f.write_str("RedisClient(single)"),
            Target::Cluster(nodes, _) => write!(f, "RedisClient(cluster, {} seed nodes)", nodes.len()),
            Target::Sentinel(t) => write!(f, "RedisClient(sentinel, {} sentinels)", t.sentinels.len()),
        }
    }
}

/// The scheme suffix that marks a single URL as a cluster's seed node.
const CLUSTER_SCHEME: &str = "+cluster://";

impl RedisClient {
    /// Reads a URL setting (see the module's documentation): one URL is a single server;
    /// several, comma-separated, or a `redis+cluster://` URL, are a cluster's seed nodes.
    /// Nothing is connected yet.
    pub fn open(urls: &str) -> Result<Self> {
        RedisClient::open_with(urls, &crate::RedisTls::default())
    }

    /// Like [`RedisClient::open`], with a CA file and client certificate for `rediss://`
    /// URLs ([`crate::tls`]). TLS settings with plain `redis://` URLs are refused (they
    /// would be silently ignored).
    pub fn open_with(urls: &str, tls: &crate::RedisTls) -> Result<Self> {
        let entries: Vec<&str> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let invalid = Error::RedisUrl;
        if entries.iter().any(|e| e.starts_with(SENTINEL_SCHEME) || e.starts_with("rediss+sentinel://")) {
            if tls.is_set() {
                return Err(Error::Invalid("TLS settings are not supported with redis+sentinel:// URLs".into()));
            }
            return Ok(RedisClient { target: Target::Sentinel(std::sync::Arc::new(sentinel_target(&entries)?)) });
        }
        match entries.as_slice() {
            [] => Err(invalid("the Redis URL is empty".into())),
            [one] if !one.contains(CLUSTER_SCHEME) => {
                one.into_connection_info()
                    .map_err(|e| invalid(format!("{:?} is not a Redis URL ({e})", redact(one))))?;
                Ok(RedisClient { target: Target::Single(crate::tls::redis_client(one, tls)?) })
            }
            many => {
                let mut nodes = Vec::with_capacity(many.len());
                for url in many {
                    let url = url.replacen(CLUSTER_SCHEME, "://", 1);
                    let info = url
                        .as_str()
                        .into_connection_info()
                        .map_err(|e| invalid(format!("{:?} is not a Redis URL ({e})", redact(&url))))?;
                    nodes.push(info);
                }
                let secure = nodes.iter().any(|n| matches!(n.addr(), redis::ConnectionAddr::TcpTls { .. }));
                if tls.is_set() && !secure {
                    return Err(Error::Invalid(
                        "redis_tls (FLEET_REDIS_CA_FILE, FLEET_REDIS_CLIENT_*_FILE) is set, but the cluster's URLs \
                         are not rediss://: use rediss:// to connect over TLS"
                            .into(),
                    ));
                }
                let certs = if secure {
                    crate::tls::install_crypto_provider();
                    crate::tls::certificates(tls)?
                } else {
                    None
                };
                // Checks the nodes agree (password, TLS, protocol) now, not at the first connect.
                cluster_builder(&nodes, &certs).build().map_err(|e| invalid(format!("cluster nodes: {e}")))?;
                Ok(RedisClient { target: Target::Cluster(nodes, certs) })
            }
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(..))
    }

    /// Opens the shared, multiplexed connection with Fleet's timeouts (2 s to connect, 5 s
    /// per reply). For a single server it reconnects by itself; a cluster connection
    /// reconnects to nodes and follows topology changes.
    pub async fn connect(&self) -> Result<RedisConn> {
        match &self.target {
            Target::Single(client) => {
                let conn = ConnectionManager::new_with_config(client.clone(), manager_config()).await.map_err(|e| {
                    match crate::tls::tls_failure(&e) {
                        Some(reason) => Error::TlsHandshake { addr: crate::tls::redis_addr(client), reason },
                        None => Error::Redis(e),
                    }
                })?;
                Ok(RedisConn::Single(conn))
            }
            Target::Cluster(nodes, certs) => {
                Ok(RedisConn::Cluster(cluster_builder(nodes, certs).build()?.get_async_connection().await?))
            }
            Target::Sentinel(target) => {
                Ok(RedisConn::Sentinel(SentinelConn::open(target.clone(), manager_config()).await?))
            }
        }
    }

    /// Opens a connection of its own for blocking commands that wait up to `wait`
    /// (`BLPOP`): Redis answers one connection's commands in order, so a blocking call
    /// on the shared connection would hold up every other command to that server.
    pub async fn blocking(&self, wait: Duration) -> RedisResult<RedisConn> {
        let response = wait + Duration::from_secs(2);
        match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1);
                Ok(RedisConn::Single(ConnectionManager::new_with_config(client.clone(), config).await?))
            }
            Target::Sentinel(target) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1);
                Ok(RedisConn::Sentinel(SentinelConn::open(target.clone(), config).await?))
            }
            Target::Cluster(nodes, certs) => {
                let client = cluster_builder(nodes, certs).overall_response_timeout(Some(response * 2)).build()?;
                let config =
                    ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT).set_response_timeout(response);
                Ok(RedisConn::Cluster(client.get_async_connection_with_config(config).await?))
            }
        }
    }
}

/// Fleet's settings of a single server's connection: 2 s to connect, 5 s per reply.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

/// A connection to the primary the Sentinels name, moving to the new one after a
/// failover: a request that fails as a failover makes requests fail asks the Sentinels
/// again and, if they name another primary, is sent once more to it. Clones share the
/// connection, and a move is seen by all of them at once.
#[derive(Clone)]
pub struct SentinelConn {
    shared: std::sync::Arc<SentinelShared>,
    db: i64,
}

struct SentinelShared {
    target: std::sync::Arc<SentinelTarget>,
    config: ConnectionManagerConfig,
    /// The connection to the current primary, its generation (bumped at each move) and
    /// address.
    current: std::sync::RwLock<(u64, ConnectionManager, String)>,
    /// Held while the Sentinels are asked: one question at a time.
    asking: tokio::sync::Mutex<()>,
}

impl SentinelConn {
    async fn open(target: std::sync::Arc<SentinelTarget>, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let client = target.primary().await?;
        let addr = client.get_connection_info().addr().to_string();
        let db = client.get_connection_info().redis_settings().db();
        let conn = ConnectionManager::new_with_config(client, config.clone()).await?;
        let shared = SentinelShared {
            target,
            config,
            current: std::sync::RwLock::new((0, conn, addr)),
            asking: tokio::sync::Mutex::new(()),
        };
        Ok(SentinelConn { shared: std::sync::Arc::new(shared), db })
    }

    /// The current connection and its generation.
    fn current(&self) -> (u64, ConnectionManager) {
        let c = self.shared.current.read().unwrap_or_else(|e| e.into_inner());
        (c.0, c.1.clone())
    }

    /// After a failure on generation `seen`: asks the Sentinels where the primary is
    /// (unless another request has moved the connection since) and moves to it when it
    /// changed. Returns the generation now current.
    async fn follow(&self, seen: u64) -> RedisResult<u64> {
        let _asking = self.shared.asking.lock().await;
        let (generation, addr) = {
            let c = self.shared.current.read().unwrap_or_else(|e| e.into_inner());
            (c.0, c.2.clone())
        };
        if generation != seen {
            return Ok(generation);
        }
        let client = self.shared.target.primary().await?;
        let found = client.get_connection_info().addr().to_string();
        if found == addr {
            return Ok(generation);
        }
        tracing::warn!(from = %addr, to = %found, "Redis Sentinel names a new primary: following it");
        let conn = ConnectionManager::new_with_config(client, self.shared.config.clone()).await?;
        *self.shared.current.write().unwrap_or_else(|e| e.into_inner()) = (generation + 1, conn, found);
        Ok(generation + 1)
    }
}

/// Whether `e` is how requests fail while a primary is down or demoted.
fn failover_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (seen, mut conn) = self.current();
            match conn.req_packed_command(cmd).await {
                Err(e) if failover_error(&e) => {
                    if self.follow(seen).await.map_err(|_| e)? == seen {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "the Redis primary is unreachable and the Sentinels name no other yet",
                        )));
                    }
                    self.current().1.req_packed_command(cmd).await
                }
                other => other,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (seen, mut conn) = self.current();
            match conn.req_packed_commands(pipeline, offset, count).await {
                // A pipeline is not sent again: some of it may have run. The next request
                // goes to the new primary.
                Err(e) if failover_error(&e) => {
                    let _ = self.follow(seen).await;
                    Err(e)
                }
                other => other,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

/// Fleet's cluster client settings. Retries (redirections, reconnections) start at 50 ms
/// and double up to 1 s, so a request rides through a failover's few seconds within
/// [`CLUSTER_REQUEST_TIMEOUT`] (the crate's defaults wait 1.3 s and more per retry).
fn cluster_builder(nodes: &[ConnectionInfo], certs: &Option<redis::TlsCertificates>) -> ClusterClientBuilder {
    let builder = match certs {
        Some(c) => ClusterClientBuilder::new(nodes.to_vec()).certs(c.clone()),
        None => ClusterClientBuilder::new(nodes.to_vec()),
    };
    builder
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .overall_response_timeout(Some(CLUSTER_REQUEST_TIMEOUT))
        .retries(12)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .retry_wait_formula(50, 2)
}

/// A URL without its password, for errors.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A Redis connection to one server or to a cluster. Cheap to clone (clones share the
/// connection); implements [`redis::aio::ConnectionLike`], so commands, pipelines and
/// scripts take it as they take any connection.
#[derive(Clone)]
pub enum RedisConn {
    /// One server, through a self-reconnecting connection manager.
    Single(ConnectionManager),
    /// A Redis Cluster: one multiplexed connection per node, routed by key.
    Cluster(ClusterConnection),
    /// The primary Redis Sentinel names, followed through failovers.
    Sentinel(SentinelConn),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn(single)",
            RedisConn::Cluster(_) => "RedisConn(cluster)",
            RedisConn::Sentinel(_) => "RedisConn(sentinel)",
        })
    }
}

impl From<ConnectionManager> for RedisConn {
    fn from(c: ConnectionManager) -> Self {
        RedisConn::Single(c)
    }
}

impl From<ClusterConnection> for RedisConn {
    fn from(c: ClusterConnection) -> Self {
        RedisConn::Cluster(c)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// `PING`: on a cluster, every primary must answer.
    pub async fn ping(&mut self) -> RedisResult<()> {
        match self {
            RedisConn::Single(c) => redis::cmd("PING").query_async::<()>(c).await,
            RedisConn::Sentinel(c) => redis::cmd("PING").query_async::<()>(c).await,
            RedisConn::Cluster(c) => {
                let route =
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)));
                c.route_command(redis::cmd("PING"), route).await.map(|_| ())
            }
        }
    }

    /// Every key matching `pattern` (`SCAN ... MATCH`, `count` per step), on every
    /// primary of a cluster. For operators and tools: never a worker's hot path.
    pub async fn scan_match(&mut self, pattern: &str, count: usize) -> RedisResult<Vec<Vec<u8>>> {
        let nodes = match self {
            RedisConn::Single(_) | RedisConn::Sentinel(_) => return scan_node(self, None, pattern, count).await,
            RedisConn::Cluster(c) => primaries(c).await?,
        };
        let mut out = Vec::new();
        for node in nodes {
            out.extend(scan_node(self, Some(node), pattern, count).await?);
        }
        Ok(out)
    }
}

/// The address of every primary that serves slots, from `CLUSTER SLOTS`.
async fn primaries(c: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    let reply = c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary)).await?;
    // Each range: [start, end, [host, port, id, ...], replicas...].
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(reply)?;
    let mut out: Vec<(String, u16)> = Vec::new();
    for range in ranges {
        let Some(Value::Array(primary)) = range.get(2) else { continue };
        let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else { continue };
        let host: String = redis::from_redis_value_ref(host)?;
        let port: u16 = redis::from_redis_value_ref(port)?;
        if !out.iter().any(|(h, p)| h == &host && *p == port) {
            out.push((host, port));
        }
    }
    Ok(out)
}

/// `SCAN` to the end on one server, or on the cluster primary at `node`.
async fn scan_node(
    c: &mut RedisConn,
    node: Option<(String, u16)>,
    pattern: &str,
    count: usize,
) -> RedisResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(count);
        let reply = match (&mut *c, node.clone()) {
            (RedisConn::Cluster(c), Some((host, port))) => {
                c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port })).await?
            }
            (c, _) => cmd.query_async::<Value>(c).await?,
        };
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_single_server_and_several_are_a_cluster() {
        assert!(!RedisClient::open("redis://127.0.0.1:6379").unwrap().is_cluster());
        assert!(RedisClient::open("redis://127.0.0.1:7000,redis://127.0.0.1:7001").unwrap().is_cluster());
        assert!(RedisClient::open(" redis://127.0.0.1:7000 , redis://127.0.0.1:7001 ,").unwrap().is_cluster());
        assert!(RedisClient::open("redis+cluster://127.0.0.1:7000").unwrap().is_cluster());
        assert!(RedisClient::open("").is_err());
        assert!(RedisClient::open("http://x").is_err());
    }

    #[test]
    fn cluster_nodes_must_agree_and_errors_hide_passwords() {
        let e = RedisClient::open("redis://:a@127.0.0.1:7000,redis://:b@127.0.0.1:7001").unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
        let e = RedisClient::open("redis://:secret@127.0.0.1:7000,nope://:secret@x").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(RedisClient::open("unix:///tmp/a.sock,unix:///tmp/b.sock").is_err(), "no unix sockets in a cluster");
    }

    #[test]
    fn sentinel_urls_name_one_service_and_errors_hide_passwords() {
        let ok =
            RedisClient::open("redis+sentinel://:pw@127.0.0.1:26379/fleet/2,redis+sentinel://127.0.0.1:26380/fleet");
        assert_eq!(format!("{:?}", ok.unwrap()), "RedisClient(sentinel, 2 sentinels)");
        let two =
            RedisClient::open("redis+sentinel://127.0.0.1:26379/a,redis+sentinel://127.0.0.1:26380/b").unwrap_err();
        assert!(two.to_string().contains("same service"), "{two}");
        let none = RedisClient::open("redis+sentinel://:secret@127.0.0.1:26379").unwrap_err();
        assert!(none.to_string().contains("service") && !none.to_string().contains("secret"), "{none}");
        let db = RedisClient::open("redis+sentinel://127.0.0.1:26379/fleet/x").unwrap_err();
        assert!(db.to_string().contains("database"), "{db}");
        assert!(RedisClient::open("redis+sentinel://127.0.0.1:26379/fleet,redis://127.0.0.1:6379").is_err(), "mixed");
        assert!(RedisClient::open("rediss+sentinel://127.0.0.1:26379/fleet").is_err(), "no TLS to Sentinels");
    }
}
