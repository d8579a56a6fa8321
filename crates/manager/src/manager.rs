//! [`SandboxManager`] (being written).

use crate::{Capacity, Config, CreateSandbox, ManagerError, Result, SandboxInfo, WorkspaceInfo};
use locale2b_protocol::{
    DeleteFileRequest, ExecRequest, ExecResponse, FileContent, FileInfo, ListFilesRequest, Listing,
    MkdirRequest, ReadFileRequest, SandboxId, WorkspaceId, WriteFileRequest, WrittenResponse,
};
use locale2b_vmm::Vmm;
use std::sync::Arc;

/// Owns every sandbox and workspace of one base directory.
#[derive(Debug)]
pub struct SandboxManager {
    config: Arc<Config>,
    vmm: Arc<dyn Vmm>,
    accel: String,
}

fn unimplemented_yet() -> ManagerError {
    ManagerError::Internal {
        context: "not implemented yet".into(),
        source: None,
    }
}

impl SandboxManager {
    /// Opens the base directory, reconciles state files with running
    /// processes and starts the health checker.
    ///
    /// # Errors
    /// When the base directory cannot be created or read.
    pub async fn open(config: Arc<Config>, vmm: Arc<dyn Vmm>, accel: String) -> Result<Arc<Self>> {
        Ok(Arc::new(Self { config, vmm, accel }))
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Creates (boots) a sandbox, or resumes the paused sandbox of an existing workspace.
    ///
    /// # Errors
    /// InvalidInput for bad sizes/template, AtCapacity, Conflict when the
    /// workspace already runs, Vm/Timeout when the VM fails to come up.
    pub async fn create(&self, _req: CreateSandbox) -> Result<SandboxInfo> {
        Err(unimplemented_yet())
    }

    /// One sandbox.
    ///
    /// # Errors
    /// NotFound.
    pub async fn get(&self, id: &SandboxId) -> Result<SandboxInfo> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// All sandboxes, oldest first.
    pub async fn list(&self) -> Vec<SandboxInfo> {
        Vec::new()
    }

    /// Destroys a sandbox (graceful power-off, then kill). The workspace's
    /// data is kept. Idempotent while the record exists.
    ///
    /// # Errors
    /// NotFound when the sandbox is unknown.
    pub async fn destroy(&self, id: &SandboxId) -> Result<()> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Pauses to a snapshot and stops the VMM. Pausing a paused sandbox returns it unchanged.
    ///
    /// # Errors
    /// NotFound, Conflict (starting, dead, ...).
    pub async fn pause(&self, id: &SandboxId) -> Result<SandboxInfo> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Resumes from the latest snapshot. Resuming a running sandbox returns it unchanged.
    ///
    /// # Errors
    /// NotFound, Conflict, Vm (corrupt snapshot: the sandbox stays paused).
    pub async fn resume(&self, id: &SandboxId) -> Result<SandboxInfo> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Runs a command in the sandbox.
    ///
    /// # Errors
    /// NotFound, Conflict (not running), InvalidInput (timeout too large), Guest, Timeout.
    pub async fn exec(&self, id: &SandboxId, _req: ExecRequest) -> Result<ExecResponse> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Reads (part of) a file.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`]; Guest(not_found) for a missing file.
    pub async fn read_file(&self, id: &SandboxId, _req: ReadFileRequest) -> Result<FileContent> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Writes a file.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn write_file(
        &self,
        id: &SandboxId,
        _req: WriteFileRequest,
    ) -> Result<WrittenResponse> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Lists a directory.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn list_files(&self, id: &SandboxId, _req: ListFilesRequest) -> Result<Listing> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Creates a directory.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn mkdir(&self, id: &SandboxId, _req: MkdirRequest) -> Result<FileInfo> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Describes a path.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn stat(&self, id: &SandboxId, _path: String) -> Result<FileInfo> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Deletes a path.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn delete_file(&self, id: &SandboxId, _req: DeleteFileRequest) -> Result<()> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Renames a path inside the guest.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn rename(&self, id: &SandboxId, _from: String, _to: String) -> Result<()> {
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Capacity figures.
    pub async fn capacity(&self) -> Capacity {
        Capacity {
            active_sandboxes: 0,
            paused_sandboxes: 0,
            max_sandboxes: self.config.max_sandboxes,
            memory_used_mb: 0,
            memory_available_mb: 0,
            memory_budget_mb: 0,
            backend: self.vmm.kind(),
            accel: self.accel.clone(),
        }
    }

    /// All workspaces.
    ///
    /// # Errors
    /// Internal when the base dir cannot be read.
    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>> {
        Ok(Vec::new())
    }

    /// One workspace with its lineage.
    ///
    /// # Errors
    /// NotFound.
    pub async fn get_workspace(&self, id: &WorkspaceId) -> Result<WorkspaceInfo> {
        Err(ManagerError::NotFound {
            kind: "workspace",
            id: id.to_string(),
        })
    }

    /// Deletes a workspace's data for good. Refused (Conflict) while a
    /// sandbox runs it.
    ///
    /// # Errors
    /// NotFound, Conflict.
    pub async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()> {
        Err(ManagerError::NotFound {
            kind: "workspace",
            id: id.to_string(),
        })
    }
}
