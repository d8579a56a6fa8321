//! QEMU microvm driver.
//!
//! One VM = one `qemu-system-x86_64 -M microvm` process in its own process
//! group (it survives the server and is re-attached with [`Vmm::attach`]),
//! controlled over QMP (`<run_dir>/qmp.sock`). Files in the run directory:
//!
//! | file          | what                                                     |
//! |---------------|----------------------------------------------------------|
//! | `qmp.sock`    | QMP control socket (QEMU listens)                        |
//! | `serial.sock` | virtio-serial chardev of the agent port (QEMU listens)   |
//! | `vsock.sock`  | hybrid-vsock socket served by [`Bridge`] in our process  |
//! | `memory`      | guest RAM (`memory-backend-file`, `share=on`)            |
//! | `console.log` | guest serial console                                     |
//! | `qemu.log`    | QEMU's own stdout/stderr                                 |
//!
//! # Snapshots
//! Guest RAM lives in `<run_dir>/memory`, so a snapshot is the migration
//! stream with `x-ignore-shared` (device state only, a few hundred KiB)
//! written with `migrate fd:` into a descriptor passed over QMP (QEMU 7.2
//! has no `file:` URI, and its seccomp filter forbids `exec:`),
//! plus a **copy** of the RAM file (`cp --reflink=auto --sparse=always`, so
//! it is a reflink where the filesystem can, and sparse otherwise). A copy,
//! not a link: the VM may be resumed after the snapshot and would write into
//! a linked file. Restore copies the snapshot's memory back into the new run
//! directory before QEMU maps it, so the snapshot files are never written
//! and a failed restore leaves the snapshot usable.
//!
//! # Clones of a template
//! [`Vmm::clone_from`] starts QEMU with the template's memory file mapped
//! `share=off` (MAP_PRIVATE): pages the clone only reads stay shared with
//! every other clone through the host page cache, pages it writes become
//! its own, and the file is never written. Such a VM has no memory file of
//! its own, so its snapshot carries the RAM in the migration stream
//! (`x-ignore-shared` off, [`SnapshotFiles::ram_in_state`]) and an empty
//! `memory`; restoring that gives an ordinary VM with its own memory file.

mod qmp;

pub use self::qmp::{Qmp, QmpError};
use crate::bridge::{Bridge, BridgeConfig};
pub use crate::probe::Accel;
use crate::process::{tail_file, VmmProcess};
use crate::{Result, SnapshotFiles, VmHandle, VmProcess, VmSpec, VmStatus, Vmm, VmmError, VmmKind};
use async_trait::async_trait;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Longest Unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Settings of the qemu backend.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// `qemu-system-x86_64` (absolute path or a name looked up in `PATH`).
    pub binary: PathBuf,
    /// Accelerator, decided once by [`crate::probe`].
    pub accel: Accel,
    /// How long QEMU may take to create its QMP socket.
    pub start_timeout: Duration,
    /// Timeout of one QMP command.
    pub qmp_timeout: Duration,
    /// How long a snapshot save or load may take.
    pub migrate_timeout: Duration,
    /// Host TSC frequency for `tsc_early_khz=`; `None` = detect (once per
    /// process).
    pub tsc_khz: Option<u64>,
    /// Describe devices in ACPI (`-M microvm,acpi=on`, the default). ACPI
    /// also gives the guest a way to power off that ends QEMU. With `false`
    /// QEMU lists the virtio-mmio devices on the kernel command line instead
    /// (`virtio_mmio.device=`, needs `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`):
    /// use it for kernels whose ACPI cannot load microvm's tables (seen with
    /// an early build of the project kernel: "AE_BAD_PARAMETER, During
    /// Region initialization", then no disks). Without ACPI a guest
    /// power-off only halts; [`VmHandle::shutdown`] notices the halt on the
    /// console.
    pub acpi: bool,
    /// Size of TCG's translation cache, MiB (`-accel tcg,tb-size=`). QEMU's
    /// default (up to 1 GiB) keeps growing in a running guest; a fixed size
    /// bounds the host cost of every sandbox. Unused under KVM.
    pub tb_size_mb: u32,
}

/// Default [`QemuConfig::tb_size_mb`].
pub const DEFAULT_TB_SIZE_MB: u32 = 64;

impl QemuConfig {
    /// Defaults for `binary` and `accel`.
    pub fn new(binary: impl Into<PathBuf>, accel: Accel) -> Self {
        Self {
            binary: binary.into(),
            accel,
            // Generous: these catch a hung QEMU, and a host running dozens
            // of TCG guests on two cores can take seconds to answer (seen:
            // qmp_capabilities after more than 5 s).
            start_timeout: Duration::from_secs(30),
            qmp_timeout: Duration::from_secs(20),
            migrate_timeout: Duration::from_secs(120),
            tsc_khz: None,
            acpi: true,
            tb_size_mb: DEFAULT_TB_SIZE_MB,
        }
    }
}

/// The qemu backend.
#[derive(Debug, Clone)]
pub struct QemuVmm {
    config: QemuConfig,
    tsc_khz: Option<u64>,
}

