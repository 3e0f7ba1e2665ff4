//! The HTTP layer: the two listeners, the table of their operations (`endpoint`), one
//! routing function per listener, one file per resource. [`api`] recognises the operation,
//! lets the caller in by its access rule, and calls its handler: an `async fn` of the state,
//! the caller and the request's parts it needs, returning `Result<Response, ApiError>`,
//! callable without a socket.

pub mod auth;
pub mod check;
pub mod endpoint;
pub mod error;
pub mod grpc;
pub mod ops;
pub mod request;
pub mod response;
pub mod roles;
pub mod users;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::guard::Principal;
use crate::permissions::Permission;
use crate::state::State;
use endpoint::{Access, Endpoint, Unrecognised};
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
///
/// Connections are bounded and watched (see [`Watchdog`]): at most `listen.max_connections`
/// are open on the listener (one more is closed as soon as it is accepted); a connection that
/// sends no complete request head within `listen.read_timeout` of opening — whether or not it
/// got as far as HTTP/1 or HTTP/2 — is dropped; one idle between requests for longer than its
/// listener's idle limit is shut down gracefully (HTTP/2: GOAWAY). HTTP/2 connections are also
/// pinged, so a peer that vanished without closing is noticed.
pub async fn serve(
    listener: TcpListener,
    which: Listener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let listen = &state.config.listen;
    let limits = Limits {
        first_head: listen.read_timeout.0,
        idle: match which {
            Listener::Api => listen.read_timeout.0,
            Listener::Internal => listen.idle_timeout.0,
        },
    };
    let slots = Arc::new(Semaphore::new(
        listen.max_connections.get().min(Semaphore::MAX_PERMITS),
    ));
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (drain, _) = watch::channel(());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle))
        .keep_alive_timeout(limits.first_head);
    if which == Listener::Api {
        // A client that trickles a later request head is cut off by hyper too. Not on the
        // internal listener: arming a timer for every request head costs the check endpoint
        // measurably, and the per-connection watchdog bounds its idle time instead.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(listen.read_timeout.0);
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(listener = ?which, %peer, "listen.max_connections reached; connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let state = state.clone();
        let seen = activity.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            let busy = seen.begin();
            async move {
                // gRPC checks share the internal listener's port; their body has trailers.
                let response = if which == Listener::Internal && grpc::is_grpc(&req) {
                    grpc::serve(&state, req).await.map(Either::Right)
                } else {
                    dispatch(&state, which, req, peer).await.map(Either::Left)
                };
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let mut draining = drain.subscribe();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut watchdog = Watchdog::new(activity, limits);
            let timer = tokio::time::sleep(limits.first_head);
            let mut timer = std::pin::pin!(timer);
            let mut shutting_down = false;
            let result = loop {
                tokio::select! {
                    result = conn.as_mut() => break result,
                    _ = draining.changed(), if !shutting_down => {
                        shutting_down = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = &mut timer => match watchdog.tick() {
                        Verdict::Wait(next) => timer.as_mut().reset(tokio::time::Instant::now() + next),
                        Verdict::Idle(bound) => {
                            conn.as_mut().graceful_shutdown();
                            timer.as_mut().reset(tokio::time::Instant::now() + bound);
                        }
                        Verdict::Drop => break Ok(()),
                    },
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = drain.send(());
    if tokio::time::timeout(grace, drain.closed()).await.is_err() {
        tracing::warn!("some connections did not finish within the shutdown grace");
    }
}

/// How long a connection may wait for its first request head, and sit idle between requests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    first_head: Duration,
    idle: Duration,
}

/// Requests a connection has begun and finished, counted by its service. Two uncontended
/// atomic additions per request: no timer is armed or cancelled per request.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.started.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// One request in progress; counted as finished when dropped (answered, or abandoned).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// One timer per connection. It first fires `first_head` after the connection opened: no
/// request yet means the peer sent nothing usable in time (silence, a partial HTTP/1 head, a
/// partial HTTP/2 preface), and the connection is dropped. After that it fires every `idle`: a
/// connection with no request in progress and none begun since the last tick is idle (so it is
/// closed between `idle` and twice that after its last request), and is shut down gracefully;
/// if it is still open `first_head` later, it is dropped.
struct Watchdog {
    activity: Arc<Activity>,
    limits: Limits,
    phase: Phase,
}

enum Phase {
    FirstHead,
    Serving { seen: u64 },
    Closing,
}

/// What to do when the watchdog's timer fires.
enum Verdict {
    /// Fine: look again after this long.
    Wait(Duration),
    /// Idle: shut down gracefully, and look again after this long.
    Idle(Duration),
    /// Close the connection now.
    Drop,
}

impl Watchdog {
    fn new(activity: Arc<Activity>, limits: Limits) -> Watchdog {
        Watchdog {
            activity,
            limits,
            phase: Phase::FirstHead,
        }
    }

    fn tick(&mut self) -> Verdict {
        let started = self.activity.started.load(Ordering::Relaxed);
        let finished = self.activity.finished.load(Ordering::Relaxed);
        match self.phase {
            Phase::FirstHead if started == 0 => Verdict::Drop,
            Phase::Serving { seen } if started == seen && finished == started => {
                self.phase = Phase::Closing;
                Verdict::Idle(self.limits.first_head)
            }
            Phase::FirstHead | Phase::Serving { .. } => {
                self.phase = Phase::Serving { seen: started };
                Verdict::Wait(self.limits.idle)
            }
            Phase::Closing => Verdict::Drop,
        }
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
            let endpoint = Endpoint::recognise(&method, &path);
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 128)
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
            let limit = state.config.listen.read_timeout.0;
            let read = tokio::time::timeout(limit, Req::read(req, peer)).await;
            let response = match read {
                Ok(Ok(req)) => match endpoint {
                    Ok(endpoint) => api(
                        state,
                        endpoint,
                        req.behind(state.config.listen.trusted_proxies),
                    )
                    .await
                    .unwrap_or_else(ApiError::into_response),
                    Err(unrecognised) => ApiError::from(unrecognised).into_response(),
                },
                Ok(Err(e)) => e.into_response(),
                Err(_) => ApiError::BadRequest("the request body did not arrive in time".into())
                    .into_response(),
            };
            let status = response.status().as_u16();
            let latency = started.elapsed();
            state
                .metrics
                .request(endpoint::label(&endpoint), status, latency);
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

/// The API listener: the caller is let in by the endpoint's [`Access`] (401, 403), then its
/// handler runs. Handlers of [`Access::OwnOrAny`] endpoints get the user the path names, once
/// the caller may act on them.
pub async fn api(state: &State, endpoint: Endpoint<'_>, req: Req) -> Result<Response, ApiError> {
    use Endpoint as E;
    let access = endpoint.access();
    let who = match access {
        Access::Anyone => None,
        Access::Token | Access::OwnOrAny { .. } => Some(principal(state, &req).await?),
        Access::Holds(permission) => Some(authorize(state, &req, permission).await?),
    };
    let on = |who: &Principal, id: &str| subject(state, who, id, access);
    match (endpoint, who) {
        (E::Register, _) => auth::register(state, req).await,
        (E::Login, _) => auth::login(state, req).await,
        (E::Refresh, _) => auth::refresh(state, req).await,
        (E::Jwks, _) => ops::jwks(state),
        (E::OpenApi, _) => Ok(ops::openapi()),
        (E::Docs, _) => Ok(ops::docs()),
        // Every other endpoint's access names a caller.
        (_, None) => Err(ApiError::Unauthorized),

        (E::Logout, Some(who)) => auth::logout(state, &who, req).await,
        (E::LogoutAll, Some(who)) => auth::logout_all(state, &who, req).await,
        (E::Sessions, Some(who)) => auth::list_sessions(state, &who).await,
        (E::EndSession { session }, Some(who)) => {
            auth::end_session(state, &who, session, req).await
        }
        (E::OwnHistory, Some(who)) => auth::history(state, &who, req).await,

        (E::Me, Some(who)) => users::me(state, &who).await,
        (E::UpdateMe, Some(who)) => users::update(state, &who, on(&who, "me")?, req).await,
        (E::DisableMe, Some(who)) => users::disable(state, &who, on(&who, "me")?, req).await,
        (E::ChangePassword, Some(who)) => users::change_password(state, &who, req).await,
        (E::Users, Some(_)) => users::list(state, req).await,
        (E::User { user }, Some(who)) => users::show(state, on(&who, user)?).await,
        (E::UpdateUser { user }, Some(who)) => {
            users::update(state, &who, on(&who, user)?, req).await
        }
        (E::DisableUser { user }, Some(who)) => {
            users::disable(state, &who, on(&who, user)?, req).await
        }
        (E::UserHistory { user }, Some(who)) => users::history(state, on(&who, user)?, req).await,
        (E::UserRoles { user }, Some(who)) => users::roles(state, on(&who, user)?).await,
        (E::AssignRole { user, role }, Some(who)) => {
            users::set_role(state, &who, user, role, true).await
        }
        (E::RemoveRole { user, role }, Some(who)) => {
            users::set_role(state, &who, user, role, false).await
        }

        (E::Roles, Some(_)) => roles::list(state).await,
        (E::CreateRole, Some(who)) => roles::create(state, &who, req).await,
        (E::Role { role }, Some(_)) => roles::show(state, role).await,
        (E::UpdateRole { role }, Some(who)) => roles::update(state, &who, role, req).await,
        (E::DeleteRole { role }, Some(_)) => roles::delete(state, role).await,
        (E::Permissions, Some(_)) => roles::catalog(state).await,

        // The internal listener's endpoints are not served here.
        (
            E::ExtAuthz | E::AuthRequest | E::GrpcCheck | E::Healthz | E::Readyz | E::Metrics,
            Some(_),
        ) => Err(ApiError::NotFound),
    }
}

/// The user `id` names (`me`: the caller) when `access` lets the caller act on them; 404 for a
/// malformed id, 403 for a user the caller may not see (whether or not they exist, so existence
/// never leaks).
fn subject(
    state: &State,
    who: &Principal,
    id: &str,
    access: Access,
) -> Result<uuid::Uuid, ApiError> {
    let user = if id == "me" {
        who.user
    } else {
        id.parse().map_err(|_| ApiError::NotFound)?
    };
    let snapshot = state.permissions.snapshot();
    let allowed = match access {
        Access::OwnOrAny { own, any } => {
            snapshot.allows(&who.roles, &[any])
                || (user == who.user && snapshot.allows(&who.roles, &[own]))
        }
        Access::Holds(permission) => snapshot.allows(&who.roles, &[permission]),
        Access::Anyone | Access::Token => true,
    };
    if allowed {
        Ok(user)
    } else {
        Err(ApiError::Forbidden)
    }
}

/// The internal listener. Bodies are never read here.
pub async fn internal(state: &State, req: http::Request<Incoming>) -> Response {
    match Endpoint::recognise_internal(req.method(), req.uri().path()) {
        Ok(Endpoint::ExtAuthz | Endpoint::AuthRequest) => check::check(state, &req).await,
        Ok(Endpoint::Healthz) => {
            response::with_type(response::full(StatusCode::OK, "ok\n"), "text/plain")
        }
        Ok(Endpoint::Readyz) => ops::readyz(state).await,
        Ok(Endpoint::Metrics) => ops::metrics(state).await,
        Ok(_) => ApiError::NotFound.into_response(),
        Err(unrecognised) => ApiError::from(unrecognised).into_response(),
    }
}

impl From<Unrecognised> for ApiError {
    fn from(u: Unrecognised) -> ApiError {
        match u {
            Unrecognised::NotFound => ApiError::NotFound,
            Unrecognised::MethodNotAllowed { allow, .. } => ApiError::MethodNotAllowed(allow),
        }
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
        .map_err(ApiError::from)
}

/// The caller, who must hold `permission` (403 otherwise).
pub async fn authorize(
    state: &State,
    req: &Req,
    permission: Permission,
) -> Result<Arc<Principal>, ApiError> {
    let who = principal(state, req).await?;
    if state
        .permissions
        .snapshot()
        .allows(&who.roles, &[permission])
    {
        Ok(who)
    } else {
        Err(ApiError::Forbidden)
    }
}
