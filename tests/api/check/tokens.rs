//! Tokens and states: expired, logged out, stale roles, and state that cannot be read.

use super::*;

/// A route of `MAP` that any valid token passes: what a check answers is the token's state.
const WATCHLIST: &str = "/api/v1/watchlist";

#[tokio::test]
async fn expired_tokens_are_401_token_expired() {
    let (app, _map) = spawn_with_map(MAP, |c| c.tokens.access_ttl = Dur::secs(1)).await;
    let user = app.user().await;
    let t = Some(user.access.as_str());
    // Checked once while valid, so the expiry is also seen on the cached path.
    let r = ask(&app, Shape::Envoy, "GET", HOST, WATCHLIST, t).await;
    assert_eq!(r.verdict(), (200, String::new()));
    // Its second ends: every shape says so (polled: asking the check changes nothing).
    let expired = eventually(Duration::from_secs(5), || async {
        let r = ask(&app, Shape::Envoy, "GET", HOST, WATCHLIST, t).await;
        r.verdict() == (401, "token_expired".into())
    })
    .await;
    assert!(expired, "the token should expire after its second");
    for shape in SHAPES {
        let r = ask(&app, shape, "GET", HOST, WATCHLIST, t).await;
        assert_eq!(r.verdict(), (401, "token_expired".into()), "{shape:?}");
    }
}

#[tokio::test]
async fn logout_is_refused_here_and_on_a_replica_within_a_second() {
    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    let other = app.replica().await;
    let user = app.user().await;
    let t = Some(user.access.as_str());
    for (who, shape) in [(&app, Shape::Envoy), (&other, Shape::Nginx)] {
        let r = ask(who, shape, "GET", HOST, WATCHLIST, t).await;
        assert_eq!(r.verdict(), (200, String::new()), "before logout");
    }
    let r = app.logout(&user.access).await;
    assert_eq!(r.status(), 204);
    for who in [&app, &other] {
        let refused = eventually(Duration::from_secs(1), || async {
            SHAPES.len() == refusing_shapes(who, t, "token_revoked").await
        })
        .await;
        assert!(refused, "revoked token still accepted after 1 s");
    }
}

/// How many shapes answer 401 with `code`.
async fn refusing_shapes(app: &TestApp, token: Option<&str>, code: &str) -> usize {
    let mut n = 0;
    for shape in SHAPES {
        let r = ask(app, shape, "GET", HOST, WATCHLIST, token).await;
        if r.verdict() == (401, code.to_owned()) {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn tokens_with_old_roles_are_401_token_stale() {
    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    let other = app.replica().await;
    let user = app.user().await;
    let t = Some(user.access.as_str());
    let r = ask(&other, Shape::Traefik, "GET", HOST, WATCHLIST, t).await;
    assert_eq!(r.verdict(), (200, String::new()));
    // A role change through the API, on one replica: every replica must hear of it.
    let root = app.superuser().await;
    let role = crate::users::role_id(&app, &root.access, "superuser").await;
    let r = app.give_role(&root.access, &user.id, &role).await;
    assert_eq!(r.status(), 204);
    for who in [&app, &other] {
        let stale = eventually(Duration::from_secs(1), || async {
            refusing_shapes(who, t, "token_stale").await == SHAPES.len()
        })
        .await;
        assert!(stale, "a token with old roles still accepted after 1 s");
    }
}

#[tokio::test]
async fn unreachable_state_is_503_never_a_guess() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let (app, _map) = spawn_with_map(MAP, move |c| {
        c.redis.url = usher::config::Secret::new(redis_url);
        c.database.timeout = Dur::secs(1);
        c.redis.timeout = Dur::secs(1);
    })
    .await;
    let mut redis = redis;
    let seen = app.user().await;
    let in_redis = app.user().await;
    let never = app.user().await;
    let r = ask(
        &app,
        Shape::Envoy,
        "GET",
        HOST,
        WATCHLIST,
        Some(&seen.access),
    )
    .await;
    assert_eq!(r.verdict(), (200, String::new()));

    // PostgreSQL down: the cached token and one whose state Redis holds keep working.
    let outage = PostgresOutage::start(&app).await;
    for (who, shape) in [(&seen, Shape::Nginx), (&in_redis, Shape::Traefik)] {
        let r = ask(&app, shape, "GET", HOST, WATCHLIST, Some(&who.access)).await;
        assert_eq!(
            r.verdict(),
            (200, String::new()),
            "PostgreSQL down, {shape:?}"
        );
    }

    // Redis down too: a token never seen cannot be judged → 503, in every shape.
    redis.stop();
    let feed_down = eventually(Duration::from_secs(5), || async {
        !app.state.revocation.feed_is_up()
    })
    .await;
    assert!(feed_down, "the change feed noticed Redis is gone");
    for shape in SHAPES {
        let r = ask(&app, shape, "GET", HOST, WATCHLIST, Some(&never.access)).await;
        if let Shape::Grpc = shape {
            // gRPC UNAVAILABLE: Envoy then refuses with its status_on_error.
            assert_eq!((r.status, r.header("grpc-status")), (503, Some("14")));
        } else {
            assert_eq!(r.verdict(), (503, "unavailable".into()), "{shape:?}");
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        // What needs no state is still answered.
        let r = ask(&app, shape, "GET", HOST, "/api/v1/auth/login", None).await;
        assert_eq!(r.verdict(), (200, String::new()), "{shape:?}");
        let r = ask(&app, shape, "GET", HOST, WATCHLIST, Some("junk")).await;
        assert_eq!(r.verdict(), (401, "invalid_token".into()), "{shape:?}");
    }

    outage.end().await;
}
