//! Operations: readiness with Redis down, drain on SIGTERM, `usher healthcheck`, service-link
//! variables, secrets from files, logs, retention, operational metrics.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use usher::config::{Dur, Secret};

use crate::helpers::{
    eventually, free_port, status_of, usher_command, RedisServer, Served, TestApp,
};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn internal_get(app: &TestApp, path: &str) -> (u16, String) {
    let r = app.client.get(app.internal_url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn redis_down_is_degraded_not_unready() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let app = TestApp::spawn_with(|c| c.redis.url = Secret::new(url.clone())).await;
    let (status, body) = internal_get(&app, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ready"
    );
    let u = app.user().await;

    redis.stop();
    let degraded = eventually(Duration::from_secs(10), || async {
        let (status, body) = internal_get(&app, "/readyz").await;
        status == 200 && body.contains("\"degraded\"")
    })
    .await;
    assert!(degraded, "/readyz should stay 200 and say degraded");
    let (_, body) = internal_get(&app, "/readyz").await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["redis"], "unavailable");
    assert_eq!(body["change_feed"], "down");
    let (_, metrics) = internal_get(&app, "/metrics").await;
    assert!(
        metrics.contains("usher_readiness{state=\"degraded\"} 1")
            && metrics.contains("usher_readiness{state=\"ready\"} 0")
            && metrics.contains("usher_redis_up 0"),
        "{metrics}"
    );
    // and usher keeps serving
    assert_eq!(app.login(&u.email, &u.password).await.status(), 200);
    assert_eq!(app.me(&u.access).await.status(), 200);
}

/// The value of the counter `name` in a Prometheus text; 0 when absent.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn healthcheck(internal: &str) -> Output {
    usher_command()
        .arg("healthcheck")
        .env("USHER_LISTEN__INTERNAL", internal)
        .output()
        .unwrap()
}

#[tokio::test]
async fn started_while_redis_is_down_usher_becomes_ready_serves_and_logs_the_outage_once() {
    // Nothing listens on this port: Redis is down from the start.
    let redis = format!("redis://127.0.0.1:{}/0", free_port());
    let served = Served::start(&[("USHER_REDIS__URL", &redis), ("USHER_LOG__FORMAT", "json")]);
    let client = reqwest::Client::new();
    let ready = served.wait_ready(&client).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["redis"], "unavailable", "{ready}");
    let credentials = json!({"email": "someone@cinema.test", "password": "long enough"});
    let r = client
        .post(served.url("/api/v1/auth/register"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(served.url("/api/v1/auth/login"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // `usher healthcheck` reaches the internal listener through 127.0.0.1 when configured
    // with 0.0.0.0, and degraded counts as healthy.
    let out = healthcheck(&format!("0.0.0.0:{}", served.internal));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("degraded"), "{}", text(&out));

    // Until the feed has failed and retried a few times: each retry could have logged again.
    let metrics = served.internal_url("/metrics");
    let retried = eventually(Duration::from_secs(20), || async {
        let text = match client.get(&metrics).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        counter(&text, "usher_change_feed_failures_total") >= 4
    })
    .await;
    assert!(retried, "the change feed should retry while Redis is down");
    served.sigterm();
    let internal = served.internal;
    let (ok, stderr) = served.wait_exit().await;
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes into a pipe: {stderr}"
    );
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let down = lines
        .iter()
        .filter(|l| l["message"] == "change feed down; checks ask Redis or PostgreSQL")
        .count();
    assert_eq!(down, 1, "one line per state change: {stderr}");
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["path"] == "/api/v1/auth/login")
        .unwrap_or_else(|| panic!("a request line: {stderr}"));
    assert_eq!(request["status"], 200, "fields at the top level: {request}");
    assert!(request.get("fields").is_none(), "{request}");

    let out = healthcheck(&format!("127.0.0.1:{internal}"));
    assert!(!out.status.success(), "nothing listens any more");
}

