//! The gateway check over gRPC: `envoy.service.auth.v3.Authorization/Check`, Envoy's
//! `ext_authz` with `grpc_service`, served on the internal listener's port next to the HTTP
//! checks (HTTP/2 without TLS; the listener already speaks both HTTP versions).
//!
//! One decision, three transports: the original request is read from
//! `attributes.request.http` (method, `host` = the `:authority`, path with query, and the
//! `authorization` header) and judged by [`check::verdict`], exactly as the HTTP shapes are.
//!
//! Answers:
//! - allow: `OkHttpResponse` that sets `x-user-id`, `x-user-roles` and `x-session-id`
//!   (overwriting what the client sent) and removes every other client-sent `x-user-*` header
//!   and `x-session-id` (`headers_to_remove`), so a gateway config cannot forget to strip
//!   forged identity headers. An anonymous caller gets `x-user-roles: non_registered`, and
//!   `x-user-id` and `x-session-id` are always removed.
//! - deny: `DeniedHttpResponse` with the same status (401 with `WWW-Authenticate`, or 403),
//!   headers and problem-details body as the HTTP answer.
//! - state unreachable: gRPC status `UNAVAILABLE`; Envoy then refuses the request
//!   (`failure_mode_allow: false`) with its `status_on_error`.
//! - a `CheckRequest` without `attributes.request.http` (or without its method or path) is not
//!   a check usher can judge — a network-level `ext_authz` filter, or a broken client: gRPC
//!   `INVALID_ARGUMENT`. It is a caller's bug rather than a policy decision, so it shows in
//!   Envoy's `ext_authz` error counters instead of as a 403, and it is refused either way.
//!
//! The framing is done on hyper (`frame`): one length-prefixed protobuf message in, one out, then
//! the `grpc-status` trailer. For a single unary method this is a few lines, and it keeps the
//! hot path free of tonic's per-call machinery (a boxed future, a streaming decoder, an 8 KiB
//! encode buffer) and of a boxed body type for every HTTP check on the same listener. The
//! message types come from `envoy-types` (generated in advance, so no `protoc` at build time).
//!
//! Only an HTTP/2 `POST` to exactly [`CHECK_PATH`] with a gRPC content type is served here;
//! anything else goes on to the HTTP routes. In particular a client's gRPC content type on an
//! Envoy HTTP check (`/ext_authz/...`) never turns it into a gRPC answer, whose HTTP status is
//! always 200 — which Envoy's HTTP `ext_authz` would read as "allow".

use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use prost::Message;

mod frame;
pub use frame::{is_grpc, Code, Unary};
use frame::{message, status, unframe, MAX_MESSAGE};

use super::check::{self, Allow, Target, Unreadable};
use super::error::ApiError;
use super::request::bearer_of;
use crate::permissions::NON_REGISTERED;
use crate::state::State;

/// The one method served.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The identity headers usher sets on allow.
const IDENTITY: [&str; 3] = ["x-user-id", "x-user-roles", "x-session-id"];

/// One `Authorization/Check` call, counted in the metrics like the HTTP checks.
pub async fn serve<B>(state: &State, req: Request<B>) -> http::Response<Unary>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    // No timer here, as for HTTP checks: the only client is the gateway, which cancels the
    // stream at its own `ext_authz` timeout.
    let body = match Limited::new(req.into_body(), MAX_MESSAGE + 5)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return status(Code::ResourceExhausted, "the message is too large")
        }
        Err(_) => return status(Code::InvalidArgument, "the request body ended early"),
    };
    let request = match unframe(&body) {
        Ok(message) => match CheckRequest::decode(message) {
            Ok(request) => request,
            Err(_) => return status(Code::InvalidArgument, "not a CheckRequest"),
        },
        Err(answer) => return answer,
    };
    let routes = state.routes.load_full();
    let (route, verdict) = match read(&request) {
        Ok((target, token)) => check::verdict(state, &routes, target, token).await,
        Err(Unreadable::NoOriginal) => {
            check::record(state, "bad_request", StatusCode::BAD_REQUEST, started);
            return status(
                Code::InvalidArgument,
                "attributes.request.http with a method and a path is required",
            );
        }
        Err(Unreadable::Garbled) => ("invalid_path", Err(ApiError::Forbidden)),
    };
    let http_status = match &verdict {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    check::record(state, route, http_status, started);
    let sent = request
        .attributes
        .and_then(|a| a.request)
        .and_then(|r| r.http)
        .unwrap_or_default();
    match verdict {
        Ok(allow) => message(&allowed(allow, sent)),
        Err(ApiError::Unavailable(_)) => status(Code::Unavailable, "unavailable"),
        Err(e) => match denied(e) {
            Ok(response) => message(&response),
            Err(e) => {
                tracing::error!(error = %e, "check: answer not encodable");
                status(Code::Internal, "internal")
            }
        },
    }
}

