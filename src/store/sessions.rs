//! Sessions and their refresh tokens.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use super::history::{Event, Origin};
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
    /// Rotated: the new token is stored, the session extended and the refresh recorded.
    Rotated {
        /// The session.
        session: Uuid,
        /// Its user.
        user: Uuid,
        /// The user's role names, sorted, as of the rotation.
        roles: Vec<String>,
        /// The user's roles version, as of the rotation.
        roles_version: i64,
    },
    /// No such token.
    Unknown,
    /// The session was revoked or has expired, or its user is disabled or gone: nothing
    /// changed.
    Ended,
    /// Used before, outside the grace window: the session is now revoked (and recorded).
    Reused {
        /// The session, now revoked.
        session: Uuid,
        /// Its user.
        user: Uuid,
    },
}

/// The whole refresh in one statement, so one round trip and no transaction held open across
/// the network: `found` locks the token's and the session's rows (concurrent refreshes with
/// one token are ordered; a waiter sees the row as the first one left it), `verdict` decides,
/// and the data-modifying parts each act only on their verdict. PostgreSQL runs every part
/// of a `with` to completion, in one snapshot and one implicit transaction. `clock` is the
/// time it judges by: `now()` moved forward by `$9` seconds (zero but in tests).
const ROTATE: &str = "
with clock as (
    select now() + make_interval(secs => $9) as now
), found as (
    select rt.session_id, s.user_id, rt.used_at is not null as used,
           coalesce(rt.used_at > c.now - make_interval(secs => $3), false) as in_grace,
           s.revoked_at is not null or s.expires_at <= c.now as ended
    from refresh_tokens rt join sessions s on s.id = rt.session_id cross join clock c
    where rt.hash = $1
    for update of rt, s
), verdict as (
    select f.session_id, f.user_id,
           case when f.ended then 'ended'
                when f.used and not f.in_grace then 'reused'
                when coalesce(u.disabled, true) then 'ended'
                else 'rotated' end as outcome,
           f.used
    from found f left join users u on u.id = f.user_id
), marked as (
    update refresh_tokens set used_at = (select now from clock)
    where hash = $1 and used_at is null
      and exists (select 1 from verdict where outcome = 'rotated' and not used)
), successor as (
    insert into refresh_tokens (hash, session_id)
    select $2, session_id from verdict where outcome = 'rotated'
    on conflict (hash) do nothing
), extended as (
    update sessions set last_used_at = (select now from clock),
                        expires_at = (select now from clock) + make_interval(secs => $4)
    where id = (select session_id from verdict where outcome = 'rotated')
), revoked as (
    update sessions set revoked_at = (select now from clock)
    where id = (select session_id from verdict where outcome = 'reused') and revoked_at is null
), recorded as (
    insert into login_history (user_id, event, ip, user_agent, session_id)
    select user_id, case outcome when 'rotated' then $7 else $8 end, $5, $6, session_id
    from verdict where outcome in ('rotated', 'reused')
)
select v.outcome, v.session_id, v.user_id, coalesce(u.roles_version, 0) as roles_version,
       coalesce((select array_agg(r.name order by r.name)
                 from user_roles ur join roles r on r.id = ur.role_id
                 where ur.user_id = v.user_id), '{}') as roles
from verdict v left join users u on u.id = v.user_id";

/// Rotates a refresh token in one statement (see `ROTATE`): `new_hash` is the hash of its
/// successor, which the caller derives from the token, so it is the same on every use. A use
/// within `grace_secs` of the first one rotates to the same successor again (its row is
/// already there), even when the successor has been used since: every use within the window
/// continues one chain. A rotation or a reuse is recorded in the history with `origin`.
/// `ahead_secs` moves the time it judges by forward from PostgreSQL's `now()` (see
/// `clock::Clock`; zero outside tests).
pub async fn rotate(
    db: &impl GenericClient,
    old_hash: &[u8],
    new_hash: &[u8],
    grace_secs: f64,
    ttl_secs: f64,
    ahead_secs: f64,
    origin: &Origin,
) -> Result<Refreshed> {
    let stmt = db.prepare_cached(ROTATE).await?;
    let row = db
        .query_opt(
            &stmt,
            &[
                &old_hash,
                &new_hash,
                &grace_secs,
                &ttl_secs,
                &origin.ip,
                &origin.user_agent,
                &Event::Refresh.as_str(),
                &Event::SessionRevoked.as_str(),
                &ahead_secs,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Refreshed::Unknown);
    };
    let (session, user): (Uuid, Uuid) = (row.get("session_id"), row.get("user_id"));
    Ok(match row.get::<_, &str>("outcome") {
        "rotated" => Refreshed::Rotated {
            session,
            user,
            roles: row.get("roles"),
            roles_version: row.get("roles_version"),
        },
        "reused" => Refreshed::Reused { session, user },
        _ => Refreshed::Ended,
    })
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
