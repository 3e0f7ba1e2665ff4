//! The refresh grace window: every use of one refresh token within it returns the same
//! successor, so concurrent or replayed refreshes continue one chain and never fork it.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{problem, TestApp};

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
    let sessions: Value = app.get_json("/api/v1/auth/sessions", Some(access)).await;
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
    tokio::time::sleep(Duration::from_millis(2100)).await;
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
