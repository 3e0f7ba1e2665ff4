//! The *No escalation* rules: nobody grants a permission they do not hold, directly (role
//! grants) or by assigning a role; only a superuser assigns or removes `superuser`, or changes
//! or disables a superuser; the last active superuser is never disabled and never loses the
//! role. The checks run inside the transaction that makes the change, under its locks.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::error::{Conflict, DomainError, Escalation};
use crate::permissions::{Snapshot, SUPERUSER};
use crate::store;

/// Whether a holder of `roles` is a superuser.
pub fn is_superuser<R: AsRef<str>>(roles: &[R]) -> bool {
    roles.iter().any(|r| r.as_ref() == SUPERUSER)
}

/// Refuses naming the first of `permissions` a holder of `roles` does not hold.
pub fn may_grant<R: AsRef<str>>(
    snapshot: &Snapshot,
    roles: &[R],
    permissions: &[String],
) -> Result<(), Escalation> {
    match permissions.iter().find(|p| !snapshot.allows(roles, &[p])) {
        Some(p) => Err(Escalation::NotHeld(p.clone())),
        None => Ok(()),
    }
}

/// Only a superuser assigns or removes the built-in `superuser` role.
pub fn may_assign(is_superuser_role: bool, by_superuser: bool) -> Result<(), Escalation> {
    if is_superuser_role && !by_superuser {
        return Err(Escalation::SuperuserRole);
    }
    Ok(())
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
) -> Result<bool, DomainError> {
    if ends_superuser {
        store::roles::lock_superusers(db).await?;
    }
    let Some((superuser, disabled)) = store::roles::lock_holder(db, user).await? else {
        return Ok(false);
    };
    if superuser && !by_superuser {
        return Err(Escalation::Superuser.into());
    }
    if superuser && !disabled && ends_superuser && store::roles::active_superusers(db).await? <= 1 {
        return Err(Conflict::LastSuperuser.into());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot::from_rows(
            1,
            vec![
                ("editor".into(), Some("films_read".into())),
                ("editor".into(), Some("role_read".into())),
            ],
            vec![
                "films_read".into(),
                "films_write".into(),
                "role_read".into(),
            ],
        )
    }

    #[test]
    fn nobody_grants_what_they_do_not_hold() {
        let s = snapshot();
        assert_eq!(may_grant(&s, &["editor"], &["films_read".into()]), Ok(()));
        assert_eq!(
            may_grant(&s, &["editor"], &["role_read".into(), "films_write".into()]),
            Err(Escalation::NotHeld("films_write".into()))
        );
        assert_eq!(may_grant(&s, &["editor"], &[]), Ok(()));
        assert_eq!(may_grant(&s, &[SUPERUSER], &["films_write".into()]), Ok(()));
    }

    #[test]
    fn only_a_superuser_hands_out_superuser() {
        assert_eq!(may_assign(true, false), Err(Escalation::SuperuserRole));
        assert_eq!(may_assign(true, true), Ok(()));
        assert_eq!(may_assign(false, false), Ok(()));
        assert!(is_superuser(&["user", SUPERUSER]));
        assert!(!is_superuser(&["user", "superusers"]));
    }
}
