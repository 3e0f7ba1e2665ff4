//! A rolling restart of usher behind Envoy.

use super::*;
use crate::helpers::Served;

/// Envoy's `/clusters` page: the health flags of every host (empty when Envoy cannot answer).
async fn envoy_clusters(client: &reqwest::Client, admin: u16) -> String {
    match client
        .get(format!("http://127.0.0.1:{admin}/clusters"))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Whether Envoy's active health checks see every listed `cluster::127.0.0.1:port` as healthy.
async fn envoy_sees_healthy(client: &reqwest::Client, admin: u16, hosts: &[(&str, u16)]) -> bool {
    let text = envoy_clusters(client, admin).await;
    hosts.iter().all(|(cluster, port)| {
        text.contains(&format!(
            "{cluster}::127.0.0.1:{port}::health_flags::healthy"
        ))
    })
}

/// The shipped config lists one replica, `replicas[0]`; list them all, each health-checked on
/// its internal port, as a name resolving to every replica would.
fn widen(config: String, replicas: &[(u16, u16)]) -> String {
    let endpoint = |port: u16| {
        format!(
            "              - endpoint:\n                  address:\n                    \
             socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
        )
    };
    let checked = |port: u16, check: u16| {
        format!(
            "{}                  health_check_config: {{ port_value: {check} }}\n",
            endpoint(port)
        )
    };
    let (api, internal) = replicas[0];
    let (one_internal, one_api) = (endpoint(internal), checked(api, internal));
    assert!(config.contains(&one_internal) && config.contains(&one_api));
    let every_internal: String = replicas.iter().map(|&(_, i)| endpoint(i)).collect();
    let every_api: String = replicas.iter().map(|&(a, i)| checked(a, i)).collect();
    config
        .replace(&one_internal, &every_internal)
        .replace(&one_api, &every_api)
}

/// Requests to `url` with `token` until `stop`: how many succeeded, and what each failure was.
fn stream(
    client: &reqwest::Client,
    url: String,
    token: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u32, Vec<String>)> {
    let (client, token, stop) = (client.clone(), token.to_owned(), stop.clone());
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match client.get(&url).bearer_auth(&token).send().await {
                Ok(r) if r.status().is_success() => ok += 1,
                Ok(r) => failed.push(format!("{url}: {}", r.status())),
                Err(e) => failed.push(format!("{url}: {e}")),
            }
        }
        (ok, failed)
    })
}

/// Stops the streams and fails the test on any failed request.
async fn none_failed(
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    streams: Vec<tokio::task::JoinHandle<(u32, Vec<String>)>>,
) -> u32 {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for s in streams {
        let (n, f) = s.await.unwrap();
        ok += n;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(ok > 100, "the streams ran ({ok} requests)");
    ok
}

/// Replicas behind Envoy.
const REPLICAS: usize = 3;

#[tokio::test]
async fn a_rolling_restart_behind_envoy_loses_no_request() {
    let Some(_) = gateway_binary(Kind::Envoy) else {
        return;
    };
    // The owner of the database and the Redis prefix; the replicas behind Envoy share them.
    let app = TestApp::spawn().await;
    app.grant("user", "films_read").await;
    let user = app.user().await;
    let (upstream, upstream_task) = stub_upstream().await;
    // Replicas on fixed ports, stopped (with their drain) and started again on the same
    // ports, as a rolling restart does.
    let (api, internal): (Vec<u16>, Vec<u16>) =
        (0..REPLICAS).map(|_| (free_port(), free_port())).unzip();
    let replica = |i: usize| {
        let (api, internal) = (api[i], internal[i]);
        app.replica_with(move |c| {
            c.listen.api = format!("127.0.0.1:{api}").parse().unwrap();
            c.listen.internal = format!("127.0.0.1:{internal}").parse().unwrap();
            c.listen.drain_delay = usher::config::Dur::secs(5);
        })
    };
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas.push(replica(i).await);
    }
    let ports: Vec<(u16, u16)> = api.iter().copied().zip(internal.iter().copied()).collect();
    let Some(gateway) = Gateway::start_edited(Kind::Envoy, (internal[0], api[0]), upstream, |c| {
        widen(c, &ports)
    })
    .await
    else {
        return;
    };
    let client = reqwest::Client::new();
    let every_host: Vec<(&str, u16)> = (0..REPLICAS)
        .flat_map(|i| [("usher_internal", internal[i]), ("usher_api", api[i])])
        .collect();
    let all_healthy = || async { envoy_sees_healthy(&client, gateway.admin, &every_host).await };
    assert!(
        eventually(Duration::from_secs(15), all_healthy).await,
        "Envoy never saw every replica healthy:\n{}",
        gateway.log()
    );

    // A steady stream: a check answered by usher then the upstream, and usher's own API.
    let stop_stream = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = Vec::new();
    for path in ["/api/v1/films/42", "/api/v1/users/me"] {
        for _ in 0..2 {
            streams.push(stream(
                &client,
                gateway.url(path),
                &user.access,
                &stop_stream,
            ));
        }
    }

    // Restart each replica in turn, waiting for Envoy to see the new one before the next.
    for (i, running) in replicas.iter_mut().enumerate() {
        running.stop().await;
        *running = replica(i).await;
        assert!(
            eventually(Duration::from_secs(15), all_healthy).await,
            "Envoy never saw replica {i} back:\n{}",
            gateway.log()
        );
    }
    let ok = none_failed(&stop_stream, streams).await;
    println!("rolling restart behind Envoy: {ok} requests, none failed");
    for mut r in replicas {
        r.stop().await;
    }
    upstream_task.abort();
}

