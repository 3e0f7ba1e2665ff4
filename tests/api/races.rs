//! Two requests on the same user at once, in both orders, many times over.

use http::Method;
use reqwest::StatusCode;

use crate::helpers::TestApp;

/// A refresh and an administrator's disable of the same user race. Each statement locks rows
/// of both the session and the user; taken in opposite orders they would deadlock and one side
/// would answer 500. Whichever wins, nothing fails, and no token made by the refresh outlives
/// the disable.
#[tokio::test]
async fn a_refresh_racing_a_disable_never_fails_nor_outlives_it() {
    let app = TestApp::spawn().await;
    let admin = app.superuser().await;
    for round in 0..20 {
        let user = app.user().await;
        let path = format!("/api/v1/users/{}", user.id);
        let (refreshed, disabled) = tokio::join!(
            app.refresh(&user.refresh),
            app.request(Method::DELETE, &path, Some(&admin.access), None),
        );
        assert_eq!(disabled.status(), StatusCode::OK, "round {round}: disable");
        let status = refreshed.status();
        assert!(
            status == StatusCode::OK || status == StatusCode::UNAUTHORIZED,
            "round {round}: refresh answered {status}"
        );
        if status == StatusCode::OK {
            let t: serde_json::Value = refreshed.json().await.unwrap();
            let access = t["access_token"].as_str().unwrap();
            assert_eq!(
                app.me(access).await.status(),
                StatusCode::UNAUTHORIZED,
                "round {round}: a token refreshed beside a disable still works"
            );
        }
    }
}
