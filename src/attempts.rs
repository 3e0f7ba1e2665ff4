//! The login limits. Attempts per account (or per unknown e-mail) are reserved before the
//! password is hashed, so concurrent guesses cannot exceed `login.max_failures`; a success
//! forgives them, an attempt that was never judged (busy, outage) is given back. Register and
//! login are also limited per client IP (`login.per_ip` a minute). Both count in Redis; the
//! account counter falls back to PostgreSQL while Redis cannot answer, the per-IP one is
//! skipped then (the bounded hashing queue still caps what a burst costs).

use std::net::IpAddr;

use uuid::Uuid;

use crate::domain::DomainError;
use crate::kv::keys;
use crate::state::State;
use crate::store::history::Origin;
use crate::store::{self, users::canonical_email};

/// The per-IP window: a minute is short enough to forget a NAT's burst of morning logins
/// quickly, long enough to be a real cap on one address's share of the hashing pool.
const PER_IP_WINDOW_SECS: u64 = 60;

/// Whose attempts a login counts.
pub enum Subject<'a> {
    /// A known account: every spelling of its e-mail, and its e-mail after a change.
    Account(Uuid),
    /// An e-mail no account has, counted by its canonical form.
    Email(&'a str),
}

impl Subject<'_> {
    fn key(&self) -> String {
        match self {
            Subject::Account(id) => keys::account_failures(*id),
            Subject::Email(email) => keys::email_failures(&canonical_email(email)),
        }
    }
}

/// One reserved attempt. Left alone it stays counted (a wrong password); `forgive` and
/// `release` undo it.
#[must_use = "a reservation is forgiven, released, or kept as a failure on purpose"]
pub struct Reservation {
    /// The key, without the Redis prefix (it is the PostgreSQL key as is).
    key: String,
    /// Where it was counted.
    in_redis: bool,
}

/// `INCR` with the window set on first use, atomically; the count and the seconds left.
async fn count_in_redis(state: &State, key: &str, window: u64) -> Result<(u32, i64), ()> {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("INCR")
        .arg(key)
        .cmd("EXPIRE")
        .arg(key)
        .arg(window.max(1))
        .arg("NX")
        .ignore()
        .cmd("TTL")
        .arg(key);
    state.kv.run(&pipe).await.map_err(|e| {
        tracing::debug!(error = %e, "attempt not counted in Redis");
    })
}

/// Reserves one attempt for `subject`, or 429 when its attempts in the window are used up.
pub async fn reserve(state: &State, subject: &Subject<'_>) -> Result<Reservation, DomainError> {
    let key = subject.key();
    let max = state.config.login.max_failures;
    let window = state.config.login.window.0;
    let redis_key = state.kv.key(&key);
    if let Ok((count, ttl)) = count_in_redis(state, &redis_key, window.as_secs()).await {
        if count > max {
            return Err(DomainError::TooManyAttempts(ttl.max(1) as u64));
        }
        return Ok(Reservation {
            key,
            in_redis: true,
        });
    }
    let db = store::conn(&state.db).await?;
    let (count, left) = store::attempts::reserve(&db, &key, window.as_secs_f64()).await?;
    if count > max as i32 {
        return Err(DomainError::TooManyAttempts(left.ceil().max(1.0) as u64));
    }
    Ok(Reservation {
        key,
        in_redis: false,
    })
}

impl Reservation {
    /// A successful login: every counted attempt of the subject is forgiven.
    pub async fn forgive(self, state: &State) {
        let done = if self.in_redis {
            let mut pipe = redis::pipe();
            pipe.cmd("DEL").arg(state.kv.key(&self.key)).ignore();
            state.kv.run::<()>(&pipe).await.map_err(|e| e.to_string())
        } else {
            self.in_postgres(state, true).await
        };
        if let Err(e) = done {
            tracing::debug!(error = %e, "login attempts not forgiven");
        }
    }

    /// The attempt was never judged: it no longer counts.
    pub async fn release(self, state: &State) {
        let done = if self.in_redis {
            // Only while the window lives: a DECR after it would leave a key with no expiry.
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg("if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end return 0")
                .arg(1)
                .arg(state.kv.key(&self.key))
                .ignore();
            state.kv.run::<()>(&pipe).await.map_err(|e| e.to_string())
        } else {
            self.in_postgres(state, false).await
        };
        if let Err(e) = done {
            tracing::debug!(error = %e, "login attempt not released");
        }
    }

    async fn in_postgres(&self, state: &State, forgive: bool) -> Result<(), String> {
        let db = store::conn(&state.db).await.map_err(|e| e.to_string())?;
        let done = if forgive {
            store::attempts::forgive(&db, &self.key).await
        } else {
            store::attempts::release(&db, &self.key).await
        };
        done.map_err(|e| e.to_string())
    }
}

/// Counts one register or login request of the client, or 429 when its address (its /64 for
/// IPv6, which a client gets whole) has used up `login.per_ip` this minute.
pub async fn per_ip(state: &State, origin: &Origin) -> Result<(), DomainError> {
    let limit = state.config.login.per_ip;
    let Some(ip) = origin.ip.as_deref().filter(|_| limit > 0) else {
        return Ok(());
    };
    let key = state.kv.key(keys::per_ip(&address_block(ip)));
    match count_in_redis(state, &key, PER_IP_WINDOW_SECS).await {
        Ok((count, ttl)) if count > limit => Err(DomainError::TooManyAttempts(ttl.max(1) as u64)),
        _ => Ok(()),
    }
}

/// The address an IP counts as: itself, or its /64 for IPv6.
fn address_block(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(IpAddr::V6(v6)) => v6.to_canonical().to_string(),
        _ => ip.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(
            address_block("2001:db8:1:2:aaaa::1"),
            address_block("2001:db8:1:2:bbbb::2")
        );
        assert_ne!(
            address_block("2001:db8:1:2::1"),
            address_block("2001:db8:1:3::1")
        );
        assert_eq!(address_block("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(address_block("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn spellings_of_an_unknown_email_share_a_counter() {
        assert_eq!(
            Subject::Email("V\u{130}ctim@Cinema.example").key(),
            Subject::Email("victim@cinema.example").key()
        );
    }
}
