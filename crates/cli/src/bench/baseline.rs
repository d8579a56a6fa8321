//! Baselines with no server and no manager in the way, run in the same
//! bench run so each locale2b figure can be printed as a ratio to what the
//! VMM alone costs on this machine (machines of one kind differ by up to 3×
//! in speed). The VMM driver starts QEMU on the same image and the bench
//! waits for the guest agent's answer itself: once booted from the kernel,
//! and once cloned from a template snapshot the driver took itself.

use super::{err_note, join_notes, Metric};
use locale2b_agent_client::{AgentClient, ClientConfig};
use locale2b_protocol::SandboxId;
use locale2b_vmm::qemu::{Accel, QemuConfig, QemuVmm};
use locale2b_vmm::{DiskSpec, MemMib, VmHandle, VmSpec, Vmm};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest wait for a baseline guest's agent.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

struct Baseline {
    vmm: QemuVmm,
    image: PathBuf,
    memory_mb: u32,
    dir: tempfile::TempDir,
}

impl Baseline {
    fn spec(&self, name: &str, disk: &Path) -> anyhow::Result<VmSpec> {
        let run = self.dir.path().join(name);
        std::fs::create_dir_all(&run)?;
        let id = SandboxId::generate();
        Ok(VmSpec {
            extra_boot_args: format!("init=/usr/local/bin/locale2b-agent locale2b.sandbox_id={id}"),
            sandbox_id: id,
            kernel: self.image.join("vmlinux"),
            initrd: Some(self.image.join(locale2b_image::INITRD_FILE)).filter(|p| p.is_file()),
            disks: vec![
                DiskSpec {
                    path: self.image.join("rootfs.ext4"),
                    read_only: true,
                },
                DiskSpec {
                    path: disk.to_path_buf(),
                    read_only: false,
                },
            ],
            memory: MemMib(self.memory_mb),
            vcpus: 1,
            run_dir: run,
            guest_cid: 3,
            net: None,
        })
    }

    /// Waits for the agent of `vm`; answers it.
    async fn ready(vm: &dyn VmHandle) -> anyhow::Result<AgentClient> {
        let client = AgentClient::new(vm.vsock_path(), ClientConfig::default());
        client.wait_ready(Instant::now() + READY_TIMEOUT).await?;
        Ok(client)
    }

    async fn disk(&self, name: &str) -> anyhow::Result<PathBuf> {
        let disk = self.dir.path().join(name);
        locale2b_manager::store::make_disk(&disk, 1024).await?;
        Ok(disk)
    }
}

/// Runs `n` cold boots and `n` clones straight through the qemu driver.
/// Answers the two rows (`baseline.cold_boot`, `baseline.clone`).
pub(super) async fn run(image: &Path, memory_mb: u32, accel: &str, n: usize) -> Vec<Metric> {
    match measure(image, memory_mb, accel, n).await {
        Ok(m) => m,
        Err(e) => {
            let note = Some(format!("baseline not run: {}", err_note(&e)));
            ["baseline.cold_boot", "baseline.clone"]
                .iter()
                .map(|name| Metric::new(name, "ms", &[], note.clone()))
                .collect()
        }
    }
}

async fn measure(
    image: &Path,
    memory_mb: u32,
    accel: &str,
    n: usize,
) -> anyhow::Result<Vec<Metric>> {
    let accel = if accel == "kvm" {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let b = Baseline {
        vmm: QemuVmm::new(QemuConfig::new("qemu-system-x86_64", accel))?,
        image: image.to_path_buf(),
        memory_mb,
        dir: tempfile::Builder::new().prefix("l2bb").tempdir_in("/tmp")?,
    };
    let (mut cold, mut cold_err) = (Vec::new(), Vec::new());
    for i in 0..n {
        let disk = b.disk(&format!("cold{i}.ext4")).await?;
        let spec = b.spec(&format!("cold{i}"), &disk)?;
        let t = Instant::now();
        let vm = b.vmm.start(&spec).await?;
        match Baseline::ready(vm.as_ref()).await {
            Ok(_) => cold.push(t.elapsed().as_secs_f64() * 1000.0),
            Err(e) => cold_err.push(err_note(&e)),
        }
        let _ = vm.kill().await;
        let _ = std::fs::remove_file(&disk);
    }

    // The template: booted once, flushed, snapshotted, stopped.
    let tpl_disk = b.disk("tpl.ext4").await?;
    let spec = b.spec("tpl", &tpl_disk)?;
    let vm = b.vmm.start(&spec).await?;
    let client = Baseline::ready(vm.as_ref()).await?;
    client.sync().await?;
    drop(client);
    vm.pause().await?;
    let snap = b.dir.path().join("tpl-snap");
    std::fs::create_dir_all(&snap)?;
    let files = vm.snapshot_final(&snap).await?;
    vm.kill().await?;

    let (mut clone, mut clone_err) = (Vec::new(), Vec::new());
    for i in 0..n {
        let disk = b.dir.path().join(format!("clone{i}.ext4"));
        locale2b_vmm::qemu::copy_file(&tpl_disk, &disk).await?;
        let spec = b.spec(&format!("clone{i}"), &disk)?;
        let t = Instant::now();
        let vm = b.vmm.clone_from(&spec, &files).await?;
        match Baseline::ready(vm.as_ref()).await {
            Ok(_) => clone.push(t.elapsed().as_secs_f64() * 1000.0),
            Err(e) => clone_err.push(err_note(&e)),
        }
        let _ = vm.kill().await;
        let _ = std::fs::remove_file(&disk);
    }
    cold_err.dedup();
    clone_err.dedup();
    let mut cold_note = vec![
        "qemu driver start until the agent answers (no server, no manager, no init)".to_owned(),
    ];
    cold_note.extend(cold_err);
    let mut clone_note =
        vec!["qemu driver clone of its own template snapshot until the agent answers".to_owned()];
    clone_note.extend(clone_err);
    Ok(vec![
        Metric::new("baseline.cold_boot", "ms", &cold, join_notes(&cold_note)),
        Metric::new("baseline.clone", "ms", &clone, join_notes(&clone_note)),
    ])
}

/// `locale2b` p50 over baseline p50 for each pair present in `metrics`.
pub(super) fn ratios(metrics: &[Metric]) -> Vec<Metric> {
    let p50 = |name: &str| metrics.iter().find(|m| m.name == name).and_then(|m| m.p50);
    [
        ("ratio.create_cold", "create.wall", "baseline.cold_boot"),
        (
            "ratio.create_template",
            "create.template.wall",
            "baseline.clone",
        ),
        ("ratio.fork_1", "fork.1.wall", "baseline.clone"),
    ]
    .iter()
    .map(|(name, ours, base)| match (p50(ours), p50(base)) {
        (Some(o), Some(b)) if b > 0.0 => Metric::new(
            name,
            "x",
            &[o / b],
            Some(format!("p50 of {ours} / p50 of {base}")),
        ),
        _ => Metric::new(name, "x", &[], Some(format!("{ours} or {base} missing"))),
    })
    .collect()
}
