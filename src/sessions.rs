//! The token lifecycle: login, refresh (rotation, grace, reuse), logout, logout-all, ending
//! one session. Every change is one PostgreSQL transaction; revocations then go to memory,
//! Redis and the other replicas through `Revocation`.

use serde::Serialize;
use uuid::Uuid;

use crate::app::State;
use crate::guard::Principal;
use crate::http::error::{ApiError, TokenError};
use crate::passwords::Verified;
use crate::store::history::{self, Event, Origin};
use crate::store::sessions::Refreshed;
use crate::store::{self, users::User};
use crate::tokens;

/// What login and refresh answer.
#[derive(Debug, Serialize)]
pub struct Issued {
    /// The access token (JWT).
    pub access_token: String,
    /// The opaque refresh token.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: i64,
}

fn issue(
    state: &State,
    user: &User,
    session: Uuid,
    refresh_token: String,
) -> Result<Issued, ApiError> {
    let (access_token, claims) =
        state
            .tokens
            .issue(user.id, session, user.roles.clone(), user.roles_version)?;
    Ok(Issued {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: claims.exp - claims.iat,
        refresh_expires_in: state.config.tokens.refresh_ttl.0.as_secs() as i64,
    })
}

fn failures_key(state: &State, email: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, email.to_lowercase().as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    state.kv.key(format_args!("fail:{hex}"))
}

/// Seconds to wait when `email` has used up its failures, from Redis; `Err` when Redis
/// cannot answer.
async fn locked_for(state: &State, key: &str) -> Result<Option<u64>, ()> {
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg(key).cmd("TTL").arg(key);
    let (count, ttl): (Option<u32>, i64) = state.kv.run(&pipe).await.map_err(|_| ())?;
    Ok(match count {
        Some(n) if n >= state.config.login.max_failures => Some(ttl.max(1) as u64),
        _ => None,
    })
}

/// Logs in: a new session and its tokens.
pub async fn login(
    state: &State,
    email: &str,
    password: String,
    origin: &Origin,
) -> Result<Issued, ApiError> {
    let key = failures_key(state, email);
    let window = state.config.login.window.0;
    let redis_counts = match locked_for(state, &key).await {
        Ok(Some(wait)) => return Err(ApiError::TooManyAttempts(wait)),
        Ok(None) => true,
        Err(()) => false,
    };
    let mut db = store::conn(&state.db).await?;
    let found = store::users::credentials(&db, email).await?;
    if !redis_counts {
        // Redis is down: count this user's recent failures in the history instead.
        if let Some(c) = &found {
            let n = history::recent_failures(&db, c.user.id, window.as_secs_f64()).await?;
            if n >= i64::from(state.config.login.max_failures) {
                return Err(ApiError::TooManyAttempts(window.as_secs().max(1)));
            }
        }
    }
    let verdict = state
        .passwords
        .verify(
            password.clone(),
            found.as_ref().map(|c| c.password_hash.clone()),
        )
        .await?;
    let Some(found) = found else {
        count_failure(state, &key).await;
        return Err(ApiError::InvalidCredentials);
    };
    let user = found.user;
    if verdict == Verified::No {
        count_failure(state, &key).await;
        // Recorded off the response path, so that a wrong password for a known e-mail takes
        // the same time as an unknown e-mail.
        let (pool, user_id, origin) = (state.db.clone(), user.id, origin.clone());
        tokio::spawn(async move {
            let recorded = match store::conn(&pool).await {
                Ok(db) => history::record(&db, user_id, Event::LoginFailed, &origin, None).await,
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "failed login not recorded");
            }
        });
        return Err(ApiError::InvalidCredentials);
    }
    if user.disabled {
        return Err(ApiError::AccountDisabled);
    }
    let (refresh_token, refresh_hash) = tokens::new_refresh_token()?;
    let tx = db.transaction().await?;
    if let Verified::YesRehash(new_hash) = &verdict {
        store::users::set_password_hash(&tx, user.id, new_hash).await?;
    }
    let ttl = state.config.tokens.refresh_ttl.0.as_secs_f64();
    let session = store::sessions::create(&tx, user.id, ttl, origin, &refresh_hash).await?;
    history::record(&tx, user.id, Event::Login, origin, Some(session)).await?;
    tx.commit().await?;
    let mut clear = redis::pipe();
    clear.cmd("DEL").arg(&key).ignore();
    if let Err(e) = state.kv.run::<()>(&clear).await {
        tracing::debug!(error = %e, "login-failure counter not cleared");
    }
    issue(state, &user, session, refresh_token)
}

async fn count_failure(state: &State, key: &str) {
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg(key).ignore();
    pipe.cmd("EXPIRE")
        .arg(key)
        .arg(state.config.login.window.0.as_secs().max(1))
        .arg("NX")
        .ignore();
    if let Err(e) = state.kv.run::<()>(&pipe).await {
        tracing::warn!(error = %e, "login failure not counted in Redis");
    }
}

