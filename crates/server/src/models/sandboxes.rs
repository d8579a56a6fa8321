//! Bodies of the sandbox lifecycle routes.

use locale2b_manager::{Boot, OnTimeout, SandboxInfo};
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
    /// Seconds without API activity (guest calls, timeout changes) and
    /// without an attached stream after which the sandbox is paused;
    /// `0` = never. The server's `idle_timeout_sec` when absent.
    #[schema(example = 3600)]
    pub idle_timeout_sec: Option<u64>,
    /// Resume the sandbox transparently when a call reaches it while it is
    /// paused. The server's `auto_resume` (default false) when absent.
    pub auto_resume: Option<bool>,
    /// Size of a new workspace's writable disk, MiB (64 to the server's
    /// `max_disk_size_mb`). The server's `disk_size_mb` when absent; an
    /// existing workspace keeps its size.
    #[schema(example = 2048)]
    pub disk_size_mb: Option<u64>,
    /// How the guest starts: `cold` (boot the kernel) or `template` (clone
    /// a snapshot of a guest booted once for this image and size, built on
    /// first use; much faster). The server's `boot` when absent. A create
    /// that attaches an existing workspace boots cold, and `template` falls
    /// back to cold (with a logged reason) when no template snapshot can be
    /// used; the answer's `boot` says which happened.
    #[schema(value_type = Option<String>, example = "template")]
    pub boot: Option<Boot>,
    /// Egress policy; absent = mode `none` (no network device at all).
    /// A sandbox created with `allowlist` or `full` can change its policy
    /// later (`PUT /sandboxes/{id}/network`); one created without cannot
    /// gain a network.
    pub network: Option<NetworkBody>,
}

/// An egress policy (`docs/network.md`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
pub struct NetworkBody {
    /// `none` (no network device), `allowlist` (only `allow`) or `full`
    /// (any public address but `deny`).
    #[schema(example = "allowlist")]
    pub mode: String,
    /// Domain names (`pypi.org`, `*.github.com` for every name below),
    /// IPv4 addresses and CIDRs the guest may reach. A CIDR here also
    /// opens a private range.
    #[serde(default)]
    #[schema(example = json!(["pypi.org", "*.pythonhosted.org", "1.1.1.1/32"]))]
    pub allow: Vec<String>,
    /// Domain names and CIDRs it may not (mode `full`); `allow` wins.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl NetworkBody {
    /// The manager's policy.
    ///
    /// # Errors
    /// A message for a mode that is not one of the three.
    pub fn policy(self) -> Result<locale2b_manager::network::NetworkPolicy, String> {
        use locale2b_manager::network::NetworkMode as M;
        let mode = match self.mode.as_str() {
            "none" => M::None,
            "allowlist" => M::Allowlist,
            "full" => M::Full,
            other => {
                return Err(format!(
                    "network.mode {other:?} is not one of \"none\", \"allowlist\", \"full\""
                ))
            }
        };
        Ok(locale2b_manager::network::NetworkPolicy {
            mode,
            allow: self.allow,
            deny: self.deny,
        })
    }
}

impl From<locale2b_manager::network::NetworkPolicy> for NetworkBody {
    fn from(p: locale2b_manager::network::NetworkPolicy) -> Self {
        Self {
            mode: p.mode.to_string(),
            allow: p.allow,
            deny: p.deny,
        }
    }
}

/// `POST /sandboxes/{id}/fork`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ForkBody {
    /// Children to make (1–64; default 1).
    #[schema(example = 5)]
    pub count: Option<u32>,
}

