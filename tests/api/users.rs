//! `/api/v1/users/...`: list, read, change, disable, password, history, roles.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{json_of, problem, strings, Signed, TestApp, ANONYMOUS};

/// A fresh user holding `superuser`, with a token that carries it.
pub async fn admin(app: &TestApp) -> Signed {
    app.superuser().await
}

/// Logs `u` in again: a token with their current roles.
pub async fn relogin(app: &TestApp, u: &Signed) -> Signed {
    app.user_with_roles(u).await
}

/// The id of the role named `name`.
pub async fn role_id(app: &TestApp, token: &str, name: &str) -> String {
    let roles = json_of(app.roles(token).await).await;
    roles["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no role {name}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The `roles` claim of an access token.
pub fn token_roles(access: &str) -> Value {
    use base64::Engine;
    let payload = access.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["roles"].clone()
}

#[tokio::test]
async fn users_are_listed_by_email_with_pages_and_a_filter() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    for email in ["carol@other.test", "Bob@films.test", "alice@films.test"] {
        app.register(email, "long enough").await;
    }
    let page = json_of(app.users(&root.access, "email=FILMS").await).await;
    let emails = strings(&page["items"], "email");
    assert_eq!(emails, ["alice@films.test", "Bob@films.test"]);
    assert_eq!(page["total"], 2);
    assert_eq!(page["page"], 1);
    assert_eq!(page["per_page"], 20);
    assert_eq!(page["items"][0]["roles"], json!(["user"]));
    assert_eq!(page["items"][0]["disabled"], false);

    let second = app
        .users(&root.access, "email=films&page=2&per_page=1")
        .await;
    let second = json_of(second).await;
    assert_eq!(second["items"][0]["email"], "Bob@films.test");
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["total"], 2);

    let all = json_of(app.users(&root.access, "").await).await;
    assert_eq!(all["total"], 4);
    // a filter with LIKE wildcards is a plain substring
    let none = json_of(app.users(&root.access, "email=%25").await).await;
    assert_eq!(none["total"], 0);

    for bad in ["per_page=101", "per_page=0", "page=0", "page=x"] {
        let r = app.users(&root.access, bad).await;
        assert_eq!(problem(r).await, (422, "validation_failed".into()), "{bad}");
    }
    let plain = app.user().await;
    let r = app.users(&plain.access, "").await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app.users(ANONYMOUS, "").await;
    assert_eq!(problem(r).await, (401, "unauthorized".into()));
}

