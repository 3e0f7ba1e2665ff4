//! Pruning: expired sessions with their refresh-token rows, and old login history. One
//! replica at a time (a session-level advisory lock), in bounded batches so that no statement
//! holds row locks for long or bloats one transaction.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::Result;

/// Any constant other than the migrations' lock; the same for every usher.
pub const LOCK_KEY: i64 = 0x0075_7368_6572_0001;

/// Rows deleted by one pruning run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Sessions that had expired.
    pub sessions: u64,
    /// Refresh-token rows of those sessions.
    pub refresh_tokens: u64,
    /// Login-history rows older than the retention.
    pub login_history: u64,
}

/// What to prune and how.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// A session is pruned this long after it expired (the life of an access token, so that
    /// no token outlives the row that says whether it is revoked).
    pub session_margin: Duration,
    /// Login history older than this goes.
    pub login_history: Duration,
    /// Rows per statement.
    pub batch: i64,
}

/// Prunes, unless another replica holds the lock (then `None`).
pub async fn prune(pool: &Pool, policy: Policy) -> Result<Option<Pruned>> {
    let db = pool.get().await?;
    let locked: bool = db
        .query_one("select pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let result = prune_locked(&db, policy).await;
    // Unlock even after a failure; should this fail too, the connection is broken and the
    // lock went with it.
    let _ = db
        .execute("select pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result.map(Some)
}

async fn prune_locked(db: &deadpool_postgres::Object, policy: Policy) -> Result<Pruned> {
    let margin = policy.session_margin.as_secs_f64();
    let history = policy.login_history.as_secs_f64();
    let mut pruned = Pruned::default();
    // The refresh tokens are deleted by name (rather than by the cascade) so they can be counted.
    let sessions = db
        .prepare_cached(
            "with doomed as (
                 select id from sessions
                 where expires_at < now() - make_interval(secs => $1)
                 order by expires_at limit $2
                 for update skip locked
             ), tokens as (
                 delete from refresh_tokens where session_id in (select id from doomed)
                 returning 1
             ), gone as (
                 delete from sessions where id in (select id from doomed) returning 1
             )
             select (select count(*) from gone), (select count(*) from tokens)",
        )
        .await?;
    loop {
        let row = db.query_one(&sessions, &[&margin, &policy.batch]).await?;
        let (n, tokens): (i64, i64) = (row.get(0), row.get(1));
        pruned.sessions += n as u64;
        pruned.refresh_tokens += tokens as u64;
        if n < policy.batch {
            break;
        }
    }
    let history_batch = db
        .prepare_cached(
            "delete from login_history where id in (
                 select id from login_history
                 where at < now() - make_interval(secs => $1)
                 order by at limit $2
             )",
        )
        .await?;
    loop {
        let n = db
            .execute(&history_batch, &[&history, &policy.batch])
            .await?;
        pruned.login_history += n;
        if n < policy.batch as u64 {
            break;
        }
    }
    Ok(pruned)
}
