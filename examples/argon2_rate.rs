//! The machine's raw Argon2id rate, the reference of the login row of `benches/run.py`:
//! THREADS threads hashing at the given parameters for SECONDS; prints hashes a second as one
//! JSON line. MODE `alloc` calls the `argon2` crate's plain API, which allocates the memory for
//! every hash (as most programs do); `reuse` hashes into memory each thread keeps, as usher's
//! pool does. The benchmark takes the faster of the two as the reference.
//!
//! `argon2_rate MEMORY_KIB ITERATIONS PARALLELISM THREADS SECONDS alloc|reuse`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reuse = std::env::args().nth(6).as_deref() == Some("reuse");
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .take(5)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [memory_kib, iterations, parallelism, threads, seconds] = args[..] else {
        return Err("usage: argon2_rate MEMORY_KIB ITERATIONS PARALLELISM THREADS SECONDS".into());
    };
    let params = Params::new(
        memory_kib as u32,
        iterations as u32,
        parallelism as u32,
        None,
    )
    .map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (params, done) = (params.clone(), done.clone());
            std::thread::spawn(move || {
                let mut memory = vec![Block::default(); params.block_count()];
                let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                while Instant::now() < end {
                    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
                    let hashed = if reuse {
                        let mut out = [0u8; 32];
                        argon2
                            .hash_password_into_with_memory(
                                b"benchmark password",
                                salt.as_str().as_bytes(),
                                &mut out,
                                &mut memory,
                            )
                            .is_ok()
                    } else {
                        argon2.hash_password(b"benchmark password", &salt).is_ok()
                    };
                    if hashed {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a hashing thread panicked")?;
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"rate\":{:.2},\"hashes\":{n},\"ms_per_hash_per_thread\":{:.1}}}",
        n as f64 / start.elapsed().as_secs_f64(),
        1000.0 * start.elapsed().as_secs_f64() * threads as f64 / n.max(1) as f64
    );
    Ok(())
}
