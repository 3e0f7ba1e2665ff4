//! A revocation is never lost: not when usher's Redis command connection dies under it, not
//! when Redis cannot store it, not when Redis loses the marks afterwards.

use std::time::Duration;

use serde_json::{json, Value};
use usher::change::Change;
use usher::config::{Dur, Secret};

use crate::helpers::{eventually, json_of, problem, RedisServer, Signed, TestApp};
use crate::users::{admin, role_id};

/// The caches' time to live in these tests: after it, a replica asks Redis again.
const STATE_TTL: u64 = 2;

pub fn short_ttl(c: &mut usher::config::Config) {
    c.cache.state_ttl = Dur::secs(STATE_TTL);
}

/// Makes `apps` forget every cached state, as the caches' time to live would (the condition
/// under test is what a replica answers after that), without waiting it out: from here each
/// asks Redis or PostgreSQL again.
pub fn outlive_the_caches(apps: &[&TestApp]) {
    for app in apps {
        app.state.revocation.apply(&Change::Everything);
    }
}

fn connection(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// The one connection on `redis` that is neither subscribed nor this test's own: the command
/// connection of the only usher using it so far.
fn command_connection(redis: &RedisServer) -> i64 {
    let mut c = connection(redis);
    let me: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    let ids: Vec<i64> = list
        .lines()
        .filter_map(|line| {
            let field = |name: &str| line.split(' ').find_map(|kv| kv.strip_prefix(name));
            let id: i64 = field("id=")?.parse().ok()?;
            let subscribed = field("sub=") != Some("0") || field("psub=") != Some("0");
            (id != me && !subscribed).then_some(id)
        })
        .collect();
    assert_eq!(ids.len(), 1, "one command connection expected in\n{list}");
    ids[0]
}

fn kill(redis: &RedisServer, id: i64) {
    let mut c = connection(redis);
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        killed, 1,
        "usher's command connection should have been killed"
    );
}

/// The Redis hash and field that hold the mark of a session (`s`) or user (`u`) `id`.
pub fn mark(prefix: &str, kind: &str, id: &str) -> (String, String) {
    use usher::kv::keys;
    let id = uuid::Uuid::parse_str(id).unwrap();
    let field = match kind {
        "s" => keys::session_mark(id),
        _ => keys::roles_mark(id),
    };
    (format!("{prefix}{}", keys::marks(keys::bucket(id))), field)
}

/// The mark of `id` in `app`'s Redis, and whether its hash says it is complete.
fn mark_and_synced(app: &TestApp, kind: &str, id: &str) -> (bool, bool) {
    let (hash, field) = mark(&app.config.redis.prefix, kind, id);
    let client = redis::Client::open(app.config.redis.url.expose()).unwrap();
    let mut c = client.get_connection().unwrap();
    let found: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(hash)
        .arg(field)
        .arg("synced")
        .query(&mut c)
        .unwrap();
    (found[0].is_some(), found[1].is_some())
}

/// Whether `app`'s Redis holds the mark of `id` in a hash that says it is complete.
pub fn marked(app: &TestApp, kind: &str, id: &str) -> bool {
    mark_and_synced(app, kind, id) == (true, true)
}

/// Whether `app`'s Redis cannot take the absence of the mark of `id` for "valid": it holds
/// the mark, or its hash no longer says it is complete. A change whose write failed gets
/// there at the first retry, long before a cache's time to live runs out; a test waits for
/// it before it makes the caches forget.
async fn redis_cannot_vouch(app: &TestApp, kind: &str, id: &str) -> bool {
    eventually(Duration::from_secs(5), || async {
        let (marked, synced) = mark_and_synced(app, kind, id);
        marked || !synced
    })
    .await
}

pub async fn session_id(app: &TestApp, u: &Signed) -> String {
    let list: Value = json_of(app.sessions(&u.access).await).await;
    list["items"][0]["id"].as_str().unwrap().to_owned()
}

pub async fn code(app: &TestApp, token: &str) -> String {
    let r = app.me(token).await;
    if r.status() == 200 {
        return "ok".into();
    }
    problem(r).await.1
}

/// Waits (bounded) until `app` answers `token` with `want`.
pub async fn answers(app: &TestApp, token: &str, want: &str, within: Duration) -> bool {
    eventually(within, || async { code(app, token).await == want }).await
}

async fn spawn_on(redis: &RedisServer) -> TestApp {
    let url = redis.url();
    TestApp::spawn_with(|c| {
        c.redis.url = Secret::new(url);
        short_ttl(c);
    })
    .await
}

