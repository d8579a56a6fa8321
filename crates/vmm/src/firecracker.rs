//! Firecracker driver: one Firecracker process per VM, driven over its HTTP
//! API socket, optionally started by the jailer.
//!
//! How the [`Vmm`]/[`VmHandle`] operations map onto Firecracker's API
//! (see `docs/firecracker.md` for the whole picture):
//!
//! | operation | requests |
//! |-----------|----------|
//! | [`Vmm::start`] | spawn, wait for the API socket, `PUT /logger`, `PUT /metrics`, `PUT /machine-config`, `PUT /boot-source`, `PUT /drives/<id>` per disk, `PUT /vsock`, `PUT /actions InstanceStart` |
//! | [`Vmm::restore`] | spawn, `PUT /logger`, `PUT /metrics`, `PUT /snapshot/load` (File backend, `resume_vm`) |
//! | [`Vmm::attach`] | PID + start time check, `GET /` |
//! | pause / resume | `PATCH /vm {"state": "Paused" / "Resumed"}` |
//! | status | process liveness, then `GET /` |
//! | snapshot | `PUT /snapshot/create` (Full), only while paused |
//! | shutdown | `PUT /actions SendCtrlAltDel`, wait, SIGKILL |
//!
//! Paths stored in a snapshot (drives, vsock socket) are relative to the
//! run directory (or the jail root), so a snapshot restores into any
//! sandbox's run directory: see [`jailer`].

mod api;
pub mod jailer;

use crate::process::{check_alive, NotAlive, VmmProcess};
use crate::{Result, SnapshotFiles, VmHandle, VmProcess, VmSpec, VmStatus, Vmm, VmmError, VmmKind};
use api::ApiClient;
use async_trait::async_trait;
pub use jailer::JailerConfig;
use jailer::{Layout, API_SOCKET, VSOCK_SOCKET};
use locale2b_protocol::SandboxId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Kernel command line the driver always passes. Firecracker itself appends
/// `root=/dev/vda ro|rw` for the root drive and `pci=off`.
pub const BASE_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1 rootfstype=ext4";

/// Guest console (Firecracker's stdout).
const CONSOLE_LOG: &str = "console.log";
/// Firecracker's stderr (messages before the logger is configured).
const PROCESS_LOG: &str = "firecracker.log";
/// Firecracker's logger output (`PUT /logger`).
const LOGGER_FILE: &str = "fc-logger.log";
/// Firecracker's metrics output (`PUT /metrics`).
const METRICS_FILE: &str = "fc-metrics.json";
/// The guest NIC's id in Firecracker's API (`eth0` in the guest).
const NET_IFACE: &str = "eth0";
/// Kernel link name inside a jail.
const KERNEL_LINK: &str = "vmlinux";
const INITRD_LINK: &str = "initrd";
/// Snapshot file names inside a jail.
const JAIL_SNAPSHOT_STATE: &str = "snapshot-state";
const JAIL_SNAPSHOT_MEMORY: &str = "snapshot-memory";
/// Snapshot file names in the caller's directory.
const SNAPSHOT_STATE: &str = "state";
const SNAPSHOT_MEMORY: &str = "memory";
/// How often the API socket is probed during start.
const SOCKET_POLL: Duration = Duration::from_millis(10);
/// How long a SIGKILLed process may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often an adopted (non-child) process is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(20);
/// How long a failed start waits for the process to exit on its own, to
/// report its log rather than a connection error.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// Lines of log shown in errors.
const LOG_TAIL_LINES: usize = 20;

/// Configuration of the Firecracker backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerConfig {
    /// Path of the `firecracker` binary.
    pub binary: PathBuf,
    /// Jailer settings; used only when [`FirecrackerConfig::use_jailer`].
    pub jailer: Option<JailerConfig>,
    /// Start Firecracker through the jailer.
    pub use_jailer: bool,
    /// How long to wait for the API socket after spawning.
    pub api_socket_timeout: Duration,
    /// Timeout of each ordinary API request.
    pub request_timeout: Duration,
    /// Timeout of `InstanceStart` and `PUT /snapshot/load`.
    pub boot_timeout: Duration,
    /// Timeout of `PUT /snapshot/create` (writes all guest memory).
    pub snapshot_timeout: Duration,
    /// Send `vsock_override` in `PUT /snapshot/load` (Firecracker 1.17+).
    /// Not needed by this driver (the vsock path is relative); kept for
    /// snapshots taken by other tools with absolute socket paths.
    pub snapshot_vsock_override: bool,
}

