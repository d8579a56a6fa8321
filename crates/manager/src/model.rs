//! Values the manager hands to its callers (the HTTP layer, the CLI, tests)
//! and the requests it takes from them. None of them is a guest protocol
//! message: [`crate::guest`] translates.

use locale2b_protocol::{SandboxId, WorkspaceId};
use locale2b_vmm::VmmKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub use locale2b_config::{OnTimeout, Secret};

pub use locale2b_protocol::{
    DataChannel as OutputStream, FileInfo, FileKind, FsOp, Listing, ProcessExit, ProcessInfo,
    ProcessSelector, ProcessState, PtySize,
};

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// VM booting, agent not ready yet.
    Starting,
    /// Agent answered; ready for exec and files.
    Running,
    /// Being snapshotted.
    Pausing,
    /// Snapshot on disk, no VMM process.
    Paused,
    /// Being restored.
    Resuming,
    /// Being shut down.
    Stopping,
    /// The VM died unexpectedly (see `error`).
    Dead,
}

impl SandboxStatus {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Pausing => "pausing",
            Self::Paused => "paused",
            Self::Resuming => "resuming",
            Self::Stopping => "stopping",
            Self::Dead => "dead",
        }
    }
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to create a sandbox. `None` fields take the configured defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSandbox {
    /// Guest RAM in MiB.
    pub memory_mb: Option<u32>,
    /// vCPUs.
    pub vcpu_count: Option<u8>,
    /// Template name.
    pub template: Option<String>,
    /// Workspace to attach; an existing paused workspace is resumed, an
    /// unknown id creates that workspace; generated when `None`.
    pub workspace_id: Option<WorkspaceId>,
    /// Extra environment for every exec in this sandbox.
    pub env: BTreeMap<String, String>,
    /// Lifetime in seconds from now (and from every resume); `Some(0)` = no
    /// end; the configured `sandbox_timeout_sec` when `None`.
    pub timeout_sec: Option<u64>,
    /// What the end of the lifetime does; the configured `on_timeout` when
    /// `None`.
    pub on_timeout: Option<OnTimeout>,
    /// Caller's labels, kept with the sandbox (see [`check_metadata`]).
    pub metadata: BTreeMap<String, String>,
    /// A secret that clients reaching the guest directly must present (the
    /// E2B surface's envd access token); kept with the sandbox.
    pub access_token: Option<String>,
    /// Seconds without API activity or an attached stream after which the
    /// running sandbox is paused; `Some(0)` = never; the configured
    /// `idle_timeout_sec` when `None`.
    pub idle_timeout_sec: Option<u64>,
    /// Whether a call to the sandbox while it is paused resumes it first;
    /// the configured `auto_resume` when `None`.
    pub auto_resume: Option<bool>,
    /// Size of a new workspace's writable disk, MiB; the configured
    /// `disk_size_mb` when `None`. An existing workspace keeps its size.
    pub disk_size_mb: Option<u64>,
    /// How the guest starts; the configured `boot` when `None`. A create
    /// that attaches an existing workspace always boots cold (its disk is
    /// its own), and `template` falls back to cold when no template
    /// snapshot can be used.
    pub boot: Option<locale2b_config::Boot>,
    /// The name of the API key that creates it; only that key (and an
    /// admin key) sees it. `None`: every key does.
    pub owner: Option<String>,
    /// Its egress policy; `None` = no network (mode `none`).
    pub network: Option<crate::network::NetworkPolicy>,
    /// Host-header routing to every port of the guest, exposed or not
    /// (E2B's model); `None`: only exposed ports are routed.
    pub route_all_ports: Option<RouteAllPorts>,
}

/// Host-header routing (`<port>-<sandbox_id>.<ports_domain>`) to every
/// port of a sandbox, not only its exposed ones: how E2B serves every
/// sandbox (`get_host`). The E2B surface sets it on the sandboxes it
/// creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteAllPorts {
    /// When set, every routed request must carry it in the
    /// `e2b-traffic-access-token` header (E2B's `allowPublicTraffic:
    /// false`, its `trafficAccessToken`).
    #[serde(default)]
    pub access_token: Option<String>,
}

/// What Host-header routing does with a request for one port of a
/// sandbox ([`crate::SandboxService::port_route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRoute {
    /// Neither exposed nor routed by [`RouteAllPorts`]: 404.
    Closed,
    /// Passed to the guest.
    Open,
    /// Passed when the request carries this token.
    Token(String),
}

