//! TLS to PostgreSQL and Redis, against private servers started here with a CA and a server
//! certificate made at test time (`openssl` CLI). The server certificate names `localhost` only,
//! so connecting to 127.0.0.1 shows what `verify-full` adds to `verify-ca`.
//!
//! A missing binary (openssl, initdb/pg_ctl, redis-server) fails the test when `CI=true`;
//! elsewhere the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use usher::config::{Config, Secret};

use crate::helpers::{eventually, free_port, json_of, problem, test_config, tool, which, TestApp};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A folder with `ca.pem`, `server.pem`/`server.key` (signed by the CA, for `localhost`) and
/// `other-ca.pem` (a CA that signed nothing here). Removed on drop.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make() -> Option<Certs> {
        let openssl = tool("openssl", &[])?;
        let dir = std::env::temp_dir().join(format!("usher-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs { dir };
        let ssl = |args: &[&str]| run(Command::new(&openssl).current_dir(&certs.dir).args(args));
        for ca in ["ca", "other-ca"] {
            ssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=usher test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        ssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            certs.dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        ssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Some(certs)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A private PostgreSQL with `ssl=on`, in the certificates' folder; stopped on drop.
struct TlsPostgres {
    port: u16,
    pg_ctl: PathBuf,
    data: PathBuf,
    as_root: bool,
}

impl TlsPostgres {
    fn start(certs: &Certs) -> Option<TlsPostgres> {
        // The newest PostgreSQL installed in Debian's layout, else whatever is on PATH.
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .collect()
            })
            .unwrap_or_default();
        versions.sort_by_key(|p| {
            p.parent()
                .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0)
        });
        let candidates = |name: &str| -> Vec<PathBuf> {
            versions.iter().rev().map(|bin| bin.join(name)).collect()
        };
        let initdb = tool("initdb", &candidates("initdb"))?;
        let pg_ctl = tool("pg_ctl", &candidates("pg_ctl"))?;
        // initdb refuses to run as root: run the server as `postgres`, which owns the folder.
        let as_root = running_as_root();
        let data = certs.path("pgdata");
        std::fs::set_permissions(
            certs.path("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        if as_root {
            run(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&certs.dir));
        }
        let server = TlsPostgres {
            port: free_port(),
            pg_ctl,
            data,
            as_root,
        };
        run(server
            .command(&initdb)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&server.data));
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={} \
             -c ssl_key_file={} -c fsync=off",
            server.port,
            certs.dir.display(),
            certs.path("server.pem").display(),
            certs.path("server.key").display()
        );
        run(server
            .command(&server.pg_ctl)
            .args(["-w", "-t", "30", "-l"])
            .arg(certs.path("postgres.log"))
            .arg("-o")
            .arg(options)
            .arg("-D")
            .arg(&server.data)
            .arg("start"));
        Some(server)
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = if self.as_root {
            let mut c = Command::new(which("runuser"));
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/usher_tls?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self
            .command(&self.pg_ctl)
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

/// Connects as usher does and tells whether the session is encrypted.
async fn connect(config: &Config) -> Result<bool, String> {
    let pool = usher::store::connect(&config.database)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let db = pool.get().await.map_err(|e| format!("{e:#}"))?;
    let row = db
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(row.get(0))
}

fn database(url: String, ca_file: Option<PathBuf>) -> Config {
    let mut c = test_config();
    c.database.url = Secret::new(url);
    c.database.ca_file = ca_file;
    c
}

#[tokio::test]
async fn postgres_over_tls_checks_the_server_as_sslmode_says() {
    let Some(certs) = Certs::make() else { return };
    let Some(pg) = TlsPostgres::start(&certs) else {
        return;
    };
    let ca = Some(certs.path("ca.pem"));
    let other = Some(certs.path("other-ca.pem"));

    // verify-full with the right CA: usher creates its database and connects, encrypted
    assert_eq!(
        connect(&database(
            pg.url("localhost", "sslmode=verify-full"),
            ca.clone()
        ))
        .await,
        Ok(true)
    );
    // the CA may also come from the URL
    let in_url = format!(
        "sslmode=verify-full&sslrootcert={}",
        certs.path("ca.pem").display()
    );
    assert_eq!(
        connect(&database(pg.url("localhost", &in_url), other.clone())).await,
        Ok(true)
    );

    // a CA that did not sign the server's certificate: refused, saying why
    let err = connect(&database(
        pg.url("localhost", "sslmode=verify-full"),
        other.clone(),
    ))
    .await
    .unwrap_err();
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    let err = connect(&database(pg.url("localhost", "sslmode=verify-ca"), other))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // without a CA, verify-full trusts the system's roots only, which never signed it
    let err = connect(&database(pg.url("localhost", "sslmode=verify-full"), None))
        .await
        .unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // the certificate names localhost, not 127.0.0.1: only verify-full compares the name
    let err = connect(&database(
        pg.url("127.0.0.1", "sslmode=verify-full"),
        ca.clone(),
    ))
    .await
    .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(
        connect(&database(
            pg.url("127.0.0.1", "sslmode=verify-ca"),
            ca.clone()
        ))
        .await,
        Ok(true)
    );
    // require encrypts without checking (libpq's meaning); disable does not encrypt
    assert_eq!(
        connect(&database(pg.url("127.0.0.1", "sslmode=require"), None)).await,
        Ok(true)
    );
    assert_eq!(
        connect(&database(pg.url("127.0.0.1", "sslmode=disable"), None)).await,
        Ok(false)
    );

    // the whole service over verify-full: migrations, register and login
    let url = pg.url("localhost", "sslmode=verify-full");
    let mut app = TestApp::spawn_with(|c| {
        c.database.url = Secret::new(url.replace("usher_tls", "usher_tls_app"));
        c.database.ca_file = ca.clone();
    })
    .await;
    let u = app.user().await;
    assert_eq!(app.me(&u.access).await.status(), 200);
    app.stop().await;
}

/// A private redis-server that speaks only TLS; killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(certs: &Certs) -> Option<TlsRedis> {
        let bin = tool("redis-server", &[])?;
        let port = free_port();
        let child = Command::new(bin)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(certs.path("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.path("ca.pem"))
            .args(["--tls-auth-clients", "no", "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = TlsRedis { port, child };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the private TLS redis-server did not start");
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_over_tls_carries_revocations() {
    let Some(certs) = Certs::make() else { return };
    let Some(redis) = TlsRedis::start(&certs) else {
        return;
    };
    let ca = Some(certs.path("ca.pem"));

    // a CA that did not sign the server's certificate: Redis counts as down
    let mut wrong = test_config().redis;
    wrong.url = Secret::new(redis.url());
    wrong.ca_file = Some(certs.path("other-ca.pem"));
    assert!(!usher::kv::Kv::new(&wrong).unwrap().ping().await);

    let url = redis.url();
    let a = TestApp::spawn_with(|c| {
        c.redis.url = Secret::new(url.clone());
        c.redis.ca_file = ca.clone();
    })
    .await;
    assert!(a.state.kv.ping().await, "usher reaches Redis over TLS");
    let b = a.replica().await;
    assert!(a.state.revocation.feed_is_up() && b.state.revocation.feed_is_up());

    let u = a.user().await;
    let list: Value = json_of(a.sessions(&u.access).await).await;
    let sid = list["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(b.me(&u.access).await.status(), 200);
    assert_eq!(a.logout(&u.access).await.status(), 204);
    // the revocation is in the TLS Redis, and the other replica heard it on the feed
    let (hash, field) = crate::revocation::mark(&a.config.redis.prefix, "s", &sid);
    let mut key = redis::pipe();
    key.cmd("HEXISTS").arg(hash).arg(field);
    let stored: (u32,) = a.state.kv.run(&key).await.unwrap();
    assert_eq!(stored, (1,));
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.me(&u.access).await.status() == 401
        })
        .await
    );
    assert_eq!(problem(b.me(&u.access).await).await.1, "token_revoked");
}