impl FirecrackerConfig {
    /// Defaults: no jailer, 5 s for the API socket and each request, 30 s
    /// for `InstanceStart` and snapshot load, 300 s for snapshot create.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            jailer: None,
            use_jailer: false,
            api_socket_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            boot_timeout: Duration::from_secs(30),
            snapshot_timeout: Duration::from_secs(300),
            snapshot_vsock_override: false,
        }
    }
}

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    config: FirecrackerConfig,
}

impl FirecrackerVmm {
    /// A backend with `config`. Nothing is checked until a VM starts.
    pub fn new(config: FirecrackerConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &FirecrackerConfig {
        &self.config
    }

    fn jailer(&self) -> Result<Option<&JailerConfig>> {
        if !self.config.use_jailer {
            return Ok(None);
        }
        self.config
            .jailer
            .as_ref()
            .map(Some)
            .ok_or(VmmError::Unsupported(
                "use_jailer without a jailer configuration",
            ))
    }

    fn layout(&self, spec: &VmSpec) -> Result<Layout> {
        Ok(match self.jailer()? {
            None => Layout::plain(&spec.run_dir),
            Some(j) => Layout::jailed(j.chroot_root(&self.config.binary, &spec.sandbox_id)),
        })
    }

    /// Checks binaries and disks, creates the jail root (jailer mode) and
    /// links the disks into the VM root.
    fn prepare(&self, spec: &VmSpec) -> Result<Layout> {
        check_executable(&self.config.binary)?;
        let layout = self.layout(spec)?;
        if let Some(j) = self.jailer()? {
            check_executable(&j.binary)?;
            if let Some(problem) = jailer::jailer_id_problem(&spec.sandbox_id) {
                return Err(VmmError::Spawn {
                    what: "jailer",
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("sandbox id {} {problem}", spec.sandbox_id),
                    ),
                });
            }
            std::fs::create_dir_all(&layout.root)
                .map_err(|e| io_err(format!("creating jail root {}", layout.root.display()), e))?;
        }
        Self::link_disks(spec, &layout, self.jail_owner()?)?;
        Ok(layout)
    }

    /// The uid/gid Firecracker runs as inside the jail (`None` without the
    /// jailer): files it must write (writable drives, its log and metrics
    /// files) are given to it, as the jailer's documentation requires.
    fn jail_owner(&self) -> Result<Option<(u32, u32)>> {
        Ok(self.jailer()?.map(|j| (j.uid, j.gid)))
    }

    /// Prepares sockets and log files, spawns Firecracker and waits for its
    /// API socket. On error nothing is left running.
    async fn spawn(&self, spec: &VmSpec, layout: &Layout) -> Result<Starting> {
        let jailer = self.jailer()?;
        let api_sock = layout.host_path(API_SOCKET);
        let vsock = layout.host_path(VSOCK_SOCKET);
        remove_if_exists(&api_sock)?;
        remove_if_exists(&vsock)?;
        for name in [LOGGER_FILE, METRICS_FILE] {
            let path = layout.host_path(name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err(format!("creating {}", path.display()), e))?;
            hand_over(&path, self.jail_owner()?)?;
        }
        let console = append_file(&spec.run_dir.join(CONSOLE_LOG))?;
        let stderr = append_file(&spec.run_dir.join(PROCESS_LOG))?;

        let mut cmd = match jailer {
            None => {
                let mut cmd = crate::command_in(&self.config.binary, spec.net.as_ref());
                cmd.arg("--api-sock")
                    .arg(&api_sock)
                    .arg("--id")
                    .arg(spec.sandbox_id.as_str())
                    .current_dir(&layout.root);
                cmd
            }
            Some(j) => {
                let mut cmd = tokio::process::Command::new(&j.binary);
                cmd.args(j.args(
                    &self.config.binary,
                    &spec.sandbox_id,
                    spec.net.as_ref().map(|n| n.netns.as_path()),
                ));
                cmd
            }
        };
        // Own process group, stdin closed, not killed on drop: see
        // `VmmProcess::spawn`.
        cmd.stdout(Stdio::from(console)).stderr(Stdio::from(stderr));
        let vmm = VmmProcess::spawn(cmd).map_err(|source| VmmError::Spawn {
            what: if jailer.is_some() {
                "jailer"
            } else {
                "firecracker"
            },
            source,
        })?;
        tracing::info!(sandbox_id = %spec.sandbox_id, pid = vmm.pid(), jailed = layout.jailed, "firecracker spawned");
        let starting = Starting {
            api: ApiClient::new(api_sock, self.config.request_timeout),
            vmm,
            run_dir: spec.run_dir.clone(),
            sandbox_id: spec.sandbox_id.clone(),
            layout: layout.clone(),
        };
        if let Err(e) = starting
            .wait_for_socket(self.config.api_socket_timeout)
            .await
        {
            starting.abort().await;
            return Err(e);
        }
        Ok(starting)
    }

