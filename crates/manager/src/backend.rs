//! Builds the VMM backend the configuration asks for, after the probe has
//! explained what this host can do.

use crate::{ManagerConfig, ManagerError, Result, VmmConfig};
use locale2b_vmm::firecracker::{FirecrackerConfig, FirecrackerVmm, JailerConfig};
use locale2b_vmm::probe::{self, Accel, ProbeConfig, ProbeReport};
use locale2b_vmm::qemu::{QemuConfig, QemuVmm};
use locale2b_vmm::{Vmm, VmmKind};
use std::sync::Arc;

/// Inputs of the probe derived from the configuration (the test kernel is
/// the default template's).
pub fn probe_config(vmm: &VmmConfig, manager: &ManagerConfig) -> ProbeConfig {
    let mut p = ProbeConfig::new(vmm.vmm);
    p.qemu_binary = vmm.qemu_bin.clone();
    p.firecracker_binary = vmm
        .firecracker_bin
        .exists()
        .then(|| vmm.firecracker_bin.clone());
    let kernel = manager
        .base_dir
        .join("images")
        .join(&manager.default_template)
        .join("vmlinux");
    p.test_kernel = kernel.exists().then_some(kernel);
    p
}

/// Probes the host and builds the chosen backend.
///
/// # Errors
/// When the chosen backend's binary is missing.
pub async fn build(
    vmm: &VmmConfig,
    manager: &ManagerConfig,
) -> Result<(Arc<dyn Vmm>, ProbeReport)> {
    let report = probe::probe(&probe_config(vmm, manager)).await;
    let built: Arc<dyn Vmm> = match report.chosen {
        VmmKind::Qemu => {
            let mut config = QemuConfig::new(vmm.qemu_bin.clone(), report.accel);
            config.tb_size_mb = vmm.qemu_tb_size_mb;
            let qemu = QemuVmm::new(config)
                .map_err(|e| ManagerError::vm("the qemu backend cannot start", e))?;
            Arc::new(qemu)
        }
        VmmKind::Firecracker => {
            if !vmm.firecracker_bin.exists() {
                return Err(ManagerError::InvalidInput(format!(
                    "LOCALE2B_VMM=firecracker but {} does not exist; set LOCALE2B_FIRECRACKER_BIN",
                    vmm.firecracker_bin.display()
                )));
            }
            let mut fc = FirecrackerConfig::new(vmm.firecracker_bin.clone());
            fc.use_jailer = vmm.use_jailer;
            if vmm.use_jailer {
                // The jail holds no dynamic loader: refuse at start, not
                // at the first create.
                if let Ok(bytes) = std::fs::read(&vmm.firecracker_bin) {
                    if let Some(loader) = locale2b_vmm::firecracker::jailer::elf_interpreter(&bytes)
                    {
                        return Err(ManagerError::InvalidInput(format!(
                            "LOCALE2B_USE_JAILER=true but {} is dynamically linked (it needs {loader}, which the jail does not hold); use a statically linked Firecracker (the release binaries are)",
                            vmm.firecracker_bin.display()
                        )));
                    }
                }
                let mut j =
                    JailerConfig::new(vmm.jailer_bin.clone(), vmm.jailer_uid, vmm.jailer_gid);
                j.chroot_base = vmm.jailer_chroot_base.clone();
                fc.jailer = Some(j);
            }
            Arc::new(FirecrackerVmm::new(fc))
        }
    };
    Ok((built, report))
}

/// "kvm" or "tcg" for the report.
pub fn accel_name(report: &ProbeReport) -> String {
    match (report.chosen, report.accel) {
        (VmmKind::Firecracker, _) | (_, Accel::Kvm) => "kvm".into(),
        (_, Accel::Tcg) => "tcg".into(),
    }
}
