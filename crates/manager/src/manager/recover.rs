//! Start-up reconciliation of records with the processes that really exist,
//! the orphan scan, and the periodic health check that marks sandboxes whose
//! VM died.

use super::SandboxManager;
use crate::sandbox::{holds_vm, Sandbox};
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
                Ok(record) => self.recover_one(record).await,
                Err(err) => {
                    warn!(sandbox_id = %id, error = %err, "unreadable state.json; leaving the directory alone");
                }
            }
        }
    }

    async fn recover_one(&self, mut record: SandboxRecord) {
        let id = record.sandbox_id.clone();
        let mut vm: Option<Box<dyn VmHandle>> = None;
        let mut client = None;
        let previous = record.status;
        let sandbox_dir = self.store.layout().sandbox_dir(&id);
        if holds_vm(previous) {
            let attached = match (&record.process, self.image(&record.template)) {
                (Some(p), Ok(image)) if p.kind == self.vmm.kind() => {
                    let spec = self.vm_spec(&record, &image);
                    self.vmm.attach(&spec, p).await.map_err(|e| e.to_string())
                }
                (Some(p), Ok(_)) => Err(format!(
                    "VM runs under {} but the server uses {}",
                    p.kind,
                    self.vmm.kind()
                )),
                (None, _) => Err("no VMM process was recorded".to_owned()),
                (_, Err(e)) => Err(e.to_string()),
            };
            match attached {
                Ok(handle) => {
                    let c = self.new_client(Some(handle.vsock_path().to_path_buf()));
                    match c.wait_ready(Instant::now() + REATTACH_WAIT).await {
                        Ok(_) => {
                            if previous == SandboxStatus::Pausing {
                                let _ = handle.resume().await;
                            }
                            record.status = SandboxStatus::Running;
                            record.error = None;
                            vm = Some(handle);
                            client = Some(c);
                            info!(sandbox_id = %id, "re-attached to running VM");
                        }
                        Err(e) => {
                            let _ = handle.kill().await;
                            record.status = SandboxStatus::Dead;
                            record.error =
                                Some(format!("agent did not answer after server restart: {e}"));
                        }
                    }
                }
                Err(reason) => {
                    record.status = if previous == SandboxStatus::Resuming {
                        SandboxStatus::Paused
                    } else {
                        SandboxStatus::Dead
                    };
                    record.error = Some(format!(
                        "VM is gone (found after server restart: {reason}); last console lines: {}",
                        self.store.console_tail(&id, 10)
                    ));
                    record.process = None;
                    remove_sockets(&sandbox_dir);
                    warn!(sandbox_id = %id, reason, "sandbox VM not running after restart");
                }
            }
            record.updated_at = crate::store::now_rfc3339();
            let _ = self.store.write_sandbox(&record);
        } else {
            remove_sockets(&sandbox_dir);
        }
        let sb = Sandbox::new(record, self.store.clone(), vm, client);
        self.registry.insert_recovered(Arc::new(sb));
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

    /// Kills VMM processes that run from our sandboxes directory but belong
    /// to no sandbox we track (left behind by a crash).
    pub(super) fn kill_orphans(&self) {
        let known: Vec<u32> = self
            .registry
            .all()
            .iter()
            .filter_map(|sb| sb.record().process.map(|p| p.pid))
            .collect();
        for pid in host::vmm_processes_under(&self.store.layout().sandboxes_dir()) {
            if known.contains(&pid) || pid == std::process::id() {
                continue;
            }
            warn!(pid, "killing orphaned VMM process");
            host::kill_pid(pid);
        }
    }

    /// Marks running sandboxes whose VM exited as dead, with the console tail.
    async fn health_check(&self) {
        for sb in self.registry.all() {
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
