//! The gateway check endpoint on the internal listener: every decision, in the three HTTP request
//! shapes (Envoy, NGINX, Traefik), over raw HTTP so that paths reach usher exactly as written,
//! and over gRPC (Envoy's `Authorization/Check`, with tonic's client) on the same port.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use usher::config::Dur;
use usher::routes::RouteMap;

use crate::helpers::{eventually, PostgresOutage, RedisServer, Signed, TestApp};

/// Covers public, require, `require = []`, a host route, and a strict route that traversal
/// attempts from the permissive film routes must end up on.
const MAP: &str = r#"
default_policy = "deny"

[permissions]
films_read = "Browse"
films_watch = "Stream"

[[route]]
path = "/api/v1/films/{*rest}"
methods = ["GET", "HEAD"]
require = ["films_read"]

[[route]]
path = "/api/v1/films/{id}/stream"
methods = ["GET"]
require = ["films_watch"]

[[route]]
path = "/api/v1/auth/{*rest}"
public = true

[[route]]
path = "/api/v1/watchlist"
require = []

[[route]]
path = "/admin/{*rest}"
require = ["user_all_read"]

[[route]]
host = "admin.cinema.local"
path = "/{*rest}"
require = ["user_all_read"]
"#;

#[derive(Debug, Clone, Copy)]
enum Shape {
    Envoy,
    Nginx,
    Traefik,
    /// `envoy.service.auth.v3.Authorization/Check`.
    Grpc,
}

const SHAPES: [Shape; 4] = [Shape::Envoy, Shape::Nginx, Shape::Traefik, Shape::Grpc];

/// An answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        if self.status == 200 {
            return String::new();
        }
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(v["status"].as_u64(), Some(u64::from(self.status)));
        v["code"].as_str().unwrap_or_default().to_owned()
    }

    /// `(status, code)`, and for an allow, checks it is exactly the allow shape.
    fn verdict(&self) -> (u16, String) {
        if self.status == 200 {
            assert!(self.body.is_empty(), "allow has an empty body: {self:?}");
            assert!(self.header("x-user-roles").is_some(), "{self:?}");
        }
        (self.status, self.code())
    }
}

/// One HTTP/1.1 exchange over a fresh connection, the request line written as given.
fn raw(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    Answer {
        status: status.parse().unwrap(),
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect(),
        body: body.to_owned(),
    }
}

/// Asks usher about `method uri` on `host`, in the given request shape.
async fn ask(
    app: &TestApp,
    shape: Shape,
    method: &str,
    host: &str,
    uri: &str,
    token: Option<&str>,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let (check_method, target) = match shape {
        Shape::Grpc => return grpc::ask(app, method, host, uri, token).await,
        Shape::Envoy => {
            headers.push(("host", host));
            (method, format!("/ext_authz{uri}"))
        }
        Shape::Nginx => {
            headers.extend([
                ("host", host),
                ("x-original-method", method),
                ("x-original-uri", uri),
            ]);
            ("GET", "/auth".to_owned())
        }
        Shape::Traefik => {
            headers.extend([
                ("host", "usher:9191"),
                ("x-forwarded-method", method),
                ("x-forwarded-uri", uri),
                ("x-forwarded-host", host),
            ]);
            ("GET", "/auth".to_owned())
        }
    };
    let addr = app.internal;
    let check_method = check_method.to_owned();
    let headers: Vec<(String, String)> = headers
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        raw(addr, &check_method, &target, &headers)
    })
    .await
    .unwrap()
}

/// The gRPC shape, its answer read as the HTTP one would be: allow → 200 with the headers
/// usher sets, deny → the `DeniedHttpResponse`'s status, headers and body.
mod grpc {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    use super::{Answer, TestApp};

