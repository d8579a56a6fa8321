//! The one error type of the HTTP layer and the one place that chooses a
//! status code for every failure (manager errors, guest errors, axum's own
//! extractor rejections, auth and limits).
//!
//! Every error response has the body
//! `{"error": {"code": "...", "message": "...", "details": {...}?}}`.

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use locale2b_manager::{GuestErrorKind, ManagerError};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

tokio::task_local! {
    /// Id of the request being handled (set by the tracing middleware), so
    /// that a 500 body can name it.
    pub(crate) static REQUEST_ID: String;
}

/// The id of the current request, or "-" outside a request.
pub(crate) fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// Error body sent with every non-2xx response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// Inside [`ErrorResponse`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`not_found`, `invalid_input`, ...).
    #[schema(example = "not_found")]
    pub code: String,
    /// What went wrong and, for client errors, what to change.
    #[schema(example = "sandbox sb-abc123 not found")]
    pub message: String,
    /// Extra structured information (e.g. `request_id` for internal errors,
    /// `retry_after_secs` for 429/503).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// Everything a handler or middleware can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An error of the sandbox manager (or of the guest, through it).
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The request is invalid; the message says what to fix.
    #[error("{message}")]
    BadRequest {
        /// Stable code (`invalid_input`, `invalid_encoding`, ...).
        code: &'static str,
        /// What to fix.
        message: String,
    },
    /// An extractor (JSON body, query, path, multipart) refused the request.
    #[error("{message}")]
    Rejected {
        /// Status chosen from the rejection (400, 413 or 415).
        status: StatusCode,
        /// What to fix.
        message: String,
    },
    /// A body or upload exceeds a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Missing or wrong API key.
    #[error("missing or invalid API key: send it as `X-API-Key: <key>` or `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The key's request rate is exceeded.
    #[error("rate limit of {per_sec} requests per second exceeded; retry after {} s", retry_after.as_secs())]
    RateLimited {
        /// Configured rate.
        per_sec: u32,
        /// When to retry.
        retry_after: Duration,
    },
    /// Too many failed authentications from this source address.
    #[error("too many failed authentications from this address; retry after {} s", retry_after.as_secs().max(1))]
    AuthThrottled {
        /// When to retry.
        retry_after: Duration,
    },
    /// No route matches the path.
    #[error("no route for {method} {path}; see /docs or /openapi.json for the API")]
    NoRoute {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The path exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The endpoint exists in the API but is not implemented yet.
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
}