    async fn configure_logging(&self, s: &Starting) -> Result<()> {
        let log = s.layout.vm_path(LOGGER_FILE);
        s.api
            .put(
                "/logger",
                &json!({"log_path": log, "level": "Info", "show_level": true}),
            )
            .await?;
        let metrics = s.layout.vm_path(METRICS_FILE);
        s.api
            .put("/metrics", &json!({"metrics_path": metrics}))
            .await
    }

    async fn boot(&self, spec: &VmSpec, s: &Starting) -> Result<()> {
        self.configure_logging(s).await?;
        s.api
            .put(
                "/machine-config",
                &json!({
                    "vcpu_count": spec.vcpus,
                    "mem_size_mib": spec.memory.0,
                    "smt": false,
                }),
            )
            .await?;
        let in_vm = |what: &'static str, path: &Path, link: &str| match s.layout.outside_path(path)
        {
            Some(p) => Ok(p),
            None => {
                s.layout.link_in(path, link).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        VmmError::MissingFile {
                            what,
                            path: path.to_owned(),
                        }
                    } else {
                        link_err(&s.layout, path, e)
                    }
                })?;
                Ok::<_, VmmError>(s.layout.vm_path(link))
            }
        };
        let mut boot_source = json!({
            "kernel_image_path": in_vm("kernel", &spec.kernel, KERNEL_LINK)?,
            "boot_args": boot_args(spec),
        });
        if let Some(initrd) = &spec.initrd {
            boot_source["initrd_path"] = json!(in_vm("initrd", initrd, INITRD_LINK)?);
        }
        s.api.put("/boot-source", &boot_source).await?;
        for (i, disk) in spec.disks.iter().enumerate() {
            let name = Layout::drive_name(i);
            s.api
                .put(
                    &format!("/drives/{name}"),
                    &json!({
                        "drive_id": name,
                        "path_on_host": s.layout.vm_path(&name),
                        "is_root_device": i == 0,
                        "is_read_only": disk.read_only,
                    }),
                )
                .await?;
        }
        s.api
            .put(
                "/vsock",
                &json!({"guest_cid": spec.guest_cid, "uds_path": s.layout.vm_path(VSOCK_SOCKET)}),
            )
            .await?;
        if let Some(net) = &spec.net {
            // The tap is opened in Firecracker's own network namespace
            // (spawned inside it, or the jailer's `--netns`); a snapshot
            // loaded later re-opens the same name there.
            s.api
                .put(
                    &format!("/network-interfaces/{NET_IFACE}"),
                    &json!({"iface_id": NET_IFACE, "host_dev_name": net.tap, "guest_mac": net.mac}),
                )
                .await?;
        }
        s.api
            .call(
                "PUT",
                "/actions",
                Some(&json!({"action_type": "InstanceStart"})),
                Some(self.config.boot_timeout),
            )
            .await
            .map(drop)
    }

    async fn load(&self, s: &Starting, snapshot: &SnapshotFiles) -> Result<()> {
        self.configure_logging(s).await?;
        let (state, memory) = match (
            s.layout.outside_path(&snapshot.state),
            s.layout.outside_path(&snapshot.memory),
        ) {
            (Some(state), Some(memory)) => (state, memory),
            _ => {
                for (src, name) in [
                    (&snapshot.state, JAIL_SNAPSHOT_STATE),
                    (&snapshot.memory, JAIL_SNAPSHOT_MEMORY),
                ] {
                    s.layout
                        .link_in(src, name)
                        .map_err(|e| link_err(&s.layout, src, e))?;
                }
                (
                    s.layout.vm_path(JAIL_SNAPSHOT_STATE),
                    s.layout.vm_path(JAIL_SNAPSHOT_MEMORY),
                )
            }
        };
        let mut body = json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": memory},
            "resume_vm": true,
        });
        if self.config.snapshot_vsock_override {
            body["vsock_override"] = json!({"uds_path": s.layout.vm_path(VSOCK_SOCKET)});
        }
        s.api
            .call(
                "PUT",
                "/snapshot/load",
                Some(&body),
                Some(self.config.boot_timeout),
            )
            .await
            .map(drop)
    }

    /// Checks disks and links them into the VM root; in a jail, writable
    /// ones are given to the user Firecracker runs as.
    fn link_disks(spec: &VmSpec, layout: &Layout, owner: Option<(u32, u32)>) -> Result<()> {
        if spec.disks.is_empty() {
            return Err(VmmError::MissingFile {
                what: "root disk",
                path: PathBuf::new(),
            });
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            if std::fs::metadata(&disk.path).is_err() {
                return Err(VmmError::MissingFile {
                    what: "disk",
                    path: disk.path.clone(),
                });
            }
            layout
                .link_in(&disk.path, &Layout::drive_name(i))
                .map_err(|e| link_err(layout, &disk.path, e))?;
            if !disk.read_only {
                hand_over(&layout.host_path(&Layout::drive_name(i)), owner)?;
            }
        }
        Ok(())
    }

    async fn finish(&self, s: Starting, result: Result<()>) -> Result<Box<dyn VmHandle>> {
        let err = match result {
            Ok(()) => return Ok(Box::new(s.into_vm(&self.config))),
            Err(err) => err,
        };
        // Firecracker's own refusal says most; otherwise, if the process
        // died, its log says why.
        let exited = match err {
            VmmError::Api { .. } => None,
            _ => s.vmm.wait_timeout(EXIT_GRACE).await,
        };
        s.abort().await;
        match exited {
            Some(reason) => Err(VmmError::ExitedEarly {
                reason,
                log_tail: log_tail(&s.run_dir, &s.layout),
            }),
            None => Err(err),
        }
    }
}

