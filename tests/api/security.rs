//! The old service's holes, closed: a plain user cannot touch other users or their own
//! roles, and a removed permission stops working on every replica within a second.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{json_of, problem, Signed, TestApp};
use crate::users::{admin, relogin, role_id, token_roles};

#[tokio::test]
async fn a_plain_user_cannot_read_change_or_disable_another_user() {
    let app = TestApp::spawn().await;
    let mallory = app.user().await;
    let alice = app.user().await;
    let (t, theirs) = (mallory.access.as_str(), alice.id.as_str());

    assert_eq!(problem(app.users(t, "").await).await.0, 403);
    assert_eq!(problem(app.users(t, "email=cinema").await).await.0, 403);
    assert_eq!(problem(app.user_by_id(t, theirs).await).await.0, 403);
    assert_eq!(problem(app.user_history(t, theirs).await).await.0, 403);
    assert_eq!(problem(app.user_roles(t, theirs).await).await.0, 403);
    let r = app
        .update_user(t, theirs, json!({"email": "owned@evil.test"}))
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app.disable_user(t, theirs).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    // an unknown id answers the same as a real one: existence does not leak
    let ghost = uuid::Uuid::new_v4().to_string();
    assert_eq!(problem(app.user_by_id(t, &ghost).await).await.0, 403);

    // alice is untouched and still signed in
    let me = json_of(app.me(&alice.access).await).await;
    assert_eq!(me["email"], alice.email.as_str());
    assert_eq!(me["disabled"], false);
}

#[tokio::test]
async fn a_plain_user_cannot_give_themselves_any_role() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let mallory = app.user().await;
    let superuser = role_id(&app, &root.access, "superuser").await;
    let user = role_id(&app, &root.access, "user").await;
    let custom = json_of(
        app.create_role(
            &root.access,
            json!({"name": "auditor", "permissions": ["user_all_read"]}),
        )
        .await,
    )
    .await;
    let custom = custom["id"].as_str().unwrap().to_owned();

    for target in [mallory.id.as_str(), "me"] {
        for role in [&superuser, &custom, &user] {
            let r = app.give_role(&mallory.access, target, role).await;
            assert_eq!(
                problem(r).await,
                (403, "forbidden".into()),
                "{target} {role}"
            );
            let r = app.take_role(&mallory.access, target, role).await;
            assert_eq!(
                problem(r).await,
                (403, "forbidden".into()),
                "{target} {role}"
            );
        }
    }
    // nor by changing roles or smuggling fields into other bodies
    let r = app
        .update_role(
            &mallory.access,
            &user,
            json!({"permissions": ["user_all_set_role"]}),
        )
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app
        .create_role(
            &mallory.access,
            json!({"name": "mine", "permissions": ["user_all_set_role"]}),
        )
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app
        .update_me(
            &mallory.access,
            json!({"email": mallory.email, "roles": ["superuser"]}),
        )
        .await;
    assert_eq!(r.status(), 422);
    // a field no method sends: the request is written out
    let r = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "sneaky@evil.test", "password": "long enough", "roles": ["superuser"]}),
        )
        .await;
    assert_eq!(r.status(), 422);

    // the token still works and the roles did not move
    let me = json_of(app.me(&mallory.access).await).await;
    assert_eq!(me["roles"], json!(["user"]));
    assert!(!me["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("user_all_set_role")));
}

#[tokio::test]
async fn every_endpoint_that_is_not_open_needs_a_token() {
    use usher::http::endpoint::{Access, Endpoint};
    use usher::http::Listener;
    let app = TestApp::spawn().await;
    let guarded = Endpoint::ALL
        .iter()
        .filter(|e| e.listener() == Listener::Api && !matches!(e.access(), Access::Anyone));
    for endpoint in guarded {
        let (method, path) = (endpoint.method(), endpoint.sample_path());
        let r = app
            .request(method.clone(), &path, None, Some(json!({})))
            .await;
        assert!(
            r.headers().contains_key("www-authenticate"),
            "{method} {path}"
        );
        assert_eq!(
            problem(r).await,
            (401, "unauthorized".into()),
            "{method} {path}"
        );
    }
}

/// Whether `token` is refused the list of users on `app` with 403, or 401 `token_stale`.
async fn refused(app: &TestApp, token: &str) -> bool {
    let r = app.users(token, "").await;
    match r.status().as_u16() {
        403 => true,
        401 => problem(r).await.1 == "token_stale",
        _ => false,
    }
}

/// An administrator, and on a second replica a user who holds role `auditor` (granted
/// `user_all_read`) with a token that carries it and works there.
async fn auditor_on_replica(a: &TestApp, b: &TestApp) -> (Signed, Signed, String) {
    let root = admin(a).await;
    let role = json_of(
        a.create_role(
            &root.access,
            json!({"name": "auditor", "permissions": ["user_all_read"]}),
        )
        .await,
    )
    .await;
    let role = role["id"].as_str().unwrap().to_owned();
    let u = a.user().await;
    assert_eq!(a.give_role(&root.access, &u.id, &role).await.status(), 204);
    let u = relogin(b, &u).await;
    assert_eq!(token_roles(&u.access), json!(["auditor", "user"]));
    assert_eq!(b.users(&u.access, "").await.status(), 200);
    (root, u, role)
}

#[tokio::test]
async fn a_removed_role_stops_working_on_another_replica_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let (root, u, role) = auditor_on_replica(&a, &b).await;

    assert_eq!(a.take_role(&root.access, &u.id, &role).await.status(), 204);
    assert!(
        crate::helpers::eventually(Duration::from_secs(1), || refused(&b, &u.access)).await,
        "replica b still honours the removed role a second later"
    );
    // a refresh carries the current roles, and they do not include the permission
    let t = json_of(b.refresh(&u.refresh).await).await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(token_roles(access), json!(["user"]));
    let r = b.users(access, "").await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    assert_eq!(b.me(access).await.status(), 200);
}