impl RouteAllPorts {
    /// Routing with a new random token when `protect`.
    #[must_use]
    pub fn new(protect: bool) -> Self {
        Self {
            access_token: protect.then(crate::new_token),
        }
    }
}

/// Checks environment variable names (POSIX: letters, digits and `_`, not
/// starting with a digit); `what` names the map in the message.
///
/// # Errors
/// [`crate::ManagerError::InvalidInput`] naming the first bad name.
pub fn check_env(what: &str, env: &BTreeMap<String, String>) -> crate::Result<()> {
    match env.keys().find(|k| !locale2b_config::is_env_name(k)) {
        Some(bad) => Err(crate::ManagerError::InvalidInput(format!(
            "{what} has an invalid variable name {bad:?}: use letters, digits and '_', not starting with a digit"
        ))),
        None => Ok(()),
    }
}

/// Most metadata entries per sandbox.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key, bytes.
pub const MAX_METADATA_KEY: usize = 128;
/// Longest metadata value, bytes.
pub const MAX_METADATA_VALUE: usize = 1024;

/// Checks a sandbox's metadata against the limits above (keys non-empty).
///
/// # Errors
/// [`crate::ManagerError::InvalidInput`] naming the entry to fix.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> crate::Result<()> {
    let bad = |m: String| Err(crate::ManagerError::InvalidInput(m));
    if metadata.len() > MAX_METADATA_ENTRIES {
        return bad(format!(
            "metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
            metadata.len()
        ));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.len() > MAX_METADATA_KEY {
            return bad(format!(
                "metadata key {k:?} must be 1 to {MAX_METADATA_KEY} bytes long"
            ));
        }
        if v.len() > MAX_METADATA_VALUE {
            return bad(format!(
                "metadata value of {k:?} is {} bytes long; at most {MAX_METADATA_VALUE} are allowed",
                v.len()
            ));
        }
    }
    Ok(())
}

/// How a sandbox's guest was started at create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootSource {
    /// The kernel booted.
    Cold,
    /// A clone of a template snapshot.
    Template,
    /// A child of `POST /sandboxes/{id}/fork`: a clone of its parent.
    Fork,
}

impl BootSource {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Template => "template",
            Self::Fork => "fork",
        }
    }
}

/// Public view of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub sandbox_id: SandboxId,
    /// Workspace it runs.
    pub workspace_id: WorkspaceId,
    /// Lifecycle state.
    pub status: SandboxStatus,
    /// Guest RAM in MiB.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpu_count: u8,
    /// Template.
    pub template: String,
    /// Backend running it.
    pub backend: VmmKind,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Time of the last state change, RFC 3339.
    pub updated_at: String,
    /// Why the sandbox is dead, when it is.
    pub error: Option<String>,
    /// Milliseconds from create request to agent ready (or restore time).
    pub boot_ms: Option<u64>,
    /// When the lifetime ends (RFC 3339, milliseconds), while running with
    /// a lifetime; `None` when it has no end or is paused.
    pub end_at: Option<String>,
    /// Lifetime applied at create and at every resume, seconds (`None`: no
    /// end).
    pub timeout_sec: Option<u64>,
    /// What the end of the lifetime does.
    pub on_timeout: OnTimeout,
    /// Caller's labels.
    pub metadata: BTreeMap<String, String>,
    /// Idle timeout in force, seconds (`None`: never idle-paused).
    pub idle_timeout_sec: Option<u64>,
    /// Whether a call while paused resumes it first.
    pub auto_resume: bool,
    /// When it was paused (RFC 3339), while paused.
    pub paused_at: Option<String>,
    /// Why it was last paused (`api`, `timeout`, `idle`, `eviction`), while
    /// paused.
    pub paused_by: Option<String>,
    /// Size of its workspace's writable disk, MiB.
    pub disk_size_mb: Option<u64>,
    /// How its guest was started at create (`None` while starting, and for
    /// sandboxes created before this was recorded).
    pub boot: Option<BootSource>,
    /// The sandbox it was forked from, for a fork child.
    pub forked_from: Option<SandboxId>,
    /// See [`CreateSandbox::owner`].
    pub owner: Option<String>,
    /// See [`CreateSandbox::access_token`]; never serialized.
    #[serde(skip)]
    pub access_token: Option<Secret>,
    /// Its egress policy.
    #[serde(default)]
    pub network: crate::network::NetworkPolicy,
    /// See [`CreateSandbox::route_all_ports`]; never serialized (it may
    /// hold a token).
    #[serde(skip)]
    pub route_all_ports: Option<RouteAllPorts>,
}

