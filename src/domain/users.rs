//! Users as their owner and an administrator see them: profile, e-mail, password, standing,
//! history, roles.
//!
//! Changes of roles, e-mail and standing follow the *No escalation* rules (`escalation`):
//! nobody assigns a role holding permissions they lack, and only a superuser touches
//! `superuser` or a superuser; the last active superuser is never disabled and never loses the
//! role. Who may call which operation for whom is the caller's permission check; these
//! functions take the caller as found.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{check, DomainError};
use super::registration::{valid_email, valid_password, MAX_PASSWORD};
use super::{escalation, Changed, Entry, Origin, Role, User};
use crate::guard::Principal;
use crate::permissions::SUPERUSER;
use crate::sessions;
use crate::state::State;
use crate::store;

/// A user with their effective permissions.
#[derive(Serialize)]
pub struct Me {
    #[serde(flatten)]
    user: User,
    permissions: Vec<String>,
}

/// The caller with their effective permissions.
pub async fn me(state: &State, who: &Principal) -> Result<Me, DomainError> {
    let user = show(state, who.user).await?;
    let permissions = state.permissions.snapshot().effective(&user.roles);
    Ok(Me { user, permissions })
}

/// One user.
pub async fn show(state: &State, user: Uuid) -> Result<User, DomainError> {
    let db = store::conn(&state.db).await?;
    store::users::by_id(&db, user)
        .await?
        .ok_or(DomainError::NotFound)
}

/// Page `page` (1-based) of `per_page` users whose e-mail contains `email`
/// (case-insensitively), ordered by e-mail; and how many match in all.
pub async fn page(
    state: &State,
    email: Option<&str>,
    page: i64,
    per_page: i64,
) -> Result<(Vec<User>, i64), DomainError> {
    let db = store::conn(&state.db).await?;
    Ok(store::users::page(&db, email, per_page, (page - 1) * per_page).await?)
}

/// Page `page` of a user's history, newest first, and its length.
pub async fn history(
    state: &State,
    user: Uuid,
    page: i64,
    per_page: i64,
) -> Result<(Vec<Entry>, i64), DomainError> {
    let db = store::conn(&state.db).await?;
    if store::users::roles_version(&db, user).await?.is_none() {
        return Err(DomainError::NotFound);
    }
    Ok(store::history::page(&db, user, per_page, (page - 1) * per_page).await?)
}

/// The roles a user holds, ordered by name.
pub async fn roles(state: &State, user: Uuid) -> Result<Vec<Role>, DomainError> {
    let db = store::conn(&state.db).await?;
    if store::users::roles_version(&db, user).await?.is_none() {
        return Err(DomainError::NotFound);
    }
    Ok(store::roles::of_user(&db, user).await?)
}

/// A new e-mail.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChange {
    email: String,
}

/// Changes a user's e-mail. `EmailTaken`; only a superuser changes a superuser's.
pub async fn change_email(
    state: &State,
    who: &Principal,
    user: Uuid,
    change: EmailChange,
) -> Result<User, DomainError> {
    let mut errors = Vec::new();
    let email = valid_email("email", &change.email, &mut errors);
    check(errors)?;
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let by_superuser = escalation::is_superuser(&who.roles);
    if !escalation::may_change_user(&tx, user, by_superuser, false).await?
        || !store::users::set_email(&tx, user, &email).await?
    {
        return Err(DomainError::NotFound);
    }
    let user = store::users::by_id(&tx, user)
        .await?
        .ok_or(DomainError::NotFound)?;
    tx.commit().await?;
    Ok(user)
}

/// The caller's old and new password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    old_password: String,
    new_password: String,
}

/// Changes the caller's password after checking the old one (`InvalidCredentials`); every
/// other session of the caller ends.
pub async fn change_password(
    state: &State,
    who: &Principal,
    change: PasswordChange,
    origin: &Origin,
) -> Result<(), DomainError> {
    let mut errors = Vec::new();
    valid_password("new_password", &change.new_password, &mut errors);
    check(errors)?;
    if change.old_password.chars().count() > MAX_PASSWORD {
        // Too long to be anyone's: no need to hash 64 KiB to say so.
        return Err(DomainError::InvalidCredentials);
    }
    sessions::change_password(state, who, change.old_password, change.new_password, origin).await
}

/// Disables a user (idempotent) and ends all their sessions. Only a superuser disables a
/// superuser, and never the last active one (`LastSuperuser`).
pub async fn disable(
    state: &State,
    who: &Principal,
    user: Uuid,
    origin: &Origin,
) -> Result<User, DomainError> {
    let own = (user == who.user).then_some(who.session);
    let by_superuser = escalation::is_superuser(&who.roles);
    sessions::disable(state, user, origin, own, by_superuser)
        .await?
        .ok_or(DomainError::NotFound)
}

/// Gives (`add`) or takes one role of one user (idempotent). A real change bumps the user's
/// roles version in the same transaction, and every replica learns it at once (their tokens go
/// stale). `NotFound` for an unknown user or role; an escalation unless the caller holds every
/// permission of a role they assign, for `superuser` unless the caller is one, and for a user
/// who is a superuser unless the caller is one; `LastSuperuser` for the last active
/// superuser's `superuser`.
pub async fn change_role(
    state: &State,
    who: &Principal,
    user: Uuid,
    role: Uuid,
    add: bool,
) -> Result<(), DomainError> {
    let by_superuser = escalation::is_superuser(&who.roles);
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    // Locks in one order everywhere: the `superuser` role (when a superuser may be ended),
    // the role, then the user; role changes take role then holders. So nothing waits in a
    // circle.
    if !add {
        store::roles::lock_superusers(&tx).await?;
    }
    if !store::roles::hold(&tx, role).await? {
        return Err(DomainError::NotFound);
    }
    let role_row = store::roles::by_id(&tx, role)
        .await?
        .ok_or(DomainError::NotFound)?;
    let is_superuser_role = role_row.builtin && role_row.name == SUPERUSER;
    escalation::may_assign(is_superuser_role, by_superuser)?;
    if add {
        escalation::may_grant(
            &state.permissions.snapshot(),
            &who.roles,
            &role_row.permissions,
        )?;
    }
    if !escalation::may_change_user(&tx, user, by_superuser, !add && is_superuser_role).await? {
        return Err(DomainError::NotFound);
    }
    let version = if add {
        store::users::add_role(&tx, user, role).await?
    } else {
        store::users::remove_role(&tx, user, role).await?
    };
    tx.commit().await?;
    Changed::user(user, version).propagate(state).await;
    Ok(())
}
