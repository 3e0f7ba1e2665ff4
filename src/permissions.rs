//! The permission catalog and the roles → permissions snapshot that every decision reads.
//!
//! The snapshot is an immutable value behind an `ArcSwap`: readers (the check endpoint, every
//! API call) take it without a lock; a change of roles or grants builds a new one and swaps it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::app::State;
use crate::store::{self, StoreError};

/// The built-in permissions: `(name, description)`.
pub const BUILTIN_PERMISSIONS: &[(&str, &str)] = &[
    (
        "user_self_read",
        "Read own profile, own roles and own login history",
    ),
    ("user_self_update", "Change own e-mail and password"),
    ("user_self_delete", "Disable own account"),
    (
        "user_all_read",
        "List and read any user, their roles and history",
    ),
    ("user_all_update", "Change any user's e-mail"),
    ("user_all_delete", "Disable any user"),
    ("user_all_set_role", "Assign and remove roles of any user"),
    ("role_read", "List and read roles"),
    ("role_create", "Create roles"),
    ("role_update", "Change roles"),
    ("role_delete", "Delete roles"),
    ("permission_read", "List the permission catalog"),
];

/// The role holding every permission, always.
pub const SUPERUSER: &str = "superuser";
/// The role given at registration.
pub const USER: &str = "user";
/// The role of a request without a token.
pub const NON_REGISTERED: &str = "non_registered";

/// The built-in roles: `(name, description)`.
pub const BUILTIN_ROLES: &[(&str, &str)] = &[
    (SUPERUSER, "Holds every permission"),
    (USER, "Every registered user"),
    (NON_REGISTERED, "Requests without a token"),
];

/// What `user` starts with.
pub const USER_ROLE_GRANTS: &[&str] = &[
    "user_self_read",
    "user_self_update",
    "user_self_delete",
    "role_read",
    "permission_read",
];

/// Names of the built-in permissions.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN_PERMISSIONS.iter().map(|(n, _)| *n).collect()
}

/// Roles and their grants at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `catalog_version` it was read at.
    pub version: i64,
    grants: HashMap<String, HashSet<String>>,
    catalog: Vec<String>,
}

impl Snapshot {
    /// Whether a holder of `roles` has every permission in `required`.
    pub fn allows<R: AsRef<str>, P: AsRef<str>>(&self, roles: &[R], required: &[P]) -> bool {
        if roles.iter().any(|r| r.as_ref() == SUPERUSER) {
            return true;
        }
        required.iter().all(|p| {
            roles.iter().any(|r| {
                self.grants
                    .get(r.as_ref())
                    .is_some_and(|g| g.contains(p.as_ref()))
            })
        })
    }

    /// The union of the permissions of `roles`, sorted.
    pub fn effective<R: AsRef<str>>(&self, roles: &[R]) -> Vec<String> {
        if roles.iter().any(|r| r.as_ref() == SUPERUSER) {
            return self.catalog.clone();
        }
        let mut all: Vec<String> = roles
            .iter()
            .filter_map(|r| self.grants.get(r.as_ref()))
            .flatten()
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        all.sort();
        all
    }
}

/// The live snapshot.
pub struct Permissions {
    current: ArcSwap<Snapshot>,
}

impl Permissions {
    /// Reads the first snapshot.
    pub async fn load(pool: &Pool) -> Result<Permissions, StoreError> {
        let snapshot = store::roles::snapshot(pool).await?;
        Ok(Permissions {
            current: ArcSwap::from_pointee(snapshot),
        })
    }

    /// The snapshot in force; cheap, lock-free.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        // A guard, not a clone of the Arc: no shared reference count bounces between cores
        // on the hot path. Not to be held across an `.await`.
        self.current.load()
    }

    /// Rereads from PostgreSQL when the catalog version moved (or always, with `force`).
    pub async fn refresh(&self, pool: &Pool, force: bool) -> Result<(), StoreError> {
        if !force {
            let version = store::roles::catalog_version(pool).await?;
            if version == self.current.load().version {
                return Ok(());
            }
        }
        let snapshot = store::roles::snapshot(pool).await?;
        self.current.store(Arc::new(snapshot));
        Ok(())
    }
}

/// After roles, grants or a user's role set changed in PostgreSQL (committed): this replica
/// rereads at once, then every replica hears of it. `catalog`: roles or grants changed;
/// `users`: `(user, new roles version)` whose tokens now carry stale roles.
///
/// The news travels on the Redis pub/sub change feed rather than by polling PostgreSQL:
/// every replica is already subscribed to that one channel, Redis is already required for
/// revocation, and a message reaches them all in milliseconds, well inside the 1-second
/// bound. When the feed is down, replicas poll the catalog version and ask Redis or
/// PostgreSQL for roles versions instead (see `feed` and `revocation`).
pub async fn propagate(state: &State, catalog: bool, users: &[(Uuid, i64)]) {
    if catalog {
        // A failure here is not the request's: the change is committed, and this replica
        // hears its own announcement on the feed and rereads then.
        if let Err(e) = state.permissions.refresh(&state.db, true).await {
            tracing::warn!(error = %e, "permission snapshot not reread after a change");
        }
        state
            .revocation
            .announce(crate::change::Change::Catalog)
            .await;
    }
    for (user, rv) in users {
        state.revocation.roles_changed(*user, *rv).await;
    }
}

impl Snapshot {
    /// Builds a snapshot from rows `(role, permission)`; for the store.
    pub fn from_rows(
        version: i64,
        grants: Vec<(String, Option<String>)>,
        catalog: Vec<String>,
    ) -> Self {
        let mut map: HashMap<String, HashSet<String>> = HashMap::new();
        for (role, permission) in grants {
            let set = map.entry(role).or_default();
            if let Some(p) = permission {
                set.insert(p);
            }
        }
        Snapshot {
            version,
            grants: map,
            catalog,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot::from_rows(
            1,
            vec![
                ("user".into(), Some("user_self_read".into())),
                ("user".into(), Some("role_read".into())),
                ("editor".into(), Some("films_read".into())),
                ("non_registered".into(), None),
            ],
            vec![
                "films_read".into(),
                "role_read".into(),
                "user_self_read".into(),
            ],
        )
    }

    #[test]
    fn permissions_are_the_union_of_roles() {
        let s = snapshot();
        assert!(s.allows(&["user", "editor"], &["films_read", "role_read"]));
        assert!(!s.allows(&["user"], &["films_read"]));
        assert!(!s.allows(&["non_registered"], &["films_read"]));
        assert!(s.allows(&["non_registered"], &[] as &[&str]));
        assert!(!s.allows(&["ghost"], &["role_read"]));
        assert_eq!(
            s.effective(&["user", "editor"]),
            ["films_read", "role_read", "user_self_read"]
        );
    }

    #[test]
    fn superuser_holds_everything() {
        let s = snapshot();
        assert!(s.allows(&["superuser"], &["anything_at_all"]));
        assert_eq!(s.effective(&["superuser"]).len(), 3);
    }
}
