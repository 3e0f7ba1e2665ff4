//! A rolling restart of usher behind Envoy.

use super::*;

/// Whether Envoy's active health checks see every listed `cluster::127.0.0.1:port` as healthy.
async fn envoy_sees_healthy(client: &reqwest::Client, admin: u16, hosts: &[(&str, u16)]) -> bool {
    let Ok(r) = client
        .get(format!("http://127.0.0.1:{admin}/clusters"))
        .send()
        .await
    else {
        return false;
    };
    let text = r.text().await.unwrap_or_default();
    hosts.iter().all(|(cluster, port)| {
        text.contains(&format!(
            "{cluster}::127.0.0.1:{port}::health_flags::healthy"
        ))
    })
}

#[tokio::test]
async fn a_rolling_restart_behind_envoy_loses_no_request() {
    let Some(_) = gateway_binary(Kind::Envoy) else {
        return;
    };
    // The owner of the database and the Redis prefix; the two replicas behind Envoy share them.
    let app = TestApp::spawn().await;
    app.grant("user", "films_read").await;
    let user = app.user().await;
    let (upstream, upstream_task) = stub_upstream().await;
    // Two replicas on fixed ports, stopped (with their drain) and started again on the same
    // ports, as a rolling restart does.
    let (api, internal): (Vec<u16>, Vec<u16>) = (0..2).map(|_| (free_port(), free_port())).unzip();
    let replica = |i: usize| {
        let (api, internal) = (api[i], internal[i]);
        app.replica_with(move |c| {
            c.listen.api = format!("127.0.0.1:{api}").parse().unwrap();
            c.listen.internal = format!("127.0.0.1:{internal}").parse().unwrap();
            c.listen.drain_delay = usher::config::Dur::secs(5);
        })
    };
    let mut replicas = vec![replica(0).await, replica(1).await];
    // The shipped config lists one replica; list both (each health-checked on its internal port).
    let two_replicas = |config: String| {
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
        let one_internal = endpoint(internal[0]);
        let one_api = checked(api[0], internal[0]);
        assert!(config.contains(&one_internal) && config.contains(&one_api));
        config
            .replace(
                &one_internal,
                &format!("{one_internal}{}", endpoint(internal[1])),
            )
            .replace(
                &one_api,
                &format!("{one_api}{}", checked(api[1], internal[1])),
            )
    };
    let Some(gateway) =
        Gateway::start_edited(Kind::Envoy, (internal[0], api[0]), upstream, two_replicas).await
    else {
        return;
    };
    let client = reqwest::Client::new();
    let every_host: Vec<(&str, u16)> = (0..2)
        .flat_map(|i| [("usher_internal", internal[i]), ("usher_api", api[i])])
        .collect();
    let all_healthy = || async { envoy_sees_healthy(&client, gateway.admin, &every_host).await };
    assert!(
        eventually(Duration::from_secs(15), all_healthy).await,
        "Envoy never saw both replicas healthy:\n{}",
        gateway.log()
    );

    // A steady stream: a check answered by usher then the upstream, and usher's own API.
    let stop_stream = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = Vec::new();
    for path in ["/api/v1/films/42", "/api/v1/users/me"] {
        for _ in 0..2 {
            let (client, url, token) = (client.clone(), gateway.url(path), user.access.clone());
            let stop = stop_stream.clone();
            streams.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.get(&url).bearer_auth(&token).send().await {
                        Ok(r) if r.status().is_success() => ok += 1,
                        Ok(r) => failed.push(format!("{url}: {}", r.status())),
                        Err(e) => failed.push(format!("{url}: {e}")),
                    }
                }
                (ok, failed)
            }));
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
    stop_stream.store(true, std::sync::atomic::Ordering::Relaxed);
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
    assert!(ok > 100, "the stream ran ({ok} requests)");
    println!("rolling restart behind Envoy: {ok} requests, none failed");
    for mut r in replicas {
        r.stop().await;
    }
    upstream_task.abort();
}
