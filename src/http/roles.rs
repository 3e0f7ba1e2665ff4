//! `/api/v1/roles/...` and `/api/v1/permissions`: roles and their grants, and the permission
//! catalog (built-ins plus the route map's service permissions; no API changes it).
//!
//! The rules (built-in roles, *No escalation*, what a change makes stale) live in
//! `domain::roles`: the router has checked the caller's permission (`http::endpoint`); each handler reads the
//! request, calls one domain function and renders.

use http::StatusCode;
use uuid::Uuid;

use super::error::ApiError;
use super::request::Req;
use super::response::{self, Items, Response};
use crate::domain::roles;
use crate::guard::Principal;
use crate::state::State;

fn role_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

/// `GET /api/v1/roles` — `role_read`. Every role, ordered by name.
pub async fn list(state: &State) -> Result<Response, ApiError> {
    let items = roles::list(state).await?;
    response::json(StatusCode::OK, &Items { items })
}

/// `GET /api/v1/roles/{id}` — `role_read`. 404 for an unknown or malformed id.
pub async fn show(state: &State, id: &str) -> Result<Response, ApiError> {
    let role = roles::show(state, role_id(id)?).await?;
    response::json(StatusCode::OK, &role)
}

/// `POST /api/v1/roles` — `role_create`. `{name, description?, permissions}` → 201 role
/// (`permissions` is required, even when empty, so a forgotten field never makes an empty role).
/// 403 for a permission the caller does not hold, 409 `role_exists`, 422 `validation_failed` /
/// `unknown_permission`.
pub async fn create(state: &State, who: &Principal, req: Req) -> Result<Response, ApiError> {
    let role = roles::create(state, who, req.json()?).await?;
    response::json(StatusCode::CREATED, &role)
}

/// `PATCH /api/v1/roles/{id}` — `role_update`. Any of `{name, description, permissions}`
/// (`permissions` replaces the set) → 200 role. 409 `role_builtin` when renaming a built-in
/// role or changing `superuser`'s grants (it holds everything, always), 409 `role_exists`,
/// 403 when adding a permission the caller does not hold.
pub async fn update(
    state: &State,
    who: &Principal,
    id: &str,
    req: Req,
) -> Result<Response, ApiError> {
    let id = role_id(id)?;
    let role = roles::update(state, who, id, req.json()?).await?;
    response::json(StatusCode::OK, &role)
}

/// `DELETE /api/v1/roles/{id}` — `role_delete`. → 204; the role is taken from every user
/// (their tokens go stale). 409 `role_builtin` for a built-in role.
pub async fn delete(state: &State, id: &str) -> Result<Response, ApiError> {
    roles::delete(state, role_id(id)?).await?;
    Ok(response::no_content())
}

/// `GET /api/v1/permissions` — `permission_read`. The catalog, ordered by name.
pub async fn catalog(state: &State) -> Result<Response, ApiError> {
    let items = roles::catalog(state).await?;
    response::json(StatusCode::OK, &Items { items })
}