/// Exchanges a refresh token for new tokens.
pub async fn refresh(
    state: &State,
    refresh_token: &str,
    origin: &Origin,
) -> Result<Issued, ApiError> {
    if refresh_token.is_empty() || refresh_token.len() > 256 {
        return Err(TokenError::Invalid.into());
    }
    let old_hash = tokens::hash_refresh_token(refresh_token);
    // Derived, not drawn: every use of this token within its grace window gets this same
    // successor, so concurrent or replayed refreshes continue one chain, never fork it.
    let (new_token, new_hash) = state.tokens.successor(refresh_token);
    let cfg = &state.config.tokens;
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let outcome = store::sessions::rotate(
        &tx,
        &old_hash,
        &new_hash,
        cfg.refresh_grace.0.as_secs_f64(),
        cfg.refresh_ttl.0.as_secs_f64(),
    )
    .await?;
    let (session, user_id) = match outcome {
        Refreshed::Unknown => return Err(TokenError::Invalid.into()),
        Refreshed::Ended => return Err(TokenError::Revoked.into()),
        Refreshed::Reused { session, user } => {
            history::record(&tx, user, Event::SessionRevoked, origin, Some(session)).await?;
            tx.commit().await?;
            tracing::warn!(%session, "refresh token replayed after its grace window; session revoked");
            state.revocation.sessions_revoked(&[session]).await;
            return Err(TokenError::RefreshReused.into());
        }
        Refreshed::Rotated { session, user } => (session, user),
    };
    let user = store::users::by_id(&tx, user_id)
        .await?
        .ok_or(ApiError::Token(TokenError::Revoked))?;
    if user.disabled {
        return Err(TokenError::Revoked.into());
    }
    history::record(&tx, user.id, Event::Refresh, origin, Some(session)).await?;
    tx.commit().await?;
    issue(state, &user, session, new_token)
}

/// Ends the caller's session.
pub async fn logout(state: &State, who: &Principal, origin: &Origin) -> Result<(), ApiError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let ended = store::sessions::revoke_one(&tx, who.user, who.session).await?;
    history::record(&tx, who.user, Event::Logout, origin, Some(who.session)).await?;
    tx.commit().await?;
    state.revocation.sessions_revoked(ended.as_slice()).await;
    Ok(())
}

/// Ends every session of the caller's user.
pub async fn logout_all(state: &State, who: &Principal, origin: &Origin) -> Result<(), ApiError> {
    end_all(
        state,
        who.user,
        None,
        None,
        Event::LogoutAll,
        origin,
        Some(who.session),
    )
    .await
}

/// Ends every session of `user` but `except`, recording `event`, in one transaction that
/// also stores `new_password_hash` when given (so a failure leaves neither half done).
async fn end_all(
    state: &State,
    user: Uuid,
    new_password_hash: Option<&str>,
    except: Option<Uuid>,
    event: Event,
    origin: &Origin,
    session_for_history: Option<Uuid>,
) -> Result<(), ApiError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    if let Some(hash) = new_password_hash {
        store::users::set_password_hash(&tx, user, hash).await?;
    }
    let ended = store::sessions::revoke_all(&tx, user, except).await?;
    history::record(&tx, user, event, origin, session_for_history).await?;
    tx.commit().await?;
    state.revocation.sessions_revoked(&ended).await;
    Ok(())
}

/// Changes the caller's password after checking the old one; every other session ends.
pub async fn change_password(
    state: &State,
    who: &Principal,
    old_password: String,
    new_password: String,
    origin: &Origin,
) -> Result<(), ApiError> {
    let db = store::conn(&state.db).await?;
    let current = store::users::password_hash(&db, who.user).await?;
    drop(db);
    if current.is_none() {
        return Err(ApiError::NotFound);
    }
    if state.passwords.verify(old_password, current).await? == Verified::No {
        return Err(ApiError::InvalidCredentials);
    }
    let hash = state.passwords.hash(new_password).await?;
    end_all(
        state,
        who.user,
        Some(&hash),
        Some(who.session),
        Event::PasswordChanged,
        origin,
        Some(who.session),
    )
    .await
}

/// Disables a user and ends all their sessions, in one transaction. Idempotent: an already
/// disabled user is answered as is, with no new history entry. `None`: no such user. Only a
/// superuser (`by_superuser`) disables a superuser, and never the last active one.
pub async fn disable(
    state: &State,
    user: Uuid,
    origin: &Origin,
    session_for_history: Option<Uuid>,
    by_superuser: bool,
) -> Result<Option<User>, ApiError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    if !crate::escalation::may_change_user(&tx, user, by_superuser, true).await? {
        return Ok(None);
    }
    let Some(now_disabled) = store::users::disable(&tx, user).await? else {
        return Ok(None);
    };
    let ended = store::sessions::revoke_all(&tx, user, None).await?;
    if now_disabled {
        history::record(&tx, user, Event::Disabled, origin, session_for_history).await?;
    }
    let disabled = store::users::by_id(&tx, user).await?;
    tx.commit().await?;
    state.revocation.sessions_revoked(&ended).await;
    Ok(disabled)
}

/// Ends one of the caller's sessions; someone else's is 404.
pub async fn end_one(
    state: &State,
    who: &Principal,
    session: Uuid,
    origin: &Origin,
) -> Result<(), ApiError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let ended = store::sessions::revoke_one(&tx, who.user, session)
        .await?
        .ok_or(ApiError::NotFound)?;
    history::record(&tx, who.user, Event::SessionRevoked, origin, Some(ended)).await?;
    tx.commit().await?;
    state.revocation.sessions_revoked(&[ended]).await;
    Ok(())
}

/// A session as listed, with `current` set for the caller's own.
#[derive(Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    session: store::sessions::Session,
    current: bool,
}

/// The caller's live sessions, newest first.
pub async fn list(state: &State, who: &Principal) -> Result<Vec<Listed>, ApiError> {
    let db = store::conn(&state.db).await?;
    Ok(store::sessions::active(&db, who.user)
        .await?
        .into_iter()
        .map(|session| Listed {
            current: session.id == who.session,
            session,
        })
        .collect())
}
