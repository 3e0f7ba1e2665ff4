//! The refresh grace window: every use of one refresh token within it returns the same
//! successor, so concurrent or replayed refreshes continue one chain and never fork it.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{json_of, problem, TestApp};

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.refresh(token).await
}

/// Refreshes and returns `(access, refresh)`, asserting 200.
async fn refreshed(app: &TestApp, token: &str) -> (String, String) {
    let r = refresh(app, token).await;
    assert_eq!(r.status(), 200, "refresh");
    let t: Value = r.json().await.unwrap();
    (
        t["access_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn session_count(app: &TestApp, access: &str) -> usize {
    let sessions: Value = json_of(app.sessions(access).await).await;
    sessions["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn parallel_refreshes_with_one_token_get_one_successor() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let answers = futures_util::future::join_all((0..5).map(|_| refreshed(&app, &u.refresh))).await;
    let successor = &answers[0].1;
    assert_ne!(successor, &u.refresh);
    for (access, refresh) in &answers {
        assert_eq!(refresh, successor, "every use returns the same successor");
        assert_eq!(app.me(access).await.status(), 200);
    }
    // one chain: its next link works once, and the session is still one session
    let (access, _) = refreshed(&app, successor).await;
    assert_eq!(session_count(&app, &access).await, 1);
}

#[tokio::test]
async fn a_replay_within_the_window_returns_the_same_successor_even_after_it_moved_on() {
    let app = TestApp::spawn_with(|c| c.tokens.refresh_grace = usher::config::Dur::secs(2)).await;
    let u = app.user().await;
    let (_, t1) = refreshed(&app, &u.refresh).await;
    let (_, again) = refreshed(&app, &u.refresh).await;
    assert_eq!(again, t1);
    // the chain moves on; a late copy of the first token still lands on the same chain
    let (_, t2) = refreshed(&app, &t1).await;
    let (_, again) = refreshed(&app, &u.refresh).await;
    assert_eq!(again, t1);
    let (_, again) = refreshed(&app, &t1).await;
    assert_eq!(again, t2);
    let (access3, t3) = refreshed(&app, &t2).await;
    assert_eq!(session_count(&app, &access3).await, 1);

    // after the window, a replay of a used token is theft: the whole session ends
    app.state.clock.advance(Duration::from_millis(2100));
    assert_eq!(
        problem(refresh(&app, &u.refresh).await).await,
        (401, "refresh_token_reused".into())
    );
    for token in [&t1, &t2, &t3] {
        assert_eq!(refresh(&app, token).await.status(), 401);
    }
    assert_eq!(
        problem(app.me(&access3).await).await,
        (401, "token_revoked".into())
    );
}

/// The claims of an access token, read without checking its signature.
fn claims(access: &str) -> Value {
    use base64::Engine;
    let payload = access.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_refresh_carries_the_current_roles_and_a_disabled_user_changes_nothing() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    // a role given meanwhile is in the refreshed token, with the new roles version
    app.sql(&format!(
        "insert into roles (id, name) values ('{}', 'critic');
         insert into user_roles (user_id, role_id) select '{id}', id from roles where name = 'critic';
         update users set roles_version = roles_version + 1 where id = '{id}';",
        uuid::Uuid::new_v4(),
        id = u.id
    ))
    .await;
    let (access, t1) = refreshed(&app, &u.refresh).await;
    let c = claims(&access);
    assert_eq!(c["roles"], serde_json::json!(["critic", "user"]));
    assert_eq!(c["rv"], serde_json::json!(1));

    // a disabled user's refresh is refused and leaves the token unused: once the user is
    // enabled again it still rotates, to a successor, not as a replay
    app.sql(&format!(
        "update users set disabled = true where id = '{}'",
        u.id
    ))
    .await;
    assert_eq!(refresh(&app, &t1).await.status(), 401);
    app.sql(&format!(
        "update users set disabled = false where id = '{}'",
        u.id
    ))
    .await;
    let (access, t2) = refreshed(&app, &t1).await;
    assert_ne!(t2, t1);

    // both rotations are in the history, the refused one is not
    let history: Value = json_of(app.login_history(&access).await).await;
    let events: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["refresh", "refresh", "login"]);
}
