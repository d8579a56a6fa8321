//! Request and response bodies of the REST API (the public contract; see
//! `docs/api.md`). They are separate from the manager's and the protocol's
//! types so that the HTTP contract changes only on purpose.
//!
//! Unknown fields: bodies that CompyMac or the plan's scripts send
//! (create, exec, files/write) ignore unknown fields, because those clients
//! are not ours and may add fields; bodies only our own clients send
//! (mkdir, files/delete) refuse them (`deny_unknown_fields`) so a typo is a
//! 400, not a silently ignored option.

use locale2b_manager::{Capacity, SandboxInfo, WorkspaceInfo};
use locale2b_protocol::{FileInfo, FileKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `healthy`, or `degraded` when a sandbox of the default size cannot be
    /// created right now (sandbox or memory limit reached).
    #[schema(example = "healthy")]
    pub status: String,
    /// Sandboxes holding a VM.
    pub active_sandboxes: u32,
    /// Paused sandboxes (hold no RAM).
    pub paused_sandboxes: u32,
    /// Configured maximum of concurrent sandboxes.
    pub max_sandboxes: u32,
    /// Guest RAM held by active sandboxes, MiB.
    pub memory_used_mb: u64,
    /// Guest RAM budget left, MiB.
    pub memory_available_mb: u64,
    /// Total guest RAM budget, MiB.
    pub memory_budget_mb: u64,
    /// VMM backend: `firecracker` or `qemu`.
    #[schema(example = "qemu")]
    pub backend: String,
    /// Acceleration: `kvm` or `tcg`.
    #[schema(example = "tcg")]
    pub accel: String,
    /// Server version.
    pub version: String,
}

