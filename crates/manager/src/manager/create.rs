//! Create: boot a new sandbox, or attach a create that names a workspace to
//! that workspace's sandbox.

use super::SandboxManager;
use crate::registry::Admission;
use crate::sandbox::{Intent, Next, Sandbox};
use crate::store::{create_private_dir, SandboxRecord, RECORD_FORMAT};
use crate::{Boot, BootSource, CreateSandbox, ManagerError, Result, SandboxInfo, SandboxStatus};
use locale2b_protocol::{SandboxId, WorkspaceId};
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

/// The answer of a create whose sandbox was destroyed before it ran.
fn destroyed_while_starting(id: &SandboxId) -> ManagerError {
    ManagerError::Conflict(format!(
        "sandbox {id} was destroyed while it was starting; create a new one"
    ))
}

impl SandboxManager {
    /// Starts the sandbox's VM as a clone of the snapshot `files` (a
    /// template's, or a fork parent's) and brings its agent up (`init`
    /// gives the clone its own identity). A snapshot whose RAM is in its
    /// state stream (taken of a clone) is restored into a private copy
    /// instead of being mapped.
    async fn clone_up(
        &self,
        sb: &Sandbox,
        spec: &locale2b_vmm::VmSpec,
        files: &locale2b_vmm::SnapshotFiles,
        vm_slot: &mut Option<Box<dyn locale2b_vmm::VmHandle>>,
    ) -> Result<()> {
        let started = if files.ram_in_state {
            self.vmm.restore(spec, files).await
        } else {
            locale2b_vmm::Vmm::clone_from(self.vmm.as_ref(), spec, files).await
        };
        let vm = started.map_err(|e| {
            ManagerError::vm(
                format!("failed to clone a snapshot for sandbox {}", sb.id),
                e,
            )
        })?;
        sb.update(|r| r.process = Some(vm.process().clone()));
        self.confine(sb, vm.process().pid);
        self.crash_point("create:vm_started");
        let vm = vm_slot.insert(vm);
        tokio::select! {
            up = self.bring_up(sb, vm.as_ref()) => up,
            () = sb.doomed() => Err(destroyed_while_starting(&sb.id)),
        }
    }

    /// Creates (boots) a sandbox. When `workspace_id` names a workspace whose
    /// sandbox is paused, that sandbox is resumed instead; when it is already
    /// running, the running sandbox is returned (so a retried create with a
    /// workspace id is idempotent).
    ///
    /// # Errors
    /// InvalidInput for bad sizes/template, AtCapacity, Vm/Timeout when the
    /// VM fails to come up (everything made for it is removed again).
    pub async fn create(&self, req: CreateSandbox) -> Result<SandboxInfo> {
        self.create_from(req, None).await
    }

