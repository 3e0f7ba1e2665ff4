//! `/api/v1/users/...`: the caller's own profile and password, and users as an administrator
//! sees them: list, read, change, disable, history, roles.
//!
//! Every `{id}` endpoint needs the `user_self_*` permission when `{id}` is the caller and the
//! `user_all_*` one otherwise (holding `user_all_*` is enough for oneself too). `{id}` may be
//! `me`; the literal `/users/me` routes come first. A malformed id is 404, and a caller who may
//! not see other users gets 403 for any id but their own, so existence never leaks.
//!
//! Changes of roles, e-mail and standing follow the *No escalation* rules (`escalation`):
//! nobody assigns a role holding permissions they lack, and only a superuser touches
//! `superuser` or a superuser.

use http::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{history_page, valid_email, valid_password};
use super::error::ApiError;
use super::request::Req;
use super::response::{self, Items, Page, Response};
use crate::app::State;
use crate::escalation;
use crate::guard::Principal;
use crate::permissions::{self, SUPERUSER};
use crate::sessions;
use crate::store::{self, users::User};

/// A user with their effective permissions.
#[derive(Serialize)]
struct Me {
    #[serde(flatten)]
    user: User,
    permissions: Vec<String>,
}

/// `GET /api/v1/users/me` — `user_self_read`. The caller with effective permissions.
pub async fn me(state: &State, who: &Principal) -> Result<Response, ApiError> {
    let db = store::conn(&state.db).await?;
    let user = store::users::by_id(&db, who.user)
        .await?
        .ok_or(ApiError::NotFound)?;
    let permissions = state.permissions.snapshot().effective(&user.roles);
    response::json(StatusCode::OK, &Me { user, permissions })
}

/// `GET /api/v1/users` — `user_all_read`. A page of users whose e-mail contains `email`
/// (case-insensitively), ordered by e-mail.
pub async fn list(state: &State, req: Req) -> Result<Response, ApiError> {
    let (page, per_page) = req.pagination()?;
    let email = req.query("email").filter(|e| !e.is_empty());
    let db = store::conn(&state.db).await?;
    let (items, total) =
        store::users::page(&db, email.as_deref(), per_page, (page - 1) * per_page).await?;
    response::json(
        StatusCode::OK,
        &Page {
            items,
            page,
            per_page,
            total,
        },
    )
}

