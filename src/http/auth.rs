//! `/api/v1/auth/...`: register, login, refresh, logout, logout-all, sessions, history.

use http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, FieldError};
use super::request::Req;
use super::response::{self, Items, Page, Response};
use crate::app::State;
use crate::guard::Principal;
use crate::metrics::LoginOutcome;
use crate::sessions;
use crate::store::{self, users};

/// Register and login bodies.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    email: String,
    password: String,
}

/// Trims and checks an e-mail: at most 254 characters, `local@domain`, both non-empty.
pub fn valid_email(field: &str, email: &str, errors: &mut Vec<FieldError>) -> String {
    let email = email.trim();
    let ok = email.chars().count() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        errors.push(FieldError::new(
            field,
            "must be an e-mail address local@domain of at most 254 characters",
        ));
    }
    email.to_owned()
}

/// Checks a new password: 8 to 128 characters.
pub fn valid_password(field: &str, password: &str, errors: &mut Vec<FieldError>) {
    let n = password.chars().count();
    if !(8..=128).contains(&n) {
        errors.push(FieldError::new(field, "must be 8 to 128 characters"));
    }
}

/// `POST /api/v1/auth/register` — anyone. 201 with the user. Counted against the client's
/// per-IP limit; the hash waits in the bounded queue (503 `busy` past it).
pub async fn register(state: &State, req: Req) -> Result<Response, ApiError> {
    let body: Credentials = req.json()?;
    let mut errors = Vec::new();
    let email = valid_email("email", &body.email, &mut errors);
    valid_password("password", &body.password, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    crate::attempts::per_ip(state, &req.origin()).await?;
    let hash = state.passwords.hash(body.password).await?;
    let mut db = store::conn(&state.db).await?;
    let tx = db.transaction().await?;
    let user = users::create(&tx, &email, &hash).await?;
    tx.commit().await?;
    response::json(StatusCode::CREATED, &user)
}

/// `POST /api/v1/auth/login` — anyone. 200 with tokens.
pub async fn login(state: &State, req: Req) -> Result<Response, ApiError> {
    let body: Credentials = req.json()?;
    let issued = if body.email.chars().count() > 254 || body.password.chars().count() > 128 {
        // Too long to be anyone's: same answer as a wrong password, without hashing 64 KiB.
        Err(ApiError::InvalidCredentials)
    } else {
        sessions::login(state, body.email.trim(), body.password, &req.origin()).await
    };
    let outcome = match &issued {
        Ok(_) => Some(LoginOutcome::Success),
        Err(ApiError::InvalidCredentials | ApiError::AccountDisabled) => {
            Some(LoginOutcome::Failure)
        }
        Err(ApiError::TooManyAttempts(_)) => Some(LoginOutcome::Lockout),
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
    let db = store::conn(&state.db).await?;
    let (items, total) = store::history::page(&db, user, per_page, (page - 1) * per_page).await?;
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
