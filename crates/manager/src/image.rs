//! The installed guest image of a template: kernel, base rootfs and the
//! checksums its manifest records (snapshots are tied to them).

use crate::store::{read_json, Layout};
use crate::{ManagerError, Result};
use locale2b_protocol::SandboxId;
use locale2b_vmm::{DiskSpec, MemMib, VmSpec};
use serde::Deserialize;
use std::path::PathBuf;

/// The kernel command line locale2b boots a guest of `sandbox_id` with.
pub fn boot_args(sandbox_id: &str) -> String {
    format!("init=/usr/local/bin/locale2b-agent locale2b.sandbox_id={sandbox_id}")
}

/// An installed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// Its initramfs (Debian's kernel loads its drivers from it).
    pub initrd: Option<PathBuf>,
    /// The read-only base rootfs.
    pub rootfs: PathBuf,
    /// SHA-256 of the kernel, from the manifest; with an initramfs, its
    /// SHA-256 follows after a `+` (snapshots and templates are tied to
    /// both).
    pub kernel_sha256: String,
    /// SHA-256 of the rootfs, from the manifest.
    pub rootfs_sha256: String,
}

/// The part of `manifest.json` the manager needs.
#[derive(Debug, Deserialize)]
struct Manifest {
    kernel: KernelPart,
    rootfs: Part,
}

#[derive(Debug, Deserialize)]
struct KernelPart {
    sha256: String,
    #[serde(default)]
    initrd: Option<InitrdPart>,
}

#[derive(Debug, Deserialize)]
struct InitrdPart {
    file: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
struct Part {
    sha256: String,
}

impl Image {
    /// The VM of a guest of this image: its rootfs read-only, `disk` as
    /// the writable disk, booted with [`boot_args`].
    pub fn vm_spec(
        &self,
        sandbox_id: &SandboxId,
        disk: PathBuf,
        memory_mb: u32,
        vcpus: u8,
        run_dir: PathBuf,
        guest_cid: u32,
    ) -> VmSpec {
        VmSpec {
            sandbox_id: sandbox_id.clone(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            disks: vec![
                DiskSpec {
                    path: self.rootfs.clone(),
                    read_only: true,
                },
                DiskSpec {
                    path: disk,
                    read_only: false,
                },
            ],
            memory: MemMib(memory_mb),
            vcpus,
            extra_boot_args: boot_args(sandbox_id.as_str()),
            run_dir,
            guest_cid,
            net: None,
        }
    }

    /// The image of `template` (a validated name) under `layout`.
    ///
    /// # Errors
    /// NotFound (with how to build it) when the kernel or rootfs is missing;
    /// Internal when the manifest is unreadable.
    pub fn find(layout: &Layout, template: &str) -> Result<Self> {
        let dir = layout.image_dir(template);
        let kernel = dir.join("vmlinux");
        let rootfs = dir.join("rootfs.ext4");
        if !kernel.exists() || !rootfs.exists() {
            return Err(ManagerError::NotFound {
                kind: "template",
                id: format!(
                    "{template} (no guest image in {}; build it with `locale2b image build --template {template}`)",
                    dir.display()
                ),
            });
        }
        let manifest_path = dir.join("manifest.json");
        let manifest: Manifest = read_json(&manifest_path)
            .map_err(|e| ManagerError::io(format!("cannot read {}", manifest_path.display()), e))?;
        let (initrd, kernel_sha256) = match manifest.kernel.initrd {
            None => (None, manifest.kernel.sha256),
            Some(i) => {
                if i.file.contains('/') {
                    return Err(ManagerError::io(
                        format!(
                            "{}: initrd file {:?} is not a file name",
                            manifest_path.display(),
                            i.file
                        ),
                        std::io::Error::from(std::io::ErrorKind::InvalidData),
                    ));
                }
                let path = dir.join(&i.file);
                if !path.is_file() {
                    return Err(ManagerError::NotFound {
                        kind: "template",
                        id: format!(
                            "{template} (its manifest names {} but it is missing; rebuild with `locale2b image build --template {template}`)",
                            path.display()
                        ),
                    });
                }
                (
                    Some(path),
                    format!("{}+{}", manifest.kernel.sha256, i.sha256),
                )
            }
        };
        Ok(Self {
            kernel,
            initrd,
            rootfs,
            kernel_sha256,
            rootfs_sha256: manifest.rootfs.sha256,
        })
    }
}
