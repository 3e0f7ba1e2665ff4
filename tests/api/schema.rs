//! Every API answer the tests see, held to `openapi.json`: the operation is found by method and
//! path the way usher finds it (`Endpoint::recognise`), then its documented response for the
//! status, then the media type, and a JSON body is validated against that response's schema.
//! A mismatch panics, so every test that talks to the API is a test of the document too.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use reqwest::Method;
use serde_json::{json, Value};
use usher::http::endpoint::{Endpoint, Unrecognised};

/// The document, parsed once.
static DOC: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../src/http/openapi.json")).expect("openapi.json is JSON")
});

/// Validators by schema pointer, built once each.
static VALIDATORS: LazyLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> =
    LazyLock::new(Mutex::default);

/// Follows a `$ref` inside the document (`#/components/...`).
fn resolve(value: &Value) -> &Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => resolve(
            DOC.pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("openapi.json: {pointer} does not exist")),
        ),
        None => value,
    }
}

/// Checks one answer of the API listener: `path` without its query, the answer's status,
/// content type and body. Panics naming the operation when the document does not describe it.
pub fn check(method: &Method, path: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
    let method = http::Method::from_bytes(method.as_str().as_bytes()).expect("a method");
    let (operation, name) = match Endpoint::recognise(&method, path) {
        Ok(e) => {
            let verb = method.as_str().to_lowercase();
            let operation = &DOC["paths"][e.template()][verb.as_str()];
            assert!(
                operation.is_object(),
                "{method} {} is not in openapi.json",
                e.template()
            );
            (operation, format!("{method} {}", e.template()))
        }
        // No operation: the answer is a problem (404, 405, or the body's own 4xx, read first).
        Err(Unrecognised::NotFound | Unrecognised::MethodNotAllowed { .. }) => {
            let problem = json!({"$ref": "#/components/schemas/Problem"});
            validate(
                "#/components/schemas/Problem",
                &problem,
                &format!("{method} {path} (no operation) → {status}"),
                body,
            );
            return;
        }
    };
    let responses = &operation["responses"];
    let response = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
        .map(resolve)
        .unwrap_or_else(|| panic!("{name} answered {status}, which openapi.json does not list"));
    let content = response.get("content").and_then(Value::as_object);
    let Some(content) = content.filter(|c| !c.is_empty()) else {
        assert!(
            body.is_empty(),
            "{name} → {status}: documented without a body, answered {}",
            String::from_utf8_lossy(body)
        );
        return;
    };
    let content_type = content_type.unwrap_or_else(|| {
        panic!("{name} → {status}: documented with a body, answered without a content type")
    });
    let media = content
        .get(content_type)
        .or_else(|| content.get(content_type.split(';').next().unwrap_or_default().trim()))
        .unwrap_or_else(|| {
            panic!(
                "{name} → {status}: content type {content_type} is not one of {:?}",
                content.keys().collect::<Vec<_>>()
            )
        });
    if !content_type.contains("json") {
        return;
    }
    let Some(schema) = media.get("schema") else {
        return;
    };
    let key = format!("{name} {status} {content_type}");
    validate(&key, schema, &format!("{name} → {status}"), body);
}

/// Validates a JSON `body` against `schema` (whose `$ref`s point into the document).
fn validate(key: &str, schema: &Value, what: &str, body: &[u8]) {
    let validator = {
        let mut cache = VALIDATORS.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(key.to_owned())
            .or_insert_with(|| {
                // The schema as the root of a document that also holds the components, so its
                // `#/components/...` references resolve.
                let mut root = schema.clone();
                if let Some(object) = root.as_object_mut() {
                    object.insert("components".into(), DOC["components"].clone());
                }
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft202012)
                    .should_validate_formats(true)
                    .build(&root)
                    .unwrap_or_else(|e| panic!("openapi.json: the schema of {what}: {e}"));
                Arc::new(validator)
            })
            .clone()
    };
    let instance: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: the body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the body does not match openapi.json:\n  {}\nbody: {instance}",
        errors.join("\n  ")
    );
}

#[test]
#[should_panic(expected = "does not match openapi.json")]
fn a_body_off_its_schema_is_caught() {
    check(
        &Method::GET,
        "/api/v1/users/me",
        200,
        Some("application/json"),
        br#"{"id": 5, "email": "a@b"}"#,
    );
}

#[test]
#[should_panic(expected = "which openapi.json does not list")]
fn an_undocumented_status_is_caught() {
    check(&Method::GET, "/api/v1/roles", 418, None, b"");
}

#[test]
#[should_panic(expected = "is not one of")]
fn an_undocumented_content_type_is_caught() {
    check(&Method::GET, "/docs", 200, Some("application/json"), b"{}");
}

#[test]
fn a_documented_answer_passes() {
    let problem = br#"{"type": "about:blank", "title": "Not Found", "status": 404,
        "code": "not_found", "detail": "No such resource."}"#;
    check(
        &Method::GET,
        "/api/v1/roles/junk",
        404,
        Some("application/problem+json"),
        problem,
    );
    check(
        &Method::GET,
        "/nowhere",
        404,
        Some("application/problem+json"),
        problem,
    );
    check(&Method::DELETE, "/api/v1/roles/junk", 204, None, b"");
}