    pub async fn ask(
        app: &TestApp,
        method: &str,
        host: &str,
        uri: &str,
        token: Option<&str>,
    ) -> Answer {
        let mut client = AuthorizationClient::connect(format!("http://{}", app.internal))
            .await
            .unwrap();
        let mut headers = std::collections::HashMap::new();
        if let Some(t) = token {
            headers.insert("authorization".to_owned(), format!("Bearer {t}"));
        }
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.to_owned(),
                        host: host.to_owned(),
                        path: uri.to_owned(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let response = match client.check(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                return Answer {
                    status: match status.code() {
                        tonic::Code::Unavailable => 503,
                        tonic::Code::InvalidArgument => 400,
                        other => panic!("gRPC status {other:?}: {status}"),
                    },
                    headers: vec![("grpc-status".into(), (status.code() as i32).to_string())],
                    body: String::new(),
                }
            }
        };
        let code = response.status.as_ref().map_or(0, |s| s.code);
        let pairs = |headers: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
            headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect()
        };
        match response.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                assert_eq!(code, 0, "allow with status OK");
                Answer {
                    status: 200,
                    headers: pairs(&ok.headers),
                    body: String::new(),
                }
            }
            Some(HttpResponse::DeniedResponse(denied)) => {
                let status = denied.status.map_or(403, |s| s.code as u16);
                // UNAUTHENTICATED for 401, PERMISSION_DENIED for 403.
                assert_eq!(code, if status == 401 { 16 } else { 7 }, "{status}");
                Answer {
                    status,
                    headers: pairs(&denied.headers),
                    body: denied.body,
                }
            }
            other => panic!("no http_response: {other:?}"),
        }
    }
}

async fn spawn_with_map(
    map: &str,
    adjust: impl FnOnce(&mut usher::config::Config),
) -> (TestApp, tempfile_path::TempFile) {
    let file = tempfile_path::TempFile::new(map);
    let path = file.0.clone();
    let app = TestApp::spawn_with(move |c| {
        c.routes.file = path;
        adjust(c);
    })
    .await;
    (app, file)
}

/// A route map file removed on drop.
mod tempfile_path {
    pub struct TempFile(pub std::path::PathBuf);

