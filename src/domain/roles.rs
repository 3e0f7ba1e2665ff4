//! Roles and their grants, and the permission catalog (built-ins plus the route map's service
//! permissions; nothing here changes it).
//!
//! A change that alters role names inside tokens (rename, delete) bumps the roles version of
//! every holder, so their tokens go stale and the next refresh carries the new names; a change
//! of grants alone only bumps the catalog version. Both reach every replica through
//! [`Changed`].
//!
//! Built-in roles keep their names and are never deleted; `superuser` holds every permission,
//! always, so its grants never change. No escalation: a role is created only with permissions
//! its creator holds, and a change of grants may add only permissions the caller holds (taking
//! away is always allowed). Operators at the command line are trusted with any grant.

use deadpool_postgres::{GenericClient, Pool};
use serde::Deserialize;
use uuid::Uuid;

use super::error::{check, Conflict, DomainError, FieldError};
use super::{escalation, Changed, Permission, Role};
use crate::guard::Principal;
use crate::permissions::SUPERUSER;
use crate::state::State;
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

/// Refuses a rename of a built-in role.
fn may_rename(builtin: bool, rename: Option<&str>) -> Result<(), Conflict> {
    if builtin && rename.is_some() {
        return Err(Conflict::BuiltinRenamed);
    }
    Ok(())
}

/// Refuses any change of `superuser`'s grants: it holds the whole catalog in code.
fn may_change_grants(name: &str, builtin: bool) -> Result<(), Conflict> {
    if builtin && name == SUPERUSER {
        return Err(Conflict::SuperuserGrants);
    }
    Ok(())
}

/// `UnknownPermission` naming the first name that is not in the catalog.
async fn known(db: &impl GenericClient, names: &[String]) -> Result<(), DomainError> {
    match store::roles::first_unknown(db, names).await? {
        Some(name) => Err(DomainError::UnknownPermission(name)),
        None => Ok(()),
    }
}

/// Every role, ordered by name.
pub async fn list(state: &State) -> Result<Vec<Role>, DomainError> {
    let db = store::conn(&state.db).await?;
    Ok(store::roles::list(&db).await?)
}

/// One role.
pub async fn show(state: &State, id: Uuid) -> Result<Role, DomainError> {
    let db = store::conn(&state.db).await?;
    store::roles::by_id(&db, id)
        .await?
        .ok_or(DomainError::NotFound)
}

/// The permission catalog, ordered by name.
pub async fn catalog(state: &State) -> Result<Vec<Permission>, DomainError> {
    let db = store::conn(&state.db).await?;
    Ok(store::roles::catalog(&db).await?)
}

/// A new role. `permissions` is required, even when empty, so a forgotten field never makes
/// an empty role.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    name: String,
    #[serde(default)]
    description: String,
    permissions: Vec<String>,
}

/// Creates a role with grants the caller holds. `RoleExists` for a taken name.
pub async fn create(state: &State, who: &Principal, new: NewRole) -> Result<Role, DomainError> {
    let mut errors = Vec::new();
    valid_name(&new.name, &mut errors);
    valid_description(&new.description, &mut errors);
    check(errors)?;
    let grants = normalise(new.permissions);
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    known(&tx, &grants).await?;
    escalation::may_grant(&state.permissions.snapshot(), &who.roles, &grants)?;
    let id = store::roles::create(&tx, &new.name, &new.description).await?;
    store::roles::set_permissions(&tx, id, &grants).await?;
    store::roles::bump_catalog(&tx).await?;
    let role = store::roles::by_id(&tx, id)
        .await?
        .ok_or(DomainError::NotFound)?;
    tx.commit().await?;
    Changed::catalog().propagate(state).await;
    Ok(role)
}

/// A change of a role; `None` leaves a field as it is, `permissions` replaces the set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolePatch {
    name: Option<String>,
    description: Option<String>,
    permissions: Option<Vec<String>>,
}

