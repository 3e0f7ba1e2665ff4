//! Every decision in every request shape, and what the check refuses to judge.

use super::*;

#[tokio::test]
async fn every_decision_in_every_request_shape() {
    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    app.grant("non_registered", "films_read").await;
    let user = app.user().await;
    let admin = app.superuser().await;
    let (u, a) = (Some(user.access.as_str()), Some(admin.access.as_str()));

    for shape in SHAPES {
        let ctx = format!("{shape:?}");
        let check = |method: &'static str, host: &'static str, uri: &'static str, token| {
            let app = &app;
            async move { ask(app, shape, method, host, uri, token).await }
        };

        // Anonymous, allowed because non_registered holds films_read: only x-user-roles.
        let r = check("GET", HOST, "/api/v1/films/1?page=2", None).await;
        assert_eq!(r.verdict(), (200, String::new()), "{ctx}");
        assert_eq!(r.header("x-user-roles"), Some("non_registered"), "{ctx}");
        assert_eq!(r.header("x-user-id"), None, "{ctx}");
        assert_eq!(r.header("x-session-id"), None, "{ctx}");

        // Anonymous where non_registered falls short: 401 with a bare challenge.
        let r = check("GET", HOST, "/api/v1/films/1/stream", None).await;
        assert_eq!(r.verdict(), (401, "unauthorized".into()), "{ctx}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{ctx}");

        // Signed in: identity headers; what anonymous may do, a user may do too.
        let r = check("HEAD", HOST, "/api/v1/films/1", u).await;
        assert_eq!(r.verdict(), (200, String::new()), "{ctx}");
        assert_eq!(r.header("x-user-id"), Some(user.id.as_str()), "{ctx}");
        assert_eq!(r.header("x-user-roles"), Some("user"), "{ctx}");
        assert!(
            r.header("x-session-id")
                .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
            "{ctx}"
        );

        // Lacking a permission: 403.
        let r = check("GET", HOST, "/api/v1/films/1/stream", u).await;
        assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx}");
        // superuser always passes.
        let r = check("GET", HOST, "/api/v1/films/1/stream", a).await;
        assert_eq!(r.verdict(), (200, String::new()), "{ctx}");
        assert_eq!(r.header("x-user-id"), Some(admin.id.as_str()), "{ctx}");
        let roles = r.header("x-user-roles").unwrap();
        assert!(roles.split(',').any(|r| r == "superuser"), "{ctx}: {roles}");

        // require = []: any signed-in user; anonymous 401.
        let r = check("DELETE", HOST, "/api/v1/watchlist", None).await;
        assert_eq!(r.verdict(), (401, "unauthorized".into()), "{ctx}");
        let r = check("DELETE", HOST, "/api/v1/watchlist", u).await;
        assert_eq!(r.verdict(), (200, String::new()), "{ctx}");

        // No route (methods filter POST out) → default deny, even for superuser.
        let r = check("POST", HOST, "/api/v1/films/1", a).await;
        assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx}");
        let r = check("GET", HOST, "/nowhere", None).await;
        assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx}");

        // Public ignores the token, even garbage: anonymous identity.
        let r = check("POST", HOST, "/api/v1/auth/login", Some("garbage")).await;
        assert_eq!(r.verdict(), (200, String::new()), "{ctx}");
        assert_eq!(r.header("x-user-roles"), Some("non_registered"), "{ctx}");
        assert_eq!(r.header("x-user-id"), None, "{ctx}");

        // A bad token where one is needed: 401 invalid_token with the token challenge.
        for bad in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
            let r = check("GET", HOST, "/api/v1/films/1", Some(bad)).await;
            assert_eq!(r.verdict(), (401, "invalid_token".into()), "{ctx} {bad}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer error=\"invalid_token\""),
                "{ctx}"
            );
        }

        // Host routes: the admin host needs user_all_read everywhere, port ignored.
        for host in ["admin.cinema.local", "ADMIN.cinema.local:8443"] {
            let r = check("GET", host, "/api/v1/films/1", None).await;
            assert_eq!(r.verdict(), (401, "unauthorized".into()), "{ctx} {host}");
            let r = check("GET", host, "/api/v1/films/1", u).await;
            assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx} {host}");
            let r = check("GET", host, "/anything", a).await;
            assert_eq!(r.verdict(), (200, String::new()), "{ctx} {host}");
        }

        // Every plain spelling of a climb out of the film routes is judged as /admin/...:
        // anonymous (who may browse films) gets 401, a user 403 — never the films_read allow.
        for uri in [
            "/api/v1/films/../../../admin/users",
            "/api/v1/films/./../../..//admin/users/",
            "//admin//users",
            "/%61dmin/users",
        ] {
            let r = ask(&app, shape, "GET", HOST, uri, None).await;
            assert_eq!(r.verdict(), (401, "unauthorized".into()), "{ctx} {uri}");
            let r = ask(&app, shape, "GET", HOST, uri, u).await;
            assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx} {uri}");
        }
        // Above the root, bad encodings, control characters, encoded dots and slashes (refused,
        // not resolved: a gateway may forward them as written): 403, whoever asks.
        for uri in [
            "/api/v1/films/..%2f..%2f..%2fadmin/users",
            "/api/v1/films/%2e%2e/%2e%2e/%2e%2e/admin/users",
            "/api/v1/films/%2E%2E/%2e./.%2e/admin/users",
            "/api/v1/films/../../../../x",
            "/api/v1/films/..%2f..%2f..%2f..%2f..%2f",
            "/api/v1/films/%zz",
            "/api/v1/films/%00",
            "/api/v1/films/%ff",
        ] {
            let r = ask(&app, shape, "GET", HOST, uri, a).await;
            assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx} {uri}");
        }
    }

    // Every decision is counted by route and outcome.
    let metrics = app
        .client
        .get(app.internal_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"usher_check_decisions_total{route="/api/v1/films/{*rest}",outcome="allow"}"#,
        r#"usher_check_decisions_total{route="/api/v1/films/{id}/stream",outcome="unauthenticated"}"#,
        r#"usher_check_decisions_total{route="default",outcome="forbidden"}"#,
        r#"usher_check_decisions_total{route="invalid_path",outcome="forbidden"}"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// Paths an upstream would read as the stream route, and hosts that do not parse: refused (403)
/// in every request shape, even for a user who may browse films and on public routes.
#[tokio::test]
async fn paths_and_hosts_upstreams_read_differently_are_refused() {
    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    app.grant("user", "films_read").await;
    let user = app.user().await;
    let u = Some(user.access.as_str());
    for shape in SHAPES {
        let ctx = format!("{shape:?}");
        let r = ask(&app, shape, "GET", HOST, "/api/v1/films/42", u).await;
        assert_eq!(r.verdict(), (200, String::new()), "{ctx}");
        let r = ask(&app, shape, "GET", HOST, "/api/v1/films/42/stream", u).await;
        assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx}");
        for uri in [
            // Tomcat and Spring strip path parameters.
            "/api/v1/films/42/stream;jsessionid=x",
            "/api/v1/films/42;x=1/stream",
            // Express and ASP.NET route case-insensitively: judged as the stream route.
            "/api/v1/films/42/STREAM",
            "/API/V1/FILMS/42/Stream",
            "/api/v1/films/42/%53tream",
            // Backslashes, trailing dots and whitespace, encoded delimiters.
            "/api/v1/films/42/stream\\",
            "/api/v1/films\\42\\stream",
            "/api/v1/films/42/stream.",
            "/api/v1/films/42/stream%20",
            "/api/v1/films/42/stream%3Fx=1",
            "/api/v1/films/42/stream%3fx=1",
            "/api/v1/films/42/stream%2F",
            "/api/v1/films/42/stream%5C",
            "/api/v1/films/42/stream%3B",
            "/api/v1/films/42/stream%23",
            "/api/v1/films/42/stream%25",
            "/api/v1/films/42/x/..%2Fstream",
        ] {
            let r = ask(&app, shape, "GET", HOST, uri, u).await;
            assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx} {uri}");
        }
        // A host that does not parse is refused, even on a public route; it never falls
        // through to the host-less routes.
        for host in [
            "admin.cinema.local:abc",
            "admin.cinema.local:8000:",
            "admin.cinema.local..",
            "admin%2ecinema.local",
            "admin.cinema.local%2e",
            "admin..cinema.local",
        ] {
            let r = ask(&app, shape, "POST", host, "/api/v1/auth/login", None).await;
            assert_eq!(r.verdict(), (403, "forbidden".into()), "{ctx} {host}");
        }
        // One trailing dot, letter case and a port are fine: the admin route, not public.
        for host in ["admin.cinema.local.", "ADMIN.Cinema.Local:8443"] {
            let r = ask(&app, shape, "POST", host, "/api/v1/auth/login", None).await;
            assert_eq!(r.verdict(), (401, "unauthorized".into()), "{ctx} {host}");
        }
    }
}

