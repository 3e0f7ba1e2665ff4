//! The route map: `usher routes check`, and edits while usher runs.

use super::*;
use crate::helpers::json_of;

#[test]
fn routes_check_explains_a_map_and_names_the_bad_line() {
    let usher = env!("CARGO_BIN_EXE_usher");
    let good = tempfile_path::TempFile::new(MAP);
    let out = std::process::Command::new(usher)
        .args(["routes", "check"])
        .arg(&good.0)
        .args(["--probe", "GET /api/v1/films/1/stream"])
        .args(["--probe", "GET admin.cinema.local/x"])
        .args(["--probe", "GET /api/v1/films/../../../admin/x"])
        .args(["--probe", "GET /api/v1/films/%2e%2e/%2e%2e/%2e%2e/admin/x"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("default policy: deny"), "{stdout}");
    assert!(
        stdout.contains("route /api/v1/films/{id}/stream -> all of: films_watch"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route admin.cinema.local/{*rest}"),
        "{stdout}"
    );
    assert!(stdout.contains("route /admin/{*rest}"), "{stdout}");
    assert!(
        stdout.contains("/admin/x: refused (403): the request path percent-encodes"),
        "{stdout}"
    );

    let bad = tempfile_path::TempFile::new(&MAP.replace("\"films_watch\"]", "\"films_wacth\"]"));
    let out = std::process::Command::new(usher)
        .args(["routes", "check"])
        .arg(&bad.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 16") && stderr.contains("films_wacth"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_edited_route_map_takes_effect_and_its_new_permissions_join_the_catalog() {
    let (app, map) = spawn_with_map(MAP, |_| {}).await;
    let root = crate::users::admin(&app).await;
    let poster = app.user().await;
    let posting = || async {
        ask(
            &app,
            Shape::Envoy,
            "POST",
            HOST,
            "/api/v1/posters",
            Some(&poster.access),
        )
        .await
        .verdict()
        .0
    };
    assert_eq!(posting().await, 403, "no route yet: default deny");

    // A route needing a new service permission, added while usher runs.
    let edited = format!(
        "{}\n[[route]]\npath = \"/api/v1/posters\"\nmethods = [\"POST\"]\nrequire = [\"posters_upload\"]\n",
        MAP.replace("[permissions]\n", "[permissions]\nposters_upload = \"Upload posters\"\n")
    );
    std::fs::write(&map.0, edited).unwrap();
    let listed = eventually(Duration::from_secs(5), || async {
        let page: serde_json::Value = json_of(app.permissions(&root.access).await).await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "posters_upload" && p["builtin"] == false)
    })
    .await;
    assert!(listed, "the new service permission should join the catalog");
    assert_eq!(posting().await, 403, "the route now needs posters_upload");

    // A broken edit is refused and the map in force stays.
    std::fs::write(
        &map.0,
        "default_policy = \"allow\"\n[[route]]\npath = \"/x\"\nrequire = [\"nope\"]\n",
    )
    .unwrap();
    let refused = eventually(Duration::from_secs(5), || async {
        app.metrics()
            .await
            .contains("usher_route_map_reloads_total{outcome=\"refused\"} 1")
    })
    .await;
    assert!(refused, "the broken edit should be looked at, and refused");
    let roles: serde_json::Value = json_of(app.roles(&root.access).await).await;
    let user_role = roles["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "user")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let grants = serde_json::json!({"permissions": ["user_self_read", "posters_upload"]});
    let r = app.update_role(&root.access, &user_role, grants).await;
    assert_eq!(r.status(), 200);
    let allowed = eventually(Duration::from_secs(1), || async { posting().await == 200 }).await;
    assert!(
        allowed,
        "granting the new permission lets the request through, under the old (valid) map"
    );
}
