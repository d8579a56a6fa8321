//! [`SandboxManager`]: creates, tracks, pauses, resumes and destroys sandboxes.
//!
//! Concurrency model: each sandbox has one async `lifecycle` lock held by
//! create, destroy, pause and resume, so two lifecycle operations on one
//! sandbox never interleave; exec and file calls only take a clone of the
//! agent client and run concurrently. Each workspace has a lock too, so two
//! creates naming one workspace cannot both attach to it. The in-memory
//! table and capacity counters sit behind a short-lived std mutex.
//!
//! Every state change is persisted to the sandbox's `state.json` (atomic
//! rename) before it is acted on where that matters for recovery.

use crate::snapshot::{self, SnapshotManifest};
use crate::store::{self, Layout};
use crate::{
    Capacity, Config, CreateSandbox, LineageEvent, ManagerError, Result, SandboxInfo,
    SandboxStatus, WorkspaceInfo,
};
use locale2b_agent_client::{AgentClient, ClientConfig, ClientError};
use locale2b_protocol::{
    DeleteFileRequest, ExecRequest, ExecResponse, FileContent, FileInfo, InitRequest,
    ListFilesRequest, Listing, MkdirRequest, ReadFileRequest, SandboxId, WorkspaceId,
    WriteFileRequest, WrittenResponse,
};
use locale2b_vmm::{DiskSpec, MemMib, SnapshotFiles, VmHandle, VmProcess, VmSpec, Vmm, VmmKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

const RECORD_FORMAT: u32 = 1;

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxRecord {
    format: u32,
    sandbox_id: SandboxId,
    workspace_id: WorkspaceId,
    template: String,
    memory_mb: u32,
    vcpu_count: u8,
    backend: VmmKind,
    guest_cid: u32,
    status: SandboxStatus,
    created_at: String,
    updated_at: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    process: Option<VmProcess>,
    #[serde(default)]
    boot_ms: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// What `workspace.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkspaceRecord {
    format: u32,
    workspace_id: WorkspaceId,
    template: String,
    created_at: String,
    /// Generated id (the caller did not name it): data is removed with the sandbox.
    ephemeral: bool,
    #[serde(default)]
    sandbox_id: Option<SandboxId>,
    #[serde(default)]
    snapshot_id: Option<String>,
    #[serde(default)]
    lineage: Vec<LineageEvent>,
}

#[derive(Debug)]
struct Sandbox {
    id: SandboxId,
    record: Mutex<SandboxRecord>,
    /// Held by lifecycle operations; holds the VM handle while one exists.
    lifecycle: tokio::sync::Mutex<Option<Box<dyn VmHandle>>>,
    client: Mutex<Option<AgentClient>>,
    last_used: Mutex<Instant>,
}

#[derive(Debug, Clone)]
struct Image {
    kernel: PathBuf,
    rootfs: PathBuf,
    kernel_sha256: String,
    rootfs_sha256: String,
}

#[derive(Debug, Default)]
struct Table {
    sandboxes: HashMap<SandboxId, Arc<Sandbox>>,
    workspace_locks: HashMap<WorkspaceId, Arc<tokio::sync::Mutex<()>>>,
    next_cid: u32,
}

/// Owns every sandbox and workspace of one base directory.
#[derive(Debug)]
pub struct SandboxManager {
    config: Arc<Config>,
    vmm: Arc<dyn Vmm>,
    accel: String,
    layout: Layout,
    memory_budget_mb: u64,
    table: Mutex<Table>,
}

/// What [`SandboxManager::admit`] admits.
#[derive(Debug, Clone, Copy)]
enum Admission {
    New,
    Resume,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn not_found(id: &SandboxId) -> ManagerError {
    ManagerError::NotFound {
        kind: "sandbox",
        id: id.to_string(),
    }
}

/// Statuses that hold a VM (and count against capacity).
fn holds_vm(s: SandboxStatus) -> bool {
    !matches!(s, SandboxStatus::Paused | SandboxStatus::Dead)
}

impl SandboxManager {
    /// Opens the base directory, reconciles state files with running
    /// processes (re-attaching to live VMs, marking dead ones, removing
    /// stale sockets and orphaned VMM processes) and starts the health
    /// checker. Workspace data is never deleted here.
    ///
    /// # Errors
    /// When the base directory cannot be created or read.
    pub async fn open(config: Arc<Config>, vmm: Arc<dyn Vmm>, accel: String) -> Result<Arc<Self>> {
        let layout = Layout::new(&config.base_dir);
        for dir in [
            layout.base().to_path_buf(),
            layout.sandboxes_dir(),
            layout.workspaces_dir(),
        ] {
            create_private_dir(&dir)?;
        }
        let memory_budget_mb = if config.memory_budget_mb > 0 {
            config.memory_budget_mb
        } else {
            host_memory_mb()
                .saturating_sub(config.host_reserve_mb)
                .max(256)
        };
        let manager = Arc::new(Self {
            config,
            vmm,
            accel,
            layout,
            memory_budget_mb,
            table: Mutex::new(Table {
                next_cid: 3,
                ..Table::default()
            }),
        });
        manager.recover().await;
        manager.kill_orphans();
        manager.check_workspaces();
        let weak = Arc::downgrade(&manager);
        let period = Duration::from_secs(manager.config.health_check_interval_sec.max(1));
        tokio::spawn(health_loop(weak, period));
        Ok(manager)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backend in use.
    pub fn backend(&self) -> VmmKind {
        self.vmm.kind()
    }

    fn get_entry(&self, id: &SandboxId) -> Result<Arc<Sandbox>> {
        lock(&self.table)
            .sandboxes
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    fn workspace_lock(&self, id: &WorkspaceId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.table)
            .workspace_locks
            .entry(id.clone())
            .or_default()
            .clone()
    }

    fn info(&self, sb: &Sandbox) -> SandboxInfo {
        let r = lock(&sb.record);
        SandboxInfo {
            sandbox_id: r.sandbox_id.clone(),
            workspace_id: r.workspace_id.clone(),
            status: r.status,
            memory_mb: r.memory_mb,
            vcpu_count: r.vcpu_count,
            template: r.template.clone(),
            backend: r.backend,
            created_at: r.created_at.clone(),
            updated_at: r.updated_at.clone(),
            error: r.error.clone(),
            boot_ms: r.boot_ms,
        }
    }

    fn set_status(&self, sb: &Sandbox, status: SandboxStatus, error: Option<String>) {
        let snapshot = {
            let mut r = lock(&sb.record);
            r.status = status;
            r.error = error;
            r.updated_at = store::now_rfc3339();
            r.clone()
        };
        self.persist(&snapshot);
    }

    fn persist(&self, record: &SandboxRecord) {
        let path = self.layout.sandbox_state(&record.sandbox_id);
        if let Err(e) = store::write_json_atomic(&path, record) {
            warn!(sandbox_id = %record.sandbox_id, error = %e, "failed to write state.json");
        }
    }

    // ---------------------------------------------------------------- images

    fn image(&self, template: &str) -> Result<Image> {
        let dir = self.layout.image_dir(template);
        let kernel = dir.join("vmlinux");
        let rootfs = dir.join("rootfs.ext4");
        let manifest_path = dir.join("manifest.json");
        if !kernel.exists() || !rootfs.exists() {
            return Err(ManagerError::NotFound {
                kind: "template",
                id: format!(
                    "{template} (no guest image in {}; build it with `locale2b image build --template {template}`)",
                    dir.display()
                ),
            });
        }
        let manifest: serde_json::Value = store::read_json(&manifest_path)
            .map_err(|e| ManagerError::io(format!("cannot read {}", manifest_path.display()), e))?;
        let sha = |part: &str| {
            manifest
                .get(part)
                .and_then(|p| p.get("sha256"))
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Image {
            kernel,
            rootfs,
            kernel_sha256: sha("kernel"),
            rootfs_sha256: sha("rootfs"),
        })
    }

    // ---------------------------------------------------------------- create

    /// Creates (boots) a sandbox. When `workspace_id` names a workspace whose
    /// sandbox is paused, that sandbox is resumed instead; when it is already
    /// running, the running sandbox is returned (so a retried create with a
    /// workspace id is idempotent).
    ///
    /// # Errors
    /// InvalidInput for bad sizes/template, AtCapacity, Vm/Timeout when the
    /// VM fails to come up (everything made for it is removed again).
    pub async fn create(&self, req: CreateSandbox) -> Result<SandboxInfo> {
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
        let ws_lock = self.workspace_lock(&workspace_id);
        let _ws_guard = ws_lock.lock().await;

        // An existing workspace: attach to its sandbox if it has one.
        let existing = self.read_workspace(&workspace_id);
        if let Some(ws) = &existing {
            if let Some(sid) = &ws.sandbox_id {
                if let Ok(sb) = self.get_entry(sid) {
                    let status = lock(&sb.record).status;
                    match status {
                        SandboxStatus::Paused => return self.resume(sid).await,
                        SandboxStatus::Dead => {
                            return Err(ManagerError::Conflict(format!(
                                "workspace {workspace_id} is attached to dead sandbox {sid}; destroy it first (its data is kept)"
                            )))
                        }
                        _ => return Ok(self.info(&sb)),
                    }
                }
            }
            if ws.template != template {
                return Err(ManagerError::InvalidInput(format!(
                    "workspace {workspace_id} was created with template {:?}, not {template:?}",
                    ws.template
                )));
            }
        }

        let image = self.image(&template)?;
        let sandbox_id = SandboxId::generate();
        let now = store::now_rfc3339();
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
            updated_at: now.clone(),
            error: None,
            process: None,
            boot_ms: None,
            env,
        };
        let sb = Arc::new(Sandbox {
            id: sandbox_id.clone(),
            record: Mutex::new(record.clone()),
            lifecycle: tokio::sync::Mutex::new(None),
            client: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        });
        let mut vm_slot = sb.lifecycle.lock().await;
        self.admit(&sb, Admission::New)?;
        let record = lock(&sb.record).clone();

        let made_workspace = existing.is_none();
        let started = Instant::now();
        let result = async {
            let ws = match existing {
                Some(ws) => ws,
                None => {
                    self.create_workspace(&workspace_id, &template, ephemeral)
                        .await?
                }
            };
            create_private_dir(&self.layout.sandbox_dir(&sandbox_id))?;
            self.persist(&record);
            let spec = self.vm_spec(&record, &image);
            let vm = self.vmm.start(&spec).await.map_err(|e| {
                ManagerError::vm(
                    format!("failed to start the VM for sandbox {sandbox_id}"),
                    e,
                )
            })?;
            {
                let mut r = lock(&sb.record);
                r.process = Some(vm.process().clone());
            }
            *vm_slot = Some(vm);
            self.persist(&lock(&sb.record).clone());
            let client = self.new_client(vm_slot.as_ref().map(|v| v.vsock_path().to_path_buf()));
            self.wait_agent(&sb, &client, vm_slot.as_deref()).await?;
            self.init_guest(&sb, &client).await?;
            *lock(&sb.client) = Some(client);
            Ok::<_, ManagerError>(ws)
        }
        .await;

        match result {
            Ok(mut ws) => {
                let boot_ms = started.elapsed().as_millis() as u64;
                lock(&sb.record).boot_ms = Some(boot_ms);
                self.set_status(&sb, SandboxStatus::Running, None);
                ws.sandbox_id = Some(sandbox_id.clone());
                push_lineage(&mut ws, "created", Some(&sandbox_id), None, None);
                self.write_workspace(&ws);
                info!(sandbox_id = %sandbox_id, workspace_id = %workspace_id, boot_ms, "sandbox running");
                drop(vm_slot);
                Ok(self.info(&sb))
            }
            Err(err) => {
                warn!(sandbox_id = %sandbox_id, error = %err, "create failed; cleaning up");
                if let Some(vm) = vm_slot.take() {
                    if let Err(e) = vm.kill().await {
                        warn!(sandbox_id = %sandbox_id, error = %e, "kill after failed create");
                    }
                }
                drop(vm_slot);
                self.forget(&sandbox_id);
                let _ = std::fs::remove_dir_all(self.layout.sandbox_dir(&sandbox_id));
                if made_workspace {
                    let _ = std::fs::remove_dir_all(self.layout.workspace_dir(&workspace_id));
                }
                Err(err)
            }
        }
    }

    /// Admits a sandbox against `max_sandboxes` and the memory budget in one
    /// step under the table lock, so concurrent creates and resumes cannot
    /// overshoot: a new sandbox gets a free vsock CID and enters the table;
    /// a paused one turns `resuming`.
    fn admit(&self, sb: &Arc<Sandbox>, how: Admission) -> Result<()> {
        let mut table = lock(&self.table);
        let mut active = 0u32;
        let mut used = 0u64;
        let mut cids = Vec::new();
        for other in table.sandboxes.values() {
            if other.id == sb.id {
                continue;
            }
            let r = lock(&other.record);
            if holds_vm(r.status) {
                active += 1;
                used += u64::from(r.memory_mb);
            }
            cids.push(r.guest_cid);
        }
        let memory_mb = lock(&sb.record).memory_mb;
        if active >= self.config.max_sandboxes {
            return Err(ManagerError::AtCapacity {
                reason: format!(
                    "at capacity: {active} of {} sandboxes running; destroy or pause one, or retry later",
                    self.config.max_sandboxes
                ),
                retry_after: Duration::from_secs(10),
            });
        }
        if used + u64::from(memory_mb) > self.memory_budget_mb {
            return Err(ManagerError::AtCapacity {
                reason: format!(
                    "memory budget exhausted: {used} MiB of {} MiB in use, {memory_mb} MiB requested",
                    self.memory_budget_mb
                ),
                retry_after: Duration::from_secs(10),
            });
        }
        match how {
            Admission::New => {
                let mut cid = table.next_cid.max(3);
                while cids.contains(&cid) {
                    cid = cid.wrapping_add(1).max(3);
                }
                table.next_cid = cid.wrapping_add(1).max(3);
                lock(&sb.record).guest_cid = cid;
                table.sandboxes.insert(sb.id.clone(), sb.clone());
                debug!(sandbox_id = %sb.id, cid, "admitted");
            }
            Admission::Resume => {
                let mut r = lock(&sb.record);
                r.status = SandboxStatus::Resuming;
                r.error = None;
                r.updated_at = store::now_rfc3339();
            }
        }
        Ok(())
    }

    fn forget(&self, id: &SandboxId) {
        lock(&self.table).sandboxes.remove(id);
    }

    fn vm_spec(&self, r: &SandboxRecord, image: &Image) -> VmSpec {
        VmSpec {
            sandbox_id: r.sandbox_id.clone(),
            kernel: image.kernel.clone(),
            disks: vec![
                DiskSpec {
                    path: image.rootfs.clone(),
                    read_only: true,
                },
                DiskSpec {
                    path: self.layout.workspace_disk(&r.workspace_id),
                    read_only: false,
                },
            ],
            memory: MemMib(r.memory_mb),
            vcpus: r.vcpu_count,
            extra_boot_args: format!(
                "init=/usr/local/bin/locale2b-agent locale2b.sandbox_id={}",
                r.sandbox_id
            ),
            run_dir: self.layout.sandbox_dir(&r.sandbox_id),
            guest_cid: r.guest_cid,
        }
    }

    fn new_client(&self, vsock: Option<PathBuf>) -> AgentClient {
        let config = ClientConfig {
            max_frame: self.config.max_frame_bytes,
            ..ClientConfig::default()
        };
        AgentClient::new(vsock.unwrap_or_default(), config)
    }

    /// Waits for the agent's `ping`, watching the VMM so that a VM that dies
    /// during boot fails fast with its console tail instead of a timeout.
    async fn wait_agent(
        &self,
        sb: &Sandbox,
        client: &AgentClient,
        vm: Option<&dyn VmHandle>,
    ) -> Result<()> {
        let timeout = self.config.boot_timeout();
        let deadline = Instant::now() + timeout;
        let ready = client.wait_ready(deadline);
        let exited = async {
            match vm {
                Some(vm) => vm.wait_exit().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = ready => r.map(|_| ()).map_err(|e| match e {
                ClientError::NotReady { .. } => ManagerError::Timeout {
                    what: format!(
                        "waiting for the guest agent of sandbox {} (last console lines: {})",
                        sb.id,
                        self.console_tail(&sb.id, 5)
                    ),
                    after: timeout,
                },
                other => ManagerError::vm(format!("guest agent of sandbox {} is unusable", sb.id), other),
            }),
            reason = exited => Err(ManagerError::Vm {
                message: format!(
                    "VM of sandbox {} exited during boot ({reason}); last console lines: {}",
                    sb.id,
                    self.console_tail(&sb.id, 10)
                ),
                source: None,
            }),
        }
    }

    async fn init_guest(&self, sb: &Sandbox, client: &AgentClient) -> Result<()> {
        use base64::Engine as _;
        use rand::RngCore as _;
        let (workspace_id, env) = {
            let r = lock(&sb.record);
            (r.workspace_id.clone(), r.env.clone())
        };
        let mut entropy = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut entropy);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        client
            .init(InitRequest {
                sandbox_id: sb.id.to_string(),
                workspace_id: Some(workspace_id.to_string()),
                hostname: Some(sb.id.to_string()),
                unix_time_ms: Some(now_ms),
                env,
                entropy_b64: Some(base64::engine::general_purpose::STANDARD.encode(entropy)),
            })
            .await
            .map_err(|e| ManagerError::vm(format!("init of sandbox {} failed", sb.id), e))
    }

    fn console_tail(&self, id: &SandboxId, lines: usize) -> String {
        let path = self.layout.sandbox_dir(id).join("console.log");
        let text = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        let joined = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        if joined.is_empty() {
            "(console empty)".into()
        } else {
            joined
        }
    }

    // ------------------------------------------------------------ workspaces

    async fn create_workspace(
        &self,
        id: &WorkspaceId,
        template: &str,
        ephemeral: bool,
    ) -> Result<WorkspaceRecord> {
        let dir = self.layout.workspace_dir(id);
        create_private_dir(&dir)?;
        create_private_dir(&self.layout.snapshots_dir(id))?;
        let disk = self.layout.workspace_disk(id);
        make_disk(&disk, self.config.disk_size_mb).await?;
        let ws = WorkspaceRecord {
            format: RECORD_FORMAT,
            workspace_id: id.clone(),
            template: template.to_owned(),
            created_at: store::now_rfc3339(),
            ephemeral,
            sandbox_id: None,
            snapshot_id: None,
            lineage: Vec::new(),
        };
        self.write_workspace(&ws);
        Ok(ws)
    }

    fn read_workspace(&self, id: &WorkspaceId) -> Option<WorkspaceRecord> {
        store::read_json(&self.layout.workspace_meta(id)).ok()
    }

    fn write_workspace(&self, ws: &WorkspaceRecord) {
        if let Err(e) = store::write_json_atomic(&self.layout.workspace_meta(&ws.workspace_id), ws)
        {
            warn!(workspace_id = %ws.workspace_id, error = %e, "failed to write workspace.json");
        }
    }

    fn update_workspace(&self, id: &WorkspaceId, f: impl FnOnce(&mut WorkspaceRecord)) {
        if let Some(mut ws) = self.read_workspace(id) {
            f(&mut ws);
            self.write_workspace(&ws);
        }
    }

    fn workspace_info(&self, ws: WorkspaceRecord) -> WorkspaceInfo {
        let status = ws
            .sandbox_id
            .as_ref()
            .and_then(|sid| self.get_entry(sid).ok())
            .map(|sb| lock(&sb.record).status.to_string())
            .unwrap_or_else(|| "idle".into());
        WorkspaceInfo {
            disk_usage_bytes: store::disk_usage(&self.layout.workspace_dir(&ws.workspace_id)),
            workspace_id: ws.workspace_id,
            template: ws.template,
            sandbox_id: ws.sandbox_id,
            status,
            snapshot_id: ws.snapshot_id,
            created_at: ws.created_at,
            lineage: ws.lineage,
        }
    }

    /// All workspaces, sorted by id.
    ///
    /// # Errors
    /// Internal when the base dir cannot be read.
    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>> {
        let dir = self.layout.workspaces_dir();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| ManagerError::io(format!("cannot read {}", dir.display()), e))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<WorkspaceId>().ok())
            else {
                continue;
            };
            if let Some(ws) = self.read_workspace(&id) {
                out.push(self.workspace_info(ws));
            }
        }
        out.sort_by(|a, b| a.workspace_id.cmp(&b.workspace_id));
        Ok(out)
    }

    /// One workspace with its lineage.
    ///
    /// # Errors
    /// NotFound.
    pub async fn get_workspace(&self, id: &WorkspaceId) -> Result<WorkspaceInfo> {
        self.read_workspace(id)
            .map(|ws| self.workspace_info(ws))
            .ok_or_else(|| ManagerError::NotFound {
                kind: "workspace",
                id: id.to_string(),
            })
    }

    /// Deletes a workspace's data for good. Refused (Conflict) while a
    /// sandbox is attached to it (destroy the sandbox first).
    ///
    /// # Errors
    /// NotFound, Conflict.
    pub async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()> {
        let ws_lock = self.workspace_lock(id);
        let _guard = ws_lock.lock().await;
        let ws = self
            .read_workspace(id)
            .ok_or_else(|| ManagerError::NotFound {
                kind: "workspace",
                id: id.to_string(),
            })?;
        if let Some(sid) = &ws.sandbox_id {
            if self.get_entry(sid).is_ok() {
                return Err(ManagerError::Conflict(format!(
                    "workspace {id} is attached to sandbox {sid}; destroy the sandbox first"
                )));
            }
        }
        let dir = self.layout.workspace_dir(id);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| ManagerError::io(format!("cannot remove {}", dir.display()), e))?;
        lock(&self.table).workspace_locks.remove(id);
        info!(workspace_id = %id, "workspace deleted");
        Ok(())
    }

    // ------------------------------------------------------------ queries

    /// One sandbox.
    ///
    /// # Errors
    /// NotFound.
    pub async fn get(&self, id: &SandboxId) -> Result<SandboxInfo> {
        let sb = self.get_entry(id)?;
        Ok(self.info(&sb))
    }

    /// All sandboxes, oldest first.
    pub async fn list(&self) -> Vec<SandboxInfo> {
        let entries: Vec<_> = lock(&self.table).sandboxes.values().cloned().collect();
        let mut out: Vec<_> = entries.iter().map(|sb| self.info(sb)).collect();
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.sandbox_id.cmp(&b.sandbox_id))
        });
        out
    }

    /// Capacity figures.
    pub async fn capacity(&self) -> Capacity {
        let entries: Vec<_> = lock(&self.table).sandboxes.values().cloned().collect();
        let (mut active, mut paused, mut used) = (0u32, 0u32, 0u64);
        for sb in entries {
            let r = lock(&sb.record);
            if holds_vm(r.status) {
                active += 1;
                used += u64::from(r.memory_mb);
            } else if r.status == SandboxStatus::Paused {
                paused += 1;
            }
        }
        Capacity {
            active_sandboxes: active,
            paused_sandboxes: paused,
            max_sandboxes: self.config.max_sandboxes,
            memory_used_mb: used,
            memory_available_mb: self.memory_budget_mb.saturating_sub(used),
            memory_budget_mb: self.memory_budget_mb,
            backend: self.vmm.kind(),
            accel: self.accel.clone(),
        }
    }

    // ------------------------------------------------------------ destroy

    /// Destroys a sandbox: asks the guest to sync and power off, kills the
    /// VMM after the grace period, removes the sandbox directory. The
    /// workspace's disk is kept when the caller named the workspace, and
    /// removed with the sandbox when its id was generated. Snapshots of the
    /// workspace are removed (the VM they belong to is gone).
    ///
    /// # Errors
    /// NotFound when the sandbox is unknown (already destroyed).
    pub async fn destroy(&self, id: &SandboxId) -> Result<()> {
        let sb = self.get_entry(id)?;
        let mut vm_slot = sb.lifecycle.lock().await;
        if !lock(&self.table).sandboxes.contains_key(id) {
            return Err(not_found(id)); // destroyed while we waited
        }
        self.set_status(&sb, SandboxStatus::Stopping, None);
        let client = lock(&sb.client).take();
        if let (Some(client), Some(_)) = (&client, vm_slot.as_ref()) {
            let quick = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
            debug!(sandbox_id = %id, ok = matches!(quick, Ok(Ok(()))), "agent shutdown");
        }
        if let Some(vm) = vm_slot.take() {
            if let Err(e) = vm.shutdown(self.config.shutdown_grace()).await {
                warn!(sandbox_id = %id, error = %e, "shutdown failed; killing");
                let _ = vm.kill().await;
            }
        } else if let Some(p) = lock(&sb.record).process.clone() {
            kill_process(&p);
        }
        let workspace_id = lock(&sb.record).workspace_id.clone();
        let dir = self.layout.sandbox_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(sandbox_id = %id, error = %e, "cannot remove sandbox dir");
            }
        }
        self.forget(id);
        drop(vm_slot);
        if let Some(ws) = self.read_workspace(&workspace_id) {
            if ws.ephemeral {
                let _ = std::fs::remove_dir_all(self.layout.workspace_dir(&workspace_id));
                lock(&self.table).workspace_locks.remove(&workspace_id);
            } else {
                let snaps = self.layout.snapshots_dir(&workspace_id);
                let _ = std::fs::remove_dir_all(&snaps);
                let _ = std::fs::create_dir_all(&snaps);
                self.update_workspace(&workspace_id, |ws| {
                    if ws.sandbox_id.as_ref() == Some(id) {
                        ws.sandbox_id = None;
                    }
                    ws.snapshot_id = None;
                    push_lineage(ws, "destroyed", Some(id), None, None);
                });
            }
        }
        info!(sandbox_id = %id, "sandbox destroyed");
        Ok(())
    }

    // ------------------------------------------------------------ pause/resume

    /// Pauses the VM, writes a full snapshot (state + memory, checksummed)
    /// under the workspace, and stops the VMM so the sandbox holds no RAM.
    /// Pausing a paused sandbox returns it unchanged. On failure the VM keeps
    /// running.
    ///
    /// # Errors
    /// NotFound; Conflict when starting, stopping or dead; Vm when the
    /// snapshot could not be written.
    pub async fn pause(&self, id: &SandboxId) -> Result<SandboxInfo> {
        let sb = self.get_entry(id)?;
        let mut vm_slot = sb.lifecycle.lock().await;
        let status = lock(&sb.record).status;
        match status {
            SandboxStatus::Paused => return Ok(self.info(&sb)),
            SandboxStatus::Running => {}
            other => {
                return Err(ManagerError::Conflict(format!(
                    "sandbox {id} is {other}; only a running sandbox can be paused"
                )))
            }
        }
        let Some(vm) = vm_slot.as_ref() else {
            return Err(ManagerError::Conflict(format!("sandbox {id} has no VM")));
        };
        let started = Instant::now();
        self.set_status(&sb, SandboxStatus::Pausing, None);
        // Flush the guest's page cache to the writable disk first, so the disk
        // alone is consistent even if the snapshot is later lost.
        let client = lock(&sb.client).clone();
        if let Some(client) = client {
            if let Err(e) = client.sync().await {
                warn!(sandbox_id = %id, error = %e, "guest sync before pause failed");
            }
        }
        let record = lock(&sb.record).clone();
        let result = self.write_snapshot(vm.as_ref(), &record).await;
        match result {
            Ok(snapshot_id) => {
                if let Some(vm) = vm_slot.take() {
                    let _ = vm.kill().await;
                }
                if let Some(c) = lock(&sb.client).take() {
                    c.invalidate();
                }
                {
                    let mut r = lock(&sb.record);
                    r.process = None;
                }
                self.set_status(&sb, SandboxStatus::Paused, None);
                let ws_id = record.workspace_id.clone();
                let keep = snapshot_id.clone();
                self.update_workspace(&ws_id, |ws| {
                    ws.snapshot_id = Some(keep.clone());
                    push_lineage(ws, "paused", Some(id), Some(&keep), None);
                });
                self.prune_snapshots(&ws_id, &snapshot_id);
                info!(sandbox_id = %id, snapshot_id, pause_ms = started.elapsed().as_millis() as u64, "sandbox paused");
                Ok(self.info(&sb))
            }
            Err(err) => {
                warn!(sandbox_id = %id, error = %err, "pause failed; resuming the VM");
                if let Some(vm) = vm_slot.as_ref() {
                    let _ = vm.resume().await;
                }
                self.set_status(&sb, SandboxStatus::Running, None);
                Err(err)
            }
        }
    }

    async fn write_snapshot(&self, vm: &dyn VmHandle, r: &SandboxRecord) -> Result<String> {
        let image = self.image(&r.template)?;
        let snapshot_id = format!("snap-{}", &SandboxId::generate().as_str()[3..]);
        let snaps = self.layout.snapshots_dir(&r.workspace_id);
        create_private_dir(&snaps)?;
        let tmp = snaps.join(format!(".{snapshot_id}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        create_private_dir(&tmp)?;
        let outcome = async {
            vm.pause()
                .await
                .map_err(|e| ManagerError::vm("failed to pause the VM", e))?;
            let files = vm
                .snapshot(&tmp)
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
            .map_err(|e| ManagerError::Internal {
                context: "checksum task failed".into(),
                source: Some(Box::new(e)),
            })?
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
                created_at: store::now_rfc3339(),
            };
            store::write_json_atomic(&tmp.join(snapshot::MANIFEST), &manifest)
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

    fn prune_snapshots(&self, ws: &WorkspaceId, keep: &str) {
        let snaps = self.layout.snapshots_dir(ws);
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
    /// sandbox returns it unchanged.
    ///
    /// # Errors
    /// NotFound; Conflict when not paused/running; Vm when the snapshot is
    /// invalid or the restored VM does not answer.
    pub async fn resume(&self, id: &SandboxId) -> Result<SandboxInfo> {
        let sb = self.get_entry(id)?;
        let mut vm_slot = sb.lifecycle.lock().await;
        let status = lock(&sb.record).status;
        match status {
            SandboxStatus::Running => return Ok(self.info(&sb)),
            SandboxStatus::Paused => {}
            other => {
                return Err(ManagerError::Conflict(format!(
                    "sandbox {id} is {other}; only a paused sandbox can be resumed"
                )))
            }
        }
        let record = lock(&sb.record).clone();
        let ws = self.read_workspace(&record.workspace_id).ok_or_else(|| {
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
            .layout
            .snapshots_dir(&record.workspace_id)
            .join(&snapshot_id);
        let backend = record.backend.to_string();
        let (k, rsha) = (image.kernel_sha256.clone(), image.rootfs_sha256.clone());
        let dir = snap_dir.clone();
        let manifest =
            tokio::task::spawn_blocking(move || snapshot::validate(&dir, &backend, &k, &rsha))
                .await
                .map_err(|e| ManagerError::Internal {
                    context: "validation task failed".into(),
                    source: Some(Box::new(e)),
                })?;
        let manifest = match manifest {
            Ok(m) => m,
            Err(invalid) => {
                warn!(sandbox_id = %id, snapshot_id, error = %invalid, "snapshot invalid; sandbox stays paused");
                self.update_workspace(&record.workspace_id, |ws| {
                    push_lineage(
                        ws,
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
        self.admit(&sb, Admission::Resume)?;
        self.persist(&lock(&sb.record).clone());
        let started = Instant::now();
        let files = SnapshotFiles {
            state: snap_dir.join(&manifest.state.name),
            memory: snap_dir.join(&manifest.memory.name),
        };
        let spec = self.vm_spec(&record, &image);
        let result = async {
            let vm = self.vmm.restore(&spec, &files).await.map_err(|e| {
                ManagerError::vm(
                    format!("failed to restore sandbox {id} from snapshot {snapshot_id}"),
                    e,
                )
            })?;
            lock(&sb.record).process = Some(vm.process().clone());
            *vm_slot = Some(vm);
            self.persist(&lock(&sb.record).clone());
            let client = self.new_client(vm_slot.as_ref().map(|v| v.vsock_path().to_path_buf()));
            self.wait_agent(&sb, &client, vm_slot.as_deref()).await?;
            self.init_guest(&sb, &client).await?;
            *lock(&sb.client) = Some(client);
            Ok::<_, ManagerError>(())
        }
        .await;
        match result {
            Ok(()) => {
                lock(&sb.record).boot_ms = Some(started.elapsed().as_millis() as u64);
                self.set_status(&sb, SandboxStatus::Running, None);
                *lock(&sb.last_used) = Instant::now();
                self.update_workspace(&record.workspace_id, |ws| {
                    ws.sandbox_id = Some(id.clone());
                    push_lineage(ws, "resumed", Some(id), Some(&snapshot_id), None);
                });
                info!(sandbox_id = %id, snapshot_id, resume_ms = started.elapsed().as_millis() as u64, "sandbox resumed");
                Ok(self.info(&sb))
            }
            Err(err) => {
                warn!(sandbox_id = %id, error = %err, "resume failed; sandbox stays paused");
                if let Some(vm) = vm_slot.take() {
                    let _ = vm.kill().await;
                }
                lock(&sb.record).process = None;
                self.set_status(&sb, SandboxStatus::Paused, Some(err.to_string()));
                self.update_workspace(&record.workspace_id, |ws| {
                    push_lineage(
                        ws,
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

    // ------------------------------------------------------------ guest calls

    fn running_client(&self, id: &SandboxId) -> Result<AgentClient> {
        let sb = self.get_entry(id)?;
        let status = lock(&sb.record).status;
        if status != SandboxStatus::Running {
            let hint = match status {
                SandboxStatus::Paused => "; resume it first",
                SandboxStatus::Dead => {
                    "; destroy it and create a new one (the workspace data is kept)"
                }
                _ => "; retry in a moment",
            };
            return Err(ManagerError::Conflict(format!(
                "sandbox {id} is {status}{hint}"
            )));
        }
        *lock(&sb.last_used) = Instant::now();
        let client = lock(&sb.client).clone();
        client
            .ok_or_else(|| ManagerError::Conflict(format!("sandbox {id} has no agent connection")))
    }

    /// Runs one agent call on a running sandbox and maps its error.
    async fn with_guest<T, F, Fut>(&self, id: &SandboxId, what: &str, call: F) -> Result<T>
    where
        F: FnOnce(AgentClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let client = self.running_client(id)?;
        call(client)
            .await
            .map_err(|e| self.guest_error(id, what, e))
    }

    fn guest_error(&self, id: &SandboxId, what: &str, e: ClientError) -> ManagerError {
        match e {
            ClientError::Agent(body) => ManagerError::Guest(body),
            ClientError::Timeout { what: w, after } => ManagerError::Timeout {
                what: format!("{what} in sandbox {id} ({w})"),
                after,
            },
            other => ManagerError::vm(
                format!("{what} in sandbox {id} failed: the guest agent is unreachable"),
                other,
            ),
        }
    }

    /// Runs a command in the sandbox.
    ///
    /// # Errors
    /// NotFound, Conflict (not running), InvalidInput (timeout too large), Guest, Timeout.
    pub async fn exec(&self, id: &SandboxId, mut req: ExecRequest) -> Result<ExecResponse> {
        let max_ms = self.config.max_exec_timeout_sec * 1000;
        match req.timeout_ms {
            Some(0) => return Err(ManagerError::InvalidInput("timeout must be positive".into())),
            Some(ms) if ms > max_ms => {
                return Err(ManagerError::InvalidInput(format!(
                    "timeout of {ms} ms exceeds the maximum of {max_ms} ms (LOCALE2B_MAX_EXEC_TIMEOUT_SEC)"
                )))
            }
            Some(_) => {}
            None => req.timeout_ms = Some(self.config.exec_timeout_sec * 1000),
        }
        self.with_guest(id, "exec", |c| async move { c.exec(req, None).await })
            .await
    }

    /// Reads (part of) a file.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`]; Guest(not_found) for a missing file.
    pub async fn read_file(&self, id: &SandboxId, req: ReadFileRequest) -> Result<FileContent> {
        self.with_guest(id, "read_file", |c| async move { c.read_file(req).await })
            .await
    }

    /// Writes a file.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn write_file(
        &self,
        id: &SandboxId,
        req: WriteFileRequest,
    ) -> Result<WrittenResponse> {
        self.with_guest(id, "write_file", |c| async move { c.write_file(req).await })
            .await
    }

    /// Lists a directory.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn list_files(&self, id: &SandboxId, req: ListFilesRequest) -> Result<Listing> {
        self.with_guest(id, "list_files", |c| async move { c.list_files(req).await })
            .await
    }

    /// Creates a directory.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn mkdir(&self, id: &SandboxId, req: MkdirRequest) -> Result<FileInfo> {
        self.with_guest(id, "mkdir", |c| async move { c.mkdir(req).await })
            .await
    }

    /// Describes a path.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn stat(&self, id: &SandboxId, path: String) -> Result<FileInfo> {
        self.with_guest(id, "stat", |c| async move { c.stat(path).await })
            .await
    }

    /// Deletes a path.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn delete_file(&self, id: &SandboxId, req: DeleteFileRequest) -> Result<()> {
        self.with_guest(
            id,
            "delete_file",
            |c| async move { c.delete_file(req).await },
        )
        .await
    }

    /// Renames a path inside the guest.
    ///
    /// # Errors
    /// As [`SandboxManager::exec`].
    pub async fn rename(&self, id: &SandboxId, from: String, to: String) -> Result<()> {
        self.with_guest(id, "rename", |c| async move { c.rename(from, to).await })
            .await
    }

    // ------------------------------------------------------------ recovery

    async fn recover(self: &Arc<Self>) {
        let dir = self.layout.sandboxes_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<SandboxId>().ok())
            else {
                continue;
            };
            let path = self.layout.sandbox_state(&id);
            let record: SandboxRecord = match store::read_json(&path) {
                Ok(r) => r,
                Err(err) => {
                    warn!(sandbox_id = %id, error = %err, "unreadable state.json; leaving the directory alone");
                    continue;
                }
            };
            self.recover_one(record).await;
        }
    }

    async fn recover_one(&self, mut record: SandboxRecord) {
        let id = record.sandbox_id.clone();
        let mut vm: Option<Box<dyn VmHandle>> = None;
        let mut client = None;
        let previous = record.status;
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
                    let ready = c.wait_ready(Instant::now() + Duration::from_secs(10)).await;
                    match ready {
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
                        self.console_tail(&id, 10)
                    ));
                    record.process = None;
                    remove_sockets(&self.layout.sandbox_dir(&id));
                    warn!(sandbox_id = %id, reason, "sandbox VM not running after restart");
                }
            }
            record.updated_at = store::now_rfc3339();
            self.persist(&record);
        } else {
            remove_sockets(&self.layout.sandbox_dir(&id));
        }
        let sb = Arc::new(Sandbox {
            id: id.clone(),
            record: Mutex::new(record.clone()),
            lifecycle: tokio::sync::Mutex::new(vm),
            client: Mutex::new(client),
            last_used: Mutex::new(Instant::now()),
        });
        let mut table = lock(&self.table);
        table.next_cid = table.next_cid.max(record.guest_cid.saturating_add(1));
        table.sandboxes.insert(id, sb);
    }

    /// Reports workspace directories without metadata (left in place: they
    /// may hold data) and removes snapshot directories that no workspace
    /// refers to (incomplete `.tmp` ones from a crash during pause, and ones
    /// superseded by a newer snapshot).
    fn check_workspaces(&self) {
        let Ok(entries) = std::fs::read_dir(self.layout.workspaces_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<WorkspaceId>().ok())
            else {
                warn!(path = %e.path().display(), "unexpected entry in workspaces dir; left in place");
                continue;
            };
            let Some(ws) = self.read_workspace(&id) else {
                warn!(workspace_id = %id, "orphaned workspace directory (no workspace.json); left in place");
                continue;
            };
            let Ok(snaps) = std::fs::read_dir(self.layout.snapshots_dir(&id)) else {
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
    fn kill_orphans(&self) {
        let known: Vec<u32> = lock(&self.table)
            .sandboxes
            .values()
            .filter_map(|sb| lock(&sb.record).process.as_ref().map(|p| p.pid))
            .collect();
        let marker = self.layout.sandboxes_dir();
        let marker = marker.to_string_lossy();
        for pid in orphan_candidates(&marker) {
            if known.contains(&pid) || pid == std::process::id() {
                continue;
            }
            warn!(pid, "killing orphaned VMM process");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    // ------------------------------------------------------------ health

    async fn health_check(&self) {
        let entries: Vec<_> = lock(&self.table).sandboxes.values().cloned().collect();
        for sb in entries {
            if lock(&sb.record).status != SandboxStatus::Running {
                continue;
            }
            // Skip sandboxes busy with a lifecycle operation.
            let Ok(slot) = sb.lifecycle.try_lock() else {
                continue;
            };
            let Some(vm) = slot.as_ref() else { continue };
            if let locale2b_vmm::VmStatus::Exited { reason } = vm.status().await {
                let tail = self.console_tail(&sb.id, 10);
                warn!(sandbox_id = %sb.id, reason, console = %tail, "VM died");
                drop(slot);
                if let Some(c) = lock(&sb.client).take() {
                    c.invalidate();
                }
                lock(&sb.record).process = None;
                self.set_status(
                    &sb,
                    SandboxStatus::Dead,
                    Some(format!(
                        "VM exited unexpectedly ({reason}); last console lines: {tail}"
                    )),
                );
                remove_sockets(&self.layout.sandbox_dir(&sb.id));
            }
        }
    }
}

async fn health_loop(manager: Weak<SandboxManager>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = manager.upgrade() else { return };
        m.health_check().await;
    }
}

fn push_lineage(
    ws: &mut WorkspaceRecord,
    event: &str,
    sandbox: Option<&SandboxId>,
    snapshot: Option<&str>,
    detail: Option<String>,
) {
    ws.lineage.push(LineageEvent {
        at: store::now_rfc3339(),
        event: event.to_owned(),
        sandbox_id: sandbox.cloned(),
        snapshot_id: snapshot.map(str::to_owned),
        detail,
    });
    // Keep the history bounded.
    if ws.lineage.len() > 1000 {
        let excess = ws.lineage.len() - 1000;
        ws.lineage.drain(..excess);
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ManagerError::io(format!("cannot create directory {}", dir.display()), e))
}

async fn make_disk(path: &Path, size_mb: u64) -> Result<()> {
    let file = std::fs::File::create(path)
        .map_err(|e| ManagerError::io(format!("cannot create {}", path.display()), e))?;
    file.set_len(size_mb * 1024 * 1024)
        .map_err(|e| ManagerError::io(format!("cannot size {}", path.display()), e))?;
    drop(file);
    let out = tokio::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-L",
            "workspace",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(path)
        .output()
        .await
        .map_err(|e| ManagerError::io("cannot run mkfs.ext4 (install e2fsprogs)", e))?;
    if !out.status.success() {
        return Err(ManagerError::Internal {
            context: format!(
                "mkfs.ext4 {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: None,
        });
    }
    Ok(())
}

fn remove_sockets(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().and_then(|x| x.to_str()) == Some("sock") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn kill_process(p: &VmProcess) {
    if locale2b_vmm::process::is_alive(p.pid, p.start_time) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// PIDs of processes whose command line mentions `marker` (our sandboxes dir).
fn orphan_candidates(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let exe = cmdline.split('\0').next().unwrap_or_default();
        let is_vmm =
            exe.contains("qemu-system") || exe.contains("firecracker") || exe.contains("jailer");
        if is_vmm && cmdline.contains(marker) {
            out.push(pid);
        }
    }
    out
}

fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(4096)
}
