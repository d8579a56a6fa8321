//! Jailer mode and the mapping between host paths and the paths Firecracker
//! sees.
//!
//! Firecracker stores the paths of drives and of the vsock socket in a
//! snapshot and reopens them on load. To make a snapshot restorable into
//! another sandbox's directory, those paths are never absolute host paths:
//!
//! * plain mode: Firecracker runs with its working directory set to the run
//!   directory; disks are symlinked there as `drive_<n>` and the vsock socket
//!   is the relative path `vsock.sock`;
//! * jailer mode: everything lives inside the chroot
//!   (`<chroot_base>/<exec file name>/<id>/root`); kernel and disks are
//!   hard-linked there and Firecracker sees `/vmlinux`, `/drive_<n>`,
//!   `/vsock.sock`.

use locale2b_protocol::SandboxId;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Settings of the Firecracker jailer (chroot, uid/gid switch, cgroups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailerConfig {
    /// Path of the `jailer` binary.
    pub binary: PathBuf,
    /// User id Firecracker runs as.
    pub uid: u32,
    /// Group id Firecracker runs as.
    pub gid: u32,
    /// Base directory of the chroots (`--chroot-base-dir`, jailer default
    /// `/srv/jailer`).
    pub chroot_base: PathBuf,
    /// `--cgroup-version` (1 or 2); `None` leaves the jailer's default.
    pub cgroup_version: Option<u8>,
}

impl JailerConfig {
    /// A config with the jailer's default chroot base and no cgroup option.
    pub fn new(binary: impl Into<PathBuf>, uid: u32, gid: u32) -> Self {
        Self {
            binary: binary.into(),
            uid,
            gid,
            chroot_base: PathBuf::from("/srv/jailer"),
            cgroup_version: None,
        }
    }

    /// Host directory the jailer chroots into for `id`:
    /// `<chroot_base>/<file name of firecracker>/<id>/root`.
    pub fn chroot_root(&self, firecracker: &Path, id: &SandboxId) -> PathBuf {
        let exec_name = firecracker
            .file_name()
            .map_or_else(|| OsString::from("firecracker"), ToOwned::to_owned);
        self.chroot_base
            .join(exec_name)
            .join(id.as_str())
            .join("root")
    }

    /// The jailer's command line (without the program itself). Firecracker's
    /// own arguments follow `--`; the jailer passes `--id` to it by itself.
    pub fn args(&self, firecracker: &Path, id: &SandboxId, netns: Option<&Path>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            id.as_str().into(),
            "--exec-file".into(),
            firecracker.into(),
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
        ];
        if let Some(ns) = netns {
            // The jailer joins the namespace before it drops privileges:
            // Firecracker opens the guest's tap there.
            args.push("--netns".into());
            args.push(ns.into());
        }
        if let Some(v) = self.cgroup_version {
            args.push("--cgroup-version".into());
            args.push(v.to_string().into());
        }
        args.push("--".into());
        args.push("--api-sock".into());
        args.push(format!("/{API_SOCKET}").into());
        args
    }
}

/// The ELF program interpreter a binary asks for (`None`: statically
/// linked, or not a 64-bit little-endian ELF file).
pub fn elf_interpreter(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = bytes.get(ph..ph + 4)?;
        if p_type == 3u32.to_le_bytes() {
            let off = usize::try_from(u64_at(ph + 8)?).ok()?;
            let size = usize::try_from(u64_at(ph + 32)?).ok()?;
            let raw = bytes.get(off..off.checked_add(size)?)?;
            return Some(
                String::from_utf8_lossy(raw)
                    .trim_end_matches('\0')
                    .to_owned(),
            );
        }
    }
    None
}

/// The jailer accepts ids of ASCII letters, digits and hyphens, at most 64
/// characters; a [`SandboxId`] may also hold `_` and `.`.
pub fn jailer_id_problem(id: &SandboxId) -> Option<&'static str> {
    let s = id.as_str();
    if s.len() > 64 {
        return Some("longer than 64 characters");
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Some("contains characters other than letters, digits and '-'");
    }
    None
}

/// File name of the API socket inside the VM root.
pub(crate) const API_SOCKET: &str = "firecracker.sock";
/// File name of the hybrid-vsock socket inside the VM root.
pub(crate) const VSOCK_SOCKET: &str = "vsock.sock";

/// Where the files of one VM live on the host and how Firecracker names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Host directory that Firecracker's paths are relative to (the run
    /// directory, or the jail's root).
    pub root: PathBuf,
    /// Jailer mode: Firecracker is chrooted into `root`.
    pub jailed: bool,
}

impl Layout {
    /// Plain mode: Firecracker runs with `run_dir` as working directory.
    pub fn plain(run_dir: &Path) -> Self {
        Self {
            root: run_dir.to_owned(),
            jailed: false,
        }
    }

    /// Jailer mode.
    pub fn jailed(root: PathBuf) -> Self {
        Self { root, jailed: true }
    }

    /// How Firecracker names the file `name` of the VM root.
    pub fn vm_path(&self, name: &str) -> String {
        if self.jailed {
            format!("/{name}")
        } else {
            name.to_owned()
        }
    }

