//! VMM drivers: one trait, two backends chosen at run time.
//!
//! * [`qemu`]: `qemu-system-x86_64 -M microvm`, KVM when usable, else TCG.
//!   The agent channel is a virtio-serial port carrying yamux; the driver
//!   serves it on the host as a Firecracker-style hybrid-vsock Unix socket.
//! * [`firecracker`]: Firecracker over its HTTP API socket (optionally under
//!   the jailer); the agent channel is native vsock.
//!
//! Everything above this crate sees the same thing for both: a [`VmHandle`]
//! with a [`VmHandle::vsock_path`] where `CONNECT <port>\n` opens a byte stream
//! to the guest service on that port (5000 = the agent).
//!
//! A driver owns the VMM process (and, for qemu, the in-process vsock bridge)
//! but not the disks: the manager creates and deletes those.

#![deny(unsafe_code)]

pub mod bridge;
pub mod firecracker;
pub mod probe;
pub mod process;
pub mod qemu;

use async_trait::async_trait;
use locale2b_protocol::SandboxId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which backend runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmKind {
    /// Firecracker (KVM only).
    Firecracker,
    /// QEMU microvm (KVM or TCG).
    Qemu,
}

impl std::fmt::Display for VmmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        })
    }
}

/// Guest memory size in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemMib(pub u32);

/// One disk given to the guest. The first disk of a [`VmSpec`] is the root
/// (`/dev/vda`), the second the workspace's writable disk (`/dev/vdb`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Host path of the image file.
    pub path: PathBuf,
    /// Attach read-only (the shared base rootfs is always read-only).
    pub read_only: bool,
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Sandbox this VM belongs to (used in logs and process names).
    pub sandbox_id: SandboxId,
    /// Uncompressed kernel (ELF vmlinux with PVH note) or bzImage.
    pub kernel: PathBuf,
    /// Initramfs, for kernels that load their drivers as modules (Debian's).
    pub initrd: Option<PathBuf>,
    /// Disks in order: root (vda), writable (vdb), ...
    pub disks: Vec<DiskSpec>,
    /// Guest RAM.
    pub memory: MemMib,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Extra kernel command line arguments (the driver adds its own).
    pub extra_boot_args: String,
    /// Per-sandbox directory for sockets, logs and the driver's files. Must
    /// exist. Keep it short: Unix socket paths are limited to 107 bytes.
    pub run_dir: PathBuf,
    /// Guest vsock CID (firecracker); qemu ignores it.
    pub guest_cid: u32,
    /// The guest's network device, when it has one: a tap device in a
    /// network namespace the caller made. `None` = no NIC at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetSpec>,
}

/// A guest NIC: the VMM runs inside `netns` and opens the tap `tap` there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// The network namespace file (`/run/netns/<name>`).
    pub netns: PathBuf,
    /// Name of the tap device inside that namespace.
    pub tap: String,
    /// The guest's MAC address (`02:…`, locally administered).
    pub mac: String,
}

/// Where `nsenter` is looked for (util-linux).
pub const NSENTER: &str = "nsenter";

/// A command for `program`, run inside the network namespace of `net` when
/// there is one (through `nsenter --net=…`, which `exec`s the program: the
/// PID is the program's).
pub fn command_in(program: &Path, net: Option<&NetSpec>) -> tokio::process::Command {
    match net {
        None => tokio::process::Command::new(program),
        Some(n) => {
            let mut c = tokio::process::Command::new(NSENTER);
            c.arg(format!("--net={}", n.netns.display()))
                .arg("--")
                .arg(program);
            c
        }
    }
}

/// What the driver persists about a running VM so that a restarted server
/// can re-attach to it ([`Vmm::attach`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmProcess {
    /// Backend that runs it.
    pub kind: VmmKind,
    /// PID of the VMM process.
    pub pid: u32,
    /// Process start time (`/proc/<pid>/stat` field 22, clock ticks since
    /// boot), to tell the VMM from a later process that reused the PID.
    pub start_time: u64,
    /// Host path of the hybrid-vsock Unix socket.
    pub vsock_path: PathBuf,
    /// Host path of the control socket (QMP or Firecracker API).
    pub control_path: PathBuf,
    /// Serial console log.
    pub console_log: PathBuf,
    /// The template memory file the VM maps copy-on-write (a clone made by
    /// [`Vmm::clone_from`]); `None` when the VM owns its memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_template: Option<PathBuf>,
}

/// Observed state of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VmStatus {
    /// Guest is executing.
    Running,
    /// vCPUs are stopped (by [`VmHandle::pause`]).
    Paused,
    /// The VMM process is gone.
    Exited {
        /// Exit description, e.g. "exit status 1" or "killed by signal 9".
        reason: String,
    },
}

/// Files of one VM snapshot, written by [`VmHandle::snapshot`] into a
/// directory the caller chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFiles {
    /// Device/VM state file.
    pub state: PathBuf,
    /// Guest memory file.
    pub memory: PathBuf,
    /// The guest RAM travels in `state` and `memory` is empty: a snapshot
    /// of a clone, whose RAM is a private copy-on-write mapping of its
    /// template's file and so in no file of its own.
    #[serde(default)]
    pub ram_in_state: bool,
}

