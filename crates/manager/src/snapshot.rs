//! Snapshot manifests: what a snapshot contains and what it needs to load.
//!
//! A snapshot directory holds the VMM's state and memory files and
//! `snapshot.json`. It is written under a temporary name and renamed into
//! place only when complete, so a directory named like a snapshot id is
//! always whole. Before a restore every size and checksum is checked, and
//! the kernel and rootfs it was taken with must be the ones installed now.
//!
//! The checksum is XXH3-128: it catches truncation, bit rot and partial
//! writes (accidental damage) at memory speed, where SHA-256 cost a pause
//! about 2 ms per MiB of guest RAM here. It is not a defence against
//! someone who can write the snapshot files on purpose: such a writer owns
//! the base directory anyway. Manifests written before carry SHA-256 and
//! are still checked with it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// File name of the manifest inside a snapshot directory.
pub const MANIFEST: &str = "snapshot.json";

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// File name inside the snapshot directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex (manifests before XXH3, and templates); empty when not
    /// computed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// XXH3-128 over the file's data ranges, hex (snapshots since pauses
    /// stopped paying for SHA-256; see [`xxh3_file`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3_128: Option<String>,
}

/// `snapshot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// Format version of this manifest.
    pub format: u32,
    /// Snapshot id (directory name).
    pub snapshot_id: String,
    /// Sandbox that was snapshotted.
    pub sandbox_id: String,
    /// Workspace it belongs to.
    pub workspace_id: String,
    /// Backend that wrote it ("qemu"/"firecracker"); only it can load it.
    pub backend: String,
    /// Template.
    pub template: String,
    /// SHA-256 of the kernel the VM ran.
    pub kernel_sha256: String,
    /// SHA-256 of the base rootfs the VM ran.
    pub rootfs_sha256: String,
    /// Guest RAM.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpu_count: u8,
    /// VM state file.
    pub state: FileDigest,
    /// Guest memory file.
    pub memory: FileDigest,
    /// The guest RAM is in the state file and the memory file is empty (a
    /// snapshot of a sandbox created from a template snapshot).
    #[serde(default)]
    pub ram_in_state: bool,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// Why a snapshot cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotInvalid {
    /// No or unreadable manifest.
    #[error("snapshot manifest {0} is missing or unreadable")]
    Manifest(PathBuf),
    /// A file is missing.
    #[error("snapshot file {0} is missing")]
    MissingFile(PathBuf),
    /// A file has the wrong size (truncated or grown).
    #[error("snapshot file {path} has {actual} bytes, expected {expected} (truncated or damaged)")]
    Size {
        /// File.
        path: PathBuf,
        /// Size found.
        actual: u64,
        /// Size recorded.
        expected: u64,
    },
    /// A file's checksum differs (corrupted).
    #[error("snapshot file {0} is corrupted (checksum mismatch)")]
    Checksum(PathBuf),
    /// The snapshot needs another kernel/rootfs/backend than installed now.
    #[error("snapshot was taken with {what} {wanted}, but {found} is installed now; it cannot be resumed with a different {what}")]
    Mismatch {
        /// "kernel", "rootfs", "backend".
        what: &'static str,
        /// What the snapshot needs.
        wanted: String,
        /// What is there.
        found: String,
    },
}

/// SHA-256 of a file, hex. Holes of sparse files are read as zeros.
///
/// # Errors
/// I/O errors.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds a sparse file to `update`: for each data range its offset and
/// length (little-endian u64s), then its bytes, and at the end the file's
/// length; holes are skipped, not read. Equal files give equal input as
/// long as their holes are where they were, which holds for a file never
/// rewritten. A 512 MiB memory file holding 150 MiB costs 150 MiB of
/// reading.
///
/// # Errors
/// I/O errors.
pub fn feed_data_ranges(path: &Path, mut update: impl FnMut(&[u8])) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let seek = |fd: i32, at: u64, whence: nix::unistd::Whence| -> std::io::Result<Option<u64>> {
        let at = i64::try_from(at).map_err(std::io::Error::other)?;
        match nix::unistd::lseek(fd, at, whence) {
            Ok(p) => Ok(Some(u64::try_from(p).unwrap_or(0))),
            Err(nix::errno::Errno::ENXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let mut pos: u64 = 0;
    while pos < len {
        let Some(start) = seek(f.as_raw_fd(), pos, nix::unistd::Whence::SeekData)? else {
            break;
        };
        let end = seek(f.as_raw_fd(), start, nix::unistd::Whence::SeekHole)?.unwrap_or(len);
        update(&start.to_le_bytes());
        update(&(end - start).to_le_bytes());
        f.seek(SeekFrom::Start(start))?;
        let mut left = end - start;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            update(&buf[..n]);
            left -= n as u64;
        }
        pos = end;
    }
    update(&len.to_le_bytes());
    Ok(())
}

/// XXH3-128 over a file's data ranges ([`feed_data_ranges`]), hex.
///
/// # Errors
/// I/O errors.
pub fn xxh3_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    feed_data_ranges(path, |b| hasher.update(b))?;
    Ok(format!("{:032x}", hasher.digest128()))
}

/// Digest (size and XXH3-128) of `dir/name`.
///
/// # Errors
/// I/O errors.
pub fn digest(dir: &Path, name: &str) -> std::io::Result<FileDigest> {
    let path = dir.join(name);
    let size = std::fs::metadata(&path)?.len();
    Ok(FileDigest {
        name: name.to_owned(),
        size,
        sha256: String::new(),
        xxh3_128: Some(xxh3_file(&path)?),
    })
}

