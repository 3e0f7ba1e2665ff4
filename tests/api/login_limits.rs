//! Login at its seams: a password change or disable racing logins in flight, the attempt
//! limit under concurrency and across Unicode spellings of an e-mail, and a login burst
//! against a bounded hashing queue and the per-IP limit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use usher::config::{Config, Dur, Secret};

use crate::helpers::{free_port, json_of, problem, Signed, TestApp};

/// Hashing slow enough that logins overlap: a few milliseconds per hash, two at a time.
fn slow_hashing(c: &mut Config) {
    c.passwords.memory_kib = 8 * 1024;
    c.passwords.iterations = 2;
    c.passwords.max_concurrent = 2;
    c.passwords.max_queue = 1000;
    c.passwords.queue_timeout = Dur::secs(60);
    c.database.pool_size = 8;
    c.login.max_failures = 100_000;
}

/// A token pair a login answered.
struct Pair {
    access: String,
    refresh: String,
}

/// Keeps `loops` logins of `user` in flight, one after another each, until `change` has run;
/// returns what `change` answered and every pair the logins got.
async fn logins_racing<F, Fut>(
    app: &Arc<TestApp>,
    user: &Signed,
    loops: usize,
    change: F,
) -> (StatusCode, Vec<Pair>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..loops {
        let (app, done, answered) = (app.clone(), done.clone(), answered.clone());
        let (email, password) = (user.email.clone(), user.password.clone());
        tasks.push(tokio::spawn(async move {
            let mut pairs = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let r = app.login(&email, &password).await;
                answered.fetch_add(1, Ordering::SeqCst);
                if r.status() == 200 {
                    let t: Value = r.json().await.unwrap();
                    pairs.push(Pair {
                        access: t["access_token"].as_str().unwrap().to_owned(),
                        refresh: t["refresh_token"].as_str().unwrap().to_owned(),
                    });
                } else {
                    let (status, code) = problem(r).await;
                    assert!(
                        matches!(
                            (status, code.as_str()),
                            (401, "invalid_credentials") | (403, "account_disabled")
                        ),
                        "a racing login answered {status} {code}"
                    );
                }
            }
            pairs
        }));
    }
    // Let the logins get going before the change.
    let started = crate::helpers::eventually(std::time::Duration::from_secs(30), || async {
        answered.load(Ordering::SeqCst) >= loops
    })
    .await;
    assert!(started, "the racing logins never got going");
    let status = change().await;
    done.store(true, Ordering::SeqCst);
    let mut pairs = Vec::new();
    for t in tasks {
        pairs.extend(t.await.unwrap());
    }
    (status, pairs)
}

/// Whether every token of `pair` is refused: the access token by the API and by the check
/// endpoint, the refresh token by refresh.
async fn refused(app: &TestApp, pair: &Pair) -> Result<(), String> {
    let me = app.me(&pair.access).await.status();
    let check = app
        .client
        .get(app.internal_url("/ext_authz/api/v1/films/42"))
        .bearer_auth(&pair.access)
        .send()
        .await
        .unwrap()
        .status();
    let refresh = app.refresh(&pair.refresh).await.status();
    if me == 401 && check == 401 && refresh == 401 {
        Ok(())
    } else {
        Err(format!("me {me}, check {check}, refresh {refresh}"))
    }
}

async fn assert_all_refused(app: &TestApp, pairs: &[Pair], what: &str) {
    let mut survivors = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        if let Err(why) = refused(app, pair).await {
            survivors.push(format!("#{i}: {why}"));
        }
    }
    assert!(
        survivors.is_empty(),
        "{} of {} sessions opened with the old password survived {what}: {survivors:?}",
        survivors.len(),
        pairs.len()
    );
}

#[tokio::test]
async fn a_password_change_wins_over_logins_in_flight() {
    let app = Arc::new(TestApp::spawn_with(slow_hashing).await);
    let user = app.user().await;
    let (status, pairs) = logins_racing(&app, &user, 12, || async {
        app.change_password(
            &user.access,
            json!({"old_password": user.password, "new_password": "a brand new secret"}),
        )
        .await
        .status()
    })
    .await;
    assert_eq!(status, 204);
    assert_all_refused(&app, &pairs, "the password change").await;
    // The changer's own session and the new password still work.
    assert_eq!(app.me(&user.access).await.status(), 200);
    assert_eq!(
        app.login(&user.email, "a brand new secret").await.status(),
        200
    );
}

