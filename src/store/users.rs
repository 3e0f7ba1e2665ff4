//! Users and their role assignments.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use tokio_postgres::Row;
use unicode_normalization::UnicodeNormalization;
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

/// The one form of an e-mail by which usher stores, looks up and counts it: trimmed, NFC, and
/// each character lowercased by its one-character (simple) Unicode mapping, final sigma as
/// sigma. Simple rather than Rust's full mapping because the full one turns `İ` into `i` plus
/// a combining dot, so `vİctim@` would differ from `victim@`; NFC before and after so that
/// composed and decomposed spellings of one letter are one address.
pub fn canonical_email(email: &str) -> String {
    email
        .trim()
        .nfc()
        .map(|c| match c {
            '\u{130}' => 'i',
            'ς' => 'σ',
            c => {
                let mut lower = c.to_lowercase();
                match (lower.next(), lower.next()) {
                    (Some(one), None) => one,
                    _ => c,
                }
            }
        })
        .nfc()
        .collect()
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
        "insert into users (id, email, email_canonical, password_hash) values ($1, $2, $3, $4)",
        &[&id, &email, &canonical_email(email), &password_hash],
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

/// A user and password hash by e-mail, compared in canonical form.
pub async fn credentials(db: &impl GenericClient, email: &str) -> Result<Option<Credentials>> {
    let sql = format!("{SELECT} where u.email_canonical = $1 group by u.id");
    let stmt = db.prepare_cached(&sql).await?;
    Ok(db
        .query_opt(&stmt, &[&canonical_email(email)])
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

/// What a login re-checks inside the transaction that creates its session: the password hash
/// and whether the user is disabled, with the row locked so that a password change or a
/// disable (which lock it `for no key update`) is ordered before or after the login, never
/// beside it. None of them takes `for update`: the key-share lock that inserting a row which
/// references the user takes (a refresh's history entry) must not wait on them, or a refresh
/// holding its session row and a disable waiting for that row would wait on each other.
/// `writes`: the login will store a new hash, so it takes the stronger lock up front.
pub async fn lock_for_login(
    db: &impl GenericClient,
    id: Uuid,
    writes: bool,
) -> Result<Option<(String, bool)>> {
    let sql = if writes {
        "select password_hash, disabled from users where id = $1 for no key update"
    } else {
        "select password_hash, disabled from users where id = $1 for share"
    };
    let stmt = db.prepare_cached(sql).await?;
    Ok(db
        .query_opt(&stmt, &[&id])
        .await?
        .map(|r| (r.get(0), r.get(1))))
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

/// A page of users whose e-mail contains `email` (case-insensitively; `None`: all), ordered
/// by e-mail, and how many match in all.
pub async fn page(
    db: &impl GenericClient,
    email: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<User>, i64)> {
    // `strpos` rather than `like`: the filter is a plain substring, no wildcards to escape.
    let sql = format!(
        "{SELECT} where $1::text is null or strpos(lower(u.email), lower($1)) > 0
         group by u.id order by lower(u.email), u.id limit $2 offset $3"
    );
    let stmt = db.prepare_cached(&sql).await?;
    let items = db
        .query(&stmt, &[&email, &limit, &offset])
        .await?
        .iter()
        .map(User::from)
        .collect();
    let stmt = db
        .prepare_cached(
            "select count(*) from users
             where $1::text is null or strpos(lower(email), lower($1)) > 0",
        )
        .await?;
    let total = db.query_one(&stmt, &[&email]).await?.get(0);
    Ok((items, total))
}

/// Changes a user's e-mail; `email_taken` when another user has it. False: no such user.
pub async fn set_email(db: &impl GenericClient, id: Uuid, email: &str) -> Result<bool> {
    let n = db
        .execute(
            "update users set email = $2, email_canonical = $3, updated_at = now() where id = $1",
            &[&id, &email, &canonical_email(email)],
        )
        .await?;
    Ok(n == 1)
}

/// Disables a user. `Some(true)`: disabled now, `Some(false)`: already was, `None`: no such user.
pub async fn disable(db: &impl GenericClient, id: Uuid) -> Result<Option<bool>> {
    let row = db
        .query_opt(
            "select disabled from users where id = $1 for no key update",
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if row.get::<_, bool>(0) {
        return Ok(Some(false));
    }
    db.execute(
        "update users set disabled = true, updated_at = now() where id = $1",
        &[&id],
    )
    .await?;
    Ok(Some(true))
}

/// Locks a user's row (`for no key update`, see `lock_for_login`) for the rest of the
/// transaction; false when there is no such user.
pub async fn lock(db: &impl GenericClient, id: Uuid) -> Result<bool> {
    Ok(db
        .query_opt(
            "select 1 from users where id = $1 for no key update",
            &[&id],
        )
        .await?
        .is_some())
}

/// Bumps a user's roles version (tokens carrying an older one become stale); returns it.
pub async fn bump_roles_version(db: &impl GenericClient, id: Uuid) -> Result<i64> {
    let row = db
        .query_one(
            "update users set roles_version = roles_version + 1, roles_changed_at = now()
             where id = $1 returning roles_version",
            &[&id],
        )
        .await?;
    Ok(row.get(0))
}

/// Gives a user a role; the new roles version when it was not held yet.
pub async fn add_role(db: &impl GenericClient, user: Uuid, role: Uuid) -> Result<Option<i64>> {
    let n = db
        .execute(
            "insert into user_roles (user_id, role_id) values ($1, $2) on conflict do nothing",
            &[&user, &role],
        )
        .await?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(bump_roles_version(db, user).await?))
}

/// Takes a role from a user; the new roles version when it was held.
pub async fn remove_role(db: &impl GenericClient, user: Uuid, role: Uuid) -> Result<Option<i64>> {
    let n = db
        .execute(
            "delete from user_roles where user_id = $1 and role_id = $2",
            &[&user, &role],
        )
        .await?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(bump_roles_version(db, user).await?))
}

/// Gives a user the role named `role`; the new roles version when it was not held yet.
pub async fn add_role_named(
    db: &impl GenericClient,
    user: Uuid,
    role: &str,
) -> Result<Option<i64>> {
    let row = db
        .query_opt("select id from roles where name = $1 for share", &[&role])
        .await?
        .ok_or_else(|| super::StoreError::Other(anyhow::anyhow!("no role named {role}")))?;
    add_role(db, user, row.get(0)).await
}

/// Fills the canonical e-mail of users that have none (those from before the column, oldest
/// first). A user whose canonical e-mail an older account already has keeps none, and so cannot
/// log in by e-mail until their e-mail is changed: their ids are returned, to be reported.
pub async fn fill_canonical_emails(db: &impl GenericClient) -> Result<Vec<Uuid>> {
    let rows = db
        .query(
            "select id, email from users where email_canonical is null order by created_at, id",
            &[],
        )
        .await?;
    let mut clashes = Vec::new();
    for row in rows {
        let id: Uuid = row.get(0);
        let canonical = canonical_email(row.get(1));
        let n = db
            .execute(
                "update users set email_canonical = $2 where id = $1
                 and not exists (select 1 from users where email_canonical = $2)",
                &[&id, &canonical],
            )
            .await?;
        if n == 0 {
            clashes.push(id);
        }
    }
    Ok(clashes)
}

#[cfg(test)]
mod tests {
    use super::canonical_email;

    #[test]
    fn case_variants_of_an_email_are_one_address() {
        let victim = canonical_email("victim@cinema.example");
        for variant in [
            "  Victim@Cinema.EXAMPLE ",
            "v\u{130}ctim@cinema.example",
            "VI\u{307}CTIM@cinema.example",
            "V\u{130}CTIM@CINEMA.example",
        ] {
            assert_eq!(canonical_email(variant), victim, "{variant:?}");
        }
    }

    #[test]
    fn composed_and_decomposed_letters_and_final_sigma_are_one_address() {
        assert_eq!(
            canonical_email("E\u{301}LODIE@x"),
            canonical_email("\u{e9}lodie@x")
        );
        assert_eq!(canonical_email("\u{c9}lodie@x"), "\u{e9}lodie@x");
        assert_eq!(canonical_email("ΟΔΟΣ@x"), canonical_email("οδος@x"));
    }

    #[test]
    fn different_letters_stay_different() {
        assert_ne!(canonical_email("cafe@x"), canonical_email("caf\u{e9}@x"));
        assert_ne!(canonical_email("a@x"), canonical_email("b@x"));
    }
}
