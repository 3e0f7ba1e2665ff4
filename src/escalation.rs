//! The *No escalation* rules: nobody grants a permission they do not hold, directly (role
//! grants) or by assigning a role; only a superuser assigns or removes `superuser`, or changes
//! or disables a superuser; the last active superuser is never disabled and never loses the
//! role. The checks run inside the transaction that makes the change, under its locks.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::http::error::ApiError;
use crate::permissions::{Snapshot, SUPERUSER};
use crate::store;

/// Whether a holder of `roles` is a superuser.
pub fn is_superuser<R: AsRef<str>>(roles: &[R]) -> bool {
    roles.iter().any(|r| r.as_ref() == SUPERUSER)
}

/// 403 naming the first of `permissions` a holder of `roles` does not hold.
pub fn may_grant<R: AsRef<str>>(
    snapshot: &Snapshot,
    roles: &[R],
    permissions: &[String],
) -> Result<(), ApiError> {
    match permissions.iter().find(|p| !snapshot.allows(roles, &[p])) {
        Some(p) => Err(ApiError::Escalation(format!(
            "You cannot grant `{p}`: you do not hold it."
        ))),
        None => Ok(()),
    }
}

/// Checks and locks a change of `user`'s roles, e-mail or standing by someone who is
/// (`by_superuser`) or is not a superuser; `ends_superuser`: the change disables the user or
/// takes their `superuser` role. False when there is no such user.
///
/// Locks, in the order every role change takes them (role before user): the `superuser` role
/// when the change may end a superuser, then the user's row. Callers that also hold another
/// role (assignments) take it between the two.
pub async fn may_change_user(
    db: &impl GenericClient,
    user: Uuid,
    by_superuser: bool,
    ends_superuser: bool,
) -> Result<bool, ApiError> {
    if ends_superuser {
        store::roles::lock_superusers(db).await?;
    }
    let Some((superuser, disabled)) = store::roles::lock_holder(db, user).await? else {
        return Ok(false);
    };
    if superuser && !by_superuser {
        return Err(ApiError::Escalation(
            "Only a superuser can change or disable a superuser.".into(),
        ));
    }
    if superuser && !disabled && ends_superuser && store::roles::active_superusers(db).await? <= 1 {
        return Err(ApiError::Conflict(
            "last_superuser",
            "This is the last active superuser: it cannot be disabled or lose the role.".into(),
        ));
    }
    Ok(true)
}
