//! The Redis handle: one auto-reconnecting multiplexed connection, the key prefix, and a
//! timeout on every command so that a dead Redis costs a bounded wait, never a hang. In
//! Sentinel mode the master is asked of the sentinels, and asked again whenever a command fails
//! (the old master gone, or demoted and answering `-READONLY`). In Cluster mode the redis
//! crate's cluster connection routes each command to the shard of its key and follows slot
//! moves and failovers itself; the change feed subscribes on one node at a time, since a
//! cluster forwards classic pub/sub to every node.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, FromRedisValue, IntoConnectionInfo, Pipeline,
    TlsMode,
};

use crate::config::{self, RedisMode};

pub mod keys;

/// Where the Redis server comes from.
enum Source {
    /// `redis.url`.
    Standalone(Client),
    /// The current master, as the sentinels name it.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// The cluster, from `redis.nodes`; `nodes` are the same as plain clients, for the feed.
    Cluster {
        client: ClusterClient,
        nodes: Vec<Client>,
        /// The node the next subscriber connection goes to: after a failure, the next one.
        next: AtomicUsize,
    },
}

/// The command connection.
#[derive(Clone)]
enum Conn {
    /// Standalone: reconnects by itself to the one server there is.
    Managed(ConnectionManager),
    /// Sentinel: never reconnects by itself, since the host it knows may have been demoted to
    /// a replica that still answers reads; a failure drops it and the master is asked again.
    Direct(MultiplexedConnection),
    /// Cluster: one connection per shard, routed by key slot, reconnecting by itself.
    Cluster(ClusterConnection),
}

/// Redis, as usher uses it.
pub struct Kv {
    source: Source,
    manager: ArcSwapOption<Conn>,
    connecting: tokio::sync::Mutex<()>,
    /// Sentinel mode: the master's address, and how many times it changed (or, in Cluster
    /// mode, how many times the cluster's epoch rose).
    master: std::sync::Mutex<Option<String>>,
    generation: AtomicU64,
    /// Cluster mode: the highest `cluster_current_epoch` seen (0: none yet). Every failover
    /// raises it.
    cluster_epoch: AtomicU64,
    prefix: String,
    timeout: Duration,
}

/// Redis did not answer in time or answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct KvError(pub String);

impl Kv {
    /// Prepares the handle; connects lazily so usher starts while Redis is down.
    pub fn new(cfg: &config::Redis) -> anyhow::Result<Arc<Kv>> {
        let source = match cfg.mode {
            RedisMode::Standalone => Source::Standalone(crate::tls::redis_client(
                cfg.url.expose(),
                cfg.ca_file.as_deref(),
            )?),
            RedisMode::Sentinel => Source::Sentinel(tokio::sync::Mutex::new(sentinel_client(cfg)?)),
            RedisMode::Cluster => cluster_source(cfg)?,
        };
        Ok(Arc::new(Kv {
            source,
            manager: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            master: std::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            cluster_epoch: AtomicU64::new(0),
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout.0,
        }))
    }