impl QemuVmm {
    /// Creates the backend. Checks that the binary exists and detects the
    /// host TSC frequency (once per process) unless configured.
    ///
    /// # Errors
    /// [`VmmError::BinaryMissing`] when the binary cannot be found.
    pub fn new(config: QemuConfig) -> Result<Self> {
        resolve_binary(&config.binary).map_err(|source| VmmError::BinaryMissing {
            path: config.binary.clone(),
            source,
        })?;
        let tsc_khz = config.tsc_khz.or_else(host_tsc_khz);
        if tsc_khz.is_none() {
            warn!("host TSC frequency unknown: guests may hang in TSC calibration under TCG");
        }
        Ok(Self { config, tsc_khz })
    }

    /// The configuration.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// The full kernel command line for `spec`.
    pub fn kernel_cmdline(&self, spec: &VmSpec) -> String {
        kernel_cmdline(self.tsc_khz, &spec.extra_boot_args)
    }

    /// QEMU's arguments for `spec` (`incoming` adds `-S -incoming defer`),
    /// with guest RAM in the run directory's own memory file.
    pub fn args(&self, spec: &VmSpec, incoming: bool) -> Vec<String> {
        self.args_with(spec, incoming, &Ram::Own)
    }

    fn args_with(&self, spec: &VmSpec, incoming: bool, ram: &Ram) -> Vec<String> {
        build_args(
            &self.config,
            spec,
            &self.kernel_cmdline(spec),
            incoming,
            ram,
        )
    }