    /// Host path of the file `name` of the VM root.
    pub fn host_path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// How Firecracker must name a host file that is not in the VM root
    /// (kernel, snapshot files). Plain mode: the absolute host path. Jailer
    /// mode: such files must be linked in first, so `None`.
    pub fn outside_path(&self, host: &Path) -> Option<String> {
        (!self.jailed).then(|| host.to_string_lossy().into_owned())
    }

    /// Name of the n-th drive link.
    pub fn drive_name(index: usize) -> String {
        format!("drive_{index}")
    }

    /// Links `target` into the VM root as `name` (replacing a stale link):
    /// a symlink in plain mode, a hard link in jailer mode (a symlink would
    /// point outside the chroot).
    pub fn link_in(&self, target: &Path, name: &str) -> std::io::Result<()> {
        let link = self.host_path(name);
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if self.jailed {
            std::fs::hard_link(target, &link)
        } else {
            let target = std::path::absolute(target)?;
            std::os::unix::fs::symlink(target, &link)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SandboxId {
        s.parse().expect("valid id")
    }

    #[test]
    fn jailer_command_line() {
        let mut cfg = JailerConfig::new("/usr/bin/jailer", 123, 456);
        cfg.chroot_base = "/srv/j".into();
        let fc = Path::new("/opt/fc/firecracker-v1.17");
        let args = cfg.args(fc, &id("sb-abc123"), None);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--id",
                "sb-abc123",
                "--exec-file",
                "/opt/fc/firecracker-v1.17",
                "--uid",
                "123",
                "--gid",
                "456",
                "--chroot-base-dir",
                "/srv/j",
                "--",
                "--api-sock",
                "/firecracker.sock"
            ]
        );
        let with_ns = cfg.args(fc, &id("sb-abc123"), Some(Path::new("/run/netns/l2b-x")));
        let pos = with_ns
            .iter()
            .position(|a| a == "--netns")
            .expect("netns flag");
        assert_eq!(with_ns[pos + 1], "/run/netns/l2b-x");
        assert!(pos < with_ns.iter().position(|a| a == "--").expect("separator"));
        cfg.cgroup_version = Some(2);
        let args = cfg.args(fc, &id("sb-abc123"), None);
        let pos = args
            .iter()
            .position(|a| a == "--cgroup-version")
            .expect("cgroup flag");
        assert_eq!(args[pos + 1], "2");
        assert!(pos < args.iter().position(|a| a == "--").expect("separator"));
        assert_eq!(
            cfg.chroot_root(fc, &id("sb-abc123")),
            Path::new("/srv/j/firecracker-v1.17/sb-abc123/root")
        );
    }

    #[test]
    fn the_interpreter_of_a_dynamic_binary_is_found_and_a_static_one_has_none() {
        let dynamic = std::fs::read("/bin/sh").expect("value");
        assert!(super::elf_interpreter(&dynamic)
            .expect("value")
            .contains("ld-linux"));
        // A minimal static ELF: a header whose only program header is PT_LOAD.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(super::elf_interpreter(&elf), None);
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(super::elf_interpreter(&elf).as_deref(), Some(""));
        assert_eq!(super::elf_interpreter(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn jailer_ids_are_checked() {
        assert_eq!(jailer_id_problem(&id("sb-abc123")), None);
        assert!(jailer_id_problem(&id("sb_abc")).is_some());
        assert!(jailer_id_problem(&id("sb.abc")).is_some());
    }

    #[test]
    fn path_mapping_in_both_modes() {
        let plain = Layout::plain(Path::new("/run/sb1"));
        assert_eq!(plain.vm_path(VSOCK_SOCKET), "vsock.sock");
        assert_eq!(
            plain.host_path(VSOCK_SOCKET),
            Path::new("/run/sb1/vsock.sock")
        );
        assert_eq!(
            plain.outside_path(Path::new("/img/vmlinux")).as_deref(),
            Some("/img/vmlinux")
        );

        let jail = Layout::jailed("/srv/j/firecracker/sb1/root".into());
        assert_eq!(jail.vm_path(&Layout::drive_name(1)), "/drive_1");
        assert_eq!(
            jail.host_path(API_SOCKET),
            Path::new("/srv/j/firecracker/sb1/root/firecracker.sock")
        );
        assert_eq!(jail.outside_path(Path::new("/img/vmlinux")), None);
    }

    #[test]
    fn links_replace_stale_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        std::fs::write(&a, b"A").expect("write a");
        std::fs::write(&b, b"B").expect("write b");
        for layout in [
            Layout::plain(dir.path()),
            Layout::jailed(dir.path().to_owned()),
        ] {
            layout.link_in(&a, "drive_0").expect("link a");
            layout.link_in(&b, "drive_0").expect("relink b");
            let got = std::fs::read(layout.host_path("drive_0")).expect("read link");
            assert_eq!(got, b"B");
            let meta = std::fs::symlink_metadata(layout.host_path("drive_0")).expect("meta");
            assert_eq!(meta.file_type().is_symlink(), !layout.jailed);
        }
    }
}