    impl TempFile {
        pub fn new(text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "usher-routes-{}.toml",
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

async fn grant(app: &TestApp, role: &str, permission: &str) {
    app.sql(&format!(
        "insert into role_permissions (role_id, permission) select id, '{permission}' \
         from roles where name = '{role}'; \
         update catalog_version set version = version + 1;"
    ))
    .await;
    app.state
        .permissions
        .refresh(&app.state.db, true)
        .await
        .unwrap();
}

/// A fresh user who also holds `superuser`, with a token that says so.
async fn superuser(app: &TestApp) -> Signed {
    let mut who = app.user().await;
    app.sql(&format!(
        "insert into user_roles (user_id, role_id) select '{}', id from roles \
         where name = 'superuser'",
        who.id
    ))
    .await;
    let r = app.login(&who.email, &who.password).await;
    assert_eq!(r.status(), 200);
    let t: serde_json::Value = r.json().await.unwrap();
    who.access = t["access_token"].as_str().unwrap().to_owned();
    who
}

const HOST: &str = "cinema.local";

#[tokio::test]
async fn every_decision_in_every_request_shape() {
    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    grant(&app, "non_registered", "films_read").await;
    let user = app.user().await;
    let admin = superuser(&app).await;
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
    grant(&app, "user", "films_read").await;
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

#[tokio::test]
async fn expired_tokens_are_401_token_expired() {
    let (app, _map) = spawn_with_map(MAP, |c| c.tokens.access_ttl = Dur::secs(1)).await;
    let user = app.user().await;
    let t = Some(user.access.as_str());
    // Checked once while valid, so the expiry is also seen on the cached path.
    let r = ask(&app, Shape::Envoy, "GET", HOST, "/api/v1/watchlist", t).await;
    assert_eq!(r.verdict(), (200, String::new()));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for shape in SHAPES {
        let r = ask(&app, shape, "GET", HOST, "/api/v1/watchlist", t).await;
        assert_eq!(r.verdict(), (401, "token_expired".into()), "{shape:?}");
    }
}

#[tokio::test]
async fn logout_is_refused_here_and_on_a_replica_within_a_second() {
    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    let other = app.replica().await;
    let user = app.user().await;
    let t = Some(user.access.as_str());
    for (who, shape) in [(&app, Shape::Envoy), (&other, Shape::Nginx)] {
        let r = ask(who, shape, "GET", HOST, "/api/v1/watchlist", t).await;
        assert_eq!(r.verdict(), (200, String::new()), "before logout");
    }
    let r = app
        .post("/api/v1/auth/logout", t, serde_json::json!({}))
        .await;
    assert_eq!(r.status(), 204);
    for who in [&app, &other] {
        let refused = eventually(Duration::from_secs(1), || async {
            SHAPES.len() == refusing_shapes(who, t, "token_revoked").await
        })
        .await;
        assert!(refused, "revoked token still accepted after 1 s");
    }
}

/// How many shapes answer 401 with `code`.
async fn refusing_shapes(app: &TestApp, token: Option<&str>, code: &str) -> usize {
    let mut n = 0;
    for shape in SHAPES {
        let r = ask(app, shape, "GET", HOST, "/api/v1/watchlist", token).await;
        if r.verdict() == (401, code.to_owned()) {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn tokens_with_old_roles_are_401_token_stale() {
    let (app, _map) = spawn_with_map(MAP, |_| {}).await;
    let other = app.replica().await;
    let user = app.user().await;
    let t = Some(user.access.as_str());
    let r = ask(&other, Shape::Traefik, "GET", HOST, "/api/v1/watchlist", t).await;
    assert_eq!(r.verdict(), (200, String::new()));
    // What a role change does: bump the user's roles version, then tell every replica.
    app.sql(&format!(
        "update users set roles_version = roles_version + 1, roles_changed_at = now() \
         where id = '{}'",
        user.id
    ))
    .await;
    let db = app.state.db.get().await.unwrap();
    let row = db
        .query_one(
            "select roles_version from users where id::text = $1",
            &[&user.id],
        )
        .await
        .unwrap();
    let uid = uuid::Uuid::parse_str(&user.id).unwrap();
    app.state.revocation.roles_changed(uid, row.get(0)).await;
    for who in [&app, &other] {
        let stale = eventually(Duration::from_secs(1), || async {
            refusing_shapes(who, t, "token_stale").await == SHAPES.len()
        })
        .await;
        assert!(stale, "a token with old roles still accepted after 1 s");
    }
}

#[tokio::test]
async fn unreachable_state_is_503_never_a_guess() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let (app, _map) = spawn_with_map(MAP, move |c| {
        c.redis.url = usher::config::Secret::new(redis_url);
        c.database.timeout = Dur::secs(1);
        c.redis.timeout = Dur::secs(1);
    })
    .await;
    let mut redis = redis;
    let seen = app.user().await;
    let in_redis = app.user().await;
    let never = app.user().await;
    let r = ask(
        &app,
        Shape::Envoy,
        "GET",
        HOST,
        "/api/v1/watchlist",
        Some(&seen.access),
    )
    .await;
    assert_eq!(r.verdict(), (200, String::new()));

    // PostgreSQL down: the cached token and one whose state Redis holds keep working.
    let outage = PostgresOutage::start(&app).await;
    for (who, shape) in [(&seen, Shape::Nginx), (&in_redis, Shape::Traefik)] {
        let r = ask(
            &app,
            shape,
            "GET",
            HOST,
            "/api/v1/watchlist",
            Some(&who.access),
        )
        .await;
        assert_eq!(
            r.verdict(),
            (200, String::new()),
            "PostgreSQL down, {shape:?}"
        );
    }

    // Redis down too: a token never seen cannot be judged → 503, in every shape.
    redis.stop();
    let feed_down = eventually(Duration::from_secs(5), || async {
        !app.state.revocation.feed_is_up()
    })
    .await;
    assert!(feed_down, "the change feed noticed Redis is gone");
    for shape in SHAPES {
        let r = ask(
            &app,
            shape,
            "GET",
            HOST,
            "/api/v1/watchlist",
            Some(&never.access),
        )
        .await;
        if let Shape::Grpc = shape {
            // gRPC UNAVAILABLE: Envoy then refuses with its status_on_error.
            assert_eq!((r.status, r.header("grpc-status")), (503, Some("14")));
        } else {
            assert_eq!(r.verdict(), (503, "unavailable".into()), "{shape:?}");
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        // What needs no state is still answered.
        let r = ask(&app, shape, "GET", HOST, "/api/v1/auth/login", None).await;
        assert_eq!(r.verdict(), (200, String::new()), "{shape:?}");
        let r = ask(&app, shape, "GET", HOST, "/api/v1/watchlist", Some("junk")).await;
        assert_eq!(r.verdict(), (401, "invalid_token".into()), "{shape:?}");
    }

    outage.end().await;
}

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
        let page: serde_json::Value = app
            .get_json("/api/v1/permissions", Some(&root.access))
            .await;
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
    let roles: serde_json::Value = app.get_json("/api/v1/roles", Some(&root.access)).await;
    let user_role = roles["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "user")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/roles/{user_role}"),
            Some(&root.access),
            Some(serde_json::json!({"permissions": ["user_self_read", "posters_upload"]})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let allowed = eventually(Duration::from_secs(1), || async { posting().await == 200 }).await;
    assert!(
        allowed,
        "granting the new permission lets the request through, under the old (valid) map"
    );
}
