//! `/health` and the fallbacks for unknown routes and methods.

use crate::error::ApiError;
use crate::models::HealthResponse;
use crate::AppState;
use axum::extract::State;
use axum::http::{Method, Uri};
use axum::Json;

/// Service health and capacity. Never requires a key.
#[utoipa::path(get, path = "/health", tag = "health", security(()),
    responses((status = 200, description = "Health and capacity", body = HealthResponse)))]
pub async fn health(State(s): State<AppState>) -> Json<HealthResponse> {
    Json(HealthResponse::from_capacity(
        s.sandboxes().capacity().await,
    ))
}

/// Every metric in the Prometheus text exposition format (0.0.4):
/// sandboxes by state, lifecycle counters, latency histograms, capacity
/// and VMM memory gauges. Needs the API key unless `metrics_public` is set.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(State(s): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.sandboxes().metrics_text() + &s.http_metrics_text(),
    )
}

/// Fallback for unknown paths.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Fallback for known paths with an unsupported method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
