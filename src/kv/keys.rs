//! Every Redis key and channel usher uses, named in one place. The names here come without
//! `redis.prefix`; `Kv::key` puts it in front.
//!
//! | name                 | type    | what                                                    |
//! |----------------------|---------|---------------------------------------------------------|
//! | `marks:<0..16>`      | hash    | revocation marks: `s:<sid>`, `u:<uid>`, and `synced`     |
//! | `fail:u:<uid>`       | counter | failed logins of an account, expires with the window     |
//! | `fail:e:<sha256/16>` | counter | failed logins of an e-mail no account has               |
//! | `ip:<address>`       | counter | logins and registrations of one address (IPv6: its /64) |
//! | `feed`               | channel | the change feed (`change::Change`)                      |
//!
//! Redis Cluster, on purpose without hash tags: no command and no `MULTI` touches two keys
//! (the login counters are one key each, a roles-version mark is one script on one hash), so
//! no two keys need a common slot. Each key's slot is then the CRC16 of its whole name: the
//! sixteen marks hashes, the shard unit of revocation, land on different slots and spread
//! over the shards, and so do the counters of different accounts and addresses. A pipeline
//! that touches several marks hashes is split per hash (`revocation::marks`), never sent
//! whole to one shard. For the same reason `redis.prefix` may not hold a hash tag in cluster
//! mode: `{...}` in it would pin every key to one slot.
//!
//! The feed is classic pub/sub, which a cluster forwards over its bus to every node: a
//! replica subscribed on any node hears what another published on any node. Sharded pub/sub
//! (`SSUBSCRIBE`) would tie the one channel to the shard of its slot and gain nothing.

use uuid::Uuid;

/// The change feed's channel.
pub const FEED: &str = "feed";

/// How many hashes the marks are spread over (by the last byte of the id), so that a Redis
/// losing one loses only a share of them, and a cluster spreads them across shards.
pub const BUCKETS: u8 = 16;

/// The field that says a marks hash is complete.
pub const SYNCED: &str = "synced";

/// The marks hash `id`'s marks live in.
pub fn bucket(id: Uuid) -> u8 {
    id.as_bytes()[15] % BUCKETS
}

/// The name of marks hash `n`.
pub fn marks(n: u8) -> String {
    format!("marks:{n}")
}

/// The field of an ended session in its marks hash.
pub fn session_mark(sid: Uuid) -> String {
    format!("s:{sid}")
}

/// The field of a user's lowest acceptable roles version in its marks hash.
pub fn roles_mark(uid: Uuid) -> String {
    format!("u:{uid}")
}

/// The failed-login counter of an account. Also its PostgreSQL key while Redis is down.
pub fn account_failures(uid: Uuid) -> String {
    format!("fail:u:{uid}")
}

/// The failed-login counter of an e-mail no account has, by a digest of its canonical form
/// (the address itself is not kept). Also its PostgreSQL key while Redis is down.
pub fn email_failures(canonical: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("fail:e:{hex}")
}

/// The per-address login counter of `block` (an IPv4 address or an IPv6 /64).
pub fn per_ip(block: &str) -> String {
    format!("ip:{block}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn marks_go_by_the_last_byte_of_the_id() {
        let id = Uuid::parse_str("00000000-0000-0000-0000-0000000000ff").unwrap();
        assert_eq!(bucket(id), 15);
        assert_eq!(marks(bucket(id)), "marks:15");
        assert!((0..=255u8).all(|b| {
            let mut bytes = [0u8; 16];
            bytes[15] = b;
            bucket(Uuid::from_bytes(bytes)) < BUCKETS
        }));
    }

    #[test]
    fn no_name_carries_a_hash_tag() {
        let id = Uuid::new_v4();
        for name in [
            FEED.to_owned(),
            marks(3),
            session_mark(id),
            roles_mark(id),
            account_failures(id),
            email_failures("a@b.example"),
            per_ip("2001:db8::/64"),
        ] {
            assert!(!name.contains('{') && !name.contains('}'), "{name}");
        }
    }
}
