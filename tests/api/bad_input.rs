//! Bad input gets a clear problem-details answer with the right status and never a 500.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{problem, TestApp};

async fn raw(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut r = app.client.post(app.url(path)).body(body);
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = TestApp::spawn().await;
    let big = format!(
        r#"{{"email":"a@b.c","password":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = raw(
        &app,
        "/api/v1/auth/register",
        Some("application/json"),
        big.into_bytes(),
    )
    .await;
    assert_eq!(problem(r).await, (413, "payload_too_large".into()));
    // also without a declared length (chunked)
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..80).map(|_| Ok(vec![b' '; 1024])).collect();
    let r = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await, (413, "payload_too_large".into()));
}

#[tokio::test]
async fn non_json_bodies_are_415() {
    let app = TestApp::spawn().await;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
    ] {
        let r = raw(
            &app,
            "/api/v1/auth/login",
            ct,
            br#"{"email":"a@b.c","password":"x"}"#.to_vec(),
        )
        .await;
        assert_eq!(
            problem(r).await,
            (415, "unsupported_media_type".into()),
            "{ct:?}"
        );
    }
    let r = raw(
        &app,
        "/api/v1/auth/login",
        Some("Application/JSON; charset=utf-8"),
        br#"{"email":"a@b.c","password":"wrong pass"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status(), 401, "JSON with parameters is JSON");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::spawn().await;
    for body in [
        &b"{"[..],
        b"not json",
        b"",
        b"{\"email\": \"\xff\xfe\"}",
        b"{\"email\":\"a\",}",
        b"{} {}",
    ] {
        let r = raw(
            &app,
            "/api/v1/auth/register",
            Some("application/json"),
            body.to_vec(),
        )
        .await;
        assert_eq!(
            problem(r).await,
            (400, "malformed_json".into()),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[tokio::test]
async fn wrong_shapes_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        (json!({"email": "a@b.c"}), "password"),
        (json!({"password": "long enough"}), "email"),
        (json!({"email": 42, "password": "long enough"}), "email"),
        (json!({"email": "a@b.c", "password": ["x"]}), "password"),
        (
            json!({"email": "a@b.c", "password": "long enough", "roles": ["superuser"]}),
            "roles",
        ),
        (json!({"email": null, "password": "long enough"}), "email"),
    ] {
        let r = app.post("/api/v1/auth/register", None, body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], "validation_failed");
        assert_eq!(problem["errors"][0]["field"], field, "{body} → {problem}");
        assert!(problem["errors"][0]["message"].is_string());
    }
    // nothing was created by any of them
    let r = app.login("a@b.c", "long enough").await;
    assert_eq!(problem(r).await.1, "invalid_credentials");
}

#[tokio::test]
async fn deep_nesting_and_odd_json_never_500() {
    let app = TestApp::spawn().await;
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let r = raw(
        &app,
        "/api/v1/auth/login",
        Some("application/json"),
        deep.into_bytes(),
    )
    .await;
    let (status, _) = problem(r).await;
    assert!(status == 400 || status == 422, "{status}");
    let nested = format!(
        r#"{{"email":{}1{},"password":"x"}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let r = raw(
        &app,
        "/api/v1/auth/login",
        Some("application/json"),
        nested.into_bytes(),
    )
    .await;
    let (status, _) = problem(r).await;
    assert!(status == 400 || status == 422, "{status}");
    let r = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": {"$ne": null}}),
        )
        .await;
    assert_eq!(problem(r).await.0, 422);
}

