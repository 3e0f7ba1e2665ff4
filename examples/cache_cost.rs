//! What one entry of each check-path cache costs in resident memory: COUNT entries of the
//! verified-token cache (`guard`, keyed by the token's SHA-256 digest, holding a `Principal`)
//! and of the two revocation caches (session → revoked, user → roles version), each built as
//! the server builds it, measured as the growth of VmRSS. moka, as the server used it before,
//! and a plain `HashMap` with the same contents (the floor without a cache's bookkeeping) are
//! measured too.
//!
//! `cache_cost [COUNT]`  (the memory row of `benches/run.py` measures the whole server)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use usher::cache::Compact;
use usher::config;
use usher::guard::{token_key, Guard, Principal};
use usher::tokens::Tokens;
use uuid::Uuid;

fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .unwrap_or(0)
        * 1024
}

fn report(what: &str, before: i64, count: usize) -> i64 {
    let now = rss_bytes();
    println!(
        "{what:<58} {:>6.1} MiB  {:>5} B/entry",
        (now - before) as f64 / 1048576.0,
        (now - before) / count as i64
    );
    now
}

fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args().nth(1).map_or(Ok(100_000), |n| n.parse())?;
    let ttl = Duration::from_secs(3600);
    let tokens = Tokens::ephemeral(&config::Tokens::default())?;
    let issued: Vec<_> = (0..count)
        .map(|_| tokens.issue(Uuid::new_v4(), Uuid::new_v4(), vec!["user".into()], 0))
        .collect::<Result<_, _>>()?;
    println!(
        "{count} entries; a token is {} bytes of text",
        issued.first().map_or(0, |(t, _)| t.len())
    );

    // What the server keeps: `Guard` (tokens by SHA-256 digest, principals sharing their
    // role sets) and the revocation caches (`Compact` maps with a time to live).
    let start = rss_bytes();
    let cache = config::Cache {
        tokens: count as u64 * 2,
        ..config::Cache::default()
    };
    let guard = Guard::new(&cache, ttl);
    for (token, claims) in &issued {
        guard.admit(token_key(token), claims.clone(), guard.generation());
    }
    let mut at = report(
        "guard: Compact<[u8; 32], Arc<Principal>>, shared roles",
        start,
        count,
    );
    let sessions: Compact<Uuid, bool> = Compact::new(count as u64 * 2);
    for (_, claims) in &issued {
        sessions.insert(claims.sid, false, ttl);
    }
    at = report("revocation sessions: Compact<Uuid, bool>", at, count);
    let users: Compact<Uuid, i64> = Compact::new(count as u64 * 2);
    for (_, claims) in &issued {
        users.insert(claims.sub, 0, ttl);
    }
    at = report("revocation users: Compact<Uuid, i64>", at, count);

    // For comparison: moka as the server used it before (token text as the key, a principal
    // with roles of its own), and plain maps as the floor without any bookkeeping.
    let moka_tokens: Cache<String, Arc<Principal>> = Cache::builder()
        .max_capacity(count as u64 * 2)
        .time_to_live(ttl)
        .build();
    for (token, claims) in &issued {
        moka_tokens.insert(token.clone(), Arc::new(Principal::from(claims.clone())));
    }
    moka_tokens.run_pending_tasks();
    at = report(
        "for comparison: moka Cache<String, Arc<Principal>>, TTL",
        at,
        count,
    );
    let moka_ids: Cache<Uuid, bool> = Cache::builder()
        .max_capacity(count as u64 * 2)
        .time_to_live(ttl)
        .build();
    for (_, claims) in &issued {
        moka_ids.insert(claims.sid, false);
    }
    moka_ids.run_pending_tasks();
    at = report("for comparison: moka Cache<Uuid, bool>, TTL", at, count);
    let mut plain: HashMap<[u8; 32], Arc<Principal>> = HashMap::with_capacity(count);
    for (token, claims) in &issued {
        plain.insert(token_key(token), Arc::new(Principal::from(claims.clone())));
    }
    at = report(
        "for comparison: HashMap<[u8; 32], Arc<Principal>>",
        at,
        count,
    );
    let mut ids: HashMap<Uuid, bool> = HashMap::with_capacity(count);
    for (_, claims) in &issued {
        ids.insert(claims.sid, false);
    }
    report("for comparison: HashMap<Uuid, bool>", at, count);
    println!(
        "kept: {} {} {} {} {} {} {}",
        guard.len(),
        sessions.len(),
        users.len(),
        moka_tokens.entry_count(),
        moka_ids.entry_count(),
        plain.len(),
        ids.len()
    );
    Ok(())
}
