//! `/api/v1/roles/...` and `/api/v1/permissions`: roles and their grants, and the permission
//! catalog (built-ins plus the route map's service permissions; no API changes it).
//!
//! The rules (built-in roles, *No escalation*, what a change makes stale) live in
//! `domain::roles`: each handler checks the caller's permission, reads the request, calls one
//! domain function and renders.

use http::{Method, StatusCode};
use uuid::Uuid;

use super::authorize;
use super::error::ApiError;
use super::request::Req;
use super::response::{self, Items, Response};
use crate::domain::roles;
use crate::state::State;

/// Routes under `/api/v1/roles`.
pub async fn route(
    state: &State,
    method: &Method,
    rest: &[&str],
    req: Req,
) -> Result<Response, ApiError> {
    match (method, rest) {
        (&Method::GET, []) => list(state, req).await,
        (&Method::POST, []) => create(state, req).await,
        (_, []) => Err(ApiError::MethodNotAllowed("GET, POST")),
        (&Method::GET, [id]) => show(state, id, req).await,
        (&Method::PATCH, [id]) => update(state, id, req).await,
        (&Method::DELETE, [id]) => delete(state, id, req).await,
        (_, [_]) => Err(ApiError::MethodNotAllowed("GET, PATCH, DELETE")),
        _ => Err(ApiError::NotFound),
    }
}

/// Routes under `/api/v1/permissions`.
pub async fn route_permissions(
    state: &State,
    method: &Method,
    rest: &[&str],
    req: Req,
) -> Result<Response, ApiError> {
    match (method, rest) {
        (&Method::GET, []) => catalog(state, req).await,
        (_, []) => Err(ApiError::MethodNotAllowed("GET")),
        _ => Err(ApiError::NotFound),
    }
}

fn role_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

/// `GET /api/v1/roles` — `role_read`. Every role, ordered by name.
async fn list(state: &State, req: Req) -> Result<Response, ApiError> {
    authorize(state, &req, &["role_read"]).await?;
    let items = roles::list(state).await?;
    response::json(StatusCode::OK, &Items { items })
}

/// `GET /api/v1/roles/{id}` — `role_read`. 404 for an unknown or malformed id.
async fn show(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    authorize(state, &req, &["role_read"]).await?;
    let role = roles::show(state, role_id(id)?).await?;
    response::json(StatusCode::OK, &role)
}

/// `POST /api/v1/roles` — `role_create`. `{name, description?, permissions}` → 201 role
/// (`permissions` is required, even when empty, so a forgotten field never makes an empty role).
/// 403 for a permission the caller does not hold, 409 `role_exists`, 422 `validation_failed` /
/// `unknown_permission`.
async fn create(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = authorize(state, &req, &["role_create"]).await?;
    let role = roles::create(state, &who, req.json()?).await?;
    response::json(StatusCode::CREATED, &role)
}

/// `PATCH /api/v1/roles/{id}` — `role_update`. Any of `{name, description, permissions}`
/// (`permissions` replaces the set) → 200 role. 409 `role_builtin` when renaming a built-in
/// role or changing `superuser`'s grants (it holds everything, always), 409 `role_exists`,
/// 403 when adding a permission the caller does not hold.
async fn update(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let who = authorize(state, &req, &["role_update"]).await?;
    let id = role_id(id)?;
    let role = roles::update(state, &who, id, req.json()?).await?;
    response::json(StatusCode::OK, &role)
}

/// `DELETE /api/v1/roles/{id}` — `role_delete`. → 204; the role is taken from every user
/// (their tokens go stale). 409 `role_builtin` for a built-in role.
async fn delete(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    authorize(state, &req, &["role_delete"]).await?;
    roles::delete(state, role_id(id)?).await?;
    Ok(response::no_content())
}

/// `GET /api/v1/permissions` — `permission_read`. The catalog, ordered by name.
async fn catalog(state: &State, req: Req) -> Result<Response, ApiError> {
    authorize(state, &req, &["permission_read"]).await?;
    let items = roles::catalog(state).await?;
    response::json(StatusCode::OK, &Items { items })
}
