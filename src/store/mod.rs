//! PostgreSQL: the pool, migrations, and one file per table family. SQL lives here and
//! nowhere else; errors are mapped once, here, to what the API needs to tell apart.

pub mod attempts;
pub mod history;
pub mod keys;
pub mod migrate;
pub mod retention;
pub mod roles;
pub mod sessions;
pub mod users;

use std::str::FromStr;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config;

/// What callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL cannot be reached or the pool timed out: the API answers 503.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint was hit: the API answers 409 with this code.
    #[error("conflict {0}: {1}")]
    Conflict(&'static str, String),
    /// Anything else: a 500, logged.
    #[error(transparent)]
    Other(anyhow::Error),
}

/// Result of store functions.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            if *db.code() == SqlState::UNIQUE_VIOLATION {
                // Mapped by constraint name, in this one place.
                return match db.constraint() {
                    Some("users_email_key") => StoreError::Conflict(
                        "email_taken",
                        "This e-mail is already registered.".into(),
                    ),
                    Some("roles_name_key") => {
                        StoreError::Conflict("role_exists", "A role with this name exists.".into())
                    }
                    _ => StoreError::Other(e.into()),
                };
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

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
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