/// Whether `path` has the checksum `want` records (XXH3-128 when it has
/// one, else SHA-256; `false` when it records none).
fn checksum_matches(path: &Path, want: &FileDigest) -> std::io::Result<bool> {
    match &want.xxh3_128 {
        Some(x) => Ok(xxh3_file(path)? == *x),
        None if !want.sha256.is_empty() => Ok(sha256_file(path)? == want.sha256),
        None => Ok(false),
    }
}

/// Reads and checks a snapshot directory: sizes first (cheap, catches
/// truncation), then checksums, then the kernel/rootfs/backend it needs.
///
/// # Errors
/// The first [`SnapshotInvalid`] found.
pub fn validate(
    dir: &Path,
    backend: &str,
    kernel_sha256: &str,
    rootfs_sha256: &str,
) -> Result<SnapshotManifest, SnapshotInvalid> {
    let manifest_path = dir.join(MANIFEST);
    let manifest: SnapshotManifest = crate::store::read_json(&manifest_path)
        .map_err(|_| SnapshotInvalid::Manifest(manifest_path.clone()))?;
    for file in [&manifest.state, &manifest.memory] {
        if file.name.contains('/') {
            return Err(SnapshotInvalid::Manifest(manifest_path));
        }
        let path = dir.join(&file.name);
        let size = std::fs::metadata(&path)
            .map_err(|_| SnapshotInvalid::MissingFile(path.clone()))?
            .len();
        if size != file.size {
            return Err(SnapshotInvalid::Size {
                path,
                actual: size,
                expected: file.size,
            });
        }
    }
    for file in [&manifest.state, &manifest.memory] {
        let path = dir.join(&file.name);
        let ok = checksum_matches(&path, file)
            .map_err(|_| SnapshotInvalid::MissingFile(path.clone()))?;
        if !ok {
            return Err(SnapshotInvalid::Checksum(path));
        }
    }
    let checks = [
        ("backend", manifest.backend.as_str(), backend),
        ("kernel", manifest.kernel_sha256.as_str(), kernel_sha256),
        ("rootfs", manifest.rootfs_sha256.as_str(), rootfs_sha256),
    ];
    for (what, wanted, found) in checks {
        if wanted != found {
            return Err(SnapshotInvalid::Mismatch {
                what,
                wanted: short(wanted),
                found: short(found),
            });
        }
    }
    Ok(manifest)
}

fn short(s: &str) -> String {
    s.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(dir: &Path) -> SnapshotManifest {
        std::fs::write(dir.join("state"), b"state-bytes").unwrap();
        std::fs::write(dir.join("memory"), vec![7u8; 4096]).unwrap();
        let m = SnapshotManifest {
            format: 1,
            snapshot_id: "snap-1".into(),
            sandbox_id: "sb-1".into(),
            workspace_id: "ws-1".into(),
            backend: "qemu".into(),
            template: "default".into(),
            kernel_sha256: "k".into(),
            rootfs_sha256: "r".into(),
            memory_mb: 256,
            vcpu_count: 1,
            state: digest(dir, "state").unwrap(),
            memory: digest(dir, "memory").unwrap(),
            ram_in_state: false,
            created_at: "now".into(),
        };
        crate::store::write_json_atomic(&dir.join(MANIFEST), &m).unwrap();
        m
    }

    #[test]
    fn a_manifest_with_sha256_only_is_still_checked_with_it() {
        let d = tempfile::tempdir().unwrap();
        let mut m = make(d.path());
        for f in [&mut m.state, &mut m.memory] {
            f.xxh3_128 = None;
            f.sha256 = sha256_file(&d.path().join(&f.name)).unwrap();
        }
        crate::store::write_json_atomic(&d.path().join(MANIFEST), &m).unwrap();
        assert_eq!(validate(d.path(), "qemu", "k", "r").unwrap(), m);
        let mut mem = std::fs::read(d.path().join("memory")).unwrap();
        mem[9] ^= 4;
        std::fs::write(d.path().join("memory"), &mem).unwrap();
        assert!(matches!(
            validate(d.path(), "qemu", "k", "r"),
            Err(SnapshotInvalid::Checksum(_))
        ));
    }

    #[test]
    fn valid_snapshot_passes() {
        let d = tempfile::tempdir().unwrap();
        let m = make(d.path());
        assert_eq!(validate(d.path(), "qemu", "k", "r").unwrap(), m);
    }

    #[test]
    fn corruption_truncation_and_mismatch_are_detected() {
        let d = tempfile::tempdir().unwrap();
        make(d.path());
        let mut mem = std::fs::read(d.path().join("memory")).unwrap();
        mem[100] ^= 1;
        std::fs::write(d.path().join("memory"), &mem).unwrap();
        assert!(matches!(
            validate(d.path(), "qemu", "k", "r"),
            Err(SnapshotInvalid::Checksum(_))
        ));

        make(d.path());
        std::fs::write(d.path().join("state"), b"stat").unwrap();
        let err = validate(d.path(), "qemu", "k", "r").unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotInvalid::Size {
                    actual: 4,
                    expected: 11,
                    ..
                }
            ),
            "{err}"
        );

        make(d.path());
        let err = validate(d.path(), "qemu", "other-kernel", "r").unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
        let err = validate(d.path(), "firecracker", "k", "r").unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");

        std::fs::remove_file(d.path().join(MANIFEST)).unwrap();
        assert!(matches!(
            validate(d.path(), "qemu", "k", "r"),
            Err(SnapshotInvalid::Manifest(_))
        ));
    }
}