/// Capacity figures for `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Sandboxes holding a VM (starting, running, pausing, resuming, stopping).
    pub active_sandboxes: u32,
    /// Paused sandboxes (no RAM held).
    pub paused_sandboxes: u32,
    /// Configured maximum.
    pub max_sandboxes: u32,
    /// Whether a sandbox of the default size could be admitted now.
    pub can_create_default: bool,
    /// Guest RAM held by active sandboxes (nominal).
    pub memory_used_mb: u64,
    /// What active sandboxes measurably cost the host: the PSS of their
    /// VMMs (memory shared between clones counted once), nominal for one
    /// not sampled yet.
    pub memory_measured_mb: u64,
    /// Budget left: against `memory_measured_mb` with `memory_overcommit`,
    /// else against `memory_used_mb`.
    pub memory_available_mb: u64,
    /// Whether admission counts measured memory instead of nominal.
    pub memory_overcommit: bool,
    /// Total budget.
    pub memory_budget_mb: u64,
    /// Backend in use.
    pub backend: VmmKind,
    /// "kvm" or "tcg" for qemu; "kvm" for firecracker.
    pub accel: String,
    /// Resident memory of all VMM processes (measured by the health
    /// check), MiB. Pages shared between VMMs count once per VMM.
    pub vmm_rss_mb: u64,
    /// PSS of all VMM processes, MiB: shared pages counted once.
    pub vmm_pss_mb: u64,
    /// Host limits per sandbox: `v2`, `v1` or `none`.
    pub cgroups: String,
    /// Free space of the host disk holding the workspaces, MiB.
    pub disk_free_mb: Option<u64>,
}

/// A guest TCP port reachable from the host (`POST /sandboxes/{id}/ports/expose`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposedPort {
    /// The port inside the guest (on its loopback).
    pub port: u16,
    /// The host port of its listener (on `ports_host`).
    pub host_port: u16,
    /// `http://<public_host>:<host_port>/`.
    pub url: String,
    /// When it was exposed (RFC 3339).
    pub created_at: String,
    /// When set, every connection must present it: HTTP requests in the
    /// `e2b-traffic-access-token` header (E2B's name), checked on the
    /// first request of each connection to the listener and on every
    /// request routed by Host header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

/// The header that carries an exposed port's access token.
pub const PORT_TOKEN_HEADER: &str = "e2b-traffic-access-token";

/// Figures of one sandbox (`GET /sandboxes/{id}/metrics`). Host figures
/// come from the health check's last sample of its VMM; guest figures are
/// read in the guest when it runs (`None` otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxMetrics {
    /// The sandbox.
    pub sandbox_id: SandboxId,
    /// Its status.
    pub status: SandboxStatus,
    /// When the figures were read, RFC 3339.
    pub timestamp: String,
    /// vCPUs.
    pub cpu_count: u8,
    /// CPU use of its VMM over the last sample, percent of its vCPUs
    /// (0–100).
    pub cpu_used_pct: f64,
    /// Guest RAM, MiB.
    pub memory_total_mb: u64,
    /// Guest RAM in use inside the guest (total minus available), MiB.
    pub memory_used_mb: Option<u64>,
    /// Resident memory of its VMM on the host, MiB.
    pub vmm_rss_mb: u64,
    /// PSS of its VMM on the host, MiB: pages shared with other VMMs (a
    /// template's or fork parent's memory) split between them.
    pub vmm_pss_mb: u64,
    /// Memory its cgroup is charged, MiB (when host limits are on).
    pub cgroup_memory_mb: Option<u64>,
    /// Size of its writable disk, MiB.
    pub disk_total_mb: Option<u64>,
    /// Space used on the writable disk inside the guest, MiB.
    pub disk_used_mb: Option<u64>,
    /// Host disk space its workspace takes (disk and snapshots), MiB.
    pub disk_allocated_mb: u64,
    /// Seconds since its last API activity.
    pub idle_sec: u64,
    /// Guest calls running now (eviction and the idle pause leave a
    /// sandbox with calls or streams alone).
    pub calls_in_flight: u64,
    /// Streams attached now (output follows, PTYs, watches, downloads).
    pub streams_attached: u64,
}

