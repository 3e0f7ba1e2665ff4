//! PostgreSQL: the pool, migrations, and one file per table family. SQL lives here and
//! nowhere else; errors are mapped once, here, to what callers need to tell apart (an outage,
//! which unique constraint was hit). What a conflict means to a client is the domain's.

pub mod attempts;
pub mod history;
pub mod keys;
pub mod migrate;
pub mod retention;
pub mod roles;
pub mod sessions;
pub mod users;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use deadpool_postgres::{
    HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config;

/// What callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL cannot be reached or the pool timed out: the API answers 503.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint was hit.
    #[error("unique constraint {0:?} violated")]
    Conflict(Unique),
    /// Anything else: a 500, logged.
    #[error(transparent)]
    Other(anyhow::Error),
}

/// The unique constraints callers tell apart, by the name the schema gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unique {
    /// `users_email_key`: one account per canonical e-mail.
    UserEmail,
    /// `roles_name_key`: one role per name.
    RoleName,
}

impl Unique {
    /// The constraint of this name, if callers care about it.
    fn named(constraint: &str) -> Option<Unique> {
        match constraint {
            "users_email_key" => Some(Unique::UserEmail),
            "roles_name_key" => Some(Unique::RoleName),
            _ => None,
        }
    }
}

/// Result of store functions.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            if *db.code() == SqlState::UNIQUE_VIOLATION {
                // Mapped by constraint name, in this one place.
                return match db.constraint().and_then(Unique::named) {
                    Some(unique) => StoreError::Conflict(unique),
                    None => StoreError::Other(e.into()),
                };
            }
            if *db.code() == SqlState::READ_ONLY_SQL_TRANSACTION {
                // The server this connection reaches is no longer the primary.
                suspect_read_only();
                return StoreError::Unavailable(db.message().to_owned());
            }
            let class = &db.code().code()[..2];
            // 08: connection exception, 57: operator intervention (shutdown), 53: resources.
            if matches!(class, "08" | "57" | "53") {
                return StoreError::Unavailable(db.message().to_owned());
            }
            return StoreError::Other(e.into());
        }
        if e.is_closed() || e.code().is_none() {
            return StoreError::Unavailable(e.to_string());
        }
        StoreError::Other(e.into())
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// How long after a read-only error every pooled connection is checked before use.
const READ_ONLY_WATCH_MS: u64 = 30_000;

/// Until when (ms since the epoch) connections are checked for a read-only server.
static READ_ONLY_UNTIL: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A statement failed with `read_only_sql_transaction`: the primary was demoted under an open
/// connection. For a while, each connection is checked before it is handed out, and those that
/// reach a read-only server are dropped, so the pool reconnects (with
/// `target_session_attrs=read-write`, to the new primary).
fn suspect_read_only() {
    READ_ONLY_UNTIL.store(now_ms() + READ_ONLY_WATCH_MS, Ordering::Relaxed);
}

/// The pool's post-recycle hook: free in the steady state, one round trip per checkout while a
/// read-only error is recent.
async fn drop_if_read_only(client: &tokio_postgres::Client) -> Result<(), HookError> {
    if now_ms() >= READ_ONLY_UNTIL.load(Ordering::Relaxed) {
        return Ok(());
    }
    let rows = client
        .simple_query("show transaction_read_only")
        .await
        .map_err(HookError::Backend)?;
    let read_only = rows.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
        _ => false,
    });
    if read_only {
        return Err(HookError::message("the server is read-only"));
    }
    Ok(())
}

/// A pooled connection, or 503.
pub async fn conn(pool: &Pool) -> Result<Object> {
    Ok(pool.get().await?)
}

/// Builds the pool; creates the database first when allowed and missing.
pub async fn connect(cfg: &config::Database) -> anyhow::Result<Pool> {
    let tls = crate::tls::parse_pg(cfg.url.expose(), cfg.ca_file.as_deref())?;
    let pg = tokio_postgres::Config::from_str(&tls.url)
        .context("database.url is not a valid PostgreSQL URL")?;
    let tls = crate::tls::postgres(&tls)?;
    if cfg.create_if_missing {
        create_database_if_missing(&pg, &tls).await?;
    }
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(cfg.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(cfg.timeout.0))
        .create_timeout(Some(cfg.timeout.0))
        .recycle_timeout(Some(cfg.timeout.0))
        .post_recycle(deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(drop_if_read_only(client))
        }))
        .build()
        .context("building the PostgreSQL pool")?;
    Ok(pool)
}

async fn create_database_if_missing(
    pg: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> anyhow::Result<()> {
    let Some(name) = pg.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    match pg.connect(tls.clone()).await {
        Ok(_) => return Ok(()),
        Err(e) if e.as_db_error().map(|d| d.code()) == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) => return Err(anyhow::Error::new(e).context("connecting to PostgreSQL")),
    }
    let mut admin = pg.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(tls.clone())
        .await
        .context("connecting to the `postgres` database to create usher's")?;
    tokio::spawn(connection);
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("create database {quoted}"))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created the database");
            Ok(())
        }
        // Another replica created it at the same moment (PostgreSQL reports that as either
        // duplicate_database or a unique violation on pg_database).
        Err(_) if pg.connect(tls.clone()).await.is_ok() => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating database {name}"))),
    }
}
