//! New accounts: self-registration through the API and superusers made by an operator, and
//! the rules every e-mail and new password follows.

use super::error::{check, DomainError, FieldError};
use super::{Changed, User};
use crate::permissions::SUPERUSER;
use crate::state::State;
use crate::store::history::Origin;
use crate::store::{self, users::Credentials as Found};
use serde::Deserialize;

/// Longest e-mail accepted; a longer one is nobody's.
pub const MAX_EMAIL: usize = 254;
/// Longest password accepted; a longer one is nobody's, and is never hashed.
pub const MAX_PASSWORD: usize = 128;
/// Shortest new password.
const MIN_PASSWORD: usize = 8;

/// Register and login bodies.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The e-mail.
    pub email: String,
    /// The password.
    pub password: String,
}

impl Credentials {
    /// Whether either is longer than anyone's can be: such a login is refused without hashing.
    pub fn too_long(&self) -> bool {
        self.email.chars().count() > MAX_EMAIL || self.password.chars().count() > MAX_PASSWORD
    }
}

/// Trims and checks an e-mail: at most 254 characters, `local@domain`, both non-empty.
pub fn valid_email(field: &str, email: &str, errors: &mut Vec<FieldError>) -> String {
    let email = email.trim();
    let ok = email.chars().count() <= MAX_EMAIL
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        errors.push(FieldError::new(
            field,
            "must be an e-mail address local@domain of at most 254 characters",
        ));
    }
    email.to_owned()
}

/// Checks a new password: 8 to 128 characters.
pub fn valid_password(field: &str, password: &str, errors: &mut Vec<FieldError>) {
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        errors.push(FieldError::new(field, "must be 8 to 128 characters"));
    }
}

/// Registers an account holding `user`. Counted against the client's per-IP limit; the hash
/// waits in the bounded queue (`Busy` past it). `EmailTaken` for an e-mail in any spelling.
pub async fn register(
    state: &State,
    body: Credentials,
    origin: &Origin,
) -> Result<User, DomainError> {
    let mut errors = Vec::new();
    let email = valid_email("email", &body.email, &mut errors);
    valid_password("password", &body.password, &mut errors);
    check(errors)?;
    crate::attempts::per_ip(state, origin).await?;
    let hash = state.passwords.hash(body.password).await?;
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let user = store::users::create(&tx, &email, &hash).await?;
    tx.commit().await?;
    Ok(user)
}

/// An operator's e-mail for a superuser, checked and trimmed; the message says what is wrong.
pub fn superuser_email(email: &str) -> Result<String, String> {
    let mut errors = Vec::new();
    let email = valid_email("email", email, &mut errors);
    match errors.first() {
        Some(e) => Err(format!("invalid e-mail {email:?}: {}", e.message)),
        None => Ok(email),
    }
}

/// An operator's password for a new superuser, checked.
pub fn superuser_password(password: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    valid_password("password", password, &mut errors);
    match errors.first() {
        Some(e) => Err(format!("invalid password: {}", e.message)),
        None => Ok(()),
    }
}

/// The account with this e-mail (in any spelling), if there is one.
pub async fn existing(
    db: &deadpool_postgres::Pool,
    email: &str,
) -> Result<Option<Found>, DomainError> {
    let db = store::conn(db).await?;
    Ok(store::users::credentials(&db, email).await?)
}

/// What making a superuser did.
pub struct Superuser {
    /// The account.
    pub user: User,
    /// Whether it was created now.
    pub created: bool,
    /// Whether it was given `superuser` now (else it had it).
    pub promoted: bool,
    /// What replicas must hear.
    pub changed: Changed,
}

/// Makes `existing` a superuser, or creates the account with `new_hash` and makes it one, in
/// one transaction. Someone registering the address meanwhile makes a creation fail on the
/// unique e-mail (`EmailTaken`): never a silent promotion of their account.
pub async fn make_superuser(
    db: &deadpool_postgres::Pool,
    email: &str,
    existing: Option<User>,
    new_hash: Option<&str>,
) -> Result<Superuser, DomainError> {
    let mut db = store::conn(db).await?;
    let tx = db.transaction().await?;
    let created = existing.is_none();
    let user = match (existing, new_hash) {
        (Some(user), _) => user,
        (None, Some(hash)) => store::users::create(&tx, email, hash).await?,
        (None, None) => return Err(DomainError::Internal(anyhow::anyhow!("no password"))),
    };
    let version = store::users::add_role_named(&tx, user.id, SUPERUSER).await?;
    tx.commit().await?;
    Ok(Superuser {
        changed: Changed::user(user.id, version),
        promoted: version.is_some(),
        created,
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email_errors(email: &str) -> usize {
        let mut errors = Vec::new();
        valid_email("email", email, &mut errors);
        errors.len()
    }

    #[test]
    fn emails_are_trimmed_and_need_a_local_part_and_a_domain() {
        let mut errors = Vec::new();
        assert_eq!(
            valid_email("email", "  a@b.example ", &mut errors),
            "a@b.example"
        );
        assert!(errors.is_empty());
        for bad in ["", "a", "@b", "a@", "a@b@c", "a b@c", "a\u{7}@c"] {
            assert_eq!(email_errors(bad), 1, "{bad:?}");
        }
        let long = format!("{}@x.example", "a".repeat(MAX_EMAIL));
        assert_eq!(email_errors(&long), 1);
    }

    #[test]
    fn new_passwords_are_8_to_128_characters() {
        for (password, errors) in [
            ("1234567", 1),
            ("12345678", 0),
            (&"é".repeat(128)[..], 0),
            (&"x".repeat(129)[..], 1),
        ] {
            let mut e = Vec::new();
            valid_password("password", password, &mut e);
            assert_eq!(e.len(), errors, "{password:?}");
        }
    }

    #[test]
    fn an_overlong_login_is_nobodys() {
        let login = |email: &str, password: &str| Credentials {
            email: email.into(),
            password: password.into(),
        };
        assert!(!login("a@b", "secret").too_long());
        assert!(login(&"a".repeat(255), "secret").too_long());
        assert!(login("a@b", &"p".repeat(129)).too_long());
    }
}
