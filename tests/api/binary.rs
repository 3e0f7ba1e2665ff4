//! The real `usher` binary: configuration errors, `config`, `migrate`, `keys rotate`, SIGTERM.

use std::process::{Command, Output};
use std::time::Duration;

use crate::helpers::{database_name, drop_database, eventually, test_config, Served, TestApp};

fn usher(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_usher"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the usher binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn config_prints_the_effective_configuration_with_secrets_masked() {
    let out = usher(
        &["config"],
        &[
            (
                "USHER_DATABASE__URL",
                "postgres://app:hunter2@db:5432/usher",
            ),
            ("ACCESS_EXPIRES_IN_HOURS", "2"),
            ("USHER_LOGIN__MAX_FAILURES", "4"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("postgres://app:***@db:5432/usher"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"));
    assert!(printed.contains("access_ttl = \"2h\""), "{printed}");
    assert!(printed.contains("max_failures = 4"), "{printed}");
}

#[test]
fn unknown_keys_stop_startup_naming_the_key() {
    let out = usher(&["serve"], &[("USHER_TOKENS__ACCESS_TIME", "1h")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("access_time"), "{}", text(&out));
    let dir = std::env::temp_dir().join(format!("usher-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("usher.toml");
    std::fs::write(&file, "[login]\nmax_failures = 3\nlockout = \"1h\"\n").unwrap();
    let out = usher(&["--config", file.to_str().unwrap(), "config"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("lockout"), "{}", text(&out));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn migrate_and_roles_create_are_idempotent_and_create_the_database() {
    let config = test_config();
    let url = config.database.url.expose().to_owned();
    let env = [
        ("USHER_DATABASE__URL", url.as_str()),
        ("USHER_ROUTES__FILE", config.routes.file.to_str().unwrap()),
    ];
    let first = usher(&["migrate"], &env);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("0001_init"), "{}", text(&first));
    let second = usher(&["migrate"], &env);
    assert!(second.status.success());
    assert!(
        text(&second).contains("applied 0 migration"),
        "{}",
        text(&second)
    );
    let roles = usher(&["roles", "create"], &env);
    assert!(roles.status.success(), "{}", text(&roles));
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let names: Vec<String> = client
        .query("select name from roles order by name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["non_registered", "superuser", "user"]);
    let service: i64 = client
        .query_one(
            "select count(*) from permissions where name = 'films_watch' and not builtin",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        service, 1,
        "the route map's service permissions are in the catalog"
    );
    drop(client);
    drop_database(&database_name(&config)).await;
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let config = test_config();
    let a = usher::app::Application::build(config.clone());
    let b = usher::app::Application::build(config.clone());
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    let db = a.state().db.get().await.unwrap();
    let n: i64 = db
        .query_one("select count(*) from schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "sql"))
        })
        .count();
    assert_eq!(n, files as i64, "each migration applied once");
    let keys: i64 = db
        .query_one("select count(*) from signing_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 1, "one signing key, not one per replica");
    drop((db, a, b));
    drop_database(&database_name(&config)).await;
}

#[tokio::test]
async fn keys_rotate_reaches_running_replicas() {
    let app = TestApp::spawn().await;
    let before: serde_json::Value = app.get_json("/.well-known/jwks.json", None).await;
    assert_eq!(before["keys"].as_array().unwrap().len(), 1);
    let out = usher(
        &["keys", "rotate"],
        &[
            ("USHER_DATABASE__URL", app.config.database.url.expose()),
            ("USHER_REDIS__PREFIX", &app.config.redis.prefix),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let both = eventually(Duration::from_secs(2), || async {
        let jwks: serde_json::Value = app.get_json("/.well-known/jwks.json", None).await;
        jwks["keys"].as_array().unwrap().len() == 2
    })
    .await;
    assert!(both, "a running usher should publish the new key");
}

#[tokio::test]
async fn sigterm_stops_serving_and_exits_zero() {
    let served = Served::start(&[]);
    let client = reqwest::Client::new();
    served.wait_ready(&client).await;
    let healthz = served.internal_url("/healthz");
    served.sigterm();
    let (exited, stderr) = served.wait_exit().await;
    assert!(exited, "usher should exit 0 after SIGTERM:\n{stderr}");
    assert!(client.get(healthz).send().await.is_err());
}
