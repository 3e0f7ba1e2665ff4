//! The Redis handle: one auto-reconnecting multiplexed connection, the key prefix, and a
//! timeout on every command so that a dead Redis costs a bounded wait, never a hang.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, Pipeline};

use crate::config;

/// Redis, as usher uses it.
pub struct Kv {
    client: Client,
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
        let client = crate::tls::redis_client(cfg.url.expose(), cfg.ca_file.as_deref())?;
        Ok(Arc::new(Kv {
            client,
            manager: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout.0,
        }))
    }

    /// The client, for the change feed's dedicated subscriber connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `prefix` + `name`.
    pub fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn manager(&self) -> Result<ConnectionManager, KvError> {
        if let Some(m) = self.manager.load_full() {
            return Ok((*m).clone());
        }
        // One connection attempt at a time; the others wait for its result.
        let _guard = self.connecting.lock().await;
        if let Some(m) = self.manager.load_full() {
            return Ok((*m).clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let m = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| KvError("connect timed out".into()))?
        .map_err(|e| KvError(e.to_string()))?;
        self.manager.store(Some(Arc::new(m.clone())));
        Ok(m)
    }

    /// Runs a pipeline (or a single command built as one) with the timeout.
    pub async fn run<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, KvError> {
        let mut conn = self.manager().await?;
        match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(KvError(e.to_string())),
            Err(_) => Err(KvError("command timed out".into())),
        }
    }

    /// Whether Redis answers a PING now.
    pub async fn ping(&self) -> bool {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.run::<(String,)>(&pipe).await.is_ok()
    }
}