impl HealthResponse {
    /// Builds the response from the manager's capacity figures.
    pub fn from_capacity(c: Capacity, default_memory_mb: u32) -> Self {
        let degraded = c.active_sandboxes >= c.max_sandboxes
            || c.memory_available_mb < u64::from(default_memory_mb);
        Self {
            status: if degraded { "degraded" } else { "healthy" }.to_owned(),
            active_sandboxes: c.active_sandboxes,
            paused_sandboxes: c.paused_sandboxes,
            max_sandboxes: c.max_sandboxes,
            memory_used_mb: c.memory_used_mb,
            memory_available_mb: c.memory_available_mb,
            memory_budget_mb: c.memory_budget_mb,
            backend: c.backend.to_string(),
            accel: c.accel,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// `POST /sandboxes`. Every field is optional; `{}` creates a sandbox with
/// the configured defaults. Unknown fields are ignored.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateSandboxBody {
    /// Guest RAM in MiB (configured default, min and max apply).
    #[schema(example = 512)]
    pub memory_mb: Option<u32>,
    /// vCPUs (1 to the configured maximum).
    #[schema(example = 1)]
    pub vcpu_count: Option<u8>,
    /// Template (guest image) name.
    #[schema(example = "default")]
    pub template: Option<String>,
    /// Workspace to attach: an existing paused workspace is resumed, an
    /// unknown id creates it. 1–64 characters of `[A-Za-z0-9._-]`, starting
    /// with a letter or digit.
    #[schema(example = "session-42")]
    pub workspace_id: Option<String>,
    /// Environment variables for every command run in this sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One sandbox (create, get, list, pause, resume).
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxResponse {
    /// Sandbox id.
    #[schema(example = "sb-3k9x0q2m1z7a")]
    pub sandbox_id: String,
    /// `starting`, `running`, `pausing`, `paused`, `resuming`, `stopping` or `dead`.
    #[schema(example = "running")]
    pub status: String,
    /// Guest RAM in MiB.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpu_count: u8,
    /// Workspace the sandbox runs.
    pub workspace_id: String,
    /// Template.
    pub template: String,
    /// VMM backend.
    pub backend: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Time of the last state change, RFC 3339.
    pub updated_at: String,
    /// Milliseconds from request to agent ready (or restore time).
    pub boot_ms: Option<u64>,
    /// Why the sandbox is dead, when it is.
    pub error: Option<String>,
}

impl From<SandboxInfo> for SandboxResponse {
    fn from(s: SandboxInfo) -> Self {
        Self {
            sandbox_id: s.sandbox_id.into(),
            status: s.status.as_str().to_owned(),
            memory_mb: s.memory_mb,
            vcpu_count: s.vcpu_count,
            workspace_id: s.workspace_id.into(),
            template: s.template,
            backend: s.backend.to_string(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            boot_ms: s.boot_ms,
            error: s.error,
        }
    }
}

/// `GET /sandboxes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxList {
    /// All sandboxes, oldest first.
    pub sandboxes: Vec<SandboxResponse>,
}

/// `DELETE /sandboxes/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DestroyedResponse {
    /// The sandbox destroyed.
    pub sandbox_id: String,
    /// Always `destroyed`.
    #[schema(example = "destroyed")]
    pub status: String,
}

/// `POST /sandboxes/{id}/exec`. Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecBody {
    /// Command line, run with `/bin/sh -c`.
    #[schema(example = "ls -la /workspace")]
    pub command: String,
    /// Working directory (default `/workspace`).
    #[schema(example = "/workspace")]
    pub working_dir: Option<String>,
    /// Timeout in milliseconds (default: the server's `exec_timeout_sec`).
    #[schema(example = 120000)]
    pub timeout_ms: Option<u64>,
    /// Timeout in seconds; alternative to `timeout_ms` (not both).
    pub timeout_seconds: Option<u64>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Text fed to the command's stdin (UTF-8).
    pub stdin: Option<String>,
    /// Bytes fed to stdin, base64 (alternative to `stdin`).
    pub stdin_b64: Option<String>,
    /// Run as this user (name or uid).
    pub user: Option<String>,
    /// Cap on each of stdout and stderr in bytes (default 1 MiB).
    pub max_output_bytes: Option<u64>,
}

/// Result of a command.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecResult {
    /// Captured stdout (invalid UTF-8 replaced by U+FFFD).
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Exit status; null when the command was killed by a signal.
    pub exit_code: Option<i32>,
    /// Null when the command ran to completion (whatever its exit code);
    /// otherwise why it did not (timeout, signal).
    #[schema(example = json!(null))]
    pub error: Option<String>,
    /// The timeout fired and the command's process group was killed.
    pub timed_out: bool,
    /// Output exceeded the cap and was cut.
    pub truncated: bool,
    /// Wall time in the guest, ms.
    pub duration_ms: u64,
    /// Signal that ended the command, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// How file content is encoded in a JSON body or response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum Encoding {
    /// Standard base64 with padding (RFC 4648 §4). The default.
    #[default]
    #[serde(rename = "base64")]
    Base64,
    /// The string's UTF-8 bytes as they are.
    #[serde(rename = "utf-8", alias = "utf8", alias = "text")]
    Utf8,
}

fn default_true() -> bool {
    true
}

/// `POST /sandboxes/{id}/files/write`. Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct WriteFileBody {
    /// Guest path (relative paths are resolved from `/workspace`).
    #[schema(example = "/workspace/hello.txt")]
    pub path: String,
    /// The content: base64 unless `encoding` is `utf-8`.
    #[schema(example = "aGVsbG8K")]
    pub content: String,
    /// Encoding of `content`; `base64` when absent.
    #[serde(default)]
    pub encoding: Encoding,
    /// Permission bits for a new file (decimal JSON number, e.g. 420 = 0o644).
    pub mode: Option<u32>,
    /// Create missing parent directories (default true).
    #[serde(default = "default_true")]
    pub create_parents: bool,
}

/// Result of a write or upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenFile {
    /// Path written.
    pub path: String,
    /// Size of the file afterwards.
    pub size: u64,
}

/// Query of `GET /sandboxes/{id}/files/read`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Guest path.
    pub path: String,
    /// First byte to read.
    pub offset: Option<u64>,
    /// Most bytes to return (default: the rest of the file, if it fits in
    /// one response).
    pub length: Option<u64>,
    /// `base64` (default) or `utf-8`.
    #[param(inline)]
    pub encoding: Option<Encoding>,
}

