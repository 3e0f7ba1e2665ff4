//! PostgreSQL and Redis faults: clear 503s, nothing lost, recovery without restart.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{eventually, json_of, problem, PostgresOutage, RedisServer, TestApp};
use crate::revocation::{marked, session_id};

#[tokio::test]
async fn logout_with_redis_down_is_recorded_honoured_and_mirrored_when_it_returns() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let a = TestApp::spawn_with(|c| c.redis.url = usher::config::Secret::new(url.clone())).await;
    let b = a.replica().await;
    let u = a.user().await;
    assert_eq!(b.me(&u.access).await.status(), 200);
    let sid = {
        let list: Value = json_of(a.sessions(&u.access).await).await;
        list["items"][0]["id"].as_str().unwrap().to_owned()
    };

    redis.stop();
    let feed_down = eventually(Duration::from_secs(5), || async {
        !a.state.revocation.feed_is_up() && !b.state.revocation.feed_is_up()
    })
    .await;
    assert!(feed_down, "both replicas should notice Redis is gone");
    // logout still succeeds and is honoured by both replicas (they ask PostgreSQL)
    assert_eq!(a.logout(&u.access).await.status(), 204);
    assert_eq!(problem(a.me(&u.access).await).await.1, "token_revoked");
    assert_eq!(problem(b.me(&u.access).await).await.1, "token_revoked");
    // logins and registrations work without Redis
    let other = a.user().await;
    assert_eq!(b.me(&other.access).await.status(), 200);

    // Redis comes back empty: the revocation reaches it without a restart
    redis.restart();
    let mirrored = eventually(Duration::from_secs(10), || async {
        let (hash, field) = crate::revocation::mark(&a.config.redis.prefix, "s", &sid);
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("HEXISTS")
            .arg(hash)
            .arg(field)
            .query(&mut c)
            .unwrap_or(false)
    })
    .await;
    assert!(
        mirrored,
        "the logout made while Redis was down should be copied to it"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.state.revocation.feed_is_up()
        })
        .await
    );
    assert_eq!(problem(b.me(&u.access).await).await.1, "token_revoked");
    assert_eq!(b.me(&other.access).await.status(), 200);
}

#[tokio::test]
async fn a_wiped_redis_is_rebuilt_from_postgres() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = TestApp::spawn_with(|c| c.redis.url = usher::config::Secret::new(url.clone())).await;
    let u = a.user().await;
    let sid = session_id(&a, &u).await;
    assert_eq!(a.logout(&u.access).await.status(), 204);
    let logged_out = eventually(Duration::from_secs(5), || async { marked(&a, "s", &sid) }).await;
    assert!(logged_out, "the logout should be marked in Redis");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    assert!(!marked(&a, "s", &sid));
    // a replica that never saw the token must not believe the empty Redis
    let b = a.replica().await;
    assert_eq!(problem(b.me(&u.access).await).await.1, "token_revoked");
    // and Redis itself holds the logout again, rebuilt from PostgreSQL
    let rebuilt = eventually(Duration::from_secs(5), || async { marked(&a, "s", &sid) }).await;
    assert!(rebuilt, "Redis should be rebuilt from PostgreSQL");
}

#[tokio::test]
async fn postgres_down_gives_503_and_recovers_without_restart() {
    let app = TestApp::spawn_with(|c| c.database.timeout = usher::config::Dur::millis(500)).await;
    let u = app.user().await;
    let outage = PostgresOutage::start(&app).await;
    let r = app.login(&u.email, &u.password).await;
    assert_eq!(r.headers()["retry-after"], "1");
    let (status, code) = problem(r).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    let r = app.register("new@cinema.test", "long enough").await;
    assert_eq!(problem(r).await, (503, "unavailable".into()));
    let r = app.sessions(&u.access).await;
    assert_eq!(problem(r).await, (503, "unavailable".into()));
    // the body never carries database text
    let body = app.login(&u.email, &u.password).await.text().await.unwrap();
    assert!(
        !body.to_lowercase().contains("database") && !body.contains("postgres"),
        "{body}"
    );
    let ready = app
        .client
        .get(app.internal_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["postgres"], "unavailable");
    outage.end().await;
    let back = eventually(Duration::from_secs(10), || async {
        app.login(&u.email, &u.password).await.status() == 200
    })
    .await;
    assert!(back, "logins should work again once PostgreSQL is back");
    assert_eq!(
        app.register("new@cinema.test", "long enough")
            .await
            .status(),
        201
    );
    assert_eq!(
        app.client
            .get(app.internal_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn health_is_always_ok_and_ready_reports_parts() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.internal_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = app
        .client
        .get(app.internal_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["postgres"], "ok");
    assert_eq!(r["redis"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_and_report_health() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    app.me(&u.access).await;
    app.get("/api/v1/nothing", None).await;
    let r = app
        .client
        .get(app.internal_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for needle in [
        "usher_http_requests_total{endpoint=\"/api/v1/auth/login\",status=\"200\"} 1",
        "usher_http_requests_total{endpoint=\"/api/v1/users/me\",status=\"200\"} 1",
        "usher_http_requests_total{endpoint=\"unmatched\",status=\"404\"} 1",
        "usher_http_request_duration_seconds_count",
        "usher_db_pool_max_connections 4",
        "usher_redis_up 1",
        "usher_change_feed_up 1",
        "usher_token_cache_hits_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}
