//! The command line: `serve`, `migrate`, `roles create`, `superuser create`, `keys rotate`,
//! `keys retire`, `routes check`, `config`, `healthcheck`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{self, Application};
use crate::config::{Config, LogFormat};
use crate::domain::{self, registration, DomainError};
use crate::passwords::Passwords;
use crate::permissions::SUPERUSER;
use crate::routes::{Requirement, RouteMap};

/// usher: authentication, authorization and the gateway check of the cinema.
#[derive(Debug, Parser)]
#[command(name = "usher", version, about)]
pub struct Cli {
    /// Configuration file (TOML); also `USHER_CONFIG`.
    #[arg(long, global = true, env = "USHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, create built-ins, and serve both listeners until SIGTERM.
    Serve,
    /// Apply pending migrations and create missing built-in roles and permissions.
    Migrate,
    /// Roles.
    Roles {
        /// What to do with roles.
        #[command(subcommand)]
        command: RolesCommand,
    },
    /// Superusers.
    Superuser {
        /// What to do with superusers.
        #[command(subcommand)]
        command: SuperuserCommand,
    },
    /// Signing keys.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The gateway route map.
    Routes {
        /// What to do with the route map.
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Print the effective configuration, secrets masked.
    Config,
    /// Ask this usher's internal listener for `/readyz`: exit 0 when ready or degraded, 1
    /// otherwise. For container health checks; needs no curl.
    Healthcheck,
}

/// `usher routes ...`.
#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// Validate a route map and print what it holds; exits non-zero naming the faulty line.
    Check {
        /// The route map file (TOML).
        file: PathBuf,
        /// A request to judge, as "METHOD /path?query" or "METHOD host/path"; repeatable.
        #[arg(long, value_name = "REQUEST")]
        probe: Vec<String>,
    },
}

/// `usher roles ...`.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Create the built-in roles and permissions that are missing (idempotent).
    Create,
    /// Give a role permissions (idempotent); running replicas apply it at once. For example
    /// `usher roles grant non_registered films_read` makes the catalog public.
    Grant {
        /// The role's name.
        role: String,
        /// Permissions to add.
        #[arg(required = true)]
        permissions: Vec<String>,
    },
    /// Take permissions away from a role (idempotent).
    Revoke {
        /// The role's name.
        role: String,
        /// Permissions to remove.
        #[arg(required = true)]
        permissions: Vec<String>,
    },
}

/// `usher superuser ...`.
#[derive(Debug, Subcommand)]
pub enum SuperuserCommand {
    /// Create a user holding `superuser` (idempotent for an existing superuser). Without
    /// `--email`, asks for e-mail and password; with it, the password comes from
    /// `USHER_SUPERUSER_PASSWORD`, the file named by `USHER_SUPERUSER_PASSWORD_FILE`, or else
    /// one line of stdin. An existing account that is not a superuser is refused: on an open
    /// registration anyone may have registered that address, with a password they know.
    Create {
        /// The superuser's e-mail.
        #[arg(long)]
        email: Option<String>,
        /// Promote an existing account (in any letter case) that is not a superuser yet; it
        /// keeps its password. Only for an account you know is yours.
        #[arg(long)]
        promote_existing: bool,
    },
}

/// `usher keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a new signing key; tokens signed by older keys stay valid until they expire, and
    /// the old key retires by itself `tokens.access_ttl` plus 30 s later.
    Rotate,
    /// Retire a key at once (a leaked key): it leaves the JWKS and its tokens are refused by
    /// every running replica. The key that signs must be rotated out first.
    Retire {
        /// The key id (`kid`), as the JWKS lists it.
        kid: String,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Needs no configuration, database or Redis: an operator checks a file before deploying it.
    if let Command::Routes {
        command: RoutesCommand::Check { file, probe },
    } = &cli.command
    {
        return routes_check(file, probe);
    }
    let config = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    if let Command::Healthcheck = cli.command {
        return healthcheck(&config).await;
    }
    init_logging(&config);
    match cli.command {
        Command::Serve => {
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            let applied = app::prepare(&config).await?.applied;
            println!(
                "applied {} migration(s): {}",
                applied.len(),
                applied.join(", ")
            );
            Ok(())
        }
        Command::Roles {
            command: RolesCommand::Create,
        } => {
            app::prepare(&config).await?;
            println!("built-in roles and permissions are in place");
            Ok(())
        }
        Command::Roles {
            command: RolesCommand::Grant { role, permissions },
        } => change_grants(&config, &role, &permissions, true).await,
        Command::Roles {
            command: RolesCommand::Revoke { role, permissions },
        } => change_grants(&config, &role, &permissions, false).await,
        Command::Superuser {
            command:
                SuperuserCommand::Create {
                    email,
                    promote_existing,
                },
        } => superuser_create(&config, email, promote_existing).await,
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let (pool, _) = app::migrated(&config).await?;
            let kid = crate::tokens::rotate(&pool, &config.tokens).await?;
            announce(&config, crate::change::Change::Keys).await;
            println!("new signing key {kid}");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Retire { kid },
        } => {
            let (pool, _) = app::migrated(&config).await?;
            crate::tokens::retire(&pool, &kid).await?;
            announce(&config, crate::change::Change::Keys).await;
            println!("signing key {kid} retired");
            Ok(())
        }
        Command::Routes { .. } | Command::Healthcheck => Ok(()),
        Command::Config => {
            print!("{}", toml::to_string(&config.masked())?);
            Ok(())
        }
    }
}

