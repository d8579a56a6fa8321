//! The base directory: its layout, the records kept in it (typed reads and
//! writes of `state.json` and `workspace.json`), workspace disks, private
//! directories and stale sockets.
//!
//! Other crates (the bench, tools) read sandbox and workspace state through
//! [`Store`] instead of parsing the JSON themselves.

mod files;
mod layout;
mod records;

pub use files::{
    create_private_dir, disk_usage, make_disk, now_rfc3339, read_json, remove_sockets,
    write_atomic, write_json_atomic,
};
pub use layout::Layout;
pub use records::{SandboxRecord, WorkspaceRecord, MAX_LINEAGE, RECORD_FORMAT};

use crate::Result;
use locale2b_protocol::{SandboxId, WorkspaceId};
use std::path::Path;
use tracing::warn;

/// Typed access to the records under one base directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    layout: Layout,
}

impl Store {
    /// The store rooted at `base`.
    pub fn new(base: impl Into<std::path::PathBuf>) -> Self {
        Self {
            layout: Layout::new(base),
        }
    }

    /// Paths under the base directory.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Creates the base, `sandboxes/` and `workspaces/` directories (0700).
    ///
    /// # Errors
    /// Internal, naming the directory.
    pub fn create_dirs(&self) -> Result<()> {
        for dir in [
            self.layout.base().to_path_buf(),
            self.layout.sandboxes_dir(),
            self.layout.workspaces_dir(),
        ] {
            create_private_dir(&dir)?;
        }
        Ok(())
    }

    /// Ids of every sandbox directory (entries that are not valid ids are skipped).
    pub fn sandbox_ids(&self) -> Vec<SandboxId> {
        ids_in(&self.layout.sandboxes_dir())
    }

    /// Ids of every workspace directory, sorted.
    pub fn workspace_ids(&self) -> Vec<WorkspaceId> {
        ids_in(&self.layout.workspaces_dir())
    }

    /// Reads `state.json` of a sandbox.
    ///
    /// # Errors
    /// I/O errors; `InvalidData` when it does not parse.
    pub fn read_sandbox(&self, id: &SandboxId) -> std::io::Result<SandboxRecord> {
        read_json(&self.layout.sandbox_state(id))
    }

