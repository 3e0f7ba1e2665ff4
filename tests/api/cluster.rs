//! Redis Cluster: two ushers on a private three-master cluster share revocations and role
//! changes, the marks spread over the shards, and a master's death costs a detour through
//! PostgreSQL, never a wrong allow, until it is back. With a replica per master, a failover
//! (every replica taking over) loses no revocation.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{eventually, free_port, tool, TestApp};
use crate::revocation::{
    answers, code, editor_role, mark, outlive_the_caches, session_id, short_ttl,
};
use crate::topology::{wait_for_port, Servers, Watch};
use crate::users::admin;

/// Three masters, each with `replicas` replicas; with none, a master that stops leaves its
/// slots down (and only those: `cluster-require-full-coverage no`) until it comes back.
struct Cluster {
    servers: Servers,
    ports: Vec<u16>,
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        Cluster::start_with(0).await
    }

    async fn start_with(replicas: usize) -> Option<Cluster> {
        let mut cluster = Cluster {
            servers: Servers::new("cluster")?,
            ports: (0..3 * (1 + replicas)).map(|_| port_with_bus()).collect(),
        };
        let cli = tool("redis-cli", &[])?;
        let common = cluster.servers.common();
        for port in cluster.ports.clone() {
            let port = port.to_string();
            let conf = format!("nodes-{port}.conf");
            let mut args = vec![
                "--port",
                &port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
            ];
            args.extend(common.iter().map(String::as_str));
            cluster.servers.spawn(&args);
        }
        for port in &cluster.ports {
            wait_for_port(*port);
        }
        let created = Command::new(cli)
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let ready = eventually(Duration::from_secs(30), || async {
            (0..cluster.ports.len()).all(|i| cluster.state_ok(i))
        })
        .await;
        assert!(ready, "the cluster should come up");
        Some(cluster)
    }

    /// Whether node `i` is a replica.
    fn is_replica(&self, i: usize) -> bool {
        self.node(i)
            .and_then(|mut c| redis::cmd("ROLE").query::<redis::Value>(&mut c).ok())
            .is_some_and(|role| format!("{role:?}").contains("slave"))
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn node(&self, i: usize) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.ports[i]))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    }

    fn state_ok(&self, i: usize) -> bool {
        self.node(i)
            .and_then(|mut c| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut c)
                    .ok()
            })
            .is_some_and(|info| info.contains("cluster_state:ok"))
    }

    /// The keys node `i` itself holds under `prefix`.
    fn keys(&self, i: usize, prefix: &str) -> Vec<String> {
        let Some(mut c) = self.node(i) else {
            return Vec::new();
        };
        redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut c)
            .unwrap_or_default()
    }

    /// Whether node `i` holds `hash` with `field` and `synced`.
    fn holds(&self, i: usize, hash: &str, field: &str) -> bool {
        let Some(mut c) = self.node(i) else {
            return false;
        };
        redis::cmd("HMGET")
            .arg(hash)
            .arg(field)
            .arg("synced")
            .query::<Vec<Option<String>>>(&mut c)
            .is_ok_and(|v| v.iter().all(Option::is_some))
    }

    /// How many marks hashes each node holds.
    fn marks_per_node(&self, prefix: &str) -> Vec<usize> {
        let marks = format!("{prefix}marks:");
        (0..3)
            .map(|i| {
                self.keys(i, prefix)
                    .iter()
                    .filter(|k| k.starts_with(&marks))
                    .count()
            })
            .collect()
    }
}

