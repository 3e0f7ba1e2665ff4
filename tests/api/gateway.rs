//! End to end through the real gateways: Envoy (`ext_authz`) and NGINX (`auth_request`) run
//! from the files in `gateway-config/`, rendered by `gateway-config/render.sh`, in front of usher
//! and a stub upstream that echoes the headers it receives.
//!
//! A missing gateway binary fails the test when `CI=true`; elsewhere the test says so and
//! returns (`.ci/install-gateways` installs both).

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

use crate::helpers::{eventually, free_port, TestApp};

const CONFIG_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway-config");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Envoy,
    Nginx,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Envoy => "envoy",
            Kind::Nginx => "nginx",
        }
    }
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

/// The gateway binary, or `None` (after a notice) when it is missing outside CI.
fn gateway_binary(kind: Kind) -> Option<PathBuf> {
    let name = kind.binary();
    match find_binary(name) {
        Some(path) => Some(path),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{name} is not installed, and CI=true: run .ci/install-gateways to install it")
        }
        None => {
            eprintln!("NOTICE: {name} is not installed; skipping this gateway test (.ci/install-gateways installs it)");
            None
        }
    }
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
        let (template, rendered) = match kind {
            Kind::Envoy => ("envoy.yaml", dir.join("envoy.yaml")),
            Kind::Nginx => ("nginx.conf", dir.join("nginx.conf")),
        };
        let status = Command::new("sh")
            .arg(Path::new(CONFIG_DIR).join("render.sh"))
            .arg(Path::new(CONFIG_DIR).join(template))
            .arg(&rendered)
            .env("GATEWAY_PORT", port.to_string())
            .env("ADMIN_PORT", admin.to_string())
            .env("USHER_INTERNAL_HOST", "127.0.0.1")
            .env("USHER_INTERNAL_PORT", internal.to_string())
            .env("USHER_API_HOST", "127.0.0.1")
            .env("USHER_API_PORT", api.to_string())
            .env("UPSTREAM_HOST", "127.0.0.1")
            .env("UPSTREAM_PORT", upstream.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "render.sh {template} failed");
        let config = std::fs::read_to_string(&rendered).unwrap();
        std::fs::write(&rendered, edit(config)).unwrap();

        let mut command = Command::new(&binary);
        match kind {
            // Several Envoys may run at once: each gets its own base id (shared memory name).
            Kind::Envoy => command.arg("-c").arg(&rendered).args([
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
        };
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
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

async fn through(kind: Kind) {
    // The repository's own route map, as deployed.
    let mut app = TestApp::spawn().await;
    grant(&app, "non_registered", "films_read").await;
    grant(&app, "user", "films_watch").await;
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
    let (status, _, body) = send(&client, get.clone(), films.clone(), None, false).await;
    assert_eq!(status, 503, "{ctx}: {body}");
    assert!(
        body.get("headers").is_none(),
        "{ctx}: reached the upstream: {body}"
    );
    upstream_task.abort();
}

#[tokio::test]
async fn through_envoy() {
    through(Kind::Envoy).await;
}

#[tokio::test]
async fn through_nginx() {
    through(Kind::Nginx).await;
}

/// One usher on fixed ports, sharing a test's database and Redis: stopped (with its drain) and
/// started again on the same ports, as a rolling restart does.
struct Replica {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(config: &usher::config::Config) -> Replica {
        let app = usher::app::Application::build(config.clone())
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Replica { stop, task }
    }

    /// Like SIGTERM: drains, closes, finishes in-flight requests; returns once it has exited.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

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
    grant(&app, "user", "films_read").await;
    let user = app.user().await;
    let (upstream, upstream_task) = stub_upstream().await;
    let mut configs = Vec::new();
    for _ in 0..2 {
        let mut c = app.config.clone();
        c.listen.api = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        c.listen.internal = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        c.listen.drain_delay = usher::config::Dur::secs(5);
        configs.push(c);
    }
    let mut replicas = Vec::new();
    for c in &configs {
        replicas.push(Some(Replica::start(c).await));
    }
    let (api, internal): (Vec<u16>, Vec<u16>) = configs
        .iter()
        .map(|c| (c.listen.api.port(), c.listen.internal.port()))
        .unzip();
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
    for i in 0..2 {
        replicas[i].take().unwrap().stop().await;
        replicas[i] = Some(Replica::start(&configs[i]).await);
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
    for r in replicas.into_iter().flatten() {
        r.stop().await;
    }
    upstream_task.abort();
}

/// One HTTP/1.1 exchange with the gateway, the request line and headers written as given (no
/// client library normalising the path on the way): the status and the body (the upstream's
/// echo when it answered).
async fn raw(port: u16, request_line: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = format!("{request_line}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            let mut out = String::new();
            let mut rest = body;
            while let Some((size, after)) = rest.split_once("\r\n") {
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if size == 0 || after.len() < size {
                    break;
                }
                out.push_str(&after[..size]);
                rest = after[size..].trim_start_matches("\r\n");
            }
            out
        } else {
            body.to_owned()
        };
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

/// The deployed route map plus a back office on its own host.
fn map_with_admin_host() -> PathBuf {
    let text = std::fs::read_to_string(Path::new(CONFIG_DIR).join("routes.toml")).unwrap()
        + "\n[[route]]\nhost = \"admin.cinema.local\"\npath = \"/{*rest}\"\nrequire = [\"user_all_read\"]\n";
    let file = std::env::temp_dir().join(format!(
        "usher-gateway-routes-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&file, text).unwrap();
    file
}

/// The gateway and usher see one request: the host and path usher judges are the ones the
/// upstream receives (or the request is refused), and the client IP usher records is the one
/// the gateway saw, whatever the client wrote in X-Forwarded-For.
async fn one_request(kind: Kind) {
    let map = map_with_admin_host();
    let file = map.clone();
    let app = TestApp::spawn_with(move |c| c.routes.file = file).await;
    grant(&app, "non_registered", "films_read").await;
    grant(&app, "user", "films_read").await;
    let user = app.user().await;
    let (upstream, upstream_task) = stub_upstream().await;
    let Some(gateway) = Gateway::start(kind, &app, upstream).await else {
        return;
    };
    let ctx = format!("{kind:?}");
    let port = gateway.port;
    let ready = eventually(Duration::from_secs(10), || async {
        raw(
            port,
            "GET /api/v1/films/42 HTTP/1.1",
            &[("host", "cinema.local")],
        )
        .await
        .0 == 200
    })
    .await;
    assert!(
        ready,
        "{ctx}: gateway never answered 200:\n{}",
        gateway.log()
    );

    // Absolute-form request line naming one host, Host header naming another: whichever the
    // gateway goes by, usher judges that one. The admin host needs user_all_read, which an
    // anonymous caller lacks, so the upstream must never serve it to one.
    for (line, host) in [
        (
            "GET http://cinema.local/api/v1/films/42 HTTP/1.1",
            "admin.cinema.local",
        ),
        (
            "GET http://admin.cinema.local/api/v1/films/42 HTTP/1.1",
            "cinema.local",
        ),
    ] {
        let (status, body) = raw(port, line, &[("host", host)]).await;
        let served = seen(&body, "host").join(",").to_ascii_lowercase();
        assert!(
            status == 401 || (status == 200 && !served.starts_with("admin.")),
            "{ctx}: {line} / Host: {host} → {status}, upstream saw host {served:?}"
        );
    }

    // Paths an upstream could read as the stream route (films_watch, which the user lacks):
    // refused, or forwarded in exactly the form usher judged (already normal, so no upstream
    // reads it another way), which is not the stream route.
    let routes = RouteMap::load(&map, &usher::permissions::builtin_names()).unwrap();
    let auth = format!("Bearer {}", user.access);
    let headers = [("host", "cinema.local"), ("authorization", auth.as_str())];
    let (status, body) = raw(port, "GET /api/v1/films/42 HTTP/1.1", &headers).await;
    assert_eq!(status, 200, "{ctx}: {body}");
    assert_eq!(body["path"], "/api/v1/films/42", "{ctx}");
    for path in [
        "/api/v1/films/42/stream",
        "/api/v1/films/42/stream;jsessionid=x",
        "/api/v1/films/42;x=1/stream",
        "/api/v1/films/42/STREAM",
        "/api/v1/films/42/Stream.",
        "/api/v1/films/42/stream%3Fx=1",
        "/api/v1/films/42/x/..%2Fstream",
        "/api/v1/films/42/stream/..%2F..%2F43",
        "/api/v1/films/42/stream/../../43",
        "/api/v1/films/42/stream//..//..//43",
    ] {
        let (status, body) = raw(port, &format!("GET {path} HTTP/1.1"), &headers).await;
        let forwarded = body["path"].as_str().unwrap_or_default();
        let judged = routes
            .decide(None, "GET", forwarded)
            .map(|d| d.route.to_owned());
        let as_judged = normalize_path(forwarded).is_ok_and(|p| p == forwarded)
            && judged
                .as_deref()
                .is_ok_and(|r| r != "/api/v1/films/{id}/stream");
        assert!(
            (400..500).contains(&status) || (status == 200 && as_judged),
            "{ctx}: {path} → {status}, upstream got {forwarded:?} ({judged:?})"
        );
    }

    // A client-sent X-Forwarded-For never lands in sessions or history.
    let login = serde_json::json!({"email": user.email, "password": user.password}).to_string();
    let client = reqwest::Client::new();
    let r = client
        .post(gateway.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("content-type", "application/json")
        .body(login)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{ctx}");
    let t: Value = r.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap();
    let sessions: Value = app.get_json("/api/v1/auth/sessions", Some(access)).await;
    // The address the gateway saw: NGINX replaces the header with the peer's; Envoy appends
    // the peer's, or for a loopback peer its own host address.
    let ip = sessions["items"][0]["ip"].as_str().unwrap().to_owned();
    assert_ne!(ip, "203.0.113.9", "{ctx}: {sessions}");
    if kind == Kind::Nginx {
        assert_eq!(ip, "127.0.0.1", "{ctx}: {sessions}");
    }
    let recorded = eventually(Duration::from_secs(2), || async {
        let history: Value = app.get_json("/api/v1/auth/history", Some(access)).await;
        history["items"][0]["event"] == "login" && history["items"][0]["ip"] == ip.as_str()
    })
    .await;
    assert!(recorded, "{ctx}: history");

    drop(gateway);
    upstream_task.abort();
    let _ = std::fs::remove_file(map);
}

#[tokio::test]
async fn envoy_and_usher_see_one_request() {
    one_request(Kind::Envoy).await;
}

#[tokio::test]
async fn nginx_and_usher_see_one_request() {
    one_request(Kind::Nginx).await;
}
