//! The gateway and usher judge the same host, path and client address.

use super::*;
use crate::helpers::json_of;

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
    app.grant("non_registered", "films_read").await;
    app.grant("user", "films_read").await;
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
    let sessions: Value = json_of(app.sessions(access).await).await;
    // The address the gateway saw: NGINX replaces the header with the peer's; Envoy appends
    // the peer's, or for a loopback peer its own host address.
    let ip = sessions["items"][0]["ip"].as_str().unwrap().to_owned();
    assert_ne!(ip, "203.0.113.9", "{ctx}: {sessions}");
    if kind == Kind::Nginx {
        assert_eq!(ip, "127.0.0.1", "{ctx}: {sessions}");
    }
    let recorded = eventually(Duration::from_secs(2), || async {
        let history: Value = json_of(app.login_history(access).await).await;
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
