//! Start-up reconciliation of records with the processes that really exist,
//! the orphan scan, and the periodic health check that marks sandboxes whose
//! VM died.

use super::SandboxManager;
use crate::sandbox::Sandbox;
use crate::snapshot::SnapshotManifest;
use crate::store::{remove_sockets, SandboxRecord};
use crate::{host, SandboxStatus};
use locale2b_vmm::{VmHandle, VmStatus};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a re-attached agent has to answer after a server restart.
const REATTACH_WAIT: Duration = Duration::from_secs(10);

impl SandboxManager {
    pub(super) async fn recover(&self) {
        for id in self.store.sandbox_ids() {
            match self.store.read_sandbox(&id) {
                Ok(record) => {
                    let ports = !record.exposed_ports.is_empty();
                    let net = record.net_slot.map(|s| (s, record.network.clone()));
                    if let Some((slot, _)) = &net {
                        self.networks.claim(*slot);
                    }
                    self.recover_one(record).await;
                    if let Some((slot, policy)) = net {
                        self.recover_network(&id, slot, &policy).await;
                    }
                    if ports {
                        self.reopen_ports(&id).await;
                    }
                }
                Err(err) => {
                    warn!(sandbox_id = %id, error = %crate::error::chain(&err), "unreadable state.json; leaving the directory alone");
                }
            }
        }
    }

    /// A recovered sandbox's network: its rules and resolver again for a
    /// running one (the namespace outlived the server), nothing for a
    /// paused one (its resume does it), removed for one that is gone.
    async fn recover_network(
        &self,
        id: &locale2b_protocol::SandboxId,
        slot: u32,
        policy: &crate::network::NetworkPolicy,
    ) {
        match self.registry.get(id).map(|sb| sb.record().status) {
            Some(SandboxStatus::Running) => {
                if let Err(e) = self.networks.up(id, slot, policy, false).await {
                    warn!(sandbox_id = %id, error = %e, "cannot restore the sandbox's network after a restart");
                }
            }
            Some(_) => {}
            None => self.networks.down(id, Some(slot)).await,
        }
    }

    /// Brings one record in line with what survived, by the status it was
    /// left in (each lifecycle step persists the status before acting, so
    /// the status says how far the step got):
    ///
    /// - `starting`: the create never answered; its VM (if any) is killed
    ///   and the sandbox removed, a named workspace kept untouched.
    /// - `stopping`: the destroy is finished.
    /// - `running`, `pausing`, `resuming` with the VMM alive: re-attached
    ///   and resumed (an interrupted pause is rolled back, its VM thawed),
    ///   so the guest's processes and memory carry on. An agent that does
    ///   not answer in time does not make it dead: the sandbox stays
    ///   running and calls retry the agent (an interrupted resume goes
    ///   back to `paused`).
    /// - `pausing` with the VMM gone and a complete snapshot recorded: the
    ///   pause is completed. `resuming` with the VMM gone: `paused`.
    /// - Only a VM that is gone without a snapshot to come back from is
    ///   `dead`; its workspace disk is kept.
    async fn recover_one(&self, mut record: SandboxRecord) {
        use SandboxStatus as S;
        let id = record.sandbox_id.clone();
        let previous = record.status;
        let sandbox_dir = self.store.layout().sandbox_dir(&id);
        match previous {
            S::Starting => return self.abandon_create(&record),
            S::Stopping => return self.finish_destroy(&record).await,
            S::Paused | S::Dead => {
                remove_sockets(&sandbox_dir);
                let sb = Sandbox::new(record, self.store.clone(), None, None);
                self.registry.insert_recovered(Arc::new(sb));
                return;
            }
            S::Running | S::Pausing | S::Resuming => {}
        }
        let mut vm: Option<Box<dyn VmHandle>> = None;
        let mut client = None;
        match self.attach(&record).await {
            Ok(handle) => {
                if previous != S::Running {
                    // Thaw a VM stopped for a snapshot or not yet started
                    // after a restore (a no-op on a running one).
                    if let Err(e) = handle.resume().await {
                        warn!(sandbox_id = %id, error = %crate::error::chain(&e), "cannot resume the re-attached VM");
                    }
                }
                let c = self.new_client(Some(handle.vsock_path().to_path_buf()));
                let answered = c.wait_ready(Instant::now() + REATTACH_WAIT).await;
                match (&answered, previous) {
                    (Err(e), S::Resuming) => {
                        let _ = handle.kill().await;
                        record.status = S::Paused;
                        record.process = None;
                        record.error = Some(format!(
                            "the resume was interrupted by a server restart and the restored guest did not answer ({e}); resume it again"
                        ));
                        remove_sockets(&sandbox_dir);
                    }
                    _ => {
                        if previous == S::Pausing {
                            info!(sandbox_id = %id, "pause interrupted by a restart: rolled back, the VM runs on");
                        }
                        record.status = S::Running;
                        record.pending_snapshot = None;
                        record.error = answered.as_ref().err().map(|e| {
                            format!("the agent did not answer after the server restart ({e}); calls retry it")
                        });
                        if let Err(e) = &answered {
                            warn!(sandbox_id = %id, error = %crate::error::chain(&e), "re-attached VM is alive but its agent is silent; kept running");
                        } else {
                            info!(sandbox_id = %id, "re-attached to running VM");
                        }
                        vm = Some(handle);
                        client = Some(c);
                    }
                }
            }
            Err(reason) => {
                record.process = None;
                remove_sockets(&sandbox_dir);
                let snapshot = record
                    .pending_snapshot
                    .clone()
                    .filter(|snap| self.snapshot_is_complete(&record, snap));
                match (previous, snapshot) {
                    (S::Pausing, Some(snap)) => {
                        self.complete_pause(&record, &snap);
                        self.prune_snapshots(&record.workspace_id, &snap);
                        record.status = S::Paused;
                        record.error = None;
                        record.end_at = None;
                        info!(sandbox_id = %id, snapshot_id = %snap, "pause interrupted by a restart after its snapshot: completed");
                    }
                    (S::Resuming, _) => {
                        record.status = S::Paused;
                        record.error = Some(format!(
                            "the resume was interrupted by a server restart ({reason}); resume it again"
                        ));
                    }
                    _ => {
                        record.status = S::Dead;
                        record.error = Some(format!(
                            "VM is gone (found after server restart: {reason}); last console lines: {}",
                            self.store.console_tail(&id, 10)
                        ));
                        warn!(sandbox_id = %id, reason, "sandbox VM not running after restart");
                    }
                }
                record.pending_snapshot = None;
            }
        }
        record.updated_at = crate::store::now_rfc3339();
        let _ = self.store.write_sandbox(&record);
        let sb = Sandbox::new(record, self.store.clone(), vm, client);
        self.registry.insert_recovered(Arc::new(sb));
    }