#[async_trait]
impl Vmm for FirecrackerVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>> {
        let layout = self.prepare(spec)?;
        let s = self.spawn(spec, &layout).await?;
        let result = self.boot(spec, &s).await;
        self.finish(s, result).await
    }

    async fn restore(&self, spec: &VmSpec, snapshot: &SnapshotFiles) -> Result<Box<dyn VmHandle>> {
        for (what, path) in [
            ("snapshot state", &snapshot.state),
            ("snapshot memory", &snapshot.memory),
        ] {
            if std::fs::metadata(path).is_err() {
                return Err(VmmError::MissingFile {
                    what,
                    path: path.clone(),
                });
            }
        }
        let layout = self.prepare(spec)?;
        let s = self.spawn(spec, &layout).await?;
        let result = self.load(&s, snapshot).await;
        self.finish(s, result).await
    }

    /// A clone is a restore: Firecracker maps a `File` memory backend
    /// `MAP_PRIVATE`, so every clone shares the template's memory file
    /// copy-on-write and none writes it; the snapshot names its drives and
    /// vsock socket relative to the VM root (the run directory, or the
    /// jail), so each clone's own directory gives it its own.
    async fn clone_from(
        &self,
        spec: &VmSpec,
        template: &SnapshotFiles,
    ) -> Result<Box<dyn VmHandle>> {
        self.restore(spec, template).await
    }

    fn can_clone(&self) -> bool {
        true
    }

    fn identity(&self) -> String {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt as _;
                    format!("{}:{}:{}", p.display(), m.len(), m.mtime())
                })
                .unwrap_or_else(|_| p.display().to_string())
        };
        format!(
            "firecracker {} jailer={}",
            stamp(&self.config.binary),
            self.config
                .jailer
                .as_ref()
                .map_or_else(|| "none".to_owned(), |j| stamp(&j.binary))
        )
    }

    async fn attach(&self, spec: &VmSpec, process: &VmProcess) -> Result<Box<dyn VmHandle>> {
        if process.kind != VmmKind::Firecracker {
            return Err(VmmError::Unsupported("attaching a non-firecracker process"));
        }
        let layout = self.layout(spec)?;
        let tail = || log_tail(&spec.run_dir, &layout);
        let exited = |reason: String| VmmError::ExitedEarly {
            reason,
            log_tail: tail(),
        };
        match check_alive(process.pid, process.start_time) {
            Ok(()) => {}
            Err(NotAlive::Gone) => return Err(exited(format!("process {} is gone", process.pid))),
            Err(NotAlive::Reused { start_time }) => {
                return Err(exited(format!(
                    "pid {} now belongs to another process (start time {} instead of {})",
                    process.pid, start_time, process.start_time
                )))
            }
            Err(NotAlive::Exited) => {
                return Err(exited(format!("process {} has exited", process.pid)))
            }
        }
        // Fails only if the process ended since the check above.
        let vmm = VmmProcess::adopt_polling(process.pid, process.start_time, ADOPTED_POLL)
            .map_err(|_| exited(format!("process {} has exited", process.pid)))?;
        let api = ApiClient::new(process.control_path.clone(), self.config.request_timeout);
        let info: InstanceInfo = api.get_json("/").await?;
        tracing::info!(sandbox_id = %spec.sandbox_id, pid = process.pid, state = %info.state, "firecracker attached");
        Ok(Box::new(FirecrackerVm {
            sandbox_id: spec.sandbox_id.clone(),
            process: process.clone(),
            api,
            vmm,
            layout,
            snapshot_timeout: self.config.snapshot_timeout,
        }))
    }
}

