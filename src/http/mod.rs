//! The HTTP layer: the two listeners, one routing function per listener, one file per
//! resource. Handlers are `async fn(&State, Req) -> Result<Response, ApiError>`, callable
//! without a socket.

pub mod auth;
pub mod check;
pub mod error;
pub mod ops;
pub mod request;
pub mod response;
pub mod roles;
pub mod users;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::State;
use crate::guard::{Principal, Refused};
use error::ApiError;
use request::Req;
use response::Response;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public API.
    Api,
    /// Gateway checks, health, metrics.
    Internal,
}

/// Accepts connections until `shutdown` flips, then lets in-flight requests finish for at
/// most `grace`.
pub async fn serve(
    listener: TcpListener,
    which: Listener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if which == Listener::Api {
        // A client that trickles its request head ties up a connection: give up after a while.
        // Not on the internal listener: its only client is the gateway's connection pool, and
        // arming a timer for every request head costs the check endpoint measurably.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(state.config.listen.read_timeout.0);
        builder.http2().timer(TokioTimer::new());
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(dispatch(&state, which, req, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the shutdown grace");
    }
}

async fn dispatch(
    state: &State,
    which: Listener,
    req: http::Request<Incoming>,
    peer: SocketAddr,
) -> Response {
    match which {
        Listener::Internal => internal(state, req).await,
        Listener::Api => {
            let started = Instant::now();
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 128)
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
            let limit = state.config.listen.read_timeout.0;
            let read = tokio::time::timeout(limit, Req::read(req, peer)).await;
            let response = match read {
                Ok(Ok(req)) => api(state, req)
                    .await
                    .unwrap_or_else(ApiError::into_response),
                Ok(Err(e)) => e.into_response(),
                Err(_) => ApiError::BadRequest("the request body did not arrive in time".into())
                    .into_response(),
            };
            let status = response.status().as_u16();
            let latency = started.elapsed();
            state.metrics.request(
                &crate::metrics::endpoint_label(&path, status),
                status,
                latency,
            );
            tracing::info!(
                %method, %path, status,
                latency_us = latency.as_micros() as u64, %request_id, "request"
            );
            let mut response = response;
            if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                response.headers_mut().insert("x-request-id", v);
            }
            response
        }
    }
}

/// The API listener's routes.
pub async fn api(state: &State, req: Req) -> Result<Response, ApiError> {
    let path = req.parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.parts.method.clone();
    match (&method, segments.as_slice()) {
        (_, ["api", "v1", "auth", rest @ ..]) => auth::route(state, &method, rest, req).await,
        (_, ["api", "v1", "users", rest @ ..]) => users::route(state, &method, rest, req).await,
        (_, ["api", "v1", "roles", rest @ ..]) => roles::route(state, &method, rest, req).await,
        (_, ["api", "v1", "permissions", rest @ ..]) => {
            roles::route_permissions(state, &method, rest, req).await
        }
        (&Method::GET, [".well-known", "jwks.json"]) => ops::jwks(state),
        (&Method::GET, ["openapi.json"]) => Ok(ops::openapi()),
        (&Method::GET, ["docs"]) => Ok(ops::docs()),
        (_, [".well-known", "jwks.json"] | ["openapi.json"] | ["docs"]) => {
            Err(ApiError::MethodNotAllowed("GET"))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// The internal listener's routes. The gateway checks come first: they are nearly all of
/// this listener's traffic. Bodies are never read here.
pub async fn internal(state: &State, req: http::Request<Incoming>) -> Response {
    if check::is_check(req.uri().path()) {
        return check::check(state, &req).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            response::with_type(response::full(StatusCode::OK, "ok\n"), "text/plain")
        }
        (&Method::GET, "/readyz") => ops::readyz(state).await,
        (&Method::GET, "/metrics") => ops::metrics(state).await,
        _ => ApiError::NotFound.into_response(),
    }
}

/// The caller, from the bearer token: 401 without one, 401 with the token's code when it is
/// refused, 503 when revocation state cannot be read.
pub async fn principal(state: &State, req: &Req) -> Result<Arc<Principal>, ApiError> {
    let token = req.bearer().ok_or(ApiError::Unauthorized)?;
    state
        .guard
        .authenticate(&state.tokens, &state.revocation, token)
        .await
        .map_err(|e| match e {
            Refused::Token(t) => ApiError::Token(t),
            Refused::Unavailable(u) => ApiError::Unavailable(u.to_string()),
        })
}

/// The caller, who must hold every permission in `required` (403 otherwise).
pub async fn authorize(
    state: &State,
    req: &Req,
    required: &[&str],
) -> Result<Arc<Principal>, ApiError> {
    let who = principal(state, req).await?;
    if state.permissions.snapshot().allows(&who.roles, required) {
        Ok(who)
    } else {
        Err(ApiError::Forbidden)
    }
}
