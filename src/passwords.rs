//! Argon2id password hashing on a pool of its own, so that a burst of logins never occupies
//! the async workers that serve the check endpoint. The queue in front of the pool is bounded
//! (`passwords.max_queue`, `passwords.queue_timeout`): past it a hash is refused at once as
//! `Busy`, so a burst costs its senders a 503, not everyone else their latency.
//!
//! The pool's threads run at a lower scheduling priority (`passwords.nice`), so that hashing
//! takes the CPU the async workers leave idle and a check never waits behind a hash for its
//! core. Each thread keeps its Argon2 memory (19 MiB with the defaults) from one hash to the
//! next, rather than mapping and zeroing it afresh every time, and returns it to the system
//! once it has been idle for `IDLE`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{oneshot, Semaphore};

use crate::config;

/// How long a pool thread keeps its Argon2 memory without work before freeing it.
const IDLE: Duration = Duration::from_secs(1);

/// The hasher: parameters, the pool's permits, the admission bound in front of them, and a
/// dummy hash so that an unknown e-mail costs the same time as a wrong password.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    pool: Arc<Pool>,
    /// One per hash computed at once.
    permits: Arc<Semaphore>,
    /// One per hash running or waiting: the pool's size plus `max_queue`.
    admitted: Arc<Semaphore>,
    queue_timeout: Duration,
    dummy: Arc<str>,
    /// Argon2 computations finished: hashes and verifications, the dummy's included.
    computed: Arc<AtomicU64>,
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

/// Work for a pool thread, given that thread's Argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The jobs waiting for a pool thread; closed when the last `Passwords` goes away.
#[derive(Default)]
struct Queue {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

impl Queue {
    /// The next job, waiting at most `IDLE`: `Err(())` once closed, `Ok(None)` on a timeout.
    fn next(&self) -> Result<Option<Job>, ()> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.0.is_empty() && !jobs.1 {
            jobs = self
                .ready
                .wait_timeout(jobs, IDLE)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        match jobs.0.pop_front() {
            Some(job) => Ok(Some(job)),
            None if jobs.1 => Err(()),
            None => Ok(None),
        }
    }
}

/// The pool threads' queue; dropping it (with the last `Passwords`) lets the threads end.
struct Pool {
    queue: Arc<Queue>,
}

impl Pool {
    fn start(size: usize, nice: i32) -> anyhow::Result<Pool> {
        let queue = Arc::new(Queue::default());
        for n in 0..size {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("usher-hash-{n}"))
                .spawn(move || work(&queue, nice))?;
        }
        Ok(Pool { queue })
    }

    fn submit(&self, job: Job) {
        let mut jobs = self
            .queue
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        jobs.0.push_back(job);
        drop(jobs);
        self.queue.ready.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.queue
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 = true;
        self.queue.ready.notify_all();
    }
}

/// A pool thread: lowers its own priority, then runs jobs with memory kept between them.
fn work(queue: &Queue, nice: i32) {
    lower_priority(nice);
    let mut memory = Vec::new();
    loop {
        match queue.next() {
            Ok(Some(job)) => job(&mut memory),
            // Idle: give the memory back until the next burst.
            Ok(None) => memory = Vec::new(),
            Err(()) => return,
        }
    }
}

/// Sets this thread's nice value (Linux schedules threads one by one).
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::warn!(error = %e, nice, "the hashing threads keep the normal priority");
    }
}

/// `memory` grown to `params`' size if it is smaller; only the first blocks are used.
fn blocks<'m>(memory: &'m mut Vec<Block>, params: &Params) -> &'m mut [Block] {
    let count = params.block_count();
    if memory.len() < count {
        *memory = vec![Block::default(); count];
    }
    &mut memory[..count]
}

/// A PHC string of `password` with `params`, computed in `memory`.
fn hash_with(memory: &mut Vec<Block>, params: &Params, password: &[u8]) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        argon2
            .hash_password_into_with_memory(password, salt_bytes, out, blocks(memory, params))
            .map_err(Into::into)
    })
    .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| anyhow::anyhow!("{e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches `phc` (any Argon2 variant and parameters), computed in `memory`.
fn matches(memory: &mut Vec<Block>, phc: &PasswordHash<'_>, password: &[u8]) -> bool {
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(phc.algorithm), Params::try_from(phc))
    else {
        return false;
    };
    let version = phc
        .version
        .map_or(Ok(Version::default()), Version::try_from)
        .unwrap_or(Version::V0x13);
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = Output::init_with(expected.len(), |out| {
        argon2
            .hash_password_into_with_memory(password, salt_bytes, out, blocks(memory, &params))
            .map_err(Into::into)
    });
    // `Output`'s comparison takes constant time.
    computed.is_ok_and(|computed| computed == expected)
}

