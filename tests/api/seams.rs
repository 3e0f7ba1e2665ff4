//! Bounded by design, and not forgeable: metric label values come from a fixed set whatever
//! the client sends, and the client IP recorded in sessions and history is the one the trusted
//! proxy saw, never one the client wrote into `X-Forwarded-For`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{eventually, json_of, TestApp, ANONYMOUS};

/// The text of `/metrics`.
pub async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.internal_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The label sets of `/metrics`: every sample line without its value.
async fn series(app: &TestApp) -> BTreeSet<String> {
    let text = metrics(app).await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name.to_owned()))
        .collect()
}

/// Anonymous junk: `GET /api/v1/users/<junk>` (401), anything with a huge Content-Length
/// (413), unknown paths (404), and junk through the check endpoint.
async fn junk(app: &TestApp, round: &str) {
    for i in 0..20 {
        let id = format!("{round}-{i}-{}", uuid::Uuid::new_v4().simple());
        let r = app.user_by_id(ANONYMOUS, &id).await;
        assert_eq!(r.status(), 401);
        let r = app.user_history(ANONYMOUS, &id).await;
        assert_eq!(r.status(), 401);
        let r = app
            .client
            .post(app.url(&format!("/api/v1/{id}/x")))
            .header("content-length", "999999")
            .body(vec![b'x'; 16])
            .send()
            .await;
        // usher may answer 413 and close before the body is sent; either way, no series.
        if let Ok(r) = r {
            assert_eq!(r.status(), 413);
        }
        let r = app.get(&format!("/{id}"), None).await;
        assert_eq!(r.status(), 404);
        let r = app
            .client
            .get(app.internal_url(&format!("/ext_authz/{id}")))
            .header("host", format!("{id}.example"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
}

#[tokio::test]
async fn junk_paths_add_no_metric_series() {
    let app = TestApp::spawn().await;
    junk(&app, "first").await;
    let before = series(&app).await;
    junk(&app, "second").await;
    let after = series(&app).await;
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(added.is_empty(), "new series: {added:?}");
    for line in [
        r#"usher_http_requests_total{endpoint="/api/v1/users/{id}",status="401"}"#,
        r#"usher_http_requests_total{endpoint="unmatched",status="404"}"#,
    ] {
        assert!(after.contains(line), "{line} in {after:?}");
    }
}

/// The IP of the caller's newest session, and of the newest history event.
async fn recorded_ips(app: &TestApp, access: &str) -> (String, String) {
    let sessions: Value = json_of(app.sessions(access).await).await;
    let session = sessions["items"][0]["ip"].as_str().unwrap().to_owned();
    let history: Value = json_of(app.login_history(access).await).await;
    let event = history["items"][0]["ip"].as_str().unwrap().to_owned();
    (session, event)
}

async fn login_via(app: &TestApp, email: &str, password: &str, xff: &[&str]) -> String {
    let mut r = app.client.post(app.url("/api/v1/auth/login"));
    for value in xff {
        r = r.header("x-forwarded-for", *value);
    }
    let t: Value = r
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_client_ip_is_the_rightmost_hop_the_trusted_proxies_did_not_write() {
    // Default: one trusted proxy (the test client plays the gateway, which appended the
    // address it saw after whatever the client sent).
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let cases: &[(&[&str], &str)] = &[
        (&["203.0.113.9, 198.51.100.7"], "198.51.100.7"),
        (&["203.0.113.9", "198.51.100.8"], "198.51.100.8"),
        (&[], "127.0.0.1"),
    ];
    for (xff, want) in cases {
        let access = login_via(&app, &u.email, &u.password, xff).await;
        let seen = eventually(Duration::from_secs(2), || async {
            recorded_ips(&app, &access).await == (want.to_string(), want.to_string())
        })
        .await;
        assert!(
            seen,
            "{xff:?}: {:?}, want {want}",
            recorded_ips(&app, &access).await
        );
    }

    // No proxy trusted: the TCP peer, whatever the header says.
    let app = TestApp::spawn_with(|c| c.listen.trusted_proxies = 0).await;
    let u = app.user().await;
    let access = login_via(&app, &u.email, &u.password, &["203.0.113.9"]).await;
    assert_eq!(
        recorded_ips(&app, &access).await.0,
        "127.0.0.1",
        "trusted_proxies = 0"
    );

    // Two (a load balancer, then the gateway): the entry the load balancer wrote.
    let app = TestApp::spawn_with(|c| c.listen.trusted_proxies = 2).await;
    let u = app.user().await;
    let access = login_via(
        &app,
        &u.email,
        &u.password,
        &["203.0.113.9, 198.51.100.7, 10.1.1.1"],
    )
    .await;
    assert_eq!(
        recorded_ips(&app, &access).await.0,
        "198.51.100.7",
        "trusted_proxies = 2"
    );
}
