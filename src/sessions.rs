//! The token lifecycle: login, refresh (rotation, grace, reuse), logout, logout-all, ending
//! one session. Every change is one PostgreSQL transaction; revocations then go to memory,
//! Redis and the other replicas through `Revocation`.

use serde::Serialize;
use uuid::Uuid;

use crate::attempts::{self, Subject};
use crate::domain::DomainError;
use crate::guard::Principal;
use crate::passwords::Verified;
use crate::state::State;
use crate::store::history::{self, Event, Origin};
use crate::store::sessions::Refreshed;
use crate::store::{self, users::User};
use crate::tokens::{self, TokenError};

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
) -> Result<Issued, DomainError> {
    issue_for(
        state,
        user.id,
        user.roles.clone(),
        user.roles_version,
        session,
        refresh_token,
    )
}

fn issue_for(
    state: &State,
    user: Uuid,
    roles: Vec<String>,
    roles_version: i64,
    session: Uuid,
    refresh_token: String,
) -> Result<Issued, DomainError> {
    let (access_token, claims) = state.tokens.issue(user, session, roles, roles_version)?;
    Ok(Issued {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: claims.exp - claims.iat,
        refresh_expires_in: state.config.tokens.refresh_ttl.0.as_secs() as i64,
    })
}

/// Logs in: a new session and its tokens. The client's address and then the account's
/// attempts are counted before the password is hashed; no database connection is held while
/// the hash waits or runs.
pub async fn login(
    state: &State,
    email: &str,
    password: String,
    origin: &Origin,
) -> Result<Issued, DomainError> {
    attempts::per_ip(state, origin).await?;
    let found = {
        let db = store::conn(&state.db).await?;
        store::users::credentials(&db, email).await?
    };
    let subject = match &found {
        Some(c) => Subject::Account(c.user.id),
        None => Subject::Email(email),
    };
    let attempt = attempts::reserve(state, &subject).await?;
    let outcome = authenticate(state, found, password, origin).await;
    match &outcome {
        Ok(_) | Err(DomainError::AccountDisabled) => attempt.forgive(state).await,
        // A wrong password: the attempt stays counted.
        Err(DomainError::InvalidCredentials) => {}
        // Never judged (busy, an outage): it does not count.
        Err(_) => attempt.release(state).await,
    }
    outcome
}

/// How many times a login verifies again when the stored hash changed under it (another
/// login's rehash, or a password change) before giving up as busy.
const LOGIN_ROUNDS: usize = 3;

/// Verifies `password` and opens the session. The hash is verified outside any transaction;
/// the transaction that creates the session then locks the user's row and proceeds only if
/// the hash is still the one verified and the user not disabled. A password change or disable
/// that committed in between therefore wins: the login verifies against the new hash (and so
/// fails for the old password) or answers `account_disabled`. One that commits after sees the
/// new session and ends it.
async fn authenticate(
    state: &State,
    found: Option<store::users::Credentials>,
    password: String,
    origin: &Origin,
) -> Result<Issued, DomainError> {
    let Some(found) = found else {
        // Unknown e-mail: hashed against the dummy, so it costs what a wrong password does.
        state.passwords.verify(password, None).await?;
        return Err(DomainError::InvalidCredentials);
    };
    let user_id = found.user.id;
    let mut hash = found.password_hash;
    for _ in 0..LOGIN_ROUNDS {
        let verdict = state
            .passwords
            .verify(password.clone(), Some(hash.clone()))
            .await?;
        if verdict == Verified::No {
            record_failure(state, user_id, origin);
            return Err(DomainError::InvalidCredentials);
        }
        let (refresh_token, refresh_hash) = tokens::new_refresh_token()?;
        let mut db = store::conn(&state.db).await?;
        let tx = db.transaction().await?;
        let rehash = match &verdict {
            Verified::YesRehash(new_hash) => Some(new_hash),
            _ => None,
        };
        let Some((current, disabled)) =
            store::users::lock_for_login(&tx, user_id, rehash.is_some()).await?
        else {
            return Err(DomainError::InvalidCredentials);
        };
        if current != hash {
            hash = current;
            continue;
        }
        if disabled {
            return Err(DomainError::AccountDisabled);
        }
        if let Some(new_hash) = rehash {
            store::users::set_password_hash(&tx, user_id, new_hash).await?;
        }
        let ttl = state.config.tokens.refresh_ttl.0.as_secs_f64();
        let session = store::sessions::create(&tx, user_id, ttl, origin, &refresh_hash).await?;
        history::record(&tx, user_id, Event::Login, origin, Some(session)).await?;
        let user = store::users::by_id(&tx, user_id)
            .await?
            .ok_or(DomainError::InvalidCredentials)?;
        tx.commit().await?;
        return issue(state, &user, session, refresh_token);
    }
    tracing::warn!(user = %user_id, "the password hash kept changing during a login");
    Err(DomainError::Busy(1))
}

