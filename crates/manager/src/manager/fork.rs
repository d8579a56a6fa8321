//! Fork: children that continue from a running sandbox's memory and disk.
//!
//! The parent is paused for the instant of a snapshot (memory and device
//! state, plus a copy of its writable disk, into `<base>/forks/<id>/`) and
//! runs on. Each child is a new sandbox in a new (ephemeral) workspace: a
//! clone of that snapshot (its memory mapped copy-on-write and shared
//! between the children; a private copy when the parent is itself a clone,
//! whose RAM travels in the state stream) on its own copy of the disk, with
//! its own identity from `init`. Once every child runs the fork directory is
//! removed: the children's mappings keep what they need.

use super::SandboxManager;
use crate::sandbox::{Intent, Sandbox};
use crate::store::{create_private_dir, SandboxRecord};
use crate::{CreateSandbox, ManagerError, Result, SandboxInfo};
use futures::StreamExt;
use locale2b_protocol::SandboxId;
use locale2b_vmm::{SnapshotFiles, VmHandle};
use std::path::PathBuf;
use std::time::Instant;
use tracing::{info, warn};

/// Most children of one fork call.
pub const MAX_FORK_CHILDREN: u32 = 64;
/// Children started at the same time.
const FORK_PARALLEL: usize = 2;

/// What a fork child is made from.
#[derive(Debug, Clone)]
pub(crate) struct ForkSource {
    /// The parent's snapshot.
    pub files: SnapshotFiles,
    /// The copy of the parent's disk taken with it.
    pub disk: PathBuf,
    /// The parent.
    pub parent: SandboxId,
    /// The fork snapshot's id (directory name), for the lineage.
    pub snapshot_id: String,
    /// When it was taken, RFC 3339.
    pub taken_at: String,
    /// The parent's VM has a network device (so must the children's,
    /// whatever its policy is now).
    pub nic: bool,
}

impl SandboxManager {
    /// Forks running sandbox `id` into `count` children (all or none: when
    /// one cannot be made, those already made are destroyed). The parent
    /// keeps running.
    ///
    /// # Errors
    /// InvalidInput for a count outside 1..=[`MAX_FORK_CHILDREN`];
    /// NotFound; Conflict when the parent is not running; AtCapacity; Vm
    /// when the snapshot or a child fails.
    pub async fn fork(&self, id: &SandboxId, count: u32) -> Result<Vec<SandboxInfo>> {
        if count == 0 || count > MAX_FORK_CHILDREN {
            return Err(ManagerError::InvalidInput(format!(
                "count must be between 1 and {MAX_FORK_CHILDREN} (got {count})"
            )));
        }
        if !self.vmm.can_clone() {
            return Err(ManagerError::BackendUnsupported(format!(
                "the {} backend cannot fork sandboxes yet; use the qemu backend (LOCALE2B_VMM=qemu)",
                self.vmm.kind()
            )));
        }
        let sb = self.registry.require(id)?;
        {
            // Before the snapshot: a key at its quota gets no child.
            let r = sb.record();
            self.registry
                .precheck_quota(r.owner.as_deref(), r.memory_mb)?;
        }
        let started = Instant::now();
        let (record, source) = {
            let vm_slot = sb.lifecycle.lock().await;
            sb.check(Intent::Use)?;
            let Some(vm) = vm_slot.as_ref() else {
                return Err(ManagerError::Conflict(format!("sandbox {id} has no VM")));
            };
            let record = sb.record();
            let source = self.fork_snapshot(&sb, vm.as_ref(), &record).await?;
            (record, source)
        };
        let dir = self.store.layout().forks_dir().join(&source.snapshot_id);
        // Two at a time: a restore keeps about one core busy.
        let request = child_request(&record);
        let made: Vec<Result<SandboxInfo>> = futures::stream::iter(0..count)
            .map(|_| self.create_from(request.clone(), Some(&source)))
            .buffered(FORK_PARALLEL)
            .collect()
            .await;
        let mut children: Vec<SandboxInfo> = Vec::new();
        let mut failure = None;
        for r in made {
            match r {
                Ok(info) => children.push(info),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(err) = failure {
            warn!(sandbox_id = %id, error = %crate::error::chain(&err), made = children.len(), "fork failed; destroying the children made");
            for c in &children {
                if let Err(e) = self.destroy(&c.sandbox_id).await {
                    warn!(sandbox_id = %c.sandbox_id, error = %crate::error::chain(&e), "destroying a fork child failed");
                }
            }
            return Err(err);
        }
        info!(sandbox_id = %id, children = count, fork_ms = started.elapsed().as_millis() as u64, "sandbox forked");
        Ok(children)
    }

    /// Flushes the parent's page cache, pauses it, writes its snapshot and a
    /// copy of its disk, and lets it run again (also when that failed).
    async fn fork_snapshot(
        &self,
        sb: &Sandbox,
        vm: &dyn VmHandle,
        r: &SandboxRecord,
    ) -> Result<ForkSource> {
        let id = &sb.id;
        let snapshot_id = format!("fork-{}", &SandboxId::generate().as_str()[3..]);
        let forks = self.store.layout().forks_dir();
        create_private_dir(&forks)?;
        let dir = forks.join(&snapshot_id);
        create_private_dir(&dir)?;
        if let Some(client) = sb.client() {
            if let Err(e) = client.sync().await {
                warn!(sandbox_id = %id, error = %crate::error::chain(&e), "guest sync before fork failed");
            }
        }
        let t0 = Instant::now();
        let disk = dir.join("disk.ext4");
        let taken = async {
            vm.pause()
                .await
                .map_err(|e| ManagerError::vm("failed to pause the VM for the fork", e))?;
            let files = vm
                .snapshot(&dir)
                .await
                .map_err(|e| ManagerError::vm("failed to write the fork snapshot", e))?;
            locale2b_vmm::qemu::copy_file(
                &self.store.layout().workspace_disk(&r.workspace_id),
                &disk,
            )
            .await
            .map_err(|e| ManagerError::vm("cannot copy the parent's disk", e))?;
            Ok::<_, ManagerError>(files)
        }
        .await;
        let resumed = vm.resume().await;
        let paused_ms = t0.elapsed().as_millis() as u64;
        if let Err(e) = resumed {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ManagerError::vm(
                format!("sandbox {id} did not run again after the fork snapshot"),
                e,
            ));
        }
        let files = match taken {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        info!(sandbox_id = %id, snapshot_id, paused_ms, ram_in_state = files.ram_in_state, "fork snapshot taken");
        Ok(ForkSource {
            files,
            disk,
            parent: id.clone(),
            snapshot_id,
            taken_at: crate::store::now_rfc3339(),
            nic: r.net_slot.is_some(),
        })
    }
}

/// A child's create request: the parent's sizes, template, environment,
/// lifetime settings and labels, in a new workspace.
fn child_request(r: &SandboxRecord) -> CreateSandbox {
    CreateSandbox {
        memory_mb: Some(r.memory_mb),
        vcpu_count: Some(r.vcpu_count),
        template: Some(r.template.clone()),
        workspace_id: None,
        env: r.env.clone(),
        timeout_sec: Some(r.timeout_sec.unwrap_or(0)),
        on_timeout: Some(r.on_timeout),
        metadata: r.metadata.clone(),
        access_token: r.access_token.clone(),
        idle_timeout_sec: Some(r.idle_timeout_sec.unwrap_or(0)),
        auto_resume: Some(r.auto_resume),
        disk_size_mb: r.disk_size_mb,
        boot: None,
        owner: r.owner.clone(),
        network: Some(r.network.clone()),
        route_all_ports: r.route_all_ports.clone(),
    }
}
