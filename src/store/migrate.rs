//! Migrations embedded from `sql/`, applied in one transaction under an advisory lock so that
//! replicas starting together do not race, and the built-in roles and permissions.

use anyhow::Context;
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::permissions::{Permission, BUILTIN_ROLES, USER_ROLE_GRANTS};

/// `(version, sql)`, in order.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../sql/0001_init.sql")),
    (
        "0002_login_limits",
        include_str!("../../sql/0002_login_limits.sql"),
    ),
    (
        "0003_key_lifecycle",
        include_str!("../../sql/0003_key_lifecycle.sql"),
    ),
    (
        "0004_retention",
        include_str!("../../sql/0004_retention.sql"),
    ),
];

/// Any constant; the same for every usher.
const LOCK_KEY: i64 = 0x0075_7368_6572; // "usher"

/// Applies the pending migrations; returns the versions applied now.
pub async fn migrate(pool: &Pool) -> anyhow::Result<Vec<&'static str>> {
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    let tx = client.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "create table if not exists schema_migrations (
             version text primary key,
             applied_at timestamptz not null default now()
         )",
    )
    .await?;
    let done: Vec<String> = tx
        .query("select version from schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.iter().any(|d| d == version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {version}"))?;
        tx.execute(
            "insert into schema_migrations (version) values ($1)",
            &[version],
        )
        .await?;
        applied.push(*version);
    }
    // The canonical form is computed in Rust, so SQL cannot fill it for existing users.
    let clashes = super::users::fill_canonical_emails(&tx)
        .await
        .context("filling canonical e-mails")?;
    for id in clashes {
        tracing::warn!(user = %id, "an older account has the same canonical e-mail; this one cannot log in by e-mail until its e-mail is changed");
    }
    tx.commit().await?;
    Ok(applied)
}

/// Creates the built-in permissions and roles that are missing, and adds the service
/// permissions of the route map. Grants of an existing `user` role are left as operators set them.
pub async fn seed(pool: &Pool, service_permissions: &[(String, String)]) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    let tx = client.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    let upsert = tx
        .prepare(
            "insert into permissions (name, description, builtin) values ($1, $2, $3)
             on conflict (name) do update set description = excluded.description,
                                              builtin = excluded.builtin",
        )
        .await?;
    for permission in Permission::ALL {
        tx.execute(
            &upsert,
            &[&permission.name(), &permission.description(), &true],
        )
        .await?;
    }
    for (name, description) in service_permissions {
        tx.execute(&upsert, &[name, description, &false]).await?;
    }
    let mut changed = false;
    for (name, description) in BUILTIN_ROLES {
        let created = tx
            .query_opt(
                "insert into roles (id, name, description, builtin) values ($1, $2, $3, true)
                 on conflict (name) do update set builtin = true where roles.builtin = false
                 returning id",
                &[&Uuid::new_v4(), name, description],
            )
            .await?;
        if let (Some(row), "user") = (created, *name) {
            let id: Uuid = row.get(0);
            for permission in USER_ROLE_GRANTS {
                tx.execute(
                    "insert into role_permissions (role_id, permission) values ($1, $2)
                     on conflict do nothing",
                    &[&id, &permission.name()],
                )
                .await?;
            }
            changed = true;
        }
    }
    if changed || !service_permissions.is_empty() {
        tx.execute("update catalog_version set version = version + 1", &[])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