    async fn launch(&self, spec: &VmSpec, incoming: bool, ram: &Ram) -> Result<Launched> {
        check_spec(spec)?;
        let paths = RunPaths::new(&spec.run_dir);
        paths.remove_sockets();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.qemu_log)
            .map_err(|e| io_err(format!("open {}", paths.qemu_log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io_err("duplicate log file handle", e))?;
        let mut cmd = crate::command_in(&self.config.binary, spec.net.as_ref());
        cmd.args(self.args_with(spec, incoming, ram))
            .stdout(log)
            .stderr(log2);
        let process = VmmProcess::spawn(cmd).map_err(|source| VmmError::Spawn {
            what: "qemu",
            source,
        })?;
        info!(sandbox_id = %spec.sandbox_id, pid = process.pid(), incoming, "qemu started");
        match self.connect_qmp(&paths, &process).await {
            Ok(qmp) => Ok(Launched {
                process,
                qmp,
                paths,
                ram: ram.clone(),
            }),
            Err(e) => {
                let _ = process.kill(Duration::from_secs(5)).await;
                paths.remove_sockets();
                Err(e)
            }
        }
    }

    /// Waits for the QMP socket (watching for an early exit) and connects.
    async fn connect_qmp(&self, paths: &RunPaths, process: &VmmProcess) -> Result<Qmp> {
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            if let Some(reason) = process.exit_reason() {
                return Err(exited_early(reason, paths));
            }
            if paths.qmp.exists() {
                match Qmp::connect(&paths.qmp, self.config.qmp_timeout).await {
                    Ok(q) => return Ok(q),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(qmp_err("connect", e));
                    }
                    Err(e) => debug!(error = %e, "QMP not ready yet"),
                }
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    what: format!("QMP socket {}", paths.qmp.display()),
                    after: self.config.start_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn handle(&self, spec: &VmSpec, l: Launched) -> Result<Box<dyn VmHandle>> {
        let bridge = Bridge::start(BridgeConfig::new(
            l.paths.serial.clone(),
            l.paths.vsock.clone(),
            spec.sandbox_id.as_str(),
        ))
        .map_err(|e| io_err(format!("bind {}", l.paths.vsock.display()), e))?;
        Ok(Box::new(QemuVm {
            info: VmProcess {
                kind: VmmKind::Qemu,
                pid: l.process.pid(),
                start_time: l.process.start_time(),
                vsock_path: l.paths.vsock.clone(),
                control_path: l.paths.qmp.clone(),
                console_log: l.paths.console.clone(),
                memory_template: match &l.ram {
                    Ram::Own => None,
                    Ram::Private(p) => Some(p.clone()),
                },
            },
            sandbox_id: spec.sandbox_id.to_string(),
            process: l.process,
            qmp: l.qmp,
            paths: l.paths,
            bridge: std::sync::Mutex::new(Some(bridge)),
            migrate_timeout: self.config.migrate_timeout,
            ram_private: matches!(l.ram, Ram::Private(_)),
        }))
    }
}

struct Launched {
    process: VmmProcess,
    qmp: Qmp,
    paths: RunPaths,
    ram: Ram,
}

/// Where guest RAM lives.
#[derive(Debug, Clone)]
enum Ram {
    /// `<run_dir>/memory`, mapped shared (the VM owns the file).
    Own,
    /// A template's memory file, mapped private (copy-on-write).
    Private(PathBuf),
}

impl QemuVmm {
    /// Loads the migration stream `state` into a just launched `-incoming
    /// defer` QEMU and lets it run.
    async fn load_incoming(&self, l: &Launched, state: &Path, ignore_shared: bool) -> Result<()> {
        set_migration_caps(&l.qmp, ignore_shared).await?;
        // The stream comes from a descriptor passed over QMP (`fd:`), so
        // QEMU spawns nothing (its seccomp filter denies it).
        let file = std::fs::File::open(state)
            .map_err(|e| io_err(format!("open {}", state.display()), e))?;
        l.qmp
            .send_fd(MIGRATION_FD, std::os::fd::AsFd::as_fd(&file))
            .await
            .map_err(|e| qmp_err("getfd", e))?;
        l.qmp
            .execute(
                "migrate-incoming",
                Some(json!({ "uri": format!("fd:{MIGRATION_FD}") })),
            )
            .await
            .map_err(|e| qmp_err("migrate-incoming", e))?;
        wait_migration(&l.qmp, &l.process, &l.paths, self.config.migrate_timeout).await?;
        drop(file);
        // After the stream is loaded the VM leaves `inmigrate`.
        let deadline = Instant::now() + self.config.qmp_timeout;
        loop {
            let state = l
                .qmp
                .run_state()
                .await
                .map_err(|e| qmp_err("query-status", e))?;
            if state != "inmigrate" {
                break;
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    what: "restored VM to leave inmigrate".into(),
                    after: self.config.qmp_timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        l.qmp
            .execute("cont", None)
            .await
            .map_err(|e| qmp_err("cont", e))?;
        Ok(())
    }
}

#[async_trait]
impl Vmm for QemuVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>> {
        let paths = RunPaths::new(&spec.run_dir);
        remove_if_exists(&paths.memory)?;
        let l = self.launch(spec, false, &Ram::Own).await?;
        let status = l.qmp.run_state().await;
        if let Err(e) = status {
            let _ = l.process.kill(Duration::from_secs(5)).await;
            l.paths.remove_sockets();
            return Err(qmp_err("query-status", e));
        }
        self.handle(spec, l)
    }

    async fn restore(&self, spec: &VmSpec, snapshot: &SnapshotFiles) -> Result<Box<dyn VmHandle>> {
        require_files(snapshot, ["snapshot state", "snapshot memory"])?;
        let t0 = Instant::now();
        let paths = RunPaths::new(&spec.run_dir);
        if snapshot.ram_in_state {
            // QEMU creates a fresh memory file and fills it from the stream.
            remove_if_exists(&paths.memory)?;
        } else {
            copy_file(&snapshot.memory, &paths.memory).await?;
        }
        let copied = t0.elapsed();
        let l = self.launch(spec, true, &Ram::Own).await?;
        let result = self
            .load_incoming(&l, &snapshot.state, !snapshot.ram_in_state)
            .await;
        if let Err(e) = result {
            let _ = l.process.kill(Duration::from_secs(5)).await;
            l.paths.remove_sockets();
            let _ = std::fs::remove_file(&l.paths.memory);
            return Err(e);
        }
        info!(
            sandbox_id = %spec.sandbox_id,
            copy_ms = copied.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "qemu restored from snapshot"
        );
        self.handle(spec, l)
    }

    async fn attach(&self, spec: &VmSpec, process: &VmProcess) -> Result<Box<dyn VmHandle>> {
        let paths = RunPaths::new(&spec.run_dir);
        let proc = VmmProcess::adopt(process.pid, process.start_time).map_err(|e| {
            VmmError::ExitedEarly {
                reason: e.to_string(),
                log_tail: tail_logs(&paths),
            }
        })?;
        let qmp = Qmp::connect(&paths.qmp, self.config.qmp_timeout)
            .await
            .map_err(|e| qmp_err("connect", e))?;
        info!(sandbox_id = %spec.sandbox_id, pid = process.pid, "re-attached to qemu");
        let ram = match &process.memory_template {
            Some(p) => Ram::Private(p.clone()),
            None => Ram::Own,
        };
        self.handle(
            spec,
            Launched {
                process: proc,
                qmp,
                paths,
                ram,
            },
        )
    }

    async fn clone_from(
        &self,
        spec: &VmSpec,
        template: &SnapshotFiles,
    ) -> Result<Box<dyn VmHandle>> {
        require_files(template, ["template state", "template memory"])?;
        if template.ram_in_state {
            return Err(VmmError::Unsupported(
                "a template snapshot whose RAM is in its state stream",
            ));
        }
        let t0 = Instant::now();
        let l = self
            .launch(spec, true, &Ram::Private(template.memory.clone()))
            .await?;
        if let Err(e) = self.load_incoming(&l, &template.state, true).await {
            let _ = l.process.kill(Duration::from_secs(5)).await;
            l.paths.remove_sockets();
            return Err(e);
        }
        info!(
            sandbox_id = %spec.sandbox_id,
            total_ms = t0.elapsed().as_millis() as u64,
            "qemu clone started from a template snapshot"
        );
        self.handle(spec, l)
    }

    fn can_clone(&self) -> bool {
        true
    }

    fn identity(&self) -> String {
        let binary =
            resolve_binary(&self.config.binary).unwrap_or_else(|_| self.config.binary.clone());
        let stamp = std::fs::metadata(&binary)
            .map(|m| {
                use std::os::unix::fs::MetadataExt as _;
                format!("{}:{}", m.len(), m.mtime())
            })
            .unwrap_or_default();
        format!(
            "qemu {} {stamp} accel={:?} tb={} acpi={} tsc={:?}",
            binary.display(),
            self.config.accel,
            self.config.tb_size_mb,
            self.config.acpi,
            self.tsc_khz
        )
    }
}

/// A VM run by QEMU.
#[derive(Debug)]
pub struct QemuVm {
    info: VmProcess,
    sandbox_id: String,
    process: VmmProcess,
    qmp: Qmp,
    paths: RunPaths,
    bridge: std::sync::Mutex<Option<Bridge>>,
    migrate_timeout: Duration,
    /// RAM is a private mapping of a template's file (see the module docs).
    ram_private: bool,
}

impl QemuVm {
    /// Writes a snapshot into `dir` (see [`VmHandle::snapshot`]); with
    /// `hand_over` the RAM file is hard-linked into it rather than copied
    /// ([`VmHandle::snapshot_final`]).
    async fn write_snapshot(&self, dir: &Path, hand_over: bool) -> Result<SnapshotFiles> {
        let t0 = Instant::now();
        let state = self
            .qmp
            .run_state()
            .await
            .map_err(|e| qmp_err("query-status", e))?;
        if state == "running" {
            return Err(VmmError::InvalidState {
                op: "snapshot",
                state: "running".into(),
            });
        }
        let files = SnapshotFiles {
            state: dir.join("state"),
            memory: dir.join("memory"),
            ram_in_state: self.ram_private,
        };
        set_migration_caps(&self.qmp, !self.ram_private).await?;
        // QEMU writes the stream into a descriptor passed over QMP (`fd:`):
        // its writes are plain write() calls, so at `completed` all of it is
        // in the file; it is renamed into place once synced.
        let part = dir.join("state.part");
        let file = std::fs::File::create(&part)
            .map_err(|e| io_err(format!("create {}", part.display()), e))?;
        self.qmp
            .send_fd(MIGRATION_FD, std::os::fd::AsFd::as_fd(&file))
            .await
            .map_err(|e| qmp_err("getfd", e))?;
        self.qmp
            .execute(
                "migrate",
                Some(json!({ "uri": format!("fd:{MIGRATION_FD}") })),
            )
            .await
            .map_err(|e| qmp_err("migrate", e))?;
        wait_migration(&self.qmp, &self.process, &self.paths, self.migrate_timeout).await?;
        file.sync_all()
            .map_err(|e| io_err(format!("fsync {}", part.display()), e))?;
        drop(file);
        std::fs::rename(&part, &files.state)
            .map_err(|e| io_err(format!("rename {}", part.display()), e))?;
        let saved = t0.elapsed();
        if self.ram_private {
            std::fs::File::create(&files.memory)
                .map_err(|e| io_err(format!("create {}", files.memory.display()), e))?;
        } else if hand_over && std::fs::hard_link(&self.paths.memory, &files.memory).is_ok() {
            // The VM will not run again: its RAM file is the snapshot.
        } else {
            copy_file(&self.paths.memory, &files.memory).await?;
        }
        for f in [&files.state, &files.memory] {
            fsync(f)?;
        }
        fsync(dir)?;
        info!(
            sandbox_id = %self.sandbox_id,
            state_ms = saved.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "qemu snapshot written"
        );
        Ok(files)
    }

    /// Number of agent-channel sessions the bridge has established.
    pub fn bridge_sessions(&self) -> u64 {
        self.bridge
            .lock()
            .ok()
            .and_then(|b| b.as_ref().map(Bridge::sessions_established))
            .unwrap_or(0)
    }

    async fn cleanup(&self) {
        let bridge = self.bridge.lock().ok().and_then(|mut b| b.take());
        if let Some(b) = bridge {
            b.stop().await;
        }
        self.paths.remove_sockets();
        let _ = std::fs::remove_file(&self.paths.memory);
    }

    async fn qmp_simple(&self, cmd: &'static str) -> Result<()> {
        if let Some(reason) = self.process.exit_reason() {
            return Err(VmmError::InvalidState {
                op: cmd,
                state: format!("exited ({reason})"),
            });
        }
        self.qmp
            .execute(cmd, None)
            .await
            .map(|_| ())
            .map_err(|e| qmp_err(cmd, e))
    }
}

#[async_trait]
impl VmHandle for QemuVm {
    fn process(&self) -> &VmProcess {
        &self.info
    }

    async fn status(&self) -> VmStatus {
        if let Some(reason) = self.process.exit_reason() {
            return VmStatus::Exited { reason };
        }
        match self.qmp.run_state().await {
            Ok(s) if s == "running" => VmStatus::Running,
            Ok(_) => VmStatus::Paused,
            Err(e) => match self.process.wait_timeout(Duration::from_millis(200)).await {
                Some(reason) => VmStatus::Exited { reason },
                None => {
                    warn!(sandbox_id = %self.sandbox_id, error = %e, "query-status failed on a live qemu");
                    VmStatus::Running
                }
            },
        }
    }

    async fn pause(&self) -> Result<()> {
        self.qmp_simple("stop").await
    }

    async fn resume(&self) -> Result<()> {
        self.qmp_simple("cont").await
    }

    async fn snapshot(&self, dir: &Path) -> Result<SnapshotFiles> {
        self.write_snapshot(dir, false).await
    }

    async fn snapshot_final(&self, dir: &Path) -> Result<SnapshotFiles> {
        self.write_snapshot(dir, true).await
    }

    async fn shutdown(&self, grace: Duration) -> Result<()> {
        if self.process.exit_reason().is_none() {
            if let Err(e) = self.qmp.execute("system_powerdown", None).await {
                debug!(sandbox_id = %self.sandbox_id, error = %e, "system_powerdown failed");
            }
            // Without ACPI a guest power-off only halts the vCPUs; QEMU
            // stays up. The kernel's last console line tells us it is done.
            let deadline = Instant::now() + grace;
            loop {
                if self.process.exit_reason().is_some() {
                    break;
                }
                if guest_halted(&self.paths.console) {
                    debug!(sandbox_id = %self.sandbox_id, "guest halted; stopping qemu");
                    break;
                }
                if Instant::now() >= deadline {
                    info!(sandbox_id = %self.sandbox_id, "guest did not power off in time; killing");
                    break;
                }
                let _ = self.process.wait_timeout(Duration::from_millis(50)).await;
            }
        }
        self.kill().await
    }

    async fn kill(&self) -> Result<()> {
        let reason = self
            .process
            .kill(Duration::from_secs(10))
            .await
            .map_err(|e| io_err("kill qemu", e))?;
        self.cleanup().await;
        match reason {
            Some(_) => Ok(()),
            None => Err(VmmError::Timeout {
                what: format!("qemu pid {} to exit after SIGKILL", self.info.pid),
                after: Duration::from_secs(10),
            }),
        }
    }

    async fn wait_exit(&self) -> String {
        self.process.wait().await
    }
}

/// True when the last kernel lines on the console say the guest halted or
/// powered off (`reboot: System halted` / `reboot: Power down`).
fn guest_halted(console: &Path) -> bool {
    let tail = tail_file(console, 5);
    tail.contains("reboot: System halted") || tail.contains("reboot: Power down")
}

/// Paths of one VM's run directory.
#[derive(Debug, Clone)]
struct RunPaths {
    qmp: PathBuf,
    serial: PathBuf,
    vsock: PathBuf,
    memory: PathBuf,
    console: PathBuf,
    qemu_log: PathBuf,
}

impl RunPaths {
    fn new(run_dir: &Path) -> Self {
        Self {
            qmp: run_dir.join("qmp.sock"),
            serial: run_dir.join("serial.sock"),
            vsock: run_dir.join("vsock.sock"),
            memory: run_dir.join("memory"),
            console: run_dir.join("console.log"),
            qemu_log: run_dir.join("qemu.log"),
        }
    }

    fn remove_sockets(&self) {
        for p in [&self.qmp, &self.serial, &self.vsock] {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn check_spec(spec: &VmSpec) -> Result<()> {
    if !spec.kernel.is_file() {
        return Err(VmmError::MissingFile {
            what: "kernel",
            path: spec.kernel.clone(),
        });
    }
    if let Some(initrd) = spec.initrd.as_ref().filter(|p| !p.is_file()) {
        return Err(VmmError::MissingFile {
            what: "initrd",
            path: initrd.clone(),
        });
    }
    for d in &spec.disks {
        if !d.path.is_file() {
            return Err(VmmError::MissingFile {
                what: "disk",
                path: d.path.clone(),
            });
        }
    }
    if !spec.run_dir.is_dir() {
        return Err(VmmError::MissingFile {
            what: "run directory",
            path: spec.run_dir.clone(),
        });
    }
    let longest = spec.run_dir.join("serial.sock");
    if longest.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(io_err(
            format!(
                "run directory {} is too long for Unix sockets",
                spec.run_dir.display()
            ),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ));
    }
    Ok(())
}

/// The guest kernel command line: the driver's part, then `extra`.
fn kernel_cmdline(tsc_khz: Option<u64>, extra: &str) -> String {
    let mut s = String::from("console=ttyS0 root=/dev/vda ro rootfstype=ext4 panic=-1 reboot=t");
    if let Some(khz) = tsc_khz {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let extra = extra.trim();
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    s
}

/// Escapes a value for a QEMU option list (commas are doubled).
fn opt_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// QEMU's seccomp filter (`-sandbox`): no obsolete system calls, no
/// privilege changes, no new processes, no scheduler or resource-limit
/// changes. Snapshots therefore go through descriptors passed over QMP
/// (`getfd`, `fd:` URIs), never `exec:` (QEMU 7.2 has no `file:` URI).
pub const SECCOMP_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The QMP name of the descriptor a snapshot is saved into or loaded from.
const MIGRATION_FD: &str = "locale2b-migration";

fn build_args(
    cfg: &QemuConfig,
    spec: &VmSpec,
    cmdline: &str,
    incoming: bool,
    ram: &Ram,
) -> Vec<String> {
    let paths = RunPaths::new(&spec.run_dir);
    let mem = spec.memory.0;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    push(&["-name", &format!("locale2b-{}", spec.sandbox_id)]);
    push(&[
        "-M",
        if cfg.acpi {
            "microvm,acpi=on"
        } else {
            "microvm,acpi=off"
        },
    ]);
    match cfg.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&[
            "-accel",
            &format!("tcg,tb-size={}", cfg.tb_size_mb.max(1)),
            "-cpu",
            "max",
        ]),
    }
    push(&[
        "-smp",
        &spec.vcpus.max(1).to_string(),
        "-m",
        &format!("{mem}M"),
    ]);
    let (mem_path, share) = match ram {
        Ram::Own => (paths.memory.as_path(), "on"),
        Ram::Private(p) => (p.as_path(), "off"),
    };
    push(&[
        "-object",
        &format!(
            "memory-backend-file,id=mem,size={mem}M,mem-path={},share={share}",
            opt_escape(mem_path)
        ),
        "-machine",
        "memory-backend=mem",
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-sandbox",
        SECCOMP_SANDBOX,
    ]);
    push(&[
        "-chardev",
        // Append mode: the manager cuts the file when it grows too big
        // (console_log_max_kb) and QEMU goes on at its new end.
        &format!(
            "file,id=console,path={},append=on",
            opt_escape(&paths.console)
        ),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_escape(&paths.qmp)),
    ]);
    push(&[
        "-kernel",
        &spec.kernel.display().to_string(),
        "-append",
        cmdline,
    ]);
    if let Some(initrd) = &spec.initrd {
        push(&["-initrd", &initrd.display().to_string()]);
    }
    for (i, d) in spec.disks.iter().enumerate() {
        push(&[
            "-drive",
            &format!(
                "id=disk{i},file={},format=raw,if=none,readonly={}",
                opt_escape(&d.path),
                if d.read_only { "on" } else { "off" }
            ),
            "-device",
            &format!("virtio-blk-device,drive=disk{i}"),
        ]);
    }
    push(&[
        "-device",
        "virtio-serial-device",
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=on,wait=off",
            opt_escape(&paths.serial)
        ),
        "-device",
        &format!(
            "virtserialport,chardev=agent,name={}",
            locale2b_protocol::SERIAL_PORT_NAME
        ),
        "-device",
        "virtio-rng-device",
    ]);
    if let Some(net) = &spec.net {
        // QEMU runs inside the sandbox's network namespace (see
        // `command_in`) and opens its tap there; no scripts, no vhost.
        push(&[
            "-netdev",
            &format!(
                "tap,id=net0,ifname={},script=no,downscript=no",
                opt_escape(std::path::Path::new(&net.tap))
            ),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", net.mac),
        ]);
    }
    if incoming {
        push(&["-S", "-incoming", "defer"]);
    }
    a
}

/// Fails with [`VmmError::MissingFile`] when the state or memory file of
/// `files` is not a file (`what` names them in the error).
fn require_files(files: &SnapshotFiles, what: [&'static str; 2]) -> Result<()> {
    for (what, p) in what.into_iter().zip([&files.state, &files.memory]) {
        if !p.is_file() {
            return Err(VmmError::MissingFile {
                what,
                path: p.clone(),
            });
        }
    }
    Ok(())
}

/// `ignore_shared`: leave file-backed shared RAM out of the stream (the
/// memory file is the snapshot); source and destination must agree.
async fn set_migration_caps(qmp: &Qmp, ignore_shared: bool) -> Result<()> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": ignore_shared}]})),
    )
    .await
    .map_err(|e| qmp_err("migrate-set-capabilities", e))?;
    // The default bandwidth limit (128 MiB/s) throttles even a stopped VM.
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({"max-bandwidth": 64_i64 << 30})),
    )
    .await
    .map_err(|e| qmp_err("migrate-set-parameters", e))?;
    Ok(())
}

