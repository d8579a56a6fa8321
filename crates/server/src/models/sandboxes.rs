//! Bodies of the sandbox lifecycle routes.

use locale2b_manager::{OnTimeout, SandboxInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

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
    /// Lifetime in seconds, from the create and again from every resume;
    /// `0` = no end. The server's `sandbox_timeout_sec` when absent; at
    /// most `max_sandbox_timeout_sec`.
    #[schema(example = 3600)]
    pub timeout_sec: Option<u64>,
    /// What the end of the lifetime does: `destroy` (as `DELETE`) or
    /// `pause` (nothing is lost). The server's `on_timeout` when absent.
    #[schema(value_type = Option<String>, example = "pause")]
    pub on_timeout: Option<OnTimeout>,
    /// Labels kept with the sandbox and shown in its info (at most 64
    /// entries; keys 1–128 bytes, values up to 1024 bytes).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetTimeoutBody {
    /// New lifetime in seconds from now; `0` = no end. On a paused sandbox,
    /// the lifetime its next resume starts.
    #[schema(example = 600)]
    pub timeout_sec: u64,
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
    /// When the lifetime ends (RFC 3339), while running with a lifetime;
    /// `null` without one and while paused.
    #[schema(example = "2025-01-01T13:00:01.400Z")]
    pub end_at: Option<String>,
    /// Lifetime started at create and at every resume, seconds; `null` =
    /// no end.
    pub timeout_sec: Option<u64>,
    /// `destroy` or `pause`: what the end of the lifetime does.
    #[schema(example = "destroy")]
    pub on_timeout: String,
    /// Labels given at create.
    pub metadata: BTreeMap<String, String>,
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
            end_at: s.end_at,
            timeout_sec: s.timeout_sec,
            on_timeout: s.on_timeout.as_str().to_owned(),
            metadata: s.metadata,
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