/// What a `CheckRequest` asks about: the original request and its bearer token, borrowed.
/// `NoOriginal` when it carries no HTTP request (or one without method or path); `Garbled`
/// when its method or path is not visible ASCII (judged as a bad path: 403, as over HTTP).
pub fn read(request: &CheckRequest) -> Result<(Target<'_>, Option<&str>), Unreadable> {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or(Unreadable::NoOriginal)?;
    if http.method.is_empty() || http.path.is_empty() {
        return Err(Unreadable::NoOriginal);
    }
    if !visible(&http.method) || !visible(&http.path) {
        return Err(Unreadable::Garbled);
    }
    let host = Some(http.host.as_str()).filter(|h| !h.is_empty());
    let target = Target {
        host,
        method: &http.method,
        uri: &http.path,
    };
    Ok((target, authorization(http).and_then(bearer_of)))
}

/// Visible ASCII, space and tab: what an HTTP header value may hold as text.
fn visible(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// The `authorization` header: from `headers`, or from `header_map` when Envoy sends raw
/// headers (`encode_raw_headers: true`).
fn authorization(http: &HttpRequest) -> Option<&str> {
    if let Some(value) = http.headers.get("authorization") {
        return Some(value);
    }
    http.header_map.as_ref().and_then(|map| {
        map.headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("authorization"))
            .and_then(|h| {
                if h.raw_value.is_empty() {
                    Some(h.value.as_str())
                } else {
                    std::str::from_utf8(&h.raw_value).ok()
                }
            })
    })
}

/// Whether the upstream would read `name` as an identity header.
fn is_identity(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("x-user-"))
        || name.eq_ignore_ascii_case("x-session-id")
}

