//! `/api/v1/roles/...` and `/api/v1/permissions`.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, problem, TestApp, ANONYMOUS};
use crate::users::{admin, role_id};

async fn catalog_names(app: &TestApp, token: &str) -> Vec<Value> {
    let catalog = json_of(app.permissions(token).await).await;
    catalog["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect()
}

#[tokio::test]
async fn the_catalog_lists_builtin_and_service_permissions() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let r = app.permissions(&u.access).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    let find = |name: &str| {
        items
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {body}"))
            .clone()
    };
    let builtin = find("user_all_set_role");
    assert_eq!(builtin["builtin"], true);
    assert!(!builtin["description"].as_str().unwrap().is_empty());
    let service = find("films_read");
    assert_eq!(service["builtin"], false);
    assert_eq!(service["description"], "Browse the film catalog");
    let names: Vec<&str> = items.iter().map(|p| p["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(items.iter().filter(|p| p["builtin"] == true).count(), 12);

    let r = app.permissions(ANONYMOUS).await;
    assert_eq!(problem(r).await, (401, "unauthorized".into()));
    // the method is what is wrong: the path is written out
    let r = app
        .post("/api/v1/permissions", Some(&u.access), json!({"name": "x"}))
        .await;
    assert_eq!(problem(r).await, (405, "method_not_allowed".into()));
    // without `permission_read`
    app.revoke("user", "permission_read").await;
    let r = app.permissions(&u.access).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
}

#[tokio::test]
async fn roles_are_listed_by_name_and_superuser_holds_the_whole_catalog() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let r = app.roles(&u.access).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["non_registered", "superuser", "user"]);
    for role in items {
        assert_eq!(role["builtin"], true);
        assert!(role["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
        assert!(role["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(role["updated_at"].as_str().is_some());
        assert!(role["description"].is_string());
    }
    assert_eq!(items[0]["permissions"], json!([]));
    assert_eq!(
        items[1]["permissions"],
        Value::Array(catalog_names(&app, &u.access).await)
    );
    assert_eq!(
        items[2]["permissions"],
        json!([
            "permission_read",
            "role_read",
            "user_self_delete",
            "user_self_read",
            "user_self_update"
        ])
    );
    let one = items[2]["id"].as_str().unwrap();
    let r = json_of(app.role(&u.access, one).await).await;
    assert_eq!(r, items[2]);
    for bad in [uuid::Uuid::new_v4().to_string(), "nope".to_owned()] {
        let r = app.role(&u.access, &bad).await;
        assert_eq!(problem(r).await, (404, "not_found".into()), "{bad}");
    }
    let r = app.roles(ANONYMOUS).await;
    assert_eq!(problem(r).await, (401, "unauthorized".into()));
}

#[tokio::test]
async fn roles_are_created_with_valid_names_and_known_permissions() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let r = app
        .create_role(
            &root.access,
            json!({"name": "film-critic_2", "description": "Writes reviews",
                   "permissions": ["films_read", "films_read", "role_read"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let role: Value = r.json().await.unwrap();
    assert_eq!(role["name"], "film-critic_2");
    assert_eq!(role["description"], "Writes reviews");
    assert_eq!(role["builtin"], false);
    assert_eq!(role["permissions"], json!(["films_read", "role_read"]));
    let fetched = app.role(&root.access, role["id"].as_str().unwrap()).await;
    let fetched = json_of(fetched).await;
    assert_eq!(fetched, role);
    // the description may be left out, the permissions may not
    let r = app.create_role(&root.access, json!({"name": "bare"})).await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "permissions");
    let r = app
        .create_role(&root.access, json!({"name": "bare", "permissions": []}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let bare: Value = r.json().await.unwrap();
    assert_eq!(bare["description"], "");
    assert_eq!(bare["permissions"], json!([]));

    for name in ["film-critic_2", "superuser"] {
        let r = app
            .create_role(&root.access, json!({"name": name, "permissions": []}))
            .await;
        assert_eq!(problem(r).await, (409, "role_exists".into()), "{name}");
    }
    let long = "x".repeat(65);
    for name in ["", "Editor", "film critic", "é", long.as_str()] {
        let r = app
            .create_role(&root.access, json!({"name": name, "permissions": []}))
            .await;
        assert_eq!(r.status(), 422, "{name:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "validation_failed");
        assert_eq!(body["errors"][0]["field"], "name");
    }
    for body in [
        json!({}),
        json!({"name": 5}),
        json!({"name": "ok", "permissions": "films_read"}),
        json!({"name": "ok", "builtin": true}),
    ] {
        let r = app.create_role(&root.access, body.clone()).await;
        assert_eq!(problem(r).await.0, 422, "{body}");
    }
    let r = app
        .create_role(
            &root.access,
            json!({"name": "ghostly", "permissions": ["films_read", "fly"]}),
        )
        .await;
    assert_eq!(problem(r).await, (422, "unknown_permission".into()));
    // nothing half-done: the refused role does not exist
    let r = app
        .create_role(&root.access, json!({"name": "ghostly", "permissions": []}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let plain = app.user().await;
    let r = app
        .create_role(&plain.access, json!({"name": "mine", "permissions": []}))
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
}

#[tokio::test]
async fn roles_are_changed_but_builtins_keep_their_names() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let created = json_of(
        app.create_role(
            &root.access,
            json!({"name": "critic", "permissions": ["films_read"]}),
        )
        .await,
    )
    .await;
    let id = created["id"].as_str().unwrap();

    let r = app
        .update_role(&root.access, id, json!({"name": "reviewer"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let role: Value = r.json().await.unwrap();
    assert_eq!(role["name"], "reviewer");
    assert_eq!(role["permissions"], json!(["films_read"]));
    assert!(role["updated_at"].as_str() >= created["updated_at"].as_str());

    let r = app
        .update_role(
            &root.access,
            id,
            json!({"description": "Reviews films", "permissions": ["films_watch", "role_read"]}),
        )
        .await;
    let role: Value = r.json().await.unwrap();
    assert_eq!(role["name"], "reviewer");
    assert_eq!(role["description"], "Reviews films");
    assert_eq!(role["permissions"], json!(["films_watch", "role_read"]));
    let r = app
        .update_role(&root.access, id, json!({"permissions": []}))
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["permissions"], json!([]));

    let r = app
        .update_role(&root.access, id, json!({"permissions": ["fly"]}))
        .await;
    assert_eq!(problem(r).await, (422, "unknown_permission".into()));
    let r = app
        .update_role(&root.access, id, json!({"name": "user"}))
        .await;
    assert_eq!(problem(r).await, (409, "role_exists".into()));
    let r = app
        .update_role(&root.access, id, json!({"name": "Bad Name"}))
        .await;
    assert_eq!(problem(r).await, (422, "validation_failed".into()));
    let r = app
        .update_role(&root.access, id, json!({"colour": "red"}))
        .await;
    assert_eq!(problem(r).await, (422, "validation_failed".into()));

    let user = role_id(&app, &root.access, "user").await;
    let superuser = role_id(&app, &root.access, "superuser").await;
    let r = app
        .update_role(&root.access, &user, json!({"name": "member"}))
        .await;
    assert_eq!(problem(r).await, (409, "role_builtin".into()));
    let r = app
        .update_role(&root.access, &superuser, json!({"name": "root"}))
        .await;
    assert_eq!(problem(r).await, (409, "role_builtin".into()));
    let r = app
        .update_role(&root.access, &superuser, json!({"permissions": []}))
        .await;
    assert_eq!(problem(r).await, (409, "role_builtin".into()));
    // the same name is no rename; descriptions and `user`'s grants may change
    let r = app
        .update_role(
            &root.access,
            &user,
            json!({"name": "user", "description": "Everyone who signed up",
               "permissions": ["user_self_read", "films_read"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["permissions"], json!(["films_read", "user_self_read"]));
    assert_eq!(body["builtin"], true);

    let unknown = uuid::Uuid::new_v4().to_string();
    let r = app
        .update_role(&root.access, &unknown, json!({"description": "x"}))
        .await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
    let plain = app.user().await;
    let r = app
        .update_role(&plain.access, id, json!({"description": "x"}))
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
}

#[tokio::test]
async fn deleting_a_role_takes_it_from_every_user() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let u = app.user().await;
    let created = json_of(
        app.create_role(
            &root.access,
            json!({"name": "critic", "permissions": ["films_read"]}),
        )
        .await,
    )
    .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.give_role(&root.access, &u.id, id).await.status(), 204);

    let plain = app.user().await;
    let r = app.delete_role(&plain.access, id).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app.delete_role(&root.access, id).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.role(&root.access, id).await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
    let r = app.delete_role(&root.access, id).await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
    let user = json_of(app.user_by_id(&root.access, &u.id).await).await;
    assert_eq!(user["roles"], json!(["user"]));

    for name in ["superuser", "user", "non_registered"] {
        let builtin = role_id(&app, &root.access, name).await;
        let r = app.delete_role(&root.access, &builtin).await;
        assert_eq!(problem(r).await, (409, "role_builtin".into()), "{name}");
    }
    let r = app.delete_role(&root.access, "garbage").await;
    assert_eq!(problem(r).await, (404, "not_found".into()));
}