/// Polls `query-migrate` until it completes, fails, or `timeout` passes.
async fn wait_migration(
    qmp: &Qmp,
    process: &VmmProcess,
    paths: &RunPaths,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    loop {
        if let Some(reason) = process.exit_reason() {
            return Err(exited_early(reason, paths));
        }
        let info = qmp
            .execute("query-migrate", None)
            .await
            .map_err(|e| qmp_err("query-migrate", e))?;
        match info.get("status").and_then(|s| s.as_str()).unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let desc = info
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or("no reason given");
                return Err(VmmError::Api {
                    api: "qmp",
                    request: "migrate".into(),
                    message: desc.to_owned(),
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(VmmError::Timeout {
                what: "migration to complete".into(),
                after: timeout,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// Copies `from` to `to` (reflink where possible, holes preserved) via a
/// temporary name, so `to` is either absent or complete.
///
/// # Errors
/// When `cp` fails or cannot run.
pub async fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let out = tokio::process::Command::new("cp")
        .arg("--reflink=auto")
        .arg("--sparse=always")
        .arg(from)
        .arg(&tmp)
        .output()
        .await
        .map_err(|source| VmmError::Spawn { what: "cp", source })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(
            format!(
                "copy {} to {}: {}",
                from.display(),
                to.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            std::io::Error::other("cp failed"),
        ));
    }
    std::fs::rename(&tmp, to).map_err(|e| io_err(format!("rename to {}", to.display()), e))
}

fn fsync(p: &Path) -> Result<()> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(format!("fsync {}", p.display()), e))
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("remove {}", p.display()), e)),
    }
}

