//! Login attempts counted in PostgreSQL, for the times Redis cannot count them.

use deadpool_postgres::GenericClient;

use super::Result;

/// Reserves one attempt under `key` in a window of `window_secs` (a new window when the last
/// one has passed): the attempts now counted, this one included, and the seconds left in the
/// window. One statement, so concurrent reservations are counted one by one.
pub async fn reserve(db: &impl GenericClient, key: &str, window_secs: f64) -> Result<(i32, f64)> {
    let stmt = db
        .prepare_cached(
            "insert into login_attempts (key, count, window_ends)
             values ($1, 1, now() + make_interval(secs => $2))
             on conflict (key) do update set
                 count = case when login_attempts.window_ends <= now() then 1
                              else login_attempts.count + 1 end,
                 window_ends = case when login_attempts.window_ends <= now()
                                    then excluded.window_ends
                                    else login_attempts.window_ends end
             returning count, extract(epoch from window_ends - now())::float8",
        )
        .await?;
    let row = db.query_one(&stmt, &[&key, &window_secs]).await?;
    Ok((row.get(0), row.get(1)))
}

/// Gives back one reserved attempt that was never evaluated.
pub async fn release(db: &impl GenericClient, key: &str) -> Result<()> {
    db.execute(
        "update login_attempts set count = count - 1
         where key = $1 and count > 0 and window_ends > now()",
        &[&key],
    )
    .await?;
    Ok(())
}

/// Forgets every attempt under `key` (a successful login).
pub async fn forgive(db: &impl GenericClient, key: &str) -> Result<()> {
    db.execute("delete from login_attempts where key = $1", &[&key])
        .await?;
    Ok(())
}
