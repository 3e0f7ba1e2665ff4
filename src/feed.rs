//! The change feed: one Redis pub/sub subscription per replica that applies every other
//! replica's changes (revoked sessions, roles versions, grants, signing keys) to this one's
//! memory. While it is down, memory stops vouching for tokens (see `revocation`) and the
//! permission snapshot is polled from PostgreSQL instead.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::app::State;
use crate::revocation::FEED;

/// Runs until `shutdown` flips to true.
pub async fn run(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let channel = state.kv.key(FEED);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match subscribe_and_listen(&state, &channel, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                state.revocation.feed_lost();
                tracing::warn!(error = %e, "change feed down; checks ask Redis or PostgreSQL");
            }
        }
        // While down: keep the permission snapshot current by polling, then retry.
        if let Err(e) = state.permissions.refresh(&state.db, false).await {
            tracing::debug!(error = %e, "permission snapshot not refreshed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn subscribe_and_listen(
    state: &Arc<State>,
    channel: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let timeout = state.kv.timeout();
    let mut pubsub = tokio::time::timeout(timeout * 2, state.kv.client().get_async_pubsub())
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
    match payload {
        // If the snapshot cannot be reread, the feed is treated as down (and memory stops
        // vouching) until a new subscription has read it.
        "c" => state.permissions.refresh(&state.db, true).await?,
        "k" => state.reload_keys().await,
        other => state.revocation.apply(other),
    }
    Ok(())
}
