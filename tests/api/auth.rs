//! Register, login, refresh, logout, logout-all, sessions, history, `/users/me`, JWKS.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eventually, json_of, problem, strings, TestApp, ANONYMOUS};

#[tokio::test]
async fn register_creates_a_user_with_the_user_role() {
    let app = TestApp::spawn().await;
    let r = app.register("  Viewer@Cinema.test ", "long enough").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], "Viewer@Cinema.test");
    assert_eq!(user["roles"], json!(["user"]));
    assert_eq!(user["disabled"], false);
    assert!(user["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(user.get("password_hash").is_none());
    // e-mails are unique case-insensitively
    let again = app.register("viewer@cinema.TEST", "long enough").await;
    assert_eq!(problem(again).await, (409, "email_taken".into()));
}

#[tokio::test]
async fn register_validates_email_and_password() {
    let app = TestApp::spawn().await;
    for (email, password, field) in [
        ("no-at-sign", "long enough", "email"),
        ("@cinema.test", "long enough", "email"),
        ("viewer@", "long enough", "email"),
        ("viewer@cinema.test", "short", "password"),
        ("viewer@cinema.test", &"x".repeat(129), "password"),
    ] {
        let r = app.register(email, password).await;
        assert_eq!(r.status(), 422, "{email} / {password}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "validation_failed");
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    let long = format!("{}@cinema.test", "a".repeat(250));
    let body: Value = app
        .register(&long, "long enough")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["errors"][0]["field"], "email");
}

#[tokio::test]
async fn login_returns_tokens_and_me_shows_permissions() {
    let app = TestApp::spawn().await;
    app.register("fan@cinema.test", "popcorn lover").await;
    let r = app.login("FAN@cinema.test", "popcorn lover").await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    assert_eq!(t["refresh_expires_in"], 30 * 86400);
    let access = t["access_token"].as_str().unwrap();
    assert!(t["refresh_token"].as_str().unwrap().len() >= 43);
    let me = json_of(app.me(access).await).await;
    assert_eq!(me["email"], "fan@cinema.test");
    assert_eq!(me["roles"], json!(["user"]));
    assert_eq!(
        me["permissions"],
        json!([
            "permission_read",
            "role_read",
            "user_self_delete",
            "user_self_read",
            "user_self_update"
        ])
    );
}

#[tokio::test]
async fn access_tokens_carry_the_spec_claims() {
    use base64::Engine;
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let mut parts = u.access.split('.');
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());
    for claim in ["iss", "sub", "sid", "jti", "iat", "exp", "roles", "typ"] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
    assert_eq!(claims["typ"], "access");
    assert_eq!(claims["sub"], u.id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    // the JWKS publishes the key that signed it
    let jwks: Value = app.get_json("/.well-known/jwks.json", None).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert!(keys
        .iter()
        .any(|k| k["kid"] == header["kid"] && k["kty"] == "OKP" && k["crv"] == "Ed25519"));
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let wrong = app.login(&u.email, "not the password").await;
    assert!(wrong.headers().get("www-authenticate").is_some());
    let before = app.state.passwords.computed();
    let unknown = app.login("nobody@cinema.test", "not the password").await;
    // The unknown e-mail cost one Argon2 verification too, against the dummy hash.
    assert_eq!(app.state.passwords.computed(), before + 1);
    let (a, b) = (problem(wrong).await, problem(unknown).await);
    assert_eq!(a, (401, "invalid_credentials".into()));
    assert_eq!(a, b);
}

#[tokio::test]
async fn too_many_failures_lock_the_email_with_retry_after() {
    let app = TestApp::spawn_with(|c| c.login.max_failures = 3).await;
    let u = app.user().await;
    for _ in 0..3 {
        assert_eq!(app.login(&u.email, "wrong password").await.status(), 401);
    }
    let r = app.login(&u.email, &u.password).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 600, "{retry}");
    assert_eq!(problem(r).await, (429, "too_many_attempts".into()));
    // another e-mail is not affected
    let other = app.user().await;
    assert_eq!(app.login(&other.email, &other.password).await.status(), 200);
}

#[tokio::test]
async fn the_failure_window_passes() {
    let app = TestApp::spawn_with(|c| {
        c.login.max_failures = 2;
        c.login.window = usher::config::Dur::secs(1);
    })
    .await;
    let u = app.user().await;
    for _ in 0..2 {
        app.login(&u.email, "wrong password").await;
    }
    assert_eq!(app.login(&u.email, &u.password).await.status(), 429);
    let ok = eventually(Duration::from_secs(5), || async {
        app.login(&u.email, &u.password).await.status() == 200
    })
    .await;
    assert!(ok, "login should work again after the window");
}

#[tokio::test]
async fn refresh_rotates_and_the_old_token_is_reuse_after_grace() {
    let app =
        TestApp::spawn_with(|c| c.tokens.refresh_grace = usher::config::Dur::millis(300)).await;
    let u = app.user().await;
    let r = app.refresh(&u.refresh).await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    let (access2, refresh2) = (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_ne!(refresh2, u.refresh);
    assert_eq!(app.me(&access2).await.status(), 200);
    app.state.clock.advance(Duration::from_millis(400));
    // replay of the used token after the grace window: theft, the session ends
    let replay = app.refresh(&u.refresh).await;
    assert_eq!(problem(replay).await, (401, "refresh_token_reused".into()));
    let (status, code) = problem(app.refresh(&refresh2).await).await;
    assert_eq!(status, 401, "{code}");
    assert_eq!(
        problem(app.me(&access2).await).await,
        (401, "token_revoked".into())
    );
    assert_eq!(
        problem(app.me(&u.access).await).await,
        (401, "token_revoked".into())
    );
}

#[tokio::test]
async fn concurrent_refreshes_within_grace_both_succeed() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let (a, b) = tokio::join!(app.refresh(&u.refresh), app.refresh(&u.refresh));
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    // whichever the client keeps goes on working
    for t in [a, b] {
        let next = app.refresh(t["refresh_token"].as_str().unwrap()).await;
        assert_eq!(next.status(), 200);
    }
}

#[tokio::test]
async fn unknown_refresh_tokens_are_refused() {
    let app = TestApp::spawn().await;
    for token in ["", "nonsense", &"x".repeat(5000)] {
        let r = app.refresh(token).await;
        assert_eq!(problem(r).await, (401, "invalid_token".into()));
    }
}

#[tokio::test]
async fn access_tokens_expire() {
    let app = TestApp::spawn_with(|c| c.tokens.access_ttl = usher::config::Dur::secs(1)).await;
    let u = app.user().await;
    assert_eq!(app.me(&u.access).await.status(), 200);
    let expired = eventually(Duration::from_secs(4), || async {
        app.me(&u.access).await.status() == 401
    })
    .await;
    assert!(expired);
    assert_eq!(
        problem(app.me(&u.access).await).await,
        (401, "token_expired".into())
    );
    // the refresh token still works and gives a fresh access token
    let t = json_of(app.refresh(&u.refresh).await).await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(app.me(access).await.status(), 200);
}

#[tokio::test]
async fn refresh_tokens_expire_with_their_session() {
    let app = TestApp::spawn_with(|c| c.tokens.refresh_ttl = usher::config::Dur::secs(1)).await;
    let u = app.user().await;
    app.state.clock.advance(Duration::from_millis(1200));
    let r = app.refresh(&u.refresh).await;
    assert_eq!(problem(r).await.0, 401);
}

#[tokio::test]
async fn logout_ends_this_session_only() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let second: Value = app.login(&u.email, &u.password).await.json().await.unwrap();
    let other_access = second["access_token"].as_str().unwrap();
    assert_eq!(app.logout(&u.access).await.status(), 204);
    assert_eq!(
        problem(app.me(&u.access).await).await,
        (401, "token_revoked".into())
    );
    let r = app.refresh(&u.refresh).await;
    assert_eq!(problem(r).await.0, 401);
    assert_eq!(app.me(other_access).await.status(), 200);
}