/// Tells running replicas through the change feed. When Redis cannot be reached they catch
/// up by themselves: their feed is down too, and they poll PostgreSQL until it is back.
async fn announce(config: &Config, change: crate::change::Change) {
    if let Ok(kv) = crate::kv::Kv::new(&config.redis) {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(kv.key(crate::kv::keys::FEED))
            .arg(change.encode());
        if let Err(e) = kv.run::<(i64,)>(&pipe).await {
            eprintln!(
                "usher: running replicas were not told ({e}); they catch up when Redis is back"
            );
        }
    }
}

/// Tells running replicas of a committed change: roles and grants through the change feed
/// (see [`announce`]), users whose roles changed through revocation, so their current tokens
/// go stale and a refresh shows the new roles.
async fn tell_replicas(config: &Config, pool: &deadpool_postgres::Pool, changed: domain::Changed) {
    if changed.catalog {
        announce(config, crate::change::Change::Catalog).await;
    }
    if changed.users.is_empty() {
        return;
    }
    if let Ok(kv) = crate::kv::Kv::new(&config.redis) {
        let revocation = crate::revocation::Revocation::new(
            kv,
            pool.clone(),
            &config.cache,
            config.tokens.access_ttl.0,
        );
        for (user, rv) in changed.users {
            revocation.roles_changed(user, rv).await;
        }
    }
}

/// `usher roles grant|revoke ROLE PERMISSION...`.
async fn change_grants(
    config: &Config,
    role: &str,
    permissions: &[String],
    grant: bool,
) -> anyhow::Result<()> {
    let pool = app::prepare(config).await?.db;
    let changed = domain::roles::change_grants(&pool, role, permissions, grant)
        .await
        .map_err(|e| match e {
            DomainError::NotFound => anyhow::anyhow!("there is no role named {role:?}"),
            DomainError::UnknownPermission(p) => {
                anyhow::anyhow!("there is no permission {p:?} (see GET /api/v1/permissions)")
            }
            e => e.into(),
        })?;
    tell_replicas(config, &pool, changed).await;
    let verb = if grant { "granted to" } else { "revoked from" };
    println!("{} {verb} {role}", permissions.join(", "));
    Ok(())
}

/// `usher healthcheck`: one `GET /readyz` to the configured internal address (127.0.0.1 or
/// ::1 when it is bound to every interface), with a bounded wait.
async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = config.listen.internal;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), ask)
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer within 5s"))?
        .with_context(|| format!("asking {addr} for /readyz"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split(' ').nth(1).unwrap_or_default();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim());
    anyhow::ensure!(status == "200", "not ready: {status} {body}");
    println!("{body}");
    Ok(())
}

/// `usher routes check FILE [--probe REQUEST]...`.
fn routes_check(file: &std::path::Path, probes: &[String]) -> anyhow::Result<()> {
    let map = RouteMap::load(file, &crate::permissions::builtin_names())?;
    println!("{}: valid", file.display());
    print!("{}", map.explain());
    for probe in probes {
        let (method, target) = probe
            .trim()
            .split_once(char::is_whitespace)
            .map(|(m, t)| (m, t.trim()))
            .with_context(|| format!("probe {probe:?}: expected \"METHOD /path\""))?;
        let (host, path) = match target.find('/') {
            Some(0) => (None, target),
            Some(at) => (Some(&target[..at]), &target[at..]),
            None => anyhow::bail!("probe {probe:?}: the path must start with '/'"),
        };
        match map.decide(host, method, path) {
            Ok(d) => {
                let needs = match d.requirement {
                    Requirement::Public => "allow (public)".to_owned(),
                    Requirement::Deny => "deny (403)".to_owned(),
                    Requirement::Authenticated => "any signed-in user".to_owned(),
                    Requirement::Permissions(p) => format!("all of: {}", p.join(", ")),
                };
                println!("probe {method} {target}: route {} -> {needs}", d.route);
            }
            Err(e) => println!("probe {method} {target}: refused (403): {e}"),
        }
    }
    Ok(())
}

