//! Redis Sentinel: two ushers find the master through three sentinels and follow a failover
//! without a restart; no revoked token is ever allowed. A private master, replica and sentinels
//! run on free ports, their configuration in a temp dir.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, free_port, json_of, TestApp};
use crate::topology::{wait_for_port, Servers, Watch};

const MASTER_NAME: &str = "usher-test";

/// A Redis master, its replica and three sentinels; all killed on drop.
struct SentinelSet {
    servers: Servers,
    master: u16,
    replica: u16,
    sentinels: Vec<u16>,
}

impl SentinelSet {
    fn start() -> Option<SentinelSet> {
        let mut set = SentinelSet {
            servers: Servers::new("sentinel")?,
            master: free_port(),
            replica: free_port(),
            sentinels: (0..3).map(|_| free_port()).collect(),
        };
        let common = set.servers.common();
        let common: Vec<&str> = common.iter().map(String::as_str).collect();
        let master = set.master.to_string();
        set.servers
            .spawn(&[&["--port", &master], &common[..]].concat());
        let replica = set.replica.to_string();
        set.servers.spawn(
            &[
                &["--port", &replica, "--replicaof", "127.0.0.1", &master],
                &common[..],
            ]
            .concat(),
        );
        for port in set.sentinels.clone() {
            let conf = set.servers.dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n",
                    dir = set.servers.dir.display()
                ),
            )
            .unwrap();
            set.servers.spawn(&[conf.to_str().unwrap(), "--sentinel"]);
        }
        for port in [set.master, set.replica]
            .into_iter()
            .chain(set.sentinels.clone())
        {
            wait_for_port(port);
        }
        Some(set)
    }

    /// The first server is the original master.
    fn kill_old_master(&mut self) {
        self.servers.kill(0);
    }

    fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn sentinel(&self, i: usize) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.sentinels[i]))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The master's port, as the first sentinel reports it.
    fn master_port(&self) -> Option<u16> {
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query(&mut self.sentinel(0))
            .ok()?;
        addr.and_then(|(_, port)| port.parse().ok())
    }

    /// Asks for a failover; refused until the sentinels know a replica in sync.
    fn failover(&self) -> bool {
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query::<String>(&mut self.sentinel(0))
            .is_ok()
    }
}

#[tokio::test]
async fn sentinel_failover_is_followed_and_no_revoked_token_passes() {
    let Some(mut set) = SentinelSet::start() else {
        return;
    };
    let sentinels = set.sentinel_urls();
    let a = TestApp::spawn_with(|c| {
        c.redis.mode = usher::config::RedisMode::Sentinel;
        c.redis.sentinels = sentinels;
        c.redis.master_name = MASTER_NAME.into();
    })
    .await;
    let b = a.replica().await;
    assert!(a.state.revocation.feed_is_up() && b.state.revocation.feed_is_up());

    let revoked = a.user().await;
    let valid = a.user().await;
    // Sessions logged out while the master changes.
    let mut during = Vec::new();
    for _ in 0..6 {
        let r: serde_json::Value = a
            .login(&revoked.email, &revoked.password)
            .await
            .json()
            .await
            .unwrap();
        during.push(r["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(a.logout(&revoked.access).await.status(), 204);

    // Checks on both replicas for the whole failover: once its logout has answered, a token
    // never passes again.
    let watch = Watch::start(&[&a, &b], vec![revoked.access.clone()]);
    // The sentinels need to have seen the replica in sync before they fail over to it.
    let asked = eventually(Duration::from_secs(30), || async { set.failover() }).await;
    assert!(asked, "the sentinels should accept SENTINEL FAILOVER");
    // Logouts on both replicas, one every 100 ms: the pause spreads them over the failover,
    // which is the point, not a wait for something.
    let logouts = {
        let refused = Arc::clone(&watch.refused);
        let urls = [a.url("/api/v1/auth/logout"), b.url("/api/v1/auth/logout")];
        let client = a.client.clone();
        tokio::spawn(async move {
            for (i, token) in during.into_iter().enumerate() {
                let r = client
                    .post(&urls[i % 2])
                    .bearer_auth(&token)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204, "logout during the failover");
                refused.lock().unwrap().push(token);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let moved = eventually(Duration::from_secs(30), || async {
        set.master_port() == Some(set.replica)
    })
    .await;
    assert!(moved, "the replica should become the master");
    // The old master goes for good: nothing can reach the new one by accident.
    set.kill_old_master();

    // Both ushers follow, without a restart: a valid token passes again on both, and a logout
    // made after the failover is refused on both.
    for app in [&a, &b] {
        let passes = eventually(Duration::from_secs(10), || async {
            app.me(&valid.access).await.status() == 200
        })
        .await;
        assert!(passes, "a valid token should pass after the failover");
    }
    let both_fed = eventually(Duration::from_secs(10), || async {
        a.state.revocation.feed_is_up() && b.state.revocation.feed_is_up()
    })
    .await;
    assert!(
        both_fed,
        "both change feeds should resubscribe to the new master"
    );
    let sid = {
        let list: serde_json::Value = json_of(a.sessions(&valid.access).await).await;
        list["items"][0]["id"].as_str().unwrap().to_owned()
    };
    assert_eq!(a.logout(&valid.access).await.status(), 204);
    for app in [&a, &b] {
        let refused = eventually(Duration::from_secs(1), || async {
            app.me(&valid.access).await.status() == 401
        })
        .await;
        assert!(
            refused,
            "a logout after the failover should reach both replicas"
        );
    }
    // The mark was written to the new master.
    let (hash, field) = crate::revocation::mark(&a.config.redis.prefix, "s", &sid);
    let mut master = redis::Client::open(format!("redis://127.0.0.1:{}/0", set.replica))
        .unwrap()
        .get_connection()
        .unwrap();
    let marked: bool = redis::cmd("HEXISTS")
        .arg(hash)
        .arg(field)
        .query(&mut master)
        .unwrap();
    assert!(marked, "the logout should be marked on the new master");

    logouts.await.unwrap();
    let all_refused = eventually(Duration::from_secs(1), || async {
        let tokens = watch.refused.lock().unwrap().clone();
        for app in [&a, &b] {
            for token in &tokens {
                if app.me(token).await.status() != 401 {
                    return false;
                }
            }
        }
        true
    })
    .await;
    assert!(
        all_refused,
        "every logout made during the failover is refused on both"
    );
    watch.finish().await;
}