/// A free port whose cluster bus port (10000 above it, as every Redis version has it) is free
/// too.
fn port_with_bus() -> u16 {
    loop {
        let port = free_port();
        if port <= u16::MAX - 10_000
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

/// Two ushers in cluster mode on `cluster`, their change feeds subscribed.
async fn two_ushers(cluster: &Cluster) -> (TestApp, TestApp) {
    let nodes = cluster.urls();
    let a = TestApp::spawn_with(|c| {
        c.redis.mode = usher::config::RedisMode::Cluster;
        c.redis.nodes = nodes;
        short_ttl(c);
    })
    .await;
    let b = a.replica().await;
    let fed = eventually(Duration::from_secs(10), || async {
        a.state.revocation.feed_is_up() && b.state.revocation.feed_is_up()
    })
    .await;
    assert!(fed, "both change feeds should subscribe");
    (a, b)
}

async fn login(app: &TestApp, email: &str, password: &str) -> String {
    let r: Value = app.login(email, password).await.json().await.unwrap();
    r["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_ushers_share_a_cluster_and_a_dead_master_never_lets_a_revoked_token_pass() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let (a, b) = two_ushers(&cluster).await;
    let prefix = a.config.redis.prefix.clone();

    // A logout on A is refused on B.
    let out = a.user().await;
    let sid = session_id(&a, &out).await;
    for app in [&a, &b] {
        assert_eq!(code(app, &out.access).await, "ok");
    }
    let r = a.logout(&out.access).await;
    assert_eq!(r.status(), 204);
    for app in [&a, &b] {
        assert!(answers(app, &out.access, "token_revoked", Duration::from_secs(1)).await);
    }

    // A role change on A makes the user's tokens stale on B.
    let root = admin(&a).await;
    let promoted = a.user().await;
    let editor = editor_role(&a, &root).await;
    for app in [&a, &b] {
        assert_eq!(code(app, &promoted.access).await, "ok");
    }
    let r = b.give_role(&root.access, &promoted.id, &editor).await;
    assert_eq!(r.status(), 204);
    for app in [&a, &b] {
        assert!(answers(app, &promoted.access, "token_stale", Duration::from_secs(1)).await);
    }

    // The sixteen marks hashes are all there, complete, and spread over the shards.
    let spread = eventually(Duration::from_secs(5), || async {
        cluster.marks_per_node(&prefix).iter().sum::<usize>() == 16
    })
    .await;
    let per_node = cluster.marks_per_node(&prefix);
    assert!(spread, "16 marks hashes expected, found {per_node:?}");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "the marks should live on more than one shard: {per_node:?}"
    );
    // A failover raises the cluster's epoch (raised by hand here): both ushers notice, and
    // ask PostgreSQL until they have rebuilt the marks a promoted replica may lack.
    let seen = [a.state.kv.generation(), b.state.kv.generation()];
    for i in 0..3 {
        let _: String = redis::cmd("CLUSTER")
            .arg("BUMPEPOCH")
            .query(&mut cluster.node(i).unwrap())
            .unwrap();
    }
    let noticed = eventually(Duration::from_secs(5), || async {
        a.state.kv.generation() > seen[0] && b.state.kv.generation() > seen[1]
    })
    .await;
    assert!(noticed, "a new cluster epoch should be noticed");
    for app in [&a, &b] {
        assert_eq!(code(app, &out.access).await, "token_revoked");
        assert_eq!(code(app, &promoted.access).await, "token_stale");
    }

    let (hash, field) = mark(&prefix, "s", &sid);
    let victim = (0..3)
        .find(|i| cluster.holds(*i, &hash, &field))
        .expect("the logout's mark is on one of the nodes");

    // Checks on both replicas from here to the end: a refused token never passes again.
    let valid = a.user().await;
    let watch = Watch::start(&[&a, &b], vec![out.access.clone()]);

    // The master holding that mark dies.
    cluster.servers.kill(victim);
    for app in [&a, &b] {
        let passes = eventually(Duration::from_secs(10), || async {
            code(app, &valid.access).await == "ok"
        })
        .await;
        assert!(passes, "a valid token should pass with a master down");
    }
    outlive_the_caches(&[&a, &b]);
    for app in [&a, &b] {
        assert_eq!(code(app, &out.access).await, "token_revoked");
    }
    // A logout while the master is down is refused on both.
    let during = login(&a, &valid.email, &valid.password).await;
    for app in [&a, &b] {
        assert!(answers(app, &during, "ok", Duration::from_secs(10)).await);
    }
    let r = b.logout(&during).await;
    assert_eq!(r.status(), 204);
    watch.refuse(during.clone());
    for app in [&a, &b] {
        assert!(answers(app, &during, "token_revoked", Duration::from_secs(2)).await);
    }

    // It comes back empty, on the same slots: the mirror is rebuilt from PostgreSQL, the
    // feeds come back, and everything answers as before.
    cluster.servers.restart(victim);
    wait_for_port(cluster.ports[victim]);
    let rebuilt = eventually(Duration::from_secs(30), || async {
        cluster.holds(victim, &hash, &field)
            && a.state.revocation.feed_is_up()
            && b.state.revocation.feed_is_up()
    })
    .await;
    assert!(
        rebuilt,
        "the restarted master should get its marks back from PostgreSQL"
    );
    outlive_the_caches(&[&a, &b]);
    for app in [&a, &b] {
        assert_eq!(code(app, &out.access).await, "token_revoked");
        assert_eq!(code(app, &during).await, "token_revoked");
        assert!(answers(app, &valid.access, "ok", Duration::from_secs(5)).await);
    }
    watch.finish().await;
}

#[tokio::test]
async fn a_replica_promoted_in_a_cluster_failover_loses_no_revocation() {
    let Some(cluster) = Cluster::start_with(1).await else {
        return;
    };
    let (a, b) = two_ushers(&cluster).await;

    // A logout just before the failover, and checks on both ushers from here to the end.
    let out = a.user().await;
    let valid = a.user().await;
    let r = a.logout(&out.access).await;
    assert_eq!(r.status(), 204);
    for app in [&a, &b] {
        assert!(answers(app, &out.access, "token_revoked", Duration::from_secs(1)).await);
    }
    let watch = Watch::start(&[&a, &b], vec![out.access.clone()]);

    // Every replica takes over its master at once (no agreement, no waiting for the master's
    // last writes): what a failover after a master's loss does.
    let seen = [a.state.kv.generation(), b.state.kv.generation()];
    let replicas: Vec<usize> = (0..cluster.ports.len())
        .filter(|i| cluster.is_replica(*i))
        .collect();
    assert_eq!(replicas.len(), 3, "one replica per master");
    for i in &replicas {
        let _: String = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .arg("TAKEOVER")
            .query(&mut cluster.node(*i).unwrap())
            .unwrap();
    }
    let promoted = eventually(Duration::from_secs(30), || async {
        replicas.iter().all(|i| !cluster.is_replica(*i))
            && (0..cluster.ports.len()).all(|i| cluster.state_ok(i))
    })
    .await;
    assert!(promoted, "the replicas should become masters");
    let noticed = eventually(Duration::from_secs(10), || async {
        a.state.kv.generation() > seen[0] && b.state.kv.generation() > seen[1]
    })
    .await;
    assert!(noticed, "both ushers should notice the failover");

    // Valid tokens pass, the revoked one stays refused, with or without cached answers.
    for app in [&a, &b] {
        assert!(answers(app, &valid.access, "ok", Duration::from_secs(10)).await);
        assert_eq!(code(app, &out.access).await, "token_revoked");
    }
    outlive_the_caches(&[&a, &b]);
    for app in [&a, &b] {
        assert_eq!(code(app, &out.access).await, "token_revoked");
    }
    // A logout after the failover is refused on both within a second.
    let after = login(&a, &valid.email, &valid.password).await;
    for app in [&a, &b] {
        assert!(answers(app, &after, "ok", Duration::from_secs(10)).await);
    }
    let r = b.logout(&after).await;
    assert_eq!(r.status(), 204);
    watch.refuse(after.clone());
    for app in [&a, &b] {
        assert!(answers(app, &after, "token_revoked", Duration::from_secs(1)).await);
    }
    outlive_the_caches(&[&a, &b]);
    for app in [&a, &b] {
        assert_eq!(code(app, &out.access).await, "token_revoked");
        assert_eq!(code(app, &after).await, "token_revoked");
    }
    watch.finish().await;
}
