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

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{history_page, valid_email, valid_password};
use super::error::ApiError;
use super::request::Req;
use super::response::{self, Items, Page, Response};
use super::{authorize, principal};
use crate::app::State;
use crate::escalation;
use crate::guard::Principal;
use crate::permissions::{self, SUPERUSER};
use crate::sessions;
use crate::store::{self, users::User};

/// Routes under `/api/v1/users`.
pub async fn route(
    state: &State,
    method: &Method,
    rest: &[&str],
    req: Req,
) -> Result<Response, ApiError> {
    match (method, rest) {
        (&Method::GET, []) => list(state, req).await,
        (_, []) => Err(ApiError::MethodNotAllowed("GET")),
        (&Method::GET, ["me"]) => me(state, req).await,
        (&Method::POST, ["me", "password"]) => change_password(state, req).await,
        (_, ["me", "password"]) => Err(ApiError::MethodNotAllowed("POST")),
        (&Method::GET, [id]) => show(state, id, req).await,
        (&Method::PATCH, [id]) => update(state, id, req).await,
        (&Method::DELETE, [id]) => disable(state, id, req).await,
        (_, [_]) => Err(ApiError::MethodNotAllowed("GET, PATCH, DELETE")),
        (&Method::GET, [id, "history"]) => history(state, id, req).await,
        (&Method::GET, [id, "roles"]) => roles(state, id, req).await,
        (_, [_, "history" | "roles"]) => Err(ApiError::MethodNotAllowed("GET")),
        (&Method::PUT, [id, "roles", role]) => assign_role(state, id, role, req).await,
        (&Method::DELETE, [id, "roles", role]) => remove_role(state, id, role, req).await,
        (_, [_, "roles", _]) => Err(ApiError::MethodNotAllowed("PUT, DELETE")),
        _ => Err(ApiError::NotFound),
    }
}

/// The caller and the user `id` names, when the caller holds `own` (for themselves) or
/// `any` (for anyone). Authentication comes first, so a malformed id without a token is 401.
async fn target(
    state: &State,
    req: &Req,
    id: &str,
    own: &str,
    any: &str,
) -> Result<(Arc<Principal>, Uuid), ApiError> {
    let who = principal(state, req).await?;
    let user = if id == "me" {
        who.user
    } else {
        id.parse::<Uuid>().map_err(|_| ApiError::NotFound)?
    };
    let snapshot = state.permissions.snapshot();
    let allowed = snapshot.allows(&who.roles, &[any])
        || (user == who.user && snapshot.allows(&who.roles, &[own]));
    if allowed {
        Ok((who, user))
    } else {
        Err(ApiError::Forbidden)
    }
}

/// A user with their effective permissions.
#[derive(Serialize)]
struct Me {
    #[serde(flatten)]
    user: User,
    permissions: Vec<String>,
}

/// `GET /api/v1/users/me` — `user_self_read`. The caller with effective permissions.
async fn me(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = authorize(state, &req, &["user_self_read"]).await?;
    let db = store::conn(&state.db).await?;
    let user = store::users::by_id(&db, who.user)
        .await?
        .ok_or(ApiError::NotFound)?;
    let permissions = state.permissions.snapshot().effective(&user.roles);
    response::json(StatusCode::OK, &Me { user, permissions })
}

/// `GET /api/v1/users` — `user_all_read`. A page of users whose e-mail contains `email`
/// (case-insensitively), ordered by e-mail.
async fn list(state: &State, req: Req) -> Result<Response, ApiError> {
    authorize(state, &req, &["user_all_read"]).await?;
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
async fn show(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (_, user) = target(state, &req, id, "user_self_read", "user_all_read").await?;
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
async fn update(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (who, user) = target(state, &req, id, "user_self_update", "user_all_update").await?;
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
async fn change_password(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = authorize(state, &req, &["user_self_update"]).await?;
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
        &who,
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
async fn disable(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (who, user) = target(state, &req, id, "user_self_delete", "user_all_delete").await?;
    let own = (user == who.user).then_some(who.session);
    let by_superuser = escalation::is_superuser(&who.roles);
    let user = sessions::disable(state, user, &req.origin(), own, by_superuser)
        .await?
        .ok_or(ApiError::NotFound)?;
    response::json(StatusCode::OK, &user)
}

/// `GET /api/v1/users/{id}/history` — self: `user_self_read`; others: `user_all_read`.
async fn history(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (_, user) = target(state, &req, id, "user_self_read", "user_all_read").await?;
    let db = store::conn(&state.db).await?;
    if store::users::roles_version(&db, user).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    drop(db);
    history_page(state, user, &req).await
}

/// `GET /api/v1/users/{id}/roles` — self: `user_self_read`; others: `user_all_read`.
/// `{items: [role, ...]}` ordered by name.
async fn roles(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (_, user) = target(state, &req, id, "user_self_read", "user_all_read").await?;
    let db = store::conn(&state.db).await?;
    if store::users::roles_version(&db, user).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let items = store::roles::of_user(&db, user).await?;
    response::json(StatusCode::OK, &Items { items })
}

/// The caller, user and role of a `/users/{id}/roles/{role_id}` request, for a holder of
/// `user_all_set_role`. Nobody changes their own roles without it.
async fn assignment(
    state: &State,
    id: &str,
    role: &str,
    req: &Req,
) -> Result<(Arc<Principal>, Uuid, Uuid), ApiError> {
    let who = authorize(state, req, &["user_all_set_role"]).await?;
    let user = if id == "me" {
        who.user
    } else {
        id.parse().map_err(|_| ApiError::NotFound)?
    };
    let role = role.parse().map_err(|_| ApiError::NotFound)?;
    Ok((who, user, role))
}

/// `PUT /api/v1/users/{id}/roles/{role_id}` — `user_all_set_role`. → 204 (idempotent);
/// 404 for an unknown user or role. 403 unless the caller holds every permission of the role
/// (assigning it would hand out what they lack), for `superuser` unless the caller is one,
/// and for a user who is a superuser unless the caller is one.
async fn assign_role(state: &State, id: &str, role: &str, req: Req) -> Result<Response, ApiError> {
    let (who, user, role) = assignment(state, id, role, &req).await?;
    change_role(state, &who, user, role, true).await
}

/// `DELETE /api/v1/users/{id}/roles/{role_id}` — `user_all_set_role`. → 204 (idempotent);
/// 404 for an unknown user or role. 403 for `superuser`, or any role of a superuser, unless
/// the caller is one; 409 `last_superuser` for the last active superuser's `superuser`.
async fn remove_role(state: &State, id: &str, role: &str, req: Req) -> Result<Response, ApiError> {
    let (who, user, role) = assignment(state, id, role, &req).await?;
    change_role(state, &who, user, role, false).await
}

/// Adds or removes one role of one user; a real change bumps the user's roles version in the
/// same transaction, and every replica learns it at once (their tokens go stale).
async fn change_role(
    state: &State,
    who: &Principal,
    user: Uuid,
    role: Uuid,
    add: bool,
) -> Result<Response, ApiError> {
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
