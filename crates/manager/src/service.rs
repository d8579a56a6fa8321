//! What the manager offers its callers, as traits: [`SandboxService`] for
//! sandboxes and workspaces, [`GuestOps`] for one running sandbox's guest.
//!
//! The HTTP layer holds an `Arc<dyn SandboxService>`, so its tests can drive
//! every route, successful guest calls included, against a test double
//! without a VM or a socket. [`crate::SandboxManager`] and
//! [`crate::guest::Guest`] are the real implementations.

use crate::{
    ByteStream, Capacity, Checksum, CreateSandbox, Download, ExecOutput, ExecSpec, FileInfo,
    FileRead, FsEvents, Limits, Listing, MakeDir, Output, OutputEvents, ProcessInfo,
    ProcessSelector, ProcessSpec, PtySize, Result, SandboxInfo, Upload, WorkspaceInfo, WriteFile,
    Written,
};
use async_trait::async_trait;
use locale2b_protocol::{SandboxId, WorkspaceId};
use std::sync::Arc;

/// Sandboxes and workspaces: lifecycle, queries, and the way into a running
/// sandbox's guest.
#[async_trait]
pub trait SandboxService: Send + Sync + std::fmt::Debug {
    /// Creates (boots) a sandbox, or attaches to / resumes the sandbox of the
    /// workspace the request names.
    async fn create(&self, req: CreateSandbox) -> Result<SandboxInfo>;
    /// One sandbox.
    async fn get(&self, id: &SandboxId) -> Result<SandboxInfo>;
    /// All sandboxes, oldest first.
    async fn list(&self) -> Vec<SandboxInfo>;
    /// Destroys a sandbox (a named workspace's data is kept).
    async fn destroy(&self, id: &SandboxId) -> Result<()>;
    /// Snapshots a running sandbox and stops its VM.
    async fn pause(&self, id: &SandboxId) -> Result<SandboxInfo>;
    /// Restores a paused sandbox.
    async fn resume(&self, id: &SandboxId) -> Result<SandboxInfo>;
    /// Forks a running sandbox into `count` children that continue from
    /// its memory and disk; the parent keeps running.
    async fn fork(&self, id: &SandboxId, count: u32) -> Result<Vec<SandboxInfo>> {
        let _ = count;
        Err(crate::ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }
    /// Sets the sandbox's lifetime to `timeout_sec` from now (0 = no end);
    /// on a paused sandbox, the lifetime its next resume starts.
    async fn set_timeout(&self, id: &SandboxId, timeout_sec: u64) -> Result<SandboxInfo>;
    /// Capacity figures.
    async fn capacity(&self) -> Capacity;
    /// Limits requests must respect (for documents and early checks).
    fn limits(&self) -> Limits;
    /// Every metric in the Prometheus text format.
    fn metrics_text(&self) -> String {
        String::new()
    }
    /// Enforces the owners' quotas `source` gives at every admission
    /// (create, fork, resume) from now on.
    fn set_quota_source(&self, source: Arc<dyn crate::registry::QuotaSource>) {
        let _ = source;
    }
    /// Host and guest figures of one sandbox.
    async fn sandbox_metrics(&self, id: &SandboxId) -> Result<crate::SandboxMetrics> {
        Err(crate::ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }
    /// The guest of sandbox `id`, for one request. Looking it up never
    /// fails: each operation checks its input first, then answers NotFound
    /// for an unknown sandbox and Conflict for one that is not running.
    fn guest(&self, id: &SandboxId) -> Arc<dyn GuestOps>;
    /// All workspaces, sorted by id.
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>>;
    /// One workspace with its lineage.
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<WorkspaceInfo>;
    /// Deletes a workspace's data (refused while a sandbox is attached).
    async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()>;
    /// Exposes guest port `port` on a host listener; `true` with it when
    /// it was exposed already.
    async fn expose_port(
        &self,
        id: &SandboxId,
        _port: u16,
        _protect: bool,
    ) -> Result<(crate::ExposedPort, bool)> {
        Err(ports_unsupported(id))
    }
    /// The sandbox's exposed ports, by port.
    async fn list_ports(&self, id: &SandboxId) -> Result<Vec<crate::ExposedPort>> {
        Err(ports_unsupported(id))
    }
    /// Whether Host-header routing reaches a port, and with which token.
    async fn port_route(&self, id: &SandboxId, _port: u16) -> Result<crate::PortRoute> {
        Err(ports_unsupported(id))
    }
    /// Closes an exposed port (NotFound when it is not exposed).
    async fn close_port(&self, id: &SandboxId, _port: u16) -> Result<()> {
        Err(ports_unsupported(id))
    }
    /// Changes a sandbox's egress policy.
    async fn set_network(
        &self,
        id: &SandboxId,
        _policy: crate::network::NetworkPolicy,
    ) -> Result<SandboxInfo> {
        Err(crate::ManagerError::NetworkUnavailable(format!(
            "sandbox {id}: this server has no egress networks"
        )))
    }
}

fn ports_unsupported(id: &SandboxId) -> crate::ManagerError {
    crate::ManagerError::BackendUnsupported(format!(
        "this server cannot expose ports of sandbox {id}"
    ))
}

/// Operations on one running sandbox's guest. Errors from the guest come
/// back as [`crate::ManagerError::Guest`] (classified), Timeout, or Vm
/// (agent unreachable).
#[async_trait]
pub trait GuestOps: Send + Sync {
    /// Runs a command and waits for it (timeout rules: see
    /// [`crate::guest::ExecRules`]).
    async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput>;
    /// Reads `length` bytes (the rest when `None`) from `offset`, at most
    /// `max` of them (TooLarge beyond), from one open file.
    async fn read_file(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        max: u64,
    ) -> Result<FileRead>;
    /// A file's bytes as they are read, from one open file, any size.
    async fn download(&self, path: &str, offset: u64, length: Option<u64>) -> Result<Download>;
    /// SHA-256 of a file, computed in the guest.
    async fn checksum(&self, path: &str) -> Result<Checksum>;
    /// Writes a file (atomic replace, or append).
    async fn write_file(&self, file: WriteFile) -> Result<Written>;
    /// Lists a directory.
    async fn list_files(
        &self,
        path: &str,
        recursive: bool,
        max_depth: Option<u32>,
    ) -> Result<Listing>;
    /// Describes one path.
    async fn stat(&self, path: &str) -> Result<FileInfo>;
    /// Creates a directory.
    async fn mkdir(&self, dir: MakeDir) -> Result<FileInfo>;
    /// Streams a file into the guest: written in parts to a temporary file
    /// that is renamed into place at the end, so a failed upload never
    /// leaves a partial file at the path. Answers the final size.
    async fn upload<'a>(&self, up: Upload, body: ByteStream<'a>) -> Result<Written>;
    /// Reports changes under a directory (see [`FsEvents`]); answers once
    /// the watch is in place.
    async fn watch_dir(&self, path: &str, recursive: bool) -> Result<FsEvents>;
    /// Deletes a path.
    async fn delete(&self, path: &str, recursive: bool) -> Result<()>;
    /// Renames a path.
    async fn rename(&self, from: &str, to: &str) -> Result<()>;

    /// Runs a command and streams its output as it comes (`started`,
    /// `data`, then `end` with the exit); the same rules as [`Self::exec`].
    async fn exec_stream(&self, spec: ExecSpec) -> Result<OutputEvents>;
    /// Starts a background process; answers at once.
    async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessInfo>;
    /// Every process of the sandbox's table.
    async fn list_processes(&self) -> Result<Vec<ProcessInfo>>;
    /// One process.
    async fn process(&self, sel: &ProcessSelector) -> Result<ProcessInfo>;
    /// Output from `cursor` (at most `max_bytes`), without waiting.
    async fn read_output(
        &self,
        sel: &ProcessSelector,
        cursor: u64,
        max_bytes: Option<u64>,
    ) -> Result<Output>;
    /// Output from `cursor` as it is produced, until the process ended.
    async fn follow_output(&self, sel: &ProcessSelector, cursor: u64) -> Result<OutputEvents>;
    /// Writes to stdin (or the PTY); closes stdin when `close`.
    async fn write_stdin(&self, sel: &ProcessSelector, data: Vec<u8>, close: bool) -> Result<()>;
    /// Sends a signal (1–64) to the process's group.
    async fn signal(&self, sel: &ProcessSelector, signal: i32) -> Result<()>;
    /// Resizes the process's PTY.
    async fn resize(&self, sel: &ProcessSelector, size: PtySize) -> Result<()>;
    /// Kills the process if it runs and forgets it.
    async fn remove_process(&self, sel: &ProcessSelector) -> Result<()>;
    /// Opens a TCP connection to `port` on the guest's loopback; the
    /// sandbox counts as in use while it is open.
    async fn open_port(&self, _port: u16) -> Result<crate::PortConn> {
        Err(crate::ManagerError::BackendUnsupported(
            "this server cannot open guest ports".into(),
        ))
    }
}