/// Errors of the VMM drivers.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM binary is missing or not executable.
    #[error("VMM binary {path} is not usable")]
    BinaryMissing {
        /// Configured path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file the VM needs (kernel, disk, snapshot) is missing or unreadable.
    #[error("{what} {path} is missing or unreadable")]
    MissingFile {
        /// What the file is ("kernel", "disk", ...).
        what: &'static str,
        /// Path.
        path: PathBuf,
    },
    /// Spawning the process failed.
    #[error("failed to spawn {what}")]
    Spawn {
        /// What was spawned.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before it was ready.
    #[error("VMM exited during start: {reason}; last console/log lines: {log_tail}")]
    ExitedEarly {
        /// Exit description.
        reason: String,
        /// Last lines of the VMM's stderr or console log.
        log_tail: String,
    },
    /// A wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The VMM's control API refused a request (Firecracker `fault_message`,
    /// QMP `error.desc`).
    #[error("{api} refused {request}: {message}")]
    Api {
        /// "firecracker" or "qmp".
        api: &'static str,
        /// The request, e.g. "PUT /boot-source".
        request: String,
        /// The VMM's own message.
        message: String,
    },
    /// The operation is not valid in the VM's current state.
    #[error("cannot {op} a VM that is {state}")]
    InvalidState {
        /// Attempted operation.
        op: &'static str,
        /// Current state.
        state: String,
    },
    /// The backend cannot do this at all.
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    /// Any other I/O failure.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = VmmError> = std::result::Result<T, E>;

/// A VMM backend: starts, restores and re-attaches VMs.
#[async_trait]
pub trait Vmm: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> VmmKind;

    /// Boots a fresh VM from `spec`. Returns once the VMM process runs and
    /// the vsock socket exists; the guest agent may not be up yet (the
    /// manager waits for its `ping`). On error nothing is left running.
    async fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>>;

    /// Starts a new VMM process from a snapshot made by [`VmHandle::snapshot`]
    /// with the same `spec` (same disks and memory size) and resumes it.
    /// Validation of the snapshot's integrity is the caller's job.
    async fn restore(&self, spec: &VmSpec, snapshot: &SnapshotFiles) -> Result<Box<dyn VmHandle>>;

    /// Re-attaches to a VMM process that outlived the server (after a
    /// restart). Fails with [`VmmError::ExitedEarly`]-like errors when the
    /// process is gone or its PID now belongs to another process.
    async fn attach(&self, spec: &VmSpec, process: &VmProcess) -> Result<Box<dyn VmHandle>>;

    /// Starts a new VM from a template snapshot (made by
    /// [`VmHandle::snapshot`] of a VM with the same memory size, vCPUs and
    /// device layout), mapping the template's memory file copy-on-write and
    /// shared with every other clone of it; the file itself is never
    /// written. `spec` names the clone's own run directory and disks.
    ///
    /// # Errors
    /// [`VmmError::Unsupported`] for a backend without it; otherwise as
    /// [`Vmm::restore`]. On error nothing is left running.
    async fn clone_from(
        &self,
        spec: &VmSpec,
        template: &SnapshotFiles,
    ) -> Result<Box<dyn VmHandle>> {
        let _ = (spec, template);
        Err(VmmError::Unsupported(
            "creating a VM from a template snapshot",
        ))
    }

    /// Whether [`Vmm::clone_from`] is implemented (callers skip building a
    /// template they could not use).
    fn can_clone(&self) -> bool {
        false
    }

    /// What identifies this VMM build and its settings, for keying template
    /// snapshots: a snapshot taken by one VMM may not load in another.
    fn identity(&self) -> String {
        self.kind().to_string()
    }
}

/// A running (or paused) VM.
#[async_trait]
pub trait VmHandle: Send + Sync + std::fmt::Debug {
    /// What a restarted server needs to re-attach.
    fn process(&self) -> &VmProcess;

    /// Hybrid-vsock Unix socket: connect, send `CONNECT <port>\n`, read
    /// `OK <n>\n`, then the stream belongs to the guest service.
    fn vsock_path(&self) -> &Path {
        &self.process().vsock_path
    }

    /// Current state (checks the process and asks the VMM).
    async fn status(&self) -> VmStatus;

    /// Stops the vCPUs.
    async fn pause(&self) -> Result<()>;

    /// Continues after [`VmHandle::pause`].
    async fn resume(&self) -> Result<()>;

    /// Writes a full snapshot (state + memory) into `dir` (which exists and
    /// is empty). The VM must be paused. The VM stays paused afterwards.
    async fn snapshot(&self, dir: &Path) -> Result<SnapshotFiles>;

    /// [`VmHandle::snapshot`] for a VM that will not run again (it is
    /// stopped next, or resumed only if the snapshot is thrown away): the
    /// driver may hand over files instead of copying them (qemu hard-links
    /// its RAM file).
    async fn snapshot_final(&self, dir: &Path) -> Result<SnapshotFiles> {
        self.snapshot(dir).await
    }

    /// Asks the guest to power off (ACPI/Ctrl-Alt-Del), waits up to `grace`,
    /// then kills. Always leaves the process reaped and sockets removed.
    /// Idempotent.
    async fn shutdown(&self, grace: Duration) -> Result<()>;

    /// Kills the VMM at once (SIGKILL) and cleans up its sockets. Idempotent.
    async fn kill(&self) -> Result<()>;

    /// Waits until the VMM process exits and returns the reason.
    async fn wait_exit(&self) -> String;
}