    /// [`Self::create`], or with `fork` a fork child: a clone of the
    /// parent's snapshot on a copy of its disk, in a new workspace, with no
    /// fallback to a cold boot.
    pub(super) async fn create_from(
        &self,
        req: CreateSandbox,
        fork: Option<&super::fork::ForkSource>,
    ) -> Result<SandboxInfo> {
        let cfg = &self.config;
        let memory_mb = req.memory_mb.unwrap_or(cfg.default_memory_mb);
        if memory_mb < cfg.min_memory_mb || memory_mb > cfg.max_memory_mb {
            return Err(ManagerError::InvalidInput(format!(
                "memory_mb must be between {} and {} (got {memory_mb})",
                cfg.min_memory_mb, cfg.max_memory_mb
            )));
        }
        let vcpus = req.vcpu_count.unwrap_or(cfg.default_vcpu);
        if vcpus == 0 || vcpus > cfg.max_vcpu {
            return Err(ManagerError::InvalidInput(format!(
                "vcpu_count must be between 1 and {} (got {vcpus})",
                cfg.max_vcpu
            )));
        }
        let timeout_sec = self.lifetime(req.timeout_sec)?;
        let disk_size_mb = req.disk_size_mb.unwrap_or(cfg.disk_size_mb);
        let min_disk = locale2b_config::MIN_DISK_SIZE_MB;
        if disk_size_mb < min_disk || disk_size_mb > cfg.max_disk_size_mb {
            return Err(ManagerError::InvalidInput(format!(
                "disk_size_mb must be between {min_disk} and {} (got {disk_size_mb}; max_disk_size_mb)",
                cfg.max_disk_size_mb
            )));
        }
        crate::check_metadata(&req.metadata)?;
        crate::check_env("env", &req.env)?;
        let network = req.network.clone().unwrap_or_default();
        network.compile().map_err(ManagerError::InvalidInput)?;
        if fork.map_or(network.networked(), |f| f.nic) {
            self.networks
                .check_available()
                .map_err(ManagerError::NetworkUnavailable)?;
        }
        let template = req
            .template
            .clone()
            .unwrap_or_else(|| cfg.default_template.clone());
        if template.parse::<WorkspaceId>().is_err() {
            return Err(ManagerError::InvalidInput(format!(
                "template {template:?} is not a valid template name"
            )));
        }

        let (workspace_id, ephemeral) = match req.workspace_id.clone() {
            Some(id) => (id, false),
            None => (WorkspaceId::generate(), true),
        };
        let ws_lock = self.registry.workspace_lock(&workspace_id);
        let _ws_guard = ws_lock.lock().await;

        // An existing workspace: attach to its sandbox if it has one.
        let existing = self.store.read_workspace(&workspace_id);
        if let Some(ws) = &existing {
            if let Some(sb) = ws
                .sandbox_id
                .as_ref()
                .and_then(|sid| self.registry.get(sid))
            {
                return match sb.check(Intent::Attach) {
                    Ok(Next::Go) => self.resume(&sb.id).await,
                    Ok(Next::AlreadyThere) => Ok(sb.info()),
                    Err(e) => Err(e),
                };
            }
            if ws.template != template {
                return Err(ManagerError::InvalidInput(format!(
                    "workspace {workspace_id} was created with template {:?}, not {template:?}",
                    ws.template
                )));
            }
            if let (Some(asked), Some(has)) = (req.disk_size_mb, ws.disk_size_mb) {
                if asked != has {
                    return Err(ManagerError::InvalidInput(format!(
                        "workspace {workspace_id} has a {has} MiB disk; a disk's size cannot be changed (asked for {asked} MiB)"
                    )));
                }
            }
        }
        // A new sandbox. Before any expensive work (disk space, a template
        // snapshot), a key at its quota is refused: the host boots nothing.
        self.registry
            .precheck_quota(req.owner.as_deref(), memory_mb)?;
        if existing.is_none() {
            self.check_disk_space(disk_size_mb)?;
        }
        let disk_size_mb = existing
            .as_ref()
            .map_or(Some(disk_size_mb), |ws| ws.disk_size_mb);

        let image = self.image(&template)?;
        let sandbox_id = SandboxId::generate();
        // A template snapshot only for a new workspace: an existing one's
        // disk is its own, not the template's.
        let boot = req.boot.unwrap_or(cfg.boot);
        // Boot time includes building the template on first use.
        let started = Instant::now();
        // Template snapshots have no NIC: a networked sandbox boots cold.
        let from_template = if fork.is_none()
            && boot == Boot::Template
            && existing.is_none()
            && !network.networked()
        {
            let disk_mb = disk_size_mb.unwrap_or(cfg.disk_size_mb);
            match self
                .template_for(&template, &image, memory_mb, vcpus, disk_mb)
                .await
            {
                Ok(t) => Some(t),
                Err(why) => {
                    info!(sandbox_id = %sandbox_id, reason = %why, "no template snapshot to clone; booting cold");
                    None
                }
            }
        } else {
            None
        };
        let now = crate::store::now_rfc3339();
        let mut env = cfg.sandbox_env.clone();
        env.extend(req.env.clone());
        let record = SandboxRecord {
            format: RECORD_FORMAT,
            sandbox_id: sandbox_id.clone(),
            workspace_id: workspace_id.clone(),
            template: template.clone(),
            memory_mb,
            vcpu_count: vcpus,
            backend: self.vmm.kind(),
            guest_cid: 0,
            status: SandboxStatus::Starting,
            created_at: now.clone(),
            updated_at: now,
            error: None,
            process: None,
            boot_ms: None,
            env,
            end_at: None,
            timeout_sec,
            on_timeout: req.on_timeout.unwrap_or(cfg.on_timeout),
            metadata: req.metadata.clone(),
            access_token: req.access_token.clone(),
            pending_snapshot: None,
            idle_timeout_sec: Some(req.idle_timeout_sec.unwrap_or(cfg.idle_timeout_sec)),
            auto_resume: req.auto_resume.unwrap_or(cfg.auto_resume),
            paused_at: None,
            paused_by: None,
            disk_size_mb,
            boot: None,
            forked_from: None,
            owner: req.owner.clone(),
            exposed_ports: Vec::new(),
            network: network.clone(),
            net_slot: None,
            route_all_ports: req.route_all_ports.clone(),
        };
        let sb = Arc::new(Sandbox::new(record, self.store.clone(), None, None));
        let mut vm_slot = sb.lifecycle.lock().await;
        self.admit(&sb, Admission::New).await?;

        let made_workspace = existing.is_none();
        let result = async {
            let ws = match existing {
                Some(ws) => ws,
                None => {
                    self.store
                        .create_workspace(
                            &workspace_id,
                            &template,
                            ephemeral,
                            disk_size_mb.unwrap_or(cfg.disk_size_mb),
                            fork.map(|f| f.disk.as_path())
                                .or(from_template.as_ref().map(|t| t.disk.as_path())),
                            req.owner.as_deref(),
                        )
                        .await?
                }
            };
            create_private_dir(&self.store.layout().sandbox_dir(&sandbox_id))?;
            sb.persist();
            self.crash_point("create:recorded");
            if sb.is_doomed() {
                return Err(destroyed_while_starting(&sandbox_id));
            }
            // A fork child's VM has the devices of its parent's snapshot.
            if fork.map_or(network.networked(), |f| f.nic) {
                let slot = self.networks.allocate().map_err(ManagerError::NetworkUnavailable)?;
                sb.update(|r| r.net_slot = Some(slot));
                self.networks
                    .up(&sandbox_id, slot, &network, true)
                    .await
                    .map_err(|e| ManagerError::Vm {
                        message: format!("cannot set up the network of sandbox {sandbox_id}: {e}"),
                        source: None,
                    })?;
            }
            let spec = self.vm_spec(&sb.record(), &image);
            if let Some(f) = fork {
                self.clone_up(&sb, &spec, &f.files, &mut vm_slot).await?;
                if sb.is_doomed() {
                    return Err(destroyed_while_starting(&sandbox_id));
                }
                sb.update(|r| {
                    r.boot = Some(BootSource::Fork);
                    r.forked_from = Some(f.parent.clone());
                });
                self.crash_point("create:agent_ready");
                return Ok(ws);
            }
            if let Some(t) = &from_template {
                let spec = locale2b_vmm::VmSpec {
                    extra_boot_args: t.extra_boot_args.clone(),
                    ..spec.clone()
                };
                match self.clone_up(&sb, &spec, &t.files, &mut vm_slot).await {
                    Ok(()) => {
                        if sb.is_doomed() {
                            return Err(destroyed_while_starting(&sandbox_id));
                        }
                        sb.update(|r| r.boot = Some(BootSource::Template));
                        self.crash_point("create:agent_ready");
                        return Ok(ws);
                    }
                    Err(e) if sb.is_doomed() => return Err(e),
                    Err(e) => {
                        if e.is_timeout() {
                            // A slow host, not a bad template: keep it and
                            // go on cloning it for other creates.
                            warn!(sandbox_id = %sandbox_id, template_dir = %t.dir.display(), reason = %crate::error::chain(&e), "cloning the template snapshot timed out; booting cold");
                        } else {
                            warn!(sandbox_id = %sandbox_id, template_dir = %t.dir.display(), reason = %crate::error::chain(&e), "cloning the template snapshot failed; removing it and booting cold");
                            self.templates.failed(&t.key, &e.to_string());
                            self.templates.forget_checked(&t.dir);
                            let _ = std::fs::remove_dir_all(&t.dir);
                        }
                        if let Some(vm) = vm_slot.take() {
                            let _ = vm.kill().await;
                        }
                        self.release_cgroup(&sandbox_id);
                        sb.update(|r| r.process = None);
                        // The disk the template's memory knew is no use to
                        // a cold boot: start from an empty one.
                        let size = disk_size_mb.unwrap_or(cfg.disk_size_mb);
                        crate::store::make_disk(&self.store.layout().workspace_disk(&workspace_id), size).await?;
                    }
                }
            }
            sb.update(|r| r.boot = Some(BootSource::Cold));
            let vm = self.vmm.start(&spec).await.map_err(|e| {
                ManagerError::vm(
                    format!("failed to start the VM for sandbox {sandbox_id}"),
                    e,
                )
            })?;
            sb.update(|r| r.process = Some(vm.process().clone()));
            self.confine(&sb, vm.process().pid);
            self.crash_point("create:vm_started");
            let vm = vm_slot.insert(vm);
            tokio::select! {
                up = self.bring_up(&sb, vm.as_ref()) => up?,
                () = sb.doomed() => return Err(destroyed_while_starting(&sandbox_id)),
            }
            if sb.is_doomed() {
                return Err(destroyed_while_starting(&sandbox_id));
            }
            self.crash_point("create:agent_ready");
            Ok::<_, ManagerError>(ws)
        }
        .await;

        match result {
            Ok(mut ws) => {
                let boot_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                sb.update(|r| {
                    r.boot_ms = Some(boot_ms);
                    r.status = SandboxStatus::Running;
                    r.error = None;
                    r.end_at = super::lifetime::end_after(r.timeout_sec);
                });
                sb.touch();
                crate::metrics::inc(&self.metrics.creates);
                self.metrics.create_seconds.observe(started.elapsed());
                self.lifetimes.notify_one();
                ws.sandbox_id = Some(sandbox_id.clone());
                match fork {
                    Some(f) => ws.push_lineage(
                        "forked",
                        Some(&sandbox_id),
                        Some(&f.snapshot_id),
                        Some(format!("from sandbox {} at {}", f.parent, f.taken_at)),
                    ),
                    None => ws.push_lineage("created", Some(&sandbox_id), None, None),
                }
                let _ = self.store.write_workspace(&ws);
                info!(sandbox_id = %sandbox_id, workspace_id = %workspace_id, boot_ms, "sandbox running");
                drop(vm_slot);
                Ok(sb.info())
            }
            Err(err) => {
                warn!(sandbox_id = %sandbox_id, error = %crate::error::chain(&err), "create failed; cleaning up");
                crate::metrics::inc(&self.metrics.create_failures);
                if let Some(vm) = vm_slot.take() {
                    if let Err(e) = vm.kill().await {
                        warn!(sandbox_id = %sandbox_id, error = %crate::error::chain(&e), "kill after failed create");
                    }
                }
                drop(vm_slot);
                if let Some(slot) = sb.record().net_slot {
                    self.networks.down(&sandbox_id, Some(slot)).await;
                }
                self.registry.remove(&sandbox_id);
                self.release_cgroup(&sandbox_id);
                let _ = std::fs::remove_dir_all(self.store.layout().sandbox_dir(&sandbox_id));
                if made_workspace {
                    let _ =
                        std::fs::remove_dir_all(self.store.layout().workspace_dir(&workspace_id));
                }
                Err(err)
            }
        }
    }
}