/// Creates the role `editor` (`films_manage`); its id.
pub async fn editor_role(app: &TestApp, root: &Signed) -> String {
    let editor = json_of(
        app.create_role(
            &root.access,
            json!({"name": "editor", "permissions": ["films_manage"]}),
        )
        .await,
    )
    .await;
    editor["id"].as_str().unwrap().to_owned()
}

/// After a change made on `a` whose Redis write failed: `token` is refused with `want` by `a`
/// at once and by `b` within a second, still by both once their caches have expired, and
/// Redis ends up holding the mark in a complete hash.
async fn refused_for_good(a: &TestApp, b: &TestApp, token: &str, want: &str, mark: (&str, &str)) {
    assert_eq!(code(a, token).await, want);
    assert!(
        answers(b, token, want, Duration::from_secs(1)).await,
        "the other replica should hear of the change once the write is retried"
    );
    assert!(redis_cannot_vouch(a, mark.0, mark.1).await);
    outlive_the_caches(&[a, b]);
    for app in [a, b] {
        assert_eq!(code(app, token).await, want);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            marked(a, mark.0, mark.1)
        })
        .await,
        "Redis should hold the mark, in a complete hash"
    );
}

#[tokio::test]
async fn a_logout_survives_the_death_of_the_redis_command_connection() {
    let redis = RedisServer::start();
    let a = spawn_on(&redis).await;
    let conn = command_connection(&redis);
    let b = a.replica().await;
    let u = a.user().await;
    for app in [&a, &b] {
        assert_eq!(code(app, &u.access).await, "ok");
    }
    let sid = session_id(&a, &u).await;

    kill(&redis, conn);
    let r = a.logout(&u.access).await;
    assert_eq!(r.status(), 204);
    refused_for_good(&a, &b, &u.access, "token_revoked", ("s", &sid)).await;
}

#[tokio::test]
async fn a_role_change_survives_the_death_of_the_redis_command_connection() {
    let redis = RedisServer::start();
    let a = spawn_on(&redis).await;
    let conn = command_connection(&redis);
    let b = a.replica().await;
    let root = admin(&a).await;
    let u = a.user().await;
    let editor = editor_role(&a, &root).await;
    for app in [&a, &b] {
        assert_eq!(code(app, &u.access).await, "ok");
    }

    kill(&redis, conn);
    let r = a.give_role(&root.access, &u.id, &editor).await;
    assert_eq!(r.status(), 204);
    refused_for_good(&a, &b, &u.access, "token_stale", ("u", &u.id)).await;
}

/// Deletes the keys under `app`'s prefix for which `keep` is false.
fn lose_keys(app: &TestApp, keep: impl Fn(&str) -> bool) {
    let client = redis::Client::open(app.config.redis.url.expose()).unwrap();
    let mut c = client.get_connection().unwrap();
    let prefix = &app.config.redis.prefix;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut c)
        .unwrap();
    let lost: Vec<&String> = keys.iter().filter(|k| !keep(&k[prefix.len()..])).collect();
    assert!(!lost.is_empty(), "Redis should have held marks");
    let _: () = redis::cmd("DEL").arg(lost).query(&mut c).unwrap();
}

#[tokio::test]
async fn redis_losing_its_marks_does_not_bring_a_revoked_token_back() {
    let a = TestApp::spawn_with(short_ttl).await;
    let b = a.replica().await;
    let root = admin(&a).await;
    let ended = a.user().await;
    let changed = a.user().await;
    let fine = a.user().await;
    let sid = session_id(&a, &ended).await;
    let r = a.logout(&ended.access).await;
    assert_eq!(r.status(), 204);
    let superuser = role_id(&a, &root.access, "superuser").await;
    let r = a.give_role(&root.access, &changed.id, &superuser).await;
    assert_eq!(r.status(), 204);
    let refusals = [
        (&ended.access, "token_revoked"),
        (&changed.access, "token_stale"),
        (&fine.access, "ok"),
    ];
    for app in [&a, &b] {
        for (token, want) in refusals {
            assert!(answers(app, token, want, Duration::from_secs(1)).await);
        }
    }

    // An allkeys-* eviction takes the marks but leaves whatever says "complete"; later
    // everything is lost (a flush, a failover to an empty replica).
    let losses: [&dyn Fn(&str) -> bool; 2] = [&|name| name == "synced", &|_| false];
    for keep in losses {
        lose_keys(&a, keep);
        outlive_the_caches(&[&a, &b]);
        for app in [&a, &b] {
            for (token, want) in refusals {
                assert_eq!(code(app, token).await, want);
            }
        }
        // The mirror is rebuilt from PostgreSQL with no restart and no feed reconnect.
        assert!(
            eventually(Duration::from_secs(5), || async {
                marked(&a, "s", &sid) && marked(&a, "u", &changed.id)
            })
            .await,
            "Redis should be rebuilt from PostgreSQL"
        );
    }
    outlive_the_caches(&[&a, &b]);
    for app in [&a, &b] {
        for (token, want) in refusals {
            assert_eq!(code(app, token).await, want);
        }
    }
}

