//! Background retention: every `retention.interval` each replica tries to prune expired
//! sessions (with their refresh-token rows) and old login history; the advisory lock in
//! `store::retention` lets one of them do it at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::state::State;
use crate::store::retention::{self, Policy, Pruned};

/// The pruning policy of a configuration.
pub fn policy(state: &State) -> Policy {
    let config = &state.config;
    Policy {
        session_margin: config.tokens.access_ttl.0,
        login_history: config.retention.login_history.0,
        batch: i64::try_from(config.retention.batch).unwrap_or(i64::MAX),
    }
}

/// One pruning run, counted in the metrics; `None` when another replica is at it.
pub async fn prune_once(state: &State) -> crate::store::Result<Option<Pruned>> {
    let pruned = retention::prune(&state.db, policy(state)).await?;
    if let Some(p) = pruned {
        state.metrics.pruned(&p);
        if p != Pruned::default() {
            tracing::info!(
                sessions = p.sessions,
                refresh_tokens = p.refresh_tokens,
                login_history = p.login_history,
                "pruned expired rows"
            );
        }
    }
    Ok(pruned)
}

/// Runs until `shutdown` flips. The first run comes a minute after start (or one interval,
/// if shorter), so a fleet restarting together does not prune first thing.
pub async fn run(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let every = state.config.retention.interval.0;
    let mut wait = every.min(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = prune_once(&state).await {
            tracing::warn!(error = %e, "pruning failed; trying again at the next interval");
        }
        wait = every;
    }
}
