//! `/api/v1/auth/...`: register, login, refresh, logout, logout-all, sessions, history.

use http::{Method, StatusCode};
use serde::Deserialize;

use super::error::ApiError;
use super::request::Req;
use super::response::{self, Items, Page, Response};
use super::{authorize, principal};
use crate::domain::{registration, users, Credentials, DomainError};
use crate::metrics::LoginOutcome;
use crate::sessions;
use crate::state::State;

/// Routes under `/api/v1/auth/`.
pub async fn route(
    state: &State,
    method: &Method,
    rest: &[&str],
    req: Req,
) -> Result<Response, ApiError> {
    match (method, rest) {
        (&Method::POST, ["register"]) => register(state, req).await,
        (&Method::POST, ["login"]) => login(state, req).await,
        (&Method::POST, ["refresh"]) => refresh(state, req).await,
        (&Method::POST, ["logout"]) => logout(state, req).await,
        (&Method::POST, ["logout-all"]) => logout_all(state, req).await,
        (&Method::GET, ["sessions"]) => list_sessions(state, req).await,
        (&Method::DELETE, ["sessions", id]) => end_session(state, id, req).await,
        (&Method::GET, ["history"]) => history(state, req).await,
        (_, ["register" | "login" | "refresh" | "logout" | "logout-all"]) => {
            Err(ApiError::MethodNotAllowed("POST"))
        }
        (_, ["history"] | ["sessions"]) => Err(ApiError::MethodNotAllowed("GET")),
        (_, ["sessions", _]) => Err(ApiError::MethodNotAllowed("DELETE")),
        _ => Err(ApiError::NotFound),
    }
}

/// `POST /api/v1/auth/register` — anyone. 201 with the user. Counted against the client's
/// per-IP limit; the hash waits in the bounded queue (503 `busy` past it).
async fn register(state: &State, req: Req) -> Result<Response, ApiError> {
    let user = registration::register(state, req.json()?, &req.origin()).await?;
    response::json(StatusCode::CREATED, &user)
}

/// `POST /api/v1/auth/login` — anyone. 200 with tokens.
async fn login(state: &State, req: Req) -> Result<Response, ApiError> {
    let body: Credentials = req.json()?;
    let issued = if body.too_long() {
        // Same answer as a wrong password, without hashing 64 KiB.
        Err(DomainError::InvalidCredentials)
    } else {
        sessions::login(state, body.email.trim(), body.password, &req.origin()).await
    };
    let outcome = match &issued {
        Ok(_) => Some(LoginOutcome::Success),
        Err(DomainError::InvalidCredentials | DomainError::AccountDisabled) => {
            Some(LoginOutcome::Failure)
        }
        Err(DomainError::TooManyAttempts(_)) => Some(LoginOutcome::Lockout),
        Err(_) => None,
    };
    if let Some(outcome) = outcome {
        state.metrics.login(outcome);
    }
    response::json(StatusCode::OK, &issued?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

/// `POST /api/v1/auth/refresh` — a refresh token. 200 with new tokens.
async fn refresh(state: &State, req: Req) -> Result<Response, ApiError> {
    let body: RefreshBody = req.json()?;
    let issued = sessions::refresh(state, &body.refresh_token, &req.origin()).await?;
    response::json(StatusCode::OK, &issued)
}

/// `POST /api/v1/auth/logout` — any access token. Ends this session.
async fn logout(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = principal(state, &req).await?;
    sessions::logout(state, &who, &req.origin()).await?;
    Ok(response::no_content())
}

/// `POST /api/v1/auth/logout-all` — any access token. Ends every session of the user.
async fn logout_all(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = principal(state, &req).await?;
    sessions::logout_all(state, &who, &req.origin()).await?;
    Ok(response::no_content())
}

/// `GET /api/v1/auth/sessions` — any access token. The user's live sessions.
async fn list_sessions(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = principal(state, &req).await?;
    let items = sessions::list(state, &who).await?;
    response::json(StatusCode::OK, &Items { items })
}

/// `DELETE /api/v1/auth/sessions/{id}` — any access token; own sessions only (others: 404).
async fn end_session(state: &State, id: &str, req: Req) -> Result<Response, ApiError> {
    let who = principal(state, &req).await?;
    let id = id.parse().map_err(|_| ApiError::NotFound)?;
    sessions::end_one(state, &who, id, &req.origin()).await?;
    Ok(response::no_content())
}

/// `GET /api/v1/auth/history` — `user_self_read`. The caller's history, newest first.
async fn history(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = authorize(state, &req, &["user_self_read"]).await?;
    history_page(state, who.user, &req).await
}

/// A page of `user`'s history.
pub async fn history_page(
    state: &State,
    user: uuid::Uuid,
    req: &Req,
) -> Result<Response, ApiError> {
    let (page, per_page) = req.pagination()?;
    let (items, total) = users::history(state, user, page, per_page).await?;
    response::json(
        StatusCode::OK,
        &Page {
            items,
            page,
            per_page,
            total,
        },
    )
}