/// A Firecracker process between spawn and a usable handle.
struct Starting {
    api: ApiClient,
    vmm: VmmProcess,
    run_dir: PathBuf,
    sandbox_id: SandboxId,
    layout: Layout,
}

impl Starting {
    /// Polls until the API socket accepts connections.
    async fn wait_for_socket(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reason) = self.vmm.exit_reason() {
                return Err(VmmError::ExitedEarly {
                    reason,
                    log_tail: log_tail(&self.run_dir, &self.layout),
                });
            }
            if self.api.can_connect().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    what: format!("firecracker API socket {}", self.api.socket().display()),
                    after: timeout,
                });
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
    }

    /// Kills the process, reaps it and removes its sockets.
    async fn abort(&self) {
        if kill_group(&self.vmm, &self.sandbox_id).await.is_none() {
            tracing::warn!(sandbox_id = %self.sandbox_id, pid = self.vmm.pid(), "firecracker not reaped after SIGKILL");
        }
        cleanup(&self.layout);
    }

    fn into_vm(self, config: &FirecrackerConfig) -> FirecrackerVm {
        let process = VmProcess {
            kind: VmmKind::Firecracker,
            pid: self.vmm.pid(),
            start_time: self.vmm.start_time(),
            vsock_path: self.layout.host_path(VSOCK_SOCKET),
            control_path: self.api.socket().to_owned(),
            console_log: self.run_dir.join(CONSOLE_LOG),
            memory_template: None,
        };
        FirecrackerVm {
            sandbox_id: self.sandbox_id,
            process,
            api: self.api,
            vmm: self.vmm,
            layout: self.layout,
            snapshot_timeout: config.snapshot_timeout,
        }
    }
}

/// `GET /` answer.
#[derive(Debug, Deserialize)]
struct InstanceInfo {
    state: String,
}

/// A VM run by one Firecracker process.
#[derive(Debug)]
pub struct FirecrackerVm {
    sandbox_id: SandboxId,
    process: VmProcess,
    api: ApiClient,
    vmm: VmmProcess,
    layout: Layout,
    snapshot_timeout: Duration,
}

impl FirecrackerVm {
    fn ensure_alive(&self, op: &'static str) -> Result<()> {
        match self.vmm.exit_reason() {
            Some(reason) => Err(VmmError::InvalidState {
                op,
                state: format!("exited ({reason})"),
            }),
            None => Ok(()),
        }
    }

    async fn patch_state(&self, op: &'static str, state: &str) -> Result<()> {
        self.ensure_alive(op)?;
        self.api
            .call("PATCH", "/vm", Some(&json!({"state": state})), None)
            .await
            .map(drop)
    }

