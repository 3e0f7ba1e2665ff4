//! The domain layer: the operations on users, roles and registrations, each one transaction
//! holding its business rules, and what a committed change means for the other replicas.
//! `http` handlers and the command line call these functions; neither repeats a rule.
//! Sessions (login, refresh, logout) and login limits are domain modules too (`sessions`,
//! `attempts`).
//!
//! Nothing here knows HTTP: operations answer values or a [`DomainError`], which the edge
//! renders.

pub mod error;
pub mod escalation;
pub mod registration;
pub mod roles;
pub mod users;

use uuid::Uuid;

pub use error::{Conflict, DomainError, Escalation, FieldError};
pub use registration::{valid_email, valid_password, Credentials};

/// The records operations answer with, as the store reads them.
pub use crate::store::history::{Entry, Origin};
pub use crate::store::roles::{Permission, Role};
pub use crate::store::users::User;

use crate::revocation::Revocation;
use crate::state::State;

/// What a committed change means to tokens and snapshots everywhere.
#[must_use = "a committed change is propagated, or replicas keep old roles until they poll"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Roles or grants changed: every replica rereads its snapshot.
    pub catalog: bool,
    /// `(user, new roles version)`: these users' tokens now carry stale roles.
    pub users: Vec<(Uuid, i64)>,
}

impl Changed {
    /// Nothing changed.
    pub fn nothing() -> Changed {
        Changed::default()
    }

    /// Roles or grants changed.
    pub fn catalog() -> Changed {
        Changed {
            catalog: true,
            users: Vec::new(),
        }
    }

    /// One user's roles changed, when `version` says so.
    pub fn user(user: Uuid, version: Option<i64>) -> Changed {
        Changed {
            catalog: false,
            users: version.map(|rv| (user, rv)).into_iter().collect(),
        }
    }

    /// After the change committed: this replica rereads at once, then every replica hears
    /// of it.
    ///
    /// The news travels on the Redis pub/sub change feed rather than by polling PostgreSQL:
    /// every replica is already subscribed to that one channel, Redis is already required for
    /// revocation, and a message reaches them all in milliseconds, well inside the 1-second
    /// bound. When the feed is down, replicas poll the catalog version and ask Redis or
    /// PostgreSQL for roles versions instead (see `feed` and `revocation`).
    pub async fn propagate(self, state: &State) {
        if self.catalog {
            // A failure here is not the request's: the change is committed, and this replica
            // hears its own announcement on the feed and rereads then.
            if let Err(e) = state.permissions.refresh(&state.db, true).await {
                tracing::warn!(error = %e, "permission snapshot not reread after a change");
            }
        }
        self.announce(&state.revocation).await;
    }

    /// Tells every replica (this one included) through `revocation`.
    pub async fn announce(&self, revocation: &Revocation) {
        if self.catalog {
            revocation.announce(crate::change::Change::Catalog).await;
        }
        for (user, rv) in &self.users {
            revocation.roles_changed(*user, *rv).await;
        }
    }
}
