//! `/api/v1/auth/...`: register, login, refresh, logout, logout-all, sessions, history.

use http::StatusCode;
use serde::Deserialize;

use super::error::ApiError;
use super::request::Req;
use super::response::{self, Items, Response};
use crate::domain::{registration, users, Credentials, DomainError};
use crate::guard::Principal;
use crate::metrics::LoginOutcome;
use crate::sessions;
use crate::state::State;

/// `POST /api/v1/auth/register` — anyone. 201 with the user. Counted against the client's
/// per-IP limit; the hash waits in the bounded queue (503 `busy` past it).
pub async fn register(state: &State, req: Req) -> Result<Response, ApiError> {
    let user = registration::register(state, req.json()?, &req.origin()).await?;
    response::json(StatusCode::CREATED, &user)
}

/// `POST /api/v1/auth/login` — anyone. 200 with tokens.
pub async fn login(state: &State, req: Req) -> Result<Response, ApiError> {
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
pub async fn refresh(state: &State, req: Req) -> Result<Response, ApiError> {
    let body: RefreshBody = req.json()?;
    let issued = sessions::refresh(state, &body.refresh_token, &req.origin()).await?;
    response::json(StatusCode::OK, &issued)
}

/// `POST /api/v1/auth/logout` — any access token. Ends this session.
pub async fn logout(state: &State, who: &Principal, req: Req) -> Result<Response, ApiError> {
    sessions::logout(state, who, &req.origin()).await?;
    Ok(response::no_content())
}

/// `POST /api/v1/auth/logout-all` — any access token. Ends every session of the user.
pub async fn logout_all(state: &State, who: &Principal, req: Req) -> Result<Response, ApiError> {
    sessions::logout_all(state, who, &req.origin()).await?;
    Ok(response::no_content())
}

/// `GET /api/v1/auth/sessions` — any access token. The user's live sessions.
pub async fn list_sessions(state: &State, who: &Principal) -> Result<Response, ApiError> {
    let items = sessions::list(state, who).await?;
    response::json(StatusCode::OK, &Items { items })
}

/// `DELETE /api/v1/auth/sessions/{id}` — any access token; own sessions only (others: 404).
pub async fn end_session(
    state: &State,
    who: &Principal,
    id: &str,
    req: Req,
) -> Result<Response, ApiError> {
    let id = id.parse().map_err(|_| ApiError::NotFound)?;
    sessions::end_one(state, who, id, &req.origin()).await?;
    Ok(response::no_content())
}

/// `GET /api/v1/auth/history` — `user_self_read`. The caller's history, newest first.
pub async fn history(state: &State, who: &Principal, req: Req) -> Result<Response, ApiError> {
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
    response::page(items, page, per_page, total)
}
