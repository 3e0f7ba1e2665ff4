//! The old service's holes, closed: a plain user cannot touch other users or their own
//! roles, and a removed permission stops working on every replica within a second.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{problem, Signed, TestApp};
use crate::users::{admin, delete, patch, put, relogin, role_id, token_roles};

#[tokio::test]
async fn a_plain_user_cannot_read_change_or_disable_another_user() {
    let app = TestApp::spawn().await;
    let mallory = app.user().await;
    let alice = app.user().await;
    let theirs = format!("/api/v1/users/{}", alice.id);
    let t = Some(mallory.access.as_str());

    assert_eq!(problem(app.get("/api/v1/users", t).await).await.0, 403);
    assert_eq!(
        problem(app.get("/api/v1/users?email=cinema", t).await)
            .await
            .0,
        403
    );
    assert_eq!(problem(app.get(&theirs, t).await).await.0, 403);
    assert_eq!(
        problem(app.get(&format!("{theirs}/history"), t).await)
            .await
            .0,
        403
    );
    assert_eq!(
        problem(app.get(&format!("{theirs}/roles"), t).await)
            .await
            .0,
        403
    );
    let r = patch(
        &app,
        &theirs,
        &mallory.access,
        json!({"email": "owned@evil.test"}),
    )
    .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = delete(&app, &theirs, &mallory.access).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    // an unknown id answers the same as a real one: existence does not leak
    let ghost = format!("/api/v1/users/{}", uuid::Uuid::new_v4());
    assert_eq!(problem(app.get(&ghost, t).await).await.0, 403);

    // alice is untouched and still signed in
    let me: Value = app.get_json("/api/v1/users/me", Some(&alice.access)).await;
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
    let custom: Value = app
        .post_json(
            "/api/v1/roles",
            Some(&root.access),
            json!({"name": "auditor", "permissions": ["user_all_read"]}),
        )
        .await;
    let custom = custom["id"].as_str().unwrap().to_owned();

    for target in [mallory.id.as_str(), "me"] {
        for role in [&superuser, &custom, &user] {
            let path = format!("/api/v1/users/{target}/roles/{role}");
            let r = put(&app, &path, &mallory.access).await;
            assert_eq!(problem(r).await, (403, "forbidden".into()), "PUT {path}");
            let r = delete(&app, &path, &mallory.access).await;
            assert_eq!(problem(r).await, (403, "forbidden".into()), "DELETE {path}");
        }
    }
    // nor by changing roles or smuggling fields into other bodies
    let user_role = format!("/api/v1/roles/{user}");
    let r = patch(
        &app,
        &user_role,
        &mallory.access,
        json!({"permissions": ["user_all_set_role"]}),
    )
    .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app
        .post(
            "/api/v1/roles",
            Some(&mallory.access),
            json!({"name": "mine", "permissions": ["user_all_set_role"]}),
        )
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = patch(
        &app,
        "/api/v1/users/me",
        &mallory.access,
        json!({"email": mallory.email, "roles": ["superuser"]}),
    )
    .await;
    assert_eq!(r.status(), 422);
    let r = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "sneaky@evil.test", "password": "long enough", "roles": ["superuser"]}),
        )
        .await;
    assert_eq!(r.status(), 422);

    // the token still works and the roles did not move
    let me: Value = app
        .get_json("/api/v1/users/me", Some(&mallory.access))
        .await;
    assert_eq!(me["roles"], json!(["user"]));
    assert!(!me["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("user_all_set_role")));
}

#[tokio::test]
async fn every_users_and_roles_endpoint_needs_a_token() {
    let app = TestApp::spawn().await;
    let id = uuid::Uuid::new_v4();
    for (method, path) in [
        (Method::GET, "/api/v1/users".to_owned()),
        (Method::GET, "/api/v1/users/me".to_owned()),
        (Method::PATCH, "/api/v1/users/me".to_owned()),
        (Method::POST, "/api/v1/users/me/password".to_owned()),
        (Method::GET, format!("/api/v1/users/{id}")),
        (Method::PATCH, format!("/api/v1/users/{id}")),
        (Method::DELETE, format!("/api/v1/users/{id}")),
        (Method::GET, format!("/api/v1/users/{id}/history")),
        (Method::GET, format!("/api/v1/users/{id}/roles")),
        (Method::PUT, format!("/api/v1/users/{id}/roles/{id}")),
        (Method::DELETE, format!("/api/v1/users/{id}/roles/{id}")),
        (Method::GET, "/api/v1/roles".to_owned()),
        (Method::POST, "/api/v1/roles".to_owned()),
        (Method::GET, format!("/api/v1/roles/{id}")),
        (Method::PATCH, format!("/api/v1/roles/{id}")),
        (Method::DELETE, format!("/api/v1/roles/{id}")),
        (Method::GET, "/api/v1/permissions".to_owned()),
    ] {
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

/// Whether `token` is refused on `app` with 403, or 401 `token_stale`.
async fn refused(app: &TestApp, path: &str, token: &str) -> bool {
    let r = app.get(path, Some(token)).await;
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
    let role: Value = a
        .post_json(
            "/api/v1/roles",
            Some(&root.access),
            json!({"name": "auditor", "permissions": ["user_all_read"]}),
        )
        .await;
    let role = role["id"].as_str().unwrap().to_owned();
    let u = a.user().await;
    let path = format!("/api/v1/users/{}/roles/{role}", u.id);
    assert_eq!(put(a, &path, &root.access).await.status(), 204);
    let u = relogin(b, &u).await;
    assert_eq!(token_roles(&u.access), json!(["auditor", "user"]));
    assert_eq!(b.get("/api/v1/users", Some(&u.access)).await.status(), 200);
    (root, u, role)
}

#[tokio::test]
async fn a_removed_role_stops_working_on_another_replica_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let (root, u, role) = auditor_on_replica(&a, &b).await;

    let path = format!("/api/v1/users/{}/roles/{role}", u.id);
    assert_eq!(delete(&a, &path, &root.access).await.status(), 204);
    assert!(
        crate::helpers::eventually(Duration::from_secs(1), || refused(
            &b,
            "/api/v1/users",
            &u.access
        ))
        .await,
        "replica b still honours the removed role a second later"
    );
    // a refresh carries the current roles, and they do not include the permission
    let t: Value = b
        .post_json(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": u.refresh}),
        )
        .await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(token_roles(access), json!(["user"]));
    let r = b.get("/api/v1/users", Some(access)).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    assert_eq!(b.me(access).await.status(), 200);
}

#[tokio::test]
async fn a_removed_grant_stops_working_on_another_replica_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let (root, u, role) = auditor_on_replica(&a, &b).await;

    let r = patch(
        &a,
        &format!("/api/v1/roles/{role}"),
        &root.access,
        json!({"permissions": ["role_read"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        crate::helpers::eventually(Duration::from_secs(1), || refused(
            &b,
            "/api/v1/users",
            &u.access
        ))
        .await,
        "replica b still honours the removed grant a second later"
    );
    // the token itself is still good: its roles did not change, only what they grant
    let r = b.get("/api/v1/users", Some(&u.access)).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    assert_eq!(b.me(&u.access).await.status(), 200);
}

#[tokio::test]
async fn a_deleted_or_renamed_role_makes_tokens_stale_on_another_replica() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let (root, u, role) = auditor_on_replica(&a, &b).await;

    // a rename changes the names inside tokens: holders must refresh
    let r = patch(
        &a,
        &format!("/api/v1/roles/{role}"),
        &root.access,
        json!({"name": "inspector"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let stale = || async {
        let r = b.get("/api/v1/users", Some(&u.access)).await;
        r.status() == 401 && problem(r).await.1 == "token_stale"
    };
    assert!(crate::helpers::eventually(Duration::from_secs(1), stale).await);
    let t: Value = b
        .post_json(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": u.refresh}),
        )
        .await;
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(token_roles(&access), json!(["inspector", "user"]));
    assert_eq!(b.get("/api/v1/users", Some(&access)).await.status(), 200);

    assert_eq!(
        delete(&a, &format!("/api/v1/roles/{role}"), &root.access)
            .await
            .status(),
        204
    );
    assert!(
        crate::helpers::eventually(Duration::from_secs(1), || refused(
            &b,
            "/api/v1/users",
            &access
        ))
        .await
    );
    let t: Value = b
        .post_json(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
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
    let r = delete(&a, &format!("/api/v1/users/{}", u.id), &root.access).await;
    assert_eq!(r.status(), 200);
    let revoked = || async {
        let r = b.me(&u.access).await;
        r.status() == 401 && problem(r).await.1 == "token_revoked"
    };
    assert!(crate::helpers::eventually(Duration::from_secs(1), revoked).await);
    let r = b.login(&u.email, &u.password).await;
    assert_eq!(problem(r).await, (403, "account_disabled".into()));
}
