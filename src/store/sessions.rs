//! Sessions and their refresh tokens.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use super::history::Origin;
use super::Result;

/// A session as its owner sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// Id (the `sid` claim).
    pub id: Uuid,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last login or refresh.
    pub last_used_at: DateTime<Utc>,
    /// When the refresh token stops working.
    pub expires_at: DateTime<Utc>,
    /// Client IP at login.
    pub ip: Option<String>,
    /// `User-Agent` at login.
    pub user_agent: Option<String>,
}

/// Opens a session with its first refresh token.
pub async fn create(
    db: &impl GenericClient,
    user: Uuid,
    ttl_secs: f64,
    origin: &Origin,
    refresh_hash: &[u8],
) -> Result<Uuid> {
    let id = Uuid::new_v4();
    db.execute(
        "insert into sessions (id, user_id, expires_at, ip, user_agent)
         values ($1, $2, now() + make_interval(secs => $3), $4, $5)",
        &[&id, &user, &ttl_secs, &origin.ip, &origin.user_agent],
    )
    .await?;
    db.execute(
        "insert into refresh_tokens (hash, session_id) values ($1, $2)",
        &[&refresh_hash, &id],
    )
    .await?;
    Ok(id)
}

/// What became of a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// Rotated: the new token is stored.
    Rotated {
        /// The session.
        session: Uuid,
        /// Its user.
        user: Uuid,
    },
    /// No such token.
    Unknown,
    /// The session was revoked or has expired.
    Ended,
    /// Used before, outside the grace window: the session is now revoked.
    Reused {
        /// The session, now revoked.
        session: Uuid,
        /// Its user.
        user: Uuid,
    },
}

/// Rotates a refresh token inside the caller's transaction: `new_hash` is the hash of its
/// successor, which the caller derives from the token, so it is the same on every use. Rows
/// are locked, so concurrent refreshes with one token are ordered; a use within `grace_secs`
/// of the first one rotates to the same successor again (its row is already there), even
/// when the successor has been used since: every use within the window continues one chain.
pub async fn rotate(
    db: &impl GenericClient,
    old_hash: &[u8],
    new_hash: &[u8],
    grace_secs: f64,
    ttl_secs: f64,
) -> Result<Refreshed> {
    let row = db
        .query_opt(
            "select rt.session_id, s.user_id, rt.used_at is not null as used,
                    coalesce(rt.used_at > now() - make_interval(secs => $2), false) as in_grace,
                    s.revoked_at is not null or s.expires_at <= now() as ended
             from refresh_tokens rt join sessions s on s.id = rt.session_id
             where rt.hash = $1
             for update of rt, s",
            &[&old_hash, &grace_secs],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Refreshed::Unknown);
    };
    let (session, user): (Uuid, Uuid) = (row.get(0), row.get(1));
    let (used, in_grace, ended): (bool, bool, bool) = (row.get(2), row.get(3), row.get(4));
    if ended {
        return Ok(Refreshed::Ended);
    }
    if used && !in_grace {
        db.execute(
            "update sessions set revoked_at = now() where id = $1 and revoked_at is null",
            &[&session],
        )
        .await?;
        return Ok(Refreshed::Reused { session, user });
    }
    if !used {
        db.execute(
            "update refresh_tokens set used_at = now() where hash = $1",
            &[&old_hash],
        )
        .await?;
    }
    db.execute(
        "insert into refresh_tokens (hash, session_id) values ($1, $2)
         on conflict (hash) do nothing",
        &[&new_hash, &session],
    )
    .await?;
    db.execute(
        "update sessions set last_used_at = now(),
                             expires_at = now() + make_interval(secs => $2)
         where id = $1",
        &[&session, &ttl_secs],
    )
    .await?;
    Ok(Refreshed::Rotated { session, user })
}

/// Ends one session of `user`; `None` when it is not theirs or already ended.
pub async fn revoke_one(
    db: &impl GenericClient,
    user: Uuid,
    session: Uuid,
) -> Result<Option<Uuid>> {
    let row = db
        .query_opt(
            "update sessions set revoked_at = now()
             where id = $1 and user_id = $2 and revoked_at is null and expires_at > now()
             returning id",
            &[&session, &user],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Ends every live session of `user` but `except`; returns their ids.
pub async fn revoke_all(
    db: &impl GenericClient,
    user: Uuid,
    except: Option<Uuid>,
) -> Result<Vec<Uuid>> {
    let rows = db
        .query(
            "update sessions set revoked_at = now()
             where user_id = $1 and revoked_at is null and ($2::uuid is null or id <> $2)
             returning id",
            &[&user, &except],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Live sessions of `user`, newest first.
pub async fn active(db: &impl GenericClient, user: Uuid) -> Result<Vec<Session>> {
    let rows = db
        .query(
            "select id, created_at, last_used_at, expires_at, ip, user_agent from sessions
             where user_id = $1 and revoked_at is null and expires_at > now()
             order by created_at desc, id",
            &[&user],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Session {
            id: r.get(0),
            created_at: r.get(1),
            last_used_at: r.get(2),
            expires_at: r.get(3),
            ip: r.get(4),
            user_agent: r.get(5),
        })
        .collect())
}

/// Whether a session is revoked; an unknown one counts as revoked.
pub async fn is_revoked(db: &impl GenericClient, session: Uuid) -> Result<bool> {
    let stmt = db
        .prepare_cached("select revoked_at is not null from sessions where id = $1")
        .await?;
    Ok(db
        .query_opt(&stmt, &[&session])
        .await?
        .is_none_or(|r| r.get::<_, bool>(0)))
}

/// Sessions revoked after `since`: what Redis must hold.
pub async fn revoked_since(db: &impl GenericClient, since: DateTime<Utc>) -> Result<Vec<Uuid>> {
    let rows = db
        .query("select id from sessions where revoked_at > $1", &[&since])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
