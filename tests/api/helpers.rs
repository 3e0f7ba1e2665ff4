//! The test harness: each `TestApp` gets a fresh PostgreSQL database, its own Redis key
//! prefix, and an usher in-process on port 0. Dropping it stops usher and removes both.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use usher::app::Application;
use usher::config::{Config, Dur, Secret};

/// Where the tests find PostgreSQL and Redis (the README's defaults).
pub fn admin_url() -> String {
    std::env::var("USHER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The shared Redis of the tests.
pub fn redis_url() -> String {
    std::env::var("USHER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn database_url(name: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// A configuration for a test: fresh names, port 0, cheap password hashing.
pub fn test_config() -> Config {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut c = Config::default();
    c.listen.api = "127.0.0.1:0".parse().unwrap();
    c.listen.internal = "127.0.0.1:0".parse().unwrap();
    c.listen.shutdown_grace = Dur::secs(2);
    c.listen.drain_delay = Dur::secs(0);
    c.database.url = Secret::new(database_url(&format!("usher_test_{id}")));
    c.database.pool_size = 4;
    c.redis.url = Secret::new(redis_url());
    c.redis.prefix = format!("usher-test:{id}:");
    c.passwords.memory_kib = 1024;
    c.passwords.iterations = 1;
    // Tests send many requests from one address; those about the per-IP limit set it.
    c.login.per_ip = 0;
    c.routes.file = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/gateway-config/routes.toml"
    ));
    c
}

/// A running usher and an HTTP client for it.
pub struct TestApp {
    pub config: Config,
    pub api: SocketAddr,
    pub internal: SocketAddr,
    pub client: Client,
    pub state: std::sync::Arc<usher::app::State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Only the first instance over a database removes it.
    owner: bool,
}

impl TestApp {
    /// usher with the test defaults.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// usher with the test defaults changed by `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config();
        adjust(&mut config);
        let app = Self::start(config, true).await;
        app.wait_for_feed().await;
        app
    }

    /// Like [`TestApp::spawn_with`], for a configuration whose Redis does not answer: it does
    /// not wait for the change feed.
    pub async fn spawn_without_redis(adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config();
        adjust(&mut config);
        Self::start(config, true).await
    }

    /// A second usher sharing this one's database and Redis key space (another replica).
    pub async fn replica(&self) -> TestApp {
        self.replica_with(|_| {}).await
    }

    /// Another replica, its configuration (on ports of its own) changed by `adjust`: say fixed
    /// ports, to stop it and start it again on them.
    pub async fn replica_with(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config.clone();
        config.listen.api = "127.0.0.1:0".parse().unwrap();
        config.listen.internal = "127.0.0.1:0".parse().unwrap();
        adjust(&mut config);
        let app = Self::start(config, false).await;
        app.wait_for_feed().await;
        app
    }

    async fn start(config: Config, owner: bool) -> TestApp {
        let app = Application::build(config.clone())
            .await
            .expect("usher should start against the test PostgreSQL and Redis");
        let (api, internal, state) = (app.api_addr(), app.internal_addr(), app.state());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("usher should stop cleanly");
        });
        TestApp {
            config,
            api,
            internal,
            client: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            state,
            stop: Some(stop),
            task: Some(task),
            owner,
        }
    }

    /// Waits (bounded) until the change feed is subscribed, so replicas see each other; panics
    /// when it is not within 5 s.
    pub async fn wait_for_feed(&self) {
        let up = eventually(Duration::from_secs(5), || async {
            self.state.revocation.feed_is_up()
        })
        .await;
        assert!(up, "the change feed should be subscribed within 5 s");
    }

    /// Stops usher like SIGTERM does (drains, closes, finishes in-flight requests) and waits
    /// for it to exit.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("usher should stop cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    pub fn internal_url(&self, path: &str) -> String {
        format!("http://{}{}", self.internal, path)
    }

    /// The Prometheus text of the internal listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.internal_url("/metrics"))
            .send()
            .await
            .expect("the internal listener should answer")
            .text()
            .await
            .expect("a text body")
    }

    /// Any request to the API listener.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut r = self.client.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.expect("the API should answer")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.request(Method::GET, path, token, None).await
    }

    /// GET, and the JSON body whatever the status.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> Value {
        self.get(path, token)
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    /// POST, and the JSON body whatever the status.
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        self.post(path, token, body)
            .await
            .json()
            .await
            .expect("a JSON body")
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.post(
            "/api/v1/auth/register",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    // One method per endpoint, answering the response as it came; `request` stays for the odd
    // paths and bodies of the bad-input tests.

    /// `POST /api/v1/auth/refresh`.
    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post(
            "/api/v1/auth/refresh",
            None,
            json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// `POST /api/v1/auth/logout`.
    pub async fn logout(&self, token: &str) -> Response {
        self.post("/api/v1/auth/logout", Some(token), json!({}))
            .await
    }

    /// `POST /api/v1/auth/logout-all`.
    pub async fn logout_all(&self, token: &str) -> Response {
        self.post("/api/v1/auth/logout-all", Some(token), json!({}))
            .await
    }

    /// `GET /api/v1/auth/sessions`.
    pub async fn sessions(&self, token: &str) -> Response {
        self.get("/api/v1/auth/sessions", Some(token)).await
    }

    /// `GET /api/v1/auth/history`.
    pub async fn login_history(&self, token: &str) -> Response {
        self.get("/api/v1/auth/history", Some(token)).await
    }

    /// `GET /api/v1/users/me`.
    pub async fn me(&self, token: &str) -> Response {
        self.get("/api/v1/users/me", Some(token)).await
    }

    /// `GET /api/v1/users/{id}`.
    pub async fn user_by_id(&self, token: &str, id: &str) -> Response {
        self.get(&format!("/api/v1/users/{id}"), Some(token)).await
    }

    /// `GET /api/v1/users/{id}/roles`.
    pub async fn user_roles(&self, token: &str, id: &str) -> Response {
        self.get(&format!("/api/v1/users/{id}/roles"), Some(token))
            .await
    }

    /// `PUT /api/v1/users/{id}/roles/{role}`.
    pub async fn give_role(&self, token: &str, id: &str, role: &str) -> Response {
        let path = format!("/api/v1/users/{id}/roles/{role}");
        self.request(Method::PUT, &path, Some(token), None).await
    }

    /// `DELETE /api/v1/users/{id}/roles/{role}`.
    pub async fn take_role(&self, token: &str, id: &str, role: &str) -> Response {
        let path = format!("/api/v1/users/{id}/roles/{role}");
        self.request(Method::DELETE, &path, Some(token), None).await
    }

    /// `GET /api/v1/roles`.
    pub async fn roles(&self, token: &str) -> Response {
        self.get("/api/v1/roles", Some(token)).await
    }

    /// `GET /api/v1/permissions`.
    pub async fn permissions(&self, token: &str) -> Response {
        self.get("/api/v1/permissions", Some(token)).await
    }

    /// Registers and logs in a fresh user; returns (user id, access token, refresh token).
    pub async fn user(&self) -> Signed {
        let email = format!("{}@cinema.test", uuid::Uuid::new_v4().simple());
        self.user_with(&email, "correct horse battery").await
    }

    pub async fn user_with(&self, email: &str, password: &str) -> Signed {
        let r = self.register(email, password).await;
        assert_eq!(r.status(), StatusCode::CREATED, "register");
        let user: Value = r.json().await.unwrap();
        let r = self.login(email, password).await;
        assert_eq!(r.status(), StatusCode::OK, "login");
        let t: Value = r.json().await.unwrap();
        Signed {
            id: user["id"].as_str().unwrap().to_owned(),
            email: email.to_owned(),
            password: password.to_owned(),
            access: t["access_token"].as_str().unwrap().to_owned(),
            refresh: t["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    /// A fresh user made a superuser the way an operator makes one (`usher superuser create
    /// --promote-existing`), signed in again so that the token carries the role.
    pub async fn superuser(&self) -> Signed {
        let who = self.user().await;
        let run = usher_for(
            self,
            &[
                "superuser",
                "create",
                "--email",
                &who.email,
                "--promote-existing",
            ],
        )
        .await;
        assert!(run.ok, "superuser create: {}{}", run.stdout, run.stderr);
        self.user_with_roles(&who).await
    }

    /// `who` signed in again: tokens that carry their current roles.
    pub async fn user_with_roles(&self, who: &Signed) -> Signed {
        let r = self.login(&who.email, &who.password).await;
        assert_eq!(r.status(), StatusCode::OK, "login of {}", who.email);
        let t: Value = r.json().await.unwrap();
        Signed {
            access: t["access_token"].as_str().unwrap().to_owned(),
            refresh: t["refresh_token"].as_str().unwrap().to_owned(),
            ..who.clone()
        }
    }

    /// Grants `permission` to the role named `role` through the API, as a superuser: the way
    /// an operator does, so the change reaches every replica over the feed.
    pub async fn grant(&self, role: &str, permission: &str) {
        self.change_grants(role, |grants| grants.push(permission.to_owned()))
            .await;
    }

    /// Takes `permission` from the role named `role`, through the API like [`TestApp::grant`].
    pub async fn revoke(&self, role: &str, permission: &str) {
        self.change_grants(role, |grants| grants.retain(|p| p != permission))
            .await;
    }

    async fn change_grants(&self, role: &str, change: impl FnOnce(&mut Vec<String>)) {
        let root = self.superuser().await;
        let roles = self.get_json("/api/v1/roles", Some(&root.access)).await;
        let found = roles["items"]
            .as_array()
            .expect("a list of roles")
            .iter()
            .find(|r| r["name"] == role)
            .unwrap_or_else(|| panic!("no role named {role}"));
        let mut grants: Vec<String> =
            serde_json::from_value(found["permissions"].clone()).expect("permission names");
        change(&mut grants);
        let id = found["id"].as_str().unwrap();
        let r = self
            .request(
                Method::PATCH,
                &format!("/api/v1/roles/{id}"),
                Some(&root.access),
                Some(json!({ "permissions": grants })),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "changing the grants of {role}");
    }

    /// Runs SQL against this test's database.
    pub async fn sql(&self, statement: &str) {
        let db = self.state.db.get().await.unwrap();
        db.batch_execute(statement).await.unwrap();
    }
}

/// A signed-in test user.
#[derive(Debug, Clone)]
pub struct Signed {
    pub id: String,
    pub email: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if !self.owner {
            return;
        }
        let url = self.config.database.url.expose().to_owned();
        let redis = self.config.redis.url.expose().to_owned();
        let prefix = self.config.redis.prefix.clone();
        // Drop runs outside async; clean up on a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let name = url.rsplit('/').next().unwrap_or_default().to_owned();
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("drop database if exists \"{name}\" with (force)"))
                        .await;
                }
                if let Ok(client) = redis::Client::open(redis.as_str()) {
                    if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(format!("{prefix}*"))
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                        if !keys.is_empty() {
                            let _: Result<(), _> =
                                redis::cmd("DEL").arg(keys).query_async(&mut c).await;
                        }
                    }
                }
            });
        })
        .join();
    }
}