impl Passwords {
    /// Builds the hasher and starts its pool; computes the dummy hash once.
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
            pool: Arc::new(Pool::start(size, cfg.nice)?),
            permits: Arc::new(Semaphore::new(size)),
            admitted: Arc::new(Semaphore::new(size.saturating_add(cfg.max_queue))),
            queue_timeout: cfg.queue_timeout.0,
            dummy: Arc::from(""),
            computed: Arc::new(AtomicU64::new(0)),
        };
        let dummy = passwords
            .hash("usher dummy password, never a real one".into())
            .await?;
        passwords.dummy = Arc::from(dummy);
        Ok(passwords)
    }

    /// Seconds a refused caller should wait: the queue's timeout, at least one.
    fn retry_after(&self) -> u64 {
        self.queue_timeout.as_secs_f64().ceil().max(1.0) as u64
    }

    async fn on_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
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
        let span = tracing::Span::current();
        let (done, answer) = oneshot::channel();
        // The permits move into the job: a caller that goes away does not free a slot while
        // its hash still runs.
        self.pool.submit(Box::new(move |memory| {
            let result = span.in_scope(|| work(memory));
            // Free before answering: the caller's next hash must find its slot free.
            drop((admitted, permit));
            let _ = done.send(result);
        }));
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the hashing job was dropped").into())
    }

    /// How many Argon2 computations (hashes and verifications, against the dummy too) have
    /// finished: evidence that a check really ran, without timing it.
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    /// A PHC string of `password` with the configured parameters.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let params = self.params.clone();
        let computed = self.computed.clone();
        Ok(self
            .on_pool(move |memory| {
                let phc = hash_with(memory, &params, password.as_bytes());
                computed.fetch_add(1, Ordering::Relaxed);
                phc
            })
            .await??)
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
        let computed = self.computed.clone();
        self.on_pool(move |memory| {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return Ok(Verified::No);
            };
            let right = matches(memory, &parsed, password.as_bytes());
            computed.fetch_add(1, Ordering::Relaxed);
            if !right || !real {
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
            hash_with(memory, &params, password.as_bytes())
                .map(Verified::YesRehash)
                .map_err(|e| HashError::Failed(e.context("rehashing failed")))
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
        let before = p.computed();
        assert_eq!(
            p.verify("anything".into(), None).await.unwrap(),
            Verified::No
        );
        assert_eq!(p.computed(), before + 1, "the dummy hash was computed");
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
    async fn hashes_from_reused_memory_verify_with_the_reference_implementation() {
        use argon2::PasswordVerifier;
        let p = Passwords::new(&config::Passwords {
            max_concurrent: 1,
            ..small(2048)
        })
        .await
        .unwrap();
        // One thread: every hash after the first (the dummy) starts from dirty memory.
        for password in ["first password", "second password", "third password"] {
            let h = p.hash(password.into()).await.unwrap();
            let parsed = PasswordHash::new(&h).unwrap();
            assert!(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok());
        }
        // And a hash made by the reference implementation, with other parameters, verifies.
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let reference = argon2::PasswordHasher::hash_password(
            &Argon2::new(
                Algorithm::Argon2i,
                Version::V0x13,
                Params::new(4096, 3, 2, None).unwrap(),
            ),
            b"older password",
            &salt,
        )
        .unwrap()
        .to_string();
        assert!(matches!(
            p.verify("older password".into(), Some(reference.clone()))
                .await
                .unwrap(),
            Verified::YesRehash(_)
        ));
        assert_eq!(
            p.verify("not the password".into(), Some(reference))
                .await
                .unwrap(),
            Verified::No
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_on_threads_of_the_configured_priority() {
        let p = Passwords::new(&config::Passwords {
            nice: 7,
            ..small(1024)
        })
        .await
        .unwrap();
        let nice = p
            .on_pool(|_| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(nice, 7);
        let (name, _) = tokio::join!(
            p.on_pool(|_| std::thread::current().name().map(str::to_owned)),
            p.hash("meanwhile".into())
        );
        assert!(name.unwrap().unwrap().starts_with("usher-hash-"));
    }

    #[tokio::test]
    async fn default_parameters_are_owasp() {
        let p = Passwords::new(&config::Passwords::default()).await.unwrap();
        let h = p.hash("x".repeat(8)).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
    }
}
