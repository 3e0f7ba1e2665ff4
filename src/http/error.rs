//! `ApiError`: every answer that is not a success, written once as RFC 9457 problem details.

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::StatusCode;
use serde::Serialize;

use super::response::{full, Response};
pub use crate::domain::FieldError;
use crate::domain::{Conflict, DomainError};
use crate::guard::Refused;
pub use crate::tokens::TokenError;

/// Every error an endpoint can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed_json`.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 400 `bad_request`: a request the endpoint cannot read (not a body problem).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401 `unauthorized`: no usable token.
    #[error("authentication required")]
    Unauthorized,
    /// 401 with a token-specific code (`invalid_token`, `token_expired`, ...).
    #[error("token refused: {0:?}")]
    Token(TokenError),
    /// 401 `invalid_credentials`.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// 403 `account_disabled`.
    #[error("account disabled")]
    AccountDisabled,
    /// 403 `forbidden`.
    #[error("forbidden")]
    Forbidden,
    /// 403 `forbidden`, saying why: the change would give away power the caller lacks.
    #[error("forbidden: {0}")]
    Escalation(String),
    /// 404 `not_found`.
    #[error("not found")]
    NotFound,
    /// 405 `method_not_allowed`, with the methods the resource allows (the `Allow` header).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// 409 with a conflict code (`email_taken`, `role_exists`, `role_builtin`,
    /// `last_superuser`).
    #[error("conflict: {1}")]
    Conflict(&'static str, String),
    /// 413 `payload_too_large`.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 415 `unsupported_media_type`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 422 `validation_failed` with one entry per field.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// 422 `unknown_permission`.
    #[error("unknown permission {0}")]
    UnknownPermission(String),
    /// 429 `too_many_attempts`, retry after so many seconds.
    #[error("too many attempts")]
    TooManyAttempts(u64),
    /// 503 `busy`: the password-hashing queue is full; retry after so many seconds.
    #[error("busy")]
    Busy(u64),
    /// 503 `unavailable`: PostgreSQL or Redis (or both) cannot answer.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 500: logged with its cause, answered generically.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// The stable machine-readable code of a refused token.
pub fn token_code(t: TokenError) -> &'static str {
    match t {
        TokenError::Invalid => "invalid_token",
        TokenError::Expired => "token_expired",
        TokenError::Revoked => "token_revoked",
        TokenError::Stale => "token_stale",
        TokenError::RefreshReused => "refresh_token_reused",
    }
}

fn token_detail(t: TokenError) -> &'static str {
    match t {
        TokenError::Invalid => "The token is malformed, badly signed or not an access token.",
        TokenError::Expired => "The token has expired.",
        TokenError::Revoked => "The token's session has ended.",
        TokenError::Stale => "The user's roles changed; refresh the token.",
        TokenError::RefreshReused => {
            "The refresh token was already used; the session has been ended."
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::Token(e)
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    r#type: &'static str,
    title: &'static str,
    status: u16,
    code: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::Token(_) | ApiError::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::AccountDisabled | ApiError::Forbidden | ApiError::Escalation(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(..) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) | ApiError::UnknownPermission(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Token(t) => token_code(*t),
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::AccountDisabled => "account_disabled",
            ApiError::Forbidden | ApiError::Escalation(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(code, _) => code,
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Validation(_) => "validation_failed",
            ApiError::UnknownPermission(_) => "unknown_permission",
            ApiError::TooManyAttempts(_) => "too_many_attempts",
            ApiError::Busy(_) => "busy",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::MalformedJson(why) => format!("The body is not valid JSON: {why}"),
            ApiError::BadRequest(why) => why.clone(),
            ApiError::Unauthorized => "A bearer access token is required.".into(),
            ApiError::Token(t) => token_detail(*t).into(),
            ApiError::InvalidCredentials => "E-mail or password is wrong.".into(),
            ApiError::AccountDisabled => "This account is disabled.".into(),
            ApiError::Forbidden => "You do not have the permission this needs.".into(),
            ApiError::Escalation(why) => why.clone(),
            ApiError::NotFound => "No such resource.".into(),
            ApiError::MethodNotAllowed(allowed) => {
                format!("This method is not allowed here; allowed: {allowed}.")
            }
            ApiError::Conflict(_, why) => why.clone(),
            ApiError::PayloadTooLarge => "The body is larger than 64 KiB.".into(),
            ApiError::UnsupportedMediaType => "The body must be application/json.".into(),
            ApiError::Validation(_) => "Some fields are invalid.".into(),
            ApiError::UnknownPermission(name) => format!("There is no permission `{name}`."),
            ApiError::TooManyAttempts(secs) => {
                format!("Too many login attempts; try again in {secs} s.")
            }
            ApiError::Busy(secs) => {
                format!("Too many logins are being checked at once; try again in {secs} s.")
            }
            // The cause is logged; the client learns only which kind of outage it is.
            ApiError::Unavailable(_) => "A backing service is unavailable; try again.".into(),
            ApiError::Internal(_) => "Something went wrong on our side.".into(),
        }
    }

    /// The problem-details response; `token_given` adds `error="invalid_token"` to a 401.
    pub fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(cause) => tracing::error!(error = ?cause, "internal error"),
            ApiError::Unavailable(cause) => tracing::warn!(cause = %cause, "unavailable"),
            _ => {}
        }
        let detail = self.detail();
        let problem = Problem {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code: self.code(),
            detail: &detail,
            errors: match &self {
                ApiError::Validation(errors) => Some(errors),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = full(status, body);
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Token(_) | ApiError::InvalidCredentials => {
                let value = if matches!(self, ApiError::InvalidCredentials) {
                    HeaderValue::from_static("Bearer")
                } else {
                    HeaderValue::from_static("Bearer error=\"invalid_token\"")
                };
                headers.insert(WWW_AUTHENTICATE, value);
            }
            ApiError::TooManyAttempts(secs) | ApiError::Busy(secs) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*secs));
            }
            ApiError::MethodNotAllowed(allowed) => {
                headers.insert(ALLOW, HeaderValue::from_static(allowed));
            }
            ApiError::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// The one place the domain's refusals become problem details.
