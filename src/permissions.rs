//! The permission catalog and the roles → permissions snapshot that every decision reads.
//!
//! The snapshot is an immutable value behind an `ArcSwap`: readers (the check endpoint, every
//! API call) take it without a lock; a change of roles or grants builds a new one and swaps it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;

use crate::store::{self, StoreError};

/// A built-in permission: what the API's endpoints require (`http::endpoint`), and what the
/// catalog is seeded with. A service permission of the route map is a plain name instead: the
/// API never requires one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read own profile, roles and history.
    UserSelfRead,
    /// Change own e-mail and password.
    UserSelfUpdate,
    /// Disable own account.
    UserSelfDelete,
    /// Read any user.
    UserAllRead,
    /// Change any user's e-mail.
    UserAllUpdate,
    /// Disable any user.
    UserAllDelete,
    /// Assign and remove roles.
    UserAllSetRole,
    /// Read roles.
    RoleRead,
    /// Create roles.
    RoleCreate,
    /// Change roles.
    RoleUpdate,
    /// Delete roles.
    RoleDelete,
    /// Read the catalog.
    PermissionRead,
}

impl Permission {
    /// Every built-in permission, in catalog order.
    pub const ALL: [Permission; 12] = [
        Permission::UserSelfRead,
        Permission::UserSelfUpdate,
        Permission::UserSelfDelete,
        Permission::UserAllRead,
        Permission::UserAllUpdate,
        Permission::UserAllDelete,
        Permission::UserAllSetRole,
        Permission::RoleRead,
        Permission::RoleCreate,
        Permission::RoleUpdate,
        Permission::RoleDelete,
        Permission::PermissionRead,
    ];

    /// Its name in the catalog, in roles and in the route map.
    pub const fn name(self) -> &'static str {
        match self {
            Permission::UserSelfRead => "user_self_read",
            Permission::UserSelfUpdate => "user_self_update",
            Permission::UserSelfDelete => "user_self_delete",
            Permission::UserAllRead => "user_all_read",
            Permission::UserAllUpdate => "user_all_update",
            Permission::UserAllDelete => "user_all_delete",
            Permission::UserAllSetRole => "user_all_set_role",
            Permission::RoleRead => "role_read",
            Permission::RoleCreate => "role_create",
            Permission::RoleUpdate => "role_update",
            Permission::RoleDelete => "role_delete",
            Permission::PermissionRead => "permission_read",
        }
    }

    /// Its description in the catalog.
    pub const fn description(self) -> &'static str {
        match self {
            Permission::UserSelfRead => "Read own profile, own roles and own login history",
            Permission::UserSelfUpdate => "Change own e-mail and password",
            Permission::UserSelfDelete => "Disable own account",
            Permission::UserAllRead => "List and read any user, their roles and history",
            Permission::UserAllUpdate => "Change any user's e-mail",
            Permission::UserAllDelete => "Disable any user",
            Permission::UserAllSetRole => "Assign and remove roles of any user",
            Permission::RoleRead => "List and read roles",
            Permission::RoleCreate => "Create roles",
            Permission::RoleUpdate => "Change roles",
            Permission::RoleDelete => "Delete roles",
            Permission::PermissionRead => "List the permission catalog",
        }
    }
}

impl AsRef<str> for Permission {
    fn as_ref(&self) -> &str {
        self.name()
    }
}

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
pub const USER_ROLE_GRANTS: &[Permission] = &[
    Permission::UserSelfRead,
    Permission::UserSelfUpdate,
    Permission::UserSelfDelete,
    Permission::RoleRead,
    Permission::PermissionRead,
];

/// Creates the built-in permissions and roles that are missing, and adds the route map's
/// service permissions (`declared`), in PostgreSQL.
pub async fn seed(pool: &Pool, declared: &[(String, String)]) -> anyhow::Result<()> {
    let permissions: Vec<(&str, &str)> = Permission::ALL
        .iter()
        .map(|p| (p.name(), p.description()))
        .collect();
    let registered: Vec<&str> = USER_ROLE_GRANTS.iter().map(|p| p.name()).collect();
    let builtins = store::migrate::Builtins {
        permissions: &permissions,
        roles: BUILTIN_ROLES,
        registered: (USER, &registered),
    };
    store::migrate::seed(pool, &builtins, declared).await
}

/// Names of the built-in permissions.
pub fn builtin_names() -> Vec<&'static str> {
    Permission::ALL.iter().map(|p| p.name()).collect()
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
        let snapshot = Snapshot::read(pool).await?;
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
        let snapshot = Snapshot::read(pool).await?;
        self.current.store(Arc::new(snapshot));
        Ok(())
    }
}

impl Snapshot {
    /// Reads roles and grants in one snapshot.
    async fn read(pool: &Pool) -> Result<Snapshot, StoreError> {
        let rows = store::roles::grants(pool).await?;
        Ok(Snapshot::from_rows(rows.version, rows.grants, rows.catalog))
    }

    /// Builds a snapshot from rows `(role, permission)`.
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
