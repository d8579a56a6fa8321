//! Workspaces: list, get, delete.

use super::{detached, ApiResult};
use crate::error::ErrorResponse;
use crate::extract::ApiPath;
use crate::models::*;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use locale2b_protocol::WorkspaceId;

/// Lists the workspaces the key may see (its own; all for an admin key).
#[utoipa::path(get, path = "/workspaces", tag = "workspaces",
    responses((status = 200, description = "The key's workspaces", body = WorkspaceList)))]
pub async fn list_workspaces(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::middleware::KeyName>,
) -> ApiResult<WorkspaceList> {
    let workspaces = s
        .sandboxes()
        .list_workspaces()
        .await?
        .into_iter()
        .filter(|w| s.may_see(&caller.0, w.owner.as_deref()))
        .map(Into::into)
        .collect();
    Ok(Json(WorkspaceList { workspaces }))
}

/// Describes one workspace with its lineage.
#[utoipa::path(get, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "The workspace", body = WorkspaceResponse),
        (status = 400, description = "Malformed workspace id", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
    ))]
pub async fn get_workspace(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<WorkspaceId>,
) -> ApiResult<WorkspaceResponse> {
    Ok(Json(s.sandboxes().get_workspace(&id).await?.into()))
}

/// Deletes a workspace's data for good (refused while a sandbox runs it).
#[utoipa::path(delete, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "Deleted", body = DeletedWorkspace),
        (status = 404, description = "No such workspace (already gone)", body = ErrorResponse),
        (status = 409, description = "A sandbox runs it; destroy the sandbox first", body = ErrorResponse),
    ))]
pub async fn delete_workspace(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<WorkspaceId>,
) -> ApiResult<DeletedWorkspace> {
    let m = s.sandboxes().clone();
    let id2 = id.clone();
    detached(async move { m.delete_workspace(&id2).await }).await?;
    Ok(Json(DeletedWorkspace {
        workspace_id: id.into(),
        deleted: true,
    }))
}
