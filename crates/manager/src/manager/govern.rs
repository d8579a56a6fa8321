//! Resource governance: admission with eviction, disk-space admission, the
//! idle pause, host limits (cgroups), usage samples, the reaper and the
//! figures behind `/metrics`.
//!
//! - **Eviction** (`eviction = pause-lru`): when a create or resume does not
//!   fit, the running sandbox used least recently that has no guest call
//!   and no stream in flight is paused (nothing is lost) and admission is
//!   tried again; 503 only when no such sandbox is left.
//! - **Idle pause**: a running sandbox with no guest call, no attached
//!   stream and no API activity for its idle timeout is paused. API
//!   activity is every guest call (exec, files, processes), a create,
//!   resume or timeout change; reading its info or metrics is not.
//! - **Reaper**: every `reaper_interval_sec`, removes what no record names
//!   (see [`SandboxManager::reap`]).

use super::SandboxManager;
use crate::cgroup::Limits;
use crate::metrics::{inc, Gauges, PauseReason};
use crate::registry::Admission;
use crate::sandbox::{holds_vm, lock, Sandbox};
use crate::store::{remove_sockets, SandboxRecord};
use crate::{host, ExecSpec, GuestOps as _, ManagerError, Result, SandboxMetrics, SandboxStatus};
use locale2b_config::Eviction;
use locale2b_protocol::{SandboxId, WorkspaceId};
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// The sandbox id named by a path `<sandboxes_dir>/<id>/…` in a VMM's
/// command line.
fn owner_in_cmdline(cmdline: &str, sandboxes_dir: &str) -> Option<SandboxId> {
    let marker = format!("{}/", sandboxes_dir.trim_end_matches('/'));
    let at = cmdline.find(&marker)? + marker.len();
    let rest = &cmdline[at..];
    let end = rest.find(['/', '\0', ',', ' ', '=']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl SandboxManager {
    /// Admits `sb` (see [`crate::registry::Registry::admit`]), pausing the
    /// least recently used idle sandboxes first when capacity is exhausted
    /// and eviction is on.
    ///
    /// # Errors
    /// AtCapacity when nothing (more) can be evicted.
    pub(super) async fn admit(&self, sb: &Arc<Sandbox>, how: Admission) -> Result<()> {
        let mut tried: HashSet<SandboxId> = HashSet::new();
        loop {
            let err = match self.registry.admit(sb, how) {
                Ok(()) => return Ok(()),
                Err(e @ ManagerError::AtCapacity { .. }) => e,
                Err(e) => return Err(e),
            };
            let victim = (self.config.eviction == Eviction::PauseLru)
                .then(|| self.eviction_candidate(&sb.id, &tried))
                .flatten();
            let Some(victim) = victim else {
                inc(&self.metrics.capacity_refusals);
                return Err(match err {
                    ManagerError::AtCapacity {
                        reason,
                        retry_after,
                    } if self.config.eviction == Eviction::PauseLru => ManagerError::AtCapacity {
                        reason: format!(
                            "{reason} (no running sandbox could be paused to make room: each has a call or stream in flight)"
                        ),
                        retry_after,
                    },
                    other => other,
                });
            };
            tried.insert(victim.id.clone());
            let v = victim.clone();
            let still_idle =
                move |r: &SandboxRecord| r.status == SandboxStatus::Running && !v.in_use();
            match self
                .pause_when(&victim.id, PauseReason::Eviction, still_idle)
                .await
            {
                Ok(Some(_)) => {
                    info!(sandbox_id = %victim.id, for_sandbox = %sb.id, "evicted: paused the least recently used sandbox to make room");
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(sandbox_id = %victim.id, error = %crate::error::chain(&e), "eviction pause failed; trying another sandbox");
                }
            }
        }
    }

    /// The running sandbox used least recently with nothing in flight.
    fn eviction_candidate(
        &self,
        except: &SandboxId,
        tried: &HashSet<SandboxId>,
    ) -> Option<Arc<Sandbox>> {
        let expiring = lock(&self.expiring).clone();
        self.registry
            .all()
            .into_iter()
            .filter(|s| {
                &s.id != except
                    && !tried.contains(&s.id)
                    && !expiring.contains(&s.id)
                    && s.status() == SandboxStatus::Running
                    && !s.in_use()
            })
            .min_by_key(|s| s.last_used())
    }

    /// Refuses a new disk of `disk_mb` that the host's free space (less
    /// the configured margin) could not hold.
    ///
    /// # Errors
    /// InsufficientStorage with the figures.
    pub(super) fn check_disk_space(&self, disk_mb: u64) -> Result<()> {
        let dir = self.store.layout().workspaces_dir();
        let Some(free) = host::free_space_mb(&dir) else {
            return Ok(());
        };
        let margin = self.config.disk_free_margin_mb;
        if free < disk_mb.saturating_add(margin) {
            return Err(ManagerError::InsufficientStorage(format!(
                "not enough host disk for a {disk_mb} MiB workspace disk: {free} MiB free under {}, {margin} MiB of which are kept free (disk_free_margin_mb); ask for a smaller disk_size_mb or free host disk",
                dir.display()
            )));
        }
        Ok(())
    }

    /// Puts the VMM `pid` of `sb` into its cgroup; without cgroups, or when
    /// that fails, the sandbox runs without host limits (logged).
    pub(super) fn confine(&self, sb: &Sandbox, pid: u32) {
        if !self.cgroups.active() {
            return;
        }
        let r = sb.record();
        let c = &self.config;
        let limits = Limits::for_vm(
            r.memory_mb,
            r.vcpu_count,
            c.cgroup_memory_overhead_mb,
            c.cgroup_cpu_extra_pct,
            c.cgroup_pids_max,
        );
        match self.cgroups.place(&sb.id, pid, limits) {
            Ok(()) => {
                tracing::debug!(sandbox_id = %sb.id, pid, memory_bytes = limits.memory_bytes, cpu_quota_us = limits.cpu_quota_us, "VMM confined")
            }
            Err(e) => {
                warn!(sandbox_id = %sb.id, pid, error = %e, "cannot put the VMM in its cgroup; it runs without host limits")
            }
        }
    }

    /// Removes the cgroup of a sandbox whose VMM is gone.
    pub(super) fn release_cgroup(&self, id: &SandboxId) {
        self.cgroups.remove(id);
    }

    /// The idle timeout of a record, if it has one.
    pub(super) fn idle_timeout_of(&self, r: &SandboxRecord) -> Option<Duration> {
        let secs = r.idle_timeout_sec.unwrap_or(self.config.idle_timeout_sec);
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// Whether `sb` has been idle for its whole idle timeout.
    pub(super) fn is_idle(&self, sb: &Sandbox, r: &SandboxRecord) -> bool {
        r.status == SandboxStatus::Running
            && !sb.in_use()
            && self
                .idle_timeout_of(r)
                .is_some_and(|t| sb.last_used().elapsed() >= t)
    }

    /// Pauses `id` if it is still idle once its lifecycle lock is held.
    pub(super) async fn idle_pause(self: Arc<Self>, id: SandboxId) {
        if let Some(sb) = self.registry.get(&id) {
            let me = self.clone();
            let s = sb.clone();
            let still_idle = move |r: &SandboxRecord| me.is_idle(&s, r);
            match self.pause_when(&id, PauseReason::Idle, still_idle).await {
                Ok(Some(_)) => info!(sandbox_id = %id, "sandbox idle; paused"),
                Ok(None) => {}
                Err(e) => {
                    warn!(sandbox_id = %id, error = %crate::error::chain(&e), "idle pause failed; the sandbox keeps running");
                    // Try again after another idle period.
                    sb.touch();
                }
            }
        }
        lock(&self.expiring).remove(&id);
        self.lifetimes.notify_one();
    }

    /// Samples the CPU time and resident memory of every VMM.
    pub(super) fn sample_usage(&self) {
        let hz = host::clock_ticks_per_sec();
        for sb in self.registry.all() {
            match sb.record().process {
                Some(p) if holds_vm(sb.status()) => {
                    if let Some((ticks, rss_kb)) = host::process_usage(p.pid) {
                        let pss_kb = host::process_pss_kb(p.pid).unwrap_or(rss_kb);
                        sb.sample_usage(ticks, rss_kb, pss_kb, hz);
                    }
                }
                _ => sb.clear_usage(),
            }
        }
    }

    /// One reaper pass: removes, logging each, VMM processes of this base
    /// directory whose sandbox no record names (or whose sandbox is paused
    /// or dead), run directories and cgroups of unknown sandboxes, sockets
    /// of sandboxes without a VM, snapshots no workspace names, and paused
    /// sandboxes past `paused_retention_sec`. Never a workspace that a
    /// record names.
    pub async fn reap(&self) {
        let layout = self.store.layout();
        let sandboxes_dir = layout.sandboxes_dir();
        let dir_str = sandboxes_dir.to_string_lossy().into_owned();
        for pid in host::vmm_processes_under(&sandboxes_dir) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let owner = owner_in_cmdline(&cmdline, &dir_str);
            let orphan = match owner.as_ref().and_then(|id| self.registry.get(id)) {
                None => true,
                Some(sb) => matches!(sb.status(), SandboxStatus::Paused | SandboxStatus::Dead),
            };
            if orphan {
                warn!(
                    pid,
                    sandbox_id = owner.as_ref().map_or("-", |o| o.as_str()),
                    "reaper: killed orphaned VMM process"
                );
                host::kill_pid(pid);
                inc(&self.metrics.reaped);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&sandboxes_dir) {
            for e in entries.flatten() {
                let Some(id) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<SandboxId>().ok())
                else {
                    continue;
                };
                match self.registry.get(&id) {
                    None => {
                        if std::fs::remove_dir_all(e.path()).is_ok() {
                            warn!(sandbox_id = %id, "reaper: removed the run directory of an unknown sandbox");
                            inc(&self.metrics.reaped);
                        }
                    }
                    Some(sb) if !holds_vm(sb.status()) => remove_sockets(&e.path()),
                    Some(_) => {}
                }
            }
        }
        for name in self.cgroups.names() {
            let Ok(id) = name.parse::<SandboxId>() else {
                continue;
            };
            let gone = self
                .registry
                .get(&id)
                .is_none_or(|sb| !holds_vm(sb.status()));
            if gone && self.cgroups.remove(&id) {
                info!(sandbox_id = %id, "reaper: removed the cgroup of a sandbox without a VM");
                inc(&self.metrics.reaped);
            }
        }
        self.reap_snapshots();
        self.expire_paused().await;
    }

    /// Removes snapshot directories that their workspace does not name,
    /// skipping workspaces whose sandbox is in a lifecycle operation.
    fn reap_snapshots(&self) {
        let layout = self.store.layout();
        let Ok(entries) = std::fs::read_dir(layout.workspaces_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let Some(ws_id) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<WorkspaceId>().ok())
            else {
                continue;
            };
            let Some(ws) = self.store.read_workspace(&ws_id) else {
                continue;
            };
            let sb = ws.sandbox_id.as_ref().and_then(|id| self.registry.get(id));
            // Hold the sandbox's lifecycle lock so no pause writes meanwhile.
            let _guard = match &sb {
                Some(sb) => match sb.lifecycle.try_lock() {
                    Ok(g) => Some(g),
                    Err(_) => continue,
                },
                None => None,
            };
            let pending = sb.as_ref().and_then(|s| s.record().pending_snapshot);
            let Ok(snaps) = std::fs::read_dir(layout.snapshots_dir(&ws_id)) else {
                continue;
            };
            for s in snaps.flatten() {
                let name = s.file_name().to_string_lossy().into_owned();
                if Some(&name) == ws.snapshot_id.as_ref() || Some(&name) == pending.as_ref() {
                    continue;
                }
                if std::fs::remove_dir_all(s.path()).is_ok() {
                    info!(workspace_id = %ws_id, snapshot = %name, "reaper: removed a snapshot its workspace does not name");
                    inc(&self.metrics.reaped);
                }
            }
        }
    }

    /// Destroys paused sandboxes whose retention ran out.
    async fn expire_paused(&self) {
        let retention = self.config.paused_retention_sec;
        if retention == 0 {
            return;
        }
        let expired = move |r: &SandboxRecord| {
            r.status == SandboxStatus::Paused
                && r.paused_at
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .is_some_and(|at| at + Duration::from_secs(retention) <= SystemTime::now())
        };
        for sb in self.registry.all() {
            if !expired(&sb.record()) {
                continue;
            }
            match self.destroy_when(&sb.id, expired).await {
                Ok(true) => {
                    info!(sandbox_id = %sb.id, retention_sec = retention, "paused sandbox past its retention; destroyed");
                    inc(&self.metrics.retention_destroys);
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(sandbox_id = %sb.id, error = %crate::error::chain(&e), "destroy at the end of the retention failed")
                }
            }
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut by_status: Vec<(&'static str, u64)> = [
            SandboxStatus::Starting,
            SandboxStatus::Running,
            SandboxStatus::Pausing,
            SandboxStatus::Paused,
            SandboxStatus::Resuming,
            SandboxStatus::Stopping,
            SandboxStatus::Dead,
        ]
        .into_iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        let mut per_sandbox = Vec::new();
        let (mut vmm_rss_mb, mut vmm_pss_mb) = (0, 0);
        for sb in self.registry.all() {
            let status = sb.status();
            if let Some(slot) = by_status.iter_mut().find(|(n, _)| *n == status.as_str()) {
                slot.1 += 1;
            }
            if holds_vm(status) {
                let u = sb.usage();
                vmm_rss_mb += u.rss_mb;
                vmm_pss_mb += u.pss_mb;
                per_sandbox.push((sb.id.to_string(), u.rss_mb, u.cpu_pct));
            }
        }
        per_sandbox.sort_by(|a, b| a.0.cmp(&b.0));
        let usage = self.registry.usage();
        let limits = self.registry.limits();
        self.metrics.render(&Gauges {
            by_status,
            max_sandboxes: u64::from(limits.max_sandboxes),
            memory_nominal_mb: usage.memory_mb,
            memory_budget_mb: limits.memory_budget_mb,
            vmm_rss_mb,
            vmm_pss_mb,
            per_sandbox,
        })
    }

    /// Resident memory and PSS of all VMMs (last samples), MiB.
    pub(super) fn vmm_memory_mb(&self) -> (u64, u64) {
        self.registry
            .all()
            .iter()
            .filter(|s| holds_vm(s.status()))
            .map(|s| s.usage())
            .fold((0, 0), |(r, p), u| (r + u.rss_mb, p + u.pss_mb))
    }

    /// Figures of one sandbox (see [`SandboxMetrics`]). Reading them is
    /// not activity: it neither resets the idle timeout nor resumes.
    ///
    /// # Errors
    /// NotFound.
    pub async fn sandbox_metrics(&self, id: &SandboxId) -> Result<SandboxMetrics> {
        let sb = self.registry.require(id)?;
        let r = sb.record();
        let u = sb.usage();
        let vcpus = f64::from(r.vcpu_count.max(1));
        let mut m = SandboxMetrics {
            sandbox_id: id.clone(),
            status: r.status,
            timestamp: crate::store::now_rfc3339(),
            cpu_count: r.vcpu_count,
            cpu_used_pct: (u.cpu_pct / vcpus).clamp(0.0, 100.0),
            memory_total_mb: u64::from(r.memory_mb),
            memory_used_mb: None,
            vmm_rss_mb: u.rss_mb,
            vmm_pss_mb: u.pss_mb,
            cgroup_memory_mb: self.cgroups.memory_current(id).map(|b| b / (1024 * 1024)),
            disk_total_mb: r.disk_size_mb,
            disk_used_mb: None,
            disk_allocated_mb: self.store.workspace_disk_usage(&r.workspace_id) / (1024 * 1024),
            idle_sec: sb.last_used().elapsed().as_secs(),
            calls_in_flight: sb.calls_in_flight() as u64,
            streams_attached: sb.streams_attached() as u64,
        };
        if r.status == SandboxStatus::Running {
            let guest =
                crate::guest::Guest::new(id.clone(), Some(sb.clone()), self.exec_rules()).quiet();
            let spec = ExecSpec {
                command: "stat -f -c '%S %b %f' /workspace; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo".into(),
                timeout: Some(Duration::from_secs(10)),
                ..ExecSpec::default()
            };
            match guest.exec(spec).await {
                Ok(out) => {
                    let text = &out.stdout;
                    let (disk, mem) = parse_guest_figures(text);
                    m.disk_used_mb = disk;
                    m.memory_used_mb = mem;
                }
                Err(e) => {
                    tracing::debug!(sandbox_id = %id, error = %crate::error::chain(&e), "guest figures unavailable")
                }
            }
        }
        Ok(m)
    }
}

/// (disk used MiB, memory used MiB) from the output of the metrics command.
fn parse_guest_figures(text: &str) -> (Option<u64>, Option<u64>) {
    let mut lines = text.lines();
    let disk = lines.next().and_then(|l| {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        match v[..] {
            [bsize, blocks, free] => Some(blocks.saturating_sub(free) * bsize / (1024 * 1024)),
            _ => None,
        }
    });
    let kb = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mem = match (kb("MemTotal:"), kb("MemAvailable:")) {
        (Some(t), Some(a)) => Some(t.saturating_sub(a) / 1024),
        _ => None,
    };
    (disk, mem)
}

/// Runs the reaper every `period` while the manager lives.
pub(super) async fn reaper_loop(manager: Weak<SandboxManager>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(m) = manager.upgrade() else { return };
        m.reap().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn owner_is_read_from_a_vmm_command_line() {
        let dir = "/var/lib/l2b/sandboxes";
        let cmd = "qemu-system-x86_64\0-chardev\0socket,id=c,path=/var/lib/l2b/sandboxes/sb-abc123/qmp.sock,server=on\0";
        assert_eq!(owner_in_cmdline(cmd, dir).unwrap().as_str(), "sb-abc123");
        assert!(owner_in_cmdline("qemu-system-x86_64\0-m\x00256", dir).is_none());
    }

    #[test]
    fn guest_figures_are_parsed() {
        let out = "4096 262144 131072\nMemTotal:         250000 kB\nMemAvailable:     200000 kB\n";
        assert_eq!(parse_guest_figures(out), (Some(512), Some(48)));
        assert_eq!(parse_guest_figures("garbage"), (None, None));
    }
}
