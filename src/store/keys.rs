//! Signing keys, so that replicas sharing a database sign and verify with the same keys.

use deadpool_postgres::Pool;

use super::{conn, Result};
use crate::tokens::StoredKey;

/// Keys of one algorithm, newest first.
pub async fn list(pool: &Pool, algorithm: &str) -> Result<Vec<StoredKey>> {
    let db = conn(pool).await?;
    let rows = db
        .query(
            "select kid, private_key, public_key from signing_keys
             where algorithm = $1 order by created_at desc, kid",
            &[&algorithm],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredKey {
            kid: r.get(0),
            private_key: r.get(1),
            public_key: r.get(2),
        })
        .collect())
}

/// Adds a key.
pub async fn insert(pool: &Pool, algorithm: &str, key: &StoredKey) -> Result<()> {
    let db = conn(pool).await?;
    db.execute(
        "insert into signing_keys (kid, algorithm, private_key, public_key, created_at)
         values ($1, $2, $3, $4, clock_timestamp()) on conflict (kid) do nothing",
        &[&key.kid, &algorithm, &key.private_key, &key.public_key],
    )
    .await?;
    Ok(())
}

/// Adds `key` only when there is no key of `algorithm` yet, under a lock, so that replicas
/// starting together on an empty database end up with one key, not one each.
pub async fn insert_first(pool: &Pool, algorithm: &str, key: &StoredKey) -> Result<()> {
    let mut db = conn(pool).await?;
    let tx = db.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
        .await?;
    let existing: i64 = tx
        .query_one(
            "select count(*) from signing_keys where algorithm = $1",
            &[&algorithm],
        )
        .await?
        .get(0);
    if existing == 0 {
        tx.execute(
            "insert into signing_keys (kid, algorithm, private_key, public_key)
             values ($1, $2, $3, $4)",
            &[&key.kid, &algorithm, &key.private_key, &key.public_key],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

const KEYS_LOCK: i64 = 0x0075_7368_6b65; // "ushke"
