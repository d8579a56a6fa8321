//! Bodies of the workspace routes.

use locale2b_manager::WorkspaceInfo;
use serde::Serialize;
use utoipa::ToSchema;

/// One workspace.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceResponse {
    /// Workspace id.
    pub workspace_id: String,
    /// Template its disk was made for.
    pub template: String,
    /// Sandbox currently attached, if any.
    pub sandbox_id: Option<String>,
    /// State of that sandbox, or `idle`.
    pub status: String,
    /// Latest valid snapshot, if any.
    pub snapshot_id: Option<String>,
    /// Bytes allocated on the host for the workspace.
    pub disk_usage_bytes: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// History (created, paused, resumed, ...).
    pub lineage: Vec<LineageEntry>,
    /// The name of the API key that created it (only it and admin keys
    /// see the workspace); `null` for workspaces every key sees.
    pub owner: Option<String>,
}

/// One lineage event.
#[derive(Debug, Serialize, ToSchema)]
pub struct LineageEntry {
    /// RFC 3339 time.
    pub at: String,
    /// `created`, `paused`, `resumed`, `destroyed`, ...
    pub event: String,
    /// Sandbox involved.
    pub sandbox_id: Option<String>,
    /// Snapshot involved.
    pub snapshot_id: Option<String>,
    /// Free-form detail.
    pub detail: Option<String>,
}

impl From<WorkspaceInfo> for WorkspaceResponse {
    fn from(w: WorkspaceInfo) -> Self {
        Self {
            workspace_id: w.workspace_id.into(),
            template: w.template,
            sandbox_id: w.sandbox_id.map(Into::into),
            status: w.status,
            snapshot_id: w.snapshot_id,
            disk_usage_bytes: w.disk_usage_bytes,
            created_at: w.created_at,
            owner: w.owner,
            lineage: w
                .lineage
                .into_iter()
                .map(|e| LineageEntry {
                    at: e.at,
                    event: e.event,
                    sandbox_id: e.sandbox_id.map(Into::into),
                    snapshot_id: e.snapshot_id,
                    detail: e.detail,
                })
                .collect(),
        }
    }
}

/// `GET /workspaces`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceList {
    /// All workspaces.
    pub workspaces: Vec<WorkspaceResponse>,
}

/// `DELETE /workspaces/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedWorkspace {
    /// The workspace deleted.
    pub workspace_id: String,
    /// Always true.
    pub deleted: bool,
}
