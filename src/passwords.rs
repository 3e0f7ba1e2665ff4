//! Argon2id password hashing on a bounded blocking pool, so that a burst of logins never
//! occupies the async workers that serve the check endpoint. The queue in front of the pool
//! is bounded too (`passwords.max_queue`, `passwords.queue_timeout`): past it a hash is refused
//! at once as `Busy`, so a burst costs its senders a 503, not everyone else their latency.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config;

/// The hasher: parameters, the pool's permits, the admission bound in front of them, and a
/// dummy hash so that an unknown e-mail costs the same time as a wrong password.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// One per hash computed at once.
    permits: Arc<Semaphore>,
    /// One per hash running or waiting: the pool's size plus `max_queue`.
    admitted: Arc<Semaphore>,
    queue_timeout: Duration,
    dummy: Arc<str>,
}

/// The outcome of a verification.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password.
    No,
    /// Right password, hash parameters current.
    Yes,
    /// Right password; here is a new hash with the current parameters to store.
    YesRehash(String),
}

/// Why a password was not hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The queue is full or the wait passed `queue_timeout`: try again after so many seconds.
    #[error("the password-hashing queue is full")]
    Busy(u64),
    /// The hashing itself failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl Passwords {
    /// Builds the hasher; computes the dummy hash once.
    pub async fn new(cfg: &config::Passwords) -> anyhow::Result<Passwords> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid Argon2 parameters: {e}"))?;
        let size = if cfg.max_concurrent == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.max_concurrent
        };
        let mut passwords = Passwords {
            params,
            permits: Arc::new(Semaphore::new(size)),
            admitted: Arc::new(Semaphore::new(size.saturating_add(cfg.max_queue))),
            queue_timeout: cfg.queue_timeout.0,
            dummy: Arc::from(""),
        };
        let dummy = passwords
            .hash("usher dummy password, never a real one".into())
            .await?;
        passwords.dummy = Arc::from(dummy);
        Ok(passwords)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Seconds a refused caller should wait: the queue's timeout, at least one.
    fn retry_after(&self) -> u64 {
        self.queue_timeout.as_secs_f64().ceil().max(1.0) as u64
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let busy = || HashError::Busy(self.retry_after());
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| anyhow::anyhow!("the hashing pool is closed"))?;
        let argon2 = self.argon2();
        let span = tracing::Span::current();
        // The permits move into the blocking task: a caller that goes away does not free a
        // slot while its hash still runs.
        tokio::task::spawn_blocking(move || {
            let _held = (admitted, permit);
            span.in_scope(|| work(argon2))
        })
        .instrument(tracing::Span::current())
        .await
        .map_err(|e| anyhow::anyhow!("the hashing task failed: {e}").into())
    }

    /// A PHC string of `password` with the configured parameters.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.blocking(move |argon2| {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}").into())
        })
        .await?
    }

    /// Checks `password` against `phc`; `None` checks against the dummy and says no.
    pub async fn verify(
        &self,
        password: String,
        phc: Option<String>,
    ) -> Result<Verified, HashError> {
        let real = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let params = self.params.clone();
        self.blocking(move |argon2| {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return Ok(Verified::No);
            };
            if argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_err()
                || !real
            {
                return Ok(Verified::No);
            }
            let current = Params::try_from(&parsed).ok();
            let stale = parsed.algorithm != Algorithm::Argon2id.ident()
                || current.is_none_or(|p| {
                    p.m_cost() != params.m_cost()
                        || p.t_cost() != params.t_cost()
                        || p.p_cost() != params.p_cost()
                });
            if !stale {
                return Ok(Verified::Yes);
            }
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| Verified::YesRehash(h.to_string()))
                .map_err(|e| anyhow::anyhow!("rehashing failed: {e}").into())
        })
        .await?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn small(memory_kib: u32) -> config::Passwords {
        config::Passwords {
            memory_kib,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 2,
            ..config::Passwords::default()
        }
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify() {
        let p = Passwords::new(&small(1024)).await.unwrap();
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{h}");
        assert_eq!(
            p.verify("correct horse".into(), Some(h.clone()))
                .await
                .unwrap(),
            Verified::Yes
        );
        assert_eq!(
            p.verify("wrong horse".into(), Some(h)).await.unwrap(),
            Verified::No
        );
    }

    #[tokio::test]
    async fn unknown_users_are_checked_against_a_dummy() {
        let p = Passwords::new(&small(1024)).await.unwrap();
        assert_eq!(
            p.verify("anything".into(), None).await.unwrap(),
            Verified::No
        );
        assert_eq!(
            p.verify("usher dummy password, never a real one".into(), None)
                .await
                .unwrap(),
            Verified::No
        );
    }

    #[tokio::test]
    async fn old_parameters_are_rehashed_on_success() {
        let old = Passwords::new(&small(1024)).await.unwrap();
        let h = old.hash("pass phrase".into()).await.unwrap();
        let new = Passwords::new(&small(2048)).await.unwrap();
        match new.verify("pass phrase".into(), Some(h)).await.unwrap() {
            Verified::YesRehash(h2) => assert!(h2.contains("m=2048"), "{h2}"),
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn past_the_queue_hashes_are_refused_as_busy() {
        let p = Passwords::new(&config::Passwords {
            max_concurrent: 1,
            max_queue: 1,
            queue_timeout: config::Dur::secs(60),
            ..small(1024)
        })
        .await
        .unwrap();
        // Polled together: the first runs, the second waits, the third finds the queue full.
        let (a, b, c) = tokio::join!(
            p.hash("one password".into()),
            p.hash("two password".into()),
            p.hash("three password".into())
        );
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        assert!(matches!(c, Err(HashError::Busy(60))), "{c:?}");
        // Once they are done the queue is free again.
        assert!(p.hash("four password".into()).await.is_ok());
    }

    #[tokio::test]
    async fn a_wait_past_the_queue_timeout_is_busy() {
        let p = Passwords::new(&config::Passwords {
            max_concurrent: 1,
            max_queue: 8,
            queue_timeout: config::Dur::millis(1),
            ..small(64 * 1024)
        })
        .await
        .unwrap();
        let (a, b) = tokio::join!(p.hash("one password".into()), p.hash("two password".into()));
        assert!(a.is_ok(), "{a:?}");
        assert!(matches!(b, Err(HashError::Busy(1))), "{b:?}");
    }

    #[tokio::test]
    async fn default_parameters_are_owasp() {
        let p = Passwords::new(&config::Passwords::default()).await.unwrap();
        let h = p.hash("x".repeat(8)).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
    }
}
