//! Template snapshots (`boot: template`): a guest booted once per image,
//! VMM and size, its agent ready, snapshotted and stopped. A create clones
//! it instead of booting: the VMM maps the template's memory file
//! copy-on-write (shared by every clone of it) and the new workspace's disk
//! starts as a copy of the template's disk, whose state the memory holds.
//!
//! ```text
//! <base>/templates/<template>-<key16>/{state, memory, disk.ext4, template.json}
//! ```
//! The key hashes everything that makes a snapshot loadable (kernel and
//! rootfs checksums, the VMM's identity, this build's version, memory,
//! vCPUs, disk size), so a rebuilt image or another QEMU gets a new
//! template and never an old one. A template is built in a temporary
//! directory and renamed into place whole; its files are never written
//! again (clones map the memory file: writing it would change their RAM).
//! Before a template's first use by this process its files are checked
//! against the checksums in `template.json`, and again whenever their size,
//! inode or modification time changes; a damaged template is removed, the
//! create that found it boots cold and the next one builds it again.

use super::SandboxManager;
use crate::image::Image;
use crate::snapshot::{sha256_file, FileDigest};
use crate::store::{create_private_dir, make_disk, read_json, write_json_atomic};
use crate::{ManagerError, Result};
use locale2b_protocol::SandboxId;
use locale2b_vmm::{SnapshotFiles, VmHandle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Format of `template.json`.
const FORMAT: u32 = 1;
/// File name of the manifest inside a template directory.
const MANIFEST: &str = "template.json";
/// How long a template that could not be built or loaded is not tried
/// again (creates boot cold meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateManifest {
    /// Format version.
    pub format: u32,
    /// The full key (hex SHA-256 of [`key_input`]).
    pub key: String,
    /// Template (image) name.
    pub template: String,
    /// What the key was computed from, for people reading the file.
    pub key_input: String,
    /// Kernel command line the template booted with; clones start with it.
    pub extra_boot_args: String,
    /// VM state file.
    pub state: FileDigest,
    /// Guest memory file (checksum over its data ranges, see
    /// [`sparse_sha256`]).
    pub memory: FileDigest,
    /// Writable disk as the memory knows it (same kind of checksum).
    pub disk: FileDigest,
    /// Milliseconds the build took (boot, snapshot, checksums).
    pub build_ms: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

/// What a clone needs of a usable template.
#[derive(Debug, Clone)]
pub(super) struct Template {
    /// The snapshot to clone.
    pub files: SnapshotFiles,
    /// The disk to copy as the new workspace's disk.
    pub disk: PathBuf,
    /// The kernel command line to start the clone's VMM with.
    pub extra_boot_args: String,
    /// The directory (removed when the template proves unusable).
    pub dir: PathBuf,
    /// The key, for [`Templates::failed`].
    pub key: String,
    /// Held while a create uses the files: a build of another key does
    /// not remove them meanwhile ([`Templates::pinned`]).
    _pin: Arc<()>,
}

/// Size, inode and modification time of a file: when they are unchanged,
/// so are its contents (a template's files are never written in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        len: m.len(),
        ino: m.ino(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// The templates of one manager: build locks, recent failures and the
/// files already checked.
#[derive(Debug, Default)]
pub(super) struct Templates {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: Mutex<HashMap<String, (Instant, String)>>,
    checked: Mutex<HashMap<PathBuf, [Stamp; 3]>>,
    pins: Mutex<HashMap<PathBuf, std::sync::Weak<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Templates {
    fn build_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(key.to_owned()).or_default().clone()
    }

    /// Why `key` failed within [`RETRY_AFTER`], if it did.
    fn recent_failure(&self, key: &str) -> Option<String> {
        let mut f = lock(&self.failures);
        match f.get(key) {
            Some((at, why)) if at.elapsed() < RETRY_AFTER => Some(why.clone()),
            Some(_) => {
                f.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers that `key` could not be built or loaded.
    pub(super) fn failed(&self, key: &str, why: &str) {
        lock(&self.failures).insert(key.to_owned(), (Instant::now(), why.to_owned()));
    }

    /// A pin on `dir`, held by every [`Template`] loaded from it.
    fn pin(&self, dir: &Path) -> Arc<()> {
        let mut pins = lock(&self.pins);
        pins.retain(|_, w| w.strong_count() > 0);
        if let Some(p) = pins.get(dir).and_then(std::sync::Weak::upgrade) {
            return p;
        }
        let p = Arc::new(());
        pins.insert(dir.to_path_buf(), Arc::downgrade(&p));
        p
    }

    /// Whether a create is using `dir`'s files.
    fn pinned(&self, dir: &Path) -> bool {
        lock(&self.pins)
            .get(dir)
            .is_some_and(|w| w.strong_count() > 0)
    }

    pub(super) fn forget_checked(&self, dir: &Path) {
        lock(&self.checked).remove(dir);
    }
}

/// The inputs of a template's key, one per line.
fn key_input(image: &Image, vmm_identity: &str, memory_mb: u32, vcpus: u8, disk_mb: u64) -> String {
    format!(
        "format={FORMAT}\nlocale2b={}\nkernel={}\nrootfs={}\nvmm={vmm_identity}\nmemory_mb={memory_mb}\nvcpus={vcpus}\ndisk_mb={disk_mb}\ncmdline={}\n",
        env!("CARGO_PKG_VERSION"),
        image.kernel_sha256,
        image.rootfs_sha256,
        crate::image::boot_args("<id>"),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 over the data ranges of a sparse file, hex (see
/// [`crate::snapshot::feed_data_ranges`]).
///
/// # Errors
/// I/O errors.
pub fn sparse_sha256(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    crate::snapshot::feed_data_ranges(path, |b| hasher.update(b))?;
    Ok(hex(&hasher.finalize()))
}

/// A checksum function: [`sha256_file`] or [`sparse_sha256`].
type SumFn = fn(&Path) -> std::io::Result<String>;

fn digest_with(dir: &Path, name: &str, sum: SumFn) -> std::io::Result<FileDigest> {
    let path = dir.join(name);
    Ok(FileDigest {
        name: name.to_owned(),
        size: std::fs::metadata(&path)?.len(),
        sha256: sum(&path)?,
        xxh3_128: None,
    })
}

/// Checks a template directory's files against its manifest.
fn verify(dir: &Path, m: &TemplateManifest) -> std::result::Result<(), String> {
    let checks: [(&FileDigest, SumFn); 3] = [
        (&m.state, sha256_file),
        (&m.memory, sparse_sha256),
        (&m.disk, sparse_sha256),
    ];
    for (want, sum) in checks {
        let got = digest_with(dir, &want.name, sum)
            .map_err(|e| format!("cannot read {}: {e}", dir.join(&want.name).display()))?;
        if got.size != want.size {
            return Err(format!(
                "{} has {} bytes, expected {} (truncated or damaged)",
                dir.join(&want.name).display(),
                got.size,
                want.size
            ));
        }
        if got.sha256 != want.sha256 {
            return Err(format!(
                "{} is damaged (checksum mismatch)",
                dir.join(&want.name).display()
            ));
        }
    }
    Ok(())
}

fn stamps(dir: &Path, m: &TemplateManifest) -> std::io::Result<[Stamp; 3]> {
    Ok([
        stamp(&dir.join(&m.state.name))?,
        stamp(&dir.join(&m.memory.name))?,
        stamp(&dir.join(&m.disk.name))?,
    ])
}

impl SandboxManager {
    /// The usable template for a new sandbox of this image and size,
    /// building it when there is none (once, however many creates ask at
    /// the same time). `Err` says why there is none; the caller boots
    /// cold.
    pub(super) async fn template_for(
        &self,
        name: &str,
        image: &Image,
        memory_mb: u32,
        vcpus: u8,
        disk_mb: u64,
    ) -> std::result::Result<Template, String> {
        if !self.vmm.can_clone() {
            return Err(format!(
                "the {} backend cannot clone template snapshots",
                self.vmm.kind()
            ));
        }
        let input = key_input(image, &self.vmm.identity(), memory_mb, vcpus, disk_mb);
        let key = hex(&Sha256::digest(input.as_bytes()));
        let dir = self
            .store
            .layout()
            .templates_dir()
            .join(format!("{name}-{}", &key[..16]));
        if let Some(why) = self.templates.recent_failure(&key) {
            return Err(format!(
                "{why} (not retried for {}s)",
                RETRY_AFTER.as_secs()
            ));
        }
        let build_lock = self.templates.build_lock(&key);
        let _building = build_lock.lock().await;
        if let Some(why) = self.templates.recent_failure(&key) {
            return Err(why);
        }
        // Pinned before its files are read, so that a build of another
        // key cannot remove them while this create uses them.
        let pin = self.templates.pin(&dir);
        if dir.join(MANIFEST).is_file() {
            match self.load_template(&dir, &key, pin).await {
                Ok(t) => return Ok(t),
                Err(why) => {
                    warn!(template = name, dir = %dir.display(), reason = %why, "template snapshot unusable; removing it, this create boots cold");
                    self.templates.forget_checked(&dir);
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(why);
                }
            }
        }
        self.remove_stale_templates(name, &dir);
        let started = Instant::now();
        match self
            .build_template(name, image, &dir, &key, input, memory_mb, vcpus, disk_mb)
            .await
        {
            Ok(()) => {
                info!(
                    template = name,
                    key = &key[..16],
                    memory_mb,
                    vcpus,
                    disk_mb,
                    build_ms = started.elapsed().as_millis() as u64,
                    "template snapshot built"
                );
                self.load_template(&dir, &key, pin).await
            }
            Err(e) => {
                let why = format!("building the template snapshot failed: {e}");
                warn!(template = name, reason = %why, "template snapshot not built; creates boot cold");
                self.templates.failed(&key, &why);
                Err(why)
            }
        }
    }

    /// Reads and (once per change of its files) checks a built template.
    async fn load_template(
        &self,
        dir: &Path,
        key: &str,
        pin: Arc<()>,
    ) -> std::result::Result<Template, String> {
        let m: TemplateManifest = read_json(&dir.join(MANIFEST))
            .map_err(|e| format!("cannot read {}: {e}", dir.join(MANIFEST).display()))?;
        if m.format != FORMAT || m.key != key {
            return Err(format!("{} is for another key or format", dir.display()));
        }
        let now = stamps(dir, &m).map_err(|e| format!("template file missing: {e}"))?;
        let known = lock(&self.templates.checked).get(dir).copied();
        if known != Some(now) {
            let (d, mm) = (dir.to_path_buf(), m.clone());
            tokio::task::spawn_blocking(move || verify(&d, &mm))
                .await
                .map_err(|e| format!("checking the template failed: {e}"))??;
            lock(&self.templates.checked).insert(dir.to_path_buf(), now);
        }
        Ok(Template {
            files: SnapshotFiles {
                state: dir.join(&m.state.name),
                memory: dir.join(&m.memory.name),
                ram_in_state: false,
            },
            disk: dir.join(&m.disk.name),
            extra_boot_args: m.extra_boot_args,
            dir: dir.to_path_buf(),
            key: key.to_owned(),
            _pin: pin,
        })
    }

    /// Removes `name`'s templates other than `keep` (other keys: stale),
    /// except those a create is cloning right now (pinned; removed by the
    /// next build). Clones running from one keep its memory mapped;
    /// nothing else needs its files.
    fn remove_stale_templates(&self, name: &str, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(self.store.layout().templates_dir()) else {
            return;
        };
        let prefix = format!("{name}-");
        for e in entries.flatten() {
            let file_name = e.file_name();
            let Some(n) = file_name.to_str() else {
                continue;
            };
            let stale = n
                .strip_prefix(&prefix)
                .is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()))
                && e.path() != keep
                && !self.templates.pinned(&e.path());
            if stale {
                info!(template = name, dir = %e.path().display(), "removing a stale template snapshot");
                self.templates.forget_checked(&e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Boots the template guest in a temporary directory, waits for its
    /// agent, flushes its disk, snapshots it, stops it, checksums the
    /// files and renames the directory to `dir`.
    #[allow(clippy::too_many_arguments)]
    async fn build_template(
        &self,
        name: &str,
        image: &Image,
        dir: &Path,
        key: &str,
        key_input: String,
        memory_mb: u32,
        vcpus: u8,
        disk_mb: u64,
    ) -> Result<()> {
        let started = Instant::now();
        let parent = self.store.layout().templates_dir();
        create_private_dir(&parent)?;
        let id = SandboxId::generate();
        let tmp = parent.join(format!(".build-{}", &id.as_str()[3..]));
        let _ = std::fs::remove_dir_all(&tmp);
        create_private_dir(&tmp)?;
        let run = tmp.join("run");
        create_private_dir(&run)?;
        let disk = tmp.join("disk.ext4");
        let outcome = async {
            make_disk(&disk, disk_mb).await?;
            let spec = image.vm_spec(&id, disk.clone(), memory_mb, vcpus, run.clone(), 3);
            let vm = self
                .vmm
                .start(&spec)
                .await
                .map_err(|e| ManagerError::vm("failed to start the template VM", e))?;
            let snapped = self.snapshot_template(vm.as_ref(), &tmp).await;
            if let Err(e) = vm.kill().await {
                warn!(template = name, error = %crate::error::chain(&e), "stopping the template VM failed");
            }
            let files = snapped?;
            let _ = std::fs::remove_dir_all(&run);
            let name_of = |p: &Path| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let (state, memory) = (name_of(&files.state), name_of(&files.memory));
            let d = tmp.clone();
            let digests = tokio::task::spawn_blocking(move || {
                Ok::<_, std::io::Error>((
                    digest_with(&d, &state, sha256_file)?,
                    digest_with(&d, &memory, sparse_sha256)?,
                    digest_with(&d, "disk.ext4", sparse_sha256)?,
                ))
            })
            .await
            .map_err(|e| ManagerError::Internal {
                context: "template checksum task failed".into(),
                source: Some(Box::new(e)),
            })?
            .map_err(|e| ManagerError::io("cannot checksum the template snapshot", e))?;
            let manifest = TemplateManifest {
                format: FORMAT,
                key: key.to_owned(),
                template: name.to_owned(),
                key_input,
                extra_boot_args: spec.extra_boot_args.clone(),
                state: digests.0,
                memory: digests.1,
                disk: digests.2,
                build_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                created_at: crate::store::now_rfc3339(),
            };
            write_json_atomic(&tmp.join(MANIFEST), &manifest)
                .map_err(|e| ManagerError::io("cannot write template.json", e))?;
            let _ = std::fs::remove_dir_all(dir);
            std::fs::rename(&tmp, dir)
                .map_err(|e| ManagerError::io("cannot move the template snapshot into place", e))?;
            let _ = std::fs::File::open(&parent).and_then(|d| d.sync_all());
            Ok(())
        }
        .await;
        if outcome.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        outcome
    }

    /// Waits for the template guest's agent (watching the VMM), flushes
    /// the guest's writes to its disk, pauses and snapshots it into `dir`.
    async fn snapshot_template(&self, vm: &dyn VmHandle, dir: &Path) -> Result<SnapshotFiles> {
        let client = self.new_client(Some(vm.vsock_path().to_path_buf()));
        let timeout = self.config.boot_timeout();
        tokio::select! {
            r = client.wait_ready(Instant::now() + timeout) => {
                r.map_err(|e| ManagerError::vm("the template guest's agent did not answer", e))?;
            }
            reason = vm.wait_exit() => {
                return Err(ManagerError::Vm {
                    message: format!("the template VM exited during boot ({reason})"),
                    source: None,
                });
            }
        }
        client
            .sync()
            .await
            .map_err(|e| ManagerError::vm("sync in the template guest failed", e))?;
        // No connection of the template may live on in its clones.
        drop(client);
        vm.pause()
            .await
            .map_err(|e| ManagerError::vm("failed to pause the template VM", e))?;
        vm.snapshot(dir)
            .await
            .map_err(|e| ManagerError::vm("failed to snapshot the template VM", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_sums_see_data_and_its_place_but_read_no_holes() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, at: u64, data: &[u8], len: u64| {
            let p = dir.path().join(name);
            let mut f = std::fs::File::create(&p).unwrap();
            f.set_len(len).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(data).unwrap();
            p
        };
        let a = write("a", 1 << 20, b"hello", 64 << 20);
        let b = write("b", 1 << 20, b"hello", 64 << 20);
        let moved = write("c", 2 << 20, b"hello", 64 << 20);
        let changed = write("d", 1 << 20, b"hellp", 64 << 20);
        let longer = write("e", 1 << 20, b"hello", 65 << 20);
        let sum = |p: &Path| sparse_sha256(p).unwrap();
        assert_eq!(sum(&a), sum(&b));
        assert_ne!(sum(&a), sum(&moved));
        assert_ne!(sum(&a), sum(&changed));
        assert_ne!(sum(&a), sum(&longer));
    }

    #[test]
    fn a_template_is_pinned_while_any_create_holds_it() {
        let t = Templates::default();
        let (a, b) = (Path::new("/t/default-a"), Path::new("/t/default-b"));
        assert!(!t.pinned(a));
        let first = t.pin(a);
        let second = t.pin(a);
        assert!(Arc::ptr_eq(&first, &second));
        assert!(t.pinned(a) && !t.pinned(b));
        drop(first);
        assert!(t.pinned(a), "one create still holds it");
        drop(second);
        assert!(!t.pinned(a));
        let _again = t.pin(b);
        assert_eq!(lock(&t.pins).len(), 1, "released pins are forgotten");
    }

    #[test]
    fn a_different_image_vmm_or_size_is_a_different_key() {
        let image = Image {
            kernel: "/k".into(),
            initrd: None,
            rootfs: "/r".into(),
            kernel_sha256: "k1".into(),
            rootfs_sha256: "r1".into(),
        };
        let base = key_input(&image, "qemu a", 256, 1, 1024);
        let rebuilt = Image {
            rootfs_sha256: "r2".into(),
            ..image.clone()
        };
        for other in [
            key_input(&rebuilt, "qemu a", 256, 1, 1024),
            key_input(&image, "qemu b", 256, 1, 1024),
            key_input(&image, "qemu a", 512, 1, 1024),
            key_input(&image, "qemu a", 256, 2, 1024),
            key_input(&image, "qemu a", 256, 1, 2048),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, key_input(&image, "qemu a", 256, 1, 1024));
    }
}
