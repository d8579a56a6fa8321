//! Backend probe: which VMM (and, for qemu, which accelerator) to use, and
//! why, in words a user understands.
//!
//! `/dev/kvm` existing is not enough: under some nested hypervisors (PVM)
//! the device opens but ordinary guests never run. The probe therefore boots
//! the configured kernel under `qemu -accel kvm` without a root disk and
//! waits (a few seconds) for it to get as far as trying to mount the root
//! filesystem. The result is cached for the life of the process.

use crate::VmmKind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// CPU virtualisation used by the qemu backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation (slow, works everywhere).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// What the user asked for (`LOCALE2B_VMM`): defined with the rest of
/// the configuration.
pub use locale2b_config::VmmChoice as VmmPreference;

/// Inputs of [`probe`].
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Requested backend.
    pub preference: VmmPreference,
    /// QEMU binary (used for the KVM test boot and as the qemu backend).
    pub qemu_binary: PathBuf,
    /// Firecracker binary, if one is configured.
    pub firecracker_binary: Option<PathBuf>,
    /// Kernel to test-boot under KVM (the default template's vmlinux).
    pub test_kernel: Option<PathBuf>,
    /// How long the test guest may take to boot under KVM.
    pub kvm_boot_timeout: Duration,
    /// `/dev/kvm` (overridable for tests).
    pub kvm_device: PathBuf,
}

impl ProbeConfig {
    /// Defaults: `qemu-system-x86_64`, no Firecracker, no test kernel, 3 s.
    pub fn new(preference: VmmPreference) -> Self {
        Self {
            preference,
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            firecracker_binary: None,
            test_kernel: None,
            kvm_boot_timeout: Duration::from_secs(3),
            kvm_device: PathBuf::from("/dev/kvm"),
        }
    }
}

/// The probe's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Backend to use.
    pub chosen: VmmKind,
    /// Accelerator for the qemu backend (Firecracker always uses KVM).
    pub accel: Accel,
    /// Whether a test guest ran under KVM.
    pub kvm_usable: bool,
    /// The reasoning, one sentence per step.
    pub reasons: Vec<String>,
}

impl ProbeReport {
    /// All reasons as one paragraph.
    pub fn explanation(&self) -> String {
        self.reasons.join(" ")
    }
}

/// Result of the KVM usability test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmCheck {
    /// Guests run under KVM.
    pub usable: bool,
    /// Why (one sentence).
    pub reason: String,
}

/// Decides the backend. Never fails: anything unusable is explained in
/// `reasons` and the safest working choice is made.
pub async fn probe(cfg: &ProbeConfig) -> ProbeReport {
    let mut reasons = Vec::new();
    let kvm = check_kvm(cfg).await;
    reasons.push(kvm.reason.clone());
    let accel = if kvm.usable { Accel::Kvm } else { Accel::Tcg };
    let fc = cfg
        .firecracker_binary
        .as_ref()
        .filter(|p| p.is_file())
        .cloned();
    let chosen = match cfg.preference {
        VmmPreference::Firecracker => {
            reasons.push("Firecracker was requested explicitly (LOCALE2B_VMM=firecracker).".into());
            if !kvm.usable {
                reasons.push(
                    "Warning: KVM did not run a test guest, so Firecracker guests will probably not boot; use LOCALE2B_VMM=qemu or auto."
                        .into(),
                );
            }
            if fc.is_none() {
                reasons.push(
                    "Warning: no Firecracker binary is configured or it does not exist.".into(),
                );
            }
            VmmKind::Firecracker
        }
        VmmPreference::Qemu => {
            reasons.push(format!(
                "QEMU was requested explicitly (LOCALE2B_VMM=qemu); using {}.",
                accel_words(accel)
            ));
            VmmKind::Qemu
        }
        VmmPreference::Auto => match (kvm.usable, fc) {
            (true, Some(p)) => {
                reasons.push(format!("Using Firecracker ({}) with KVM.", p.display()));
                VmmKind::Firecracker
            }
            (true, None) => {
                reasons.push(
                    "No Firecracker binary is configured: using QEMU microvm with KVM.".into(),
                );
                VmmKind::Qemu
            }
            (false, _) => {
                reasons.push(format!("Using QEMU microvm with {}.", accel_words(accel)));
                VmmKind::Qemu
            }
        },
    };
    let accel = if chosen == VmmKind::Firecracker {
        Accel::Kvm
    } else {
        accel
    };
    ProbeReport {
        chosen,
        accel,
        kvm_usable: kvm.usable,
        reasons,
    }
}

fn accel_words(a: Accel) -> &'static str {
    match a {
        Accel::Kvm => "KVM hardware virtualisation",
        Accel::Tcg => "TCG software emulation (slower, but works without usable KVM)",
    }
}

type CacheKey = (PathBuf, PathBuf, Option<PathBuf>);

/// Tests whether guests really run under KVM. Cached per (device, qemu,
/// kernel) for the life of the process.
pub async fn check_kvm(cfg: &ProbeConfig) -> KvmCheck {
    static CACHE: Mutex<Option<HashMap<CacheKey, KvmCheck>>> = Mutex::new(None);
    let key = (
        cfg.kvm_device.clone(),
        cfg.qemu_binary.clone(),
        cfg.test_kernel.clone(),
    );
    if let Some(hit) = CACHE
        .lock()
        .ok()
        .and_then(|c| c.as_ref().and_then(|m| m.get(&key).cloned()))
    {
        return hit;
    }
    let result = check_kvm_uncached(cfg).await;
    if let Ok(mut c) = CACHE.lock() {
        c.get_or_insert_with(HashMap::new)
            .insert(key, result.clone());
    }
    result
}

