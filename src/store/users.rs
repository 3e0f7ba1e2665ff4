//! Users and their role assignments.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::Result;

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// E-mail as entered (trimmed).
    pub email: String,
    /// Disabled users cannot log in or refresh.
    pub disabled: bool,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Role names, sorted.
    pub roles: Vec<String>,
    /// Bumped on every change of the user's roles.
    #[serde(skip)]
    pub roles_version: i64,
}

/// What a login needs.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user.
    pub user: User,
    /// PHC string.
    pub password_hash: String,
}

/// Selects a user with its roles; `where` is appended.
const SELECT: &str =
    "select u.id, u.email, u.disabled, u.created_at, u.roles_version, u.password_hash,
        coalesce(array_agg(r.name order by r.name) filter (where r.name is not null), '{}') as roles
    from users u
    left join user_roles ur on ur.user_id = u.id
    left join roles r on r.id = ur.role_id";

impl From<&Row> for User {
    fn from(row: &Row) -> Self {
        User {
            id: row.get("id"),
            email: row.get("email"),
            disabled: row.get("disabled"),
            created_at: row.get("created_at"),
            roles: row.get("roles"),
            roles_version: row.get("roles_version"),
        }
    }
}

/// Creates a user holding the `user` role.
pub async fn create(db: &impl GenericClient, email: &str, password_hash: &str) -> Result<User> {
    let id = Uuid::new_v4();
    db.execute(
        "insert into users (id, email, password_hash) values ($1, $2, $3)",
        &[&id, &email, &password_hash],
    )
    .await?;
    db.execute(
        "insert into user_roles (user_id, role_id) select $1, id from roles where name = 'user'",
        &[&id],
    )
    .await?;
    by_id(db, id)
        .await?
        .ok_or_else(|| super::StoreError::Other(anyhow::anyhow!("user vanished after insert")))
}

/// A user by id.
pub async fn by_id(db: &impl GenericClient, id: Uuid) -> Result<Option<User>> {
    let sql = format!("{SELECT} where u.id = $1 group by u.id");
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db.query_opt(&stmt, &[&id]).await?.as_ref().map(User::from))
}

/// A user and password hash by e-mail, compared case-insensitively.
pub async fn credentials(db: &impl GenericClient, email: &str) -> Result<Option<Credentials>> {
    let sql = format!("{SELECT} where lower(u.email) = lower($1) group by u.id");
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db
        .query_opt(&stmt, &[&email])
        .await?
        .map(|row| Credentials {
            user: User::from(&row),
            password_hash: row.get("password_hash"),
        }))
}

/// The password hash of a user.
pub async fn password_hash(db: &impl GenericClient, id: Uuid) -> Result<Option<String>> {
    let stmt = db
        .prepare_cached("select password_hash from users where id = $1")
        .await?;
    Ok(db.query_opt(&stmt, &[&id]).await?.map(|r| r.get(0)))
}

/// Stores a new password hash.
pub async fn set_password_hash(db: &impl GenericClient, id: Uuid, hash: &str) -> Result<()> {
    db.execute(
        "update users set password_hash = $2, updated_at = now() where id = $1",
        &[&id, &hash],
    )
    .await?;
    Ok(())
}

/// Users whose roles changed since `since`, with their current roles version.
pub async fn roles_changed_since(
    db: &impl GenericClient,
    since: DateTime<Utc>,
) -> Result<Vec<(Uuid, i64)>> {
    let rows = db
        .query(
            "select id, roles_version from users where roles_changed_at > $1",
            &[&since],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The current roles version of a user (`None`: no such user).
pub async fn roles_version(db: &impl GenericClient, id: Uuid) -> Result<Option<i64>> {
    let stmt = db
        .prepare_cached("select roles_version from users where id = $1")
        .await?;
    Ok(db.query_opt(&stmt, &[&id]).await?.map(|r| r.get(0)))
}