#[tokio::test]
async fn sigterm_drains_readiness_first_then_exits_zero() {
    let served = Served::start(&[("USHER_LISTEN__DRAIN_DELAY", "5s")]);
    let client = reqwest::Client::new();
    served.wait_ready(&client).await;
    served.sigterm();
    let readyz = served.internal_url("/readyz");
    let draining = eventually(Duration::from_secs(5), || async {
        status_of(&client, &readyz).await == Some(503)
    })
    .await;
    assert!(draining, "/readyz should answer 503 once SIGTERM arrives");
    let body: Value = client
        .get(served.internal_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "draining");
    // still serving: health, a gateway check, the API
    let health = client
        .get(served.internal_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let check = client
        .get(served.internal_url("/auth"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/api/v1/auth/login")
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 200);
    let jwks = client
        .get(served.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    let internal = served.internal_url("/healthz");
    let (ok, stderr) = served.wait_exit().await;
    assert!(ok, "exit 0 after the drain: {stderr}");
    assert!(stderr.contains("draining"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "text logs into a pipe carry no colour codes: {stderr}"
    );
    assert!(client.get(internal).send().await.is_err());
}

#[test]
fn service_links_secret_files_and_bad_values_through_the_binary() {
    let dir = std::env::temp_dir().join(format!("usher-ops-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("database_url");
    std::fs::write(
        &secret,
        "postgres://app:hunter2@db:5432/usher?password=hunter2\n",
    )
    .unwrap();
    let out = usher_command()
        .arg("config")
        .env("USHER_PORT", "tcp://10.0.0.1:8080")
        .env("USHER_SERVICE_HOST", "10.0.0.1")
        .env("USHER_PORT_8080_TCP_ADDR", "10.0.0.1")
        .env("USHER_DATABASE__URL_FILE", &secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("postgres://app:***@db:5432/usher?password=***"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");

    let out = usher_command()
        .arg("config")
        .env("USHER_TOKENS__ACCESS_TTL", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("tokens.access_ttl = 0")
            && text(&out).contains("USHER_TOKENS__ACCESS_TTL"),
        "{}",
        text(&out)
    );
    let toml = dir.join("usher.toml");
    std::fs::write(&toml, "[login]\nwindow = -5\n").unwrap();
    let out = usher_command()
        .args(["--config", toml.to_str().unwrap(), "config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("login.window") && said.contains("negative") && said.contains("usher.toml"),
        "{said}"
    );
    assert!(!said.contains("untagged"), "{said}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn superuser_password_comes_from_a_file_or_an_unechoed_pipe() {
    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("usher-su-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, "from a file, long enough\n").unwrap();
    let base = |cmd: &mut Command| {
        cmd.env("USHER_DATABASE__URL", app.config.database.url.expose())
            .env("USHER_REDIS__PREFIX", &app.config.redis.prefix)
            .env("USHER_ROUTES__FILE", &app.config.routes.file)
            .env("USHER_PASSWORDS__MEMORY_KIB", "1024")
            .env("USHER_PASSWORDS__ITERATIONS", "1")
            .env_remove(usher::cli::SUPERUSER_PASSWORD_VAR);
    };
    let mut cmd = usher_command();
    base(&mut cmd);
    let out = cmd
        .args(["superuser", "create", "--email", "root@cinema.test"])
        .env("USHER_SUPERUSER_PASSWORD_FILE", &file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        app.login("root@cinema.test", "from a file, long enough")
            .await
            .status(),
        200
    );

    // The interactive form with a pipe for stdin: reads the lines, prints none of the password.
    let mut cmd = usher_command();
    base(&mut cmd);
    let mut child = cmd
        .args(["superuser", "create"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped@cinema.test\nsecret from a pipe\nsecret from a pipe\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("secret from a pipe"), "{}", text(&out));
    assert_eq!(
        app.login("piped@cinema.test", "secret from a pipe")
            .await
            .status(),
        200
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn logins_are_counted_by_outcome() {
    let app = TestApp::spawn_with(|c| c.login.max_failures = 2).await;
    let u = app.user().await;
    for _ in 0..2 {
        assert_eq!(app.login(&u.email, "wrong password").await.status(), 401);
    }
    assert_eq!(app.login(&u.email, &u.password).await.status(), 429);
    let (_, metrics) = internal_get(&app, "/metrics").await;
    for needle in [
        "usher_logins_total{outcome=\"success\"} 1",
        "usher_logins_total{outcome=\"failure\"} 2",
        "usher_logins_total{outcome=\"lockout\"} 1",
        "usher_build_info{version=\"",
        "usher_db_pool_connections{state=\"idle\"}",
        "usher_db_pool_connections{state=\"in_use\"}",
        "usher_db_pool_max_connections 4",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn retention_prunes_expired_sessions_and_old_history_in_batches() {
    let app = TestApp::spawn_with(|c| {
        c.retention.batch = 2;
        c.retention.login_history = Dur::secs(30 * 86400);
    })
    .await;
    let u = app.user().await;
    // Five sessions long expired, two refresh-token rows each; one expired a minute ago (its
    // access tokens may still be alive: kept); history rows from last year.
    app.sql(&format!(
        "insert into sessions (id, user_id, created_at, expires_at)
         select gen_random_uuid(), '{id}', now() - interval '90 days', now() - interval '60 days'
         from generate_series(1, 5);
         insert into refresh_tokens (hash, session_id)
         select sha256((random()::text || s.id::text)::bytea), s.id from sessions s, generate_series(1, 2)
         where s.expires_at < now();
         insert into sessions (id, user_id, expires_at)
         values (gen_random_uuid(), '{id}', now() - interval '1 minute');
         insert into login_history (user_id, event, at)
         select '{id}', 'login', now() - interval '1 year' from generate_series(1, 3);",
        id = u.id
    ))
    .await;
    let count = |sql: &'static str| {
        let app = &app;
        async move {
            let db = app.state.db.get().await.unwrap();
            db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0)
        }
    };
    let history_before = count("select count(*) from login_history").await;

    // another replica holds the lock: nothing happens here
    let holder = app.state.db.get().await.unwrap();
    holder
        .execute(
            "select pg_advisory_lock($1)",
            &[&usher::store::retention::LOCK_KEY],
        )
        .await
        .unwrap();
    assert_eq!(
        usher::retention::prune_once(&app.state).await.unwrap(),
        None
    );
    holder
        .execute(
            "select pg_advisory_unlock($1)",
            &[&usher::store::retention::LOCK_KEY],
        )
        .await
        .unwrap();
    drop(holder);

    let pruned = usher::retention::prune_once(&app.state)
        .await
        .unwrap()
        .expect("the lock is free");
    assert_eq!(
        (pruned.sessions, pruned.refresh_tokens, pruned.login_history),
        (5, 10, 3)
    );
    assert_eq!(
        count("select count(*) from sessions where expires_at < now() - interval '1 day'").await,
        0
    );
    assert_eq!(count("select count(*) from sessions").await, 2);
    assert_eq!(
        count("select count(*) from login_history").await,
        history_before - 3
    );
    // the live session still works, refresh included
    assert_eq!(app.me(&u.access).await.status(), 200);
    let r = app.refresh(&u.refresh).await;
    assert_eq!(r.status(), 200);
    let (_, metrics) = internal_get(&app, "/metrics").await;
    for needle in [
        "usher_retention_pruned_rows_total{table=\"sessions\"} 5",
        "usher_retention_pruned_rows_total{table=\"refresh_tokens\"} 10",
        "usher_retention_pruned_rows_total{table=\"login_history\"} 3",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
    // nothing left: a second run prunes nothing
    let again = usher::retention::prune_once(&app.state).await.unwrap();
    assert_eq!(again, Some(Default::default()));
}