/// `GET /api/v1/users/{id}` — self: `user_self_read`; others: `user_all_read`.
pub async fn show(state: &State, user: Uuid) -> Result<Response, ApiError> {
    let db = store::conn(&state.db).await?;
    let user = store::users::by_id(&db, user)
        .await?
        .ok_or(ApiError::NotFound)?;
    response::json(StatusCode::OK, &user)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailChange {
    email: String,
}

/// `PATCH /api/v1/users/{id}` (and `/users/me`) — self: `user_self_update`; others:
/// `user_all_update`. `{email}` → the user. 409 `email_taken`, 422; 403 for a superuser's
/// e-mail unless the caller is one.
pub async fn update(
    state: &State,
    who: &Principal,
    user: Uuid,
    req: Req,
) -> Result<Response, ApiError> {
    let body: EmailChange = req.json()?;
    let mut errors = Vec::new();
    let email = valid_email("email", &body.email, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let by_superuser = escalation::is_superuser(&who.roles);
    if !escalation::may_change_user(&tx, user, by_superuser, false).await?
        || !store::users::set_email(&tx, user, &email).await?
    {
        return Err(ApiError::NotFound);
    }
    let user = store::users::by_id(&tx, user)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    response::json(StatusCode::OK, &user)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    old_password: String,
    new_password: String,
}

/// `POST /api/v1/users/me/password` — `user_self_update`. `{old_password, new_password}` →
/// 204; every other session of the caller ends. Wrong old password → 401.
pub async fn change_password(
    state: &State,
    who: &Principal,
    req: Req,
) -> Result<Response, ApiError> {
    let body: PasswordChange = req.json()?;
    let mut errors = Vec::new();
    valid_password("new_password", &body.new_password, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if body.old_password.chars().count() > 128 {
        // Too long to be anyone's: no need to hash 64 KiB to say so.
        return Err(ApiError::InvalidCredentials);
    }
    sessions::change_password(
        state,
        who,
        body.old_password,
        body.new_password,
        &req.origin(),
    )
    .await?;
    Ok(response::no_content())
}

/// `DELETE /api/v1/users/{id}` — self: `user_self_delete`; others: `user_all_delete`.
/// Disables the user (idempotent) and ends all their sessions → 200 user. Only a superuser
/// disables a superuser (403), and never the last active one (409 `last_superuser`).
pub async fn disable(
    state: &State,
    who: &Principal,
    user: Uuid,
    req: Req,
) -> Result<Response, ApiError> {
    let own = (user == who.user).then_some(who.session);
    let by_superuser = escalation::is_superuser(&who.roles);
    let user = sessions::disable(state, user, &req.origin(), own, by_superuser)
        .await?
        .ok_or(ApiError::NotFound)?;
    response::json(StatusCode::OK, &user)
}

/// `GET /api/v1/users/{id}/history` — self: `user_self_read`; others: `user_all_read`.
pub async fn history(state: &State, user: Uuid, req: Req) -> Result<Response, ApiError> {
    let db = store::conn(&state.db).await?;
    if store::users::roles_version(&db, user).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    drop(db);
    history_page(state, user, &req).await
}

/// `GET /api/v1/users/{id}/roles` — self: `user_self_read`; others: `user_all_read`.
/// `{items: [role, ...]}` ordered by name.
pub async fn roles(state: &State, user: Uuid) -> Result<Response, ApiError> {
    let db = store::conn(&state.db).await?;
    if store::users::roles_version(&db, user).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let items = store::roles::of_user(&db, user).await?;
    response::json(StatusCode::OK, &Items { items })
}

/// The user and role of a `/users/{id}/roles/{role_id}` request, for a holder of
/// `user_all_set_role`. Nobody changes their own roles without it.
fn assignment(who: &Principal, id: &str, role: &str) -> Result<(Uuid, Uuid), ApiError> {
    let user = if id == "me" {
        who.user
    } else {
        id.parse().map_err(|_| ApiError::NotFound)?
    };
    let role = role.parse().map_err(|_| ApiError::NotFound)?;
    Ok((user, role))
}

/// `PUT /api/v1/users/{id}/roles/{role_id}` (`add`) and `DELETE` (not `add`) —
/// `user_all_set_role`. Adds or removes one role of one user → 204 (idempotent); 404 for an
/// unknown user or role. 403 for `superuser`, or any role of a superuser, unless the caller is
/// one; when adding, 403 unless the caller holds every permission of the role (assigning it
/// would hand out what they lack). 409 `last_superuser` for the last active superuser's
/// `superuser`. A real change bumps the user's roles version in the same transaction, and
/// every replica learns it at once (their tokens go stale).
pub async fn set_role(
    state: &State,
    who: &Principal,
    id: &str,
    role: &str,
    add: bool,
) -> Result<Response, ApiError> {
    let (user, role) = assignment(who, id, role)?;
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
        return Err(ApiError::NotFound);
    }
    let role_row = store::roles::by_id(&tx, role)
        .await?
        .ok_or(ApiError::NotFound)?;
    let is_superuser_role = role_row.builtin && role_row.name == SUPERUSER;
    if is_superuser_role && !by_superuser {
        return Err(ApiError::Escalation(
            "Only a superuser can assign or remove `superuser`.".into(),
        ));
    }
    if add {
        escalation::may_grant(
            &state.permissions.snapshot(),
            &who.roles,
            &role_row.permissions,
        )?;
    }
    if !escalation::may_change_user(&tx, user, by_superuser, !add && is_superuser_role).await? {
        return Err(ApiError::NotFound);
    }
    let version = if add {
        store::users::add_role(&tx, user, role).await?
    } else {
        store::users::remove_role(&tx, user, role).await?
    };
    tx.commit().await?;
    if let Some(rv) = version {
        permissions::propagate(state, false, &[(user, rv)]).await;
    }
    Ok(response::no_content())
}
