//! Roles, grants and the permission catalog: the rows every decision's snapshot is built
//! from, and the roles API's reads and writes.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{conn, Result};

/// The version of roles and grants.
pub async fn catalog_version(pool: &Pool) -> Result<i64> {
    let db = conn(pool).await?;
    let stmt = db
        .prepare_cached("select version from catalog_version")
        .await?;
    Ok(db.query_one(&stmt, &[]).await?.get(0))
}

/// Roles and grants as read at one moment.
#[derive(Debug, Default)]
pub struct Grants {
    /// `catalog_version` they were read at.
    pub version: i64,
    /// `(role, permission)`; a role without grants appears once, with `None`.
    pub grants: Vec<(String, Option<String>)>,
    /// Every permission of the catalog, by name, sorted.
    pub catalog: Vec<String>,
}

/// Every role with its grants, and the catalog, read in one snapshot.
pub async fn grants(pool: &Pool) -> Result<Grants> {
    let mut db = conn(pool).await?;
    let tx = db
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: i64 = tx
        .query_one("select version from catalog_version", &[])
        .await?
        .get(0);
    let grants = tx
        .query(
            "select r.name, rp.permission from roles r
             left join role_permissions rp on rp.role_id = r.id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let catalog = tx
        .query("select name from permissions order by name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await?;
    Ok(Grants {
        version,
        grants,
        catalog,
    })
}

/// A role as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Role {
    /// Id.
    pub id: Uuid,
    /// Name: 1–64 of `a-z 0-9 _ -`.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Built-in roles cannot be deleted or renamed.
    pub builtin: bool,
    /// Granted permissions, sorted; for `superuser`, the whole catalog.
    pub permissions: Vec<String>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Last change of name, description or grants.
    pub updated_at: DateTime<Utc>,
}

impl From<&Row> for Role {
    fn from(row: &Row) -> Self {
        Role {
            id: row.get("id"),
            name: row.get("name"),
            description: row.get("description"),
            builtin: row.get("builtin"),
            permissions: row.get("permissions"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }
    }
}

/// A permission of the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct Permission {
    /// Name.
    pub name: String,
    /// What it lets the holder do.
    pub description: String,
    /// Built into usher (else declared by the route map).
    pub builtin: bool,
}

/// Selects roles with their grants; `where`/`order` are appended. `superuser` lists the whole
/// catalog because it holds it in code, whatever `role_permissions` says.
const SELECT: &str = "select r.id, r.name, r.description, r.builtin, r.created_at, r.updated_at,
        case when r.builtin and r.name = 'superuser'
             then (select coalesce(array_agg(p.name order by p.name), '{}') from permissions p)
             else (select coalesce(array_agg(rp.permission order by rp.permission), '{}')
                   from role_permissions rp where rp.role_id = r.id)
        end as permissions
    from roles r";

/// Every role, ordered by name.
pub async fn list(db: &impl GenericClient) -> Result<Vec<Role>> {
    let stmt = db
        .prepare_cached(&format!("{SELECT} order by r.name"))
        .await?;
    Ok(db.query(&stmt, &[]).await?.iter().map(Role::from).collect())
}

/// A role by id.
pub async fn by_id(db: &impl GenericClient, id: Uuid) -> Result<Option<Role>> {
    let stmt = db
        .prepare_cached(&format!("{SELECT} where r.id = $1"))
        .await?;
    Ok(db.query_opt(&stmt, &[&id]).await?.as_ref().map(Role::from))
}

/// The roles a user holds, ordered by name.
pub async fn of_user(db: &impl GenericClient, user: Uuid) -> Result<Vec<Role>> {
    let stmt = db
        .prepare_cached(&format!(
            "{SELECT} where r.id in (select role_id from user_roles where user_id = $1)
             order by r.name"
        ))
        .await?;
    Ok(db
        .query(&stmt, &[&user])
        .await?
        .iter()
        .map(Role::from)
        .collect())
}

/// Locks a role for the rest of the transaction: `(name, builtin)`, or `None` if missing.
pub async fn lock(db: &impl GenericClient, id: Uuid) -> Result<Option<(String, bool)>> {
    let row = db
        .query_opt(
            "select name, builtin from roles where id = $1 for update",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Whether a role exists, keeping it from being deleted until the transaction ends.
pub async fn hold(db: &impl GenericClient, id: Uuid) -> Result<bool> {
    Ok(db
        .query_opt("select 1 from roles where id = $1 for share", &[&id])
        .await?
        .is_some())
}

/// Creates a role without grants; `role_exists` when the name is taken.
pub async fn create(db: &impl GenericClient, name: &str, description: &str) -> Result<Uuid> {
    let id = Uuid::new_v4();
    db.execute(
        "insert into roles (id, name, description) values ($1, $2, $3)",
        &[&id, &name, &description],
    )
    .await?;
    Ok(id)
}

/// Changes name and/or description (`None` keeps it).
pub async fn update(
    db: &impl GenericClient,
    id: Uuid,
    name: Option<&str>,
    description: Option<&str>,
) -> Result<()> {
    db.execute(
        "update roles set name = coalesce($2, name), description = coalesce($3, description),
                          updated_at = now()
         where id = $1",
        &[&id, &name, &description],
    )
    .await?;
    Ok(())
}

/// The first of `names` that is not in the catalog.
pub async fn first_unknown(db: &impl GenericClient, names: &[String]) -> Result<Option<String>> {
    let row = db
        .query_opt(
            "select n from unnest($1::text[]) with ordinality as t(n, i)
             where not exists (select 1 from permissions p where p.name = t.n)
             order by i limit 1",
            &[&names],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The id of the role named `name`, locked for the transaction.
pub async fn id_by_name(db: &impl GenericClient, name: &str) -> Result<Option<Uuid>> {
    let row = db
        .query_opt("select id from roles where name = $1 for update", &[&name])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Adds (`grant`) or removes permissions of a role; what is already so is left alone.
pub async fn change_grants(
    db: &impl GenericClient,
    role: Uuid,
    names: &[String],
    grant: bool,
) -> Result<()> {
    let sql = if grant {
        "insert into role_permissions (role_id, permission)
         select $1, n from unnest($2::text[]) as t(n) on conflict do nothing"
    } else {
        "delete from role_permissions where role_id = $1 and permission = any($2::text[])"
    };
    db.execute(sql, &[&role, &names]).await?;
    Ok(())
}

/// Replaces the grants of a role.
pub async fn set_permissions(db: &impl GenericClient, role: Uuid, names: &[String]) -> Result<()> {
    db.execute("delete from role_permissions where role_id = $1", &[&role])
        .await?;
    db.execute(
        "insert into role_permissions (role_id, permission)
         select $1, n from unnest($2::text[]) as t(n) on conflict do nothing",
        &[&role, &names],
    )
    .await?;
    Ok(())
}

/// Deletes a role; grants and assignments go with it.
pub async fn delete(db: &impl GenericClient, id: Uuid) -> Result<()> {
    db.execute("delete from roles where id = $1", &[&id])
        .await?;
    Ok(())
}

/// Bumps the roles version of every holder of a role (its name inside their tokens is about
/// to change or vanish); returns `(user, new version)`.
pub async fn bump_holders(db: &impl GenericClient, role: Uuid) -> Result<Vec<(Uuid, i64)>> {
    let rows = db
        .query(
            "update users set roles_version = roles_version + 1, roles_changed_at = now()
             where id in (select user_id from user_roles where role_id = $1)
             returning id, roles_version",
            &[&role],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Marks roles and grants changed, so every replica's snapshot rereads them.
pub async fn bump_catalog(db: &impl GenericClient) -> Result<()> {
    db.execute("update catalog_version set version = version + 1", &[])
        .await?;
    Ok(())
}

/// The permission catalog, ordered by name.
pub async fn catalog(db: &impl GenericClient) -> Result<Vec<Permission>> {
    let stmt = db
        .prepare_cached("select name, description, builtin from permissions order by name")
        .await?;
    Ok(db
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| Permission {
            name: r.get(0),
            description: r.get(1),
            builtin: r.get(2),
        })
        .collect())
}

/// Locks the `superuser` role for the rest of the transaction. Every change that could leave
/// no active superuser (taking the role, disabling a holder) takes this lock first, so those
/// changes run one at a time and each counts what the previous one left. `no key update`
/// leaves the key-share locks of foreign keys (assigning other users roles) unblocked.
pub async fn lock_superusers(db: &impl GenericClient) -> Result<()> {
    db.execute(
        "select 1 from roles where name = 'superuser' for no key update",
        &[],
    )
    .await?;
    Ok(())
}

/// How many users hold `superuser` and are not disabled.
pub async fn active_superusers(db: &impl GenericClient) -> Result<i64> {
    let row = db
        .query_one(
            "select count(*) from users u
             join user_roles ur on ur.user_id = u.id
             join roles r on r.id = ur.role_id
             where r.name = 'superuser' and not u.disabled",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// A user's standing, their row locked for the rest of the transaction: `(holds superuser,
/// disabled)`, or `None` when there is no such user.
pub async fn lock_holder(db: &impl GenericClient, user: Uuid) -> Result<Option<(bool, bool)>> {
    let row = db
        .query_opt(
            "select exists (select 1 from user_roles ur join roles r on r.id = ur.role_id
                            where ur.user_id = u.id and r.name = 'superuser'),
                    u.disabled
             from users u where u.id = $1 for no key update of u",
            &[&user],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}
