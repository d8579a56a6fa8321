//! locale2b guest image pipeline.
//!
//! A template (`image/templates/<name>.toml`) describes a Debian tree and names a
//! kernel config fragment. [`build`] turns it into three artifacts, installed to
//! `<images_dir>/<template>/`:
//! - `vmlinux`: uncompressed ELF kernel with the PVH entry note (QEMU microvm and
//!   Firecracker boot it directly), built from Debian's linux-source package,
//!   or taken from Debian's prebuilt kernel package ([`KernelChoice`]);
//! - `initrd`: with Debian's kernel only, an initramfs that loads its virtio,
//!   vsock and overlay modules and hands over to the rootfs;
//! - `rootfs.ext4`: sparse ext4 image of the Debian tree with the guest agent at
//!   `/usr/local/bin/locale2b-agent`, written with `mkfs.ext4 -d` (no mounting);
//! - `manifest.json`: versions, SHA-256s, input hashes, build time ([`Manifest`]).
//!
//! Each stage is cached by a hash of its inputs (see [`hash`]), so an agent
//! change only re-runs the ext4 step and unchanged inputs are a cache hit.
//! The heavy lifting is done by `scripts/build-kernel.sh` and
//! `scripts/build-rootfs.sh` behind the [`Toolchain`] trait. This crate reads no
//! environment variables: callers pass every path.

#![forbid(unsafe_code)]

mod error;
pub mod hash;
pub mod manifest;
mod pipeline;
mod progress;
pub mod template;
mod toolchain;

pub use error::{ImageError, Mismatch};
pub use manifest::{
    verify, InitrdInfo, KernelSource, Manifest, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE,
    ROOTFS_FILE,
};
pub use pipeline::{
    build, input_hashes, install, prepare, BuildOutcome, BuildRequest, InputHashes, KernelChoice,
    KernelInputs, PrepareOutcome, AGENT_GUEST_PATH,
};
pub use progress::{human_size, Progress};
pub use template::Template;
pub use toolchain::{
    BaseJob, DebianKernelJob, KernelJob, RootfsImageJob, ScriptToolchain, Toolchain,
};

/// The first of `candidates` that holds an image recipe (`image/templates/`
/// and `scripts/build-rootfs.sh`), canonicalized.
pub fn find_recipe_dir(candidates: &[std::path::PathBuf]) -> Option<std::path::PathBuf> {
    candidates
        .iter()
        .find(|dir| {
            dir.join("image/templates").is_dir() && dir.join("scripts/build-rootfs.sh").is_file()
        })
        .map(|dir| dir.canonicalize().unwrap_or_else(|_| dir.clone()))
}