/// Records a failed login off the response path, so that a wrong password for a known e-mail
/// takes the same time as an unknown e-mail.
fn record_failure(state: &State, user_id: Uuid, origin: &Origin) {
    let (pool, origin) = (state.db.clone(), origin.clone());
    tokio::spawn(async move {
        let recorded = match store::conn(&pool).await {
            Ok(db) => history::record(&db, user_id, Event::LoginFailed, &origin, None).await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "failed login not recorded");
        }
    });
}

/// Exchanges a refresh token for new tokens.
pub async fn refresh(
    state: &State,
    refresh_token: &str,
    origin: &Origin,
) -> Result<Issued, DomainError> {
    if refresh_token.is_empty() || refresh_token.len() > 256 {
        return Err(TokenError::Invalid.into());
    }
    let old_hash = tokens::hash_refresh_token(refresh_token);
    // Derived, not drawn: every use of this token within its grace window gets this same
    // successor, so concurrent or replayed refreshes continue one chain, never fork it.
    let (new_token, new_hash) = state.tokens.successor(refresh_token);
    let cfg = &state.config.tokens;
    // One statement: the connection goes back to the pool before the token is signed.
    let outcome = {
        let db = store::conn(&state.db).await?;
        store::sessions::rotate(
            &db,
            &old_hash,
            &new_hash,
            cfg.refresh_grace.0.as_secs_f64(),
            cfg.refresh_ttl.0.as_secs_f64(),
            state.clock.ahead_secs(),
            origin,
        )
        .await?
    };
    match outcome {
        Refreshed::Unknown => Err(TokenError::Invalid.into()),
        Refreshed::Ended => Err(TokenError::Revoked.into()),
        Refreshed::Reused { session, .. } => {
            tracing::warn!(%session, "refresh token replayed after its grace window; session revoked");
            state.revocation.sessions_revoked(&[session]).await;
            Err(TokenError::RefreshReused.into())
        }
        Refreshed::Rotated {
            session,
            user,
            roles,
            roles_version,
        } => issue_for(state, user, roles, roles_version, session, new_token),
    }
}

/// Ends the caller's session.
pub async fn logout(state: &State, who: &Principal, origin: &Origin) -> Result<(), DomainError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let ended = store::sessions::revoke_one(&tx, who.user, who.session).await?;
    history::record(&tx, who.user, Event::Logout, origin, Some(who.session)).await?;
    tx.commit().await?;
    state.revocation.sessions_revoked(ended.as_slice()).await;
    Ok(())
}

/// Ends every session of the caller's user.
pub async fn logout_all(
    state: &State,
    who: &Principal,
    origin: &Origin,
) -> Result<(), DomainError> {
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
/// also stores `new_password_hash` when given (so a failure leaves neither half done). The
/// user's row is locked first, as disable does, so a login that is creating a session either
/// commits before (and its session ends here) or re-checks after (and sees the new hash).
async fn end_all(
    state: &State,
    user: Uuid,
    new_password_hash: Option<&str>,
    except: Option<Uuid>,
    event: Event,
    origin: &Origin,
    session_for_history: Option<Uuid>,
) -> Result<(), DomainError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    if !store::users::lock(&tx, user).await? {
        return Err(DomainError::NotFound);
    }
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
) -> Result<(), DomainError> {
    let db = store::conn(&state.db).await?;
    let current = store::users::password_hash(&db, who.user).await?;
    drop(db);
    if current.is_none() {
        return Err(DomainError::NotFound);
    }
    if state.passwords.verify(old_password, current).await? == Verified::No {
        return Err(DomainError::InvalidCredentials);
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
) -> Result<Option<User>, DomainError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    if !crate::domain::escalation::may_change_user(&tx, user, by_superuser, true).await? {
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
) -> Result<(), DomainError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let ended = store::sessions::revoke_one(&tx, who.user, session)
        .await?
        .ok_or(DomainError::NotFound)?;
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
pub async fn list(state: &State, who: &Principal) -> Result<Vec<Listed>, DomainError> {
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
