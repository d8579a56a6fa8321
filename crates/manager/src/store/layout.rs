//! Paths under the base directory.
//!
//! ```text
//! <base>/images/<template>/{vmlinux,rootfs.ext4,manifest.json}
//! <base>/sandboxes/<sandbox_id>/{state.json, vsock.sock, console.log, ...}
//! <base>/workspaces/<workspace_id>/{workspace.json, disk.ext4, snapshots/<snapshot_id>/}
//! <base>/templates/<template>-<key16>/{state, memory, disk.ext4, template.json}
//! ```
//! Every path is built from a typed id ([`SandboxId`], [`WorkspaceId`]) or a
//! validated template name, never from a raw caller string.

use locale2b_protocol::{SandboxId, WorkspaceId};
use std::path::{Path, PathBuf};

/// Paths under the base directory.
#[derive(Debug, Clone)]
pub struct Layout {
    base: PathBuf,
}

impl Layout {
    /// Layout rooted at `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self { base: base.into() }
    }

    /// The base directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Directory of all sandboxes.
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.base.join("sandboxes")
    }

    /// Directory of one sandbox.
    pub fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.sandboxes_dir().join(id.as_str())
    }

    /// state.json of one sandbox.
    pub fn sandbox_state(&self, id: &SandboxId) -> PathBuf {
        self.sandbox_dir(id).join("state.json")
    }

    /// Directory of all workspaces.
    pub fn workspaces_dir(&self) -> PathBuf {
        self.base.join("workspaces")
    }

    /// Directory of one workspace.
    pub fn workspace_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.workspaces_dir().join(id.as_str())
    }

    /// workspace.json of one workspace.
    pub fn workspace_meta(&self, id: &WorkspaceId) -> PathBuf {
        self.workspace_dir(id).join("workspace.json")
    }

    /// The writable disk of a workspace.
    pub fn workspace_disk(&self, id: &WorkspaceId) -> PathBuf {
        self.workspace_dir(id).join("disk.ext4")
    }

    /// Snapshots of a workspace.
    pub fn snapshots_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.workspace_dir(id).join("snapshots")
    }

    /// Snapshots of fork parents, while their children start.
    pub fn forks_dir(&self) -> PathBuf {
        self.base.join("forks")
    }

    /// Template snapshots (see `manager/template.rs`).
    pub fn templates_dir(&self) -> PathBuf {
        self.base.join("templates")
    }

    /// Installed images of a template (name validated by the caller).
    pub fn image_dir(&self, template: &str) -> PathBuf {
        self.base.join("images").join(template)
    }
}
