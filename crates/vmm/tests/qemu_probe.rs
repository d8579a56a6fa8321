//! The backend probe against a real kernel: on this kind of host (/dev/kvm
//! present but unusable for ordinary guests, e.g. PVM) it must fall back to
//! QEMU with TCG and say why; where KVM works it must say so.

use locale2b_vmm::probe::{check_kvm, probe, Accel, ProbeConfig, VmmPreference};
use locale2b_vmm::VmmKind;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn kernel() -> Option<PathBuf> {
    locale2b_testkit::kernel_dir().map(|d| d.join("vmlinux"))
}

#[tokio::test]
async fn qemu_probe_explains_its_choice_and_caches() {
    let Some(kernel) = kernel() else { return };
    let mut cfg = ProbeConfig::new(VmmPreference::Auto);
    cfg.test_kernel = Some(kernel);
    cfg.firecracker_binary = Some(PathBuf::from("/nonexistent/firecracker"));
    let t = Instant::now();
    let report = probe(&cfg).await;
    let first = t.elapsed();
    println!("probe took {first:?}: {}", report.explanation());
    assert!(first < Duration::from_secs(10));
    // No usable Firecracker binary: auto always picks qemu.
    assert_eq!(report.chosen, VmmKind::Qemu);
    if report.kvm_usable {
        assert_eq!(report.accel, Accel::Kvm);
        assert!(report.explanation().contains("works"));
    } else {
        assert_eq!(report.accel, Accel::Tcg);
        assert!(report.explanation().contains("TCG"));
        if std::path::Path::new("/dev/kvm").exists() {
            assert!(
                report.explanation().contains("did not boot"),
                "{}",
                report.explanation()
            );
        }
    }
    // Cached: the second call does not boot again.
    let t = Instant::now();
    let again = check_kvm(&cfg).await;
    assert!(t.elapsed() < Duration::from_millis(50));
    assert_eq!(again.usable, report.kvm_usable);
}
