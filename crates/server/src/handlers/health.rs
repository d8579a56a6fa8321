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
