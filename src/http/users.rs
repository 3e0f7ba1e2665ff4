//! `/api/v1/users/...`: the caller's own profile and password, and users as an administrator
//! sees them: list, read, change, disable, history, roles.
//!
//! Every `{id}` endpoint needs the `user_self_*` permission when `{id}` is the caller and the
//! `user_all_*` one otherwise (holding `user_all_*` is enough for oneself too). `{id}` may be
//! `me`; the literal `/users/me` routes come first. A malformed id is 404, and a caller who may
//! not see other users gets 403 for any id but their own, so existence never leaks.
//!
//! The router lets the caller in (`http::endpoint`: the permission, or own-or-any for `{id}`)
//! and resolves `{id}`; the rules (*No escalation*, the last superuser) live in
//! `domain::users`. Each handler reads the request, calls one domain function and renders.

use http::StatusCode;
use uuid::Uuid;

use super::auth::history_page;
use super::error::ApiError;
use super::request::Req;
use super::response::{self, Items, Response};
use crate::domain::users;
use crate::guard::Principal;
use crate::state::State;

/// `GET /api/v1/users/me` — `user_self_read`. The caller with effective permissions.
pub async fn me(state: &State, who: &Principal) -> Result<Response, ApiError> {
    response::json(StatusCode::OK, &users::me(state, who).await?)
}

/// `GET /api/v1/users` — `user_all_read`. A page of users whose e-mail contains `email`
/// (case-insensitively), ordered by e-mail.
pub async fn list(state: &State, req: Req) -> Result<Response, ApiError> {
    let (page, per_page) = req.pagination()?;
    let email = req.query("email").filter(|e| !e.is_empty());
    let (items, total) = users::page(state, email.as_deref(), page, per_page).await?;
    response::page(items, page, per_page, total)
}

/// `GET /api/v1/users/{id}` — self: `user_self_read`; others: `user_all_read`.
pub async fn show(state: &State, user: Uuid) -> Result<Response, ApiError> {
    response::json(StatusCode::OK, &users::show(state, user).await?)
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
    let user = users::change_email(state, who, user, req.json()?).await?;
    response::json(StatusCode::OK, &user)
}

/// `POST /api/v1/users/me/password` — `user_self_update`. `{old_password, new_password}` →
/// 204; every other session of the caller ends. Wrong old password → 401.
pub async fn change_password(
    state: &State,
    who: &Principal,
    req: Req,
) -> Result<Response, ApiError> {
    users::change_password(state, who, req.json()?, &req.origin()).await?;
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
    let user = users::disable(state, who, user, &req.origin()).await?;
    response::json(StatusCode::OK, &user)
}

/// `GET /api/v1/users/{id}/history` — self: `user_self_read`; others: `user_all_read`.
pub async fn history(state: &State, user: Uuid, req: Req) -> Result<Response, ApiError> {
    history_page(state, user, &req).await
}

/// `GET /api/v1/users/{id}/roles` — self: `user_self_read`; others: `user_all_read`.
/// `{items: [role, ...]}` ordered by name.
pub async fn roles(state: &State, user: Uuid) -> Result<Response, ApiError> {
    let items = users::roles(state, user).await?;
    response::json(StatusCode::OK, &Items { items })
}

/// The user and role of a `/users/{id}/roles/{role_id}` request (`me`: the caller); 404 for
/// a malformed id. The router has checked `user_all_set_role`: nobody changes their own roles
/// without it.
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
/// `superuser`.
pub async fn set_role(
    state: &State,
    who: &Principal,
    id: &str,
    role: &str,
    add: bool,
) -> Result<Response, ApiError> {
    let (user, role) = assignment(who, id, role)?;
    users::change_role(state, who, user, role, add).await?;
    Ok(response::no_content())
}