    async fn kill_and_reap(&self) {
        if self.vmm.exit_reason().is_none()
            && kill_group(&self.vmm, &self.sandbox_id).await.is_none()
        {
            tracing::warn!(sandbox_id = %self.sandbox_id, pid = self.process.pid, "firecracker still there after SIGKILL");
        }
        cleanup(&self.layout);
    }
}

#[async_trait]
impl VmHandle for FirecrackerVm {
    fn process(&self) -> &VmProcess {
        &self.process
    }

    /// `Exited` when the process is gone; otherwise Firecracker's own state
    /// ("Not started" counts as paused: no vCPU runs). If the API does not
    /// answer while the process lives, reports `Running` and logs a warning.
    async fn status(&self) -> VmStatus {
        if let Some(reason) = self.vmm.exit_reason() {
            return VmStatus::Exited { reason };
        }
        match self.api.get_json::<InstanceInfo>("/").await {
            Ok(info) if info.state == "Running" => VmStatus::Running,
            Ok(_) => VmStatus::Paused,
            Err(err) => {
                if let Some(reason) = self.vmm.exit_reason() {
                    return VmStatus::Exited { reason };
                }
                tracing::warn!(sandbox_id = %self.sandbox_id, error = %err, "firecracker API did not answer GET /");
                VmStatus::Running
            }
        }
    }

    async fn pause(&self) -> Result<()> {
        self.patch_state("pause", "Paused").await
    }

    async fn resume(&self) -> Result<()> {
        self.patch_state("resume", "Resumed").await
    }

    async fn snapshot(&self, dir: &Path) -> Result<SnapshotFiles> {
        self.ensure_alive("snapshot")?;
        match self.status().await {
            VmStatus::Paused => {}
            VmStatus::Running => {
                return Err(VmmError::InvalidState {
                    op: "snapshot",
                    state: "running".into(),
                })
            }
            VmStatus::Exited { reason } => {
                return Err(VmmError::InvalidState {
                    op: "snapshot",
                    state: format!("exited ({reason})"),
                })
            }
        }
        let files = SnapshotFiles {
            state: dir.join(SNAPSHOT_STATE),
            memory: dir.join(SNAPSHOT_MEMORY),
            ram_in_state: false,
        };
        let (state, memory) = match (
            self.layout.outside_path(&files.state),
            self.layout.outside_path(&files.memory),
        ) {
            (Some(s), Some(m)) => (s, m),
            _ => (
                self.layout.vm_path(JAIL_SNAPSHOT_STATE),
                self.layout.vm_path(JAIL_SNAPSHOT_MEMORY),
            ),
        };
        let started = Instant::now();
        self.api
            .call(
                "PUT",
                "/snapshot/create",
                Some(&json!({
                    "snapshot_type": "Full",
                    "snapshot_path": state,
                    "mem_file_path": memory,
                })),
                Some(self.snapshot_timeout),
            )
            .await?;
        if self.layout.jailed {
            for (name, dest) in [
                (JAIL_SNAPSHOT_STATE, &files.state),
                (JAIL_SNAPSHOT_MEMORY, &files.memory),
            ] {
                move_file(&self.layout.host_path(name), dest)?;
            }
        }
        tracing::info!(sandbox_id = %self.sandbox_id, elapsed_ms = started.elapsed().as_millis() as u64, "firecracker snapshot written");
        Ok(files)
    }

    async fn shutdown(&self, grace: Duration) -> Result<()> {
        if self.vmm.exit_reason().is_none() {
            let sent = self
                .api
                .put("/actions", &json!({"action_type": "SendCtrlAltDel"}))
                .await;
            match sent {
                Ok(()) => {
                    if self.vmm.wait_timeout(grace).await.is_none() {
                        tracing::info!(sandbox_id = %self.sandbox_id, ?grace, "guest did not power off in time; killing firecracker");
                    }
                }
                Err(err) => {
                    tracing::info!(sandbox_id = %self.sandbox_id, error = %err, "SendCtrlAltDel refused; killing firecracker");
                }
            }
        }
        self.kill_and_reap().await;
        Ok(())
    }

    async fn kill(&self) -> Result<()> {
        self.kill_and_reap().await;
        Ok(())
    }

    async fn wait_exit(&self) -> String {
        self.vmm.wait().await
    }
}