#[tokio::test]
async fn a_logout_redis_has_no_memory_for_is_never_taken_for_valid() {
    let redis = RedisServer::start();
    let a = spawn_on(&redis).await;
    let b = a.replica().await;
    let u = a.user().await;
    let fine = a.user().await;
    let sid = session_id(&a, &u).await;
    for app in [&a, &b] {
        assert_eq!(code(app, &u.access).await, "ok");
    }
    let mut c = connection(&redis);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut c)
        .unwrap();

    // The mark cannot be stored (OOM, noeviction); the announcement still goes out.
    let r = a.logout(&u.access).await;
    assert_eq!(r.status(), 204);
    // Before the logout answers, the mark's hash has stopped vouching (not at the first retry,
    // which would leave a replica that asks Redis meanwhile taking the absent mark for valid).
    assert_eq!(
        mark_and_synced(&a, "s", &sid),
        (false, false),
        "the hash still vouches for a session whose mark it lacks"
    );
    for app in [&a, &b] {
        assert!(answers(app, &u.access, "token_revoked", Duration::from_secs(1)).await);
    }
    assert!(redis_cannot_vouch(&a, "s", &sid).await);
    outlive_the_caches(&[&a, &b]);
    for app in [&a, &b] {
        assert_eq!(code(app, &u.access).await, "token_revoked");
        assert_eq!(code(app, &fine.access).await, "ok");
    }
    assert_eq!(
        a.state.revocation.pending(),
        1,
        "the logout waits for Redis"
    );

    // Memory again: the retry lands, the mirror is whole, and still nothing comes back.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.state.revocation.pending() == 0 && marked(&a, "s", &sid)
        })
        .await,
        "the retried mark should reach Redis"
    );
    outlive_the_caches(&[&a, &b]);
    for app in [&a, &b] {
        assert_eq!(code(app, &u.access).await, "token_revoked");
        assert_eq!(code(app, &fine.access).await, "ok");
    }
}

#[tokio::test]
async fn expired_marks_are_pruned_and_live_ones_kept() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let sid = session_id(&app, &u).await;
    let r = app.logout(&u.access).await;
    assert_eq!(r.status(), 204);
    assert!(marked(&app, "s", &sid));
    let old = uuid::Uuid::new_v4().to_string();
    let (hash, field) = mark(&app.config.redis.prefix, "s", &old);
    let client = redis::Client::open(app.config.redis.url.expose()).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg(&field)
        .arg(1)
        .query(&mut c)
        .unwrap();
    app.state.revocation.prune().await.unwrap();
    let kept: bool = redis::cmd("HEXISTS")
        .arg(&hash)
        .arg(&field)
        .query(&mut c)
        .unwrap();
    assert!(!kept, "a mark past its token lifetime should be dropped");
    assert!(marked(&app, "s", &sid));
}

#[tokio::test]
async fn a_roles_version_mark_never_goes_back() {
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let uid = uuid::Uuid::parse_str(&u.id).unwrap();
    // Two quick changes whose writes reach Redis out of order.
    app.state.revocation.roles_changed(uid, 6).await;
    app.state.revocation.roles_changed(uid, 5).await;
    let (hash, field) = mark(&app.config.redis.prefix, "u", &u.id);
    let client = redis::Client::open(app.config.redis.url.expose()).unwrap();
    let mut c = client.get_connection().unwrap();
    let value: String = redis::cmd("HGET")
        .arg(&hash)
        .arg(&field)
        .query(&mut c)
        .unwrap();
    assert!(value.starts_with("6 "), "{value}");
}

#[tokio::test]
async fn an_unknown_feed_message_is_counted_and_changes_nothing() {
    let a = TestApp::spawn().await;
    let u = a.user().await;
    let client = redis::Client::open(a.config.redis.url.expose()).unwrap();
    let mut c = client.get_connection().unwrap();
    let channel = format!("{}{}", a.config.redis.prefix, usher::kv::keys::FEED);
    // A message from a newer version, and a revocation this version cannot read.
    for message in ["z something new", &format!("s {} extra", u.id)] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(message)
            .query(&mut c)
            .unwrap();
    }
    let counted = eventually(Duration::from_secs(2), || async {
        crate::seams::metrics(&a)
            .await
            .contains("\nusher_feed_unknown_total 2\n")
    })
    .await;
    assert!(counted, "both messages should be counted as unknown");
    assert!(a.state.revocation.feed_is_up(), "the feed stays up");
    assert_eq!(code(&a, &u.access).await, "ok");
}