#[tokio::test]
async fn a_removed_grant_stops_working_on_another_replica_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let (root, u, role) = auditor_on_replica(&a, &b).await;

    let r = a
        .update_role(&root.access, &role, json!({"permissions": ["role_read"]}))
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        crate::helpers::eventually(Duration::from_secs(1), || refused(&b, &u.access)).await,
        "replica b still honours the removed grant a second later"
    );
    // the token itself is still good: its roles did not change, only what they grant
    let r = b.users(&u.access, "").await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    assert_eq!(b.me(&u.access).await.status(), 200);
}

#[tokio::test]
async fn a_deleted_or_renamed_role_makes_tokens_stale_on_another_replica() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let (root, u, role) = auditor_on_replica(&a, &b).await;

    // a rename changes the names inside tokens: holders must refresh
    let r = a
        .update_role(&root.access, &role, json!({"name": "inspector"}))
        .await;
    assert_eq!(r.status(), 200);
    let stale = || async {
        let r = b.users(&u.access, "").await;
        r.status() == 401 && problem(r).await.1 == "token_stale"
    };
    assert!(crate::helpers::eventually(Duration::from_secs(1), stale).await);
    let t = json_of(b.refresh(&u.refresh).await).await;
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(token_roles(&access), json!(["inspector", "user"]));
    assert_eq!(b.users(&access, "").await.status(), 200);

    assert_eq!(a.delete_role(&root.access, &role).await.status(), 204);
    assert!(crate::helpers::eventually(Duration::from_secs(1), || refused(&b, &access)).await);
    let t = json_of(b.refresh(&refresh).await).await;
    assert_eq!(
        token_roles(t["access_token"].as_str().unwrap()),
        json!(["user"])
    );
}

#[tokio::test]
async fn a_disabled_user_is_refused_on_another_replica_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let root = admin(&a).await;
    let u = b.user().await;
    assert_eq!(b.me(&u.access).await.status(), 200);
    let r = a.disable_user(&root.access, &u.id).await;
    assert_eq!(r.status(), 200);
    let revoked = || async {
        let r = b.me(&u.access).await;
        r.status() == 401 && problem(r).await.1 == "token_revoked"
    };
    assert!(crate::helpers::eventually(Duration::from_secs(1), revoked).await);
    let r = b.login(&u.email, &u.password).await;
    assert_eq!(problem(r).await, (403, "account_disabled".into()));
}
