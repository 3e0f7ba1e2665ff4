//! The Redis handle: one auto-reconnecting multiplexed connection, the key prefix, and a
//! timeout on every command so that a dead Redis costs a bounded wait, never a hang. In
//! Sentinel mode the master is asked of the sentinels, and asked again whenever a command fails
//! (the old master gone, or demoted and answering `-READONLY`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, ConnectionAddr, FromRedisValue, IntoConnectionInfo, Pipeline, TlsMode};

use crate::config::{self, RedisMode};

/// Where the Redis server comes from.
enum Source {
    /// `redis.url`.
    Standalone(Client),
    /// The current master, as the sentinels name it.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// Redis, as usher uses it.
pub struct Kv {
    source: Source,
    manager: ArcSwapOption<ConnectionManager>,
    connecting: tokio::sync::Mutex<()>,
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
        };
        Ok(Arc::new(Kv {
            source,
            manager: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout.0,
        }))
    }

    /// A client for the server to use now (in Sentinel mode, the current master): for the
    /// command connection and the change feed's dedicated subscriber connection.
    pub async fn client(&self) -> Result<Client, KvError> {
        match &self.source {
            Source::Standalone(client) => Ok(client.clone()),
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

    async fn manager(&self) -> Result<Arc<ConnectionManager>, KvError> {
        if let Some(m) = self.manager.load_full() {
            return Ok(m);
        }
        // One connection attempt at a time; the others wait for its result.
        let _guard = self.connecting.lock().await;
        if let Some(m) = self.manager.load_full() {
            return Ok(m);
        }
        let client = self.client().await?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let m = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| KvError("connect timed out".into()))?
        .map_err(|e| KvError(e.to_string()))?;
        let m = Arc::new(m);
        self.manager.store(Some(Arc::clone(&m)));
        Ok(m)
    }

    /// After a failed command in Sentinel mode: the next one asks the sentinels for the master
    /// again (the connection manager alone would reconnect to the same, perhaps demoted, host).
    fn forget(&self, failed: &Arc<ConnectionManager>) {
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
        let mut conn = (*manager).clone();
        let failed =
            match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => KvError(e.to_string()),
                Err(_) => KvError("command timed out".into()),
            };
        self.forget(&manager);
        Err(failed)
    }

    /// Whether Redis answers a PING now.
    pub async fn ping(&self) -> bool {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.run::<(String,)>(&pipe).await.is_ok()
    }
}

/// The sentinels, asked for the master named `redis.master_name`; `redis.url` gives the
/// master's database, credentials and TLS.
fn sentinel_client(cfg: &config::Redis) -> anyhow::Result<SentinelClient> {
    anyhow::ensure!(
        cfg.ca_file.is_none(),
        "redis.ca_file is not supported with redis.mode = \"sentinel\"; use the system's roots"
    );
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
