//! The change feed: one Redis pub/sub subscription per replica that applies every other
//! replica's changes (revoked sessions, roles versions, grants, signing keys) to this one's
//! memory. While it is down, memory stops vouching for tokens (see `revocation`) and the
//! permission snapshot is polled from PostgreSQL instead.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::change::Change;
use crate::kv::keys;
use crate::metrics::Metrics;
use crate::state::State;

/// First and longest wait between attempts to resubscribe.
const RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(2));

/// Runs until `shutdown` flips to true. Retries back off exponentially, and an outage is
/// logged once when it begins (and `change feed up` once when it ends), not at every retry.
pub async fn run(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let channel = state.kv.key(keys::FEED);
    let mut delay = RETRY.0;
    let mut said_down = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut was_up = false;
        match subscribe_and_listen(&state, &channel, &mut shutdown, &mut was_up).await {
            Ok(()) => return,
            Err(e) => {
                state.revocation.feed_lost();
                state.metrics.feed_failure();
                if was_up {
                    (delay, said_down) = (RETRY.0, false);
                }
                if said_down {
                    tracing::debug!(error = %e, "change feed still down");
                } else {
                    tracing::warn!(error = %e, "change feed down; checks ask Redis or PostgreSQL");
                    said_down = true;
                }
            }
        }
        // While down: keep the permission snapshot current by polling, then retry.
        if let Err(e) = state.permissions.refresh(&state.db, false).await {
            tracing::debug!(error = %e, "permission snapshot not refreshed");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = backoff(delay);
    }
}

async fn subscribe_and_listen(
    state: &Arc<State>,
    channel: &str,
    shutdown: &mut watch::Receiver<bool>,
    up: &mut bool,
) -> anyhow::Result<()> {
    let timeout = state.kv.timeout();
    let client = state.kv.client().await?;
    let mut pubsub = tokio::time::timeout(timeout * 2, client.get_async_pubsub())
        .await
        .map_err(|_| anyhow::anyhow!("connecting timed out"))??;
    tokio::time::timeout(timeout * 2, pubsub.subscribe(channel))
        .await
        .map_err(|_| anyhow::anyhow!("subscribing timed out"))??;
    // Subscribed: from here on nothing is missed. Catch up on what may have been.
    state.permissions.refresh(&state.db, true).await?;
    state.reload_keys().await;
    state.revocation.feed_ready().await?;
    tracing::info!("change feed up");
    *up = true;
    let mut messages = pubsub.on_message();
    // A silent network partition would leave the subscription looking alive; a ping on the
    // command connection each second notices a Redis that stopped answering.
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    anyhow::bail!("subscription closed");
                };
                let payload: String = message.get_payload().unwrap_or_default();
                apply(state, &payload).await?;
            }
            _ = heartbeat.tick() => {
                if !state.kv.ping().await {
                    anyhow::bail!("Redis does not answer");
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

async fn apply(state: &Arc<State>, payload: &str) -> anyhow::Result<()> {
    match read(payload, &state.metrics) {
        // If the snapshot cannot be reread, the feed is treated as down (and memory stops
        // vouching) until a new subscription has read it.
        Some(Change::Catalog) => state.permissions.refresh(&state.db, true).await?,
        Some(Change::Keys) => state.reload_keys().await,
        Some(change) => state.revocation.apply(&change),
        None => {}
    }
    Ok(())
}

/// The change a message carries. An unknown one (a newer replica's, or someone else's on
/// this channel) is nothing this replica can act on, but it is logged and counted, not lost
/// without a trace.
fn read(payload: &str, metrics: &Metrics) -> Option<Change> {
    match Change::decode(payload) {
        Ok(change) => Some(change),
        Err(unknown) => {
            metrics.feed_unknown();
            tracing::warn!(message = %unknown.0, "unknown change-feed message ignored");
            None
        }
    }
}

/// The wait before the next attempt to resubscribe.
fn backoff(delay: Duration) -> Duration {
    (delay * 2).min(RETRY.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_and_unknown_ones_counted() {
        let metrics = Metrics::default();
        let sid = uuid::Uuid::new_v4();
        assert_eq!(
            read(&Change::Session(sid).encode(), &metrics),
            Some(Change::Session(sid))
        );
        assert_eq!(read("c", &metrics), Some(Change::Catalog));
        assert_eq!(read("z 1", &metrics), None);
        assert_eq!(read("s nobody", &metrics), None);
        let text = metrics.render(&crate::metrics::Health {
            cache_hits: 0,
            cache_misses: 0,
            pool_idle: 0,
            pool_in_use: 0,
            pool_max: 1,
            readiness: "ready",
            redis_up: true,
            feed_up: true,
            pending: 0,
        });
        assert!(text.contains("\nusher_feed_unknown_total 2\n"), "{text}");
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let mut delay = RETRY.0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            delay = backoff(delay);
            waits.push(delay.as_millis());
        }
        assert_eq!(waits, [500, 1000, 2000, 2000, 2000, 2000]);
    }
}