impl From<Refused> for ApiError {
    /// A refused bearer token: 401 with its code, or 503 when revocation state cannot be read.
    fn from(e: Refused) -> Self {
        match e {
            Refused::Token(t) => ApiError::Token(t),
            Refused::Unavailable(u) => ApiError::Unavailable(u.to_string()),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(errors) => ApiError::Validation(errors),
            DomainError::UnknownPermission(name) => ApiError::UnknownPermission(name),
            DomainError::NotFound => ApiError::NotFound,
            DomainError::Escalation(why) => ApiError::Escalation(why.to_string()),
            DomainError::Conflict(conflict) => {
                ApiError::Conflict(conflict_code(conflict), conflict.to_string())
            }
            DomainError::InvalidCredentials => ApiError::InvalidCredentials,
            DomainError::AccountDisabled => ApiError::AccountDisabled,
            DomainError::Token(t) => ApiError::Token(t),
            DomainError::TooManyAttempts(secs) => ApiError::TooManyAttempts(secs),
            DomainError::Busy(secs) => ApiError::Busy(secs),
            DomainError::Unavailable(why) => ApiError::Unavailable(why),
            DomainError::Internal(e) => ApiError::Internal(e),
        }
    }
}

/// The stable machine-readable code of a conflict.
fn conflict_code(conflict: Conflict) -> &'static str {
    match conflict {
        Conflict::EmailTaken => "email_taken",
        Conflict::RoleExists => "role_exists",
        Conflict::BuiltinRenamed | Conflict::BuiltinDeleted | Conflict::SuperuserGrants => {
            "role_builtin"
        }
        Conflict::LastSuperuser => "last_superuser",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn problem(e: impl Into<DomainError>) -> (u16, serde_json::Value) {
        use http_body_util::BodyExt;
        let r = ApiError::from(e.into()).into_response();
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn domain_refusals_keep_their_status_code_and_wording() {
        use crate::domain::Escalation;
        let cases: Vec<(DomainError, u16, &str, &str)> = vec![
            (
                Conflict::EmailTaken.into(),
                409,
                "email_taken",
                "This e-mail is already registered.",
            ),
            (
                Conflict::RoleExists.into(),
                409,
                "role_exists",
                "A role with this name exists.",
            ),
            (
                Conflict::BuiltinRenamed.into(),
                409,
                "role_builtin",
                "Built-in roles cannot be renamed.",
            ),
            (
                Conflict::BuiltinDeleted.into(),
                409,
                "role_builtin",
                "Built-in roles cannot be deleted.",
            ),
            (
                Conflict::SuperuserGrants.into(),
                409,
                "role_builtin",
                "superuser holds every permission; its grants cannot be changed.",
            ),
            (
                Conflict::LastSuperuser.into(),
                409,
                "last_superuser",
                "This is the last active superuser: it cannot be disabled or lose the role.",
            ),
            (
                Escalation::NotHeld("films_read".into()).into(),
                403,
                "forbidden",
                "You cannot grant `films_read`: you do not hold it.",
            ),
            (
                Escalation::SuperuserRole.into(),
                403,
                "forbidden",
                "Only a superuser can assign or remove `superuser`.",
            ),
            (
                Escalation::Superuser.into(),
                403,
                "forbidden",
                "Only a superuser can change or disable a superuser.",
            ),
            (
                DomainError::UnknownPermission("films_fly".into()),
                422,
                "unknown_permission",
                "There is no permission `films_fly`.",
            ),
            (DomainError::NotFound, 404, "not_found", "No such resource."),
            (
                TokenError::RefreshReused.into(),
                401,
                "refresh_token_reused",
                "The refresh token was already used; the session has been ended.",
            ),
            (
                DomainError::Unavailable("connection refused".into()),
                503,
                "unavailable",
                "A backing service is unavailable; try again.",
            ),
        ];
        for (error, status, code, detail) in cases {
            let (got, body) = problem(error).await;
            assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
            assert_eq!(body["detail"], detail);
        }
        let (status, body) =
            problem(DomainError::Invalid(vec![FieldError::new("email", "bad")])).await;
        assert_eq!(status, 422);
        assert_eq!(body["errors"][0]["field"], "email");
    }

    #[test]
    fn internal_errors_say_nothing_of_their_cause() {
        let r = ApiError::Internal(anyhow::anyhow!("relation \"users\" does not exist"))
            .into_response();
        assert_eq!(r.status(), 500);
        let body = format!("{:?}", r.body());
        assert!(!body.contains("relation"));
    }
}