/// Content of a file.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileContentResponse {
    /// Path read.
    pub path: String,
    /// The bytes, encoded as `encoding` says.
    pub content: String,
    /// `base64` or `utf-8`.
    pub encoding: Encoding,
    /// Total size of the file.
    pub size: u64,
    /// Offset of the first byte returned.
    pub offset: u64,
    /// True when the read reached the end of the file.
    pub eof: bool,
}

/// Query of `GET /sandboxes/{id}/files/list`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Directory (default `/workspace`).
    pub path: Option<String>,
    /// Descend into subdirectories (symlinks are not followed).
    pub recursive: Option<bool>,
    /// Deepest level when recursive (1 = direct children); default 16.
    pub max_depth: Option<u32>,
}

/// One directory entry or stat result.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileEntry {
    /// Last path component.
    pub name: String,
    /// Full guest path.
    pub path: String,
    /// True for directories.
    pub is_directory: bool,
    /// Size in bytes.
    pub size: u64,
    /// `file`, `directory`, `symlink` or `other`.
    #[serde(rename = "type")]
    #[schema(example = "file")]
    pub kind: String,
    /// Permission bits as a number (e.g. 420 = 0o644).
    pub mode: u32,
    /// Modification time, RFC 3339 (UTC).
    pub modified_at: String,
    /// Target of a symlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

impl From<FileInfo> for FileEntry {
    fn from(f: FileInfo) -> Self {
        let kind = match f.kind {
            FileKind::File => "file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        };
        Self {
            name: f.name,
            path: f.path,
            is_directory: f.kind == FileKind::Directory,
            size: f.size,
            kind: kind.to_owned(),
            mode: f.mode,
            modified_at: rfc3339_ms(f.mtime_ms),
            symlink_target: f.symlink_target,
        }
    }
}

fn rfc3339_ms(ms: i64) -> String {
    let t = if ms >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs())
    } else {
        std::time::UNIX_EPOCH
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// `GET /sandboxes/{id}/files/list`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileListResponse {
    /// Directory listed.
    pub path: String,
    /// Entries, sorted by path.
    pub files: Vec<FileEntry>,
    /// A cap (10 000 entries) was reached and entries were left out.
    pub truncated: bool,
}

/// Query of `files/upload` and `files/stat`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// Guest path.
    pub path: String,
}

/// Query of `DELETE /sandboxes/{id}/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Guest path.
    pub path: String,
    /// Delete a non-empty directory with its content.
    pub recursive: Option<bool>,
}

/// `POST /sandboxes/{id}/files/delete`. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteFileBody {
    /// Guest path.
    pub path: String,
    /// Delete a non-empty directory with its content.
    #[serde(default)]
    pub recursive: bool,
}

/// Result of a file deletion.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedFile {
    /// Path deleted.
    pub path: String,
    /// Always true.
    pub deleted: bool,
}

/// `POST /sandboxes/{id}/files/mkdir`. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirBody {
    /// Directory to create.
    pub path: String,
    /// Create missing parents; an existing directory is then not an error.
    #[serde(default)]
    pub parents: bool,
    /// Permission bits (decimal number; default 493 = 0o755).
    pub mode: Option<u32>,
}

/// Multipart form of `files/upload` (for the OpenAPI description).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file's bytes (the first part with a file name, or the part named `file`).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_body_defaults() {
        let b: WriteFileBody =
            serde_json::from_str(r#"{"path":"/a","content":"aGk=","extra":1}"#).unwrap();
        assert_eq!(b.encoding, Encoding::Base64);
        assert!(b.create_parents);
        let b: WriteFileBody =
            serde_json::from_str(r#"{"path":"/a","content":"hi","encoding":"utf8"}"#).unwrap();
        assert_eq!(b.encoding, Encoding::Utf8);
    }

    #[test]
    fn mtime_formats_as_rfc3339() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
