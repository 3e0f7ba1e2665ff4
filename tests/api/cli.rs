//! `usher superuser create`, run as the real binary against the test database.

use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::{json_of, problem, usher_command_for, usher_for, Run, TestApp};
use crate::users::relogin;

/// Runs `usher superuser create --email <email>` against `app`'s database and Redis, with
/// `stdin` on its standard input and the password variable set when `env_password` is.
async fn superuser_create(
    app: &TestApp,
    email: &str,
    stdin: &str,
    env_password: Option<&str>,
) -> Run {
    let env: Vec<(&str, &str)> = env_password
        .map(|p| ("USHER_SUPERUSER_PASSWORD", p))
        .into_iter()
        .collect();
    superuser_create_with(app, &["--email", email], stdin, &env).await
}

/// Runs `usher superuser create <args>` with `stdin` and the variables `env`.
async fn superuser_create_with(
    app: &TestApp,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> Run {
    let mut cmd = usher_command_for(app);
    cmd.args(["superuser", "create"])
        .args(args)
        .env_remove("USHER_SUPERUSER_PASSWORD")
        .env_remove("USHER_SUPERUSER_PASSWORD_FILE")
        .env("USHER_PASSWORDS__MEMORY_KIB", "1024")
        .env("USHER_PASSWORDS__ITERATIONS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("the usher binary should start");
    let mut input = child.stdin.take().unwrap();
    // The command may exit without reading (an existing user needs no password).
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    child.wait_with_output().await.unwrap().into()
}

/// Logs in and checks the account holds `superuser` and every permission of the catalog.
async fn assert_superuser(app: &TestApp, email: &str, password: &str) {
    let r = app.login(email, password).await;
    assert_eq!(r.status(), 200, "login of {email}");
    let t: Value = r.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap();
    let me: Value = json_of(app.me(access).await).await;
    assert!(
        me["roles"]
            .as_array()
            .unwrap()
            .contains(&json!("superuser")),
        "{me}"
    );
    let catalog: Value = json_of(app.permissions(access).await).await;
    let all: Vec<Value> = catalog["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert!(all.contains(&json!("films_watch")));
    assert_eq!(me["permissions"], Value::Array(all));
    assert_eq!(app.users(access, "").await.status(), 200);
}

#[tokio::test]
async fn superuser_create_reads_the_password_from_stdin_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let run = superuser_create(&app, "root@cinema.test", "root password 1\n", None).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains("created superuser root@cinema.test"),
        "{}",
        run.stdout
    );
    assert_superuser(&app, "root@cinema.test", "root password 1").await;

    let again = superuser_create(&app, "ROOT@cinema.test", "another password\n", None).await;
    assert!(again.ok, "{}", again.stderr);
    assert!(again.stdout.contains("already"), "{}", again.stdout);
    // the second run changed nothing, the password included
    assert_superuser(&app, "root@cinema.test", "root password 1").await;
    assert_eq!(
        app.login("root@cinema.test", "another password")
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn superuser_create_reads_the_password_from_the_environment() {
    let app = TestApp::spawn().await;
    let run = superuser_create(&app, "ops@cinema.test", "", Some("from the environment")).await;
    assert!(run.ok, "{}", run.stderr);
    assert_superuser(&app, "ops@cinema.test", "from the environment").await;
}

#[tokio::test]
async fn superuser_create_reads_the_password_from_a_file() {
    let app = TestApp::spawn().await;
    let path = std::env::temp_dir().join(format!("usher-pw-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, "password from a file\n").unwrap();
    let file = path.to_str().unwrap();
    let run = superuser_create_with(
        &app,
        &["--email", "file@cinema.test"],
        "",
        &[("USHER_SUPERUSER_PASSWORD_FILE", file)],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert_superuser(&app, "file@cinema.test", "password from a file").await;
    // both sources at once is ambiguous: refused
    let run = superuser_create_with(
        &app,
        &["--email", "both@cinema.test"],
        "",
        &[
            ("USHER_SUPERUSER_PASSWORD_FILE", file),
            ("USHER_SUPERUSER_PASSWORD", "from the environment"),
        ],
    )
    .await;
    std::fs::remove_file(&path).unwrap();
    assert!(!run.ok);
    assert!(run.stderr.contains("both"), "{}", run.stderr);
}

#[tokio::test]
async fn superuser_create_refuses_an_account_someone_else_registered() {
    let app = TestApp::spawn().await;
    // registered through the open API, in another letter case, before the operator ran it
    let squatter = app
        .user_with("Admin@Cinema.example", "the squatter knows")
        .await;
    for email in ["admin@cinema.example", "ADMIN@CINEMA.EXAMPLE"] {
        let run = superuser_create(&app, email, "operator password\n", None).await;
        assert!(!run.ok, "{email}: {}", run.stdout);
        assert!(
            run.stderr.contains("--promote-existing"),
            "{email}: {}",
            run.stderr
        );
    }
    // nothing changed: no superuser, and the operator's password opens nothing
    let me: Value = json_of(app.me(&squatter.access).await).await;
    assert_eq!(me["roles"], json!(["user"]));
    let r = app.login("admin@cinema.example", "operator password").await;
    assert_eq!(problem(r).await, (401, "invalid_credentials".into()));
}

#[tokio::test]
async fn superuser_create_promotes_an_existing_user_only_when_asked() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let run =
        superuser_create_with(&app, &["--email", &u.email, "--promote-existing"], "", &[]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("is now a superuser"), "{}", run.stdout);
    // the running usher hears of it: the old token carries old roles
    let stale = || async {
        let r = app.me(&u.access).await;
        r.status() == 401 && problem(r).await.1 == "token_stale"
    };
    assert!(crate::helpers::eventually(std::time::Duration::from_secs(1), stale).await);
    assert_superuser(&app, &u.email, &u.password).await;
    let fresh = relogin(&app, &u).await;
    let me: Value = json_of(app.me(&fresh.access).await).await;
    assert_eq!(me["roles"], json!(["superuser", "user"]));
}

#[tokio::test]
async fn superuser_create_refuses_bad_input_with_a_message() {
    let app = TestApp::spawn().await;
    let run = superuser_create(&app, "not-an-email", "long enough pw\n", None).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("invalid e-mail"), "{}", run.stderr);

    let run = superuser_create(&app, "short@cinema.test", "short\n", None).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("invalid password"), "{}", run.stderr);

    let run = superuser_create(&app, "nopass@cinema.test", "", None).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("USHER_SUPERUSER_PASSWORD"),
        "{}",
        run.stderr
    );

    // none of them created anyone
    for email in ["short@cinema.test", "nopass@cinema.test"] {
        let r = app.login(email, "long enough pw").await;
        assert_eq!(problem(r).await, (401, "invalid_credentials".into()));
    }
}

#[tokio::test]
async fn roles_grant_and_revoke_reach_a_running_usher_at_once() {
    use std::time::Duration;
    let app = TestApp::spawn().await;
    let anonymous_catalog = || async {
        app.client
            .get(app.internal_url("/ext_authz/api/v1/films/42"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(anonymous_catalog().await, 401);

    let run = usher_for(&app, &["roles", "grant", "non_registered", "films_read"]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("films_read granted to non_registered"),
        "{}",
        run.stdout
    );
    let public = crate::helpers::eventually(Duration::from_secs(1), || async {
        anonymous_catalog().await == 200
    })
    .await;
    assert!(
        public,
        "the grant should reach the running usher within a second"
    );
    // idempotent
    assert!(
        usher_for(&app, &["roles", "grant", "non_registered", "films_read"])
            .await
            .ok
    );

    let run = usher_for(&app, &["roles", "revoke", "non_registered", "films_read"]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let private = crate::helpers::eventually(Duration::from_secs(1), || async {
        anonymous_catalog().await == 401
    })
    .await;
    assert!(
        private,
        "the revocation should reach the running usher within a second"
    );

    for (args, says) in [
        (
            &["roles", "grant", "ghosts", "films_read"][..],
            "no role named",
        ),
        (
            &["roles", "grant", "user", "films_fly"][..],
            "no permission",
        ),
        (
            &["roles", "revoke", "superuser", "films_read"][..],
            "superuser",
        ),
    ] {
        let run = usher_for(&app, args).await;
        assert!(!run.ok, "{args:?} should fail");
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
}
