//! The messages of the change feed: what one replica tells the others, as a type. Every
//! replica builds them with [`Change::encode`] and reads them with [`Change::decode`]; the
//! wire form is a short line of text (`c`, `k`, `r`, `s <sid>`, `u <uid> <rv>`) that replicas
//! of older and newer versions read alike during a rolling upgrade.

use std::fmt;

use uuid::Uuid;

/// One change, as the feed carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Roles or grants changed: reread the permission snapshot (`c`).
    Catalog,
    /// Signing keys changed: reload them (`k`).
    Keys,
    /// A session ended (`s <sid>`).
    Session(Uuid),
    /// A user's roles version rose to `rv`: their older tokens are stale (`u <uid> <rv>`).
    Roles {
        /// The user.
        user: Uuid,
        /// Their new roles version.
        rv: i64,
    },
    /// A replica dropped changes it could not write to Redis: every replica forgets its
    /// cached states, and the Redis mirror is rebuilt from PostgreSQL (`r`).
    Everything,
}

/// A feed message no `Change` reads: from a newer replica, or not from usher at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown change-feed message {0:?}")]
pub struct Unknown(pub String);

impl Change {
    /// The message text.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// Reads a message. Anything else, including a known letter with missing, extra or
    /// malformed parts, is `Unknown`: a half-read revocation must not pass for none.
    pub fn decode(message: &str) -> Result<Change, Unknown> {
        let mut parts = message.split(' ');
        let change = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("c"), None, None, None) => Some(Change::Catalog),
            (Some("k"), None, None, None) => Some(Change::Keys),
            (Some("r"), None, None, None) => Some(Change::Everything),
            (Some("s"), Some(sid), None, None) => sid.parse().ok().map(Change::Session),
            (Some("u"), Some(uid), Some(rv), None) => match (uid.parse(), rv.parse()) {
                (Ok(user), Ok(rv)) => Some(Change::Roles { user, rv }),
                _ => None,
            },
            _ => None,
        };
        change.ok_or_else(|| Unknown(message.to_owned()))
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Catalog => f.write_str("c"),
            Change::Keys => f.write_str("k"),
            Change::Everything => f.write_str("r"),
            Change::Session(sid) => write!(f, "s {sid}"),
            Change::Roles { user, rv } => write!(f, "u {user} {rv}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_change_reads_back_as_itself() {
        let (sid, uid) = (Uuid::new_v4(), Uuid::new_v4());
        for change in [
            Change::Catalog,
            Change::Keys,
            Change::Everything,
            Change::Session(sid),
            Change::Roles { user: uid, rv: 7 },
            Change::Roles {
                user: uid,
                rv: i64::MIN,
            },
        ] {
            assert_eq!(Change::decode(&change.encode()), Ok(change));
        }
    }

    #[test]
    fn the_wire_form_is_the_one_older_replicas_read() {
        let sid = Uuid::parse_str("5f0c6d1e-8a7b-4c3d-9e2f-1a2b3c4d5e6f").unwrap();
        assert_eq!(Change::Catalog.encode(), "c");
        assert_eq!(Change::Keys.encode(), "k");
        assert_eq!(Change::Everything.encode(), "r");
        assert_eq!(
            Change::Session(sid).encode(),
            "s 5f0c6d1e-8a7b-4c3d-9e2f-1a2b3c4d5e6f"
        );
        assert_eq!(
            Change::Roles { user: sid, rv: 12 }.encode(),
            "u 5f0c6d1e-8a7b-4c3d-9e2f-1a2b3c4d5e6f 12"
        );
    }

    #[test]
    fn anything_else_is_unknown_not_ignored() {
        let sid = Uuid::new_v4();
        for message in [
            String::new(),
            "x".into(),
            "c extra".into(),
            "s".into(),
            "s not-a-uuid".into(),
            format!("s {sid} extra"),
            format!("s  {sid}"),
            format!("u {sid}"),
            format!("u {sid} seven"),
            format!("u {sid} 7 extra"),
            "C".into(),
        ] {
            assert_eq!(
                Change::decode(&message),
                Err(Unknown(message.clone())),
                "{message:?}"
            );
        }
    }
}
