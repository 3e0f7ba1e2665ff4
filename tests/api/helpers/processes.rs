//! Programs the tests run as child processes: the `usher` binary, redis-server, and finding
//! the others (and a port for each) or failing when they are missing.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{database_name, drop_database, eventually, test_config, TestApp};

/// Exit success, stdout, stderr.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The `usher` binary set up for `app`'s database, Redis key space and route map, and nothing
/// from the developer's shell.
pub fn usher_command_for(app: &TestApp) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_usher"));
    cmd.env_remove("USHER_CONFIG")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("USHER_DATABASE__URL", app.config.database.url.expose())
        .env("USHER_REDIS__URL", app.config.redis.url.expose())
        .env("USHER_REDIS__PREFIX", &app.config.redis.prefix)
        .env("USHER_ROUTES__FILE", &app.config.routes.file);
    cmd
}

/// Runs `usher <args>` against `app`'s database and Redis.
pub async fn usher_for(app: &TestApp, args: &[&str]) -> Run {
    usher_command_for(app)
        .args(args)
        .output()
        .await
        .expect("the usher binary runs")
        .into()
}

/// The `usher` binary, without the variables of the old service a developer's shell may set.
pub fn usher_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_usher"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG");
    cmd
}

/// `usher serve` as a child process on free ports, its stderr captured.
pub struct Served {
    child: Child,
    pub api: u16,
    pub internal: u16,
    database: String,
}

impl Served {
    pub fn start(env: &[(&str, &str)]) -> Served {
        let config = test_config();
        let (api, internal) = (free_port(), free_port());
        let mut cmd = usher_command();
        cmd.arg("serve")
            .env("USHER_DATABASE__URL", config.database.url.expose())
            .env("USHER_REDIS__PREFIX", &config.redis.prefix)
            .env("USHER_ROUTES__FILE", &config.routes.file)
            .env("USHER_LISTEN__API", format!("127.0.0.1:{api}"))
            .env("USHER_LISTEN__INTERNAL", format!("127.0.0.1:{internal}"))
            .env("USHER_PASSWORDS__MEMORY_KIB", "1024")
            .env("USHER_PASSWORDS__ITERATIONS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Served {
            child: cmd.spawn().unwrap(),
            api,
            internal,
            database: database_name(&config),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api)
    }

    pub fn internal_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.internal)
    }

    pub async fn wait_ready(&self, client: &reqwest::Client) -> Value {
        let url = self.internal_url("/readyz");
        let ready = eventually(Duration::from_secs(30), || async {
            status_of(client, &url).await == Some(200)
        })
        .await;
        assert!(ready, "usher serve should become ready");
        client
            .get(self.internal_url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// SIGKILL, as a crash or a lost node: no drain, every connection reset at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the exit; returns whether it succeeded, and stderr.
    pub async fn wait_exit(mut self) -> (bool, String) {
        let mut exited = None;
        eventually(Duration::from_secs(30), || {
            exited = self.child.try_wait().unwrap();
            std::future::ready(exited.is_some())
        })
        .await;
        let Some(status) = exited else {
            let _ = self.child.kill();
            panic!("usher did not exit after SIGTERM");
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
        }
        drop_database(&self.database).await;
        (status.success(), stderr)
    }
}

impl Drop for Served {
    /// A test that failed half-way leaves no usher running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub async fn status_of(client: &reqwest::Client, url: &str) -> Option<u16> {
    let r = client.get(url).send().await.ok()?;
    Some(r.status().as_u16())
}

/// A private redis-server on a free port, killed on drop: for Redis fault tests.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut s = RedisServer { port, child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(which("redis-server"))
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the Redis fault tests");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the private redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port for a server a test starts as a child process (redis-server, PostgreSQL, a gateway,
/// `usher serve`), which cannot be handed a bound listener.
///
/// Taking a port from `bind(0)` and closing it races: the kernel gives the same ephemeral range
/// to every `bind(0)` (the in-process ushers of the other tests) and to the source port of
/// every outgoing connection, so another test could take the port before the child binds it.
/// These ports come from below that range instead, where neither lands; each is handed out once
/// per test process, starting at an offset from the process id so that two test processes
/// rarely meet, and only when nothing is bound to it at the moment.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOW).max(1_000);
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (offset + n) % span).expect("a port number");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// Finds a binary on PATH (or the usual sbin folders).
pub fn which(name: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"])
    {
        let candidate = std::path::Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate.to_string_lossy().into_owned();
        }
    }
    name.to_owned()
}

/// A tool (on PATH, else the first of `candidates` that exists). When it is missing the test
/// fails, unless it is skipped on purpose: see [`missing`].
pub fn tool(name: &str, candidates: &[std::path::PathBuf]) -> Option<std::path::PathBuf> {
    let found = std::iter::once(std::path::PathBuf::from(which(name)))
        .chain(candidates.iter().cloned())
        .find(|p| p.is_absolute() && p.is_file());
    if found.is_none() {
        missing(name);
    }
    found
}

/// The variable that skips the tests needing `program` when it is missing: the gateways have
/// their own, everything else (initdb, redis-server, openssl, kubernetes-validate...) shares one.
pub fn skip_variable(program: &str) -> &'static str {
    match program {
        "envoy" | "nginx" | "traefik" => "USHER_SKIP_GATEWAYS",
        _ => "USHER_SKIP_MISSING_TOOLS",
    }
}

/// A test found `program` missing. It fails, so that a test that did
/// not run never passes: always with `CI=true`, and elsewhere unless the program's
/// [`skip_variable`] is `1`, in which case it says so and the caller returns.
pub fn missing(program: &str) {
    let skip = skip_variable(program);
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let skipped = std::env::var(skip).as_deref() == Ok("1");
    assert!(
        skipped && !ci,
        "{program} is not installed (bash .ci/install-gateways installs the gateways and \
         kubernetes-validate); set {skip}=1 to skip the tests that need it{}",
        if ci {
            ", which CI=true does not allow"
        } else {
            ""
        }
    );
    eprintln!("NOTICE: {program} is not installed and {skip}=1: skipping this test");
}