/// Changes a role. `BuiltinRenamed`, `SuperuserGrants`, `RoleExists`; an escalation when
/// adding a permission the caller does not hold.
pub async fn update(
    state: &State,
    who: &Principal,
    id: Uuid,
    patch: RolePatch,
) -> Result<Role, DomainError> {
    let mut errors = Vec::new();
    if let Some(name) = &patch.name {
        valid_name(name, &mut errors);
    }
    if let Some(description) = &patch.description {
        valid_description(description, &mut errors);
    }
    check(errors)?;
    let grants = patch.permissions.map(normalise);
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let (current, builtin) = store::roles::lock(&tx, id)
        .await?
        .ok_or(DomainError::NotFound)?;
    let rename = patch.name.filter(|n| *n != current);
    may_rename(builtin, rename.as_deref())?;
    if let Some(grants) = &grants {
        may_change_grants(&current, builtin)?;
        known(&tx, grants).await?;
        // The role is locked: its current grants cannot change under us.
        let current = store::roles::by_id(&tx, id)
            .await?
            .ok_or(DomainError::NotFound)?
            .permissions;
        let added: Vec<String> = grants
            .iter()
            .filter(|p| !current.contains(p))
            .cloned()
            .collect();
        escalation::may_grant(&state.permissions.snapshot(), &who.roles, &added)?;
        store::roles::set_permissions(&tx, id, grants).await?;
    }
    store::roles::update(&tx, id, rename.as_deref(), patch.description.as_deref()).await?;
    // Tokens carry role names: after a rename, every holder's tokens must be refreshed.
    let users = match rename {
        Some(_) => store::roles::bump_holders(&tx, id).await?,
        None => Vec::new(),
    };
    let catalog = rename.is_some() || grants.is_some();
    if catalog {
        store::roles::bump_catalog(&tx).await?;
    }
    let role = store::roles::by_id(&tx, id)
        .await?
        .ok_or(DomainError::NotFound)?;
    tx.commit().await?;
    Changed { catalog, users }.propagate(state).await;
    Ok(role)
}

/// Deletes a role, taking it from every user (their tokens go stale). `BuiltinDeleted`.
pub async fn delete(state: &State, id: Uuid) -> Result<(), DomainError> {
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let (_, builtin) = store::roles::lock(&tx, id)
        .await?
        .ok_or(DomainError::NotFound)?;
    if builtin {
        return Err(Conflict::BuiltinDeleted.into());
    }
    let users = store::roles::bump_holders(&tx, id).await?;
    store::roles::delete(&tx, id).await?;
    store::roles::bump_catalog(&tx).await?;
    tx.commit().await?;
    Changed {
        catalog: true,
        users,
    }
    .propagate(state)
    .await;
    Ok(())
}

/// An operator adds (`grant`) or takes away permissions of the role named `role`; what is
/// already so is left alone. `NotFound` for no such role. The caller tells the replicas.
pub async fn change_grants(
    db: &Pool,
    role: &str,
    permissions: &[String],
    grant: bool,
) -> Result<Changed, DomainError> {
    let mut db = store::conn(db).await?;
    let tx = db.transaction().await?;
    let id = store::roles::id_by_name(&tx, role)
        .await?
        .ok_or(DomainError::NotFound)?;
    // Only built-in roles can have this name: the built-ins are seeded before anything else.
    may_change_grants(role, true)?;
    known(&tx, permissions).await?;
    store::roles::change_grants(&tx, id, permissions, grant).await?;
    store::roles::bump_catalog(&tx).await?;
    tx.commit().await?;
    Ok(Changed::catalog())
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

    #[test]
    fn descriptions_are_bounded_in_characters() {
        let mut e = Vec::new();
        valid_description(&"é".repeat(MAX_DESCRIPTION), &mut e);
        assert!(e.is_empty());
        valid_description(&"é".repeat(MAX_DESCRIPTION + 1), &mut e);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn grants_are_a_set() {
        let grants = normalise(vec!["b".into(), "a".into(), "b".into()]);
        assert_eq!(grants, ["a", "b"]);
    }

    #[test]
    fn built_in_roles_keep_their_names_and_superuser_its_grants() {
        assert_eq!(may_rename(true, Some("x")), Err(Conflict::BuiltinRenamed));
        assert_eq!(may_rename(true, None), Ok(()));
        assert_eq!(may_rename(false, Some("x")), Ok(()));
        assert_eq!(
            may_change_grants(SUPERUSER, true),
            Err(Conflict::SuperuserGrants)
        );
        assert_eq!(may_change_grants("user", true), Ok(()));
        // A custom role cannot be called `superuser` twice, but the rule is about the built-in.
        assert_eq!(may_change_grants(SUPERUSER, false), Ok(()));
    }
}
