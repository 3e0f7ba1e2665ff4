//! What a domain operation refuses, in the domain's terms. The HTTP edge turns each into
//! problem details (`http::error`), the command line into a message; neither decides what a
//! rule means.

use serde::Serialize;

use crate::passwords::HashError;
use crate::store::{StoreError, Unique};
use crate::tokens::TokenError;

/// One field that failed validation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name in the request body.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a change would give away power the caller lacks (*No escalation*).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Escalation {
    /// Granting, directly or through a role, a permission the caller does not hold.
    #[error("You cannot grant `{0}`: you do not hold it.")]
    NotHeld(String),
    /// Assigning or removing `superuser` without being one.
    #[error("Only a superuser can assign or remove `superuser`.")]
    SuperuserRole,
    /// Changing or disabling a superuser without being one.
    #[error("Only a superuser can change or disable a superuser.")]
    Superuser,
}

/// A change the current state of the data does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// Another account has this e-mail (in any spelling).
    #[error("This e-mail is already registered.")]
    EmailTaken,
    /// Another role has this name.
    #[error("A role with this name exists.")]
    RoleExists,
    /// Built-in roles keep their names.
    #[error("Built-in roles cannot be renamed.")]
    BuiltinRenamed,
    /// Built-in roles are never deleted.
    #[error("Built-in roles cannot be deleted.")]
    BuiltinDeleted,
    /// `superuser` holds every permission, always.
    #[error("superuser holds every permission; its grants cannot be changed.")]
    SuperuserGrants,
    /// The change would leave no active superuser.
    #[error("This is the last active superuser: it cannot be disabled or lose the role.")]
    LastSuperuser,
}

impl From<Unique> for Conflict {
    fn from(unique: Unique) -> Self {
        match unique {
            Unique::UserEmail => Conflict::EmailTaken,
            Unique::RoleName => Conflict::RoleExists,
        }
    }
}

/// Everything a domain operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// Input that breaks a rule, one entry per field.
    #[error("invalid {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// A permission name that is not in the catalog.
    #[error("there is no permission `{0}`")]
    UnknownPermission(String),
    /// No such user, role or session (or one the caller may not know of).
    #[error("not found")]
    NotFound,
    /// The change would give away power the caller lacks.
    #[error("{0}")]
    Escalation(#[from] Escalation),
    /// The data as it stands does not allow the change.
    #[error("{0}")]
    Conflict(#[from] Conflict),
    /// Wrong e-mail or password.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The account is disabled.
    #[error("account disabled")]
    AccountDisabled,
    /// A token was refused.
    #[error("token refused: {0:?}")]
    Token(TokenError),
    /// Login attempts used up; retry after so many seconds.
    #[error("too many attempts; retry in {0} s")]
    TooManyAttempts(u64),
    /// The password-hashing queue is full; retry after so many seconds.
    #[error("busy; retry in {0} s")]
    Busy(u64),
    /// PostgreSQL or Redis cannot answer.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else: logged, never shown.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<TokenError> for DomainError {
    fn from(e: TokenError) -> Self {
        DomainError::Token(e)
    }
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => DomainError::Unavailable(why),
            StoreError::Conflict(unique) => DomainError::Conflict(unique.into()),
            StoreError::Other(e) => DomainError::Internal(e),
        }
    }
}

impl From<tokio_postgres::Error> for DomainError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<HashError> for DomainError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy(secs) => DomainError::Busy(secs),
            HashError::Failed(e) => DomainError::Internal(e),
        }
    }
}

/// Fails with every collected field error, or succeeds when there is none.
pub fn check(errors: Vec<FieldError>) -> Result<(), DomainError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_constraints_are_conflicts_by_name() {
        let e = DomainError::from(StoreError::Conflict(Unique::UserEmail));
        assert!(matches!(e, DomainError::Conflict(Conflict::EmailTaken)));
        let e = DomainError::from(StoreError::Conflict(Unique::RoleName));
        assert!(matches!(e, DomainError::Conflict(Conflict::RoleExists)));
    }

    #[test]
    fn outages_stay_outages() {
        let e = DomainError::from(StoreError::Unavailable("closed".into()));
        assert!(matches!(e, DomainError::Unavailable(_)));
        assert!(matches!(
            DomainError::from(HashError::Busy(2)),
            DomainError::Busy(2)
        ));
    }

    #[test]
    fn field_errors_are_collected_not_stopped_at() {
        assert!(check(Vec::new()).is_ok());
        let two = vec![FieldError::new("a", "x"), FieldError::new("b", "y")];
        match check(two) {
            Err(DomainError::Invalid(e)) => assert_eq!(e.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
