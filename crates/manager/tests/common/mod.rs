//! Harness for end-to-end tests of the manager with real guests (qemu
//! backend): a fresh short base directory that shares the installed guest
//! image, and a manager over it.
#![allow(dead_code, clippy::unwrap_used, clippy::field_reassign_with_default)]

use locale2b_manager::{backend, Config, SandboxManager, VmmChoice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The installed guest image, or `None` (after printing SKIPPED) when it is
/// missing and end-to-end tests are not required. Panics when they are.
pub fn image_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LOCALE2B_TEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("LOCALE2B_BASE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/firecracker-workspaces"));
            base.join("images/default")
        });
    if dir.join("vmlinux").exists() && dir.join("rootfs.ext4").exists() {
        return Some(dir);
    }
    let msg = format!(
        "no guest image in {} (run `locale2b image build`)",
        dir.display()
    );
    if std::env::var("LOCALE2B_REQUIRE_E2E").as_deref() == Ok("1") {
        panic!("end-to-end tests are required but {msg}");
    }
    println!("SKIPPED: {msg}");
    None
}

/// A temporary base directory (short path: sockets live under it).
pub struct TestBase {
    pub dir: tempfile::TempDir,
}

impl TestBase {
    pub fn new(image: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("l2b")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::os::unix::fs::symlink(image, dir.path().join("images/default")).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.base_dir = self.path().to_path_buf();
        c.vmm = VmmChoice::Qemu;
        c.boot_timeout_sec = 120;
        c.memory_budget_mb = 16 * 1024;
        c.max_sandboxes = 12;
        c.default_memory_mb = 256;
        c.min_memory_mb = 128;
        c.disk_size_mb = 1024;
        c.shutdown_grace_sec = 3;
        c.health_check_interval_sec = 1;
        c
    }
}

impl Drop for TestBase {
    /// A failed test must not leave VMs running (they would slow every later
    /// test): kill whatever still runs from this base directory.
    fn drop(&mut self) {
        kill_mentioning(self.path());
    }
}

/// SIGKILLs every process whose command line mentions `dir`.
pub fn kill_mentioning(dir: &Path) {
    for pid in pids_mentioning(&dir.to_string_lossy()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub async fn manager(config: Config) -> Arc<SandboxManager> {
    let config = Arc::new(config);
    let (vmm, report) = backend::build(&config).await.expect("backend");
    SandboxManager::open(config, vmm, backend::accel_name(&report))
        .await
        .expect("open manager")
}

/// PIDs of processes whose command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    text.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(d.as_ref()))
        })
        .count()
}

/// All files (recursively) under `dir`, excluding the `images` link.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.file_name().and_then(|n| n.to_str()) == Some("images") {
                    continue;
                }
                out.push(path.clone());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&path, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}
