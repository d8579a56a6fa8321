//! File-system primitives of the store: atomic writes, JSON files, private
//! directories, sparse disks, socket cleanup, disk usage.

use crate::{ManagerError, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::path::Path;

/// Writes `value` as pretty JSON to `path` atomically: temp file in the same
/// directory, fsync, rename, fsync of the directory.
///
/// # Errors
/// I/O errors of any step; the original file is untouched on error.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, &data)
}

/// Writes bytes to `path` atomically (see [`write_json_atomic`]).
///
/// # Errors
/// I/O errors of any step.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a JSON file.
///
/// # Errors
/// I/O errors, or `InvalidData` when the JSON does not parse.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let data = std::fs::read(path)?;
    serde_json::from_slice(&data)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Blocks actually allocated by a file or tree, in bytes (sparse-aware).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += disk_usage(&e.path());
            }
        }
    }
    total
}

/// Now as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Creates `dir` (and its parents) with mode 0700.
///
/// # Errors
/// Internal, naming the directory.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ManagerError::io(format!("cannot create directory {}", dir.display()), e))
}

/// Creates a sparse file of `size_mb` MiB at `path` and formats it ext4
/// (label `workspace`, lazy init so only metadata is written).
///
/// # Errors
/// Internal when the file cannot be made or `mkfs.ext4` fails.
pub async fn make_disk(path: &Path, size_mb: u64) -> Result<()> {
    let file = std::fs::File::create(path)
        .map_err(|e| ManagerError::io(format!("cannot create {}", path.display()), e))?;
    file.set_len(size_mb * 1024 * 1024)
        .map_err(|e| ManagerError::io(format!("cannot size {}", path.display()), e))?;
    drop(file);
    let out = tokio::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-L",
            "workspace",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(path)
        .output()
        .await
        .map_err(|e| ManagerError::io("cannot run mkfs.ext4 (install e2fsprogs)", e))?;
    if !out.status.success() {
        return Err(ManagerError::Internal {
            context: format!(
                "mkfs.ext4 {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: None,
        });
    }
    Ok(())
}

/// Removes every `*.sock` file directly inside `dir` (stale VMM sockets).
pub fn remove_sockets(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().and_then(|x| x.to_str()) == Some("sock") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value = read_json(&p).unwrap();
        assert_eq!(v["a"], 2);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn sockets_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vsock.sock"), b"").unwrap();
        std::fs::write(dir.path().join("console.log"), b"x").unwrap();
        remove_sockets(dir.path());
        assert!(!dir.path().join("vsock.sock").exists());
        assert!(dir.path().join("console.log").exists());
    }
}