    /// A client for the server to use now (in Sentinel mode, the current master; in Cluster
    /// mode, the next of `redis.nodes`): for the command connection and the change feed's
    /// dedicated subscriber connection.
    pub async fn client(&self) -> Result<Client, KvError> {
        match &self.source {
            Source::Standalone(client) => Ok(client.clone()),
            Source::Cluster { nodes, next, .. } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                nodes
                    .get(n % nodes.len().max(1))
                    .cloned()
                    .ok_or_else(|| KvError("redis.nodes is empty".into()))
            }
            Source::Sentinel(sentinel) => {
                // Boxed: the discovery future is deep, and every command's future embeds it.
                let ask: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> =
                    Box::pin(async { sentinel.lock().await.async_get_client().await });
                tokio::time::timeout(self.timeout * 2, ask)
                    .await
                    .map_err(|_| KvError("asking the sentinels timed out".into()))?
                    .map_err(|e| KvError(format!("no master from the sentinels: {e}")))
            }
        }
    }

    /// `prefix` + `name`.
    pub fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many times the master changed (Sentinel mode) or the cluster's epoch rose (Cluster
    /// mode: a failover, or a change of the slot map). A change means writes an old master
    /// acknowledged may be lost: what was read from Redis before it proves nothing now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    async fn manager(&self) -> Result<Arc<Conn>, KvError> {
        if let Some(m) = self.manager.load_full() {
            return Ok(m);
        }
        // One connection attempt at a time; the others wait for its result.
        let _guard = self.connecting.lock().await;
        if let Some(m) = self.manager.load_full() {
            return Ok(m);
        }
        let client = match &self.source {
            Source::Cluster { client, .. } => {
                let connect = client.get_async_connection();
                let m = tokio::time::timeout(self.timeout * 2, connect)
                    .await
                    .map_err(|_| KvError("connecting to the cluster timed out".into()))?
                    .map_err(|e| KvError(e.to_string()))?;
                let m = Arc::new(Conn::Cluster(m));
                self.manager.store(Some(Arc::clone(&m)));
                return Ok(m);
            }
            _ => self.client().await?,
        };
        let connect = async {
            match self.source {
                Source::Standalone(_) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_millis(500));
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map(Conn::Managed)
                }
                Source::Sentinel(_) | Source::Cluster { .. } => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Conn::Direct)
                }
            }
        };
        let m = tokio::time::timeout(self.timeout * 2, connect)
            .await
            .map_err(|_| KvError("connect timed out".into()))?
            .map_err(|e| KvError(e.to_string()))?;
        if matches!(self.source, Source::Sentinel(_)) {
            let addr = client.get_connection_info().addr().to_string();
            let mut master = self.master.lock().unwrap_or_else(|e| e.into_inner());
            if master.as_ref().is_some_and(|old| *old != addr) {
                tracing::warn!(master = %addr, "Redis has a new master");
                // Before any command reaches it.
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            *master = Some(addr);
        }
        let m = Arc::new(m);
        self.manager.store(Some(Arc::clone(&m)));
        Ok(m)
    }

    /// After a failed command in Sentinel mode: the next one asks the sentinels for the master
    /// again.
    fn forget(&self, failed: &Arc<Conn>) {
        if matches!(self.source, Source::Sentinel(_)) {
            self.manager.rcu(|current| match current {
                Some(m) if Arc::ptr_eq(m, failed) => None,
                other => other.clone(),
            });
        }
    }

    /// Runs a pipeline (or a single command built as one) with the timeout.
    pub async fn run<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, KvError> {
        let manager = self.manager().await?;
        let query = async {
            match (*manager).clone() {
                Conn::Managed(mut c) => pipe.query_async::<T>(&mut c).await,
                Conn::Direct(mut c) => pipe.query_async::<T>(&mut c).await,
                Conn::Cluster(mut c) => pipe.query_async::<T>(&mut c).await,
            }
        };
        let failed = match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => KvError(e.to_string()),
            Err(_) => KvError("command timed out".into()),
        };
        self.forget(&manager);
        Err(failed)
    }

    /// Runs pipelines, each confined to one key (or keys of one hash slot), all at once: in a
    /// cluster each goes to its own shard. Their answers, in order.
    pub async fn run_all<T: FromRedisValue>(&self, pipes: &[Pipeline]) -> Result<Vec<T>, KvError> {
        futures_util::future::try_join_all(pipes.iter().map(|p| self.run::<T>(p))).await
    }

    /// `run_all` for pipelines whose answers are ignored.
    pub async fn run_each<'p>(
        &self,
        pipes: impl IntoIterator<Item = &'p Pipeline>,
    ) -> Result<(), KvError> {
        futures_util::future::try_join_all(pipes.into_iter().map(|p| self.run::<()>(p)))
            .await
            .map(|_| ())
    }

    /// Whether Redis answers a PING now (in a cluster: every node does). The change feed
    /// calls it every second; in a cluster it also notices a failover then.
    pub async fn ping(&self) -> bool {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        let up = self.run::<(String,)>(&pipe).await.is_ok();
        if up && matches!(self.source, Source::Cluster { .. }) {
            self.watch_cluster_epoch().await;
        }
        up
    }

    /// A replica promoted by a cluster failover raises the cluster's epoch; the cluster
    /// connection follows it without a word, so usher asks.
    async fn watch_cluster_epoch(&self) {
        let mut pipe = redis::pipe();
        pipe.cmd("CLUSTER").arg("INFO");
        let Some(epoch) = self
            .run::<(String,)>(&pipe)
            .await
            .ok()
            .and_then(|(info,)| current_epoch(&info))
        else {
            return;
        };
        let before = self.cluster_epoch.fetch_max(epoch, Ordering::AcqRel);
        if before != 0 && epoch > before {
            tracing::warn!(
                epoch,
                "Redis Cluster changed (a failover or a new slot map)"
            );
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// `cluster_current_epoch` from `CLUSTER INFO`.
fn current_epoch(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.strip_prefix("cluster_current_epoch:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `rediss://` in Sentinel and Cluster mode verifies servers against the system's roots: the
/// crate builds those connections itself, without `tls::redis_client`.
fn system_roots_only(cfg: &config::Redis, mode: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.ca_file.is_none(),
        "redis.ca_file is not supported with redis.mode = \"{mode}\"; use the system's roots"
    );
    Ok(())
}

/// The sentinels, asked for the master named `redis.master_name`; `redis.url` gives the
/// master's database, credentials and TLS.
fn sentinel_client(cfg: &config::Redis) -> anyhow::Result<SentinelClient> {
    system_roots_only(cfg, "sentinel")?;
    let node = cfg
        .url
        .expose()
        .into_connection_info()
        .map_err(|e| anyhow::anyhow!("redis.url is not a valid Redis URL: {e}"))?;
    let mut info = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(node.redis_settings().clone());
    if matches!(node.addr(), ConnectionAddr::TcpTls { .. }) {
        info = info.set_tls_mode(TlsMode::Secure);
    }
    SentinelClient::build(
        cfg.sentinels.clone(),
        cfg.master_name.clone(),
        Some(info),
        SentinelServerType::Master,
    )
    .map_err(|e| anyhow::anyhow!("redis.sentinels: {e}"))
}

/// A cluster client over `redis.nodes`, with the same timeouts as the other modes, and plain
/// clients for the same nodes for the feed.
fn cluster_source(cfg: &config::Redis) -> anyhow::Result<Source> {
    system_roots_only(cfg, "cluster")?;
    let nodes = cfg
        .nodes
        .iter()
        .map(|url| {
            Client::open(url.as_str())
                .map_err(|e| anyhow::anyhow!("redis.nodes: not a valid Redis URL: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = ClusterClient::builder(cfg.nodes.iter().map(String::as_str))
        .connection_timeout(cfg.timeout.0)
        .response_timeout(cfg.timeout.0)
        // One retry, for a MOVED or ASK after a slot moved; a dead shard is the caller's
        // business (PostgreSQL answers), not worth a longer wait.
        .retries(1)
        .build()
        .map_err(|e| anyhow::anyhow!("redis.nodes: {e}"))?;
    Ok(Source::Cluster {
        client,
        nodes,
        next: AtomicUsize::new(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_epoch_is_read_from_cluster_info() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\n\
                    cluster_current_epoch:7\r\ncluster_my_epoch:2\r\n";
        assert_eq!(current_epoch(info), Some(7));
        assert_eq!(current_epoch("cluster_state:fail\r\n"), None);
    }
}
