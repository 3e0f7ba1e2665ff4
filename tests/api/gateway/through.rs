//! A request through each gateway to the stub upstream: what it decides and which identity
//! headers the upstream receives.

use super::*;

async fn through(kind: Kind) {
    let routes = route_map_with_a_public_route();
    let file = routes.clone();
    let mut app = TestApp::spawn_with(move |c| c.routes.file = file).await;
    app.grant("non_registered", "films_read").await;
    app.grant("user", "films_watch").await;
    let user = app.user().await;
    let (upstream, upstream_task) = stub_upstream().await;
    let Some(gateway) = Gateway::start(kind, &app, upstream).await else {
        return;
    };
    let client = reqwest::Client::new();
    let stream = gateway.url("/api/v1/films/42/stream");
    let ctx = format!("{kind:?}");
    let ready = eventually(Duration::from_secs(10), || async {
        client
            .get(&stream)
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::UNAUTHORIZED)
    })
    .await;
    assert!(
        ready,
        "{ctx}: gateway never answered 401:\n{}",
        gateway.log()
    );
    let get = reqwest::Method::GET;

    // Anonymous where a permission is needed: usher's 401 reaches the client as problem+json.
    let (status, headers, body) = send(&client, get.clone(), stream.clone(), None, false).await;
    assert_eq!(status, 401, "{ctx}");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
        "{ctx}"
    );
    assert_eq!(headers["content-type"], "application/problem+json", "{ctx}");
    assert_eq!(body["code"], "unauthorized", "{ctx}");

    // Permitted: the upstream answers, and it was told who is calling.
    let t = Some(user.access.as_str());
    let (status, _, body) = send(&client, get.clone(), stream.clone(), t, false).await;
    assert_eq!(status, 200, "{ctx}: {body}");
    assert_eq!(body["path"], "/api/v1/films/42/stream", "{ctx}");
    assert_eq!(seen(&body, "x-user-id"), [user.id.as_str()], "{ctx}");
    assert_eq!(seen(&body, "x-user-roles"), ["user"], "{ctx}");
    let session = seen(&body, "x-session-id");
    assert!(
        session.len() == 1 && uuid::Uuid::parse_str(session[0]).is_ok(),
        "{ctx}: {session:?}"
    );

    // usher's public documents come from usher, not the upstream.
    for (path, key) in [
        ("/docs", ""),
        ("/openapi.json", "openapi"),
        ("/.well-known/jwks.json", "keys"),
    ] {
        let r = client.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{ctx}: {path}");
        let text = r.text().await.unwrap();
        let from_usher = match key {
            "" => text.starts_with("<!doctype html"),
            key => serde_json::from_str::<Value>(&text).is_ok_and(|doc| doc.get(key).is_some()),
        };
        assert!(
            from_usher,
            "{ctx}: {path} did not come from usher: {text:.200}"
        );
    }

    // Not permitted: 403, and the upstream is never asked.
    let url = gateway.url("/api/v1/films");
    let (status, headers, body) = send(&client, reqwest::Method::POST, url, t, false).await;
    assert_eq!(status, 403, "{ctx}");
    assert_eq!(headers["content-type"], "application/problem+json", "{ctx}");
    assert_eq!(body["code"], "forbidden", "{ctx}");

    // Forged identity headers never reach the upstream: not for an anonymous caller...
    let films = gateway.url("/api/v1/films/42");
    let (status, _, body) = send(&client, get.clone(), films.clone(), None, true).await;
    assert_eq!(status, 200, "{ctx}: {body}");
    assert!(seen(&body, "x-user-id").is_empty(), "{ctx}: {body}");
    assert!(seen(&body, "x-session-id").is_empty(), "{ctx}: {body}");
    assert_eq!(seen(&body, "x-user-roles"), ["non_registered"], "{ctx}");
    // ...nor for a signed-in one: usher's values replace them.
    let (status, _, body) = send(&client, get.clone(), stream.clone(), t, true).await;
    assert_eq!(status, 200, "{ctx}: {body}");
    assert_eq!(seen(&body, "x-user-id"), [user.id.as_str()], "{ctx}");
    assert_eq!(seen(&body, "x-user-roles"), ["user"], "{ctx}");

    // A public route: no token needed, and forged identity headers are dropped there too, with
    // a token or without.
    let public = gateway.url("/public/posters/1");
    for token in [None, t] {
        let (status, _, body) = send(&client, get.clone(), public.clone(), token, true).await;
        assert_eq!(status, 200, "{ctx}: {body}");
        assert_eq!(body["path"], "/public/posters/1", "{ctx}");
        assert!(seen(&body, "x-user-id").is_empty(), "{ctx}: {body}");
        assert!(seen(&body, "x-session-id").is_empty(), "{ctx}: {body}");
        assert_eq!(seen(&body, "x-user-roles"), ["non_registered"], "{ctx}");
    }
    let (status, _, body) = send(&client, get.clone(), public.clone(), None, false).await;
    assert_eq!(status, 200, "{ctx}: {body}");

    // Logout through the gateway (usher's own API, public in the route map): the token is
    // refused at the gateway within a second.
    let r = client
        .post(gateway.url("/api/v1/auth/logout"))
        .bearer_auth(&user.access)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{ctx}");
    let refused = eventually(Duration::from_secs(1), || async {
        send(&client, get.clone(), stream.clone(), t, false).await.0 == 401
    })
    .await;
    assert!(
        refused,
        "{ctx}: the logged-out token still passes after 1 s"
    );

    // usher gone: nothing gets through, not even what anonymous callers may see.
    app.stop().await;
    for url in [&films, &public] {
        let (status, _, body) = send(&client, get.clone(), url.clone(), None, false).await;
        assert_eq!(status, kind.usher_down_status(), "{ctx}: {url}: {body}");
        assert!(
            body.get("headers").is_none(),
            "{ctx}: reached the upstream: {body}"
        );
    }
    upstream_task.abort();
    let _ = std::fs::remove_file(routes);
}

#[tokio::test]
async fn through_envoy() {
    through(Kind::Envoy).await;
}

#[tokio::test]
async fn through_envoy_grpc() {
    through(Kind::EnvoyGrpc).await;
}

#[tokio::test]
async fn through_nginx() {
    through(Kind::Nginx).await;
}

#[tokio::test]
async fn through_traefik() {
    through(Kind::Traefik).await;
}
