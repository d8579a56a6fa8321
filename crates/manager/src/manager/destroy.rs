//! Destroy: stop the VM, remove the sandbox directory, release or keep the
//! workspace.

use super::SandboxManager;
use crate::store::SandboxRecord;
use crate::{host, ManagerError, Result, SandboxStatus};
use locale2b_protocol::{SandboxId, WorkspaceId};
use std::time::Duration;
use tracing::{debug, info, warn};

/// How long destroy waits for the agent's answer to `shutdown`.
pub(super) const AGENT_SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

impl SandboxManager {
    /// Destroys a sandbox: asks the guest to sync and power off, kills the
    /// VMM after the grace period, removes the sandbox directory. The
    /// workspace's disk is kept when the caller named the workspace, and
    /// removed with the sandbox when its id was generated. Snapshots of the
    /// workspace are removed (the VM they belong to is gone).
    ///
    /// # Errors
    /// NotFound when the sandbox is unknown (already destroyed).
    pub async fn destroy(&self, id: &SandboxId) -> Result<()> {
        // A sandbox still starting: its create gives up and cleans up (it
        // holds the lifecycle lock until it has).
        let doomed = self.registry.get(id).filter(|sb| {
            let starting = sb.status() == SandboxStatus::Starting;
            if starting {
                sb.doom();
            }
            starting
        });
        match self.destroy_when(id, |_| true).await {
            Err(ManagerError::NotFound { .. }) if doomed.is_some() => {
                info!(sandbox_id = %id, "sandbox destroyed while starting");
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// [`Self::destroy`] if `cond` holds for the record once the lifecycle
    /// lock is held; `Ok(false)` when it does not (nothing changed).
    ///
    /// # Errors
    /// As [`Self::destroy`].
    pub(super) async fn destroy_when(
        &self,
        id: &SandboxId,
        cond: impl Fn(&SandboxRecord) -> bool,
    ) -> Result<bool> {
        let sb = self.registry.require(id)?;
        let mut vm_slot = sb.lifecycle.lock().await;
        self.still_registered(id)?;
        if !cond(&sb.record()) {
            return Ok(false);
        }
        sb.set_status(SandboxStatus::Stopping, None);
        self.ports.close_all(id).await;
        if vm_slot.is_some() {
            let left = sb.settle("destroyed", self.config.settle_timeout()).await;
            if left > 0 {
                warn!(sandbox_id = %id, calls = left, "destroying with guest calls still running; they will fail");
            }
        }
        self.crash_point("destroy:stopping");
        let client = sb.drop_client();
        if let (Some(client), Some(_)) = (&client, vm_slot.as_ref()) {
            let quick = tokio::time::timeout(AGENT_SHUTDOWN_WAIT, client.shutdown()).await;
            debug!(sandbox_id = %id, ok = matches!(quick, Ok(Ok(()))), "agent shutdown");
        }
        if let Some(vm) = vm_slot.take() {
            if let Err(e) = vm.shutdown(self.config.shutdown_grace()).await {
                warn!(sandbox_id = %id, error = %crate::error::chain(&e), "shutdown failed; killing");
                let _ = vm.kill().await;
            }
        } else if let Some(p) = sb.record().process {
            host::kill_process(&p);
        }
        self.crash_point("destroy:vm_stopped");
        if let Some(slot) = sb.record().net_slot {
            self.networks.down(id, Some(slot)).await;
        }
        let workspace_id = sb.record().workspace_id;
        self.remove_sandbox_dir(id);
        self.registry.remove(id);
        drop(vm_slot);
        self.release_cgroup(id);
        crate::metrics::inc(&self.metrics.destroys);
        self.release_workspace(id, &workspace_id);
        info!(sandbox_id = %id, "sandbox destroyed");
        Ok(true)
    }

    /// Removes a sandbox's directory (its record, sockets and logs).
    pub(super) fn remove_sandbox_dir(&self, id: &SandboxId) {
        if let Err(e) = std::fs::remove_dir_all(self.store.layout().sandbox_dir(id)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(sandbox_id = %id, error = %crate::error::chain(&e), "cannot remove sandbox dir");
            }
        }
    }

    /// Lets go of the workspace of destroyed sandbox `id`: removed when
    /// its id was generated, else kept without its snapshots (the VM they
    /// belong to is gone) and free for a new create.
    pub(super) fn release_workspace(&self, id: &SandboxId, workspace_id: &WorkspaceId) {
        let layout = self.store.layout();
        let Some(ws) = self.store.read_workspace(workspace_id) else {
            return;
        };
        if ws.ephemeral {
            let _ = std::fs::remove_dir_all(layout.workspace_dir(workspace_id));
            self.registry.forget_workspace(workspace_id);
        } else {
            let snaps = layout.snapshots_dir(workspace_id);
            let _ = std::fs::remove_dir_all(&snaps);
            let _ = std::fs::create_dir_all(&snaps);
            self.store.update_workspace(workspace_id, |ws| {
                if ws.sandbox_id.as_ref() == Some(id) {
                    ws.sandbox_id = None;
                }
                ws.snapshot_id = None;
                ws.push_lineage("destroyed", Some(id), None, None);
            });
        }
    }
}
