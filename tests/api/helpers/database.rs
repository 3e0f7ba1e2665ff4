//! PostgreSQL as its superuser sees it: test databases by name, and outages.

use usher::config::Config;

use super::{admin_url, TestApp};

/// The database name of a configuration.
pub fn database_name(config: &Config) -> String {
    config
        .database
        .url
        .expose()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs SQL as the PostgreSQL superuser, on the `postgres` database.
pub async fn admin_sql(statement: &str) {
    let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("the admin connection to PostgreSQL");
    tokio::spawn(conn);
    client
        .batch_execute(statement)
        .await
        .expect("admin SQL runs");
}

/// Drops a test database, whoever is connected to it.
pub async fn drop_database(name: &str) {
    admin_sql(&format!("drop database if exists \"{name}\" with (force)")).await;
}

/// PostgreSQL down for one app: its database refuses connections and the open ones are cut.
/// `end` lets it back in; the database is dropped with the app either way.
pub struct PostgresOutage {
    name: String,
}

impl PostgresOutage {
    pub async fn start(app: &TestApp) -> PostgresOutage {
        let name = database_name(&app.config);
        admin_sql(&format!(
            "alter database \"{name}\" allow_connections false;
             select pg_terminate_backend(pid) from pg_stat_activity
             where datname = '{name}' and pid <> pg_backend_pid();"
        ))
        .await;
        PostgresOutage { name }
    }

    pub async fn end(self) {
        admin_sql(&format!(
            "alter database \"{}\" allow_connections true",
            self.name
        ))
        .await;
    }
}
