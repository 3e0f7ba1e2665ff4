//! The domain functions the API and the command line share, called directly against real
//! PostgreSQL and Redis: their rules hold whoever calls them.

use reqwest::StatusCode;
use serde_json::{json, Value};
use usher::domain::{self, Conflict, DomainError};

use crate::helpers::{json_of, TestApp};

#[tokio::test]
async fn an_operator_cannot_change_superusers_grants_either() {
    let app = TestApp::spawn().await;
    let refused =
        domain::roles::change_grants(&app.state.db, "superuser", &["role_read".into()], false)
            .await;
    assert!(
        matches!(
            refused,
            Err(DomainError::Conflict(Conflict::SuperuserGrants))
        ),
        "{refused:?}"
    );
    let unknown =
        domain::roles::change_grants(&app.state.db, "ghosts", &["role_read".into()], true).await;
    assert!(matches!(unknown, Err(DomainError::NotFound)), "{unknown:?}");
    let typo =
        domain::roles::change_grants(&app.state.db, "user", &["films_fly".into()], true).await;
    assert!(
        matches!(&typo, Err(DomainError::UnknownPermission(p)) if p == "films_fly"),
        "{typo:?}"
    );
}

#[tokio::test]
async fn a_granted_permission_applies_once_the_change_is_propagated() {
    let app = TestApp::spawn().await;
    let someone = app.user().await;
    let roles = app.roles(&someone.access).await.status();
    assert_eq!(roles, StatusCode::OK);
    let users = app.users(&someone.access, "").await;
    assert_eq!(users.status(), StatusCode::FORBIDDEN);

    let changed =
        domain::roles::change_grants(&app.state.db, "user", &["user_all_read".into()], true)
            .await
            .unwrap();
    assert!(changed.catalog && changed.users.is_empty());
    changed.propagate(&app.state).await;
    // This replica reread before `propagate` returned: no waiting.
    let users = app.users(&someone.access, "").await;
    assert_eq!(users.status(), StatusCode::OK);
}

#[tokio::test]
async fn making_a_superuser_never_takes_over_an_account_registered_meanwhile() {
    let app = TestApp::spawn().await;
    // Registered after the operator looked the address up and found nobody.
    let squatter = app
        .user_with("Boss@Cinema.test", "the squatter knows")
        .await;
    let taken = domain::registration::make_superuser(
        &app.state.db,
        "boss@cinema.test",
        None,
        Some("$argon2id$not-a-real-hash"),
    )
    .await;
    assert!(
        matches!(taken, Err(DomainError::Conflict(Conflict::EmailTaken))),
        "{:?}",
        taken.err()
    );
    let me: Value = json_of(app.me(&squatter.access).await).await;
    assert_eq!(me["roles"], json!(["user"]));
}
