//! Extractors whose rejections come out as [`ApiError`] (the one error
//! shape).

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Multipart};

/// `axum::Json` whose rejections come out as [`ApiError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` whose rejections come out as [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Multipart` whose rejections come out as [`ApiError`].
#[derive(Debug)]
pub struct ApiMultipart(pub Multipart);

impl<S: Send + Sync> FromRequest<S> for ApiMultipart {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Multipart::from_request(req, state)
            .await
            .map(Self)
            .map_err(ApiError::from)
    }
}

/// `axum::extract::Path` whose rejections come out as [`ApiError`]. With
/// a typed id (`ApiPath<SandboxId>`), a malformed id is a 400
/// `invalid_input` naming the rule it breaks.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