#[tokio::test]
async fn a_disable_wins_over_logins_in_flight() {
    let app = Arc::new(TestApp::spawn_with(slow_hashing).await);
    let user = app.user().await;
    let (status, pairs) = logins_racing(&app, &user, 12, || async {
        app.disable_me(&user.access).await.status()
    })
    .await;
    assert_eq!(status, 200);
    assert_all_refused(&app, &pairs, "the disable").await;
    assert_eq!(
        problem(app.login(&user.email, &user.password).await).await,
        (403, "account_disabled".into())
    );
}

/// `n` logins sent at once; their statuses.
async fn at_once(app: &Arc<TestApp>, email: &str, password: &str, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (app, email, password) = (app.clone(), email.to_owned(), password.to_owned());
            tokio::spawn(async move { app.login(&email, &password).await.status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

fn limited(c: &mut Config) {
    slow_hashing(c);
    c.login.max_failures = 3;
}

async fn twelve_wrong_guesses_are_three_evaluated(app: Arc<TestApp>) {
    let user = app.user().await;
    let statuses = at_once(&app, &user.email, "a wrong guess", 12).await;
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((evaluated, limited), (3, 9), "{statuses:?}");
    // The right password is refused too until the window passes.
    assert_eq!(
        problem(app.login(&user.email, &user.password).await).await,
        (429, "too_many_attempts".into())
    );
    // An unknown e-mail is limited the same way.
    let statuses = at_once(&app, "nobody@cinema.test", "a wrong guess", 12).await;
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(evaluated, 3, "{statuses:?}");
}

#[tokio::test]
async fn concurrent_wrong_guesses_cannot_exceed_max_failures() {
    twelve_wrong_guesses_are_three_evaluated(Arc::new(TestApp::spawn_with(limited).await)).await;
}

#[tokio::test]
async fn concurrent_wrong_guesses_cannot_exceed_max_failures_without_redis() {
    let app = TestApp::spawn_without_redis(|c| {
        limited(c);
        // Nothing listens there: every count falls back to PostgreSQL.
        c.redis.url = Secret::new(format!("redis://127.0.0.1:{}/0", free_port()));
        c.redis.timeout = Dur::millis(200);
    })
    .await;
    twelve_wrong_guesses_are_three_evaluated(Arc::new(app)).await;
}

#[tokio::test]
async fn unicode_case_variants_share_the_counter_and_the_account() {
    let app = TestApp::spawn_with(|c| c.login.max_failures = 3).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let victim = format!("victim.{id}@cinema.test");
    let variant = format!("v\u{130}ctim.{id}@cinema.test");
    let user = app.user_with(&victim, "correct horse battery").await;

    // No second account under another spelling.
    assert_eq!(
        problem(app.register(&variant, "another password").await).await,
        (409, "email_taken".into())
    );
    assert_eq!(
        problem(
            app.register(&format!("  VICTIM.{id}@Cinema.Test "), "another password")
                .await
        )
        .await,
        (409, "email_taken".into())
    );
    // The spelling logs in to the same account.
    let r = app.login(&variant, &user.password).await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    let me = json_of(app.me(t["access_token"].as_str().unwrap()).await).await;
    assert_eq!(me["id"], user.id.as_str());

    // Failures under one spelling lock every spelling.
    for _ in 0..3 {
        assert_eq!(app.login(&victim, "a wrong guess").await.status(), 401);
    }
    for spelling in [&variant, &victim.to_uppercase()] {
        assert_eq!(
            problem(app.login(spelling, &user.password).await).await,
            (429, "too_many_attempts".into()),
            "{spelling}"
        );
    }
}

#[tokio::test]
async fn an_email_change_stores_the_canonical_form_too() {
    let app = TestApp::spawn().await;
    let a = app.user().await;
    let b = app.user().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let r = app
        .update_me(
            &a.access,
            json!({"email": format!("irene.{id}@cinema.test")}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .update_me(
            &b.access,
            json!({"email": format!("\u{130}RENE.{id}@cinema.test")}),
        )
        .await;
    assert_eq!(problem(r).await, (409, "email_taken".into()));
    assert_eq!(
        app.login(&format!("\u{130}rene.{id}@CINEMA.test"), &a.password)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn users_from_before_the_canonical_column_get_it_and_clashes_are_left_out() {
    let app = TestApp::spawn().await;
    let user = app.user().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    // As the rows of an older usher: no canonical e-mail, and two spellings of one address.
    app.sql(&format!(
        "update users set email_canonical = null where id = '{}';
         insert into users (id, email, password_hash, created_at)
         select gen_random_uuid(), 'Old.{id}@cinema.test', password_hash, now() - interval '2 days'
         from users where id = '{}';
         insert into users (id, email, password_hash, created_at)
         select gen_random_uuid(), 'old.{id}@CINEMA.test', password_hash, now() - interval '1 day'
         from users where id = '{}';
         insert into user_roles (user_id, role_id)
         select u.id, r.id from users u, roles r where u.email ilike 'old.{id}@%' and r.name = 'user';",
        user.id, user.id, user.id
    ))
    .await;
    usher::store::migrate::migrate(&app.state.db).await.unwrap();
    assert_eq!(app.login(&user.email, &user.password).await.status(), 200);
    let r = app
        .login(&format!("OLD.{id}@cinema.test"), &user.password)
        .await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    let me = json_of(app.me(t["access_token"].as_str().unwrap()).await).await;
    assert_eq!(
        me["email"],
        format!("Old.{id}@cinema.test"),
        "the older one"
    );
}

#[tokio::test]
async fn a_login_burst_gets_busy_answers_while_the_api_keeps_answering() {
    let app = Arc::new(
        TestApp::spawn_with(|c| {
            c.passwords.memory_kib = 32 * 1024;
            c.passwords.iterations = 3;
            c.passwords.max_concurrent = 1;
            c.passwords.max_queue = 2;
            c.passwords.queue_timeout = Dur::secs(30);
            c.database.pool_size = 4;
            c.database.timeout = Dur::secs(1);
            c.login.max_failures = 100_000;
        })
        .await,
    );
    let user = app.user().await;
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let (app, email, password) = (app.clone(), user.email.clone(), user.password.clone());
            tokio::spawn(async move {
                let r = app.login(&email, &password).await;
                let retry_after = r.headers().get("retry-after").cloned();
                let status = r.status().as_u16();
                let code = if status == 200 {
                    String::new()
                } else {
                    problem(r).await.1
                };
                (status, code, retry_after)
            })
        })
        .collect();
    // The API keeps answering while the burst is being hashed.
    let mut answered = 0;
    while !burst.iter().all(|t| t.is_finished()) {
        let r = app.me(&user.access).await;
        assert_eq!(r.status(), 200, "/users/me during the burst");
        answered += 1;
    }
    assert!(answered > 0);
    let mut busy = 0;
    for t in burst {
        let (status, code, retry_after) = t.await.unwrap();
        match status {
            200 => {}
            503 => {
                assert_eq!(code, "busy");
                let secs: u64 = retry_after
                    .expect("503 busy carries Retry-After")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(secs >= 1);
                busy += 1;
            }
            other => panic!("a login of the burst answered {other} {code}"),
        }
    }
    assert!(busy > 0, "no login of the burst was refused as busy");
}

#[tokio::test]
async fn register_and_login_are_limited_per_client_ip() {
    let app = TestApp::spawn_with(|c| c.login.per_ip = 3).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("ip.{id}@cinema.test");
    assert_eq!(
        app.register(&email, "correct horse battery").await.status(),
        201
    );
    assert_eq!(
        app.login(&email, "correct horse battery").await.status(),
        200
    );
    assert_eq!(app.login(&email, "a wrong guess").await.status(), 401);
    for r in [
        app.login(&email, "correct horse battery").await,
        app.register(&format!("other.{id}@cinema.test"), "correct horse battery")
            .await,
    ] {
        let retry_after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(problem(r).await, (429, "too_many_attempts".into()));
    }
}