/// `POST /sandboxes/{id}/fork`: the children, in the order they were made.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForkResponse {
    /// The new sandboxes (`boot` = `fork`, `forked_from` = the parent).
    pub sandboxes: Vec<SandboxResponse>,
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
    /// Idle timeout in force, seconds; `null` = never idle-paused.
    pub idle_timeout_sec: Option<u64>,
    /// Whether a call while paused resumes it first.
    pub auto_resume: bool,
    /// When it was paused (RFC 3339), while paused.
    pub paused_at: Option<String>,
    /// Why it was paused, while paused: `api`, `timeout`, `idle` or
    /// `eviction`.
    #[schema(example = "idle")]
    pub paused_by: Option<String>,
    /// Size of its writable disk, MiB.
    pub disk_size_mb: Option<u64>,
    /// How its guest was started at create: `cold`, `template` or `fork`;
    /// `null` while starting.
    #[schema(example = "template")]
    pub boot: Option<String>,
    /// For a fork child: the sandbox it was forked from.
    pub forked_from: Option<String>,
    /// The name of the API key that created it (only it and admin keys
    /// see the sandbox); `null` for sandboxes every key sees.
    pub owner: Option<String>,
    /// Its egress policy.
    pub network: NetworkBody,
    /// Which of its ports Host-header routing reaches: `exposed` (only
    /// exposed ports), `all` (every port, as for sandboxes created through
    /// the E2B API) or `all_with_token` (every port, each request with the
    /// sandbox's E2B traffic token).
    #[schema(example = "exposed")]
    pub routed_ports: String,
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
            idle_timeout_sec: s.idle_timeout_sec,
            auto_resume: s.auto_resume,
            paused_at: s.paused_at,
            paused_by: s.paused_by,
            boot: s.boot.map(|b| b.as_str().to_owned()),
            forked_from: s.forked_from.map(Into::into),
            owner: s.owner,
            disk_size_mb: s.disk_size_mb,
            network: s.network.into(),
            routed_ports: match &s.route_all_ports {
                None => "exposed",
                Some(r) if r.access_token.is_some() => "all_with_token",
                Some(_) => "all",
            }
            .to_owned(),
        }
    }
}

/// `GET /sandboxes/{id}/metrics`: host and guest figures of one sandbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxMetricsResponse {
    /// The sandbox.
    pub sandbox_id: String,
    /// Its status.
    pub status: String,
    /// When the figures were read, RFC 3339.
    pub timestamp: String,
    /// vCPUs.
    pub cpu_count: u8,
    /// CPU use of its VMM over the health check's last interval, percent
    /// of its vCPUs (0–100).
    pub cpu_used_pct: f64,
    /// Guest RAM, MiB.
    pub memory_total_mb: u64,
    /// Guest RAM in use inside the guest (total minus available), MiB;
    /// `null` when the guest is not running.
    pub memory_used_mb: Option<u64>,
    /// Resident memory of its VMM on the host, MiB.
    pub vmm_rss_mb: u64,
    /// PSS of its VMM on the host, MiB (pages shared with other VMMs split
    /// between them).
    pub vmm_pss_mb: u64,
    /// Memory its cgroup is charged, MiB; `null` without host limits.
    pub cgroup_memory_mb: Option<u64>,
    /// Size of its writable disk, MiB.
    pub disk_total_mb: Option<u64>,
    /// Space used on the writable disk inside the guest, MiB.
    pub disk_used_mb: Option<u64>,
    /// Host disk its workspace takes (disk and snapshots), MiB.
    pub disk_allocated_mb: u64,
    /// Seconds since its last API activity.
    pub idle_sec: u64,
    /// Guest calls running now.
    pub calls_in_flight: u64,
    /// Streams attached now (output follows, PTYs, watches, downloads).
    pub streams_attached: u64,
}

impl From<locale2b_manager::SandboxMetrics> for SandboxMetricsResponse {
    fn from(m: locale2b_manager::SandboxMetrics) -> Self {
        Self {
            sandbox_id: m.sandbox_id.into(),
            status: m.status.as_str().to_owned(),
            timestamp: m.timestamp,
            cpu_count: m.cpu_count,
            cpu_used_pct: m.cpu_used_pct,
            memory_total_mb: m.memory_total_mb,
            memory_used_mb: m.memory_used_mb,
            vmm_rss_mb: m.vmm_rss_mb,
            vmm_pss_mb: m.vmm_pss_mb,
            cgroup_memory_mb: m.cgroup_memory_mb,
            disk_total_mb: m.disk_total_mb,
            disk_used_mb: m.disk_used_mb,
            disk_allocated_mb: m.disk_allocated_mb,
            idle_sec: m.idle_sec,
            calls_in_flight: m.calls_in_flight,
            streams_attached: m.streams_attached,
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
