//! [`SandboxManager`]: owns every sandbox and workspace of one base
//! directory. Its operations live one per file:
//!
//! | file | what |
//! |---|---|
//! | `create.rs` | create (boot), attaching a named workspace |
//! | `destroy.rs` | destroy |
//! | `fork.rs` | fork: children that continue from a running sandbox |
//! | `lifetime.rs` | end times and idle timeouts: timeout changes, destroy or pause at the end, idle pause |
//! | `govern.rs` | eviction, disk-space admission, cgroups, usage samples, the reaper, metrics |
//! | `pause.rs` | pause (snapshot) and resume (restore) |
//! | `boot.rs` | bringing a guest up: VM spec, agent wait, `init` |
//! | `template.rs` | template snapshots that creates clone instead of booting |
//! | `recover.rs` | start-up reconciliation, orphan scan, health check |
//! | `workspaces.rs` | workspace queries and deletion |
//! | `service.rs` | the [`SandboxService`](crate::SandboxService) implementation |
//!
//! Concurrency model: each sandbox has one async `lifecycle` lock held by
//! create, destroy, pause and resume, so two lifecycle operations on one
//! sandbox never interleave; guest calls only take a clone of the agent
//! client and run concurrently. Each workspace has a lock too, so two
//! creates naming one workspace cannot both attach to it. The in-memory
//! table and capacity counters sit behind a short-lived std mutex
//! ([`Registry`]).
//!
//! Every state change is persisted to the sandbox's `state.json` (atomic
//! rename) before it is acted on where that matters for recovery.

mod boot;
mod create;
mod destroy;
mod fork;
mod govern;
mod lifetime;
mod network;
mod pause;
mod ports;
mod recover;
mod service;
mod template;
mod workspaces;

pub use fork::MAX_FORK_CHILDREN;
pub use ports::new_token;

use crate::guest::ExecRules;
use crate::host;
use crate::image::Image;
use crate::registry::{CapacityLimits, Registry};
use crate::store::Store;
use crate::{Capacity, Limits, ManagerConfig, ManagerError, Result, SandboxInfo};
use locale2b_protocol::SandboxId;
use locale2b_vmm::{Vmm, VmmKind};
use std::sync::Arc;
use std::time::Duration;

/// Owns every sandbox and workspace of one base directory.
#[derive(Debug)]
pub struct SandboxManager {
    config: Arc<ManagerConfig>,
    vmm: Arc<dyn Vmm>,
    accel: String,
    store: Store,
    registry: Registry,
    /// Woken when a lifetime changes (the lifetime task re-plans).
    lifetimes: Arc<tokio::sync::Notify>,
    /// Sandboxes whose ended lifetime is being acted on.
    expiring: std::sync::Mutex<std::collections::HashSet<SandboxId>>,
    /// This manager, for the tasks and guests it hands out.
    me: std::sync::Weak<SandboxManager>,
    /// Counters and histograms behind `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Where VMM cgroups are made (or why not).
    cgroups: crate::cgroup::Cgroups,
    /// Template snapshots: build locks, failures, checked files.
    templates: template::Templates,
    /// Listeners of exposed ports.
    ports: ports::Ports,
    /// Egress networks of networked sandboxes.
    networks: crate::network::Networks,
}

/// The points where `crash_at` (testing only) kills the server, in the
/// order an operation reaches them. `docs/recovery.md` says what a restart
/// does after each.
pub const CRASH_POINTS: &[&str] = &[
    "create:recorded",
    "create:vm_started",
    "create:agent_ready",
    "pause:pausing",
    "pause:vm_paused",
    "pause:snapshot_written",
    "pause:vm_stopped",
    "pause:workspace_updated",
    "resume:resuming",
    "resume:restored",
    "resume:agent_ready",
    "destroy:stopping",
    "destroy:vm_stopped",
];

