//! The gateway check: `ANY /ext_authz/<path>` (Envoy `ext_authz`) and `GET /auth` (NGINX
//! `auth_request`, Traefik `forwardAuth`) on the internal listener. No permission needed: the
//! internal listener is the gateway's, kept off the public network.
//!
//! The gateway calls this on every request it forwards, so the path from bytes to decision is
//! kept short and visible in [`check`]: read the original request from borrowed headers
//! ([`Target::of`]), ask the route map what it needs, then [`judge`] the token. On a cache hit
//! (`Guard::fast`) nothing here touches the network, takes a lock or formats a string: the route
//! map and the permission snapshot are `ArcSwap` loads (an atomic increment), the identity header
//! values are shared `Bytes` rendered once per token. Only a miss awaits (signature check and
//! Redis/PostgreSQL in `Guard::authenticate`), and nothing borrowed from a lock lives across it.
//!
//! Answers: allow is exactly 200 with an empty body and the identity headers; every refusal is
//! problem details (401 with `WWW-Authenticate`, 403, 503, or 400 for a request that is not a
//! check at all). A path that cannot be judged safely is 403, not 400: NGINX's `auth_request`
//! understands only 2xx, 401 and 403, and turns anything else into a 500. The same goes for a
//! host that does not parse as `name[:port]`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, StatusCode};

use super::error::ApiError;
use super::request::bearer;
use super::response::{full, Response};
use crate::guard::Principal;
use crate::metrics::Outcome;
use crate::permissions::{Snapshot, NON_REGISTERED};
use crate::routes::{PathError, Requirement, RouteMap};
use crate::state::State;

/// The prefix Envoy's `http_service.path_prefix` puts before the original path.
pub const ENVOY_PREFIX: &str = "/ext_authz";

const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
const X_USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");
const X_SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");

/// The request the gateway is asking about, borrowed from the check request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// Its host (the authority the client used), when the gateway says.
    pub host: Option<&'a str>,
    /// Its method.
    pub method: &'a str,
    /// Its path and query as the client sent them (normalised by the route map).
    pub uri: &'a str,
}

/// Why a check request cannot be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// `/auth` without `X-Original-Method`/`X-Original-URI` or the `X-Forwarded-*` pair: 400.
    NoOriginal,
    /// The original method or URI is not visible ASCII: treated as a bad path, 403.
    Garbled,
}

