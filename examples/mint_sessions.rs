//! Fills usher's database with COUNT users, each with one live session, and prints an access
//! token for each session, one a line: the memory row of `benches/run.py` then presents every
//! token once to the check endpoint. Logging in 100,000 times would take half an hour of
//! Argon2id; the sessions are inserted with SQL and the tokens signed with usher's own keys
//! (read from the database, as the server does), so they are exactly what a login issues.
//!
//! `USHER_DATABASE__URL=... mint_sessions COUNT > tokens.txt` (after `usher serve` has
//! created the database and its keys)

use std::io::Write;

use usher::config::Config;
use usher::store;
use usher::tokens::Tokens;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: i64 = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "100000".into())
        .parse()?;
    let config = Config::load(None)?;
    let pool = store::connect(&config.database).await?;
    let tokens = Tokens::load(&pool, &config.tokens).await?;
    let db = store::conn(&pool).await?;
    let batch = Uuid::new_v4().simple().to_string();
    let rows = db
        .query(
            "with made as (
                 insert into users (id, email, email_canonical, password_hash)
                 select gen_random_uuid(), e, e, 'not a password hash'
                 from (select format('mem-%s-%s@bench.example', $1::text, i) as e
                       from generate_series(1, $2::bigint) as i) as emails
                 returning id),
             granted as (
                 insert into user_roles (user_id, role_id)
                 select made.id, roles.id from made, roles where roles.name = 'user')
             insert into sessions (id, user_id, expires_at)
             select gen_random_uuid(), id, now() + interval '30 days' from made
             returning id, user_id",
            &[&batch, &count],
        )
        .await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for row in rows {
        let (session, user): (Uuid, Uuid) = (row.get(0), row.get(1));
        let (token, _) = tokens.issue(user, session, vec!["user".into()], 0)?;
        writeln!(out, "{token}")?;
    }
    out.flush()?;
    Ok(())
}
