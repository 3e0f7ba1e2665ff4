//! Signing keys, so that replicas sharing a database sign and verify with the same keys.

use deadpool_postgres::Pool;

use super::{conn, Result};

/// A key as kept: kid, private part, public part (empty for HS256).
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// PKCS#8 DER (Ed25519) or the secret (HS256).
    pub private_key: Vec<u8>,
    /// Raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// When (Unix seconds) it retires; `None`: it signs, or comes from the configuration.
    pub retires_at: Option<i64>,
}

/// The keys of one algorithm that have not retired yet, newest first, each with the time
/// (Unix seconds) it retires at. A key retires `retire_after_secs` after the next newer key
/// was made (its tokens have expired by then), or when `usher keys retire` said so.
pub async fn list(pool: &Pool, algorithm: &str, retire_after_secs: f64) -> Result<Vec<StoredKey>> {
    let db = conn(pool).await?;
    let rows = db
        .query(
            "select kid, private_key, public_key,
                    floor(extract(epoch from retires_at))::bigint
             from (select kid, private_key, public_key, created_at,
                          least(retired_at,
                                lag(created_at) over (order by created_at desc, kid)
                                    + make_interval(secs => $2)) as retires_at
                   from signing_keys where algorithm = $1) k
             where retires_at is null or retires_at > now()
             order by created_at desc, kid",
            &[&algorithm, &retire_after_secs],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredKey {
            kid: r.get(0),
            private_key: r.get(1),
            public_key: r.get(2),
            retires_at: r.get(3),
        })
        .collect())
}

/// What `retire` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// Retired now.
    Now,
    /// It had been retired before.
    Already,
    /// No key has that id.
    Unknown,
    /// It is the newest key, the one that signs: rotate first.
    Signing,
}

/// Retires the key `kid` at once, unless it is the newest of its algorithm.
pub async fn retire(pool: &Pool, kid: &str) -> Result<Retired> {
    let mut db = conn(pool).await?;
    let tx = db.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
        .await?;
    let Some(row) = tx
        .query_opt(
            "select algorithm, retired_at is not null from signing_keys where kid = $1",
            &[&kid],
        )
        .await?
    else {
        return Ok(Retired::Unknown);
    };
    let (algorithm, retired): (String, bool) = (row.get(0), row.get(1));
    if retired {
        return Ok(Retired::Already);
    }
    let newest: String = tx
        .query_one(
            "select kid from signing_keys where algorithm = $1
             order by created_at desc, kid limit 1",
            &[&algorithm],
        )
        .await?
        .get(0);
    if newest == kid {
        return Ok(Retired::Signing);
    }
    tx.execute(
        "update signing_keys set retired_at = now() where kid = $1",
        &[&kid],
    )
    .await?;
    tx.commit().await?;
    Ok(Retired::Now)
}

/// The key refresh-token successors are derived with: `candidate` stored if there is none
/// yet (the first usher to start makes it), the stored one returned.
pub async fn refresh_secret(pool: &Pool, candidate: &[u8]) -> Result<Vec<u8>> {
    let db = conn(pool).await?;
    db.execute(
        "insert into refresh_secret (id, secret) values (1, $1) on conflict (id) do nothing",
        &[&candidate],
    )
    .await?;
    Ok(db
        .query_one("select secret from refresh_secret where id = 1", &[])
        .await?
        .get(0))
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
