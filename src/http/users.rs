//! `/api/v1/users/...`: the caller's own profile and password, and users as an administrator
//! sees them: list, read, change, disable, history, roles.
//!
//! Every `{id}` endpoint needs the `user_self_*` permission when `{id}` is the caller and the
//! `user_all_*` one otherwise (holding `user_all_*` is enough for oneself too). `{id}` may be
//! `me`; the literal `/users/me` routes come first. A malformed id is 404, and a caller who may
//! not see other users gets 403 for any id but their own, so existence never leaks.
//!
//! The rules (*No escalation*, the last superuser) live in `domain::users`: each handler checks
//! the caller's permission, reads the request, calls one domain function and renders.

use std::sync::Arc;

use http::{Method, StatusCode};
use uuid::Uuid;

use super::auth::history_page;
use super::error::ApiError;
use super::request::Req;
use super::response::{self, Items, Page, Response};
use super::{authorize, principal};
use crate::domain::users;
use crate::guard::Principal;
use crate::state::State;

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

/// `GET /api/v1/users/me` — `user_self_read`. The caller with effective permissions.
async fn me(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = authorize(state, &req, &["user_self_read"]).await?;
    response::json(StatusCode::OK, &users::me(state, &who).await?)
}

/// `GET /api/v1/users` — `user_all_read`. A page of users whose e-mail contains `email`
/// (case-insensitively), ordered by e-mail.
async fn list(state: &State, req: Req) -> Result<Response, ApiError> {
    authorize(state, &req, &["user_all_read"]).await?;
    let (page, per_page) = req.pagination()?;
    let email = req.query("email").filter(|e| !e.is_empty());
    let (items, total) = users::page(state, email.as_deref(), page, per_page).await?;
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
    response::json(StatusCode::OK, &users::show(state, user).await?)
}

/// `PATCH /api/v1/users/{id}` (and `/users/me`) — self: `user_self_update`; others:
/// `user_all_update`. `{email}` → the user. 409 `email_taken`, 422; 403 for a superuser's
/// e-mail unless the caller is one.
async fn update(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (who, user) = target(state, &req, id, "user_self_update", "user_all_update").await?;
    let user = users::change_email(state, &who, user, req.json()?).await?;
    response::json(StatusCode::OK, &user)
}

/// `POST /api/v1/users/me/password` — `user_self_update`. `{old_password, new_password}` →
/// 204; every other session of the caller ends. Wrong old password → 401.
async fn change_password(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = authorize(state, &req, &["user_self_update"]).await?;
    users::change_password(state, &who, req.json()?, &req.origin()).await?;
    Ok(response::no_content())
}

/// `DELETE /api/v1/users/{id}` — self: `user_self_delete`; others: `user_all_delete`.
/// Disables the user (idempotent) and ends all their sessions → 200 user. Only a superuser
/// disables a superuser (403), and never the last active one (409 `last_superuser`).
async fn disable(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (who, user) = target(state, &req, id, "user_self_delete", "user_all_delete").await?;
    let user = users::disable(state, &who, user, &req.origin()).await?;
    response::json(StatusCode::OK, &user)
}

/// `GET /api/v1/users/{id}/history` — self: `user_self_read`; others: `user_all_read`.
async fn history(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (_, user) = target(state, &req, id, "user_self_read", "user_all_read").await?;
    history_page(state, user, &req).await
}

/// `GET /api/v1/users/{id}/roles` — self: `user_self_read`; others: `user_all_read`.
/// `{items: [role, ...]}` ordered by name.
async fn roles(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let (_, user) = target(state, &req, id, "user_self_read", "user_all_read").await?;
    let items = users::roles(state, user).await?;
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
    users::change_role(state, &who, user, role, true).await?;
    Ok(response::no_content())
}

/// `DELETE /api/v1/users/{id}/roles/{role_id}` — `user_all_set_role`. → 204 (idempotent);
/// 404 for an unknown user or role. 403 for `superuser`, or any role of a superuser, unless
/// the caller is one; 409 `last_superuser` for the last active superuser's `superuser`.
async fn remove_role(state: &State, id: &str, role: &str, req: Req) -> Result<Response, ApiError> {
    let (who, user, role) = assignment(state, id, role, &req).await?;
    users::change_role(state, &who, user, role, false).await?;
    Ok(response::no_content())
}