/// The database name of a configuration.
pub fn database_name(config: &Config) -> String {
    config
        .database
        .url
        .expose()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs SQL as the PostgreSQL superuser, on the `postgres` database.
pub async fn admin_sql(statement: &str) {
    let (client, conn) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("the admin connection to PostgreSQL");
    tokio::spawn(conn);
    client
        .batch_execute(statement)
        .await
        .expect("admin SQL runs");
}

/// Drops a test database, whoever is connected to it.
pub async fn drop_database(name: &str) {
    admin_sql(&format!("drop database if exists \"{name}\" with (force)")).await;
}

/// PostgreSQL down for one app: its database refuses connections and the open ones are cut.
/// `end` lets it back in; the database is dropped with the app either way.
pub struct PostgresOutage {
    name: String,
}

impl PostgresOutage {
    pub async fn start(app: &TestApp) -> PostgresOutage {
        let name = database_name(&app.config);
        admin_sql(&format!(
            "alter database \"{name}\" allow_connections false;
             select pg_terminate_backend(pid) from pg_stat_activity
             where datname = '{name}' and pid <> pg_backend_pid();"
        ))
        .await;
        PostgresOutage { name }
    }

    pub async fn end(self) {
        admin_sql(&format!(
            "alter database \"{}\" allow_connections true",
            self.name
        ))
        .await;
    }
}

/// `field` of every element of the array `items`, as strings.
pub fn strings(items: &Value, field: &str) -> Vec<String> {
    items
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| item[field].as_str().expect("a string field").to_owned())
        .collect()
}

/// Reads a problem-details answer: (status, code).
pub async fn problem(r: Response) -> (u16, String) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(
        ct.as_deref(),
        Some("application/problem+json"),
        "problem content type; body {body}"
    );
    assert_eq!(
        body["status"].as_u64(),
        Some(u64::from(status)),
        "status field; body {body}"
    );
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

/// Polls `probe` until it is true, for at most `within`; true when it became true.
/// Used to show that something happens within a bound, never to measure speed.
pub async fn eventually<F, Fut>(within: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