fn io_err(context: impl Into<String>, source: std::io::Error) -> VmmError {
    VmmError::Io {
        context: context.into(),
        source,
    }
}

fn qmp_err(request: &str, e: QmpError) -> VmmError {
    match e {
        QmpError::Command { desc, .. } => VmmError::Api {
            api: "qmp",
            request: request.to_owned(),
            message: desc,
        },
        QmpError::Timeout { what, after } => VmmError::Timeout {
            what: format!("QMP {what}"),
            after,
        },
        QmpError::Io(source) => io_err(format!("QMP {request}"), source),
        other => io_err(
            format!("QMP {request}"),
            std::io::Error::other(other.to_string()),
        ),
    }
}

fn tail_logs(paths: &RunPaths) -> String {
    format!(
        "qemu.log: {} | console.log: {}",
        tail_file(&paths.qemu_log, 10),
        tail_file(&paths.console, 20)
    )
}

fn exited_early(reason: String, paths: &RunPaths) -> VmmError {
    VmmError::ExitedEarly {
        reason,
        log_tail: tail_logs(paths),
    }
}

/// Finds `binary` (a path, or a name in `PATH`) and checks it is a file.
fn resolve_binary(binary: &Path) -> std::io::Result<PathBuf> {
    if binary.components().count() > 1 {
        return if binary.is_file() {
            Ok(binary.to_owned())
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
        .ok_or_else(|| std::io::ErrorKind::NotFound.into())
}

/// Host TSC frequency in kHz, detected once per process: sysfs
/// `tsc_freq_khz`, else the kernel log (`tsc: Refined TSC clocksource
/// calibration` / `tsc: Detected`), else `/proc/cpuinfo` `cpu MHz`.
pub fn host_tsc_khz() -> Option<u64> {
    static TSC: OnceLock<Option<u64>> = OnceLock::new();
    *TSC.get_or_init(|| {
        if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
            if let Ok(v) = s.trim().parse() {
                return Some(v);
            }
        }
        if let Some(v) = read_kmsg().as_deref().and_then(tsc_from_kernel_log) {
            return Some(v);
        }
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .as_deref()
            .and_then(tsc_from_cpuinfo)
    })
}

/// Reads what `/dev/kmsg` holds now (non-blocking; needs root or
/// CAP_SYSLOG).
fn read_kmsg() -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    // One record per read; stop at EAGAIN (end) or after a bounded amount.
    for _ in 0..20_000 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => continue,
            Err(_) => break,
        }
    }
    Some(out)
}

