//! The gateway check endpoint on the internal listener: every decision, in the three HTTP request
//! shapes (Envoy, NGINX, Traefik), over raw HTTP so that paths reach usher exactly as written,
//! and over gRPC (Envoy's `Authorization/Check`, with tonic's client) on the same port.

mod decisions;
mod route_map;
mod tokens;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use usher::config::Dur;
use usher::routes::RouteMap;

use crate::helpers::{eventually, PostgresOutage, RedisServer, TestApp};

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

const HOST: &str = "cinema.local";