impl SandboxManager {
    /// Kills the server with SIGKILL when `crash_at` names `point` (a
    /// crash-consistency test's injected crash; a no-op otherwise).
    pub(super) fn crash_point(&self, point: &'static str) {
        debug_assert!(CRASH_POINTS.contains(&point), "{point} is not listed");
        if self.config.crash_at.as_deref() == Some(point) {
            tracing::error!(point, "crash_at reached: killing the server");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// NotFound unless `id` is still registered: called once a sandbox's
    /// lifecycle lock is held, since a destroy may have finished while the
    /// caller waited for it.
    pub(super) fn still_registered(&self, id: &SandboxId) -> Result<()> {
        if self.registry.contains(id) {
            return Ok(());
        }
        Err(ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Opens the base directory, reconciles state files with running
    /// processes (re-attaching to live VMs, marking dead ones, removing
    /// stale sockets and orphaned VMM processes) and starts the health
    /// checker. Workspace data is never deleted here.
    ///
    /// # Errors
    /// When the base directory cannot be created or read.
    pub async fn open(
        config: Arc<ManagerConfig>,
        vmm: Arc<dyn Vmm>,
        accel: String,
    ) -> Result<Arc<Self>> {
        if let Some(point) = &config.crash_at {
            if !CRASH_POINTS.contains(&point.as_str()) {
                return Err(ManagerError::InvalidInput(format!(
                    "crash_at {point:?} is not a crash point; one of: {}",
                    CRASH_POINTS.join(", ")
                )));
            }
            tracing::warn!(point = %point, "crash_at is set: the server will kill itself there (testing only)");
        }
        let store = Store::new(&config.base_dir);
        store.create_dirs()?;
        let memory_budget_mb = if config.memory_budget_mb > 0 {
            config.memory_budget_mb
        } else {
            host::host_memory_mb()
                .saturating_sub(config.host_reserve_mb)
                .max(256)
        };
        let registry = Registry::new(CapacityLimits {
            max_sandboxes: config.max_sandboxes,
            memory_budget_mb,
            overcommit: config.memory_overcommit,
        });
        let cgroups = crate::cgroup::Cgroups::detect(config.cgroups, &config.base_dir);
        if cgroups.active() {
            tracing::info!(cgroups = %cgroups.describe(), "host limits per sandbox");
        } else {
            tracing::warn!(cgroups = %cgroups.describe(), "sandboxes run without host limits (memory, CPU, pids)");
        }
        let networks = crate::network::Networks::new(crate::network::NetworkConfig {
            pool: config.network_pool.parse().map_err(|e| {
                ManagerError::InvalidInput(format!("network_pool {:?} {e}", config.network_pool))
            })?,
            uplink_netns: config.network_uplink_netns.clone(),
            dns_upstream: config
                .network_dns_upstream
                .as_deref()
                .and_then(|s| s.parse().ok()),
        });
        let manager = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            metrics: Arc::default(),
            cgroups,
            templates: template::Templates::default(),
            ports: ports::Ports::default(),
            networks,
            config,
            vmm,
            accel,
            store,
            registry,
            lifetimes: Arc::new(tokio::sync::Notify::new()),
            expiring: std::sync::Mutex::new(std::collections::HashSet::new()),
        });
        // Left by a fork that a crash interrupted; no child needs it.
        let _ = std::fs::remove_dir_all(manager.store.layout().forks_dir());
        manager.recover().await;
        manager.kill_orphans();
        manager.check_workspaces();
        let period = Duration::from_secs(manager.config.health_check_interval_sec.max(1));
        tokio::spawn(recover::health_loop(Arc::downgrade(&manager), period));
        tokio::spawn(lifetime::lifetime_loop(Arc::downgrade(&manager)));
        let reap_every = Duration::from_secs(manager.config.reaper_interval_sec.max(1));
        tokio::spawn(govern::reaper_loop(Arc::downgrade(&manager), reap_every));
        Ok(manager)
    }

    /// The configuration in force.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Counters and histograms.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Host limits in force, described.
    pub fn cgroups(&self) -> &crate::cgroup::Cgroups {
        &self.cgroups
    }

    /// The backend in use.
    pub fn backend(&self) -> VmmKind {
        self.vmm.kind()
    }

    /// Typed access to the records on disk.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The exec timeout rules of this configuration.
    pub fn exec_rules(&self) -> ExecRules {
        ExecRules {
            default: self.config.exec_timeout(),
            max: self.config.max_exec_timeout(),
        }
    }

    /// The request limits of this configuration.
    pub fn limits(&self) -> Limits {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Limits {
            min_memory_mb: self.config.min_memory_mb,
            max_memory_mb: self.config.max_memory_mb,
            default_memory_mb: self.config.default_memory_mb,
            max_vcpu: self.config.max_vcpu,
            default_vcpu: self.config.default_vcpu,
            default_exec_timeout_ms: ms(self.config.exec_timeout()),
            max_exec_timeout_ms: ms(self.config.max_exec_timeout()),
            max_sandbox_timeout_sec: self.config.max_sandbox_timeout_sec,
            disk_size_mb: self.config.disk_size_mb,
            default_template: self.config.default_template.clone(),
        }
    }

    fn image(&self, template: &str) -> Result<Image> {
        Image::find(self.store.layout(), template)
    }

    /// One sandbox.
    ///
    /// # Errors
    /// NotFound.
    pub async fn get(&self, id: &SandboxId) -> Result<SandboxInfo> {
        Ok(self.registry.require(id)?.info())
    }

    /// All sandboxes, oldest first.
    pub async fn list(&self) -> Vec<SandboxInfo> {
        let mut out: Vec<_> = self.registry.all().iter().map(|sb| sb.info()).collect();
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.sandbox_id.cmp(&b.sandbox_id))
        });
        out
    }

    /// Capacity figures.
    pub async fn capacity(&self) -> Capacity {
        let usage = self.registry.usage();
        let limits = self.registry.limits();
        let counted = usage.counted_mb(limits.overcommit);
        let available = limits.memory_budget_mb.saturating_sub(counted);
        let (vmm_rss_mb, vmm_pss_mb) = self.vmm_memory_mb();
        Capacity {
            active_sandboxes: usage.active,
            paused_sandboxes: usage.paused,
            max_sandboxes: limits.max_sandboxes,
            can_create_default: usage.active < limits.max_sandboxes
                && available >= u64::from(self.config.default_memory_mb),
            memory_used_mb: usage.memory_mb,
            memory_available_mb: available,
            memory_budget_mb: limits.memory_budget_mb,
            backend: self.vmm.kind(),
            accel: self.accel.clone(),
            vmm_rss_mb,
            vmm_pss_mb,
            memory_measured_mb: usage.measured_mb,
            memory_overcommit: limits.overcommit,
            cgroups: self.cgroups.version().to_owned(),
            disk_free_mb: host::free_space_mb(&self.store.layout().workspaces_dir()),
        }
    }

    /// The guest of sandbox `id`, for one request (see [`crate::guest::Guest`]).
    pub fn guest(&self, id: &SandboxId) -> crate::guest::Guest {
        crate::guest::Guest::new(id.clone(), self.registry.get(id), self.exec_rules())
            .with_auto_resume(self.me.clone())
    }
}
