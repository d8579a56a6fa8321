//! Builds the VMM backend the configuration asks for, after the probe has
//! explained what this host can do.

use crate::{Config, ManagerError, Result};
use locale2b_vmm::firecracker::{FirecrackerConfig, FirecrackerVmm, JailerConfig};
use locale2b_vmm::probe::{self, Accel, ProbeConfig, ProbeReport};
use locale2b_vmm::qemu::{QemuConfig, QemuVmm};
use locale2b_vmm::{Vmm, VmmKind};
use std::sync::Arc;

/// Inputs of the probe derived from the configuration.
pub fn probe_config(config: &Config) -> ProbeConfig {
    let mut p = ProbeConfig::new(config.vmm);
    p.qemu_binary = config.qemu_bin.clone();
    p.firecracker_binary = config
        .firecracker_bin
        .exists()
        .then(|| config.firecracker_bin.clone());
    let kernel = config
        .base_dir
        .join("images")
        .join(&config.default_template)
        .join("vmlinux");
    p.test_kernel = kernel.exists().then_some(kernel);
    p
}

/// Probes the host and builds the chosen backend.
///
/// # Errors
/// When the chosen backend's binary is missing.
pub async fn build(config: &Config) -> Result<(Arc<dyn Vmm>, ProbeReport)> {
    let report = probe::probe(&probe_config(config)).await;
    let vmm: Arc<dyn Vmm> = match report.chosen {
        VmmKind::Qemu => {
            let qemu = QemuVmm::new(QemuConfig::new(config.qemu_bin.clone(), report.accel))
                .map_err(|e| ManagerError::vm("the qemu backend cannot start", e))?;
            Arc::new(qemu)
        }
        VmmKind::Firecracker => {
            if !config.firecracker_bin.exists() {
                return Err(ManagerError::InvalidInput(format!(
                    "LOCALE2B_VMM=firecracker but {} does not exist; set LOCALE2B_FIRECRACKER_BIN",
                    config.firecracker_bin.display()
                )));
            }
            let mut fc = FirecrackerConfig::new(config.firecracker_bin.clone());
            fc.use_jailer = config.use_jailer;
            if config.use_jailer {
                let mut j = JailerConfig::new(
                    config.jailer_bin.clone(),
                    config.jailer_uid,
                    config.jailer_gid,
                );
                j.chroot_base = config.jailer_chroot_base.clone();
                fc.jailer = Some(j);
            }
            Arc::new(FirecrackerVmm::new(fc))
        }
    };
    Ok((vmm, report))
}

/// "kvm" or "tcg" for the report.
pub fn accel_name(report: &ProbeReport) -> String {
    match (report.chosen, report.accel) {
        (VmmKind::Firecracker, _) | (_, Accel::Kvm) => "kvm".into(),
        (_, Accel::Tcg) => "tcg".into(),
    }
}