impl<'a> Target<'a> {
    /// Reads the three request shapes. `path_and_query` is the check request's own target.
    ///
    /// For `/auth`, NGINX's `X-Original-*` pair wins over Traefik's `X-Forwarded-*` when both
    /// are present: NGINX blanks the `X-Forwarded-*` ones, and a client-sent pair must never
    /// outrank the one the gateway set. A pair counts only when both of its headers are there.
    pub fn of(
        method: &'a str,
        path_and_query: &'a str,
        headers: &'a HeaderMap,
    ) -> Result<Target<'a>, Unreadable> {
        let host = header(headers, HOST.as_str());
        if let Some(uri) = path_and_query.strip_prefix(ENVOY_PREFIX) {
            // `/ext_authz` alone is the root: the route map reads "" and "?q" as `/`.
            return Ok(Target { host, method, uri });
        }
        let nginx = pair(headers, "x-original-method", "x-original-uri");
        let traefik = pair(headers, "x-forwarded-method", "x-forwarded-uri");
        match (nginx, traefik) {
            (Some(Ok((method, uri))), _) => Ok(Target { host, method, uri }),
            (Some(Err(e)), _) => Err(e),
            (None, Some(Ok((method, uri)))) => Ok(Target {
                host: header(headers, "x-forwarded-host"),
                method,
                uri,
            }),
            (None, Some(Err(e))) => Err(e),
            (None, None) => Err(Unreadable::NoOriginal),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Both headers of a pair: `None` if either is absent, `Err` if either is not visible ASCII.
fn pair<'a>(
    headers: &'a HeaderMap,
    method: &str,
    uri: &str,
) -> Option<Result<(&'a str, &'a str), Unreadable>> {
    let (m, u) = (headers.get(method)?, headers.get(uri)?);
    Some(match (m.to_str(), u.to_str()) {
        (Ok(m), Ok(u)) if !m.is_empty() && !u.is_empty() => Ok((m, u)),
        _ => Err(Unreadable::Garbled),
    })
}

/// Whether the internal listener's `path` is a check request.
pub fn is_check(path: &str) -> bool {
    path == "/auth"
        || path
            .strip_prefix(ENVOY_PREFIX)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Who the upstream is told the caller is.
pub enum Allow {
    /// Nobody signed in (`x-user-roles: non_registered`, no user or session id).
    Anonymous,
    /// This token's holder.
    User(Arc<Principal>),
}

/// One gateway check, from the request head to the answer, counted in the metrics by route
/// and outcome.
pub async fn check<B>(state: &State, req: &Request<B>) -> Response {
    let started = Instant::now();
    let routes = state.routes.load_full();
    let (route, response) = decide(state, &routes, req).await;
    record(state, route, response.status(), started);
    response
}

/// Counts one check in the metrics, by route and by the status of its answer.
pub fn record(state: &State, route: &str, status: StatusCode, started: Instant) {
    let outcome = match status {
        StatusCode::OK => Outcome::Allow,
        StatusCode::UNAUTHORIZED => Outcome::Unauthenticated,
        StatusCode::BAD_REQUEST => Outcome::BadRequest,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
        _ => Outcome::Forbidden,
    };
    state.metrics.check(route, outcome, started.elapsed());
}

/// The route label and the answer.
async fn decide<'r, B>(
    state: &State,
    routes: &'r RouteMap,
    req: &Request<B>,
) -> (&'r str, Response) {
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut target = match Target::of(req.method().as_str(), path_and_query, req.headers()) {
        Ok(target) => target,
        Err(Unreadable::NoOriginal) => return ("bad_request", no_original()),
        Err(Unreadable::Garbled) => {
            refused("-", &ApiError::Forbidden);
            return ("invalid_path", ApiError::Forbidden.into_response());
        }
    };
    // HTTP/2 carries the host as `:authority`, not as a `Host` header.
    target.host = target.host.or(req.uri().authority().map(|a| a.as_str()));

    let (route, verdict) = verdict(state, routes, target, bearer(req.headers())).await;
    let response = match verdict {
        Ok(allow) => allowed(allow),
        Err(e) => e.into_response(),
    };
    (route, response)
}

/// The decision for one request, whichever transport asked (HTTP, or gRPC in
/// [`super::grpc`]): the route label, and who to let through or why not.
pub async fn verdict<'r>(
    state: &State,
    routes: &'r RouteMap,
    target: Target<'_>,
    token: Option<&str>,
) -> (&'r str, Result<Allow, ApiError>) {
    let decision = match routes.decide(target.host, target.method, target.uri) {
        Ok(decision) => decision,
        Err(e) => {
            tracing::debug!(method = target.method, error = %e, "check: request refused");
            let label = match e {
                PathError::InvalidHost => "invalid_host",
                _ => "invalid_path",
            };
            return (label, Err(ApiError::Forbidden));
        }
    };
    let verdict = judge(state, decision.requirement, token).await;
    match &verdict {
        Ok(_) => tracing::debug!(
            route = decision.route,
            method = target.method,
            "check: allowed"
        ),
        Err(e) => refused(decision.route, e),
    }
    (decision.route, verdict)
}

