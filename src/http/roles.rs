//! `/api/v1/roles/...` and `/api/v1/permissions`: roles and their grants, and the permission
//! catalog (built-ins plus the route map's service permissions; no API changes it).
//!
//! A change that alters role names inside tokens (rename, delete) bumps the roles version of
//! every holder, so their tokens go stale and the next refresh carries the new names; a change
//! of grants alone only bumps the catalog version. Both reach every replica through
//! `permissions::propagate`.
//!
//! No escalation: a role is created only with permissions its creator holds, and a change of
//! grants may add only permissions the caller holds (taking away is always allowed).

use http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use super::error::{ApiError, FieldError};
use super::request::Req;
use super::response::{self, Items, Response};
use crate::app::State;
use crate::escalation;
use crate::guard::Principal;
use crate::permissions::{self, SUPERUSER};
use crate::store;

/// Longest description accepted.
const MAX_DESCRIPTION: usize = 1024;

/// Checks a role name: 1 to 64 characters of `a-z 0-9 _ -`.
fn valid_name(name: &str, errors: &mut Vec<FieldError>) {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        errors.push(FieldError::new(
            "name",
            "must be 1 to 64 characters of a-z, 0-9, _ and -",
        ));
    }
}

fn valid_description(description: &str, errors: &mut Vec<FieldError>) {
    if description.chars().count() > MAX_DESCRIPTION {
        errors.push(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
}

/// Sorted, without duplicates.
fn normalise(mut permissions: Vec<String>) -> Vec<String> {
    permissions.sort();
    permissions.dedup();
    permissions
}

/// 422 `unknown_permission` naming the first name that is not in the catalog.
async fn known(
    db: &impl deadpool_postgres::GenericClient,
    names: &[String],
) -> Result<(), ApiError> {
    match store::roles::first_unknown(db, names).await? {
        Some(name) => Err(ApiError::UnknownPermission(name)),
        None => Ok(()),
    }
}

fn role_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound)
}

/// `GET /api/v1/roles` — `role_read`. Every role, ordered by name.
pub async fn list(state: &State) -> Result<Response, ApiError> {
    let db = store::conn(&state.db).await?;
    let items = store::roles::list(&db).await?;
    response::json(StatusCode::OK, &Items { items })
}

/// `GET /api/v1/roles/{id}` — `role_read`. 404 for an unknown or malformed id.
pub async fn show(state: &State, id: &str) -> Result<Response, ApiError> {
    let id = role_id(id)?;
    let db = store::conn(&state.db).await?;
    let role = store::roles::by_id(&db, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    response::json(StatusCode::OK, &role)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRole {
    name: String,
    #[serde(default)]
    description: String,
    permissions: Vec<String>,
}

/// `POST /api/v1/roles` — `role_create`. `{name, description?, permissions}` → 201 role
/// (`permissions` is required, even when empty, so a forgotten field never makes an empty role).
/// 403 for a permission the caller does not hold, 409 `role_exists`, 422 `validation_failed` /
/// `unknown_permission`.
pub async fn create(state: &State, who: &Principal, req: Req) -> Result<Response, ApiError> {
    let body: NewRole = req.json()?;
    let mut errors = Vec::new();
    valid_name(&body.name, &mut errors);
    valid_description(&body.description, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let grants = normalise(body.permissions);
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    known(&tx, &grants).await?;
    escalation::may_grant(&state.permissions.snapshot(), &who.roles, &grants)?;
    let id = store::roles::create(&tx, &body.name, &body.description).await?;
    store::roles::set_permissions(&tx, id, &grants).await?;
    store::roles::bump_catalog(&tx).await?;
    let role = store::roles::by_id(&tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    permissions::propagate(state, true, &[]).await;
    response::json(StatusCode::CREATED, &role)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolePatch {
    name: Option<String>,
    description: Option<String>,
    permissions: Option<Vec<String>>,
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
    let body: RolePatch = req.json()?;
    let mut errors = Vec::new();
    if let Some(name) = &body.name {
        valid_name(name, &mut errors);
    }
    if let Some(description) = &body.description {
        valid_description(description, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let grants = body.permissions.map(normalise);
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let (current, builtin) = store::roles::lock(&tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let rename = body.name.filter(|n| *n != current);
    if builtin && rename.is_some() {
        return Err(ApiError::Conflict(
            "role_builtin",
            "Built-in roles cannot be renamed.".into(),
        ));
    }
    if builtin && current == SUPERUSER && grants.is_some() {
        return Err(ApiError::Conflict(
            "role_builtin",
            "superuser holds every permission; its grants cannot be changed.".into(),
        ));
    }
    if let Some(grants) = &grants {
        known(&tx, grants).await?;
        // The role is locked: its current grants cannot change under us.
        let current = store::roles::by_id(&tx, id)
            .await?
            .ok_or(ApiError::NotFound)?
            .permissions;
        let added: Vec<String> = grants
            .iter()
            .filter(|p| !current.contains(p))
            .cloned()
            .collect();
        escalation::may_grant(&state.permissions.snapshot(), &who.roles, &added)?;
        store::roles::set_permissions(&tx, id, grants).await?;
    }
    store::roles::update(&tx, id, rename.as_deref(), body.description.as_deref()).await?;
    // Tokens carry role names: after a rename, every holder's tokens must be refreshed.
    let holders = match rename {
        Some(_) => store::roles::bump_holders(&tx, id).await?,
        None => Vec::new(),
    };
    let catalog = rename.is_some() || grants.is_some();
    if catalog {
        store::roles::bump_catalog(&tx).await?;
    }
    let role = store::roles::by_id(&tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    permissions::propagate(state, catalog, &holders).await;
    response::json(StatusCode::OK, &role)
}

/// `DELETE /api/v1/roles/{id}` — `role_delete`. → 204; the role is taken from every user
/// (their tokens go stale). 409 `role_builtin` for a built-in role.
pub async fn delete(state: &State, id: &str) -> Result<Response, ApiError> {
    let id = role_id(id)?;
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let (_, builtin) = store::roles::lock(&tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if builtin {
        return Err(ApiError::Conflict(
            "role_builtin",
            "Built-in roles cannot be deleted.".into(),
        ));
    }
    let holders = store::roles::bump_holders(&tx, id).await?;
    store::roles::delete(&tx, id).await?;
    store::roles::bump_catalog(&tx).await?;
    tx.commit().await?;
    permissions::propagate(state, true, &holders).await;
    Ok(response::no_content())
}

/// `GET /api/v1/permissions` — `permission_read`. The catalog, ordered by name.
pub async fn catalog(state: &State) -> Result<Response, ApiError> {
    let db = store::conn(&state.db).await?;
    let items = store::roles::catalog(&db).await?;
    response::json(StatusCode::OK, &Items { items })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_short_lowercase_words() {
        for good in ["editor", "a", "film-critic_2", &"x".repeat(64)] {
            let mut e = Vec::new();
            valid_name(good, &mut e);
            assert!(e.is_empty(), "{good}");
        }
        for bad in ["", "Editor", "film critic", "é", &"x".repeat(65), "a/b"] {
            let mut e = Vec::new();
            valid_name(bad, &mut e);
            assert_eq!(e.len(), 1, "{bad}");
        }
    }
}
