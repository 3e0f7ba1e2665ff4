//! No escalation: nobody grants a permission they do not hold (by role grants or by assigning
//! a role), only a superuser touches `superuser` or a superuser, and the last active
//! superuser stays.

use serde_json::{json, Value};

use crate::helpers::{json_of, problem, Signed, TestApp};
use crate::users::{admin, relogin, role_id};

/// A fresh user holding, besides `user`, a new role named `name` with `permissions`.
async fn delegate(app: &TestApp, root: &Signed, name: &str, permissions: &[&str]) -> Signed {
    let role = json_of(
        app.create_role(
            &root.access,
            json!({"name": name, "permissions": permissions}),
        )
        .await,
    )
    .await;
    let role = role["id"].as_str().unwrap().to_owned();
    let u = app.user().await;
    assert_eq!(
        app.give_role(&root.access, &u.id, &role).await.status(),
        204
    );
    relogin(app, &u).await
}

async fn roles_of(app: &TestApp, root: &Signed, user: &str) -> Value {
    let u = json_of(app.user_by_id(&root.access, user).await).await;
    u["roles"].clone()
}

#[tokio::test]
async fn a_role_manager_grants_only_what_they_hold() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let manager = delegate(
        &app,
        &root,
        "role-manager",
        &["role_read", "role_create", "role_update", "user_all_read"],
    )
    .await;
    let user_role = role_id(&app, &root.access, "user").await;

    // the review's path: give `user` the power to assign roles, then take superuser
    let r = app
        .update_role(
            &manager.access,
            &user_role,
            json!({"permissions": ["user_self_read", "user_all_set_role"]}),
        )
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app
        .create_role(
            &manager.access,
            json!({"name": "mine", "permissions": ["role_read", "user_all_delete"]}),
        )
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let role = json_of(app.role(&root.access, &user_role).await).await;
    assert!(!role["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("user_all_set_role")));

    // what they hold they may grant; what the role had they may keep or take away
    let r = app.update_role(&manager.access, &user_role, json!({"permissions": ["user_self_read", "user_self_update", "role_read", "user_all_read"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = app
        .create_role(
            &manager.access,
            json!({"name": "readers", "permissions": ["user_all_read"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    // a superuser grants anything
    let r = app
        .update_role(
            &root.access,
            &user_role,
            json!({"permissions": ["user_self_read", "user_all_set_role"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_role_assigner_cannot_hand_out_superuser_or_more_than_they_hold() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let assigner = delegate(
        &app,
        &root,
        "assigner",
        &["user_all_set_role", "user_all_read", "role_read"],
    )
    .await;
    let superuser = role_id(&app, &root.access, "superuser").await;
    let powerful = json_of(
        app.create_role(
            &root.access,
            json!({"name": "powerful", "permissions": ["user_all_delete"]}),
        )
        .await,
    )
    .await;
    let powerful = powerful["id"].as_str().unwrap().to_owned();
    let modest = json_of(
        app.create_role(
            &root.access,
            json!({"name": "modest", "permissions": ["user_all_read"]}),
        )
        .await,
    )
    .await;
    let modest = modest["id"].as_str().unwrap().to_owned();
    let other = app.user().await;

    for target in ["me", other.id.as_str()] {
        for role in [&superuser, &powerful] {
            let r = app.give_role(&assigner.access, target, role).await;
            assert_eq!(
                problem(r).await,
                (403, "forbidden".into()),
                "{target} {role}"
            );
        }
    }
    assert_eq!(
        roles_of(&app, &root, &assigner.id).await,
        json!(["assigner", "user"])
    );
    // within what they hold, they assign and remove
    let r = app.give_role(&assigner.access, &other.id, &modest).await;
    assert_eq!(r.status(), 204);
    let r = app.take_role(&assigner.access, &other.id, &modest).await;
    assert_eq!(r.status(), 204);

    // a superuser's roles, and `superuser` itself, are for superusers only
    let r = app.take_role(&assigner.access, &root.id, &superuser).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app.give_role(&assigner.access, &root.id, &modest).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    assert_eq!(
        roles_of(&app, &root, &root.id).await,
        json!(["superuser", "user"])
    );
    // a superuser may
    let r = app.give_role(&root.access, &other.id, &superuser).await;
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn only_a_superuser_disables_or_changes_a_superuser() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let second = admin(&app).await;
    let moderator = delegate(
        &app,
        &root,
        "moderator",
        &["user_all_delete", "user_all_update", "user_all_read"],
    )
    .await;
    let r = app.disable_user(&moderator.access, &root.id).await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let r = app
        .update_user(
            &moderator.access,
            &root.id,
            json!({"email": "taken-over@evil.test"}),
        )
        .await;
    assert_eq!(problem(r).await, (403, "forbidden".into()));
    let me = json_of(app.me(&root.access).await).await;
    assert_eq!(
        (me["disabled"].clone(), me["email"].clone()),
        (json!(false), json!(root.email))
    );
    // ordinary users they still manage
    let plain = app.user().await;
    let r = app.disable_user(&moderator.access, &plain.id).await;
    assert_eq!(r.status(), 200);
    // and a superuser disables another superuser
    let r = app.disable_user(&root.access, &second.id).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_last_active_superuser_stays() {
    let app = TestApp::spawn().await;
    let root = admin(&app).await;
    let superuser = role_id(&app, &root.access, "superuser").await;
    let r = app.take_role(&root.access, "me", &superuser).await;
    assert_eq!(problem(r).await, (409, "last_superuser".into()));
    let r = app.disable_me(&root.access).await;
    assert_eq!(problem(r).await, (409, "last_superuser".into()));
    assert_eq!(app.me(&root.access).await.status(), 200);

    // with a second one, either may go, but not both
    let second = admin(&app).await;
    let root = relogin(&app, &root).await;
    let r = app.take_role(&root.access, "me", &superuser).await;
    assert_eq!(r.status(), 204);
    let r = app.disable_me(&second.access).await;
    assert_eq!(problem(r).await, (409, "last_superuser".into()));
}

#[tokio::test]
async fn two_superusers_ending_each_other_at_once_leave_one() {
    let app = TestApp::spawn().await;
    let superuser = {
        let root = admin(&app).await;
        role_id(&app, &root.access, "superuser").await
    };
    for round in 0..6 {
        // two fresh superusers, and every other one disabled, so exactly two are active
        let (a, b) = (admin(&app).await, admin(&app).await);
        app.sql(&format!(
            "update users set disabled = true where id not in ('{}', '{}')",
            a.id, b.id
        ))
        .await;
        // each takes the other's role or disables them, concurrently
        let (ra, rb) = if round % 2 == 0 {
            tokio::join!(
                app.disable_user(&a.access, &b.id),
                app.disable_user(&b.access, &a.id),
            )
        } else {
            tokio::join!(
                app.take_role(&a.access, &b.id, &superuser),
                app.take_role(&b.access, &a.id, &superuser),
            )
        };
        let mut statuses = [ra.status().as_u16(), rb.status().as_u16()];
        statuses.sort();
        // the loser is refused as the last superuser, or its token already ended or went
        // stale; never do both succeed
        assert!(
            statuses[0] < 300 && statuses[1] >= 400,
            "round {round}: {statuses:?}"
        );
        let db = app.state.db.get().await.unwrap();
        let active: i64 = db
            .query_one(
                "select count(*) from users u join user_roles ur on ur.user_id = u.id
                 join roles r on r.id = ur.role_id
                 where r.name = 'superuser' and not u.disabled",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(active, 1, "round {round}");
    }
}