/// Whether Envoy no longer counts `port` of `cluster` as healthy (failed health checks or
/// ejected by outlier detection).
async fn envoy_gave_up_on(client: &reqwest::Client, admin: u16, cluster: &str, port: u16) -> bool {
    let text = envoy_clusters(client, admin).await;
    let flags = format!("{cluster}::127.0.0.1:{port}::health_flags::");
    text.lines()
        .find_map(|l| l.strip_prefix(&flags))
        .is_some_and(|f| f != "healthy")
}

#[tokio::test]
async fn a_replica_that_crashes_behind_envoy_costs_no_check() {
    let Some(_) = gateway_binary(Kind::Envoy) else {
        return;
    };
    let app = TestApp::spawn().await;
    app.grant("user", "films_read").await;
    let user = app.user().await;
    let (upstream, upstream_task) = stub_upstream().await;
    // A second replica as its own process, so that it can die the way a process dies.
    let mut doomed = Served::start(&[
        ("USHER_DATABASE__URL", app.config.database.url.expose()),
        ("USHER_REDIS__PREFIX", &app.config.redis.prefix),
    ]);
    let client = reqwest::Client::new();
    doomed.wait_ready(&client).await;
    let ports = [
        (app.api.port(), app.internal.port()),
        (doomed.api, doomed.internal),
    ];
    let Some(gateway) =
        Gateway::start_edited(Kind::Envoy, (ports[0].1, ports[0].0), upstream, |c| {
            widen(c, &ports)
        })
        .await
    else {
        return;
    };
    let hosts: Vec<(&str, u16)> = ports.iter().map(|&(_, i)| ("usher_internal", i)).collect();
    assert!(
        eventually(Duration::from_secs(15), || envoy_sees_healthy(
            &client,
            gateway.admin,
            &hosts
        ))
        .await,
        "Envoy never saw both replicas healthy:\n{}",
        gateway.log()
    );

    // Checks stream through Envoy to both replicas; then one is killed mid-stream. A check on
    // a connection it reset, or sent before Envoy noticed, is retried on the other replica.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streams: Vec<_> = (0..4)
        .map(|_| {
            stream(
                &client,
                gateway.url("/api/v1/films/42"),
                &user.access,
                &stop,
            )
        })
        .collect();
    let served = |n: u64| {
        let client = client.clone();
        let url = doomed.internal_url("/metrics");
        async move {
            let text = client.get(&url).send().await.ok()?.text().await.ok()?;
            let checks: f64 = text
                .lines()
                .filter(|l| l.starts_with("usher_check_decisions_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (checks as u64 >= n).then_some(())
        }
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            served(50).await.is_some()
        })
        .await,
        "the doomed replica never served checks"
    );
    doomed.kill();
    assert!(
        eventually(Duration::from_secs(15), || envoy_gave_up_on(
            &client,
            gateway.admin,
            "usher_internal",
            ports[1].1
        ))
        .await,
        "Envoy kept the dead replica:\n{}",
        gateway.log()
    );
    let ok = none_failed(&stop, streams).await;
    println!("a replica killed behind Envoy: {ok} checks, none failed");
    upstream_task.abort();
}
