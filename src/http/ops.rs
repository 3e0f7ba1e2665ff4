//! JWKS, the OpenAPI document and its page, health and readiness.

use http::StatusCode;

use super::error::ApiError;
use super::response::{full, with_type, Response};
use crate::state::State;

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

/// The parts readiness is made of, probed now.
struct Probe {
    postgres: bool,
    redis: bool,
    feed: bool,
    draining: bool,
}

impl Probe {
    async fn now(state: &State) -> Probe {
        let pg = async {
            match state.db.get().await {
                Ok(c) => c.simple_query("select 1").await.is_ok(),
                Err(_) => false,
            }
        };
        let (postgres, redis) = tokio::join!(pg, state.kv.ping());
        Probe {
            postgres,
            redis,
            feed: state.revocation.feed_is_up(),
            draining: state.is_draining(),
        }
    }

    /// One of `metrics::READINESS`. Ready needs PostgreSQL; the route map needs no probe (it
    /// is loaded before the listeners open, and only ever replaced by a valid one). Redis down
    /// is degraded: usher decides correctly without it, only slower.
    fn state(&self) -> &'static str {
        match self {
            Probe { draining: true, .. } => "draining",
            Probe {
                postgres: false, ..
            } => "unready",
            Probe {
                redis: true,
                feed: true,
                ..
            } => "ready",
            _ => "degraded",
        }
    }
}

/// `GET /readyz`: 200 when usher can decide correctly (`ready`, or `degraded` while Redis or
/// the change feed is down); 503 while `unready` (PostgreSQL does not answer) or `draining`
/// (after SIGTERM). The body names each part.
pub async fn readyz(state: &State) -> Response {
    let probe = Probe::now(state).await;
    let status = probe.state();
    let body = serde_json::json!({
        "status": status,
        "postgres": if probe.postgres { "ok" } else { "unavailable" },
        "redis": if probe.redis { "ok" } else { "unavailable" },
        "change_feed": if probe.feed { "ok" } else { "down" },
    });
    let code = match status {
        "ready" | "degraded" => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    with_type(full(code, body.to_string()), "application/json")
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(state: &State) -> Response {
    let pool = state.db.status();
    let (cache_hits, cache_misses) = state.guard.hit_counts();
    let probe = Probe::now(state).await;
    let health = crate::metrics::Health {
        cache_hits,
        cache_misses,
        pool_idle: pool.available,
        pool_in_use: pool.size.saturating_sub(pool.available),
        pool_max: pool.max_size,
        readiness: probe.state(),
        redis_up: probe.redis,
        feed_up: probe.feed,
        pending: state.revocation.pending(),
    };
    with_type(
        full(StatusCode::OK, state.metrics.render(&health)),
        "text/plain; version=0.0.4",
    )
}
