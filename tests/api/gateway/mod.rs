//! End to end through the real gateways: Envoy (`ext_authz` over HTTP and over gRPC), NGINX
//! (`auth_request`) and Traefik (`forwardAuth`) run from the files in `gateway-config/`,
//! rendered by `gateway-config/render.sh`, in front of usher and a stub upstream that echoes the
//! headers it receives.
//!
//! A missing gateway binary fails the test, unless `USHER_SKIP_GATEWAYS=1` (never with
//! `CI=true`): then the test says so and returns (`.ci/install-gateways` installs them).

mod configs;
mod one_request;
mod rolling;
mod through;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::{json, Value};

use usher::routes::{normalize_path, RouteMap};

use crate::helpers::{eventually, free_port, missing, TestApp};

const CONFIG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway-config");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Envoy,
    EnvoyGrpc,
    Nginx,
    Traefik,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Envoy | Kind::EnvoyGrpc => "envoy",
            Kind::Nginx => "nginx",
            Kind::Traefik => "traefik",
        }
    }

    /// The templates in `gateway-config/`, rendered under the same name; the first is the
    /// one the gateway is started with.
    fn templates(self) -> &'static [&'static str] {
        match self {
            Kind::Envoy => &["envoy.yaml"],
            Kind::EnvoyGrpc => &["envoy-grpc.yaml"],
            Kind::Nginx => &["nginx.conf"],
            Kind::Traefik => &["traefik/traefik.yml", "traefik/dynamic.yml"],
        }
    }

    /// What the client gets when usher cannot be reached.
    fn usher_down_status(self) -> u16 {
        match self {
            // forwardAuth answers its own 500 when the authorizer cannot be reached.
            Kind::Traefik => 500,
            _ => 503,
        }
    }
}

/// Renders `template` (a path under `gateway-config/`) to `output`.
fn render(template: &str, output: &Path, vars: &[(&str, String)]) {
    let status = Command::new("sh")
        .arg(Path::new(CONFIG_DIR).join("render.sh"))
        .arg(Path::new(CONFIG_DIR).join(template))
        .arg(output)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .unwrap();
    assert!(status.success(), "render.sh {template} failed");
}

/// The first executable named `name` on PATH (and the sbin folders) that is not a script: a
/// wrapper such as pip's `envoy` would leave the real gateway running when killed.
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/bin", "/usr/local/sbin", "/usr/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            let mut start = [0u8; 2];
            candidate.is_file()
                && std::fs::File::open(candidate)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut start))
                    .is_ok_and(|()| &start != b"#!")
        });
    found
}

/// The gateway binary, or `None` when it is missing and skipped on purpose
/// (`USHER_SKIP_GATEWAYS=1`); otherwise a missing one fails the test.
fn gateway_binary(kind: Kind) -> Option<PathBuf> {
    let name = kind.binary();
    let found = find_binary(name);
    if found.is_none() {
        missing(name);
    }
    found
}

/// A running gateway: its own folder, its process group killed on drop.
struct Gateway {
    kind: Kind,
    port: u16,
    admin: u16,
    dir: PathBuf,
    child: Child,
}

impl Gateway {
    async fn start(kind: Kind, app: &TestApp, upstream: u16) -> Option<Gateway> {
        let usher = (app.internal.port(), app.api.port());
        Self::start_edited(kind, usher, upstream, |config| config).await
    }

    /// `start` for the usher listening on `(internal, api)` ports, with the rendered
    /// configuration changed by `edit` before the gateway reads it.
    async fn start_edited(
        kind: Kind,
        (internal, api): (u16, u16),
        upstream: u16,
        edit: impl FnOnce(String) -> String,
    ) -> Option<Gateway> {
        let binary = gateway_binary(kind)?;
        let dir =
            std::env::temp_dir().join(format!("usher-gateway-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let admin = free_port();
        let vars = [
            ("GATEWAY_PORT", port.to_string()),
            ("ADMIN_PORT", admin.to_string()),
            ("USHER_INTERNAL_HOST", "127.0.0.1".to_owned()),
            ("USHER_INTERNAL_PORT", internal.to_string()),
            ("USHER_API_HOST", "127.0.0.1".to_owned()),
            ("USHER_API_PORT", api.to_string()),
            ("UPSTREAM_HOST", "127.0.0.1".to_owned()),
            ("UPSTREAM_PORT", upstream.to_string()),
        ];
        let rendered = |template: &str| dir.join(Path::new(template).file_name().unwrap());
        for template in kind.templates() {
            render(template, &rendered(template), &vars);
        }
        let rendered = rendered(kind.templates()[0]);
        let config = std::fs::read_to_string(&rendered).unwrap();
        std::fs::write(&rendered, edit(config)).unwrap();

        let mut command = Command::new(&binary);
        match kind {
            // Several Envoys may run at once: each gets its own base id (shared memory name).
            Kind::Envoy | Kind::EnvoyGrpc => command.arg("-c").arg(&rendered).args([
                "--base-id",
                &admin.to_string(),
                "--log-level",
                "warn",
            ]),
            Kind::Nginx => command
                .args(["-e", "stderr", "-p"])
                .arg(&dir)
                .arg("-c")
                .arg(&rendered)
                .args(["-g", "daemon off;"]),
            // The static config names the dynamic one relative to the working directory.
            Kind::Traefik => command
                .arg(format!("--configFile={}", rendered.display()))
                .current_dir(&dir),
        };
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut gateway = Gateway {
            kind,
            port,
            admin,
            dir,
            child,
        };
        gateway.wait_for_port().await;
        Some(gateway)
    }

    async fn wait_for_port(&mut self) {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{:?} exited ({status}):\n{}", self.kind, self.log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{:?} did not listen within 15 s:\n{}",
            self.kind,
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // The whole group: NGINX's workers, not only its master.
        self.signal_group("-TERM");
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cinema service stand-in: answers 200 with `{header name: [values...]}` of what it got.
async fn stub_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for (name, value) in req.headers() {
                        seen.entry(name.as_str().to_owned())
                            .or_default()
                            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
                    }
                    let body = json!({"path": req.uri().to_string(), "headers": seen});
                    let mut response =
                        http::Response::new(Full::new(Bytes::from(body.to_string())));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, task)
}

/// What the upstream received, or the gateway's refusal.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    forged: bool,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut r = client.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if forged {
        r = r
            .header("x-user-id", "00000000-0000-0000-0000-000000000000")
            .header("x-user-roles", "superuser")
            .header("x-session-id", "forged");
    }
    let r = r.send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    let body = r.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// The headers the upstream saw, by name.
fn seen<'a>(body: &'a Value, name: &str) -> Vec<&'a str> {
    body["headers"][name]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The repository's own route map, as deployed, and a public route the cinema serves.
fn route_map_with_a_public_route() -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(CONFIG_DIR).join("routes.toml")).unwrap();
    let path = std::env::temp_dir().join(format!(
        "usher-routes-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    let public = "\n[[route]]\npath = \"/public/{*rest}\"\npublic = true\n";
    std::fs::write(&path, shipped + public).unwrap();
    path
}
