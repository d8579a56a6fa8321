//! Pause (snapshot to disk, stop the VMM) and resume (validate, restore).

use super::SandboxManager;
use crate::image::Image;
use crate::metrics::{inc, PauseReason};
use crate::registry::Admission;
use crate::sandbox::{Intent, Next};
use crate::snapshot::{self, SnapshotManifest};
use crate::store::{create_private_dir, write_json_atomic, SandboxRecord};
use crate::{ManagerError, Result, SandboxInfo, SandboxStatus};
use locale2b_protocol::{SandboxId, WorkspaceId};
use locale2b_vmm::{SnapshotFiles, VmHandle};
use std::path::Path;
use std::time::Instant;
use tracing::{info, warn};

fn task_failed(what: &str, e: tokio::task::JoinError) -> ManagerError {
    ManagerError::Internal {
        context: format!("{what} task failed"),
        source: Some(Box::new(e)),
    }
}

impl SandboxManager {
    /// Pauses the VM, writes a full snapshot (state + memory, checksummed)
    /// under the workspace, and stops the VMM so the sandbox holds no RAM.
    /// Pausing a paused sandbox returns it unchanged. On failure the VM keeps
    /// running.
    ///
    /// # Errors
    /// NotFound; Conflict when starting, stopping or dead; Vm when the
    /// snapshot could not be written.
    pub async fn pause(&self, id: &SandboxId) -> Result<SandboxInfo> {
        match self.pause_when(id, PauseReason::Api, |_| true).await? {
            Some(info) => Ok(info),
            // The condition always holds; answer the current state anyway.
            None => self.get(id).await,
        }
    }

    /// [`Self::pause`] if `cond` holds for the record once the lifecycle
    /// lock is held; `Ok(None)` when it does not (nothing changed). `by`
    /// says why (`api`, `timeout`, `idle`, `eviction`), kept as
    /// `paused_by`.
    ///
    /// # Errors
    /// As [`Self::pause`].
    pub(super) async fn pause_when(
        &self,
        id: &SandboxId,
        by: PauseReason,
        cond: impl Fn(&SandboxRecord) -> bool,
    ) -> Result<Option<SandboxInfo>> {
        let sb = self.registry.require(id)?;
        let mut vm_slot = sb.lifecycle.lock().await;
        if !cond(&sb.record()) {
            return Ok(None);
        }
        if sb.check(Intent::Pause)? == Next::AlreadyThere {
            return Ok(Some(sb.info()));
        }
        let Some(vm) = vm_slot.as_ref() else {
            return Err(ManagerError::Conflict(format!("sandbox {id} has no VM")));
        };
        let started = Instant::now();
        sb.set_status(SandboxStatus::Pausing, None);
        // New calls are refused from here; let the running ones finish.
        let left = sb.settle("paused", self.config.settle_timeout()).await;
        if left > 0 {
            warn!(sandbox_id = %id, calls = left, "pausing with guest calls still running; they will fail");
        }
        self.crash_point("pause:pausing");
        // Flush the guest's page cache to the writable disk first, so the disk
        // alone is consistent even if the snapshot is later lost.
        if let Some(client) = sb.client() {
            if let Err(e) = client.sync().await {
                warn!(sandbox_id = %id, error = %crate::error::chain(&e), "guest sync before pause failed");
            }
        }
        let record = sb.record();
        match self.write_snapshot(vm.as_ref(), &record).await {
            Ok(snapshot_id) => {
                // From here a restart completes the pause rather than
                // rolling it back (once the VMM is gone).
                sb.update(|r| r.pending_snapshot = Some(snapshot_id.clone()));
                self.crash_point("pause:snapshot_written");
                if let Some(vm) = vm_slot.take() {
                    let _ = vm.kill().await;
                }
                sb.drop_client();
                self.crash_point("pause:vm_stopped");
                self.complete_pause(&sb.record(), &snapshot_id);
                sb.update(|r| {
                    r.process = None;
                    r.status = SandboxStatus::Paused;
                    r.error = None;
                    r.pending_snapshot = None;
                    // A paused sandbox has no end; a resume starts a new lifetime.
                    r.end_at = None;
                    r.paused_at = Some(crate::store::now_rfc3339());
                    r.paused_by = Some(by.as_str().to_owned());
                });
                self.prune_snapshots(&record.workspace_id, &snapshot_id);
                self.release_cgroup(id);
                self.metrics.paused(by, started.elapsed());
                info!(sandbox_id = %id, snapshot_id, by = by.as_str(), pause_ms = started.elapsed().as_millis() as u64, "sandbox paused");
                Ok(Some(sb.info()))
            }
            Err(err) => {
                warn!(sandbox_id = %id, error = %crate::error::chain(&err), "pause failed; resuming the VM");
                if let Some(vm) = vm_slot.as_ref() {
                    let _ = vm.resume().await;
                }
                sb.set_status(SandboxStatus::Running, None);
                Err(err)
            }
        }
    }