impl ApiError {
    /// A 400 with code `invalid_input`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::BadRequest {
            code: "invalid_input",
            message: message.into(),
        }
    }

    /// Status, code and message of this error (for bodies that are not the
    /// usual JSON error: stream lines, WebSocket messages).
    pub fn status_code_message(&self) -> (StatusCode, String, String) {
        let (status, code, message, _, _) = self.parts();
        (status, code, message)
    }

    /// Status, code, message, details and `Retry-After` seconds. The only
    /// place that decides a status.
    fn parts(
        &self,
    ) -> (
        StatusCode,
        String,
        String,
        Option<serde_json::Value>,
        Option<u64>,
    ) {
        use ManagerError as M;
        let msg = self.to_string();
        let simple = |s: StatusCode, c: &str| (s, c.to_owned(), msg.clone(), None, None);
        match self {
            Self::Manager(m) => match m {
                M::InvalidInput(_) => simple(StatusCode::BAD_REQUEST, "invalid_input"),
                M::NotFound { .. } => simple(StatusCode::NOT_FOUND, "not_found"),
                M::Conflict(_) => simple(StatusCode::CONFLICT, "conflict"),
                M::TooLarge(_) => simple(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
                M::Unsupported(_) => simple(StatusCode::NOT_IMPLEMENTED, "guest_too_old"),
                M::BackendUnsupported(_) => simple(StatusCode::NOT_IMPLEMENTED, "not_implemented"),
                // The snapshot cannot be used and retrying will not help;
                // the sandbox stays paused (destroy it or keep its data).
                M::SnapshotInvalid(_) => simple(StatusCode::CONFLICT, "snapshot_invalid"),
                M::InsufficientStorage(_) => {
                    simple(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
                }
                // Not 429: retrying does not help until the key's own
                // sandboxes are destroyed or paused.
                M::QuotaExceeded(_) => simple(StatusCode::FORBIDDEN, "quota_exceeded"),
                M::NetworkUnavailable(_) => simple(StatusCode::FORBIDDEN, "network_unavailable"),
                M::AtCapacity { retry_after, .. } => {
                    let secs = retry_after.as_secs().max(1);
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "at_capacity".into(),
                        msg.clone(),
                        Some(serde_json::json!({ "retry_after_secs": secs })),
                        Some(secs),
                    )
                }
                M::Guest { kind, message } => (
                    guest_status(*kind),
                    kind.as_str().to_owned(),
                    message.clone(),
                    None,
                    None,
                ),
                M::Timeout { .. } => simple(StatusCode::GATEWAY_TIMEOUT, "timeout"),
                M::Vm { .. } => simple(StatusCode::BAD_GATEWAY, "vm_error"),
                M::Internal { .. } => {
                    let id = current_request_id();
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal".into(),
                        format!("internal error (request id {id}); the server log has the details"),
                        Some(serde_json::json!({ "request_id": id })),
                        None,
                    )
                }
            },
            Self::BadRequest { code, .. } => simple(StatusCode::BAD_REQUEST, code),
            Self::Rejected { status, .. } => {
                let code = match *status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "invalid_request",
                };
                simple(*status, code)
            }
            Self::TooLarge(_) => simple(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unauthorized => simple(StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::RateLimited { retry_after, .. } | Self::AuthThrottled { retry_after } => {
                let secs = retry_after.as_secs().max(1);
                let code = if matches!(self, Self::AuthThrottled { .. }) {
                    "auth_throttled"
                } else {
                    "rate_limited"
                };
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    code.into(),
                    msg.clone(),
                    Some(serde_json::json!({ "retry_after_secs": secs })),
                    Some(secs),
                )
            }
            Self::NoRoute { .. } => simple(StatusCode::NOT_FOUND, "no_route"),
            Self::MethodNotAllowed { .. } => {
                simple(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            Self::NotImplemented(_) => simple(StatusCode::NOT_IMPLEMENTED, "not_implemented"),
        }
    }
}

/// Status of a refusal from the guest.
fn guest_status(kind: GuestErrorKind) -> StatusCode {
    use GuestErrorKind as K;
    match kind {
        K::NotFound => StatusCode::NOT_FOUND,
        K::PermissionDenied => StatusCode::FORBIDDEN,
        K::IsADirectory | K::NotADirectory | K::InvalidRequest => StatusCode::BAD_REQUEST,
        K::AlreadyExists | K::DirectoryNotEmpty | K::InvalidState => StatusCode::CONFLICT,
        K::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        K::Failed { .. } => StatusCode::BAD_GATEWAY,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, details, retry_after) = self.parts();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), code = %code, error = %locale2b_manager::error::chain(&self), "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), code = %code, error = %message, "request refused");
        }
        let body = ErrorResponse {
            error: ErrorDetail {
                code,
                message,
                details,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Turns an extractor rejection into [`ApiError::Rejected`]: axum's 422
/// (well-formed JSON of the wrong shape) becomes 400; 413 and 415 stay.
fn rejected(status: StatusCode, text: String, hint: &str) -> ApiError {
    let status = match status {
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => status,
        s if s.is_server_error() => s,
        _ => StatusCode::BAD_REQUEST,
    };
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body is too large: {text}")
    } else if hint.is_empty() {
        text
    } else {
        format!("{text}; {hint}")
    };
    ApiError::Rejected { status, message }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let hint = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "send the body as JSON with the header `Content-Type: application/json`"
            }
            _ => "",
        };
        rejected(r.status(), r.body_text(), hint)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        rejected(r.status(), r.body_text(), "")
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        match r {
            // A typed id that does not parse: say which rule it breaks.
            PathRejection::FailedToDeserializePathParams(e) => {
                ApiError::invalid(e.kind().to_string())
            }
            other => rejected(other.status(), other.body_text(), ""),
        }
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(r: MultipartRejection) -> Self {
        rejected(
            r.status(),
            r.body_text(),
            "send the file as multipart/form-data (e.g. `curl -F file=@local.bin`)",
        )
    }
}

impl From<MultipartError> for ApiError {
    fn from(e: MultipartError) -> Self {
        rejected(e.status(), e.body_text(), "")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status_of(e: ApiError) -> StatusCode {
        e.into_response().status()
    }

    #[test]
    fn manager_errors_map_to_statuses() {
        let cases = [
            (ManagerError::InvalidInput("x".into()), 400),
            (
                ManagerError::NotFound {
                    kind: "sandbox",
                    id: "a".into(),
                },
                404,
            ),
            (ManagerError::Conflict("x".into()), 409),
            (ManagerError::InsufficientStorage("x".into()), 507),
            (
                ManagerError::AtCapacity {
                    reason: "full".into(),
                    retry_after: Duration::from_secs(5),
                },
                503,
            ),
            (
                ManagerError::Timeout {
                    what: "exec".into(),
                    after: Duration::from_secs(1),
                },
                504,
            ),
            (
                ManagerError::Vm {
                    message: "boom".into(),
                    source: None,
                },
                502,
            ),
            (
                ManagerError::Internal {
                    context: "disk".into(),
                    source: None,
                },
                500,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(status_of(err.into()).as_u16(), want);
        }
    }

    #[test]
    fn guest_errors_map_to_statuses() {
        use GuestErrorKind as K;
        for (kind, want) in [
            (K::NotFound, 404),
            (K::PermissionDenied, 403),
            (K::IsADirectory, 400),
            (K::NotADirectory, 400),
            (K::InvalidRequest, 400),
            (K::AlreadyExists, 409),
            (K::DirectoryNotEmpty, 409),
            (K::TooLarge, 413),
            (K::InvalidState, 409),
            (K::Failed { code: "io" }, 502),
        ] {
            let e = ApiError::from(ManagerError::Guest {
                kind,
                message: "m".into(),
            });
            let resp = e.into_response();
            assert_eq!(resp.status().as_u16(), want, "{kind:?}");
        }
    }

    #[test]
    fn capacity_sets_retry_after() {
        let resp = ApiError::from(ManagerError::AtCapacity {
            reason: "full".into(),
            retry_after: Duration::from_secs(7),
        })
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
    }
}
