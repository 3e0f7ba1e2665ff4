//! The test harness: each `TestApp` gets a fresh PostgreSQL database, its own Redis key
//! prefix, and an usher in-process on port 0. Dropping it stops usher and removes both.

#![allow(dead_code)]

mod database;
mod processes;

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use usher::app::Application;
use usher::config::{Config, Dur, Secret};
use usher::http::endpoint::Endpoint;

pub use database::*;
pub use processes::*;

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

    /// Any request to the API listener. The answer is checked against `openapi.json`
    /// (`schema::check`) before the test sees it.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut r = self.client.request(method.clone(), self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let answer = r.send().await.expect("the API should answer");
        let (status, version, headers) =
            (answer.status(), answer.version(), answer.headers().clone());
        let bytes = answer.bytes().await.expect("the whole answer");
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
        let path = path.split('?').next().unwrap_or_default();
        crate::schema::check(&method, path, status.as_u16(), content_type, &bytes);
        let mut rebuilt = http::Response::new(bytes);
        *rebuilt.status_mut() = status;
        *rebuilt.version_mut() = version;
        *rebuilt.headers_mut() = headers;
        Response::from(rebuilt)
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

    /// `endpoint` with `query` (when not empty) and `body`, `token` sent as a bearer token or
    /// no `Authorization` header when it is [`ANONYMOUS`].
    async fn call(
        &self,
        endpoint: Endpoint<'_>,
        query: &str,
        token: &str,
        body: Option<Value>,
    ) -> Response {
        let mut path = endpoint.sample_path();
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let token = (!token.is_empty()).then_some(token);
        self.request(endpoint.method(), &path, token, body).await
    }

    // One method per operation of the API, each named by its `Endpoint` (which knows its
    // method and path), answering the response as it came. `request`, `get` and `post` stay
    // for the tests about paths: bad input, normalisation, methods, the gateways. Every
    // `token` may be `ANONYMOUS`.

    /// [`Endpoint::Register`].
    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.call(
            Endpoint::Register,
            "",
            ANONYMOUS,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    /// [`Endpoint::Login`].
    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.call(
            Endpoint::Login,
            "",
            ANONYMOUS,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    /// [`Endpoint::Refresh`].
    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.call(
            Endpoint::Refresh,
            "",
            ANONYMOUS,
            Some(json!({ "refresh_token": refresh_token })),
        )
        .await
    }

    /// [`Endpoint::Logout`].
    pub async fn logout(&self, token: &str) -> Response {
        self.call(Endpoint::Logout, "", token, Some(json!({})))
            .await
    }

    /// [`Endpoint::LogoutAll`].
    pub async fn logout_all(&self, token: &str) -> Response {
        self.call(Endpoint::LogoutAll, "", token, Some(json!({})))
            .await
    }

    /// [`Endpoint::Sessions`].
    pub async fn sessions(&self, token: &str) -> Response {
        self.call(Endpoint::Sessions, "", token, None).await
    }

    /// [`Endpoint::EndSession`].
    pub async fn end_session(&self, token: &str, session: &str) -> Response {
        self.call(Endpoint::EndSession { session }, "", token, None)
            .await
    }

    /// [`Endpoint::OwnHistory`].
    pub async fn login_history(&self, token: &str) -> Response {
        self.call(Endpoint::OwnHistory, "", token, None).await
    }

    /// [`Endpoint::OwnHistory`] with `query` (say `page=2&per_page=2`).
    pub async fn login_history_page(&self, token: &str, query: &str) -> Response {
        self.call(Endpoint::OwnHistory, query, token, None).await
    }

    /// [`Endpoint::Me`].
    pub async fn me(&self, token: &str) -> Response {
        self.call(Endpoint::Me, "", token, None).await
    }

    /// [`Endpoint::UpdateMe`].
    pub async fn update_me(&self, token: &str, body: Value) -> Response {
        self.call(Endpoint::UpdateMe, "", token, Some(body)).await
    }

    /// [`Endpoint::DisableMe`].
    pub async fn disable_me(&self, token: &str) -> Response {
        self.call(Endpoint::DisableMe, "", token, None).await
    }

    /// [`Endpoint::ChangePassword`] with `body` (`old_password`, `new_password`).
    pub async fn change_password(&self, token: &str, body: Value) -> Response {
        self.call(Endpoint::ChangePassword, "", token, Some(body))
            .await
    }

    /// [`Endpoint::Users`], with `query` (say `email=films&page=2`) when not empty.
    pub async fn users(&self, token: &str, query: &str) -> Response {
        self.call(Endpoint::Users, query, token, None).await
    }

    /// [`Endpoint::User`].
    pub async fn user_by_id(&self, token: &str, user: &str) -> Response {
        self.call(Endpoint::User { user }, "", token, None).await
    }

    /// [`Endpoint::UpdateUser`].
    pub async fn update_user(&self, token: &str, user: &str, body: Value) -> Response {
        self.call(Endpoint::UpdateUser { user }, "", token, Some(body))
            .await
    }

    /// [`Endpoint::DisableUser`].
    pub async fn disable_user(&self, token: &str, user: &str) -> Response {
        self.call(Endpoint::DisableUser { user }, "", token, None)
            .await
    }

    /// [`Endpoint::UserHistory`].
    pub async fn user_history(&self, token: &str, user: &str) -> Response {
        self.call(Endpoint::UserHistory { user }, "", token, None)
            .await
    }

    /// [`Endpoint::UserRoles`].
    pub async fn user_roles(&self, token: &str, user: &str) -> Response {
        self.call(Endpoint::UserRoles { user }, "", token, None)
            .await
    }

    /// [`Endpoint::AssignRole`].
    pub async fn give_role(&self, token: &str, user: &str, role: &str) -> Response {
        self.call(Endpoint::AssignRole { user, role }, "", token, None)
            .await
    }

    /// [`Endpoint::RemoveRole`].
    pub async fn take_role(&self, token: &str, user: &str, role: &str) -> Response {
        self.call(Endpoint::RemoveRole { user, role }, "", token, None)
            .await
    }

    /// [`Endpoint::Roles`].
    pub async fn roles(&self, token: &str) -> Response {
        self.call(Endpoint::Roles, "", token, None).await
    }

    /// [`Endpoint::CreateRole`].
    pub async fn create_role(&self, token: &str, body: Value) -> Response {
        self.call(Endpoint::CreateRole, "", token, Some(body)).await
    }

    /// [`Endpoint::Role`].
    pub async fn role(&self, token: &str, role: &str) -> Response {
        self.call(Endpoint::Role { role }, "", token, None).await
    }

    /// [`Endpoint::UpdateRole`].
    pub async fn update_role(&self, token: &str, role: &str, body: Value) -> Response {
        self.call(Endpoint::UpdateRole { role }, "", token, Some(body))
            .await
    }

    /// [`Endpoint::DeleteRole`].
    pub async fn delete_role(&self, token: &str, role: &str) -> Response {
        self.call(Endpoint::DeleteRole { role }, "", token, None)
            .await
    }

    /// [`Endpoint::Permissions`].
    pub async fn permissions(&self, token: &str) -> Response {
        self.call(Endpoint::Permissions, "", token, None).await
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
        let roles = json_of(self.roles(&root.access).await).await;
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
            .update_role(&root.access, id, json!({ "permissions": grants }))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "changing the grants of {role}");
    }

    /// Runs SQL against this test's database.
    pub async fn sql(&self, statement: &str) {
        let db = self.state.db.get().await.unwrap();
        db.batch_execute(statement).await.unwrap();
    }
}

/// As a token: none, no `Authorization` header at all.
pub const ANONYMOUS: &str = "";

/// The JSON body of `r`, whatever its status.
pub async fn json_of(r: Response) -> Value {
    r.json().await.expect("a JSON body")
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