    async fn write_snapshot(&self, vm: &dyn VmHandle, r: &SandboxRecord) -> Result<String> {
        let image = self.image(&r.template)?;
        let snapshot_id = format!("snap-{}", &SandboxId::generate().as_str()[3..]);
        let snaps = self.store.layout().snapshots_dir(&r.workspace_id);
        create_private_dir(&snaps)?;
        let tmp = snaps.join(format!(".{snapshot_id}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        create_private_dir(&tmp)?;
        let outcome = async {
            vm.pause()
                .await
                .map_err(|e| ManagerError::vm("failed to pause the VM", e))?;
            self.crash_point("pause:vm_paused");
            // The VMM is stopped right after (or the snapshot thrown away
            // if the pause fails), so the driver may hand its files over.
            let files = vm
                .snapshot_final(&tmp)
                .await
                .map_err(|e| ManagerError::vm("failed to write the VM snapshot", e))?;
            let name = |p: &Path| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let (state_name, memory_name) = (name(&files.state), name(&files.memory));
            let dir = tmp.clone();
            let digests = tokio::task::spawn_blocking(move || {
                Ok::<_, std::io::Error>((
                    snapshot::digest(&dir, &state_name)?,
                    snapshot::digest(&dir, &memory_name)?,
                ))
            })
            .await
            .map_err(|e| task_failed("checksum", e))?
            .map_err(|e| ManagerError::io("cannot checksum the snapshot", e))?;
            let manifest = SnapshotManifest {
                format: 1,
                snapshot_id: snapshot_id.clone(),
                sandbox_id: r.sandbox_id.to_string(),
                workspace_id: r.workspace_id.to_string(),
                backend: r.backend.to_string(),
                template: r.template.clone(),
                kernel_sha256: image.kernel_sha256.clone(),
                rootfs_sha256: image.rootfs_sha256.clone(),
                memory_mb: r.memory_mb,
                vcpu_count: r.vcpu_count,
                state: digests.0,
                memory: digests.1,
                ram_in_state: files.ram_in_state,
                created_at: crate::store::now_rfc3339(),
            };
            write_json_atomic(&tmp.join(snapshot::MANIFEST), &manifest)
                .map_err(|e| ManagerError::io("cannot write snapshot manifest", e))?;
            let final_dir = snaps.join(&snapshot_id);
            std::fs::rename(&tmp, &final_dir)
                .map_err(|e| ManagerError::io("cannot move the snapshot into place", e))?;
            let _ = std::fs::File::open(&snaps).and_then(|d| d.sync_all());
            Ok(snapshot_id.clone())
        }
        .await;
        if outcome.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        outcome
    }

    /// Points the workspace at the snapshot a pause wrote (its VMM is
    /// stopped); shared by pause and by a restart that finishes one.
    pub(super) fn complete_pause(&self, r: &SandboxRecord, snapshot_id: &str) {
        let id = &r.sandbox_id;
        self.store.update_workspace(&r.workspace_id, |ws| {
            if ws.snapshot_id.as_deref() != Some(snapshot_id) {
                ws.snapshot_id = Some(snapshot_id.to_owned());
                ws.push_lineage("paused", Some(id), Some(snapshot_id), None);
            }
        });
        self.crash_point("pause:workspace_updated");
    }

    pub(super) fn prune_snapshots(&self, ws: &WorkspaceId, keep: &str) {
        let snaps = self.store.layout().snapshots_dir(ws);
        if let Ok(entries) = std::fs::read_dir(&snaps) {
            for e in entries.flatten() {
                if e.file_name().to_str() != Some(keep) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Restores a paused sandbox from its latest snapshot: the snapshot is
    /// validated first (sizes, SHA-256, kernel/rootfs/backend); a bad one
    /// leaves the sandbox paused and its data untouched. Resuming a running
    /// sandbox returns it unchanged; the sandbox keeps its id.
    ///
    /// # Errors
    /// NotFound; Conflict when not paused/running; SnapshotInvalid when the
    /// snapshot is unusable; Vm when the restored VM does not answer.
    pub async fn resume(&self, id: &SandboxId) -> Result<SandboxInfo> {
        let sb = self.registry.require(id)?;
        let mut vm_slot = sb.lifecycle.lock().await;
        if sb.check(Intent::Resume)? == Next::AlreadyThere {
            return Ok(sb.info());
        }
        let record = sb.record();
        let ws = self
            .store
            .read_workspace(&record.workspace_id)
            .ok_or_else(|| {
                ManagerError::Conflict(format!(
                    "workspace {} of sandbox {id} is gone",
                    record.workspace_id
                ))
            })?;
        let snapshot_id = ws.snapshot_id.clone().ok_or_else(|| {
            ManagerError::Conflict(format!(
                "sandbox {id} is paused but its workspace has no snapshot"
            ))
        })?;
        let image = self.image(&record.template)?;
        let snap_dir = self
            .store
            .layout()
            .snapshots_dir(&record.workspace_id)
            .join(&snapshot_id);
        let manifest = self.validate_snapshot(&snap_dir, &record, &image).await?;
        let manifest = match manifest {
            Ok(m) => m,
            Err(invalid) => {
                warn!(sandbox_id = %id, snapshot_id, error = %invalid, "snapshot invalid; sandbox stays paused");
                self.store.update_workspace(&record.workspace_id, |ws| {
                    ws.push_lineage(
                        "restore_failed",
                        Some(id),
                        Some(&snapshot_id),
                        Some(invalid.to_string()),
                    );
                });
                return Err(ManagerError::SnapshotInvalid(format!(
                    "cannot resume sandbox {id}: {invalid}. The sandbox stays paused and the workspace disk is untouched; destroy the sandbox to boot the workspace fresh from its disk"
                )));
            }
        };
        self.admit(&sb, Admission::Resume).await?;
        sb.persist();
        self.crash_point("resume:resuming");
        let started = Instant::now();
        let files = SnapshotFiles {
            state: snap_dir.join(&manifest.state.name),
            memory: snap_dir.join(&manifest.memory.name),
            ram_in_state: manifest.ram_in_state,
        };
        let spec = self.vm_spec(&record, &image);
        let result = async {
            if let Some(slot) = record.net_slot {
                // Kept while paused; made again after a host reboot.
                self.networks
                    .up(id, slot, &record.network, false)
                    .await
                    .map_err(|e| ManagerError::Vm {
                        message: format!("cannot set up the network of sandbox {id}: {e}"),
                        source: None,
                    })?;
            }
            let vm = self.vmm.restore(&spec, &files).await.map_err(|e| {
                ManagerError::vm(
                    format!("failed to restore sandbox {id} from snapshot {snapshot_id}"),
                    e,
                )
            })?;
            sb.update(|r| r.process = Some(vm.process().clone()));
            self.confine(&sb, vm.process().pid);
            self.crash_point("resume:restored");
            let vm = vm_slot.insert(vm);
            self.bring_up(&sb, vm.as_ref()).await?;
            self.crash_point("resume:agent_ready");
            Ok::<_, ManagerError>(())
        }
        .await;
        match result {
            Ok(()) => {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                sb.update(|r| {
                    r.boot_ms = Some(ms);
                    r.status = SandboxStatus::Running;
                    r.error = None;
                    r.end_at = super::lifetime::end_after(r.timeout_sec);
                    r.paused_at = None;
                    r.paused_by = None;
                });
                sb.touch();
                inc(&self.metrics.resumes);
                self.metrics.resume_seconds.observe(started.elapsed());
                self.lifetimes.notify_one();
                self.store.update_workspace(&record.workspace_id, |ws| {
                    ws.sandbox_id = Some(id.clone());
                    ws.push_lineage("resumed", Some(id), Some(&snapshot_id), None);
                });
                info!(sandbox_id = %id, snapshot_id, resume_ms = ms, "sandbox resumed");
                Ok(sb.info())
            }
            Err(err) => {
                warn!(sandbox_id = %id, error = %crate::error::chain(&err), "resume failed; sandbox stays paused");
                inc(&self.metrics.resume_failures);
                if let Some(vm) = vm_slot.take() {
                    let _ = vm.kill().await;
                }
                self.release_cgroup(id);
                sb.update(|r| {
                    r.process = None;
                    r.status = SandboxStatus::Paused;
                    r.error = Some(err.to_string());
                });
                self.store.update_workspace(&record.workspace_id, |ws| {
                    ws.push_lineage(
                        "restore_failed",
                        Some(id),
                        Some(&snapshot_id),
                        Some(err.to_string()),
                    );
                });
                Err(err)
            }
        }
    }

    /// Checks a snapshot directory on a blocking thread (it hashes files).
    async fn validate_snapshot(
        &self,
        dir: &Path,
        record: &SandboxRecord,
        image: &Image,
    ) -> Result<Result<SnapshotManifest, snapshot::SnapshotInvalid>> {
        let backend = record.backend.to_string();
        let (k, r) = (image.kernel_sha256.clone(), image.rootfs_sha256.clone());
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || snapshot::validate(&dir, &backend, &k, &r))
            .await
            .map_err(|e| task_failed("validation", e))
    }
}