fn mhz_to_khz(s: &str) -> Option<u64> {
    let mhz: f64 = s.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

fn tsc_from_kernel_log(log: &str) -> Option<u64> {
    let find = |marker: &str| {
        log.lines().rev().find_map(|l| {
            let rest = &l[l.find(marker)? + marker.len()..];
            mhz_to_khz(rest.split_whitespace().next()?)
        })
    };
    find("tsc: Refined TSC clocksource calibration:").or_else(|| find("tsc: Detected"))
}

fn tsc_from_cpuinfo(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "cpu MHz").then(|| mhz_to_khz(v)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskSpec, MemMib};

    fn spec(dir: &Path) -> VmSpec {
        VmSpec {
            sandbox_id: "sb-test".parse().expect("id"),
            kernel: dir.join("vmlinux"),
            initrd: None,
            disks: vec![
                DiskSpec {
                    path: dir.join("rootfs.ext4"),
                    read_only: true,
                },
                DiskSpec {
                    path: dir.join("disk,1.ext4"),
                    read_only: false,
                },
            ],
            memory: MemMib(256),
            vcpus: 2,
            extra_boot_args: " init=/usr/local/bin/locale2b-agent ".into(),
            run_dir: dir.join("run"),
            guest_cid: 3,
            net: None,
        }
    }

    #[test]
    fn cmdline_has_driver_args_then_extra() {
        let c = kernel_cmdline(Some(2_596_124), " init=/x quiet ");
        assert_eq!(
            c,
            "console=ttyS0 root=/dev/vda ro rootfstype=ext4 panic=-1 reboot=t tsc_early_khz=2596124 init=/x quiet"
        );
        assert!(!kernel_cmdline(None, "").contains("tsc_early_khz"));
    }

    #[test]
    fn a_nic_is_a_tap_in_the_namespace_and_none_without_one() {
        let dir = Path::new("/r");
        let cfg = QemuConfig::new("qemu-system-x86_64", Accel::Tcg);
        let none = build_args(&cfg, &spec(dir), "console=ttyS0", false, &Ram::Own).join(" ");
        assert!(
            !none.contains("-netdev") && !none.contains("virtio-net"),
            "{none}"
        );
        let net = crate::NetSpec {
            netns: "/run/netns/l2b-x".into(),
            tap: "tap0".into(),
            mac: "02:4c:32:62:00:02".into(),
        };
        let s = VmSpec {
            net: Some(net.clone()),
            ..spec(dir)
        };
        let with = build_args(&cfg, &s, "console=ttyS0", false, &Ram::Own).join(" ");
        assert!(
            with.contains("-netdev tap,id=net0,ifname=tap0,script=no,downscript=no -device virtio-net-device,netdev=net0,mac=02:4c:32:62:00:02"),
            "{with}"
        );
        let cmd = crate::command_in(Path::new("/usr/bin/qemu"), Some(&net));
        let std = cmd.as_std();
        assert_eq!(std.get_program(), crate::NSENTER);
        let args: Vec<_> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["--net=/run/netns/l2b-x", "--", "/usr/bin/qemu"]);
    }

    #[test]
    fn args_describe_the_documented_machine() {
        let dir = Path::new("/r");
        let s = spec(dir);
        let cfg = QemuConfig::new("qemu-system-x86_64", Accel::Tcg);
        let args = build_args(&cfg, &s, "console=ttyS0", false, &Ram::Own);
        let joined = args.join(" ");
        assert!(
            joined.contains("-M microvm,acpi=on -accel tcg,tb-size=64"),
            "{joined}"
        );
        assert!(joined.contains(
            "memory-backend-file,id=mem,size=256M,mem-path=/r/run/memory,share=on -machine memory-backend=mem"
        ));
        assert!(joined.contains("-smp 2 -m 256M"));
        assert!(joined.contains("-qmp unix:/r/run/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("id=disk0,file=/r/rootfs.ext4,format=raw,if=none,readonly=on"));
        // Commas in paths are escaped for QEMU's option parser.
        assert!(joined.contains("file=/r/disk,,1.ext4,format=raw,if=none,readonly=off"));
        assert!(joined.contains(
            "socket,id=agent,path=/r/run/serial.sock,server=on,wait=off -device virtserialport,chardev=agent,name=org.locale2b.agent"
        ));
        let disk0 = args
            .iter()
            .position(|a| a.starts_with("id=disk0"))
            .expect("disk0");
        let disk1 = args
            .iter()
            .position(|a| a.starts_with("id=disk1"))
            .expect("disk1");
        assert!(disk0 < disk1, "root disk first");
        assert!(!joined.contains("-incoming"));
        assert!(
            !joined.contains("-initrd"),
            "no initrd unless the image has one"
        );
        let with_initrd = VmSpec {
            initrd: Some("/r/initrd".into()),
            ..s.clone()
        };
        let joined = build_args(&cfg, &with_initrd, "x", false, &Ram::Own).join(" ");
        assert!(
            joined.contains("-kernel /r/vmlinux -append x -initrd /r/initrd"),
            "{joined}"
        );
        let inc = build_args(&cfg, &s, "x", true, &Ram::Own).join(" ");
        assert!(inc.ends_with("-S -incoming defer"));
        assert!(inc.contains("share=on"), "own RAM is mapped shared");
        let clone = build_args(&cfg, &s, "x", true, &Ram::Private("/t/memory".into())).join(" ");
        assert!(
            clone.contains("mem-path=/t/memory,share=off"),
            "a clone maps the template file private: {clone}"
        );
        let mut no_acpi = QemuConfig::new("q", Accel::Kvm);
        no_acpi.acpi = false;
        let kvm = build_args(&no_acpi, &s, "x", false, &Ram::Own).join(" ");
        assert!(kvm.contains("-M microvm,acpi=off"));
        assert!(kvm.contains("-accel kvm -cpu host"));
    }

    #[test]
    fn tsc_parsing() {
        let log = "6,1,64,-;tsc: Detected 2596.124 MHz processor\n6,2,99,-;tsc: Refined TSC clocksource calibration: 2595.999 MHz\n";
        assert_eq!(tsc_from_kernel_log(log), Some(2_595_999));
        assert_eq!(
            tsc_from_kernel_log("[0.1] tsc: Detected 2596.124 MHz processor"),
            Some(2_596_124)
        );
        assert_eq!(tsc_from_kernel_log("nothing"), None);
        assert_eq!(
            tsc_from_cpuinfo("processor\t: 0\ncpu MHz\t\t: 2596.124\n"),
            Some(2_596_124)
        );
        assert!(
            host_tsc_khz().is_some(),
            "this host exposes a TSC frequency"
        );
    }

    #[tokio::test]
    async fn missing_binary_and_files_are_reported() {
        let err =
            QemuVmm::new(QemuConfig::new("/nonexistent/qemu", Accel::Tcg)).expect_err("missing");
        assert!(matches!(err, VmmError::BinaryMissing { .. }));
        let dir = tempfile::tempdir().expect("tempdir");
        let vmm = QemuVmm::new(QemuConfig::new("qemu-system-x86_64", Accel::Tcg)).expect("vmm");
        let err = vmm.start(&spec(dir.path())).await.expect_err("no kernel");
        assert!(
            matches!(err, VmmError::MissingFile { what: "kernel", .. }),
            "{err}"
        );
    }
}