/// The variable `superuser create --email` reads the password from.
pub const SUPERUSER_PASSWORD_VAR: &str = "USHER_SUPERUSER_PASSWORD";
/// The variable naming a file that holds the password instead.
pub const SUPERUSER_PASSWORD_FILE_VAR: &str = "USHER_SUPERUSER_PASSWORD_FILE";

/// `usher superuser create`.
async fn superuser_create(
    config: &Config,
    email: Option<String>,
    promote_existing: bool,
) -> anyhow::Result<()> {
    let interactive = email.is_none();
    let email = match email {
        Some(e) => e,
        None => prompt_line("E-mail: ")?,
    };
    let email = registration::superuser_email(&email).map_err(anyhow::Error::msg)?;
    let pool = app::prepare(config).await?.db;
    let existing = registration::existing(&pool, &email).await?;
    if let Some(found) = &existing {
        let already = found.user.roles.iter().any(|r| r == SUPERUSER);
        anyhow::ensure!(
            already || promote_existing,
            "an account {} already exists and is not a superuser; it may have been registered \
             by someone else, with a password they know. If it is yours, run again with \
             --promote-existing (it keeps its password); otherwise choose another e-mail",
            found.user.email
        );
    }
    // Only a new user needs a password: promoting someone never resets theirs.
    let hash = match &existing {
        Some(_) => None,
        None => {
            let password = if interactive {
                prompt_new_password()?
            } else {
                password_from_env_or_stdin()?
            };
            registration::superuser_password(&password).map_err(anyhow::Error::msg)?;
            let passwords = Passwords::new(&config.passwords).await?;
            Some(passwords.hash(password).await?)
        }
    };
    let existing = existing.map(|found| found.user);
    let made = registration::make_superuser(&pool, &email, existing, hash.as_deref())
        .await
        .with_context(|| format!("making {email} a superuser"))?;
    tell_replicas(config, &pool, made.changed).await;
    let user = &made.user;
    match (made.created, made.promoted) {
        (true, _) => println!("created superuser {email} ({})", user.id),
        (false, true) => println!("{email} ({}) is now a superuser", user.id),
        (false, false) => println!("{email} ({}) already is a superuser", user.id),
    }
    if user.disabled {
        eprintln!("note: the account {email} is disabled and cannot log in");
    }
    Ok(())
}

/// Asks for one line on the terminal (prompt on stderr).
fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the e-mail")?;
    Ok(line.trim().to_owned())
}

/// Asks twice for a new password without echoing it: on a terminal with echo off; from
/// anything else (a pipe, a file) two lines are read and nothing of them is written.
fn prompt_new_password() -> anyhow::Result<String> {
    let ask = |prompt: &str| -> anyhow::Result<String> {
        if std::io::stdin().is_terminal() {
            return rpassword::prompt_password(prompt).context("reading the password");
        }
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    let first = ask("Password: ")?;
    let second = ask("Repeat password: ")?;
    if first != second {
        anyhow::bail!("the passwords do not match");
    }
    Ok(first)
}

/// `USHER_SUPERUSER_PASSWORD`, the file `USHER_SUPERUSER_PASSWORD_FILE` names, or else one
/// line of stdin (its line ending dropped, spaces kept).
fn password_from_env_or_stdin() -> anyhow::Result<String> {
    if let Some((_, password)) =
        crate::config::secret_from_env(SUPERUSER_PASSWORD_VAR).map_err(anyhow::Error::msg)?
    {
        return Ok(password);
    }
    if let Ok(password) = std::env::var(SUPERUSER_PASSWORD_VAR) {
        return Ok(password);
    }
    let mut line = String::new();
    let n = std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    if n == 0 {
        anyhow::bail!(
            "no password: set {SUPERUSER_PASSWORD_VAR} or {SUPERUSER_PASSWORD_FILE_VAR}, or \
             write it as one line on stdin"
        );
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // PostgreSQL's notices ("relation … already exists, skipping") are not news.
        .or_else(|_| {
            tracing_subscriber::EnvFilter::try_new(format!(
                "{},tokio_postgres::connection=warn",
                config.log.level
            ))
        })
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into files or log pipelines.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.log.format {
        // Fields at the top level of each object, as log shippers expect.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
