//! Body of `GET /health`.

use locale2b_manager::Capacity;
use serde::Serialize;
use utoipa::ToSchema;

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
    /// Guest RAM held by active sandboxes (nominal sizes), MiB.
    pub memory_used_mb: u64,
    /// What active sandboxes measurably cost the host, MiB: the PSS of
    /// their VMMs (memory shared between clones of a template or a fork
    /// counted once), the nominal size for one not sampled yet.
    pub memory_measured_mb: u64,
    /// Budget left, MiB: against `memory_measured_mb` when
    /// `memory_overcommit`, else against `memory_used_mb`.
    pub memory_available_mb: u64,
    /// Whether admission counts measured memory (`LOCALE2B_MEMORY_OVERCOMMIT`).
    pub memory_overcommit: bool,
    /// Total guest RAM budget, MiB.
    pub memory_budget_mb: u64,
    /// VMM backend: `firecracker` or `qemu`.
    #[schema(example = "qemu")]
    pub backend: String,
    /// Acceleration: `kvm` or `tcg`.
    #[schema(example = "tcg")]
    pub accel: String,
    /// Resident memory of all VMM processes, measured, MiB (shared pages
    /// count once per process).
    pub vmm_rss_mb: u64,
    /// PSS of all VMM processes, measured, MiB (shared pages count once).
    pub vmm_pss_mb: u64,
    /// Host limits per sandbox: `v2`, `v1` (cgroups) or `none`.
    #[schema(example = "v2")]
    pub cgroups: String,
    /// Free space of the host disk holding the workspaces, MiB.
    pub disk_free_mb: Option<u64>,
    /// Server version.
    pub version: String,
}

impl HealthResponse {
    /// Builds the response from the manager's capacity figures.
    pub fn from_capacity(c: Capacity) -> Self {
        Self {
            status: if c.can_create_default {
                "healthy"
            } else {
                "degraded"
            }
            .to_owned(),
            active_sandboxes: c.active_sandboxes,
            paused_sandboxes: c.paused_sandboxes,
            max_sandboxes: c.max_sandboxes,
            memory_used_mb: c.memory_used_mb,
            memory_measured_mb: c.memory_measured_mb,
            memory_available_mb: c.memory_available_mb,
            memory_overcommit: c.memory_overcommit,
            memory_budget_mb: c.memory_budget_mb,
            backend: c.backend.to_string(),
            accel: c.accel,
            vmm_rss_mb: c.vmm_rss_mb,
            vmm_pss_mb: c.vmm_pss_mb,
            cgroups: c.cgroups,
            disk_free_mb: c.disk_free_mb,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}