#[tokio::test]
async fn garbage_tokens_are_401_invalid_token() {
    use base64::Engine;
    let app = TestApp::spawn().await;
    let u = app.user().await;
    let payload = u.access.split('.').nth(1).unwrap().to_owned();
    let none = format!(
        "{}.{payload}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#)
    );
    let hs = format!(
        "{}.{payload}.c2lnbmF0dXJl",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#)
    );
    let mut tampered = u.access.clone();
    tampered.pop();
    tampered.push(if u.access.ends_with('A') { 'B' } else { 'A' });
    for token in [
        none,
        hs,
        tampered,
        "a.b.c".into(),
        "x".repeat(6000),
        "ey..".into(),
    ] {
        let r = app.me(&token).await;
        assert_eq!(
            problem(r).await,
            (401, "invalid_token".into()),
            "{token:.40}"
        );
    }
    // a token that is fine still works
    assert_eq!(app.me(&u.access).await.status(), 200);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    assert_eq!(
        problem(app.get("/api/v1/nothing", None).await).await,
        (404, "not_found".into())
    );
    assert_eq!(
        problem(app.get("/", None).await).await,
        (404, "not_found".into())
    );
    let r = app
        .request(Method::GET, "/api/v1/auth/login", None, None)
        .await;
    assert_eq!(problem(r).await, (405, "method_not_allowed".into()));
    let r = app
        .request(Method::PUT, "/api/v1/auth/sessions", None, None)
        .await;
    assert_eq!(problem(r).await, (405, "method_not_allowed".into()));
}

#[tokio::test]
async fn openapi_and_docs_are_served() {
    let app = TestApp::spawn().await;
    let r = app.get("/openapi.json", None).await;
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/api/v1/auth/login"].is_object());
    let r = app.get("/docs", None).await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("openapi.json"));
    assert!(
        !html.contains("https://"),
        "the page must work without internet access"
    );
}

#[tokio::test]
async fn a_body_that_never_finishes_is_400_not_a_hang() {
    let app =
        TestApp::spawn_with(|c| c.listen.read_timeout = usher::config::Dur::millis(300)).await;
    // Declares 100 bytes, sends 10, then stalls.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{\"email\":\"".to_vec())).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .header("content-length", "100")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r).await, (400, "bad_request".into()));
    drop(tx);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn nul_bytes_in_bodies_and_query_strings_are_422_not_500() {
    let app = TestApp::spawn().await;
    let root = crate::users::admin(&app).await;
    for (path, body) in [
        (
            "/api/v1/auth/login",
            r#"{"email":"a\u0000@cinema.test","password":"long enough"}"#,
        ),
        (
            "/api/v1/auth/register",
            r#"{"email":"b@cinema.test","password":"long\u0000enough"}"#,
        ),
        ("/api/v1/auth/refresh", r#"{"refresh_token":"\u0000"}"#),
    ] {
        let r = raw(&app, path, Some("application/json"), body.into()).await;
        assert_eq!(r.status(), 422, "{path}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["code"], "validation_failed", "{path}");
    }
    let r = app
        .create_role(
            &root.access,
            json!({"name": "critics", "description": "a\u{0}b", "permissions": []}),
        )
        .await;
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        (p["status"].clone(), p["errors"][0]["field"].clone()),
        (json!(422), json!("description"))
    );
    for query in ["email=%00", "email=a%00b", "page=%00", "%00=1", "email=%ff"] {
        let r = app.users(&root.access, query).await;
        assert_eq!(
            problem(r).await,
            (422, "validation_failed".into()),
            "{query}"
        );
    }
    // what surrounds them still works
    let r = app.users(&root.access, "email=%40cinema").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_405_says_which_methods_are_allowed() {
    let app = TestApp::spawn().await;
    let id = uuid::Uuid::new_v4();
    for (method, path, allowed) in [
        (Method::GET, "/api/v1/auth/login".to_owned(), "POST"),
        (Method::PUT, "/api/v1/auth/sessions".to_owned(), "GET"),
        (Method::GET, format!("/api/v1/auth/sessions/{id}"), "DELETE"),
        (Method::DELETE, "/api/v1/users".to_owned(), "GET"),
        (
            Method::PUT,
            format!("/api/v1/users/{id}"),
            "GET, PATCH, DELETE",
        ),
        (
            Method::GET,
            format!("/api/v1/users/{id}/roles/{id}"),
            "PUT, DELETE",
        ),
        (Method::PATCH, "/api/v1/roles".to_owned(), "GET, POST"),
        (Method::POST, "/api/v1/permissions".to_owned(), "GET"),
        (Method::POST, "/.well-known/jwks.json".to_owned(), "GET"),
    ] {
        let r = app.request(method.clone(), &path, None, None).await;
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(
            r.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some(allowed),
            "{method} {path}"
        );
    }
}