#[tokio::test]
async fn logout_all_ends_every_session() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let second: Value = app.login(&u.email, &u.password).await.json().await.unwrap();
    assert_eq!(app.logout_all(&u.access).await.status(), 204);
    for token in [u.access.as_str(), second["access_token"].as_str().unwrap()] {
        assert_eq!(
            problem(app.me(token).await).await,
            (401, "token_revoked".into())
        );
    }
    let r = app.refresh(second["refresh_token"].as_str().unwrap()).await;
    assert_eq!(problem(r).await.0, 401);
    // logging in again works
    assert_eq!(app.login(&u.email, &u.password).await.status(), 200);
}

#[tokio::test]
async fn sessions_are_listed_and_ended_one_by_one() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    // a User-Agent of its own: the request is written out
    let second: Value = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("user-agent", "CinemaTV/2.0")
        .json(&json!({"email": u.email, "password": u.password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = json_of(app.sessions(&u.access).await).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["user_agent"], "CinemaTV/2.0", "newest first");
    assert_eq!(items[0]["current"], false);
    assert_eq!(items[1]["current"], true);
    assert_eq!(items[1]["ip"], "127.0.0.1");
    for field in ["id", "created_at", "last_used_at", "expires_at"] {
        assert!(items[0].get(field).is_some(), "{field}");
    }
    let tv = items[0]["id"].as_str().unwrap();
    let r = app.end_session(&u.access, tv).await;
    assert_eq!(r.status(), 204);
    let r = app.me(second["access_token"].as_str().unwrap()).await;
    assert_eq!(problem(r).await.1, "token_revoked");
    // someone else's session, an ended one, a malformed id: 404
    let stranger = app.user().await;
    let theirs = json_of(app.sessions(&stranger.access).await).await;
    let theirs = theirs["items"][0]["id"].as_str().unwrap().to_owned();
    for id in [theirs.as_str(), tv, "not-a-uuid"] {
        let r = app.end_session(&u.access, id).await;
        assert_eq!(problem(r).await, (404, "not_found".into()), "{id}");
    }
    assert_eq!(app.me(&stranger.access).await.status(), 200);
}

#[tokio::test]
async fn history_records_events_newest_first_with_pages() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    app.login(&u.email, "wrong password").await;
    // the failure is recorded off the response path; wait for it before the next event
    let recorded = eventually(Duration::from_secs(2), || async {
        let page = json_of(app.login_history(&u.access).await).await;
        page["total"] == 2
    })
    .await;
    assert!(recorded);
    let t = json_of(app.refresh(&u.refresh).await).await;
    let access = t["access_token"].as_str().unwrap().to_owned();
    let page = json_of(app.login_history(&access).await).await;
    let events = strings(&page["items"], "event");
    assert_eq!(events, ["refresh", "login_failed", "login"]);
    assert_eq!(page["total"], 3);
    assert_eq!(page["page"], 1);
    assert_eq!(page["per_page"], 20);
    assert_eq!(page["items"][2]["ip"], "127.0.0.1");
    assert!(page["items"][0]["session_id"].is_string());
    let p2 = json_of(app.login_history_page(&access, "page=2&per_page=2").await).await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_eq!(p2["items"][0]["event"], "login");
    let bad = app.login_history_page(&access, "per_page=101").await;
    assert_eq!(problem(bad).await, (422, "validation_failed".into()));
    // logout is recorded as logout, not login
    app.logout(&access).await;
    let again: Value = app.login(&u.email, &u.password).await.json().await.unwrap();
    let again = again["access_token"].as_str().unwrap();
    let page = json_of(app.login_history_page(again, "per_page=2").await).await;
    let events = strings(&page["items"], "event");
    assert_eq!(events, ["login", "logout"]);
}