    /// Re-attaches to the VMM a record names, if it still runs.
    async fn attach(&self, record: &SandboxRecord) -> Result<Box<dyn VmHandle>, String> {
        match (&record.process, self.image(&record.template)) {
            (Some(p), Ok(image)) if p.kind == self.vmm.kind() => {
                let spec = self.vm_spec(record, &image);
                self.vmm.attach(&spec, p).await.map_err(|e| e.to_string())
            }
            (Some(p), Ok(_)) => Err(format!(
                "VM runs under {} but the server uses {}",
                p.kind,
                self.vmm.kind()
            )),
            (None, _) => Err("no VMM process was recorded".to_owned()),
            (_, Err(e)) => Err(e.to_string()),
        }
    }

    /// Whether snapshot `snap` of the record's workspace was written to the
    /// end (its directory was renamed into place with its manifest, which
    /// names this sandbox). Its checksums are checked when it is resumed.
    fn snapshot_is_complete(&self, record: &SandboxRecord, snap: &str) -> bool {
        let dir = self
            .store
            .layout()
            .snapshots_dir(&record.workspace_id)
            .join(snap);
        crate::store::read_json::<SnapshotManifest>(&dir.join(crate::snapshot::MANIFEST))
            .is_ok_and(|m| m.sandbox_id == record.sandbox_id.as_str())
    }

    /// A create the restart interrupted: it never answered, so nothing of
    /// it stays but a named workspace (untouched).
    fn abandon_create(&self, record: &SandboxRecord) {
        let id = &record.sandbox_id;
        if let Some(p) = &record.process {
            host::kill_process(p);
        }
        self.remove_sandbox_dir(id);
        if let Some(ws) = self.store.read_workspace(&record.workspace_id) {
            if ws.ephemeral && ws.sandbox_id.as_ref().is_none_or(|s| s == id) {
                let _ =
                    std::fs::remove_dir_all(self.store.layout().workspace_dir(&ws.workspace_id));
            }
        }
        info!(sandbox_id = %id, "create interrupted by a restart: removed");
    }

    /// A destroy the restart interrupted: finished, with the guest asked to
    /// flush and power off first if its VM still runs.
    async fn finish_destroy(&self, record: &SandboxRecord) {
        let id = &record.sandbox_id;
        match self.attach(record).await {
            Ok(vm) => {
                let c = self.new_client(Some(vm.vsock_path().to_path_buf()));
                let _ =
                    tokio::time::timeout(super::destroy::AGENT_SHUTDOWN_WAIT, c.shutdown()).await;
                if vm.shutdown(self.config.shutdown_grace()).await.is_err() {
                    let _ = vm.kill().await;
                }
            }
            Err(_) => {
                if let Some(p) = &record.process {
                    host::kill_process(p);
                }
            }
        }
        self.remove_sandbox_dir(id);
        self.release_workspace(id, &record.workspace_id);
        info!(sandbox_id = %id, "destroy interrupted by a restart: finished");
    }