#[tokio::test]
async fn a_user_is_read_by_themselves_or_a_holder_of_user_all_read() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let u = app.user().await;
    let other = app.user().await;
    let me = json_of(app.user_by_id(&u.access, &u.id).await).await;
    assert_eq!(me["email"], u.email.as_str());
    assert_eq!(me["roles"], json!(["user"]));
    let by_root = app.user_by_id(&root.access, &u.id).await;
    assert_eq!(by_root.status(), StatusCode::OK);
    let r = app.user_by_id(&other.access, &u.id).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app.user_by_id(ANONYMOUS, &u.id).await;
    assert_eq!(problem(r).await, (401, "unauthorized".into()));

    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        problem(app.user_by_id(&root.access, &unknown).await).await,
        (404, "not_found".into())
    );
    for bad in ["not-a-uuid", "1", "%00", "me%20"] {
        for token in [&root.access, &u.access] {
            assert_eq!(
                problem(app.user_by_id(token, bad).await).await,
                (404, "not_found".into()),
                "{bad}"
            );
        }
    }
    // `/users/me` answers with the effective permissions
    let me = json_of(app.me(&u.access).await).await;
    assert!(me["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("user_self_read")));
}

#[tokio::test]
async fn emails_are_changed_by_their_owner_or_a_holder_of_user_all_update() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let u = app.user().await;
    let other = app.user().await;

    let r = app
        .update_me(&u.access, json!({"email": " New@Cinema.test "}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["email"], "New@Cinema.test");
    assert_eq!(body["id"], u.id.as_str());
    // the new e-mail logs in, the old one does not
    assert_eq!(
        app.login("new@cinema.test", &u.password).await.status(),
        200
    );
    assert_eq!(app.login(&u.email, &u.password).await.status(), 401);

    let r = app
        .update_user(&u.access, &u.id, json!({"email": "newer@cinema.test"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    let taken = json!({"email": other.email.to_uppercase()});
    let r = app.update_user(&u.access, &u.id, taken).await;
    assert_eq!(problem(r).await, (409, "email_taken".into()));
    for body in [
        json!({"email": "nope"}),
        json!({"email": 5}),
        json!({}),
        json!({"email": "a@b.test", "roles": ["superuser"]}),
    ] {
        let r = app.update_user(&u.access, &u.id, body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
    }

    let r = app
        .update_user(&u.access, &other.id, json!({"email": "x@cinema.test"}))
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let renamed = json!({"email": "renamed@cinema.test"});
    let r = app.update_user(&root.access, &other.id, renamed).await;
    assert_eq!(r.status(), StatusCode::OK);
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = app
        .update_user(&root.access, &unknown, json!({"email": "y@cinema.test"}))
        .await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
}

#[tokio::test]
async fn a_password_change_checks_the_old_one_and_ends_every_other_session() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let elsewhere = relogin(&app, &u).await;
    let new = "brand new secret";

    let r = app
        .change_password(
            &u.access,
            json!({"old_password": "wrong password", "new_password": new}),
        )
        .await;
    assert_eq!(problem(r).await, (401, "invalid_credentials".into()));
    let r = app
        .change_password(
            &u.access,
            json!({"old_password": u.password, "new_password": "short"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "new_password");
    let r = app
        .change_password(&u.access, json!({"new_password": new}))
        .await;
    assert_eq!(r.status(), 422);
    let change = json!({"old_password": u.password, "new_password": new});
    let r = app.change_password(ANONYMOUS, change.clone()).await;
    assert_eq!(problem(r).await, (401, "unauthorized".into()));

    let r = app.change_password(&u.access, change).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // this session lives on, the other one ended
    assert_eq!(app.me(&u.access).await.status(), 200);
    let r = app.me(&elsewhere.access).await;
    assert_eq!(problem(r).await, (401, "token_revoked".into()));
    let r = app.refresh(&elsewhere.refresh).await;
    assert_eq!(r.status(), 401);
    assert_eq!(app.login(&u.email, &u.password).await.status(), 401);
    assert_eq!(app.login(&u.email, "brand new secret").await.status(), 200);
    let history = json_of(app.login_history(&u.access).await).await;
    assert!(history["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "password_changed"));
}

#[tokio::test]
async fn disabling_a_user_ends_their_sessions_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let u = app.user().await;
    let v = app.user().await;

    // a plain user disables their own account
    let r = app.disable_user(&u.access, &u.id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["disabled"], true);
    assert_eq!(body["id"], u.id.as_str());
    let r = app.me(&u.access).await;
    assert_eq!(problem(r).await, (401, "token_revoked".into()));
    let r = app.login(&u.email, &u.password).await;
    assert_eq!(problem(r).await, (403, "account_disabled".into()));
    let r = app.refresh(&u.refresh).await;
    assert_eq!(r.status(), 401);

    // an administrator disables someone else, twice
    for _ in 0..2 {
        let r = app.disable_user(&root.access, &v.id).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["disabled"], true);
    }
    let r = app.me(&v.access).await;
    assert_eq!(problem(r).await, (401, "token_revoked".into()));
    let history = json_of(app.user_history(&root.access, &v.id).await).await;
    let disabled = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "disabled")
        .count();
    assert_eq!(disabled, 1, "{history}");

    let unknown = uuid::Uuid::new_v4().to_string();
    let r = app.disable_user(&root.access, &unknown).await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
}

#[tokio::test]
async fn history_of_a_user_is_read_by_themselves_or_an_administrator() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let u = app.user().await;
    for token in [&u.access, &root.access] {
        let r = app.user_history(token, &u.id).await;
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["items"][0]["event"], "login");
        assert_eq!(page["total"], 1);
    }
    // a query no method takes: the path is written out
    let too_many = format!("/api/v1/users/{}/history?per_page=500", u.id);
    let r = app.get(&too_many, Some(&u.access)).await;
    assert_eq!(r.status(), 422);
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = app.user_history(&root.access, &unknown).await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
    let r = app.user_history(&root.access, "zzz").await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
}

#[tokio::test]
async fn roles_are_assigned_and_removed_idempotently() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let u = app.user().await;
    let editor = app
        .create_role(
            &root.access,
            json!({"name": "editor", "permissions": ["films_manage"]}),
        )
        .await;
    let editor = json_of(editor).await;
    let editor_id = editor["id"].as_str().unwrap();

    let roles = json_of(app.user_roles(&u.access, &u.id).await).await;
    assert_eq!(roles["items"].as_array().unwrap().len(), 1);
    assert_eq!(roles["items"][0]["name"], "user");
    assert_eq!(roles["items"][0]["builtin"], true);
    assert!(roles["items"][0]["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("user_self_read")));

    for _ in 0..2 {
        let r = app.give_role(&root.access, &u.id, editor_id).await;
        assert_eq!(r.status(), 204);
    }
    // the user's token carries old roles now: refresh for the new ones
    let r = app.me(&u.access).await;
    assert_eq!(problem(r).await, (401, "token_stale".into()));
    let t = json_of(app.refresh(&u.refresh).await).await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(token_roles(access), json!(["editor", "user"]));
    let me = json_of(app.me(access).await).await;
    assert_eq!(me["roles"], json!(["editor", "user"]));
    assert!(me["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("films_manage")));
    let held = json_of(app.user_roles(&root.access, &u.id).await).await;
    assert_eq!(strings(&held["items"], "name"), ["editor", "user"]);

    for _ in 0..2 {
        let r = app.take_role(&root.access, &u.id, editor_id).await;
        assert_eq!(r.status(), 204);
    }
    let r = app.me(access).await;
    assert_eq!(problem(r).await, (401, "token_stale".into()));

    let ghost = uuid::Uuid::new_v4().to_string();
    for (user, role) in [
        (u.id.as_str(), ghost.as_str()),
        (&ghost, editor_id),
        (&u.id, "not-a-uuid"),
        ("x", editor_id),
    ] {
        assert_eq!(
            problem(app.give_role(&root.access, user, role).await).await,
            (404, "not_found".into()),
            "PUT {user} {role}"
        );
        assert_eq!(
            problem(app.take_role(&root.access, user, role).await).await,
            (404, "not_found".into()),
            "DELETE {user} {role}"
        );
    }
    let r = app.user_roles(&root.access, &ghost).await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
    // the method is what is wrong here: the path is written out
    let one = format!("/api/v1/users/{}/roles/{editor_id}", u.id);
    let r = app
        .request(Method::POST, &one, Some(&root.access), None)
        .await;
    assert_eq!(problem(r).await, (405, "method_not_allowed".into()));
}
