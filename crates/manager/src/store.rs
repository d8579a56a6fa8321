//! Layout of the base directory and atomic persistence of state files.
//!
//! ```text
//! <base>/images/<template>/{vmlinux,rootfs.ext4,manifest.json}
//! <base>/sandboxes/<sandbox_id>/{state.json, vsock.sock, console.log, ...}
//! <base>/workspaces/<workspace_id>/{workspace.json, disk.ext4, snapshots/<snapshot_id>/}
//! ```
//! Every path is built from a typed id ([`SandboxId`], [`WorkspaceId`]) or a
//! validated template name, never from a raw caller string.

use locale2b_protocol::{SandboxId, WorkspaceId};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
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

    /// Installed images of a template (name validated by the caller).
    pub fn image_dir(&self, template: &str) -> PathBuf {
        self.base.join("images").join(template)
    }
}

/// Writes `value` as pretty JSON to `path` atomically: temp file in the same
/// directory, fsync, rename, fsync of the directory.
///
/// # Errors
/// I/O errors of any step; the original file is untouched on error.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, &data)
}

/// Writes bytes to `path` atomically (see [`write_json_atomic`]).
///
/// # Errors
/// I/O errors of any step.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a JSON file.
///
/// # Errors
/// I/O errors, or `InvalidData` when the JSON does not parse.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let data = std::fs::read(path)?;
    serde_json::from_slice(&data)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Blocks actually allocated by a file or tree, in bytes (sparse-aware).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += disk_usage(&e.path());
            }
        }
    }
    total
}

/// Now as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value = read_json(&p).unwrap();
        assert_eq!(v["a"], 2);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