#[tokio::test]
async fn endpoints_need_a_token() {
    let app = TestApp::spawn().await;
    let anonymous = [
        ("logout", app.logout(ANONYMOUS).await),
        ("logout-all", app.logout_all(ANONYMOUS).await),
        ("sessions", app.sessions(ANONYMOUS).await),
        ("history", app.login_history(ANONYMOUS).await),
        ("me", app.me(ANONYMOUS).await),
    ];
    for (what, r) in anonymous {
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
        assert_eq!(problem(r).await, (401, "unauthorized".into()), "{what}");
    }
    let r = app.me("garbage").await;
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(problem(r).await, (401, "invalid_token".into()));
}

#[tokio::test]
async fn logout_on_one_replica_is_refused_by_another_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let u = a.user().await;
    // b has verified and cached the token
    assert_eq!(b.me(&u.access).await.status(), 200);
    assert_eq!(b.me(&u.access).await.status(), 200);
    assert_eq!(a.logout(&u.access).await.status(), 204);
    let refused = eventually(Duration::from_secs(1), || async {
        b.me(&u.access).await.status() == 401
    })
    .await;
    assert!(
        refused,
        "replica b still accepts the token a second after logout"
    );
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid_and_jwks_lists_both() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let kid = usher::tokens::rotate(&app.state.db, &app.config.tokens)
        .await
        .unwrap();
    app.state
        .revocation
        .announce(usher::change::Change::Keys)
        .await;
    let listed = eventually(Duration::from_secs(2), || async {
        let jwks: Value = app.get_json("/.well-known/jwks.json", None).await;
        jwks["keys"].as_array().unwrap().len() == 2
    })
    .await;
    assert!(listed);
    assert_eq!(app.me(&u.access).await.status(), 200);
    let fresh: Value = app.login(&u.email, &u.password).await.json().await.unwrap();
    let header = jsonwebtoken::decode_header(fresh["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(header.kid.unwrap(), kid);
}

#[tokio::test]
async fn hs256_can_be_selected() {
    let app = TestApp::spawn_with(|c| {
        c.tokens.algorithm = usher::config::Algorithm::HS256;
        c.tokens.hs256_secret = Some(usher::config::Secret::new(
            "0123456789abcdef0123456789abcdef-test",
        ));
    })
    .await;
    let u = app.user().await;
    let header = jsonwebtoken::decode_header(&u.access).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
    assert_eq!(app.me(&u.access).await.status(), 200);
    // nothing secret is published
    let jwks: Value = app.get_json("/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"], json!([]));
}