    /// Writes `state.json` atomically; a failure is logged (the in-memory
    /// state stays authoritative) and returned.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_sandbox(&self, record: &SandboxRecord) -> std::io::Result<()> {
        let result = write_json_atomic(&self.layout.sandbox_state(&record.sandbox_id), record);
        if let Err(e) = &result {
            warn!(sandbox_id = %record.sandbox_id, error = %crate::error::chain(&e), "failed to write state.json");
        }
        result
    }

    /// Reads `workspace.json`; `None` when the workspace has none (unknown,
    /// or an orphaned directory).
    pub fn read_workspace(&self, id: &WorkspaceId) -> Option<WorkspaceRecord> {
        read_json(&self.layout.workspace_meta(id)).ok()
    }

    /// Writes `workspace.json` atomically; a failure is logged and returned.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_workspace(&self, ws: &WorkspaceRecord) -> std::io::Result<()> {
        let result = write_json_atomic(&self.layout.workspace_meta(&ws.workspace_id), ws);
        if let Err(e) = &result {
            warn!(workspace_id = %ws.workspace_id, error = %crate::error::chain(&e), "failed to write workspace.json");
        }
        result
    }

    /// Reads, changes and writes back `workspace.json`; nothing happens when
    /// the workspace has no record.
    pub fn update_workspace(&self, id: &WorkspaceId, f: impl FnOnce(&mut WorkspaceRecord)) {
        if let Some(mut ws) = self.read_workspace(id) {
            f(&mut ws);
            let _ = self.write_workspace(&ws);
        }
    }

    /// Makes a new workspace: its directories, a sparse formatted disk of
    /// `disk_size_mb` (or a copy of `disk_from`, a template's disk) and its
    /// record.
    ///
    /// # Errors
    /// Internal when a directory, the disk or the record cannot be made.
    pub async fn create_workspace(
        &self,
        id: &WorkspaceId,
        template: &str,
        ephemeral: bool,
        disk_size_mb: u64,
        disk_from: Option<&Path>,
        owner: Option<&str>,
    ) -> Result<WorkspaceRecord> {
        create_private_dir(&self.layout.workspace_dir(id))?;
        create_private_dir(&self.layout.snapshots_dir(id))?;
        let disk = self.layout.workspace_disk(id);
        match disk_from {
            Some(from) => locale2b_vmm::qemu::copy_file(from, &disk)
                .await
                .map_err(|e| crate::ManagerError::vm("cannot copy the template's disk", e))?,
            None => make_disk(&disk, disk_size_mb).await?,
        }
        let mut ws = WorkspaceRecord::new(id.clone(), template, ephemeral, disk_size_mb);
        ws.owner = owner.map(str::to_owned);
        self.write_workspace(&ws)
            .map_err(|e| crate::ManagerError::io("cannot write workspace.json", e))?;
        Ok(ws)
    }

    /// Bytes allocated by a workspace's directory (disk and snapshots).
    pub fn workspace_disk_usage(&self, id: &WorkspaceId) -> u64 {
        disk_usage(&self.layout.workspace_dir(id))
    }

    /// The last `lines` lines of a sandbox's console log, joined with ` | `.
    pub fn console_tail(&self, id: &SandboxId, lines: usize) -> String {
        let dir = self.layout.sandbox_dir(id);
        let mut text = std::fs::read(dir.join("console.log.1")).unwrap_or_default();
        text.extend(std::fs::read(dir.join("console.log")).unwrap_or_default());
        let text = String::from_utf8_lossy(&text);
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        let joined = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        if joined.is_empty() {
            "(console empty)".into()
        } else {
            joined
        }
    }
}

impl Store {
    /// Cuts a sandbox's console log when it is over `max_bytes`: its newer
    /// half replaces `console.log.1` and `console.log` is emptied (the VMM
    /// writes it in append mode, so it goes on at the new end). Answers
    /// whether it was cut.
    ///
    /// # Errors
    /// I/O errors.
    pub fn cut_console(&self, id: &SandboxId, max_bytes: u64) -> std::io::Result<bool> {
        use std::io::{Read as _, Seek as _};
        let dir = self.layout.sandbox_dir(id);
        let log = dir.join("console.log");
        let len = match std::fs::metadata(&log) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if max_bytes == 0 || len <= max_bytes {
            return Ok(false);
        }
        let keep = max_bytes / 2;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log)?;
        f.seek(std::io::SeekFrom::Start(len - keep))?;
        let mut tail = Vec::with_capacity(usize::try_from(keep).unwrap_or(0));
        f.by_ref().take(keep).read_to_end(&mut tail)?;
        let older = dir.join("console.log.1");
        let tmp = dir.join("console.log.1.tmp");
        std::fs::write(&tmp, &tail)?;
        std::fs::rename(&tmp, &older)?;
        f.set_len(0)?;
        Ok(true)
    }
}

fn ids_in<T: std::str::FromStr + Ord>(dir: &Path) -> Vec<T> {
    let mut ids: Vec<T> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn workspace_records_round_trip_and_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.create_dirs().unwrap();
        let id: WorkspaceId = "w1".parse().unwrap();
        create_private_dir(&store.layout().workspace_dir(&id)).unwrap();
        let ws = WorkspaceRecord::new(id.clone(), "default", true, 64);
        store.write_workspace(&ws).unwrap();
        assert_eq!(store.read_workspace(&id), Some(ws));
        store.update_workspace(&id, |w| w.push_lineage("created", None, None, None));
        assert_eq!(store.read_workspace(&id).unwrap().lineage.len(), 1);
        assert_eq!(store.workspace_ids(), vec![id]);
        assert!(store.read_workspace(&"nope".parse().unwrap()).is_none());
    }
}
