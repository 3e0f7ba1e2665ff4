//! Login history: one row per event, newest first when read.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use super::Result;

/// The events the history records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A successful login.
    Login,
    /// A wrong password for an existing user.
    LoginFailed,
    /// A refresh.
    Refresh,
    /// Logout of one session.
    Logout,
    /// Logout of every session.
    LogoutAll,
    /// The password was changed.
    PasswordChanged,
    /// A session was ended from the sessions list.
    SessionRevoked,
    /// The account was disabled.
    Disabled,
}

impl Event {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Login => "login",
            Event::LoginFailed => "login_failed",
            Event::Refresh => "refresh",
            Event::Logout => "logout",
            Event::LogoutAll => "logout_all",
            Event::PasswordChanged => "password_changed",
            Event::SessionRevoked => "session_revoked",
            Event::Disabled => "disabled",
        }
    }
}

/// Where a request came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Client IP.
    pub ip: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
}

/// One history entry as shown.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Event name.
    pub event: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Client IP.
    pub ip: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// The session concerned.
    pub session_id: Option<Uuid>,
}

/// Records an event.
pub async fn record(
    db: &impl GenericClient,
    user: Uuid,
    event: Event,
    origin: &Origin,
    session: Option<Uuid>,
) -> Result<()> {
    let stmt = db
        .prepare_cached(
            "insert into login_history (user_id, event, ip, user_agent, session_id)
             values ($1, $2, $3, $4, $5)",
        )
        .await?;
    db.execute(
        &stmt,
        &[
            &user,
            &event.as_str(),
            &origin.ip,
            &origin.user_agent,
            &session,
        ],
    )
    .await?;
    Ok(())
}

/// A page of a user's history, newest first, and the total count.
pub async fn page(
    db: &impl GenericClient,
    user: Uuid,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Entry>, i64)> {
    let rows = db
        .query(
            "select event, at, ip, user_agent, session_id from login_history
             where user_id = $1 order by at desc, id desc limit $2 offset $3",
            &[&user, &limit, &offset],
        )
        .await?;
    let total: i64 = db
        .query_one(
            "select count(*) from login_history where user_id = $1",
            &[&user],
        )
        .await?
        .get(0);
    let items = rows
        .iter()
        .map(|r| Entry {
            event: r.get(0),
            at: r.get(1),
            ip: r.get(2),
            user_agent: r.get(3),
            session_id: r.get(4),
        })
        .collect();
    Ok((items, total))
}
