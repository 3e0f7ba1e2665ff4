//! PostgreSQL failover: usher on a multi-host URL with `target_session_attrs=read-write`
//! follows a promoted standby without a restart. A private primary and streaming standby run
//! in a temp dir on free ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{eventually, free_port, problem, tool, TestApp};
use crate::tls::running_as_root;

/// A private PostgreSQL 15 primary and a streaming standby made with `pg_basebackup -R`.
struct PgPair {
    bin: PathBuf,
    dir: PathBuf,
    primary: u16,
    standby: u16,
}

impl PgPair {
    /// `None` (after a notice) when PostgreSQL's server binaries are missing outside CI.
    fn start() -> Option<PgPair> {
        // Debian keeps the server programs out of PATH, in a folder per major version.
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin/initdb")))
            })
            .filter(|(_, initdb)| initdb.is_file())
            .max();
        let initdb = match newest {
            Some((_, initdb)) => initdb,
            None => std::fs::canonicalize(tool("initdb", &[])?).expect("initdb resolves"),
        };
        let bin = initdb.parent().expect("a folder").to_path_buf();
        let dir = std::env::temp_dir().join(format!("usher-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = PgPair {
            bin,
            dir,
            primary: free_port(),
            standby: free_port(),
        };
        if running_as_root() {
            // initdb refuses root: the cluster belongs to the `postgres` account.
            let chown = Command::new("chown")
                .arg("postgres")
                .arg(&pair.dir)
                .status()
                .expect("chown runs");
            assert!(chown.success());
        }
        let data = pair.data("primary");
        pair.pg(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = replica\nfsync = off\nmax_connections = 40\n",
            pair.primary,
            pair.dir.display()
        );
        append(&Path::new(&data).join("postgresql.conf"), &conf);
        pair.ctl("primary", &["start"]);
        let standby = pair.data("standby");
        let port = pair.primary.to_string();
        pair.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &standby,
                "-R",
            ],
        );
        append(
            &Path::new(&standby).join("postgresql.conf"),
            &format!("port = {}\n", pair.standby),
        );
        pair.ctl("standby", &["start"]);
        Some(pair)
    }

    fn data(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// The URL usher gets: both hosts, the primary first.
    fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary, self.standby
        )
    }

    /// `psql -Atc statement` on one node's `db`; its output, trimmed.
    fn sql(&self, port: u16, db: &str, statement: &str) -> String {
        let url = format!("postgres://postgres@127.0.0.1:{port}/{db}");
        let out = self
            .command(&self.bin.join("psql"), false)
            .args([url.as_str(), "-Atc", statement])
            .output()
            .expect("psql runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn ctl(&self, node: &str, args: &[&str]) {
        let data = self.data(node);
        let log = self.dir.join(format!("{node}.log"));
        let mut all = vec!["-D", &data, "-l", log.to_str().unwrap(), "-w"];
        all.extend_from_slice(args);
        self.pg("pg_ctl", &all);
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when the tests run as root).
    fn pg(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let out = self
            .command(&program, running_as_root())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self, program: &Path, as_postgres: bool) -> Command {
        let mut c = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        c.stdin(Stdio::null());
        c
    }

    /// Waits (bounded) until the standby has replayed `revoked` logouts.
    async fn standby_has_replayed(&self, revoked: &str) -> bool {
        eventually(Duration::from_secs(10), || async {
            self.sql(
                self.standby,
                "usher_failover",
                "select count(*) from sessions where revoked_at is not null",
            ) == revoked
        })
        .await
    }

    /// Fences the primary the way switchover tools do: every new transaction is read-only,
    /// open connections stay up.
    fn fence_primary(&self) {
        for statement in [
            "alter system set default_transaction_read_only = on",
            "select pg_reload_conf()",
        ] {
            self.sql(self.primary, "postgres", statement);
        }
    }

    fn stop_primary(&self) {
        self.ctl("primary", &["-m", "fast", "stop"]);
    }

    fn promote_standby(&self) {
        self.ctl("standby", &["promote"]);
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for node in ["primary", "standby"] {
            let data = self.data(node);
            let _ = self
                .command(&self.bin.join("pg_ctl"), running_as_root())
                .args(["-D", &data, "-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// usher on the pair's multi-host URL, with a short database timeout.
async fn usher_on(pair: &PgPair) -> TestApp {
    let url = pair.url("usher_failover");
    TestApp::spawn_with(|c| {
        c.database.url = usher::config::Secret::new(url);
        c.database.timeout = usher::config::Dur::millis(1000);
    })
    .await
}

/// A logged-in user with two sessions, one of them logged out.
async fn two_sessions_one_logged_out(app: &TestApp) -> (crate::helpers::Signed, String) {
    let u = app.user().await;
    let second = app.login(&u.email, &u.password).await;
    assert_eq!(second.status(), 200);
    let second: serde_json::Value = second.json().await.unwrap();
    let kept = second["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.logout(&u.access).await.status(), 204);
    (u, kept)
}

/// After the switch: logins and registrations work again within a bound, the session logged
/// out before stays refused, the other one is still valid.
async fn works_on_the_new_primary(app: &TestApp, u: &crate::helpers::Signed, kept: &str) {
    let back = eventually(Duration::from_secs(20), || async {
        app.login(&u.email, &u.password).await.status() == 200
    })
    .await;
    assert!(back, "logins should reach the promoted standby");
    assert_eq!(
        app.register("after-failover@cinema.test", "long enough")
            .await
            .status(),
        201
    );
    assert_eq!(problem(app.me(&u.access).await).await.1, "token_revoked");
    // Not only the cache: the list of sessions comes from the new primary.
    let r = app.sessions(kept).await;
    assert_eq!(r.status(), 200);
}

/// The primary goes (`lose_primary`), the standby is promoted: during the switch a clear 503,
/// never a 500; afterwards usher works on the new primary without a restart.
async fn failover(lose_primary: fn(&PgPair)) {
    let Some(pair) = PgPair::start() else {
        return;
    };
    let app = usher_on(&pair).await;
    let (u, kept) = two_sessions_one_logged_out(&app).await;
    let replayed = pair.standby_has_replayed("1").await;
    assert!(replayed, "the standby should stream the logout");

    lose_primary(&pair);
    let r = app.login(&u.email, &u.password).await;
    assert_eq!(problem(r).await, (503, "unavailable".into()));
    pair.promote_standby();
    works_on_the_new_primary(&app, &u, &kept).await;
}

#[tokio::test]
async fn a_promoted_standby_is_followed_without_restart() {
    failover(PgPair::stop_primary).await;
}

/// The old primary stays up but read-only (`read_only_sql_transaction`), its pooled
/// connections open: they are dropped, not reused.
#[tokio::test]
async fn connections_to_a_fenced_primary_are_dropped() {
    failover(PgPair::fence_primary).await;
}