/// SIGKILLs the VMM's process group (the jailer or Firecracker leads its
/// own) and waits up to [`KILL_WAIT`] for the exit. Returns the exit
/// reason, or `None` if the process is still there.
async fn kill_group(vmm: &VmmProcess, sandbox_id: &SandboxId) -> Option<String> {
    if let Err(err) = vmm.signal_group(nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(%sandbox_id, pid = vmm.pid(), error = %err, "SIGKILL to firecracker failed");
    }
    vmm.wait_timeout(KILL_WAIT).await
}

/// Kernel command line: the driver's base arguments plus the spec's extras.
fn boot_args(spec: &VmSpec) -> String {
    let extra = spec.extra_boot_args.trim();
    if extra.is_empty() {
        BASE_BOOT_ARGS.to_owned()
    } else {
        format!("{BASE_BOOT_ARGS} {extra}")
    }
}

fn io_err(context: String, source: std::io::Error) -> VmmError {
    VmmError::Io { context, source }
}

/// The error of linking `src` into the VM root: a jail needs hard links,
/// which cannot cross file systems, so that case says what to change.
fn link_err(layout: &Layout, src: &Path, e: std::io::Error) -> VmmError {
    if layout.jailed && e.raw_os_error() == Some(libc::EXDEV) {
        return io_err(
            format!(
                "linking {} into the jail {}: the jail must be on the same file system as the base directory (hard links); set LOCALE2B_JAILER_CHROOT_BASE to a directory there",
                src.display(),
                layout.root.display()
            ),
            e,
        );
    }
    io_err(
        format!("linking {} into {}", src.display(), layout.root.display()),
        e,
    )
}

fn check_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| VmmError::BinaryMissing {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(VmmError::BinaryMissing {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "not an executable file",
            ),
        });
    }
    Ok(())
}

/// Gives `path` to `owner` (uid, gid) when there is one (jailer mode).
fn hand_over(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
            io_err(
                format!("giving {} to the jail user {uid}:{gid}", path.display()),
                e,
            )
        }),
        None => Ok(()),
    }
}

fn append_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(format!("opening {}", path.display()), e))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing stale {}", path.display()), e)),
    }
}

/// Moves a file, copying when source and destination are on different file
/// systems.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map_err(|e| io_err(format!("copying {} to {}", from.display(), to.display()), e))?;
    remove_if_exists(from)
}

/// Removes the sockets and links of a VM (logs stay).
fn cleanup(layout: &Layout) {
    for name in [API_SOCKET, VSOCK_SOCKET] {
        let _ = std::fs::remove_file(layout.host_path(name));
    }
    if let Ok(entries) = std::fs::read_dir(&layout.root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("drive_")
                || (layout.jailed && (name == KERNEL_LINK || name == INITRD_LINK))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Last lines of Firecracker's stderr, logger file and the console, for
/// error messages.
fn log_tail(run_dir: &Path, layout: &Layout) -> String {
    let mut out = Vec::new();
    for path in [
        run_dir.join(PROCESS_LOG),
        layout.host_path(LOGGER_FILE),
        run_dir.join(CONSOLE_LOG),
    ] {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            continue;
        }
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(format!("[{name}] {}", lines[start..].join("\n")));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskSpec, MemMib};

    #[test]
    fn boot_args_never_name_the_root_device() {
        let mut spec = VmSpec {
            sandbox_id: "sb-x".parse().expect("id"),
            kernel: "/k".into(),
            initrd: None,
            disks: vec![DiskSpec {
                path: "/r".into(),
                read_only: true,
            }],
            memory: MemMib(128),
            vcpus: 1,
            extra_boot_args: String::new(),
            run_dir: "/tmp".into(),
            guest_cid: 3,
            net: None,
        };
        assert_eq!(boot_args(&spec), BASE_BOOT_ARGS);
        spec.extra_boot_args = " init=/usr/local/bin/locale2b-agent ".into();
        assert_eq!(
            boot_args(&spec),
            format!("{BASE_BOOT_ARGS} init=/usr/local/bin/locale2b-agent")
        );
        assert!(!boot_args(&spec).contains("root="));
    }

    #[test]
    fn jailer_without_config_is_refused() {
        let mut cfg = FirecrackerConfig::new("/bin/true");
        cfg.use_jailer = true;
        let vmm = FirecrackerVmm::new(cfg);
        assert!(matches!(vmm.jailer(), Err(VmmError::Unsupported(_))));
    }
}
