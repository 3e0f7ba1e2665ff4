//! JWKS, the OpenAPI document and its page, health and readiness.

use http::StatusCode;

use super::error::ApiError;
use super::response::{full, with_type, Response};
use crate::app::State;

/// `GET /.well-known/jwks.json` — anyone.
pub fn jwks(state: &State) -> Result<Response, ApiError> {
    let mut r = with_type(
        full(StatusCode::OK, state.tokens.jwks()),
        "application/json",
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=300"),
    );
    Ok(r)
}

/// `GET /openapi.json` — anyone.
pub fn openapi() -> Response {
    with_type(
        full(StatusCode::OK, include_str!("openapi.json")),
        "application/json",
    )
}

/// `GET /docs` — anyone: a reference page that reads `/openapi.json`, with no outside assets.
pub fn docs() -> Response {
    with_type(
        full(StatusCode::OK, include_str!("docs.html")),
        "text/html; charset=utf-8",
    )
}

/// `GET /readyz`: 200 when PostgreSQL and Redis answer, else 503 naming what failed.
pub async fn readyz(state: &State) -> Response {
    let pg = async {
        match state.db.get().await {
            Ok(c) => c.simple_query("select 1").await.is_ok(),
            Err(_) => false,
        }
    };
    let (pg, redis) = tokio::join!(pg, state.kv.ping());
    let body = serde_json::json!({
        "postgres": if pg { "ok" } else { "unavailable" },
        "redis": if redis { "ok" } else { "unavailable" },
        "change_feed": if state.revocation.feed_is_up() { "ok" } else { "down" },
    });
    let status = if pg && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    with_type(full(status, body.to_string()), "application/json")
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(state: &State) -> Response {
    let pool = state.db.status();
    let (cache_hits, cache_misses) = state.guard.hit_counts();
    let health = crate::metrics::Health {
        cache_hits,
        cache_misses,
        pool_size: pool.size,
        pool_available: pool.available,
        pool_max: pool.max_size,
        redis_up: state.kv.ping().await,
        feed_up: state.revocation.feed_is_up(),
        pending: state.revocation.pending(),
    };
    with_type(
        full(StatusCode::OK, state.metrics.render(&health)),
        "text/plain; version=0.0.4",
    )
}