/// One entry of a workspace's lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageEvent {
    /// RFC 3339 time.
    pub at: String,
    /// "created", "paused", "resumed", "destroyed", "restore_failed", ...
    pub event: String,
    /// Sandbox involved.
    pub sandbox_id: Option<SandboxId>,
    /// Snapshot involved.
    pub snapshot_id: Option<String>,
    /// Free-form detail.
    pub detail: Option<String>,
}

/// Public view of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    /// Workspace id.
    pub workspace_id: WorkspaceId,
    /// Template its disk was made for.
    pub template: String,
    /// Sandbox currently attached (running or paused), if any.
    pub sandbox_id: Option<SandboxId>,
    /// State of that sandbox, or "idle".
    pub status: String,
    /// Latest valid snapshot, if any.
    pub snapshot_id: Option<String>,
    /// Bytes used on disk by the workspace (allocated blocks).
    pub disk_usage_bytes: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// History.
    pub lineage: Vec<LineageEvent>,
    /// Name of the API key that created it, if recorded.
    pub owner: Option<String>,
}

/// A command to run in a sandbox (`/bin/sh -c command`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// Shell command line.
    pub command: String,
    /// Working directory; `/workspace` when `None`.
    pub working_dir: Option<String>,
    /// Extra environment (added to the sandbox's).
    pub env: BTreeMap<String, String>,
    /// Bytes fed to stdin; stdin is empty when `None`.
    pub stdin: Option<Vec<u8>>,
    /// How long the command may run; the configured default when `None`.
    /// Zero and values above the configured maximum are refused.
    pub timeout: Option<Duration>,
    /// Run as this user (name or uid).
    pub user: Option<String>,
    /// Cap on each of stdout and stderr (default 1 MiB).
    pub max_output_bytes: Option<u64>,
}

impl ExecSpec {
    /// `command` with every other field at its default.
    pub fn shell(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            ..Self::default()
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Captured stdout (invalid UTF-8 replaced by U+FFFD).
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Exit status; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Signal that ended the command.
    pub signal: Option<i32>,
    /// The timeout fired and the process group was killed.
    pub timed_out: bool,
    /// Output exceeded the cap and was cut.
    pub truncated: bool,
    /// Wall time in the guest.
    pub duration_ms: u64,
    /// `None` when the command ran to completion (whatever its exit code),
    /// else why it did not, in words (timeout, signal).
    pub error: Option<String>,
}

/// Bytes read from a guest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRead {
    /// The bytes.
    pub data: Vec<u8>,
    /// Offset of the first byte.
    pub offset: u64,
    /// Size of the file.
    pub size: u64,
    /// The read reached the end of the file.
    pub eof: bool,
}

/// A file to write into the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteFile {
    /// Guest path.
    pub path: String,
    /// Content.
    pub data: Vec<u8>,
    /// Mode of a new file (default 0644).
    pub mode: Option<u32>,
    /// Create missing parent directories.
    pub create_parents: bool,
    /// Append instead of replacing atomically.
    pub append: bool,
    /// User (name) that owns the file and the parents created for it;
    /// root, or a replaced file's owner, when `None`.
    pub owner: Option<String>,
    /// Truncate and write the file itself instead of replacing it
    /// atomically (watchers then see the file written; readers may see it
    /// half-written).
    pub in_place: bool,
}

/// A directory to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MakeDir {
    /// Guest path.
    pub path: String,
    /// Create missing parents (an existing directory is then no error).
    pub parents: bool,
    /// Permission bits (default 0755).
    pub mode: Option<u32>,
    /// User (name) that owns the directories created; root when `None`.
    pub owner: Option<String>,
}

/// A file streamed into the guest ([`crate::GuestOps::upload`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upload {
    /// Guest path (parents are created).
    pub path: String,
    /// Mode of the file (default 0644).
    pub mode: Option<u32>,
    /// User (name) that owns the file and the parents created for it.
    pub owner: Option<String>,
    /// Largest upload accepted, bytes.
    pub max_bytes: u64,
    /// Write the file itself (truncated, then appended to) instead of a
    /// temporary file renamed into place at the end: watchers see the file
    /// written, but a failed upload leaves a partial file (E2B's envd
    /// behaves so).
    pub in_place: bool,
    /// Expected SHA-256 (hex) of the bytes: on a mismatch nothing is kept.
    pub sha256: Option<String>,
}

