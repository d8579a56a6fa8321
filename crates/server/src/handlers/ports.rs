//! Port forwarding routes (`/sandboxes/{id}/ports...`): not implemented yet.

use crate::error::ApiError;

/// Port forwarding routes (`/sandboxes/{id}/ports...`): not implemented yet.
#[utoipa::path(get, path = "/sandboxes/{id}/ports", tag = "ports",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 501, description = "Not implemented yet", body = crate::ErrorResponse)))]
pub async fn ports_not_implemented() -> ApiError {
    ApiError::NotImplemented("port forwarding")
}
