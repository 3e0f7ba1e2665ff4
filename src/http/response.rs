//! Response helpers: one body type for every answer.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use http_body_util::Full;
use serde::Serialize;

use super::error::ApiError;

/// Every response usher sends.
pub type Response = http::Response<Full<Bytes>>;

/// A response with a body and no headers yet.
pub fn full(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// `status` with a JSON body.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(with_type(full(status, body), "application/json"))
}

/// 204.
pub fn no_content() -> Response {
    full(StatusCode::NO_CONTENT, Bytes::new())
}

/// Sets `Content-Type`.
pub fn with_type(mut r: Response, content_type: &'static str) -> Response {
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A page of a list.
#[derive(Serialize)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// 1-based page number.
    pub page: i64,
    /// Page size.
    pub per_page: i64,
    /// Items in all pages.
    pub total: i64,
}

/// `200` with page `page` (of `per_page`) of a list of `total` items.
pub fn page<T: Serialize>(
    items: Vec<T>,
    page: i64,
    per_page: i64,
    total: i64,
) -> Result<Response, ApiError> {
    json(
        StatusCode::OK,
        &Page {
            items,
            page,
            per_page,
            total,
        },
    )
}

/// An unpaginated list.
#[derive(Serialize)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}