#[tokio::test]
async fn auth_without_the_original_request_is_400() {
    let app = TestApp::spawn().await;
    let addr = app.internal;
    let answers = tokio::task::spawn_blocking(move || {
        [
            raw(addr, "GET", "/auth", &[("host", HOST)]),
            raw(
                addr,
                "GET",
                "/auth",
                &[("host", HOST), ("x-original-uri", "/api/v1/films")],
            ),
            raw(
                addr,
                "GET",
                "/auth",
                &[("host", HOST), ("x-forwarded-method", "GET")],
            ),
        ]
    })
    .await
    .unwrap();
    for r in answers {
        assert_eq!((r.status, r.code()), (400, "bad_request".into()), "{r:?}");
    }
    // Neighbours of the check paths are not checks.
    let r = app
        .client
        .get(app.internal_url("/ext_authzx"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn grpc_shares_the_port_and_refuses_what_it_cannot_judge() {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    // No attributes.request.http: not a check usher can judge, and not a guess either way.
    let mut client = AuthorizationClient::connect(format!("http://{}", app.internal))
        .await
        .unwrap();
    let status = client.check(CheckRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    // The same HTTP/2 connection goes on answering checks.
    let r = grpc::ask(&app, "GET", HOST, "/api/v1/films/1/stream", None).await;
    assert_eq!(r.verdict(), (401, "unauthorized".into()));

    // A gRPC content type on an HTTP check (a client's header passed on by the gateway) does
    // not make it a gRPC answer, whose HTTP status would be 200: it stays an HTTP check.
    let addr = app.internal;
    let r = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            "POST",
            "/ext_authz/api/v1/watchlist",
            &[("host", HOST), ("content-type", "application/grpc")],
        )
    })
    .await
    .unwrap();
    assert_eq!(r.verdict(), (401, "unauthorized".into()));
}

#[tokio::test]
async fn default_policies_authenticated_and_allow() {
    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    let user = app.user().await;
    let swap = |policy: &str| {
        let text = MAP.replace(
            "default_policy = \"deny\"",
            &format!("default_policy = \"{policy}\""),
        );
        let map = RouteMap::parse(&text, &usher::permissions::builtin_names()).unwrap();
        app.state.routes.store(Arc::new(map));
    };

    swap("authenticated");
    for shape in SHAPES {
        let r = ask(&app, shape, "GET", HOST, "/unlisted", None).await;
        assert_eq!(r.verdict(), (401, "unauthorized".into()), "{shape:?}");
        let r = ask(&app, shape, "GET", HOST, "/unlisted", Some("junk")).await;
        assert_eq!(r.verdict(), (401, "invalid_token".into()), "{shape:?}");
        let r = ask(&app, shape, "GET", HOST, "/unlisted", Some(&user.access)).await;
        assert_eq!(r.verdict(), (200, String::new()), "{shape:?}");
        assert_eq!(r.header("x-user-id"), Some(user.id.as_str()));
    }

    swap("allow");
    for shape in SHAPES {
        let r = ask(&app, shape, "PUT", HOST, "/unlisted", None).await;
        assert_eq!(r.verdict(), (200, String::new()), "{shape:?}");
        assert_eq!(r.header("x-user-roles"), Some("non_registered"));
        // Listed routes still apply.
        let r = ask(&app, shape, "GET", HOST, "/api/v1/films/1", None).await;
        assert_eq!(r.verdict(), (401, "unauthorized".into()), "{shape:?}");
    }
}