async fn check_kvm_uncached(cfg: &ProbeConfig) -> KvmCheck {
    let dev = &cfg.kvm_device;
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "does not exist (no hardware virtualisation, or the kvm module is not loaded)"
                    .to_owned()
            }
            std::io::ErrorKind::PermissionDenied => {
                "cannot be opened by this user (add it to the kvm group)".to_owned()
            }
            _ => format!("cannot be opened ({e})"),
        };
        return KvmCheck {
            usable: false,
            reason: format!("{} {why}.", dev.display()),
        };
    }
    let Some(kernel) = cfg.test_kernel.as_ref().filter(|k| k.is_file()) else {
        return KvmCheck {
            usable: false,
            reason: format!(
                "{} opens, but no guest kernel is installed to test it with, so KVM is not trusted yet.",
                dev.display()
            ),
        };
    };
    match boot_test(&cfg.qemu_binary, kernel, cfg.kvm_boot_timeout).await {
        Ok(elapsed) => KvmCheck {
            usable: true,
            reason: format!(
                "{} works: a test guest booted under KVM in {} ms.",
                dev.display(),
                elapsed.as_millis()
            ),
        },
        Err(why) => KvmCheck {
            usable: false,
            reason: format!(
                "{} exists but a test guest did not boot under it ({why}); nested or paravirtual hypervisors (e.g. PVM) can cause this.",
                dev.display()
            ),
        },
    }
}

/// Console lines that prove the kernel got through early boot (timer and
/// device setup) and reached the root mount (which fails: there is no disk).
const BOOT_MARKERS: [&str; 3] = ["VFS:", "Kernel panic", "Run /"];

/// Boots `kernel` with no disks under `-accel kvm`; returns how long it took
/// to reach a [`BOOT_MARKERS`] line.
async fn boot_test(qemu: &Path, kernel: &Path, timeout: Duration) -> Result<Duration, String> {
    let dir = std::env::temp_dir().join(format!(
        "locale2b-kvm-probe-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let console = dir.join("console.log");
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args([
        "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128M",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-chardev")
    .arg(format!(
        "file,id=c,path={}",
        console.display().to_string().replace(',', ",,")
    ))
    .args(["-serial", "chardev:c", "-kernel"])
    .arg(kernel)
    .args(["-append", "console=ttyS0 panic=-1 reboot=t"])
    .stdout(std::process::Stdio::null());
    let log = dir.join("qemu.log");
    match std::fs::File::create(&log) {
        Ok(f) => cmd.stderr(f),
        Err(_) => cmd.stderr(std::process::Stdio::null()),
    };
    let t0 = Instant::now();
    let result = match crate::process::VmmProcess::spawn(cmd) {
        Err(e) => Err(format!("could not start {}: {e}", qemu.display())),
        Ok(p) => {
            let outcome = loop {
                let text = std::fs::read_to_string(&console).unwrap_or_default();
                if BOOT_MARKERS.iter().any(|m| text.contains(m)) {
                    break Ok(t0.elapsed());
                }
                if let Some(reason) = p.exit_reason() {
                    let said = crate::process::tail_file(&log, 1);
                    let said = if said.is_empty() {
                        String::new()
                    } else {
                        format!(", saying \"{}\"", said.trim())
                    };
                    break Err(format!("QEMU {reason} before the guest booted{said}"));
                }
                if t0.elapsed() >= timeout {
                    break Err(format!("no progress within {} s", timeout.as_secs_f32()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let _ = p.kill(Duration::from_secs(5)).await;
            outcome
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_parsing() {
        assert_eq!("auto".parse(), Ok(VmmPreference::Auto));
        assert_eq!("QEMU".parse(), Ok(VmmPreference::Qemu));
        assert_eq!("firecracker".parse(), Ok(VmmPreference::Firecracker));
        assert!("xen".parse::<VmmPreference>().is_err());
    }

    #[tokio::test]
    async fn missing_kvm_device_means_qemu_tcg() {
        let mut cfg = ProbeConfig::new(VmmPreference::Auto);
        cfg.kvm_device = PathBuf::from("/nonexistent/kvm");
        cfg.firecracker_binary = Some(PathBuf::from("/bin/sh"));
        let r = probe(&cfg).await;
        assert_eq!(r.chosen, VmmKind::Qemu);
        assert_eq!(r.accel, Accel::Tcg);
        assert!(!r.kvm_usable);
        assert!(
            r.explanation().contains("does not exist"),
            "{}",
            r.explanation()
        );
        assert!(r.explanation().contains("TCG"), "{}", r.explanation());
    }

    #[tokio::test]
    async fn explicit_choices_are_honoured_with_warnings() {
        let mut cfg = ProbeConfig::new(VmmPreference::Firecracker);
        cfg.kvm_device = PathBuf::from("/nonexistent/kvm2");
        let r = probe(&cfg).await;
        assert_eq!(r.chosen, VmmKind::Firecracker);
        assert!(r.explanation().contains("Warning"));
        cfg.preference = VmmPreference::Qemu;
        let r = probe(&cfg).await;
        assert_eq!((r.chosen, r.accel), (VmmKind::Qemu, Accel::Tcg));
    }

    #[tokio::test]
    async fn kvm_without_test_kernel_is_not_trusted() {
        // /dev/null opens read-write like a device would.
        let mut cfg = ProbeConfig::new(VmmPreference::Auto);
        cfg.kvm_device = PathBuf::from("/dev/null");
        let r = probe(&cfg).await;
        assert!(!r.kvm_usable);
        assert!(
            r.explanation().contains("no guest kernel"),
            "{}",
            r.explanation()
        );
    }
}
