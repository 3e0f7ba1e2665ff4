//! What one entry of each check-path cache costs in resident memory: COUNT entries of the
//! verified-token cache (`guard`, keyed by the token text, holding a `Principal`) and of the
//! two revocation caches (session → revoked, user → roles version), each built as the
//! server builds it, measured as the growth of VmRSS. A plain `HashMap` with the same
//! contents is measured too, as the floor without a cache's bookkeeping.
//!
//! `cache_cost [COUNT]`  (the memory row of `benches/run.py` measures the whole server)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use usher::config;
use usher::guard::Principal;
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

    let start = rss_bytes();
    let guard: Cache<String, Arc<Principal>> = Cache::builder()
        .max_capacity(count as u64 * 2)
        .time_to_live(ttl)
        .build();
    for (token, claims) in &issued {
        guard.insert(token.clone(), Arc::new(Principal::from(claims.clone())));
    }
    guard.run_pending_tasks();
    let mut at = report(
        "guard: moka Cache<String, Arc<Principal>>, TTL",
        start,
        count,
    );

    let sessions: Cache<Uuid, bool> = Cache::builder()
        .max_capacity(count as u64 * 2)
        .time_to_live(ttl)
        .build();
    let users: Cache<Uuid, i64> = Cache::builder()
        .max_capacity(count as u64 * 2)
        .time_to_live(ttl)
        .build();
    for (_, claims) in &issued {
        sessions.insert(claims.sid, false);
    }
    sessions.run_pending_tasks();
    at = report(
        "revocation sessions: moka Cache<Uuid, bool>, TTL",
        at,
        count,
    );
    for (_, claims) in &issued {
        users.insert(claims.sub, 0);
    }
    users.run_pending_tasks();
    at = report("revocation users: moka Cache<Uuid, i64>, TTL", at, count);

    let no_ttl: Cache<Uuid, bool> = Cache::builder().max_capacity(count as u64 * 2).build();
    for (_, claims) in &issued {
        no_ttl.insert(claims.jti, false);
    }
    no_ttl.run_pending_tasks();
    at = report("for comparison: moka Cache<Uuid, bool>, no TTL", at, count);

    let mut plain: HashMap<String, Arc<Principal>> = HashMap::with_capacity(count);
    for (token, claims) in &issued {
        plain.insert(token.clone(), Arc::new(Principal::from(claims.clone())));
    }
    at = report("for comparison: HashMap<String, Arc<Principal>>", at, count);
    let mut ids: HashMap<Uuid, bool> = HashMap::with_capacity(count);
    for (_, claims) in &issued {
        ids.insert(claims.sid, false);
    }
    report("for comparison: HashMap<Uuid, bool>", at, count);
    println!(
        "kept: {} {} {} {} {} {}",
        guard.entry_count(),
        sessions.entry_count(),
        users.entry_count(),
        no_ttl.entry_count(),
        plain.len(),
        ids.len()
    );
    Ok(())
}