/// The decision for one request, given what its route needs and its bearer token, in the
/// order of the specification.
async fn judge(
    state: &State,
    requirement: Requirement<'_>,
    token: Option<&str>,
) -> Result<Allow, ApiError> {
    let required: &[Arc<str>] = match requirement {
        // Public ignores the token: a public route needs nothing from it, and a stale or
        // expired token left in a client must not break login, refresh or a public page.
        Requirement::Public => return Ok(Allow::Anonymous),
        Requirement::Deny => return Err(ApiError::Forbidden),
        Requirement::Authenticated => &[],
        Requirement::Permissions(required) => required,
    };
    let Some(token) = token else {
        let anonymous_may = !required.is_empty()
            && state
                .permissions
                .snapshot()
                .allows(&[NON_REGISTERED], required);
        return if anonymous_may {
            Ok(Allow::Anonymous)
        } else {
            Err(ApiError::Unauthorized)
        };
    };
    let now = chrono::Utc::now().timestamp();
    let principal = match state.guard.fast(&state.revocation, token, now) {
        Some(cached) => cached?,
        None => state
            .guard
            .slow(&state.tokens, &state.revocation, token)
            .await
            .map_err(ApiError::from)?,
    };
    if holds(&state.permissions.snapshot(), &principal.roles, required) {
        Ok(Allow::User(principal))
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Whether `roles` hold every permission in `required`. Signing in never takes a right away:
/// what `non_registered` may do, every signed-in user may do too.
fn holds(snapshot: &Snapshot, roles: &[String], required: &[Arc<str>]) -> bool {
    required.iter().all(|p| {
        let one = std::slice::from_ref(p);
        snapshot.allows(roles, one) || snapshot.allows(&[NON_REGISTERED], one)
    })
}

/// 200, empty body, identity headers (ids rendered, roles shared per role set).
fn allowed(allow: Allow) -> Response {
    let mut response = full(StatusCode::OK, Bytes::new());
    let headers = response.headers_mut();
    match allow {
        Allow::Anonymous => {
            headers.insert(X_USER_ROLES, HeaderValue::from_static(NON_REGISTERED));
        }
        Allow::User(who) => {
            let id = who.headers();
            for (name, value) in [
                (X_USER_ID, &id.user_id),
                (X_USER_ROLES, &id.roles),
                (X_SESSION_ID, &id.session_id),
            ] {
                // Rendered from UUIDs and role names (a-z, 0-9, _ and -): always valid.
                match HeaderValue::from_maybe_shared(value.clone()) {
                    Ok(value) => {
                        headers.insert(name, value);
                    }
                    Err(_) => {
                        return ApiError::Internal(anyhow::anyhow!("identity header {name}"))
                            .into_response()
                    }
                }
            }
        }
    }
    response
}

fn refused(route: &str, e: &ApiError) {
    tracing::debug!(
        route,
        status = e.status().as_u16(),
        code = e.code(),
        "check: refused"
    );
}

fn no_original() -> Response {
    ApiError::BadRequest(
        "A check needs X-Original-Method and X-Original-URI (NGINX), X-Forwarded-Method and \
         X-Forwarded-Uri (Traefik), or the original path after /ext_authz (Envoy)."
            .into(),
    )
    .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn envoy_shape_takes_the_path_after_the_prefix() {
        let h = headers(&[("host", "cinema.local")]);
        let t = Target::of("POST", "/ext_authz/api/v1/films?page=2", &h).unwrap();
        assert_eq!(
            t,
            Target {
                host: Some("cinema.local"),
                method: "POST",
                uri: "/api/v1/films?page=2"
            }
        );
        assert_eq!(Target::of("GET", "/ext_authz", &h).unwrap().uri, "");
        assert_eq!(Target::of("GET", "/ext_authz?a=1", &h).unwrap().uri, "?a=1");
    }

    #[test]
    fn nginx_pair_wins_over_traefik_pair() {
        let h = headers(&[
            ("host", "cinema.local"),
            ("x-original-method", "DELETE"),
            ("x-original-uri", "/a"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/b"),
            ("x-forwarded-host", "other.local"),
        ]);
        let t = Target::of("GET", "/auth", &h).unwrap();
        assert_eq!(
            (t.host, t.method, t.uri),
            (Some("cinema.local"), "DELETE", "/a")
        );
    }

    #[test]
    fn traefik_pair_uses_the_forwarded_host() {
        let h = headers(&[
            ("host", "usher:9191"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/b"),
            ("x-forwarded-host", "admin.local"),
        ]);
        let t = Target::of("GET", "/auth", &h).unwrap();
        assert_eq!(
            (t.host, t.method, t.uri),
            (Some("admin.local"), "GET", "/b")
        );
    }

    #[test]
    fn half_pairs_and_no_pairs_are_unreadable() {
        let h = headers(&[("host", "x"), ("x-original-uri", "/a")]);
        assert_eq!(Target::of("GET", "/auth", &h), Err(Unreadable::NoOriginal));
        let h = headers(&[("x-forwarded-method", "GET")]);
        assert_eq!(Target::of("GET", "/auth", &h), Err(Unreadable::NoOriginal));
        let mut h = headers(&[("x-original-method", "GET")]);
        h.insert("x-original-uri", HeaderValue::from_bytes(b"/\xff").unwrap());
        assert_eq!(Target::of("GET", "/auth", &h), Err(Unreadable::Garbled));
    }

    #[test]
    fn only_the_check_paths_are_checks() {
        assert!(is_check("/auth"));
        assert!(is_check("/ext_authz"));
        assert!(is_check("/ext_authz/api"));
        assert!(!is_check("/ext_authzz"));
        assert!(!is_check("/auth/"));
        assert!(!is_check("/healthz"));
    }
}
