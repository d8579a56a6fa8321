//! Workspace queries and deletion.

use super::SandboxManager;
use crate::store::WorkspaceRecord;
use crate::{ManagerError, Result, WorkspaceInfo};
use locale2b_protocol::WorkspaceId;
use tracing::info;

fn not_found(id: &WorkspaceId) -> ManagerError {
    ManagerError::NotFound {
        kind: "workspace",
        id: id.to_string(),
    }
}

impl SandboxManager {
    fn workspace_info(&self, ws: WorkspaceRecord) -> WorkspaceInfo {
        let status = ws
            .sandbox_id
            .as_ref()
            .and_then(|sid| self.registry.get(sid))
            .map(|sb| sb.status().to_string())
            .unwrap_or_else(|| "idle".into());
        WorkspaceInfo {
            disk_usage_bytes: self.store.workspace_disk_usage(&ws.workspace_id),
            workspace_id: ws.workspace_id,
            template: ws.template,
            sandbox_id: ws.sandbox_id,
            status,
            snapshot_id: ws.snapshot_id,
            created_at: ws.created_at,
            lineage: ws.lineage,
            owner: ws.owner,
        }
    }

    /// All workspaces, sorted by id.
    ///
    /// # Errors
    /// Internal when the base dir cannot be read.
    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>> {
        let dir = self.store.layout().workspaces_dir();
        std::fs::read_dir(&dir)
            .map_err(|e| ManagerError::io(format!("cannot read {}", dir.display()), e))?;
        Ok(self
            .store
            .workspace_ids()
            .iter()
            .filter_map(|id| self.store.read_workspace(id))
            .map(|ws| self.workspace_info(ws))
            .collect())
    }

    /// One workspace with its lineage.
    ///
    /// # Errors
    /// NotFound.
    pub async fn get_workspace(&self, id: &WorkspaceId) -> Result<WorkspaceInfo> {
        self.store
            .read_workspace(id)
            .map(|ws| self.workspace_info(ws))
            .ok_or_else(|| not_found(id))
    }

    /// Deletes a workspace's data for good. Refused (Conflict) while a
    /// sandbox is attached to it (destroy the sandbox first).
    ///
    /// # Errors
    /// NotFound, Conflict.
    pub async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()> {
        let ws_lock = self.registry.workspace_lock(id);
        let _guard = ws_lock.lock().await;
        let ws = self.store.read_workspace(id).ok_or_else(|| not_found(id))?;
        if let Some(sid) = &ws.sandbox_id {
            if self.registry.contains(sid) {
                return Err(ManagerError::Conflict(format!(
                    "workspace {id} is attached to sandbox {sid}; destroy the sandbox first"
                )));
            }
        }
        let dir = self.store.layout().workspace_dir(id);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| ManagerError::io(format!("cannot remove {}", dir.display()), e))?;
        self.registry.forget_workspace(id);
        info!(workspace_id = %id, "workspace deleted");
        Ok(())
    }
}
