//! The installed guest image of a template: kernel, base rootfs and the
//! checksums its manifest records (snapshots are tied to them).

use crate::store::{read_json, Layout};
use crate::{ManagerError, Result};
use serde::Deserialize;
use std::path::PathBuf;

/// An installed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// The read-only base rootfs.
    pub rootfs: PathBuf,
    /// SHA-256 of the kernel, from the manifest.
    pub kernel_sha256: String,
    /// SHA-256 of the rootfs, from the manifest.
    pub rootfs_sha256: String,
}

/// The part of `manifest.json` the manager needs.
#[derive(Debug, Deserialize)]
struct Manifest {
    kernel: Part,
    rootfs: Part,
}

#[derive(Debug, Deserialize)]
struct Part {
    sha256: String,
}

impl Image {
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
        Ok(Self {
            kernel,
            rootfs,
            kernel_sha256: manifest.kernel.sha256,
            rootfs_sha256: manifest.rootfs.sha256,
        })
    }
}