/// The allow answer. `sent` is the original request, taken apart for the names of the
/// identity headers its client sent.
fn allowed(allow: Allow, sent: HttpRequest) -> CheckResponse {
    let (headers, set): (Vec<HeaderValueOption>, &[&str]) = match &allow {
        Allow::Anonymous => (
            vec![overwrite("x-user-roles", NON_REGISTERED.to_owned())],
            &IDENTITY[1..2],
        ),
        Allow::User(who) => {
            let h = who.headers();
            let headers = [&h.user_id, &h.roles, &h.session_id]
                .into_iter()
                .zip(IDENTITY)
                .map(|(value, name)| overwrite(name, String::from_utf8_lossy(value).into_owned()))
                .collect();
            (headers, &IDENTITY[..])
        }
    };
    // Set headers overwrite; everything else that looks like identity goes. (Envoy applies the
    // removals after the sets, so a set name must not be listed.)
    let forged = sent.headers.into_keys().chain(
        sent.header_map
            .into_iter()
            .flat_map(|map| map.headers.into_iter().map(|h| h.key)),
    );
    let mut headers_to_remove: Vec<String> = Vec::new();
    for mut name in forged.filter(|name| is_identity(name)) {
        name.make_ascii_lowercase();
        if !set.contains(&name.as_str()) && !headers_to_remove.contains(&name) {
            headers_to_remove.push(name);
        }
    }
    for name in IDENTITY {
        if !set.contains(&name) && !headers_to_remove.iter().any(|n| n == name) {
            headers_to_remove.push(name.to_owned());
        }
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn overwrite(name: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The deny answer: the HTTP answer's status, headers and problem-details body.
fn denied(e: ApiError) -> Result<CheckResponse, std::string::FromUtf8Error> {
    let code = match e.status() {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        _ => Code::PermissionDenied,
    };
    let (parts, body) = e.into_response().into_parts();
    // `Full` holds the whole body: taking its one frame never waits.
    let body = futures_util::FutureExt::now_or_never(body.collect())
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some(overwrite(name.as_str(), value.to_owned()))
        })
        .collect();
    Ok(CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(parts.status.as_u16()),
            }),
            headers,
            body: String::from_utf8(body.to_vec())?,
        })),
        ..Default::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap as RawHeaders;
    use envoy_types::pb::envoy::service::auth::v3::{attribute_context, AttributeContext};
    use http::HeaderMap;

    fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(HttpRequest {
                        method: method.into(),
                        host: host.into(),
                        path: path.into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).into(), (*v).into()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn ok_response(response: &CheckResponse) -> &OkHttpResponse {
        match &response.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok,
            other => panic!("not an OkHttpResponse: {other:?}"),
        }
    }

    fn sorted(names: &[String]) -> Vec<&str> {
        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn reads_method_host_path_and_token() {
        let r = request(
            "DELETE",
            "Cinema.Local:8000",
            "/api/v1/films/1?x=%2F",
            &[("authorization", "Bearer abc.def"), ("x-user-id", "forged")],
        );
        let (target, token) = read(&r).unwrap();
        assert_eq!(
            target,
            Target {
                host: Some("Cinema.Local:8000"),
                method: "DELETE",
                uri: "/api/v1/films/1?x=%2F",
            }
        );
        assert_eq!(token, Some("abc.def"));
    }

    #[test]
    fn no_host_and_no_token_are_none() {
        let r = request("GET", "", "/", &[("authorization", "Basic Zm9vOmJhcg==")]);
        let (target, token) = read(&r).unwrap();
        assert_eq!((target.host, token), (None, None));
    }

    #[test]
    fn the_token_is_found_in_raw_headers_too() {
        let mut r = request("GET", "h", "/", &[]);
        let http = r.attributes.as_mut().unwrap().request.as_mut().unwrap();
        http.http.as_mut().unwrap().header_map = Some(RawHeaders {
            headers: vec![HeaderValue {
                key: "authorization".into(),
                raw_value: b"bearer t0k".to_vec(),
                ..Default::default()
            }],
        });
        assert_eq!(read(&r).unwrap().1, Some("t0k"));
    }

    #[test]
    fn missing_fields_are_unreadable() {
        assert_eq!(
            read(&CheckRequest::default()).unwrap_err(),
            Unreadable::NoOriginal
        );
        let mut r = request("GET", "h", "/", &[]);
        r.attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http = None;
        assert_eq!(read(&r).unwrap_err(), Unreadable::NoOriginal);
        r.attributes.as_mut().unwrap().request = None;
        assert_eq!(read(&r).unwrap_err(), Unreadable::NoOriginal);
        assert_eq!(
            read(&request("", "h", "/", &[])).unwrap_err(),
            Unreadable::NoOriginal
        );
        assert_eq!(
            read(&request("GET", "h", "", &[])).unwrap_err(),
            Unreadable::NoOriginal
        );
    }

    #[test]
    fn odd_paths_and_methods_are_garbled_or_passed_on_verbatim() {
        for path in ["/a\u{0}b", "/caf\u{e9}", "/a\r\nx-user-id: 1", "/\u{7f}"] {
            assert_eq!(
                read(&request("GET", "h", path, &[])).unwrap_err(),
                Unreadable::Garbled,
                "{path:?}"
            );
        }
        assert_eq!(
            read(&request("G\u{1}T", "h", "/", &[])).unwrap_err(),
            Unreadable::Garbled
        );
        // Undecoded, unnormalised: the route map does that (and refuses what it must).
        for path in [
            "//a/./b/../c",
            "/a;b",
            "/%2e%2e/admin",
            "/a%2Fb",
            "*",
            "/a\\b",
        ] {
            assert_eq!(read(&request("GET", "h", path, &[])).unwrap().0.uri, path);
        }
    }

    #[test]
    fn the_refusal_list_reaches_the_route_map_as_over_http() {
        // The spec's refusal list: whatever the route map refuses for the Envoy HTTP shape, it
        // refuses here, because both hand it the same target.
        let routes = crate::routes::RouteMap::parse(
            "default_policy = \"allow\"\n[[route]]\npath = \"/{*rest}\"\npublic = true\n",
            &[],
        )
        .unwrap();
        let mut host = HeaderMap::new();
        host.insert("host", http::HeaderValue::from_static("h"));
        for path in [
            "/a;b",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%2e",
            "/a%3bb",
            "/a%3fb",
            "/a%23b",
            "/a%25b",
            "/a\\b",
            "/a%00b",
            "/a%7f",
            "/a.",
            "/a%20",
            "/../a",
            "/a/%2e%2e/%2e%2e/b",
        ] {
            let r = request("GET", "h", path, &[]);
            let (grpc, _) = read(&r).unwrap();
            let envoy_path = format!("{}{path}", check::ENVOY_PREFIX);
            let over_http = Target::of("GET", &envoy_path, &host).unwrap();
            assert_eq!(grpc, over_http, "{path}");
            assert_eq!(
                routes.decide(grpc.host, grpc.method, grpc.uri).is_err(),
                routes
                    .decide(over_http.host, over_http.method, over_http.uri)
                    .is_err(),
                "{path}"
            );
        }
        // The ones that climb above the root or hide a control character are refused.
        for path in ["/../a", "/a/%2e%2e/%2e%2e/b", "/a%00b", "/a%7f"] {
            let r = request("GET", "h", path, &[]);
            let (t, _) = read(&r).unwrap();
            assert!(routes.decide(t.host, t.method, t.uri).is_err(), "{path}");
        }
        let r = request("GET", "h", "/films/1", &[]);
        let (t, _) = read(&r).unwrap();
        assert!(routes.decide(t.host, t.method, t.uri).is_ok());
    }

    #[test]
    fn anonymous_allow_sets_roles_and_removes_the_rest() {
        let sent = request(
            "GET",
            "h",
            "/",
            &[
                ("x-user-id", "00000000-0000-0000-0000-000000000000"),
                ("x-user-roles", "superuser"),
                ("x-user-email", "boss@cinema.local"),
                ("x-userid", "not identity"),
                ("authorization", "Bearer x"),
            ],
        )
        .attributes
        .unwrap()
        .request
        .unwrap()
        .http
        .unwrap();
        let response = allowed(Allow::Anonymous, sent);
        assert_eq!(response.status.as_ref().unwrap().code, 0);
        let ok = ok_response(&response);
        assert_eq!(ok.headers.len(), 1);
        let h = ok.headers[0].header.as_ref().unwrap();
        assert_eq!(
            (h.key.as_str(), h.value.as_str()),
            ("x-user-roles", "non_registered")
        );
        assert_eq!(
            ok.headers[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(
            sorted(&ok.headers_to_remove),
            ["x-session-id", "x-user-email", "x-user-id"]
        );
    }

    #[test]
    fn anonymous_allow_without_forged_headers_still_removes_ids() {
        let response = allowed(Allow::Anonymous, HttpRequest::default());
        assert_eq!(
            sorted(&ok_response(&response).headers_to_remove),
            ["x-session-id", "x-user-id"]
        );
    }

    #[test]
    fn raw_forged_headers_in_any_case_are_removed() {
        let sent = HttpRequest {
            header_map: Some(RawHeaders {
                headers: vec![
                    HeaderValue {
                        key: "X-User-Tenant".into(),
                        raw_value: b"1".to_vec(),
                        ..Default::default()
                    },
                    HeaderValue {
                        key: "x-user-tenant".into(),
                        raw_value: b"2".to_vec(),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        };
        let response = allowed(Allow::Anonymous, sent);
        assert_eq!(
            sorted(&ok_response(&response).headers_to_remove),
            ["x-session-id", "x-user-id", "x-user-tenant"]
        );
    }

    #[test]
    fn denials_carry_status_headers_and_problem_body() {
        let response = denied(ApiError::Unauthorized).unwrap();
        assert_eq!(
            response.status.as_ref().unwrap().code,
            Code::Unauthenticated as i32
        );
        let Some(HttpResponse::DeniedResponse(denied_response)) = &response.http_response else {
            panic!("not denied");
        };
        assert_eq!(denied_response.status.as_ref().unwrap().code, 401);
        let header = |name: &str| {
            denied_response
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == name)
                .map(|h| h.value.clone())
        };
        assert!(header("www-authenticate").unwrap().starts_with("Bearer"));
        assert_eq!(header("content-type").unwrap(), "application/problem+json");
        let body: serde_json::Value = serde_json::from_str(&denied_response.body).unwrap();
        assert_eq!(body["code"], "unauthorized");

        let response = denied(ApiError::Forbidden).unwrap();
        assert_eq!(
            response.status.as_ref().unwrap().code,
            Code::PermissionDenied as i32
        );
        let Some(HttpResponse::DeniedResponse(d)) = &response.http_response else {
            panic!("not denied");
        };
        assert_eq!(d.status.as_ref().unwrap().code, 403);
        assert!(d.body.contains("\"forbidden\""));
    }
}