    /// Reports workspace directories without metadata (left in place: they
    /// may hold data) and removes snapshot directories that no workspace
    /// refers to (incomplete `.tmp` ones from a crash during pause, and ones
    /// superseded by a newer snapshot).
    pub(super) fn check_workspaces(&self) {
        let layout = self.store.layout();
        let Ok(entries) = std::fs::read_dir(layout.workspaces_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<locale2b_protocol::WorkspaceId>().ok())
            else {
                warn!(path = %e.path().display(), "unexpected entry in workspaces dir; left in place");
                continue;
            };
            let Some(ws) = self.store.read_workspace(&id) else {
                warn!(workspace_id = %id, "orphaned workspace directory (no workspace.json); left in place");
                continue;
            };
            let owner_lives = ws
                .sandbox_id
                .as_ref()
                .is_some_and(|sid| self.registry.contains(sid));
            if !owner_lives && ws.ephemeral {
                // The generated workspace of a sandbox that no longer
                // exists (a destroy or create a crash cut short): nobody
                // can reach it again.
                info!(workspace_id = %id, "removing the generated workspace of a sandbox that is gone");
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
            if !owner_lives && ws.sandbox_id.is_some() {
                self.store.update_workspace(&id, |ws| ws.sandbox_id = None);
            }
            let Ok(snaps) = std::fs::read_dir(layout.snapshots_dir(&id)) else {
                continue;
            };
            for snap in snaps.flatten() {
                let name = snap.file_name().to_string_lossy().into_owned();
                if ws.snapshot_id.as_deref() != Some(name.as_str()) {
                    warn!(workspace_id = %id, snapshot = %name, "removing snapshot directory no workspace refers to");
                    let _ = std::fs::remove_dir_all(snap.path());
                }
            }
        }
    }

    /// Kills VMM processes that run from our sandboxes or templates
    /// directory but belong to no sandbox we track (left behind by a
    /// crash).
    pub(super) fn kill_orphans(&self) {
        let known: Vec<u32> = self
            .registry
            .all()
            .iter()
            .filter_map(|sb| sb.record().process.map(|p| p.pid))
            .collect();
        let layout = self.store.layout();
        // Template VMs live only while a build runs; at start none does.
        let found = host::vmm_processes_under(&layout.sandboxes_dir())
            .into_iter()
            .chain(host::vmm_processes_under(&layout.templates_dir()));
        for pid in found {
            if known.contains(&pid) || pid == std::process::id() {
                continue;
            }
            warn!(pid, "killing orphaned VMM process");
            host::kill_pid(pid);
        }
    }

    /// Marks running sandboxes whose VM exited as dead, with the console tail.
    async fn health_check(&self) {
        self.sample_usage();
        let max_console = self.config.console_log_max_kb.saturating_mul(1024);
        for sb in self.registry.all() {
            if crate::sandbox::holds_vm(sb.status()) {
                match self.store.cut_console(&sb.id, max_console) {
                    Ok(true) => {
                        tracing::info!(sandbox_id = %sb.id, max_kb = self.config.console_log_max_kb, "console log cut (the newer half is in console.log.1)")
                    }
                    Ok(false) => {}
                    Err(e) => warn!(sandbox_id = %sb.id, error = %e, "cannot cut the console log"),
                }
            }
            if sb.status() != SandboxStatus::Running {
                continue;
            }
            // Skip sandboxes busy with a lifecycle operation.
            let Ok(slot) = sb.lifecycle.try_lock() else {
                continue;
            };
            let Some(vm) = slot.as_ref() else { continue };
            if let VmStatus::Exited { reason } = vm.status().await {
                let tail = self.store.console_tail(&sb.id, 10);
                warn!(sandbox_id = %sb.id, reason, console = %tail, "VM died");
                drop(slot);
                sb.drop_client();
                sb.update(|r| {
                    r.process = None;
                    r.status = SandboxStatus::Dead;
                    r.error = Some(format!(
                        "VM exited unexpectedly ({reason}); last console lines: {tail}"
                    ));
                });
                remove_sockets(&self.store.layout().sandbox_dir(&sb.id));
                self.release_cgroup(&sb.id);
            }
        }
    }
}

/// Runs the health check every `period` while the manager lives.
pub(super) async fn health_loop(manager: Weak<SandboxManager>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = manager.upgrade() else { return };
        m.health_check().await;
    }
}
