//! Signing keys retire: by themselves `access_ttl` plus the leeway after they were rotated
//! out, or at once with `usher keys retire KID`, on every running replica.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::usher_for;
use crate::helpers::{eventually, problem, TestApp};

async fn kids(app: &TestApp) -> Vec<String> {
    let jwks: Value = app.get_json("/.well-known/jwks.json", None).await;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// The check endpoint's status for a catalog read with `token`: 403 for a valid token without
/// `films_read`, 401 for a refused token.
async fn check_status(app: &TestApp, token: &str) -> u16 {
    app.client
        .get(app.internal_url("/ext_authz/api/v1/films/42"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test]
async fn keys_retire_removes_a_key_from_every_replica_at_once() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let u = a.user().await;
    let old = kid_of(&u.access);
    let run = usher_for(&a, &["keys", "rotate"]).await;
    assert!(run.ok, "{}", run.stderr);
    for app in [&a, &b] {
        let both = eventually(Duration::from_secs(2), || async {
            kids(app).await.len() == 2
        })
        .await;
        assert!(both, "the rotation reaches every replica");
        assert_eq!(app.me(&u.access).await.status(), 200);
        assert_eq!(check_status(app, &u.access).await, 403);
    }
    let new = kids(&a).await.into_iter().find(|k| *k != old).unwrap();

    // the signing key cannot go before a successor signs; unknown ids are named
    let run = usher_for(&a, &["keys", "retire", &new]).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("keys rotate"), "{}", run.stderr);
    let run = usher_for(&a, &["keys", "retire", "ed-0000000000000000"]).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("no signing key"), "{}", run.stderr);

    let run = usher_for(&a, &["keys", "retire", &old]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("retired"), "{}", run.stdout);
    for app in [&a, &b] {
        let gone = eventually(Duration::from_secs(1), || async {
            kids(app).await == [new.clone()]
        })
        .await;
        assert!(gone, "the retired key leaves the JWKS within a second");
        // tokens it signed are refused, even those verified (and cached) before
        assert_eq!(
            problem(app.me(&u.access).await).await,
            (401, "invalid_token".into())
        );
        assert_eq!(check_status(app, &u.access).await, 401);
    }
    // new tokens are signed by the new key and work
    let fresh: Value = a.login(&u.email, &u.password).await.json().await.unwrap();
    let access = fresh["access_token"].as_str().unwrap();
    assert_eq!(kid_of(access), new);
    assert_eq!(b.me(access).await.status(), 200);
    // idempotent
    assert!(usher_for(&a, &["keys", "retire", &old]).await.ok);
}

#[tokio::test]
async fn a_rotated_out_key_retires_by_itself_after_access_ttl_and_leeway() {
    let app = TestApp::spawn_with(|c| c.tokens.access_ttl = usher::config::Dur::secs(2)).await;
    let u = app.user().await;
    let old = kid_of(&u.access);
    let new = usher::tokens::rotate(&app.state.db, &app.config.tokens)
        .await
        .unwrap();
    // As if the rotation happened 26 s ago: the old key's tokens have all expired, and it
    // retires 2 s (access_ttl) + 30 s (leeway) after the rotation, so about 6 s from now.
    app.sql(&format!(
        "update signing_keys set created_at = now() - interval '1 hour' where kid = '{old}';
         update signing_keys set created_at = now() - interval '26 seconds' where kid = '{new}'"
    ))
    .await;
    app.state
        .revocation
        .announce(usher::change::Change::Keys)
        .await;
    let both = eventually(Duration::from_secs(2), || async {
        kids(&app).await.len() == 2
    })
    .await;
    assert!(both, "still listed until it retires");
    // no command, no announcement: it leaves the JWKS by itself
    let gone = eventually(Duration::from_secs(15), || async {
        kids(&app).await == [new.clone()]
    })
    .await;
    assert!(gone, "the rotated-out key should retire by itself");
    // and a restart (a fresh load) does not bring it back
    let replica = app.replica().await;
    assert_eq!(kids(&replica).await, [new]);
}
