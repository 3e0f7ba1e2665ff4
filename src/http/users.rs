//! `/api/v1/users/...`.

use http::{Method, StatusCode};
use serde::Serialize;

use super::authorize;
use super::error::ApiError;
use super::request::Req;
use super::response::{self, Response};
use crate::app::State;
use crate::store::{self, users::User};

/// Routes under `/api/v1/users/`.
pub async fn route(
    state: &State,
    method: &Method,
    rest: &[&str],
    req: Req,
) -> Result<Response, ApiError> {
    match (method, rest) {
        (&Method::GET, ["me"]) => me(state, req).await,
        (_, ["me"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

/// A user with their effective permissions.
#[derive(Serialize)]
struct Me {
    #[serde(flatten)]
    user: User,
    permissions: Vec<String>,
}

/// `GET /api/v1/users/me` — `user_self_read`. The caller with effective permissions.
async fn me(state: &State, req: Req) -> Result<Response, ApiError> {
    let who = authorize(state, &req, &["user_self_read"]).await?;
    let db = store::conn(&state.db).await?;
    let user = store::users::by_id(&db, who.user)
        .await?
        .ok_or(ApiError::NotFound)?;
    let permissions = state.permissions.snapshot().effective(&user.roles);
    response::json(StatusCode::OK, &Me { user, permissions })
}