/// The bytes of an upload, as they arrive. A body that fails to read
/// yields the error to answer with (e.g. TooLarge, InvalidInput).
pub type ByteStream<'a> =
    std::pin::Pin<Box<dyn futures::Stream<Item = crate::Result<bytes::Bytes>> + Send + 'a>>;

/// One change under a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEvent {
    /// Path relative to the watched directory.
    pub name: String,
    /// What happened.
    pub op: FsOp,
}

/// Changes under a watched directory, as they happen; ends when the
/// directory goes away (or with an error, e.g. when events were lost).
pub type FsEvents = std::pin::Pin<Box<dyn futures::Stream<Item = crate::Result<FsEvent>> + Send>>;

/// Result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The path written.
    pub path: String,
    /// Size of the file afterwards.
    pub size: u64,
    /// SHA-256 of the bytes written (lowercase hex), when the guest
    /// computed it (streamed writes).
    pub sha256: Option<String>,
}

/// A file's bytes as the guest reads them ([`crate::GuestOps::download`]).
pub struct Download {
    /// The file's size, when it has one (pipes and pseudo-files do not).
    pub size: Option<u64>,
    /// The bytes, in order; an error ends them.
    pub bytes: ByteStream<'static>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A file's checksum, computed in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// Bytes hashed.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// Limits every request is checked against (from the configuration), for
/// callers that document or pre-check them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Smallest guest RAM, MiB.
    pub min_memory_mb: u32,
    /// Largest guest RAM, MiB.
    pub max_memory_mb: u32,
    /// Guest RAM when a request names none.
    pub default_memory_mb: u32,
    /// Largest vCPU count.
    pub max_vcpu: u8,
    /// vCPUs when a request names none.
    pub default_vcpu: u8,
    /// Exec timeout when a request names none, ms.
    pub default_exec_timeout_ms: u64,
    /// Largest exec timeout, ms.
    pub max_exec_timeout_ms: u64,
    /// Longest sandbox lifetime, seconds.
    pub max_sandbox_timeout_sec: u64,
    /// Size of each sandbox's writable disk, MiB.
    pub disk_size_mb: u64,
    /// Template used when a request names none.
    pub default_template: String,
}

/// A process to start in a sandbox's process table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Shell command line (`/bin/sh -c`); exactly one of this and `argv`.
    pub command: Option<String>,
    /// Program and arguments, without a shell.
    pub argv: Vec<String>,
    /// Working directory (`/workspace` when `None`).
    pub cwd: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Run as this user.
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size.
    pub pty: Option<PtySize>,
    /// Caller-chosen name (unique among running processes).
    pub tag: Option<String>,
    /// Give it a stdin pipe.
    pub stdin: bool,
    /// Kill its group after this long.
    pub timeout: Option<Duration>,
    /// Size of its output buffer (default 8 MiB).
    pub buffer_bytes: Option<u64>,
}

/// Output bytes of one stream, at a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// stdout, stderr or pty.
    pub stream: OutputStream,
    /// Cursor of the first byte.
    pub cursor: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Output read by cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Cursor of the first byte returned (the one asked for, or later when
    /// bytes were dropped).
    pub cursor: u64,
    /// Bytes between the cursor asked for and `cursor` that the buffer no
    /// longer held.
    pub dropped: u64,
    /// The bytes, in the order they were produced.
    pub chunks: Vec<OutputChunk>,
    /// Where the next read starts.
    pub next_cursor: u64,
    /// How the process ended, when it has.
    pub exit: Option<ProcessExit>,
    /// It ended and everything up to `next_cursor` was returned.
    pub complete: bool,
}

/// One event of a followed process (or a streamed exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// The process runs (streamed exec and start-and-follow).
    Started {
        /// Its pid.
        pid: u32,
    },
    /// Output bytes.
    Data(OutputChunk),
    /// Bytes the buffer no longer held; the stream goes on at `cursor`.
    Dropped {
        /// How many.
        bytes: u64,
        /// Where the stream goes on.
        cursor: u64,
    },
    /// Nothing happened for a while.
    Keepalive,
    /// The process ended and all its output was delivered.
    End {
        /// Cursor after the last byte.
        next_cursor: u64,
        /// How it ended.
        exit: Option<ProcessExit>,
    },
}

/// A live stream of [`OutputEvent`]s; dropping it stops following.
pub type OutputEvents =
    std::pin::Pin<Box<dyn futures::Stream<Item = crate::Result<OutputEvent>> + Send>>;
